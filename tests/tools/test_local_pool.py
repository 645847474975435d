"""The local-pool launcher: real ComfyUI servers via the CLI, and the launcher's rules on a tiny fake server.

The fake ``main.py`` (an http.server answering ``GET /prompt``) makes the process-handling rules (ports, crash
detection, kill/restart, PID safety) fast to test; the ``real`` tests run the same paths on real ComfyUI.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from comfy_notebook.tools import local_pool
from comfy_notebook.tools.local_pool import (
    SPEED_ENV,
    LocalPool,
    LocalPoolError,
    PortInUseError,
    ServerStartError,
    answers,
    find_free_base_port,
    process_start_time,
)
from tests.integration.chaos import port_refused
from tests.workflows import slow_workflow

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
    print("fake-comfy COMFY_NOTEBOOK_SPEED", os.environ.get("COMFY_NOTEBOOK_SPEED"), flush=True)
    print("fake-comfy FAKE_COMFY_TAG", os.environ.get("FAKE_COMFY_TAG"), flush=True)
    gate = os.environ.get("FAKE_COMFY_GATE")
    if gate:  # serve only once the test creates this file: "started but not ready yet", deterministically
        import time
        while not os.path.exists(gate):
            time.sleep(0.02)
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


def log_since_last_start(pool: LocalPool, i: int) -> str:
    """Server ``i``'s log from its latest (re)start on: what the current process printed."""
    rec = json.loads(pool.state_file.read_text())["servers"][i]
    with open(rec["log"], "rb") as fh:
        fh.seek(rec["log_offset"])
        return fh.read().decode()


def test_speeds_and_env_for_reach_each_server_and_survive_a_restart(pool: LocalPool, fake_comfy: Path) -> None:
    urls = pool.start(
        2, base_port=find_free_base_port(2), comfyui_dir=fake_comfy, speeds=[1, 0.5],
        env_for=lambda i: {"FAKE_COMFY_TAG": f"server{i}"},
    )  # fmt: skip
    for i, speed in enumerate(("1.0", "0.5")):
        assert f"fake-comfy {SPEED_ENV} {speed}\n" in log_since_last_start(pool, i)
        assert f"fake-comfy FAKE_COMFY_TAG server{i}\n" in log_since_last_start(pool, i)
    pool.kill(urls[1])  # by URL
    assert pool.restart(urls[1] + "/") == urls[1]
    assert f"fake-comfy {SPEED_ENV} 0.5\n" in log_since_last_start(pool, 1)
    assert "fake-comfy FAKE_COMFY_TAG server1\n" in log_since_last_start(pool, 1)


def test_env_for_wins_over_speeds_and_bad_speeds_are_refused(pool: LocalPool, fake_comfy: Path) -> None:
    bad_speeds = {"got 1 speeds for 2 servers": [1.0], "positive finite": [1.0, 0.0]}
    for match, speeds in [*bad_speeds.items(), ("positive finite", [float("nan"), 1.0]), ("finite", [1, float("inf")])]:
        with pytest.raises(LocalPoolError, match=match):
            pool.start(2, base_port=find_free_base_port(2), comfyui_dir=fake_comfy, speeds=speeds)
    assert pool.urls == []  # refused before anything was started
    pool.start(
        1, base_port=find_free_base_port(1), comfyui_dir=fake_comfy, speeds=[2], env_for=lambda i: {SPEED_ENV: "3"}
    )
    assert f"fake-comfy {SPEED_ENV} 3\n" in log_since_last_start(pool, 0)


