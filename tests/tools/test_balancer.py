"""The balancer harness (tools/balancer.py): real HAProxy and nginx in front of three real ComfyUI servers.

These tests prove the harness the balancer tests of the engine stand on: every mode starts and proxies HTTP and the
WebSocket, and spreads or sticks as its config says, read from the ``X-Backend`` header each answer carries. They also
pin what the engine work relies on: HAProxy's cookie insert puts ``Set-Cookie`` on the 101 of the WebSocket
handshake; ``url_param`` and nginx's ``hash`` hash the socket's ``/ws?clientId=`` like any HTTP call with the same
id; HAProxy balances per request even on one keep-alive connection; a killed backend's cookie is redispatched with a
new one. The config checks at the top need no balancer; the rest are ``real``.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest
from websockets.http11 import Response
from websockets.sync.client import ClientConnection, connect

from comfy_notebook.tools import balancer
from comfy_notebook.tools.balancer import (
    AFFINITY_HEADER,
    BACKEND_HEADER,
    COOKIE_NAME,
    MODES,
    Balancer,
    BalancerError,
    Mode,
    backend_of,
    render_config,
)
from comfy_notebook.tools.local_pool import LocalPool, find_free_base_port
from tests.fakes.fake_comfy import wait_until
from tests.integration.chaos import port_refused
from tests.integration.conftest import all_up, own_pool
from tests.tools.test_local_pool import processes_in_group
from tests.workflows import slow_workflow

HASH_MODES: tuple[Mode, ...] = ("url_param", "header", "hash")
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never an environment proxy
_T = TypeVar("_T")


def real(test: _T) -> _T:
    """Needs real ComfyUI servers and Debian's balancers (``make test`` provides both); the first real test of a
    fresh machine may also build the pinned environment (minutes)."""
    return cast(_T, pytest.mark.real(pytest.mark.timeout(900)(test)))


# ---------------------------------------------------------------- helpers


def affinity(mode: Mode, key: str) -> tuple[str, dict[str, str]]:
    """The query string and headers that carry ``key`` for ``mode``'s hash (nothing for the other modes)."""
    if mode == "header":
        return "", {AFFINITY_HEADER: key}
    if mode in ("url_param", "hash"):
        return f"?clientId={key}", {}
    return "", {}


def get(url: str, headers: dict[str, str] | None = None) -> tuple[str, list[str], Any]:
    """GET through the balancer: (backend that answered, Set-Cookie values, JSON body)."""
    with _HTTP.open(urllib.request.Request(url, headers=headers or {}), timeout=10) as resp:
        assert resp.status == 200
        return backend_of(resp.headers), resp.headers.get_all("Set-Cookie") or [], json.load(resp)


def ws_open(lb: Balancer, client_id: str, headers: dict[str, str] | None = None) -> ClientConnection:
    return connect(f"ws://127.0.0.1:{lb.port}/ws?clientId={client_id}", additional_headers=headers, open_timeout=10)


def handshake(ws: ClientConnection) -> Response:
    """The handshake's answer: the 101, its headers as the balancer passed them on (Set-Cookie, X-Backend)."""
    assert ws.response is not None
    return ws.response


def srv_cookie(set_cookies: list[str]) -> str:
    """``SRV=sN`` out of the Set-Cookie values (attributes dropped); fails if the balancer set none."""
    found = [c.split(";")[0].strip() for c in set_cookies if c.startswith(f"{COOKIE_NAME}=")]
    assert len(found) == 1, f"expected one {COOKIE_NAME} cookie, got {set_cookies}"
    return found[0]


def status_message(ws: ClientConnection) -> dict[str, Any]:
    """ComfyUI's first message on a new socket: the queue status, with ``sid`` = the socket's clientId."""
    msg = json.loads(ws.recv(timeout=10))
    assert msg["type"] == "status", msg
    return msg["data"]  # type: ignore[no-any-return]


# ---------------------------------------------------------------- fast: configs, no balancer


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("cookie", ["balance roundrobin", "cookie SRV insert indirect nocache", "cookie s2", "option redispatch"]),
        ("url_param", ["balance url_param clientId", "hash-type consistent"]),
        ("header", [f"balance hdr({AFFINITY_HEADER})", "hash-type consistent"]),
        ("roundrobin", ["balance roundrobin"]),
        ("hash", ["hash $arg_clientId consistent;", "proxy_set_header Upgrade $http_upgrade;", "proxy_buffering off;"]),
    ],
)
def test_each_config_names_its_balance_rule_and_every_backend(mode: Mode, expected: list[str], tmp_path: Path) -> None:
    backends = ["http://127.0.0.1:20001", "http://127.0.0.1:20002", "http://127.0.0.1:20003"]
    text = render_config(mode, backends, 21000, tmp_path)
    for line in expected:
        assert line in text
    assert "127.0.0.1:21000" in text
    for port in (20001, 20002, 20003):
        assert f"127.0.0.1:{port}" in text
    assert BACKEND_HEADER in text
    assert ("cookie SRV" in text) == (mode == "cookie")
    assert ("timeout tunnel" in text) == (mode != "hash")  # haproxy keeps quiet sockets open
    assert ("check inter" in text) == (mode != "hash")  # nginx has no active health checks
    assert "check inter" not in render_config(mode, backends, 21000, tmp_path, checks=False)


