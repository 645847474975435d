"""Engine fixtures: fake ComfyUI servers for fault injection and an engine with short timeouts."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest

from comfy_notebook.engine.connection import SocketOptions
from comfy_notebook.engine.engine import Engine, EngineOptions
from comfy_notebook.engine.http import HttpOptions
from tests.fakes.fake_comfy import FakeComfy, running_fake
from tests.workflows import slow_workflow

FAST = EngineOptions(
    socket=SocketOptions(ping_interval=0.5, ping_timeout=1.0, close_timeout=0.5, open_timeout=2.0),
    http=HttpOptions(timeout=3.0, connect_timeout=2.0),
    reconnect_window=2.0,
    silence_check=3.0,
    retries=0,  # the fault tests below check what one server's loss looks like; failover has its own tests
)


#: Pool mode with failover on, for the late-binding and take-back tests.
POOL = dataclasses.replace(FAST, mode="pool", retries=2)


@pytest.fixture
def pool() -> Iterator[Engine]:
    """A pool-mode engine with no servers yet (the test sets them)."""
    eng = Engine((), POOL)
    yield eng
    eng.close()


def workflow(tag: int = 0, *, steps: int = 2, step_delay: float = 0.0, output: str = "SaveImage") -> dict:
    return slow_workflow(tag, steps=steps, step_seconds=step_delay, output=output)


@pytest.fixture
def fake() -> Iterator[FakeComfy]:
    yield from running_fake()


@pytest.fixture
def fake2() -> Iterator[FakeComfy]:
    yield from running_fake()


@pytest.fixture
def engine() -> Iterator[Engine]:
    eng = Engine((), FAST)
    yield eng
    eng.close()
