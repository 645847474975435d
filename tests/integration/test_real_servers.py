"""The original fix's four scenarios and the bad-input cases, on real ComfyUI servers (CPU, test custom nodes).

Single task; many concurrent tasks whose history and images live on the server that ran each; a network fault (kill
the locked server mid-task); a long run with no growth in threads, sockets or task records.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Collection, Iterator

import httpx
import pytest

from comfy_notebook.core.errors import Cancelled, ExecutionError, PromptLost, ValidationError
from comfy_notebook.engine.engine import Engine
from comfy_notebook.tools.local_pool import LocalPool
from tests.engine.conftest import FAST
from tests.fakes.fake_comfy import wait_until
from tests.fakes.naive_client import run_naive
from tests.fakes.rr_proxy import RoundRobinProxy
from tests.workflows import raising_workflow, slow_workflow

_tags = iter(range(1, 10_000_000))


def fresh(**kwargs: object) -> dict:
    """A workflow the server has never seen (never answered from its cache)."""
    return slow_workflow(next(_tags) + int(time.time()) % 100_000 * 100, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def engine(real_pool: LocalPool) -> Iterator[Engine]:
    eng = Engine(real_pool.urls, FAST)
    yield eng
    eng.close()


def history_on(url: str, prompt_id: str) -> dict:
    return httpx.get(f"{url}/history/{prompt_id}", timeout=10).json()


# -- 1. a single task -----------------------------------------------------------------------------------------------
def test_single_task(engine: Engine) -> None:
    task = engine.submit(fresh(steps=3, step_seconds=0.05))
    assert task.server in engine.pool.records
    result = task.result(60)
    assert result.status == "success" and result.server == task.server
    assert result.images and result.images[0].size == (8, 8)
    assert result.prompt_id in history_on(result.server, result.prompt_id)
    status = engine.get_status()
    assert status["locked_server"] == result.server and status["is_connected"]
    json.dumps(status)


def test_progress_and_previews_from_a_real_server(engine: Engine) -> None:
    task = engine.submit(fresh(steps=6, step_seconds=0.1))
    seen: set[int] = set()
    while not task.done():
        if task.progress is not None:
            seen.add(task.progress.value)
        time.sleep(0.01)
    assert task.result(1).status == "success"
    assert len(seen) >= 3
    assert (task.progress.value, task.progress.max, task.progress.node) == (6, 6, "2")
    assert task.preview is not None and task.preview[0] == "image/jpeg"


# -- 2. many concurrent tasks ---------------------------------------------------------------------------------------
def test_many_concurrent_tasks_each_on_the_server_that_ran_it(engine: Engine, real_pool: LocalPool) -> None:
    urls = real_pool.urls
    locked = [engine.submit(fresh()) for _ in range(12)]  # the original behaviour: all on the locked server
    spread = [engine.submit(fresh(), server=urls[i % len(urls)]) for i in range(12)]  # per-prompt affinity
    results = [t.result(120) for t in locked + spread]
    assert {r.server for r in results[:12]} == {engine.get_status()["locked_server"]}
    assert {r.server for r in results[12:]} == set(urls)
    for result in results:
        assert result.status == "success" and len(result.files) == 1
        for url in urls:  # the history exists only where the prompt ran
            assert (result.prompt_id in history_on(url, result.prompt_id)) == (url == result.server)


# -- 3. a network fault -----------------------------------------------------------------------------------------------
def test_killing_the_locked_server_mid_task(engine: Engine, real_pool: LocalPool) -> None:
    engine.run(fresh(), timeout=60)
    locked = engine.get_status()["locked_server"]
    index = real_pool.urls.index(locked)
    task = engine.submit(fresh(steps=200, step_seconds=0.05))
    wait_until(lambda: task.progress is not None, timeout=30)
    try:
        real_pool.kill(index)
        wait_until(lambda: engine.get_status()["locked_server"] is None, timeout=5)
        with pytest.raises(PromptLost) as info:
            task.result(30)
        assert locked in str(info.value) and task.prompt_id in str(info.value)
        after = engine.run(fresh(), timeout=60)
        assert after.server != locked
        assert engine.get_status()["locked_server"] == after.server
    finally:
        real_pool.restart(index)


def test_reset_on_real_servers_cancels_targeted(engine: Engine) -> None:
    first = engine.submit(fresh(steps=200, step_seconds=0.05))
    queued = engine.submit(fresh())
    wait_until(lambda: first.progress is not None, timeout=30)
    server = first.server
    assert server is not None
    start = time.monotonic()
    status = engine.reset()
    assert time.monotonic() - start < 2.5
    assert status["locked_server"] is None and status["pending_tasks_count"] == 0
    for task in (first, queued):
        with pytest.raises(Cancelled, match="reset"):
            task.result(1)

    def interrupted() -> bool:
        entry = history_on(server, first.prompt_id).get(first.prompt_id)
        return entry is not None and entry["status"]["status_str"] == "error"

    wait_until(interrupted, timeout=10)  # the running prompt was interrupted on its server
    queue = httpx.get(f"{server}/queue", timeout=10).json()
    assert queued.prompt_id not in json.dumps(queue)


# -- 4. a long run ----------------------------------------------------------------------------------------------------
def established_sockets() -> dict[str, int]:
    """Our process's established TCP connections: socket inode -> remote port (read from /proc, no tools)."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found: dict[str, int] = {}
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as lines:
            for line in list(lines)[1:]:
                fields = line.split()
                if fields[9] in inodes and fields[3] == "01":  # 01 = ESTABLISHED
                    found[fields[9]] = int(fields[2].rsplit(":", 1)[1], 16)
    return found


