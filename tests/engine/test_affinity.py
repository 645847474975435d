"""One URL in front of two fake servers, round robin without affinity: every prompt either succeeds with its files
or fails with the clear no-affinity error; none is reported as a restart, none hangs."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

import httpx
import pytest

from comfy_notebook.core.errors import ComfyError, NoAffinity
from comfy_notebook.engine.engine import Engine
from tests.engine.conftest import FAST, workflow
from tests.fakes.fake_comfy import FakeComfy, wait_until
from tests.fakes.rr_proxy import RoundRobinProxy


@pytest.fixture
def proxy(fake: FakeComfy, fake2: FakeComfy) -> Iterator[RoundRobinProxy]:
    with RoundRobinProxy([fake.url, fake2.url]) as rr:
        yield rr


def test_round_robin_without_affinity_fails_clearly_and_loses_nothing(
    proxy: RoundRobinProxy, caplog: pytest.LogCaptureFixture
) -> None:
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
        said = [r for r in caplog.records if "load balancer without session affinity" in r.getMessage()]
        assert len(said) == 1 and said[0].levelname == "WARNING"  # in the log once, not once per prompt
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


@pytest.fixture
def sticky(fake: FakeComfy, fake2: FakeComfy) -> Iterator[RoundRobinProxy]:
    with RoundRobinProxy([fake.url, fake2.url], sticky="SRV") as proxy:
        yield proxy


def test_a_sticky_cookie_keeps_the_socket_and_every_call_on_one_backend(
    sticky: RoundRobinProxy, fake: FakeComfy, fake2: FakeComfy
) -> None:
    eng = Engine([sticky.url], FAST)
    try:
        tasks = [eng.submit(workflow(i, steps=2, step_delay=0.02)) for i in range(6)]
        tasks += eng.submit_many([workflow(100 + i, steps=1) for i in range(6)])
        results = [t.result(20) for t in tasks]
        assert all(r.status == "success" and len(r.images) == 1 for r in results)
        assert all(t.progress is not None for t in tasks[:6])  # the socket heard every submit() prompt
        (server,) = eng.get_status()["servers"]
        assert server["affinity"] == "cookie" and server["backend_changes"] == 0
    finally:
        eng.close()
    # the socket's backend got everything; the other one nothing at all
    ours = [f for f in (fake, fake2) if f.posted_prompt_ids]
    assert len(ours) == 1 and len(ours[0].posted_prompt_ids) == 12
    upstreams = {upstream for upstream, _, _ in sticky.routed}
    assert upstreams == {ours[0].url}


def test_when_the_cookies_backend_dies_the_balancer_moves_us_and_nothing_is_lost(
    sticky: RoundRobinProxy, fake: FakeComfy, fake2: FakeComfy
) -> None:
    eng = Engine([sticky.url], dataclasses.replace(FAST, retries=2))
    try:
        first = eng.run(workflow(0, steps=1), timeout=20)
        assert first.status == "success"
        backend = fake if fake.posted_prompt_ids else fake2
        other = fake2 if backend is fake else fake
        tasks = [eng.submit(workflow(i, steps=2, step_delay=0.2)) for i in range(1, 4)]
        wait_until(lambda: len(backend.posted_prompt_ids) == 4, 10)
        backend.stop()  # the process behind our cookie is gone; the balancer sends us to the other one
        results = [t.result(30) for t in tasks]
        assert all(r.status == "success" and len(r.images) == 1 for r in results)
        assert set(other.posted_prompt_ids) >= {r.prompt_id for r in results}
        moved = [a for t in tasks for a in t.attempts if a.outcome == "lost"]
        assert moved and all("another backend" in (a.reason or "") for a in moved)
        (server,) = eng.get_status()["servers"]
        assert server["backend_changes"] == 1 and server["affinity"] == "cookie"
    finally:
        eng.close()


def test_a_reset_clears_the_verdict(proxy: RoundRobinProxy, fake: FakeComfy) -> None:
    eng = Engine([proxy.url], FAST)
    try:
        tasks = [eng.submit(workflow(i, steps=1)) for i in range(6)]
        for t in tasks:
            with contextlib.suppress(ComfyError):  # each ends, one way or the other
                t.result(20)
        assert eng.get_status()["servers"][0]["affinity"] == "broken"
        (server,) = eng.reset()["servers"]
        assert server["affinity"] == "key" and server["affinity_error"] is None
    finally:
        eng.close()


@pytest.mark.slow
def test_a_prompt_another_client_deleted_is_a_hedged_error_and_the_url_stays_usable(fake: FakeComfy) -> None:
    eng = Engine([fake.url], FAST)
    try:
        fake.hold()
        task = eng.submit(workflow(1, steps=1))
        wait_until(lambda: task.prompt_id in fake.pending_prompt_ids)
        httpx.post(f"{fake.url}/queue", json={"clear": True}).raise_for_status()  # someone else clears the queue
        fake.release()
        with pytest.raises(NoAffinity, match="unless another client deleted it"):
            task.result(20)  # found by the silence check, with the socket open all along
        assert eng.run(workflow(2, steps=1), timeout=20).status == "success"  # one sign is no verdict
        assert eng.get_status()["servers"][0]["affinity"] == "key"
    finally:
        eng.close()
