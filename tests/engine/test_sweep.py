"""Sweeps on fake servers, for the fault paths only (what a sweep does on real servers is in
``tests/integration/test_sweep.py``): a failing point fails alone, ``cancel()`` ends every unfinished point on
every server and returns quickly even from a hung server, a kernel interrupt while waiting cancels the rest, and a
plan error queues nothing."""

from __future__ import annotations

import dataclasses
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from comfy_notebook.core.errors import Cancelled, ExecutionError, WorkflowError
from comfy_notebook.engine.engine import Engine
from tests.engine.conftest import POOL, workflow
from tests.fakes.fake_comfy import FakeComfy, wait_until


def test_a_failing_point_fails_alone(pool: Engine, fake: FakeComfy, fake2: FakeComfy) -> None:
    """Point 2 runs the fake's raising node (the swept message is what it raises); the others succeed."""
    pool.set_servers([fake.url, fake2.url])
    graph = workflow(1)
    graph["4"] = {"class_type": "RaiseError", "inputs": {"image": ["1", 0], "message": "x"}}
    graph["5"] = {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "r"}}
    bad = pool.sweep(graph, {"4.message": ["boom"]})
    sweep = pool.sweep(workflow(2), {"1.color": [1, 2, 3, 4]})
    assert sweep.wait(20) is sweep and bad.wait(20) is bad  # wait never raises a point's error
    assert [p.status for p in sweep.points] == ["success"] * 4
    ((params, error),) = bad.errors
    assert params == {"4.message": "boom"} and isinstance(error, ExecutionError) and "boom" in str(error)
    assert bad.results == [] and bad.points[0].result is None and bad.points[0].error is error
    assert [params for params, _ in sweep.results] == [{"1.color": c} for c in (1, 2, 3, 4)]


def test_one_bad_point_among_good_ones(pool: Engine, fake: FakeComfy) -> None:
    """The fake refuses an ``Invalid`` node at the POST: that point's validation error does not stop the rest."""
    pool.set_servers([fake.url])
    graph = workflow(3)
    sweep = pool.sweep(graph, {"2.steps": [1, 2, 3], "1.color": [7]})
    sweep.wait(20)
    assert sweep.counts() == {"success": 3}
    graph["2"]["class_type"] = "Invalid"
    mixed = pool.sweep(graph, {"1.color": [1, 2]})
    mixed.wait(20)
    assert mixed.counts() == {"error": 2} and len(mixed.errors) == 2


def test_cancel_ends_every_unfinished_point_on_every_server(pool: Engine, fake: FakeComfy, fake2: FakeComfy) -> None:
    pool.set_servers([fake.url, fake2.url])
    sweep = pool.sweep(workflow(5, steps=200, step_delay=0.05), {"1.color": range(10)})
    wait_until(lambda: fake.running_prompt_id is not None and fake2.running_prompt_id is not None, 10)
    wait_until(lambda: len(fake.pending_prompt_ids) + len(fake2.pending_prompt_ids) == 2, 5)  # depth 2 each
    assert sweep.counts()["waiting"] == 6
    started = time.monotonic()
    sweep.cancel()
    assert time.monotonic() - started < 1.5  # one hop for every point, not half a second each
    assert sweep.done() and sweep.counts() == {"cancelled": 10}
    assert all(isinstance(error, Cancelled) and "cancelled with its sweep" in str(error) for _, error in sweep.errors)
    wait_until(lambda: fake.queue_remaining == 0 and fake2.queue_remaining == 0, 5)
    sent = {p.task.prompt_id for p in sweep.points if p.task.attempts}
    assert sent == set(fake.posted_prompt_ids) | set(fake2.posted_prompt_ids) and len(sent) == 4
    asked = set(fake.deleted_from_queue + fake2.deleted_from_queue) | set(
        fake.interrupt_requests + fake2.interrupt_requests
    )
    assert sent <= asked and None not in asked  # targeted: never a global interrupt
    assert pool.get_status()["pending_tasks_count"] == 0


def test_cancel_keeps_finished_points_and_returns_quickly_from_a_hung_server(fake: FakeComfy) -> None:
    eng = Engine([fake.url], dataclasses.replace(POOL, depth=1))
    try:
        sweep = eng.sweep(workflow(6), {"2.steps": [1, 400]})
        wait_until(lambda: sweep.points[0].task.done() and fake.running_prompt_id is not None, 10)
        fake.freeze()  # the server stops answering: the drop cannot be confirmed
        started = time.monotonic()
        sweep.cancel()
        assert time.monotonic() - started < POOL.cancel_wait + 1.0
        assert [p.status for p in sweep.points] == ["success", "cancelled"]
        assert len(sweep.results) == 1 and len(sweep.errors) == 1
    finally:
        fake.thaw()
        eng.close()


