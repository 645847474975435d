"""The engine against a protocol-faithful fake ComfyUI: the lock rules over real sockets, and every fault the
protocol doc lists (close codes, socket errors, hangs, 500s, malformed and huge frames, restarts)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from comfy_notebook.core.errors import (
    Cancelled,
    ExecutionError,
    PromptLost,
    ServerUnavailable,
    ValidationError,
)
from comfy_notebook.engine.connection import SocketOptions
from comfy_notebook.engine.engine import Engine
from tests.engine.conftest import FAST, workflow
from tests.fakes.fake_comfy import FakeComfy, wait_until
from tests.workflows import raising_workflow


def status_of(engine: Engine, url: str) -> dict:
    return next(s for s in engine.get_status()["servers"] if s["url"] == url)


def running(task, timeout: float = 5.0) -> None:
    wait_until(lambda: task.status == "running" and task.progress is not None, timeout)


# -- the happy path ----------------------------------------------------------------------------------------------------
def test_run_returns_outputs_and_images_from_the_server_that_ran_it(engine: Engine, fake: FakeComfy) -> None:
    engine.set_servers([fake.url])
    result = engine.run(workflow(), timeout=10)
    assert result.status == "success"
    assert result.server == fake.url
    assert result.prompt_id in fake.history_ids
    assert len(result.images) == 1 and result.images[0].size == (8, 8)
    assert ("GET", f"/history/{result.prompt_id}") in [(m, p.split("?")[0]) for m, p in fake.http_log]


def test_the_socket_is_open_before_the_post_and_follow_ups_go_to_the_same_server(
    engine: Engine, fake: FakeComfy
) -> None:
    engine.set_servers([fake.url])
    result = engine.run(workflow(), timeout=10)
    calls = [f"{method} {path.split('?')[0]}" for method, path in fake.http_log]
    assert calls == ["GET /ws", "POST /prompt", f"GET /history/{result.prompt_id}", "GET /view"]


def test_status_reports_the_lock_and_servers_without_credentials(engine: Engine, fake: FakeComfy) -> None:
    url = fake.url.replace("http://", "http://alice:s3cret-pw@")
    assert engine.set_servers([url]) == [fake.url]
    engine.run(workflow(), timeout=10)
    status = engine.get_status()
    assert status["is_connected"] is True
    assert status["locked_server"] == fake.url
    assert status["connection_state"] == "OPEN"
    assert status["pending_tasks_count"] == 0
    assert isinstance(status["lock_timestamp"], float) and status["lock_duration"] >= 0
    assert status["servers"][0]["locked"] is True
    import json

    assert "s3cret" not in json.dumps(status) and "alice" not in json.dumps(status)


# -- the lock rules over real sockets ---------------------------------------------------------------------------------
def test_close_1000_keeps_the_lock_and_the_next_prompt_reconnects_there(
    engine: Engine, fake: FakeComfy, fake2: FakeComfy
) -> None:
    engine.set_servers([fake.url, fake2.url])
    first = engine.run(workflow(1), timeout=10).server
    other = fake2 if first == fake.url else fake
    locked = fake if first == fake.url else fake2
    locked.close_sockets(1000)
    wait_until(lambda: engine.get_status()["connection_state"] == "CLOSED")
    assert engine.get_status()["locked_server"] == first
    for i in range(3):
        assert engine.run(workflow(10 + i), timeout=10).server == first
    assert locked.ws_connect_count == 2 and other.ws_connect_count == 0


@pytest.mark.parametrize("code", [1001, 1011, 4000])
def test_an_abnormal_close_clears_the_lock(engine: Engine, fake: FakeComfy, fake2: FakeComfy, code: int) -> None:
    engine.set_servers([fake.url, fake2.url])
    first = engine.run(workflow(), timeout=10).server
    (fake if first == fake.url else fake2).close_sockets(code)
    wait_until(lambda: engine.get_status()["locked_server"] is None)
    # The server that dropped us is cooling down, so the pool's choice (and the new lock) is the other one.
    second = engine.run(workflow(1), timeout=10).server
    assert second != first
    assert engine.get_status()["locked_server"] == second


def test_a_socket_error_clears_the_lock(engine: Engine, fake: FakeComfy) -> None:
    engine.set_servers([fake.url])
    engine.run(workflow(), timeout=10)
    fake.abort_sockets()  # no close frame: the client sees 1006
    wait_until(lambda: engine.get_status()["locked_server"] is None)
    assert "1006" in status_of(engine, fake.url)["last_error"]


def test_a_connect_failure_is_a_socket_error_and_the_prompt_moves_before_anything_is_sent(
    engine: Engine, fake: FakeComfy
) -> None:
    dead = FakeComfy()
    dead_url = dead.start()
    dead.stop()
    engine.set_servers([dead_url, fake.url])
    for i in range(4):  # whichever the pool picks first, every prompt ends on the live server
        assert engine.run(workflow(i), timeout=10).server == fake.url
    assert engine.get_status()["locked_server"] == fake.url


def test_reset_cancels_pending_prompts_on_their_server_and_clears_the_lock(engine: Engine, fake: FakeComfy) -> None:
    engine.set_servers([fake.url])
    engine.run(workflow(), timeout=10)
    fake.hold()
    tasks = [engine.submit(workflow(i + 1)) for i in range(3)]
    wait_until(lambda: len(fake.pending_prompt_ids) == 3)
    start = time.monotonic()
    status = engine.reset()
    assert time.monotonic() - start < 2.0
    assert status["locked_server"] is None and status["connection_state"] == "CLOSED"
    assert status["pending_tasks_count"] == 0
    for task in tasks:
        with pytest.raises(Cancelled, match="cancelled by reset"):
            task.result(1)
    assert set(fake.deleted_from_queue) >= {t.prompt_id for t in tasks}
    assert None not in fake.interrupt_requests  # never a global interrupt


def test_reset_returns_quickly_when_the_server_hangs(engine: Engine, fake: FakeComfy) -> None:
    engine.set_servers([fake.url])
    engine.run(workflow(), timeout=10)
    task = engine.submit(workflow(1, steps=50, step_delay=0.1))
    running(task)
    fake.freeze()
    start = time.monotonic()
    engine.reset()
    assert time.monotonic() - start < 2.5
    with pytest.raises(Cancelled):
        task.result(1)


def test_pin_locks_by_hand(engine: Engine, fake: FakeComfy, fake2: FakeComfy) -> None:
    engine.set_servers([fake.url, fake2.url])
    engine.pin(fake2.url)
    assert all(engine.run(workflow(i), timeout=10).server == fake2.url for i in range(3))
    with pytest.raises(ServerUnavailable, match="not in the server pool"):
        engine.pin("http://127.0.0.1:9")


# -- per-prompt affinity ----------------------------------------------------------------------------------------------
def test_follow_ups_stay_on_the_prompts_server_after_the_lock_moves(
    engine: Engine, fake: FakeComfy, fake2: FakeComfy
) -> None:
    engine.set_servers([fake.url, fake2.url])
    engine.pin(fake.url)
    slow = engine.submit(workflow(1, steps=20, step_delay=0.05))
    running(slow)
    engine.pin(fake2.url)
    quick = engine.run(workflow(2), timeout=10)
    assert quick.server == fake2.url
    result = slow.result(10)
    assert result.server == fake.url
    assert ("GET", f"/history/{slow.prompt_id}") in [(m, p.split("?")[0]) for m, p in fake.http_log]
    assert not any(slow.prompt_id in path for _, path in fake2.http_log)


# -- faults mid-prompt: reconcile, never hang -------------------------------------------------------------------------
def test_a_dropped_socket_mid_prompt_reconnects_and_the_prompt_still_completes(engine: Engine, fake: FakeComfy) -> None:
    engine.set_servers([fake.url])
    task = engine.submit(workflow(steps=20, step_delay=0.05))
    running(task)
    fake.abort_sockets()
    result = task.result(10)
    assert result.status == "success"
    assert fake.ws_connect_count == 2


def test_a_prompt_that_finished_while_disconnected_is_found_in_history(engine: Engine, fake: FakeComfy) -> None:
    engine.set_servers([fake.url])
    task = engine.submit(workflow(steps=3, step_delay=0.1))
    running(task)
    fake.freeze()  # no pongs: our pings close the socket; the prompt finishes meanwhile once thawed
    wait_until(lambda: engine.get_status()["locked_server"] is None, timeout=5)
    fake.thaw()
    assert task.result(10).status == "success"


def test_a_restart_that_loses_history_fails_the_task_clearly(engine: Engine, fake: FakeComfy) -> None:
    engine.set_servers([fake.url])
    task = engine.submit(workflow(steps=50, step_delay=0.05))
    running(task)
    fake.restart(lose_history=True)
    with pytest.raises(PromptLost) as info:
        task.result(10)
    assert fake.url in str(info.value) and task.prompt_id in str(info.value)


@pytest.mark.slow
def test_a_server_that_dies_fails_its_tasks_within_the_reconnect_window(engine: Engine, fake: FakeComfy) -> None:
    engine.set_servers([fake.url])
    task = engine.submit(workflow(steps=50, step_delay=0.05))
    running(task)
    start = time.monotonic()
    fake.stop()
    with pytest.raises(PromptLost, match="unreachable") as info:
        task.result(10)
    assert time.monotonic() - start < FAST.reconnect_window + 3
    assert fake.url in str(info.value)


@pytest.mark.slow
def test_a_hung_server_is_noticed_by_pings_and_the_task_does_not_hang(engine: Engine, fake: FakeComfy) -> None:
    engine.set_servers([fake.url])
    task = engine.submit(workflow(steps=50, step_delay=0.05))
    running(task)
    start = time.monotonic()
    fake.freeze()
    wait_until(lambda: engine.get_status()["locked_server"] is None, timeout=5)
    assert time.monotonic() - start < 3.0  # 0.5 s pings, 1 s ping timeout
    with pytest.raises((PromptLost, ServerUnavailable)):
        task.result(15)


def _deregister_our_socket(engine: Engine, fake: FakeComfy) -> None:
    """The duplicate-clientId bug: a second socket with our client id that then closes makes ComfyUI forget OUR
    socket, which stays open but silently receives nothing more."""
    from websockets.sync.client import connect

    client_id = engine._connections[fake.url].client_id
    with connect(fake.url.replace("http", "ws", 1) + f"/ws?clientId={client_id}") as intruder:
        intruder.recv(timeout=5)


def test_a_queued_prompt_whose_events_go_missing_is_found_by_the_queue_poll(fake: FakeComfy) -> None:
    options = FAST.__class__(**{**FAST.__dict__, "silence_check": 100.0})  # so only the queue poll can find it
    engine = Engine([fake.url], options)
    try:
        engine.run(workflow(0), timeout=10)
        _deregister_our_socket(engine, fake)
        task = engine.submit(workflow(1, steps=3, step_delay=0.05))
        assert task.result(10).status == "success"
        assert task.progress is None  # no event ever reached us
        assert engine.get_status()["connection_state"] == "OPEN"
    finally:
        engine.close()


@pytest.mark.slow
@pytest.mark.parametrize("silence_check", [1.0, 100.0])
def test_a_running_prompt_whose_events_stop_is_found_by_the_silence_check(
    fake: FakeComfy, silence_check: float
) -> None:
    options = FAST.__class__(**{**FAST.__dict__, "silence_check": silence_check})
    engine = Engine([fake.url], options)
    try:
        task = engine.submit(workflow(1, steps=20, step_delay=0.05))
        running(task)  # running prompts are not queue-polled: once events stop, only the silence check helps
        _deregister_our_socket(engine, fake)
        if silence_check > 10:
            with pytest.raises(TimeoutError):  # the control: without the silence check the prompt is never seen
                task.result(4)
        else:
            assert task.result(10).status == "success"
    finally:
        engine.close()


# -- HTTP faults and hostile data -------------------------------------------------------------------------------------
def test_a_500_on_post_is_a_clear_error_naming_the_server(engine: Engine, fake: FakeComfy) -> None:
    engine.set_servers([fake.url])
    fake.fail_http("/prompt", 500)
    with pytest.raises(ServerUnavailable, match="HTTP 500") as info:
        engine.run(workflow(), timeout=10)
    assert fake.url in str(info.value)


def test_a_transient_500_on_history_is_retried(engine: Engine, fake: FakeComfy) -> None:
    engine.set_servers([fake.url])
    fake.fail_http("/history", 500, times=1)
    assert engine.run(workflow(), timeout=10).status == "success"


def test_malformed_and_unknown_frames_are_ignored(engine: Engine, fake: FakeComfy) -> None:
    engine.set_servers([fake.url])
    task = engine.submit(workflow(steps=10, step_delay=0.05))
    running(task)
    fake.send_text("{not json")
    fake.send_text('{"type": "from_the_future", "data": {"prompt_id": 5}}')
    fake.send_text('{"type": "progress", "data": {"value": "x"}}')
    fake.send_binary(b"\x00\x00\x00\x09garbage")
    fake.send_binary(b"\x00")
    assert task.result(10).status == "success"
    assert engine.get_status()["connection_state"] == "OPEN"
    assert fake.ws_connect_count == 1


def test_a_frame_over_the_size_limit_closes_the_socket_and_the_prompt_is_recovered(fake: FakeComfy) -> None:
    options = FAST.__class__(**{**FAST.__dict__, "socket": SocketOptions(ping_interval=0.5, max_size=64 * 1024)})
    engine = Engine([fake.url], options)
    try:
        task = engine.submit(workflow(steps=10, step_delay=0.05))
        running(task)
        fake.send_binary(b"\x00\x00\x00\x01\x00\x00\x00\x01" + b"x" * 100_000)
        assert task.result(10).status == "success"
        assert "1009" in status_of(engine, fake.url)["last_error"]
    finally:
        engine.close()


def test_hostile_filenames_never_escape_the_target_folder(engine: Engine, fake: FakeComfy, tmp_path: Path) -> None:
    engine.set_servers([fake.url])
    fake.evil_filenames = True
    result = engine.run(workflow(), timeout=10)
    target = tmp_path / "out"
    written = result.save(target)
    assert written and all(path.resolve().is_relative_to(target.resolve()) for path in written)
    assert result.save(target) != written  # a second save never overwrites


# -- bad workflows and failing nodes ----------------------------------------------------------------------------------
def test_a_400_names_each_failing_node(engine: Engine, fake: FakeComfy) -> None:
    engine.set_servers([fake.url])
    bad = {**workflow(), "4": {"class_type": "Invalid", "inputs": {}}}
    with pytest.raises(ValidationError) as info:
        engine.run(bad, timeout=10)
    assert info.value.nodes and info.value.nodes[0].node_id == "4"
    assert "node 4 (Invalid)" in str(info.value)


def test_a_200_with_node_errors_is_an_error_and_the_queued_rest_is_dropped(engine: Engine, fake: FakeComfy) -> None:
    engine.set_servers([fake.url])
    bad = {**workflow(), "4": {"class_type": "PartlyInvalid", "inputs": {}}}
    with pytest.raises(ValidationError) as info:
        engine.run(bad, timeout=10)
    assert info.value.partially_queued
    wait_until(lambda: info.value.prompt_id in fake.deleted_from_queue)


def test_a_node_exception_names_the_node_and_keeps_the_partial_result(engine: Engine, fake: FakeComfy) -> None:
    engine.set_servers([fake.url])
    bad = raising_workflow("boom at step 3")
    with pytest.raises(ExecutionError) as info:
        engine.run(bad, timeout=10)
    err = info.value
    assert err.node_id == "2" and err.node_type == "RaiseError" and "boom at step 3" in str(err)
    assert err.result is not None and err.result.status == "error"


def test_unreachable_servers_fail_fast_naming_the_server_without_credentials(engine: Engine) -> None:
    dead = FakeComfy()
    url = dead.start()
    dead.stop()
    engine.set_servers([url.replace("http://", "http://bob:hunter22@")])
    start = time.monotonic()
    with pytest.raises(ServerUnavailable) as info:
        engine.run(workflow(), timeout=10)
    assert time.monotonic() - start < 3
    assert url in str(info.value) and "hunter22" not in str(info.value) and "bob" not in str(info.value)


def test_no_servers_is_a_clear_error(engine: Engine) -> None:
    with pytest.raises(ServerUnavailable, match="no ComfyUI server is configured"):
        engine.submit(workflow())


def test_cancel_interrupts_only_that_prompt(engine: Engine, fake: FakeComfy) -> None:
    engine.set_servers([fake.url])
    task = engine.submit(workflow(steps=50, step_delay=0.05))
    running(task)
    task.cancel()
    with pytest.raises(Cancelled):
        task.result(2)
    wait_until(lambda: task.prompt_id in fake.interrupt_requests)
    assert None not in fake.interrupt_requests


def test_progress_and_previews_reach_the_task(engine: Engine, fake: FakeComfy) -> None:
    engine.set_servers([fake.url])
    fake.preview = True
    task = engine.submit(workflow(steps=5, step_delay=0.05))
    seen: set[int] = set()
    done = threading.Event()
    task.add_done_callback(lambda _t: done.set())
    while not done.wait(0.01):
        if task.progress is not None:
            seen.add(task.progress.value)
    assert task.result(1).status == "success"
    assert len(seen) >= 2  # progress moved while we watched
    assert task.progress.value == task.progress.max  # the last progress event seen was complete
    assert task.node == "3" and task.node_class == "SaveImage"  # the last node the server reported running
    assert task.preview is not None and task.preview[0].startswith("image/")


def test_a_prompt_that_reaches_no_server_leaves_no_record_behind(engine: Engine) -> None:
    dead = []
    for _ in range(3):
        server = FakeComfy()
        dead.append(server.start())
        server.stop()
    engine.set_servers(dead)
    with pytest.raises(ServerUnavailable):
        engine.run(workflow(), timeout=10)
    status = engine.get_status()
    assert status["pending_tasks_count"] == 0
    assert all(s["in_flight"] == 0 for s in status["servers"])
    assert all(s["last_error"] for s in status["servers"])  # it tried every server before giving up


def test_queue_positions_count_from_zero_for_the_next_in_line(engine: Engine, fake: FakeComfy) -> None:
    engine.set_servers([fake.url])
    fake.hold()
    first, second = engine.submit(workflow(1)), engine.submit(workflow(2))
    wait_until(lambda: first.queue_position == 0 and second.queue_position == 1, timeout=6)
    fake.release()
    assert first.result(10).status == second.result(10).status == "success"


def test_an_interrupt_during_submit_leaves_no_prompt_running_unheld(engine: Engine, fake: FakeComfy) -> None:
    import signal

    engine.set_servers([fake.url])
    engine.run(workflow(), timeout=10)

    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        engine.thread.call_soon(time.sleep, 0.3)  # hold the loop so the interrupt lands while submit() waits
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        with pytest.raises(KeyboardInterrupt):
            engine.submit(workflow(7, steps=50, step_delay=0.05))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    wait_until(lambda: engine.get_status()["pending_tasks_count"] == 0)
    posted_later = set(fake.posted_prompt_ids[1:])
    assert posted_later <= set(fake.deleted_from_queue) | set(fake.interrupt_requests)
