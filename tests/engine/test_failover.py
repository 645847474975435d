"""Failover on the fake server: every way a server can lose a prompt leads to a resubmission elsewhere (or, past
``retries``, to one clear error naming every server tried); deterministic failures are never retried; a lost
server that finishes the prompt after all gives a counted duplicate, never a second result."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator

import pytest

from comfy_notebook.core.errors import ExecutionError, PromptLost, ValidationError
from comfy_notebook.core.failover import Limits
from comfy_notebook.engine.engine import Engine
from comfy_notebook.engine.http import HttpOptions
from tests.engine.conftest import FAST, workflow
from tests.fakes.fake_comfy import FakeComfy, wait_until
from tests.workflows import raising_workflow

RETRYING = dataclasses.replace(FAST, retries=2, ghost_check=0.2)


@pytest.fixture(params=["lock", "pool"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def retrying(mode: str) -> Iterator[Engine]:
    eng = Engine((), dataclasses.replace(RETRYING, mode=mode))
    yield eng
    eng.close()


def started_on(task, fake: FakeComfy, timeout: float = 5.0) -> None:
    wait_until(lambda: task.status == "running" and task.server == fake.url, timeout)


def outcomes(task) -> list[tuple[str, str]]:
    return [(a.server, a.outcome) for a in task.attempts]


def first_and_other(task, a: FakeComfy, b: FakeComfy) -> tuple[FakeComfy, FakeComfy]:
    return (a, b) if task.server == a.url else (b, a)


# -- each way a server loses a prompt --------------------------------------------------------------------------------
def test_a_restart_that_forgets_the_prompt_moves_it(retrying: Engine, fake: FakeComfy, fake2: FakeComfy) -> None:
    retrying.set_servers([fake.url, fake2.url])
    task = retrying.submit(workflow(steps=20, step_delay=0.05))
    wait_until(lambda: task.status == "running", 5)
    lost, other = first_and_other(task, fake, fake2)
    old_id = task.prompt_id
    lost.restart(lose_history=True)
    result = task.result(15)
    assert result.status == "success" and result.server == other.url
    assert outcomes(task) == [(lost.url, "lost"), (other.url, "success")]
    assert task.attempts[0].prompt_id == old_id and result.prompt_id != old_id  # a fresh id per attempt
    assert result.prompt_id in other.history_ids and result.prompt_id not in lost.history_ids
    # Refused while it restarts (nothing listens: moved at once), or back already and without a record of it.
    why = task.attempts[0].reason
    assert why in ("became unreachable", "restarted and forgot the prompt")
    assert task.moved == f"moved from {lost.url} to {other.url}: {lost.url} {why}"
    assert len(result.images) == 1
    status = retrying.get_status()
    by_url = {s["url"]: s for s in status["servers"]}
    assert by_url[lost.url]["retried"] == 1 and by_url[other.url]["done"] == 1
    assert status["retries"] == 1


def test_a_dead_server_moves_its_prompt_at_once(retrying: Engine, fake: FakeComfy, fake2: FakeComfy) -> None:
    """Connection refused means no process listens: with another server at hand there is nothing to wait for."""
    retrying.set_servers([fake.url, fake2.url])
    task = retrying.submit(workflow(steps=40, step_delay=0.05))
    wait_until(lambda: task.status == "running", 5)
    lost, other = first_and_other(task, fake, fake2)
    start = time.monotonic()
    lost.stop()
    wait_until(lambda: task.server == other.url and task.status in ("queued", "running"), 5)
    moved_after = time.monotonic() - start
    assert moved_after < FAST.reconnect_window  # not after the reconnect window: at once
    assert task.result(15).server == other.url
    assert task.attempts[0].reason == "became unreachable"


@pytest.mark.slow
def test_a_hung_server_loses_its_prompt_to_another_and_a_late_finish_is_a_counted_duplicate(
    retrying: Engine, fake: FakeComfy, fake2: FakeComfy
) -> None:
    retrying.set_servers([fake.url, fake2.url])
    task = retrying.submit(workflow(steps=10, step_delay=0.1))
    wait_until(lambda: task.status == "running", 5)
    hung, other = first_and_other(task, fake, fake2)
    old_id = task.prompt_id
    start = time.monotonic()
    hung.freeze()
    wait_until(lambda: task.server == other.url, 5)
    assert time.monotonic() - start < 3.0  # 0.5 s pings, 1 s ping timeout
    assert task.attempts[0].reason == "stopped answering"
    result = task.result(15)
    assert result.server == other.url
    hung.thaw()  # the partitioned server comes back and finishes the old prompt too
    wait_until(lambda: retrying.get_status()["duplicates"] == 1, 10)
    assert old_id in hung.history_ids
    assert task.duplicates == 1 and task.result(0) is result  # counted, never returned twice
    by_url = {s["url"]: s for s in retrying.get_status()["servers"]}
    assert by_url[hung.url]["duplicates"] == 1


@pytest.mark.parametrize(
    "fault", [("POST", "/prompt", "its POST is on its way"), ("GET", "/history/", "its result is being read")]
)
def test_a_server_that_hangs_while_a_request_is_on_its_way_loses_the_prompt_at_once(
    mode: str, fake: FakeComfy, fake2: FakeComfy, fault: tuple[str, str, str]
) -> None:
    """A request to a hung server would wait for the HTTP timeout (30 s here); once the pings say the server hangs,
    the prompt moves on, and the late answer after the thaw is a counted duplicate."""
    method, path, phase = fault
    options = dataclasses.replace(RETRYING, mode=mode, http=HttpOptions(timeout=30.0, connect_timeout=2.0))
    eng = Engine([fake.url, fake2.url], options)
    try:
        for server in (fake, fake2):
            server.freeze_on(path, method=method)
        task = eng.submit(workflow(steps=1))
        wait_until(lambda: fake.frozen or fake2.frozen, 5)
        hung, other = (fake, fake2) if fake.frozen else (fake2, fake)
        other.disarm()
        old_id, start = task.prompt_id, time.monotonic()
        result = task.result(8)  # pings: 0.5 s apart, 1 s to answer, 0.5 s to close
        assert time.monotonic() - start < 5.0, f"{phase}: waited for the HTTP timeout"
        assert result.status == "success" and result.server == other.url
        assert outcomes(task) == [(hung.url, "lost"), (other.url, "success")]
        assert task.attempts[0].reason == "stopped answering"
        hung.thaw()  # it answers the request now, and has the prompt (queued, or finished already)
        wait_until(lambda: eng.get_status()["duplicates"] == 1, 10)
        assert old_id in hung.history_ids
        assert task.duplicates == 1 and task.result(0) is result
    finally:
        eng.close()


def test_a_failed_post_is_sent_to_another_server(retrying: Engine, fake: FakeComfy, fake2: FakeComfy) -> None:
    retrying.set_servers([fake.url, fake2.url])
    fake.fail_http("/prompt", 500)
    fake2.fail_http("/prompt", 500)
    task = retrying.submit(workflow())
    result = task.result(10)
    assert result.status == "success"
    assert [a.outcome for a in task.attempts] == ["lost", "lost", "success"]
    assert task.attempts[0].reason == "did not accept the prompt"
    assert task.attempts[0].server != task.attempts[1].server


def test_past_retries_one_error_names_every_server_tried(fake: FakeComfy, fake2: FakeComfy) -> None:
    eng = Engine([fake.url, fake2.url], dataclasses.replace(RETRYING, retries=1))
    try:
        task = eng.submit(workflow(steps=40, step_delay=0.05))
        wait_until(lambda: task.status == "running", 5)
        first, second = first_and_other(task, fake, fake2)
        first.restart(lose_history=True)
        started_on(task, second)
        second.restart(lose_history=True)
        with pytest.raises(PromptLost) as info:
            task.result(15)
        text = str(info.value)
        assert "2 attempts on 2 server(s)" in text
        assert first.url in text and second.url in text
        assert [a.outcome for a in task.attempts] == ["lost", "lost"]
    finally:
        eng.close()


def test_one_server_that_restarts_gets_the_prompt_again(fake: FakeComfy) -> None:
    """With no other server, the one that lost the prompt runs it again once it is back: nothing is lost."""
    eng = Engine([fake.url], RETRYING)
    try:
        task = eng.submit(workflow(steps=20, step_delay=0.05))
        wait_until(lambda: task.status == "running", 5)
        fake.restart(lose_history=True)
        result = task.result(15)
        assert result.server == fake.url and [a.outcome for a in task.attempts] == ["lost", "success"]
        assert task.attempts[0].reason == "restarted and forgot the prompt"  # asked it after reconnecting
    finally:
        eng.close()


# -- never retried -----------------------------------------------------------------------------------------------------
def test_a_node_that_raises_is_not_retried(retrying: Engine, fake: FakeComfy, fake2: FakeComfy) -> None:
    retrying.set_servers([fake.url, fake2.url])
    task = retrying.submit(raising_workflow("kaput"))
    with pytest.raises(ExecutionError, match="kaput"):
        task.result(10)
    assert [a.outcome for a in task.attempts] == ["failed"]
    assert len(fake.posted_prompt_ids) + len(fake2.posted_prompt_ids) == 1


def test_a_refused_workflow_is_not_retried(retrying: Engine, fake: FakeComfy, fake2: FakeComfy) -> None:
    retrying.set_servers([fake.url, fake2.url])
    graph = workflow()
    graph["2"] = {"class_type": "Invalid", "inputs": {"image": ["1", 0]}}
    with pytest.raises(ValidationError):
        retrying.run(graph, timeout=10)
    assert len(fake.http_log) + len(fake2.http_log) <= 4  # one socket and one POST, on one server


def test_a_cancelled_prompt_is_not_retried(retrying: Engine, fake: FakeComfy, fake2: FakeComfy) -> None:
    retrying.set_servers([fake.url, fake2.url])
    task = retrying.submit(workflow(steps=40, step_delay=0.05))
    wait_until(lambda: task.status == "running", 5)
    task.cancel()
    assert task.status == "cancelled"
    wait_until(lambda: task.prompt_id in (fake.interrupt_requests + fake2.interrupt_requests), 5)
    assert len(task.attempts) == 1


# -- lock mode follows the new lock ------------------------------------------------------------------------------------
def test_in_lock_mode_the_moved_prompt_follows_the_new_lock(fake: FakeComfy, fake2: FakeComfy) -> None:
    eng = Engine([fake.url, fake2.url], RETRYING)
    try:
        first = eng.run(workflow(), timeout=10)
        locked = eng.get_status()["locked_server"]
        assert locked == first.server
        dead, other = (fake, fake2) if locked == fake.url else (fake2, fake)
        task = eng.submit(workflow(steps=40, step_delay=0.05))
        started_on(task, dead)
        dead.stop()
        assert task.result(15).server == other.url
        assert eng.get_status()["locked_server"] == other.url
    finally:
        eng.close()


# -- the watchdog ------------------------------------------------------------------------------------------------------
def test_a_prompt_a_silent_server_never_starts_moves_after_the_start_limit(fake: FakeComfy, fake2: FakeComfy) -> None:
    """The server answers pings but says nothing at all while our prompt waits behind a long silent one."""
    options = dataclasses.replace(RETRYING, limits=Limits(start=1.0), silence_check=60.0)
    eng = Engine([fake.url, fake2.url], options)
    try:
        eng.pin(fake.url)
        blocker = eng.submit(workflow(steps=1, step_delay=8.0))  # one silent step
        wait_until(lambda: blocker.status == "running", 5)
        stuck = eng.submit(workflow(1))
        wait_until(lambda: stuck.status == "queued", 5)
        result = stuck.result(15)
        assert result.server == fake2.url and stuck.attempts[0].reason == "did not start it"
        assert blocker.status == "running" and len(blocker.attempts) == 1  # the long one is never killed
        wait_until(lambda: stuck.attempts[0].prompt_id in fake.deleted_from_queue, 5)
        blocker.cancel()
    finally:
        eng.close()


def test_execution_timeout_interrupts_a_long_prompt_and_is_not_retried(fake: FakeComfy, fake2: FakeComfy) -> None:
    options = dataclasses.replace(RETRYING, limits=Limits(execution=0.5))
    eng = Engine([fake.url, fake2.url], options)
    try:
        task = eng.submit(workflow(steps=200, step_delay=0.05))
        with pytest.raises(Exception, match="execution_timeout"):
            task.result(10)
        assert len(task.attempts) == 1
        wait_until(lambda: task.prompt_id in fake.interrupt_requests + fake2.interrupt_requests, 5)
    finally:
        eng.close()


@pytest.mark.slow
def test_a_long_prompt_on_a_server_that_answers_pings_is_never_killed(fake: FakeComfy) -> None:
    options = dataclasses.replace(RETRYING, silence_check=0.5, monitor_interval=0.1)
    eng = Engine([fake.url], options)
    try:
        task = eng.submit(workflow(steps=1, step_delay=3.0))  # one step, no event for 3 s
        assert task.result(10).status == "success"
        assert len(task.attempts) == 1
    finally:
        eng.close()
