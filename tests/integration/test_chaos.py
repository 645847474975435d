"""Chaos on real servers: three real ComfyUI processes, hundreds of prompts, and a driver that SIGKILLs a random
live server every 2-5 s and restarts it on the same port 1-2 s later. Every prompt ends; every prompt that should
succeed does, with its own image fetched from the server its result names; each raising prompt fails once with its
node's error; nothing hangs; duplicates are counted, never returned.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Iterator
from typing import Any

import pytest

from comfy_notebook.core.errors import ExecutionError
from comfy_notebook.engine.engine import Engine, EngineOptions
from comfy_notebook.engine.task import Task
from comfy_notebook.tools.local_pool import LocalPool
from tests.integration.chaos import ChaosDriver
from tests.integration.conftest import own_pool
from tests.workflows import raising_workflow, slow_workflow

PROMPTS = 300
RAISING = 6
KILLS = 6


@pytest.fixture(scope="module")
def pool3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPool]:
    """Three real servers of this module's own: chaos must not disturb the session's shared pool."""
    yield from own_pool(tmp_path_factory, "chaos3", 3)


def color(i: int) -> int:
    return (i * 2654435761) % 0xFFFFFF  # distinct per prompt: its image proves which prompt produced it


def rgb(value: int) -> tuple[int, int, int]:
    return (value >> 16) & 255, (value >> 8) & 255, value & 255


def workload(seed: int) -> tuple[list[tuple[int, dict[str, Any]]], set[int]]:
    """``PROMPTS`` prompts of 50-300 ms on the sleeping node, ``RAISING`` of them raising, in shuffled order."""
    rng = random.Random(seed)
    raising = set(rng.sample(range(PROMPTS), RAISING))
    graphs = []
    for i in range(PROMPTS):
        if i in raising:
            graphs.append((i, raising_workflow(f"chaos-{i}", tag=color(i))))
        else:
            graph = slow_workflow(color(i), steps=1, step_seconds=rng.uniform(0.05, 0.3))
            graphs.append((i, graph))
    return graphs, raising


def run_under_chaos(pool: LocalPool, mode: str, retries: int, seed: int) -> None:
    engine = Engine(pool.urls, EngineOptions(mode=mode, retries=retries))
    graphs, raising = workload(seed)
    tasks: dict[int, Task] = {}
    try:
        with ChaosDriver(pool, seed=seed, max_kills=KILLS, max_seconds=120, min_up=1) as chaos:
            # Two thirds watched (per-prompt events), one third on the bulk path (quiet, history harvest).
            watched = [(i, g) for i, g in graphs if i % 3]
            quiet = [(i, g) for i, g in graphs if not i % 3]
            for i, graph in watched:
                tasks[i] = engine.submit(graph)
            for (i, _), task in zip(quiet, engine.submit_many([g for _, g in quiet]), strict=True):
                tasks[i] = task
            deadline = time.monotonic() + 400
            for task in tasks.values():  # every prompt ends: nothing hangs
                with contextlib.suppress(ExecutionError):
                    task.result(max(1.0, deadline - time.monotonic()))
            assert chaos.wait(timeout=300)
        assert len(chaos.kills) >= 3, "the chaos driver barely killed anything: the test proved little"

        for i, task in tasks.items():
            if i in raising:
                with pytest.raises(ExecutionError, match=f"chaos-{i}"):
                    task.result(0)
                assert [a.outcome for a in task.attempts].count("failed") == 1  # failed once, never retried
                assert task.attempts[-1].outcome == "failed"
                continue
            result = task.result(0)
            assert result.status == "success", (i, task.attempts)
            assert result.server == task.attempts[-1].server and task.attempts[-1].outcome == "success"
            files = result.fetch()  # fetched from result.server (the bulk path fetches them now, after the chaos)
            assert len(files) == 1, (i, result, task.attempts)
            assert files[0].to_pil().getpixel((0, 0)) == rgb(color(i)), "an image of another prompt"

        status = engine.get_status()
        assert status["duplicates"] == sum(t.duplicates for t in tasks.values())
        assert status["pending_tasks_count"] == 0 and status["waiting"] == 0
        moved = sum(len(t.attempts) > 1 for t in tasks.values())
        print(f"{mode}: {len(chaos.kills)} kills, {moved} prompts moved, {status['duplicates']} duplicates")
    finally:
        engine.close()


@pytest.mark.timeout(900)
def test_pool_mode_loses_nothing_under_chaos(pool3: LocalPool) -> None:
    run_under_chaos(pool3, "pool", retries=2, seed=11)


@pytest.mark.timeout(900)
def test_lock_mode_loses_nothing_under_chaos(pool3: LocalPool) -> None:
    """Lock mode queues everything on the locked server, so each kill of it loses every prompt queued there: a
    prompt may be moved once per kill, hence as many retries as kills."""
    run_under_chaos(pool3, "lock", retries=KILLS, seed=12)
