"""Pool mode on fake servers: prompts wait client-side and are bound late, when a server has room."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator

import httpx
import pytest

from comfy_notebook.core.errors import Cancelled, ConfigError, ServerUnavailable
from comfy_notebook.engine.engine import Engine
from tests.engine.conftest import POOL, workflow
from tests.fakes.fake_comfy import FakeComfy, running_fake, wait_until


@pytest.fixture
def fake3() -> Iterator[FakeComfy]:
    yield from running_fake()


class Sampler:
    """Samples a fake's queue length from another thread while a test runs (the most it ever held)."""

    def __init__(self, *fakes: FakeComfy) -> None:
        self.fakes = fakes
        self.most = dict.fromkeys((f.url for f in fakes), 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            for f in self.fakes:
                self.most[f.url] = max(self.most[f.url], f.queue_remaining)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_prompts_wait_client_side_and_no_server_holds_more_than_depth(
    pool: Engine, fake: FakeComfy, fake2: FakeComfy
) -> None:
    pool.set_servers([fake.url, fake2.url])
    with Sampler(fake, fake2) as sampler:
        tasks = [pool.submit(workflow(i, steps=2, step_delay=0.05)) for i in range(12)]
        waiting = [t for t in tasks if t.status == "waiting"]
        assert len(waiting) >= 12 - 2 * POOL.depth
        assert pool.get_status()["waiting"] >= 1
        assert sorted(t.queue_position for t in waiting) == list(range(len(waiting)))
        results = [t.result(20) for t in tasks]
    assert all(r.status == "success" and len(r.images) == 1 for r in results)
    assert max(sampler.most.values()) <= POOL.depth
    assert {r.server for r in results} == {fake.url, fake2.url}
    assert pool.get_status()["waiting"] == 0


def test_binding_is_first_in_first_out(fake: FakeComfy) -> None:
    eng = Engine([fake.url], dataclasses.replace(POOL, depth=1))
    try:
        tasks = [eng.submit(workflow(i)) for i in range(8)]
        for t in tasks:
            t.result(10)
        assert fake.posted_prompt_ids == [t.prompt_id for t in tasks]
    finally:
        eng.close()


def test_a_server_added_takes_waiting_work_at_once(pool: Engine, fake: FakeComfy, fake2: FakeComfy) -> None:
    pool.set_servers([fake.url])
    fake.hold()
    tasks = [pool.submit(workflow(i, steps=1, step_delay=0.3)) for i in range(6)]
    wait_until(lambda: sum(t.status == "waiting" for t in tasks) == 6 - POOL.depth, 5)
    pool.set_servers([fake.url, fake2.url])
    wait_until(lambda: len(fake2.posted_prompt_ids) == POOL.depth, 2)
    fake.release()
    assert all(t.result(20).status == "success" for t in tasks)


def test_a_busy_server_of_other_clients_gets_no_work(pool: Engine, fake: FakeComfy, fake2: FakeComfy) -> None:
    """Other clients' queue counts, as the ``status`` broadcasts report it."""
    fake.hold()
    foreign = {"prompt": workflow(99, steps=1, step_delay=2.0), "client_id": "someone-else"}
    for _ in range(3):
        httpx.post(fake.url + "/prompt", json=foreign).raise_for_status()
    pool.set_servers([fake.url, fake2.url])
    wait_until(lambda: next(s for s in pool.get_status()["servers"] if s["url"] == fake.url)["queue_remaining"] > 0)
    results = [t.result(20) for t in [pool.submit(workflow(i)) for i in range(5)]]
    assert {r.server for r in results} == {fake2.url}
    fake.release()


def test_a_faster_server_takes_more_work_without_configuration(pool: Engine, fake: FakeComfy, fake2: FakeComfy) -> None:
    fake.step_delay, fake2.step_delay = 0.01, 0.1
    pool.set_servers([fake.url, fake2.url])
    results = [t.result(30) for t in [pool.submit(workflow(i, steps=2)) for i in range(24)]]
    fast = sum(r.server == fake.url for r in results)
    assert fast >= 16  # ~10x the speed: late binding hands it most of the work


def test_bulk_prompts_use_the_scheduler_too(pool: Engine, fake: FakeComfy, fake2: FakeComfy) -> None:
    pool.set_servers([fake.url, fake2.url])
    with Sampler(fake, fake2) as sampler:
        tasks = pool.submit_many([workflow(i, steps=1, step_delay=0.02) for i in range(20)])
        results = [t.result(20) for t in tasks]
    assert all(r.status == "success" for r in results)
    assert {r.server for r in results} == {fake.url, fake2.url}
    assert max(sampler.most.values()) <= POOL.depth


def test_cancelling_a_waiting_prompt_never_sends_it(pool: Engine, fake: FakeComfy) -> None:
    pool.set_servers([fake.url])
    fake.hold()
    tasks = [pool.submit(workflow(i, steps=1, step_delay=0.2)) for i in range(4)]
    last = tasks[-1]
    assert last.status == "waiting"
    last.cancel()
    with pytest.raises(Cancelled):
        last.result(1)
    fake.release()
    for t in tasks[:-1]:
        t.result(10)
    assert last.prompt_id not in fake.posted_prompt_ids
    assert pool.get_status()["pending_tasks_count"] == 0


def test_a_dead_server_cools_down_and_the_others_take_the_work(pool: Engine, fake: FakeComfy, fake2: FakeComfy) -> None:
    fake.stop()
    pool.set_servers([fake.url, fake2.url])
    results = [t.result(10) for t in [pool.submit(workflow(i)) for i in range(6)]]
    assert {r.server for r in results} == {fake2.url}
    dead = next(s for s in pool.get_status()["servers"] if s["url"] == fake.url)
    assert dead["healthy"] is False and dead["last_error"]


@pytest.mark.slow
def test_when_no_server_answers_the_prompt_fails_naming_them_all(
    pool: Engine, fake: FakeComfy, fake2: FakeComfy
) -> None:
    urls = [fake.url, fake2.url]
    fake.stop()
    fake2.stop()
    pool.set_servers(urls)
    with pytest.raises(ServerUnavailable) as info:
        pool.run(workflow(), timeout=15)
    assert info.value.server in urls


def test_a_pinned_server_takes_every_new_prompt_in_pool_mode(pool: Engine, fake: FakeComfy, fake2: FakeComfy) -> None:
    pool.set_servers([fake.url, fake2.url])
    pool.pin(fake2.url)
    results = [t.result(10) for t in [pool.submit(workflow(i)) for i in range(6)]]
    assert {r.server for r in results} == {fake2.url}
    assert pool.get_status()["locked_server"] == fake2.url


def test_switching_to_lock_mode_routes_the_waiting_prompts(pool: Engine, fake: FakeComfy) -> None:
    pool.set_servers([fake.url])
    fake.hold()
    tasks = [pool.submit(workflow(i, steps=1, step_delay=0.1)) for i in range(5)]
    assert any(t.status == "waiting" for t in tasks)
    assert pool.set_mode("lock") == "lock"
    assert all(t.status != "waiting" for t in tasks)
    fake.release()
    assert all(t.result(10).status == "success" for t in tasks)
    assert pool.get_status()["mode"] == "lock"


def test_a_bad_mode_is_a_config_error(pool: Engine) -> None:
    with pytest.raises(ConfigError, match="unknown mode"):
        pool.set_mode("round-robin")
    assert pool.mode == "pool"


def test_three_servers_share_the_work(pool: Engine, fake: FakeComfy, fake2: FakeComfy, fake3: FakeComfy) -> None:
    pool.set_servers([fake.url, fake2.url, fake3.url])
    tasks = [pool.submit(workflow(i, steps=1, step_delay=0.05)) for i in range(18)]
    counts: dict[str, int] = {}
    for t in tasks:
        server = t.result(20).server
        counts[server] = counts.get(server, 0) + 1
    assert set(counts) == {fake.url, fake2.url, fake3.url}
    assert min(counts.values()) >= 3
