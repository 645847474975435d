"""The chaos driver itself, on two real ComfyUI servers: it really kills, it stops by itself, it leaves all up.

Pool-mode failover tests trust the driver's record of what died when; these tests check that record against the
servers (ports refused right after each kill, processes replaced, every server answering after exit).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from comfy_notebook.tools.local_pool import LocalPool, answers
from tests.fakes.fake_comfy import wait_until
from tests.integration.chaos import ChaosDriver, Kill, port_refused
from tests.integration.conftest import own_pool

SLACK = 1.0  # scheduling slack on the driver's own delays (a kill waits for the process to be reaped, etc.)


@pytest.fixture(scope="module")
def pool2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPool]:
    """Two real servers of this module's own: chaos must not disturb the session's shared pool."""
    yield from own_pool(tmp_path_factory, "chaos-pool", 2)


def assert_all_up(pool: LocalPool) -> None:
    assert [(s.alive, s.answering) for s in pool.status()] == [(True, True)] * len(pool.urls)


@pytest.mark.timeout(600)
def test_chaos_kills_restarts_on_the_same_port_and_stops_by_itself(pool2: LocalPool) -> None:
    urls = pool2.urls
    pids_before = {s.url: s.pid for s in pool2.status()}
    refused_seen_by_test: list[bool] = []

    def probe(kill: Kill) -> None:  # runs right after the kill, before the restart is even scheduled
        refused_seen_by_test.append(port_refused(kill.url) and not answers(kill.url, timeout=0.5))

    with ChaosDriver(pool2, seed=7, max_kills=3, max_seconds=120, on_kill=probe) as chaos:
        assert chaos.wait(timeout=300), "the chaos driver did not stop by itself"
    kills = chaos.kills

    assert len(kills) == 3
    assert refused_seen_by_test == [True, True, True]
    for kill in kills:
        assert kill.url in urls and urls.index(kill.url) == kill.index
        assert kill.port_refused
        assert kill.restarted_at is not None and kill.ready_at is not None
        assert 1.0 <= kill.restarted_at - kill.killed_at <= 2.0 + SLACK
        assert kill.ready_at > kill.restarted_at
    for before, after in itertools.pairwise(kills):
        assert before.restarted_at is not None
        assert after.killed_at - before.restarted_at >= 2.0  # the gap between kills
    assert_all_up(pool2)
    for url in {k.url for k in kills}:
        assert {s.url: s.pid for s in pool2.status()}[url] != pids_before[url]  # a new process, same port


@pytest.mark.timeout(600)
def test_leaving_the_block_early_stops_killing_and_brings_every_server_back(pool2: LocalPool) -> None:
    with ChaosDriver(pool2, seed=3, max_kills=50, max_seconds=300, restart_delay=(30.0, 30.0)) as chaos:
        wait_until(lambda: len(chaos.kills) == 1, timeout=30)
        (victim,) = chaos.kills
        assert not answers(victim.url, timeout=0.5)  # still down: its restart is 30 s away
    (kill,) = chaos.kills  # no second kill, and the restart did not wait out its delay
    assert kill.restarted_at is not None and kill.restarted_at - kill.killed_at < 30.0
    assert kill.ready_at is not None  # the thread waited for it before it ended
    assert all(answers(url) for url in pool2.urls)
    assert_all_up(pool2)
