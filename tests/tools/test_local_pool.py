"""The local-pool launcher: real ComfyUI servers via the CLI, and the launcher's rules on a tiny fake server.

The fake ``main.py`` (an http.server answering ``GET /prompt``) makes the process-handling rules (ports, crash
detection, kill/restart, PID safety) fast to test; the ``real`` tests run the same paths on real ComfyUI.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from comfy_notebook.tools import local_pool
from comfy_notebook.tools.local_pool import (
    LocalPool,
    LocalPoolError,
    PortInUseError,
    ServerStartError,
    answers,
    find_free_base_port,
    process_start_time,
)

TEST_NODES_DIR = Path(__file__).resolve().parent.parent / "comfy_nodes"

FAKE_MAIN = textwrap.dedent(
    """
    import argparse, http.server, json, os, sys
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--listen", default="127.0.0.1")
    args, _ = parser.parse_known_args()
    print("fake-comfy argv", json.dumps(sys.argv[1:]), flush=True)
    print("fake-comfy CUDA_VISIBLE_DEVICES", os.environ.get("CUDA_VISIBLE_DEVICES"), flush=True)
    if os.environ.get("FAKE_COMFY_MODE") == "crash":
        print("fake-comfy boom", flush=True)
        sys.exit(3)
    if os.environ.get("FAKE_COMFY_MODE") == "mute":
        import time
        time.sleep(3600)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"exec_info": {"queue_remaining": 0}}).encode()
            self.send_response(200 if self.path == "/prompt" else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    http.server.HTTPServer((args.listen, args.port), Handler).serve_forever()
    """
)


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` until true; fail after ``timeout`` seconds (a deadline, never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def processes_in_group(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is ``pgid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rfind(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(int(entry.name))
    return found


@pytest.fixture
def fake_comfy(tmp_path: Path) -> Path:
    comfy = tmp_path / "fake-comfyui"
    comfy.mkdir()
    (comfy / "main.py").write_text(FAKE_MAIN, encoding="utf-8")
    return comfy


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[LocalPool]:
    with LocalPool(tmp_path / "state") as p:
        yield p


# ---------------------------------------------------------------- fast: the launcher on a fake server


def test_start_gives_each_server_its_own_folders_and_exact_flags(pool: LocalPool, fake_comfy: Path) -> None:
    base = find_free_base_port(2)
    urls = pool.start(2, base_port=base, comfyui_dir=fake_comfy, python=sys.executable, custom_nodes=[TEST_NODES_DIR])
    assert urls == [f"http://127.0.0.1:{base}", f"http://127.0.0.1:{base + 1}"]
    assert pool.urls == urls
    assert all(answers(u) for u in urls)
    state = json.loads(pool.state_file.read_text())
    for i, rec in enumerate(state["servers"]):
        d = Path(rec["dir"])
        assert d == (pool.state_dir / f"server-{i}").resolve()
        assert all((d / sub).is_dir() for sub in ("out", "in", "tmp", "user"))
        argv = rec["argv"]
        flags = dict(zip(argv[3::2], argv[4::2], strict=False))
        assert argv[:3] == [sys.executable, str(fake_comfy / "main.py"), "--cpu"]
        assert flags["--listen"] == "127.0.0.1"
        assert flags["--port"] == str(base + i)
        assert flags["--output-directory"] == str(d / "out")
        assert flags["--input-directory"] == str(d / "in")
        assert flags["--temp-directory"] == str(d / "tmp")
        assert flags["--user-directory"] == str(d / "user")
        assert flags["--database-url"] == f"sqlite:///{d / 'db'}"
        assert "--disable-auto-launch" in argv
        yaml_path = Path(argv[argv.index("--extra-model-paths-config") + 1])
        assert yaml_path.read_text() == f'comfy_notebook_tests:\n  custom_nodes: "{TEST_NODES_DIR}"\n'
        log_text = Path(rec["log"]).read_text()
        assert f'"--port", "{base + i}"' in log_text  # the server's own output lands in its log


def test_gpu_per_server_pins_one_device_each_and_drops_cpu(pool: LocalPool, fake_comfy: Path) -> None:
    pool.start(2, base_port=find_free_base_port(2), comfyui_dir=fake_comfy, gpu_per_server=True)
    for i, rec in enumerate(json.loads(pool.state_file.read_text())["servers"]):
        assert "--cpu" not in rec["argv"]
        assert f"fake-comfy CUDA_VISIBLE_DEVICES {i}" in Path(rec["log"]).read_text()


def test_port_in_use_is_refused_before_anything_starts(pool: LocalPool, fake_comfy: Path) -> None:
    base = find_free_base_port(2)
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", base + 1))
        blocker.listen()
        with pytest.raises(PortInUseError, match=f"port {base + 1} on 127.0.0.1 already in use"):
            pool.start(2, base_port=base, comfyui_dir=fake_comfy)
    assert pool.urls == []
    assert not (pool.state_dir / "server-0" / "server.log").exists()


def test_cli_refuses_a_port_in_use_with_one_clear_line(tmp_path: Path, fake_comfy: Path) -> None:
    base = find_free_base_port(1)
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", base))
        blocker.listen()
        result = run_cli(
            "local", "up", "--servers", "1", "--base-port", str(base), "--comfyui", str(fake_comfy),
            "--state-dir", str(tmp_path / "state"),
        )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"comfy-notebook: error: port {base} on 127.0.0.1 already in use; choose another --base-port"
    )


def test_a_second_pool_on_the_same_state_dir_is_refused(pool: LocalPool, fake_comfy: Path) -> None:
    pool.start(1, base_port=find_free_base_port(1), comfyui_dir=fake_comfy)
    with pytest.raises(LocalPoolError, match="already running"):
        LocalPool(pool.state_dir).start(1, base_port=find_free_base_port(1), comfyui_dir=fake_comfy)


def test_a_server_that_exits_fails_start_with_its_log_tail(
    pool: LocalPool, fake_comfy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_COMFY_MODE", "crash")
    with pytest.raises(ServerStartError, match=r"(?s)exited with code 3 before answering.*fake-comfy boom"):
        pool.start(1, base_port=find_free_base_port(1), comfyui_dir=fake_comfy, ready_timeout=30)


def test_a_server_that_never_answers_times_out_and_is_stopped(
    pool: LocalPool, fake_comfy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_COMFY_MODE", "mute")
    with pytest.raises(ServerStartError, match="did not answer GET /prompt in 1 s"):
        pool.start(1, base_port=find_free_base_port(1), comfyui_dir=fake_comfy, ready_timeout=1)
    (status,) = pool.status()
    assert status.pid is not None
    assert not status.alive
    assert processes_in_group(status.pid) == []


def test_kill_restart_stop_on_fake_servers(pool: LocalPool, fake_comfy: Path) -> None:
    urls = pool.start(2, base_port=find_free_base_port(2), comfyui_dir=fake_comfy)
    old_pid = pool.status()[1].pid
    pool.kill(1)
    assert [(s.alive, s.answering) for s in pool.status()] == [(True, True), (False, False)]
    assert not answers(urls[1])
    assert pool.restart(1) == urls[1]
    after = pool.status()[1]
    assert after.alive and after.answering and after.pid != old_pid
    pool.stop(0)
    assert [s.alive for s in pool.status()] == [False, True]
    with pytest.raises(LocalPoolError, match="no server 5"):
        pool.kill(5)


def test_context_manager_takes_every_server_down(tmp_path: Path, fake_comfy: Path) -> None:
    with LocalPool(tmp_path / "state") as p:
        urls = p.start(2, base_port=find_free_base_port(2), comfyui_dir=fake_comfy)
        pids = [s.pid for s in p.status()]
    assert not any(answers(u) for u in urls)
    assert all(pid is not None and processes_in_group(pid) == [] for pid in pids)
    assert not (tmp_path / "state" / "pool.json").exists()


def test_never_signals_a_pid_it_did_not_start(tmp_path: Path) -> None:
    """A state file naming a live pid with a different start time (a recycled pid) must be left alone."""
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
    try:
        start_time = process_start_time(bystander.pid)
        assert start_time is not None
        state_dir = tmp_path / "state"
        state_dir.mkdir()
        rec = {
            "index": 0, "port": 1, "url": "http://127.0.0.1:1", "dir": str(tmp_path), "log": str(tmp_path / "x.log"),
            "cwd": str(tmp_path), "argv": ["true"], "env": {}, "pid": bystander.pid, "start_time": start_time + 1,
        }  # fmt: skip
        (state_dir / "pool.json").write_text(json.dumps({"servers": [rec]}))
        pool = LocalPool(state_dir)
        assert not pool.status()[0].alive
        pool.kill(0)
        pool.stop(0)
        pool.down()
        with pytest.raises(subprocess.TimeoutExpired):
            bystander.wait(timeout=0.5)  # still running: no signal reached it
        # Control: with the true start time the same pid IS ours, so the check above is what protected it.
        rec["start_time"] = start_time
        (state_dir / "pool.json").write_text(json.dumps({"servers": [rec]}))
        LocalPool(state_dir).kill(0)
        assert bystander.wait(timeout=10) == -9
    finally:
        if bystander.poll() is None:
            bystander.kill()
            bystander.wait()


def test_proc_stat_parses_names_with_spaces_and_parens() -> None:
    stat = local_pool._proc_stat(os.getpid())
    assert stat is not None and stat[0] in "RS"
    assert stat[1] == os.getpgid(os.getpid())
    assert local_pool._proc_stat(2**22 + 12345) is None  # above pid_max: never exists


# ---------------------------------------------------------------- real ComfyUI via the CLI


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "comfy_notebook.tools.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.real
@pytest.mark.timeout(900)  # the first real test may build the pinned environment (minutes)
def test_cli_up_status_kill_restart_down_on_real_servers(tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    base = find_free_base_port(2)
    try:
        up = run_cli(
            "local", "up", "--servers", "2", "--base-port", str(base), "--custom-nodes", str(TEST_NODES_DIR),
            "--state-dir", state,
        )  # fmt: skip
        assert up.returncode == 0, up.stderr
        urls = up.stdout.split()
        assert urls == [f"http://127.0.0.1:{base}", f"http://127.0.0.1:{base + 1}"]
        assert all(answers(u) for u in urls)  # the servers outlive the `up` process

        status = run_cli("local", "status", "--json", "--state-dir", state)
        assert status.returncode == 0, status.stderr
        servers = json.loads(status.stdout)
        assert [(s["url"], s["alive"], s["answering"]) for s in servers] == [(u, True, True) for u in urls]
        pids = [s["pid"] for s in servers]

        # Another process (this one) controls the CLI's pool through the state file.
        pool = LocalPool(state)
        pool.kill(1)
        wait_until(lambda: not answers(urls[1], timeout=0.5), 5, "the killed server to stop answering")
        down_one = run_cli("local", "status", "--state-dir", state)
        assert down_one.returncode == 1
        assert f"{urls[1]}  pid {pids[1]}  down" in down_one.stdout
        pool.restart(1)
        assert answers(urls[1])
        new_pid = pool.status()[1].pid
        assert new_pid != pids[1]
        pids.append(new_pid)

        down = run_cli("local", "down", "--state-dir", state)
        assert down.returncode == 0, down.stderr
        assert "stopped 2 server(s)" in down.stdout
        assert not any(answers(u, timeout=0.5) for u in urls)
        for pid in pids:
            assert processes_in_group(pid) == [], f"process group {pid} still has processes"
        after = run_cli("local", "status", "--state-dir", state)
        assert after.returncode == 1
        assert "no local pool" in after.stdout
    finally:
        LocalPool(state).down()


@pytest.mark.real
@pytest.mark.timeout(900)
def test_real_server_loads_the_test_nodes(tmp_path: Path) -> None:
    with LocalPool(tmp_path / "state") as p:
        (url,) = p.start(1, base_port=find_free_base_port(1), custom_nodes=[TEST_NODES_DIR])
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        for node in ("SlowSteps", "RaiseError"):
            with opener.open(f"{url}/object_info/{node}", timeout=10) as resp:
                info = json.load(resp)
            assert node in info, f"{node} not loaded; see {p.status()[0].log}"
        assert info["RaiseError"]["input"]["required"]["message"][0] == "STRING"
