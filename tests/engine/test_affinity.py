"""One URL in front of two fake servers, round robin without affinity: every prompt either succeeds with its files
or fails with the clear no-affinity error; none is reported as a restart, none hangs."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest

from comfy_notebook.core.errors import ComfyError, NoAffinity
from comfy_notebook.engine.engine import Engine
from tests.engine.conftest import FAST, workflow
from tests.fakes.fake_comfy import FakeComfy
from tests.fakes.rr_proxy import RoundRobinProxy


@pytest.fixture
def proxy(fake: FakeComfy, fake2: FakeComfy) -> Iterator[RoundRobinProxy]:
    with RoundRobinProxy([fake.url, fake2.url]) as rr:
        yield rr


def test_round_robin_without_affinity_fails_clearly_and_loses_nothing(proxy: RoundRobinProxy) -> None:
    eng = Engine([proxy.url], dataclasses.replace(FAST, retries=2))
    try:
        tasks = [eng.submit(workflow(i, steps=2, step_delay=0.05)) for i in range(8)]
        seen: list[str] = []
        for task in tasks:
            try:
                result = task.result(20)  # a hang fails the test with TimeoutError
            except NoAffinity as exc:
                assert "load balancer without session affinity" in exc.message and "restart" not in exc.message
                seen.append("no-affinity")
                continue
            except ComfyError as exc:
                pytest.fail(f"not the no-affinity error: {type(exc).__name__}: {exc.message}")
            assert result.status == "success" and len(result.images) == 1  # all its files, or an error
            seen.append("ok")
        assert "no-affinity" in seen
        (server,) = eng.get_status()["servers"]
        assert server["affinity"] == "broken"
        assert "individually" in server["affinity_error"]
    finally:
        eng.close()


def test_a_single_server_is_never_mistaken_for_a_balancer(fake: FakeComfy) -> None:
    eng = Engine([fake.url], FAST)
    try:
        tasks = [eng.submit(workflow(i, steps=1)) for i in range(12)] + eng.submit_many(
            [workflow(100 + i, steps=1) for i in range(12)]
        )
        assert all(t.result(20).status == "success" for t in tasks)
        (server,) = eng.get_status()["servers"]
        assert server["affinity"] == "key" and server["affinity_error"] is None
    finally:
        eng.close()