def test_model_paths_give_each_server_its_own_folders_and_survive_a_restart(
    pool: LocalPool, fake_comfy: Path, tmp_path: Path
) -> None:
    loras, extras = tmp_path / "loras-0", tmp_path / "extras-1"
    loras.mkdir()
    extras.mkdir()
    urls = pool.start(
        2, base_port=find_free_base_port(2), comfyui_dir=fake_comfy, custom_nodes=[TEST_NODES_DIR],
        model_paths=[{"loras": [loras]}, {"my_extras": [extras], "custom_nodes": [extras]}],
    )  # fmt: skip
    expected = [
        f'comfy_notebook_tests:\n  custom_nodes: "{TEST_NODES_DIR}"\n  loras: "{loras}"\n',
        f'comfy_notebook_tests:\n  custom_nodes: "{TEST_NODES_DIR}\\n{extras}"\n  my_extras: "{extras}"\n',
    ]
    assert not (pool.state_dir / local_pool.EXTRA_PATHS_FILE).exists()  # no shared file: one per server
    for i, rec in enumerate(json.loads(pool.state_file.read_text())["servers"]):
        yaml_path = Path(rec["argv"][rec["argv"].index("--extra-model-paths-config") + 1])
        assert yaml_path == Path(rec["dir"]) / local_pool.EXTRA_PATHS_FILE
        assert yaml_path.read_text() == expected[i]
        assert f'"--extra-model-paths-config", "{yaml_path}"' in log_since_last_start(pool, i)
    pool.kill(urls[0])
    pool.restart(0)
    assert f'"--extra-model-paths-config", "{pool.state_dir.resolve()}/server-0/' in log_since_last_start(pool, 0)


def test_bad_model_paths_are_refused_before_anything_starts(pool: LocalPool, fake_comfy: Path, tmp_path: Path) -> None:
    bad = {
        "got 1 model_paths for 2 servers": [{}],
        "model folder names are like 'loras'": [{"lo ras": [tmp_path]}, {}],
        "must be a list of folders, not one": [{"loras": str(tmp_path)}, {}],
        "does not exist": [{}, {"loras": [tmp_path / "nowhere"]}],
    }
    for match, model_paths in bad.items():
        with pytest.raises(LocalPoolError, match=match):
            pool.start(2, base_port=find_free_base_port(2), comfyui_dir=fake_comfy, model_paths=model_paths)
    assert pool.urls == []


