"""Pool mode's tail on fake servers: a prompt still queued on a stuck or slow server is taken back for an idle
one, only when the server confirms it had not started, and never when the user pinned it."""

from __future__ import annotations

from comfy_notebook.engine.engine import Engine
from tests.engine.conftest import FAST, workflow
from tests.fakes.fake_comfy import FakeComfy


def four_on_two(pool: Engine, fast: FakeComfy, stuck: FakeComfy) -> list:
    """Four prompts over two servers, two each (A, B, A, B), the second server holding its queue."""
    stuck.hold()
    pool.set_servers([fast.url, stuck.url])
    tasks = [pool.submit(workflow(i, steps=1, step_delay=0.2)) for i in range(4)]
    assert [t.server for t in tasks] == [fast.url, stuck.url, fast.url, stuck.url]
    return tasks


def test_an_idle_server_takes_the_prompt_queued_behind_another(pool: Engine, fake: FakeComfy, fake2: FakeComfy) -> None:
    tasks = four_on_two(pool, fake, fake2)
    first_id = tasks[3].prompt_id
    moved = tasks[3].result(10)  # fake2 holds its queue: only the move can finish it
    assert moved.status == "success" and moved.server == fake.url
    assert [a.outcome for a in tasks[3].attempts] == ["moved", "success"]
    assert fake2.deleted_from_queue == [first_id]
    assert "moved from" in (tasks[3].moved or "") and "had not started it" in (tasks[3].moved or "")
    assert tasks[1].server == fake2.url  # the one at the head of fake2's queue stays: it is next to run there
    fake2.release()
    assert tasks[1].result(10).server == fake2.url
    assert first_id not in fake2.history_ids  # it never ran there
    status = pool.get_status()
    assert status["retries"] == 0 and status["duplicates"] == 0


def test_a_prompt_the_server_would_not_delete_stays_and_finishes_there(
    pool: Engine, fake: FakeComfy, fake2: FakeComfy
) -> None:
    fake2.fail_http("/queue", 500, times=1, method="POST")  # the delete is refused (a GET /queue must not use it up)
    tasks = four_on_two(pool, fake, fake2)
    for t in tasks[::2]:
        assert t.result(10).server == fake.url
    probe = pool.submit(workflow(9, steps=1))  # one more finished on the idle server: every pump has run
    assert probe.result(10).server == fake.url
    fake2.release()
    assert tasks[3].result(10).server == fake2.url
    assert [a.outcome for a in tasks[3].attempts] == ["success"]
    assert fake2.deleted_from_queue == []  # one try per prompt: no second delete


def test_pinned_prompts_are_never_taken_back(pool: Engine, fake: FakeComfy, fake2: FakeComfy) -> None:
    fake2.hold()
    pool.set_servers([fake.url, fake2.url])
    pinned = [pool.submit(workflow(i, steps=1), server=fake2.url) for i in range(3)]
    assert pool.submit(workflow(9, steps=1)).result(10).server == fake.url
    assert fake2.deleted_from_queue == []
    fake2.release()
    assert all(t.result(10).server == fake2.url for t in pinned)


def test_lock_mode_never_takes_prompts_back(fake: FakeComfy, fake2: FakeComfy) -> None:
    eng = Engine([fake2.url, fake.url], FAST)
    try:
        fake2.hold()
        tasks = [eng.submit(workflow(i, steps=1)) for i in range(3)]
        assert {t.server for t in tasks} <= {fake2.url, fake.url}
        locked = tasks[0].server
        assert all(t.server == locked for t in tasks)
        fake2.release()
        assert all(t.result(10).server == locked for t in tasks)
        assert fake.deleted_from_queue == fake2.deleted_from_queue == []
    finally:
        eng.close()