def blocked_in_wait(thread_id: int) -> bool:
    """Whether that thread is inside ``Sweep.wait`` right now (its live stack, as a debugger would see it)."""
    frame = sys._current_frames().get(thread_id)
    while frame is not None:
        if frame.f_code.co_name == "wait" and frame.f_code.co_filename.endswith(
            ("engine/sweep.py", "engine\\sweep.py")
        ):
            return True
        frame = frame.f_back
    return False


@pytest.fixture
def sigalrm_interrupts() -> Iterator[None]:
    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    yield
    signal.signal(signal.SIGALRM, previous)


def test_an_interrupt_while_waiting_cancels_every_unfinished_point(
    pool: Engine, fake: FakeComfy, fake2: FakeComfy, sigalrm_interrupts: None
) -> None:
    """What a kernel interrupt does: a signal to the main thread while ``wait()`` blocks."""
    pool.set_servers([fake.url, fake2.url])
    sweep = pool.sweep(workflow(8, steps=200, step_delay=0.05), {"1.color": range(6)})
    main = threading.main_thread().ident
    assert main is not None and threading.current_thread().ident == main

    def interrupt_when_both_run() -> None:
        wait_until(lambda: fake.running_prompt_id is not None and fake2.running_prompt_id is not None, 10)
        wait_until(lambda: blocked_in_wait(main), 10)  # never before the main thread waits: that would be no test
        signal.pthread_kill(main, signal.SIGALRM)

    interrupter = threading.Thread(target=interrupt_when_both_run)
    interrupter.start()
    with pytest.raises(KeyboardInterrupt):
        sweep.wait(30)
    interrupter.join()
    assert sweep.counts() == {"cancelled": 6}
    wait_until(lambda: fake.queue_remaining == 0 and fake2.queue_remaining == 0, 5)


def test_a_timeout_raises_and_the_points_keep_running(pool: Engine, fake: FakeComfy) -> None:
    pool.set_servers([fake.url])
    sweep = pool.sweep(workflow(9, steps=5, step_delay=0.1), {"1.color": [1, 2]})
    with pytest.raises(TimeoutError, match=r"2 of 2 sweep points did not finish within 0\.05 s"):
        sweep.wait(0.05)
    assert sweep.wait(20).counts() == {"success": 2}


def test_a_plan_error_queues_nothing(pool: Engine, fake: FakeComfy) -> None:
    pool.set_servers([fake.url])
    with pytest.raises(WorkflowError, match=r"no input 'sead'; its inputs: batch_size, color, height, width"):
        pool.sweep(workflow(), {"1.color": [1, 2], "1.sead": [3]})
    assert fake.posted_prompt_ids == [] and pool.get_status()["pending_tasks_count"] == 0


def test_saved_names_stay_inside_the_folder_whatever_the_values_and_server_names(
    pool: Engine, fake: FakeComfy, tmp_path: Path
) -> None:
    """Swept values with separators and ``..`` and a hostile server's ``../`` file names: every file lands inside
    the folder, named by its values, and a second save never overwrites the first."""
    pool.set_servers([fake.url])
    fake.evil_filenames = True
    sweep = pool.sweep(workflow(11), {"3.filename_prefix": ["../../up", "a/b\\c", ".hidden"]}).wait(20)
    assert sweep.counts() == {"success": 3}
    target = tmp_path / "out"
    written = sweep.save(target)
    assert [path.name for path in written] == [
        "filename_prefix=_.._up.png",
        "filename_prefix=a_b_c.png",
        "filename_prefix=hidden.png",
    ]
    assert all(path.parent == target.resolve() for path in written)
    again = sweep.save(target)
    assert again[0].name == "filename_prefix=_.._up (1).png"
    assert {p.read_bytes() for p in written} == {p.read_bytes() for p in again}


def test_dataframe_without_pandas_says_what_to_install(
    pool: Engine, fake: FakeComfy, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool.set_servers([fake.url])
    sweep = pool.sweep(workflow(12), {"1.color": [1, 2]}).wait(20)
    frame = sweep.dataframe()
    assert list(frame["1.color"]) == [1, 2] and list(frame["server"]) == [fake.url] * 2
    assert [r.prompt_id for r in frame["result"]] == list(frame["prompt_id"])
    monkeypatch.setitem(sys.modules, "pandas", None)  # what an environment without pandas looks like to import
    with pytest.raises(ImportError, match=r"needs pandas \(pip install pandas\)"):
        sweep.dataframe()
    assert len(sweep.results) == 2  # the list needs nothing