def test_kill_then_restart_without_waiting_keeps_port_folders_and_state_right(
    pool: LocalPool, fake_comfy: Path, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    gate.touch()
    urls = pool.start(
        2, base_port=find_free_base_port(2), comfyui_dir=fake_comfy, env_for=lambda i: {"FAKE_COMFY_GATE": str(gate)}
    )
    before = json.loads(pool.state_file.read_text())["servers"][0]
    pool.kill(0)
    assert not pool.alive(0)
    assert port_refused(urls[0])
    assert pool.alive(urls[1]) and answers(urls[1])  # only the one we killed
    with pytest.raises(ServerStartError, match="exited"):
        pool.wait_ready([0], timeout=5)  # a dead server is reported at once, not waited for

    gate.unlink()
    assert pool.restart(0, wait=False) == urls[0]  # returns although the server cannot answer yet
    after = json.loads(pool.state_file.read_text())["servers"][0]
    assert pool.alive(0) and not answers(urls[0])
    assert after["pid"] != before["pid"] and after["start_time"] == process_start_time(after["pid"])
    assert {k: v for k, v in after.items() if k not in ("pid", "start_time", "log_offset")} == {
        k: v for k, v in before.items() if k not in ("pid", "start_time", "log_offset")
    }  # same port, URL, folders, flags and environment
    assert LocalPool(pool.state_dir).status()[0].pid == after["pid"]  # another process sees the new pid
    gate.touch()
    assert pool.wait_ready([0], timeout=30) == [urls[0]]
    assert pool.wait_ready(timeout=30) == urls
    with pytest.raises(LocalPoolError, match=re.escape("no server http://127.0.0.1:1 ")):
        pool.kill("http://127.0.0.1:1")


def test_one_pool_object_is_safe_to_share_between_threads(pool: LocalPool, fake_comfy: Path) -> None:
    """Two threads killing and restarting different servers at once: the state file must name every live pid."""
    urls = pool.start(2, base_port=find_free_base_port(2), comfyui_dir=fake_comfy)
    errors: list[BaseException] = []

    def churn(i: int) -> None:
        try:
            for _ in range(3):
                pool.kill(i)
                pool.restart(i, ready_timeout=30)
        except BaseException as exc:  # reported below: a thread's exception would be lost
            errors.append(exc)

    threads = [threading.Thread(target=churn, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    assert [(s.url, s.alive, s.answering) for s in LocalPool(pool.state_dir).status()] == [
        (u, True, True) for u in urls
    ]


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
    assert stat[3] >= 1  # thread count


ZOMBIE_LEADER = (
    "import ctypes, threading, time\n"
    "threading.Thread(target=time.sleep, args=(120,)).start()\n"
    "print('ready', flush=True)\n"
    "ctypes.CDLL(None).pthread_exit(None)\n"  # the main thread exits; the process lives on in the other thread
)


def test_a_zombie_leader_whose_threads_still_run_counts_as_running() -> None:
    """A killed multi-threaded server shows a zombie leader while its threads exit, and its port is still open
    then: ``kill`` must not return (nor ``restart`` bind) until the last thread is gone."""
    proc = subprocess.Popen([sys.executable, "-c", ZOMBIE_LEADER], stdout=subprocess.PIPE, start_new_session=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        start_time = process_start_time(proc.pid)

        def leader_is_zombie() -> bool:
            stat = local_pool._proc_stat(proc.pid)
            return stat is not None and stat[0] == "Z"

        wait_until(leader_is_zombie, 10, "the main thread to exit")
        assert local_pool._is_ours_and_running(proc.pid, start_time)
        assert proc.poll() is None  # the kernel agrees: the process cannot be reaped yet
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert not local_pool._is_ours_and_running(proc.pid, start_time)


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


_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def run_prompt_seconds(url: str, graph: dict[str, Any], timeout: float = 60) -> float:
    """Run ``graph`` on ``url`` and return its execution time from the history's own timestamps (start to success)."""
    body = json.dumps({"prompt": graph, "client_id": uuid.uuid4().hex}).encode()
    request = urllib.request.Request(f"{url}/prompt", data=body, headers={"Content-Type": "application/json"})
    with _HTTP.open(request, timeout=10) as resp:
        prompt_id = json.load(resp)["prompt_id"]
    entry: dict[str, Any] = {}

    def finished() -> bool:
        with _HTTP.open(f"{url}/history/{prompt_id}", timeout=10) as resp:
            entry.update(json.load(resp).get(prompt_id, {}))
        return bool(entry.get("status", {}).get("completed"))

    wait_until(finished, timeout, f"prompt {prompt_id} to finish on {url}")
    stamps = {name: data["timestamp"] for name, data in entry["status"]["messages"]}
    return float(stamps["execution_success"] - stamps["execution_start"]) / 1000


@pytest.mark.real
@pytest.mark.timeout(900)
def test_speed_factor_slows_a_real_server_and_survives_kill_and_restart(tmp_path: Path) -> None:
    step = 0.4  # one step of 400 ms: 0.8 s at half speed
    with LocalPool(tmp_path / "state") as p:
        urls = p.start(2, base_port=find_free_base_port(2), custom_nodes=[TEST_NODES_DIR], speeds=[1.0, 0.5])
        for url in urls:
            run_prompt_seconds(url, slow_workflow(1, steps=1, step_seconds=0.0))  # warm-up: first-run imports
        fast = run_prompt_seconds(urls[0], slow_workflow(2, steps=1, step_seconds=step))
        slow = run_prompt_seconds(urls[1], slow_workflow(3, steps=1, step_seconds=step))
        assert step <= fast < 2 * step, fast
        assert slow >= 2 * step, slow

        old_pid = p.status()[1].pid
        p.kill(urls[1])
        assert port_refused(urls[1])
        assert p.restart(1, wait=False) == urls[1]
        assert p.wait_ready([urls[1]], timeout=120) == [urls[1]]
        assert p.status()[1].pid != old_pid
        assert run_prompt_seconds(urls[1], slow_workflow(4, steps=1, step_seconds=step)) >= 2 * step
