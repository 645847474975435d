"""The bulk path: ``submit_many`` posts quiet prompts (no per-prompt events), harvests them from ``/history`` in
queue order, and fetches files the server keeps on disk on first use."""

from __future__ import annotations

import dataclasses
import threading

import httpx
import pytest

from comfy_notebook.core.protocol import ImageRef
from comfy_notebook.core.servers import ServerSpec
from comfy_notebook.engine.engine import Engine
from comfy_notebook.engine.http import HttpOptions, fetch_files
from comfy_notebook.engine.loop import THREAD_NAME
from tests.engine.conftest import FAST, workflow
from tests.fakes.fake_comfy import FakeComfy, wait_until


def views(fake: FakeComfy) -> list[str]:
    return [path for method, path in fake.http_log if path.startswith("/view")]


def test_bulk_prompts_complete_in_order_without_events(engine: Engine, fake: FakeComfy) -> None:
    engine.set_servers([fake.url])
    tasks = engine.submit_many([workflow(i) for i in range(15)])
    results = [t.result(20) for t in tasks]
    assert [r.prompt_id for r in results] == [t.prompt_id for t in tasks]
    assert all(r.status == "success" for r in results)
    assert all(t.progress is None and t.node is None for t in tasks)  # the server sent them no events
    assert engine.get_status()["pending_tasks_count"] == 0


def test_bulk_output_files_are_fetched_on_first_use_from_their_server(engine: Engine, fake: FakeComfy) -> None:
    engine.set_servers([fake.url])
    (result,) = [t.result(20) for t in engine.submit_many([workflow(1)])]
    assert views(fake) == []  # nothing fetched during the burst
    assert result.images[0].size == (8, 8)
    assert len(views(fake)) == 1
    assert result.files and len(views(fake)) == 1  # fetched once, then kept


def test_bulk_temp_files_are_fetched_at_once_because_a_restart_wipes_them(engine: Engine, fake: FakeComfy) -> None:
    engine.set_servers([fake.url])
    (result,) = [t.result(20) for t in engine.submit_many([workflow(1, output="PreviewImage")])]
    assert len(views(fake)) == 1
    fake.restart(lose_history=True)
    assert result.images[0].size == (8, 8)


def test_files_can_be_fetched_after_the_engine_is_closed(fake: FakeComfy) -> None:
    engine = Engine([fake.url])
    (result,) = [t.result(20) for t in engine.submit_many([workflow(1)])]
    engine.close()
    assert len(result.fetch()) == 1


def test_fetching_on_the_loop_thread_is_refused(fake: FakeComfy) -> None:
    errors: list[BaseException] = []

    def on_loop_thread() -> None:
        try:
            fetch_files(ServerSpec.parse(fake.url), HttpOptions(), [ImageRef("x.png", "", "output", "1")])
        except RuntimeError as exc:
            errors.append(exc)

    thread = threading.Thread(target=on_loop_thread, name=THREAD_NAME)
    thread.start()
    thread.join()
    assert errors and "loop thread" in str(errors[0])


def test_bulk_prompts_interleaved_with_another_clients_prompts(engine: Engine, fake: FakeComfy) -> None:
    engine.set_servers([fake.url])
    fake.hold()
    ours = engine.submit_many([workflow(i) for i in range(3)])
    wait_until(lambda: len(fake.pending_prompt_ids) == 3)
    body = {"prompt": workflow(99), "client_id": "someone-else", "prompt_id": "ffffffff-0000-4000-8000-000000000000"}
    httpx.post(fake.url + "/prompt", json=body, timeout=5).raise_for_status()
    more = engine.submit_many([workflow(i + 10) for i in range(3)])
    wait_until(lambda: len(fake.pending_prompt_ids) == 7)
    fake.release()
    assert all(t.result(20).status == "success" for t in ours + more)


def test_bulk_prompts_survive_a_dropped_socket(engine: Engine, fake: FakeComfy) -> None:
    engine.set_servers([fake.url])
    fake.step_delay = 0.02
    tasks = engine.submit_many([workflow(i, steps=3, step_delay=0.02) for i in range(10)])
    wait_until(lambda: len(fake.history_ids) >= 2)
    fake.abort_sockets()
    assert all(t.result(20).status == "success" for t in tasks)


def test_a_bulk_prompt_lost_in_a_restart_fails_clearly(engine: Engine, fake: FakeComfy) -> None:
    engine.set_servers([fake.url])
    fake.hold()
    (task,) = engine.submit_many([workflow(1)])
    wait_until(lambda: len(fake.pending_prompt_ids) == 1)
    fake.restart(lose_history=True)
    with pytest.raises(Exception, match="lost") as info:
        task.result(15)
    assert task.prompt_id in str(info.value)


def test_bulk_harvest_reads_history_in_batches(engine: Engine, fake: FakeComfy) -> None:
    engine.set_servers([fake.url])
    fake.hold()
    tasks = engine.submit_many([workflow(i) for i in range(40)])
    wait_until(lambda: len(fake.pending_prompt_ids) == 40)
    fake.release()  # all 40 finish faster than the harvester walks: its window must grow to catch up
    assert all(t.result(20).status == "success" for t in tasks)
    history_reads = [path for method, path in fake.http_log if method == "GET" and path.startswith("/history")]
    assert len(history_reads) < 0.75 * len(tasks), history_reads  # well under one read per prompt


def test_pool_mode_frees_a_place_when_the_queue_shrinks_and_reads_history_in_batches(
    fake: FakeComfy, fake2: FakeComfy
) -> None:
    """A server working through bulk prompts one at a time: the place of each finished prompt is given back on the
    ``status`` broadcast (no history read needed to bind the next one), and the history is read in batches."""
    eng = Engine([fake.url, fake2.url], dataclasses.replace(FAST, mode="pool"))
    try:
        tasks = eng.submit_many([workflow(i, steps=1, step_delay=0.02) for i in range(60)])
        assert all(t.result(30).status == "success" for t in tasks)
    finally:
        eng.close()
    for server in (fake, fake2):
        served = sum(t.server == server.url for t in tasks)
        reads = [p for m, p in server.http_log if m == "GET" and p.startswith("/history")]
        assert served >= 20  # both servers worked
        assert len(reads) <= served / 3, (served, reads)