def test_bad_modes_and_backends_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown balancer mode"):
        Balancer("sticky", ["http://127.0.0.1:1"], tmp_path)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="is not http://HOST:PORT"):
        render_config("cookie", ["https://gpu-1"], 21000, tmp_path)
    with pytest.raises(ValueError, match="at least one backend"):
        render_config("hash", [], 21000, tmp_path)


def test_backend_of_reads_the_last_upstream_nginx_tried() -> None:
    assert backend_of({"x-backend": "127.0.0.1:1"}) == "http://127.0.0.1:1"
    assert backend_of({"X-Backend": "127.0.0.1:1, 127.0.0.1:2"}) == "http://127.0.0.1:2"
    with pytest.raises(KeyError):
        backend_of({"Server": "nginx"})


# ---------------------------------------------------------------- real: HAProxy and nginx in front of ComfyUI


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPool]:
    """Three real servers of this module's own: the redispatch test kills one (and restarts it)."""
    yield from own_pool(tmp_path_factory, "balanced", 3)


@pytest.fixture
def backends(pool: LocalPool) -> list[str]:
    return all_up(pool)


@real
@pytest.mark.parametrize("mode", MODES)
def test_each_mode_proxies_http_and_the_websocket_then_stops_whole(
    mode: Mode, backends: list[str], tmp_path: Path
) -> None:
    with Balancer(mode, backends, tmp_path / "lb") as lb:
        assert lb.alive()
        backend, _, stats = get(f"{lb.url}/system_stats")
        assert backend in backends
        assert "system" in stats and "devices" in stats
        client_id = uuid.uuid4().hex
        with ws_open(lb, client_id) as ws:
            assert handshake(ws).status_code == 101
            assert backend_of(handshake(ws).headers) in backends  # X-Backend reaches the 101 too
            assert status_message(ws)["sid"] == client_id
        pid = lb.pid
        assert pid is not None
    assert not lb.alive()
    assert port_refused(lb.url)
    assert processes_in_group(pid) == []  # nginx's worker too


@real
def test_roundrobin_spreads_every_request_even_on_one_keep_alive_connection(
    backends: list[str], tmp_path: Path
) -> None:
    with Balancer("roundrobin", backends, tmp_path / "lb") as lb:
        conn = http.client.HTTPConnection("127.0.0.1", lb.port, timeout=10)
        seen = []
        for _ in range(6):
            conn.request("GET", "/queue")
            resp = conn.getresponse()
            resp.read()
            seen.append(backend_of(resp.headers))
        conn.close()
        assert sorted(seen[:3]) == sorted(backends)  # each request to the next backend: no connection affinity
        assert seen[3:] == seen[:3]
        with ws_open(lb, "a") as ws1, ws_open(lb, "a") as ws2:  # the same clientId does not stick either
            assert backend_of(handshake(ws1).headers) != backend_of(handshake(ws2).headers)


@real
def test_cookie_mode_sets_srv_on_http_and_on_the_101_and_sending_it_back_sticks(
    backends: list[str], tmp_path: Path
) -> None:
    with Balancer("cookie", backends, tmp_path / "lb") as lb:
        first, set_cookies, _ = get(f"{lb.url}/queue")
        cookie = srv_cookie(set_cookies)
        for _ in range(6):  # with the cookie: always the same backend, and no new cookie (`indirect`)
            assert get(f"{lb.url}/queue", {"Cookie": cookie})[:2] == (first, [])
        assert len({get(f"{lb.url}/queue")[0] for _ in range(3)}) == 3  # without it: round robin

        with ws_open(lb, "a") as ws:  # a handshake without the cookie gets one on its 101
            ws_backend = backend_of(handshake(ws).headers)
            ws_cookie = srv_cookie(handshake(ws).headers.get_all("Set-Cookie"))
        assert get(f"{lb.url}/queue", {"Cookie": ws_cookie})[0] == ws_backend  # ... which HTTP calls can follow
        for _ in range(3):
            with ws_open(lb, "a", {"Cookie": cookie}) as ws:  # and a handshake with a cookie sticks
                assert backend_of(handshake(ws).headers) == first
                assert handshake(ws).headers.get_all("Set-Cookie") == []


@real
@pytest.mark.parametrize("mode", HASH_MODES)
def test_hash_modes_keep_one_key_on_one_backend_for_http_and_the_websocket(
    mode: Mode, backends: list[str], tmp_path: Path
) -> None:
    with Balancer(mode, backends, tmp_path / "lb") as lb:
        placed = {}
        for i in range(12):
            key = f"client-{i}"
            query, headers = affinity(mode, key)
            homes = {get(f"{lb.url}/queue{query}", headers)[0] for _ in range(3)}
            assert len(homes) == 1, f"{key} spread over {homes}"
            with ws_open(lb, key, headers) as ws:  # /ws?clientId=key: hashed like the HTTP calls
                assert backend_of(handshake(ws).headers) == next(iter(homes))
            placed[key] = homes.pop()
        assert len(set(placed.values())) >= 2, f"12 keys all hashed to one backend: {placed}"
        # Without a key the hash falls back to round robin (HAProxy, documented; nginx, an empty key): spread.
        assert len({get(f"{lb.url}/queue")[0] for _ in range(6)}) >= 2


