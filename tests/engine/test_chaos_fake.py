"""Chaos on fake servers (the quick twin of tests/integration/test_chaos.py): three fakes restarted at random,
losing queue and history each time, while prompts of both paths run; every prompt ends and succeeds, none is left
behind in the engine's bookkeeping."""

from __future__ import annotations

import dataclasses
import random
import threading
from collections.abc import Iterator

import pytest

from comfy_notebook.engine.engine import Engine
from tests.engine.conftest import FAST
from tests.fakes.fake_comfy import FakeComfy, running_fake, wait_until
from tests.workflows import slow_workflow


@pytest.fixture
def fakes() -> Iterator[list[FakeComfy]]:
    gens = [running_fake() for _ in range(3)]
    yield [next(g) for g in gens]
    for g in gens:
        next(g, None)


class Restarter:
    """Stops a random fake every 0.5-1 s and starts it again 0.2-0.5 s later, until stopped."""

    def __init__(self, fakes: list[FakeComfy], seed: int) -> None:
        self.fakes, self.rng, self.restarts = fakes, random.Random(seed), 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.rng.uniform(0.5, 1.0)):
            fake = self.rng.choice(self.fakes)
            fake.stop()
            self._stop.wait(self.rng.uniform(0.2, 0.5))
            fake.start()
            self.restarts += 1

    def __enter__(self) -> Restarter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.mark.slow
@pytest.mark.parametrize(("mode", "retries"), [("pool", 2), ("lock", 30)])
def test_every_prompt_survives_servers_restarting_at_random(fakes: list[FakeComfy], mode: str, retries: int) -> None:
    """Lock mode queues everything on one server, so each restart of it loses all that was queued there: it needs
    a retry per restart a prompt lives through."""
    eng = Engine([f.url for f in fakes], dataclasses.replace(FAST, mode=mode, retries=retries))
    rng = random.Random(3)
    try:
        with Restarter(fakes, seed=5) as chaos:
            tasks = [eng.submit(slow_workflow(i, steps=1, step_seconds=rng.uniform(0.01, 0.05))) for i in range(80)]
            tasks += eng.submit_many([slow_workflow(100 + i, steps=1, step_seconds=0.02) for i in range(40)])
            wait_until(lambda: all(t.done() for t in tasks), 60)
        assert chaos.restarts >= 2
        for task in tasks:
            result = task.result(0)
            assert result.status == "success" and result.server == task.attempts[-1].server
            assert len(result.fetch()) == 1
        status = eng.get_status()
        assert status["pending_tasks_count"] == 0 and status["waiting"] == 0
        assert all(s["in_flight"] == 0 for s in status["servers"])
        assert status["retries"] == sum(len(t.attempts) - 1 for t in tasks if t.attempts) - sum(
            a.outcome == "unreachable" for t in tasks for a in t.attempts
        )
    finally:
        eng.close()