def open_sockets_by_port(ignore: Collection[str] = ()) -> dict[int, int]:
    """Established connections per remote port, leaving out the sockets in ``ignore`` (other clients of the test
    process, e.g. the keep-alive connections of the shared client that fetched an earlier test's files lazily)."""
    counts: dict[int, int] = {}
    for inode, port in established_sockets().items():
        if inode not in ignore:
            counts[port] = counts.get(port, 0) + 1
    return counts


def test_long_run_has_no_growth_in_threads_sockets_or_records(engine: Engine, real_pool: LocalPool) -> None:
    ports = [int(url.rsplit(":", 1)[1]) for url in real_pool.urls]
    per_server = engine.options.socket.max_requests + 1  # request slots + the WebSocket
    assert not engine._connections or all(not c.is_open for c in engine._connections.values())
    others = set(established_sockets())  # before this engine opened anything: not ours to count
    engine.run(fresh(), timeout=60)
    base_threads = threading.active_count()
    deadline = time.monotonic() + float(os.environ.get("COMFY_LONG_RUN_SECONDS", "60"))
    done = rounds = 0
    while time.monotonic() < deadline:
        tasks = [engine.submit(fresh()) for _ in range(20)]
        done += sum(t.result(120).status == "success" for t in tasks)
        rounds += 1
        sockets = open_sockets_by_port(ignore=others)
        assert all(sockets.get(port, 0) <= per_server for port in ports), sockets
        assert threading.active_count() <= base_threads
        engine.reset()  # every round: sockets closed and reopened, the lock moves around the pool
    assert done >= 300 and rounds >= 15
    assert engine.get_status()["pending_tasks_count"] == 0
    assert sum(len(c.flights) for c in engine._connections.values()) == 0
    assert len(engine._connections) <= len(ports)
    assert len(engine._drivers) <= 2  # only background helpers may remain


# -- bad input on real servers ----------------------------------------------------------------------------------------
def test_validation_errors_from_a_real_server(engine: Engine) -> None:
    bad = fresh()
    bad["1"]["inputs"]["width"] = -5
    with pytest.raises(ValidationError) as info:
        engine.run(bad, timeout=60)
    assert info.value.nodes[0].node_id == "1" and info.value.nodes[0].class_type == "EmptyImage"
    assert "width" in str(info.value)

    partly = {**fresh(), "9": {"class_type": "SaveImage", "inputs": {"images": ["77", 0]}}}
    with pytest.raises(ValidationError) as info:
        engine.run(partly, timeout=60)
    assert info.value.partially_queued and "node 9 (SaveImage)" in str(info.value)


def test_a_node_exception_on_a_real_server(engine: Engine) -> None:
    with pytest.raises(ExecutionError) as info:
        engine.run(raising_workflow("kaput", tag=next(_tags)), timeout=60)
    assert info.value.node_id == "2" and info.value.node_type == "RaiseError"
    assert "kaput" in str(info.value) and info.value.server in engine.pool.records


# -- the original bug, reproduced and fixed ---------------------------------------------------------------------------
def test_round_robin_proxy_loses_naive_results_and_ours_keeps_every_one(real_pool: LocalPool) -> None:
    upstreams = real_pool.urls[:2]
    with RoundRobinProxy(upstreams) as proxy:
        lost = sum(run_naive(proxy.url, fresh(), timeout=3) is None for _ in range(6))
    assert lost >= 5  # the socket, the POST and the history land on different servers
    engine = Engine(upstreams, FAST)
    try:
        results = [engine.submit(fresh()) for _ in range(20)]
        assert all(t.result(60).status == "success" for t in results)
    finally:
        engine.close()