@real
@pytest.mark.parametrize("mode", ["cookie", *HASH_MODES])
def test_with_affinity_the_socket_sees_the_progress_of_a_prompt_posted_through_the_balancer(
    mode: Mode, backends: list[str], tmp_path: Path
) -> None:
    with Balancer(mode, backends, tmp_path / "lb") as lb:
        client_id = uuid.uuid4().hex
        query, headers = affinity(mode, client_id)
        with ws_open(lb, client_id, headers) as ws:
            status_message(ws)
            if mode == "cookie":  # the jar: the cookie from the 101 goes on every HTTP call
                headers = {"Cookie": srv_cookie(handshake(ws).headers.get_all("Set-Cookie"))}
            body = json.dumps({"prompt": slow_workflow(uuid.uuid4().int % 0xFFFFFF, steps=3), "client_id": client_id})
            request = urllib.request.Request(
                f"{lb.url}/prompt{query}", data=body.encode(), headers={**headers, "Content-Type": "application/json"}
            )
            with _HTTP.open(request, timeout=10) as resp:
                assert backend_of(resp.headers) == backend_of(handshake(ws).headers)
                prompt_id = json.load(resp)["prompt_id"]
            events: list[str] = []
            deadline = time.monotonic() + 60
            while "execution_success" not in events:
                assert time.monotonic() < deadline, f"no execution_success for {prompt_id}; saw {events}"
                msg = ws.recv(timeout=max(0.1, deadline - time.monotonic()))
                if isinstance(msg, str):
                    data = json.loads(msg)
                    if data["data"].get("prompt_id") == prompt_id:
                        events.append(data["type"])
            assert "progress" in events
        backend, _, history = get(f"{lb.url}/history/{prompt_id}{query}", headers)
        assert backend == backend_of(handshake(ws).headers)
        assert history[prompt_id]["outputs"]


@real
@pytest.mark.parametrize("checks", [True, False], ids=["health-checks", "redispatch-only"])
def test_the_cookie_of_a_killed_backend_is_redispatched_with_a_new_cookie(
    checks: bool, pool: LocalPool, backends: list[str], tmp_path: Path
) -> None:
    """With health checks, HAProxy ignores a cookie naming a backend it marked DOWN. Without them (or before they
    notice: by default 2 s x 3 failures) only ``option redispatch`` saves the request: the connects to the dead
    backend fail and the last retry goes elsewhere. Either way the client gets a cookie naming its new backend."""
    with Balancer("cookie", backends, tmp_path / "lb", checks=checks) as lb:
        home, set_cookies, _ = get(f"{lb.url}/queue")
        cookie = srv_cookie(set_cookies)
        victim = backends.index(home)
        pool.kill(victim)
        try:
            if checks:
                wait_until(lambda: f"comfy/s{victim} is DOWN" in lb.log.read_text(), timeout=10)
            moved, set_cookies, _ = get(f"{lb.url}/queue", {"Cookie": cookie})
            assert moved != home
            new_cookie = srv_cookie(set_cookies)
            assert new_cookie != cookie
            assert get(f"{lb.url}/queue", {"Cookie": new_cookie})[:2] == (moved, [])
            with ws_open(lb, "a", {"Cookie": cookie}) as ws:  # a handshake with the old cookie moves too
                assert backend_of(handshake(ws).headers) != home
                assert srv_cookie(handshake(ws).headers.get_all("Set-Cookie")) != cookie
        finally:
            pool.restart(victim)
        if checks:  # `rise 1`: back at the first good check, and the old cookie leads home again
            wait_until(lambda: f"comfy/s{victim} is UP" in lb.log.read_text(), timeout=10)
        assert get(f"{lb.url}/queue", {"Cookie": cookie})[:2] == (home, [])


@real
@pytest.mark.parametrize("mode", ["cookie", "hash"])
def test_a_balancer_that_cannot_bind_its_port_says_why(mode: Mode, backends: list[str], tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        lb = Balancer(mode, backends, tmp_path / "lb", port=taken.getsockname()[1])
        with pytest.raises(BalancerError, match=r"exited with code [1-9]\d* before answering:\n.*"):
            lb.start()
        assert not lb.alive()


@real
def test_a_port_taken_before_the_balancer_binds_it_is_chosen_again(
    backends: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        ports = iter([taken.getsockname()[1], find_free_base_port(1)])
        monkeypatch.setattr(balancer, "find_free_base_port", lambda n: next(ports))
        with Balancer("roundrobin", backends, tmp_path / "lb") as lb:
            assert lb.port != taken.getsockname()[1]
            assert get(f"{lb.url}/queue")[0] in backends
        assert "cannot bind" in lb.log.read_text()  # the first attempt really failed on the taken port
