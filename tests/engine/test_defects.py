"""Regression tests for engine defects fixed when the engine was split into modules: one test per defect, each
failing on the single-module engine it replaced and passing now. They run against the protocol-faithful fake."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time

import pytest

from comfy_notebook import api
from comfy_notebook.core.errors import Cancelled, ConfigError
from comfy_notebook.engine.engine import Engine
from comfy_notebook.engine.loop import THREAD_NAME
from tests.engine.conftest import FAST, workflow
from tests.fakes.fake_comfy import FakeComfy, wait_until


def engine_threads() -> int:
    return sum(t.name == THREAD_NAME and t.is_alive() for t in threading.enumerate())


def running(task, timeout: float = 5.0) -> None:
    wait_until(lambda: task.status == "running" and task.progress is not None, timeout)


def open_sockets(fake: FakeComfy) -> int:
    """WebSockets the fake holds open, as the server sees them (the fake has no public view of this)."""
    return len(fake._open)


def history_reads(fake: FakeComfy) -> list[str]:
    return [path for method, path in fake.http_log if method == "GET" and path.startswith("/history")]


# -- 1: a bad server leaked the engine's loop thread ------------------------------------------------------------------
def test_a_bad_server_leaves_no_loop_thread_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    api.shutdown()
    before = engine_threads()
    for _ in range(3):
        with pytest.raises(ConfigError):
            Engine(["ftp://nope"], FAST)
    monkeypatch.setenv(api.ENV_SERVERS, "ftp://nope")
    monkeypatch.delenv("COMFY_MODE", raising=False)
    try:
        for _ in range(3):
            with pytest.raises(ConfigError):
                api.get_status()  # the shared engine starts from COMFY_SERVERS
    finally:
        api.shutdown()
    assert engine_threads() == before


# -- 2: a malformed URL was a ServerUnavailable (a ConnectionError) ---------------------------------------------------
@pytest.mark.parametrize("bad", ["ftp://nope", "http://h:port", "http://[::1"])
def test_a_malformed_url_is_a_config_error_and_never_a_connection_error(
    engine: Engine, fake: FakeComfy, bad: str
) -> None:
    engine.set_servers([fake.url])
    with pytest.raises(ConfigError) as made:
        Engine([bad], FAST)
    with pytest.raises(ConfigError) as replaced:
        engine.set_servers([fake.url, bad])
    with pytest.raises(ConfigError) as routed:
        engine.submit(workflow(), server=bad)
    for info in (made, replaced, routed):
        assert isinstance(info.value, ValueError) and not isinstance(info.value, ConnectionError)
    status = engine.get_status()
    assert [s["url"] for s in status["servers"]] == [fake.url]  # the pool is untouched
    assert status["pending_tasks_count"] == 0 and fake.posted_prompt_ids == []


# -- 3: a malformed GET /history?max_items= body silently killed the bulk harvest -------------------------------------
def test_a_malformed_history_body_does_not_stop_the_bulk_harvest(
    fake: FakeComfy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="comfy_notebook.engine")
    # Only the harvest reads /history here: the silence check and the queue poll would find the prompts too
    # (and hide a dead harvest), so both are off.
    options = dataclasses.replace(FAST, silence_check=100.0, queue_poll_max=0)
    engine = Engine([fake.url], options)
    try:
        fake.hold()
        tasks = engine.submit_many([workflow(i) for i in range(3)])
        wait_until(lambda: len(fake.pending_prompt_ids) == 3)  # every prompt posted: no later post restarts a harvest
        # fail_http with a 200 answers a plain-text body: malformed JSON. Twice, so that whichever of a walk's two
        # reads (?max_items=, then /history/{id}) comes next, a ?max_items= read gets it.
        fake.fail_http("/history", 200, times=2)
        seen = len(history_reads(fake))
        wait_until(lambda: len(history_reads(fake)) > seen)  # the harvest met the bad body while the server held
        fake.release()
        results = [task.result(10) for task in tasks]
        assert [r.status for r in results] == ["success"] * 3
        assert [r.prompt_id for r in results] == [t.prompt_id for t in tasks]
        messages = [r.getMessage() for r in caplog.records if r.name.startswith("comfy_notebook.engine")]
        assert any(m.endswith("malformed JSON for /history") for m in messages)  # logged, then survived
    finally:
        engine.close()


# -- 4: background tasks failed silently ------------------------------------------------------------------------------
def test_a_failing_background_task_is_logged_with_its_description(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="comfy_notebook.engine")
    what = "the regression test's background task"

    async def fail() -> None:
        raise RuntimeError("boom in the background")

    async def start() -> None:
        engine._rt.spawn(fail(), what)

    engine.thread.run(start())

    def logged() -> list[logging.LogRecord]:
        return [r for r in list(caplog.records) if what in r.getMessage()]

    wait_until(lambda: bool(logged()))
    (record,) = logged()
    assert record.name.startswith("comfy_notebook.engine")
    assert record.levelno >= logging.WARNING
    assert record.exc_info is not None and isinstance(record.exc_info[1], RuntimeError)
    assert "boom in the background" in str(record.exc_info[1])


# -- 5: Task.cancel() blocked the cell and raised TimeoutError on a frozen server -------------------------------------
def test_cancel_returns_quickly_and_never_raises_when_the_server_is_frozen(fake: FakeComfy) -> None:
    # The drop's requests outlast reset_timeout (1.5 s) here: the old cancel waited for them that long, then raised
    # the TimeoutError into the cell. (With a cancel_timeout below reset_timeout it blocked for cancel_timeout.)
    options = dataclasses.replace(FAST, http=dataclasses.replace(FAST.http, cancel_timeout=5.0))
    engine = Engine([fake.url], options)
    try:
        task = engine.submit(workflow(steps=50, step_delay=0.05))
        running(task)
        fake.freeze()
        start = time.monotonic()
        task.cancel()  # must not raise
        elapsed = time.monotonic() - start
        assert elapsed < 1.5
        assert task.status == "cancelled"
        with pytest.raises(Cancelled):
            task.result(1)
    finally:
        engine.close()


# -- 6: sockets to servers we no longer use stayed open (and kept pinging) --------------------------------------------
def test_an_idle_server_removed_from_the_pool_has_its_socket_closed(
    engine: Engine, fake: FakeComfy, fake2: FakeComfy
) -> None:
    engine.set_servers([fake.url, fake2.url])
    engine.pin(fake.url)
    assert engine.run(workflow(1), server=fake2.url, timeout=10).server == fake2.url  # a socket to fake2, unlocked
    assert engine.run(workflow(2), timeout=10).server == fake.url
    wait_until(lambda: open_sockets(fake) == 1 and open_sockets(fake2) == 1)
    engine.set_servers([fake.url])
    wait_until(lambda: open_sockets(fake2) == 0)
    assert open_sockets(fake) == 1  # the server still in the pool keeps its socket
    assert engine.get_status()["locked_server"] == fake.url
    assert fake2.ws_connect_count == 1  # closed, and nothing reconnected


def test_the_socket_of_a_one_off_server_closes_once_its_prompt_finished(
    engine: Engine, fake: FakeComfy, fake2: FakeComfy
) -> None:
    engine.set_servers([fake.url])
    result = engine.run(workflow(), server=fake2.url, timeout=10)  # fake2 is not in the pool
    assert result.server == fake2.url and fake2.ws_connect_count == 1
    wait_until(lambda: open_sockets(fake2) == 0)
    assert engine.run(workflow(1), timeout=10).server == fake.url
    assert open_sockets(fake) == 1 and fake2.ws_connect_count == 1


def test_a_busy_server_removed_from_the_pool_finishes_its_prompt_then_closes_its_socket(
    engine: Engine, fake: FakeComfy, fake2: FakeComfy
) -> None:
    engine.set_servers([fake.url, fake2.url])
    engine.pin(fake2.url)
    task = engine.submit(workflow(1, steps=4, step_delay=0.1))
    wait_until(lambda: task.status == "running")
    engine.set_servers([fake.url])
    assert task.result(10).server == fake2.url  # per-prompt affinity: it finishes where it runs
    wait_until(lambda: open_sockets(fake2) == 0)
    assert fake2.url not in engine._connections
