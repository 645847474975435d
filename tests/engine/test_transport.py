"""``LoopTransport`` against real local servers: aiohttp for ordinary HTTP, a raw asyncio server for the faults.

Each test runs client and servers on one event loop (``asyncio.run``), so the server's state can be inspected and
steered without threads or sleeps.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from comfy_notebook.core.servers import ServerSpec
from comfy_notebook.engine.connection import ServerConnection, SocketOptions
from comfy_notebook.engine.http import ComfyHTTP, HttpOptions, env_proxied
from comfy_notebook.engine.transport import HIGH_WATER, LoopTransport, tls_context


def run(coro: Coroutine[Any, Any, None]) -> None:
    """Run ``coro`` on a fresh loop in a thread of its own: the main thread may hold another running loop."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, asyncio.wait_for(coro, 30)).result()


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll a condition (this is synchronisation on state, not a sleep standing in for it)."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.001)


def client(url: str, max_connections: int = 4, **timeouts: float) -> httpx.AsyncClient:
    transport = LoopTransport(url, max_connections=max_connections)
    return httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(5.0, **timeouts))


# -- servers ---------------------------------------------------------------------------------------------------------
@dataclass
class Req:
    method: str
    path: str
    body: bytes
    conn: int  # which connection, in the order the server accepted them
    index: int  # the request's rank on its connection
    writer: asyncio.StreamWriter


#: Writes what it likes through ``req.writer``; returns bytes to send, or None to close the connection.
Respond = Callable[[Req], Awaitable[bytes | None]]


def ok(body: bytes = b"ok", *headers: str) -> bytes:
    head = "".join(f"{h}\r\n" for h in headers)
    return f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n{head}\r\n".encode() + body


async def always_ok(req: Req) -> bytes | None:
    return ok(req.body or b"ok")


class RawServer:
    """A minimal HTTP/1.1 server whose every answer (or non-answer) the test decides."""

    def __init__(self, respond: Respond = always_ok, tls: ssl.SSLContext | None = None) -> None:
        self.respond, self.tls = respond, tls
        self.requests: list[Req] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.hangups: list[int] = []  # connections the client closed

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def connections(self) -> int:
        return len(self.writers)

    async def __aenter__(self) -> RawServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        for writer in self.writers:
            writer.transport.abort()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = len(self.writers)
        self.writers.append(writer)
        try:
            for index in itertools.count():
                head = (await reader.readuntil(b"\r\n\r\n")).decode()
                lines = head.split("\r\n")
                method, path, _ = lines[0].split(" ")
                headers = dict(line.lower().split(":", 1) for line in lines[1:] if line)
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                req = Req(method, path, body, conn, index, writer)
                self.requests.append(req)
                reply = await self.respond(req)
                if reply is None:
                    break
                writer.write(reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            self.hangups.append(conn)
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def aiohttp_server(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


# -- keep-alive and the pool -----------------------------------------------------------------------------------------
def test_sequential_requests_reuse_one_connection() -> None:
    transports: set[object] = set()

    async def echo(request: web.Request) -> web.Response:
        transports.add(request.transport)
        got = await request.json() if request.method == "POST" else None
        return web.json_response({"got": got, "path": request.path_qs})

    async def main() -> None:
        async with aiohttp_server(echo) as url, client(url) as c:
            for i in range(20):
                r = await c.post(f"{url}/prompt?x={i}", json={"n": i})
                assert r.status_code == 200 and r.json() == {"got": {"n": i}, "path": f"/prompt?x={i}"}
            r = await c.head(f"{url}/x")
            assert r.status_code == 200 and r.content == b""
        assert len(transports) == 1

    run(main())


def test_concurrency_never_exceeds_max_connections() -> None:
    active, peak, transports = 0, 0, set()

    async def slowish(request: web.Request) -> web.Response:
        nonlocal active, peak
        transports.add(request.transport)
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.01)  # load, not synchronisation: requests overlap
        active -= 1
        return web.Response(text="ok")

    async def main() -> None:
        async with aiohttp_server(slowish) as url, client(url, max_connections=2) as c:
            rs = await asyncio.gather(*(c.get(f"{url}/{i}") for i in range(12)))
            assert all(r.text == "ok" for r in rs)
        assert peak == 2 and len(transports) == 2

    run(main())


def test_a_full_pool_makes_requests_wait_in_order_then_time_out() -> None:
    gate = asyncio.Event()

    async def held(req: Req) -> bytes | None:
        await gate.wait()
        return ok(req.path.encode())

    async def main() -> None:
        async with RawServer(held) as server, client(server.url, max_connections=1, pool=0.2) as c:
            first = asyncio.create_task(c.get(f"{server.url}/0"))
            await until(lambda: len(server.requests) == 1)
            with pytest.raises(httpx.PoolTimeout):  # no second connection behind the pool's back
                await c.get(f"{server.url}/late")
            waiting = [asyncio.create_task(c.get(f"{server.url}/{i}", timeout=5)) for i in range(1, 6)]
            transport = c._transport
            assert isinstance(transport, LoopTransport)
            await until(lambda: len(transport._waiters) == 5)
            gate.set()
            assert [(await t).text for t in [first, *waiting]] == [f"/{i}" for i in range(6)]
            assert [r.path for r in server.requests] == [f"/{i}" for i in range(6)]  # FIFO
            assert server.connections == 1

    run(main())


def test_a_cancelled_waiter_does_not_leak_its_slot() -> None:
    async def main() -> None:
        transport = LoopTransport("http://127.0.0.1:1", max_connections=1)
        request = httpx.Request("GET", "http://127.0.0.1:1/")
        assert await transport._acquire(request, None) is None  # we hold the only slot
        plain = asyncio.create_task(transport._acquire(request, None))
        handed = asyncio.create_task(transport._acquire(request, None))
        await until(lambda: len(transport._waiters) == 2)
        plain.cancel()  # cancelled while waiting
        with pytest.raises(asyncio.CancelledError):
            await plain
        transport._free_slot()  # hands the slot to `handed`...
        handed.cancel()  # ...which is cancelled before it could run: it must pass the slot on
        with pytest.raises(asyncio.CancelledError):
            await handed
        assert await transport._acquire(request, 0.2) is None
        with pytest.raises(httpx.PoolTimeout):
            await transport._acquire(request, 0.05)

    run(main())


# -- connections the server closes -----------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_a_connection_closed_while_idle_is_replaced_transparently(method: str) -> None:
    async def answer_then_close(req: Req) -> bytes | None:
        req.writer.write(ok())  # no "Connection: close": like a keep-alive timeout expiring later
        return None

    async def main() -> None:
        async with RawServer(answer_then_close) as server, client(server.url) as c:
            transport = c._transport
            assert isinstance(transport, LoopTransport)
            assert (await c.get(f"{server.url}/a")).text == "ok"
            await until(lambda: not transport._idle and transport._count == 0)  # dropped without probing
            r = await c.request(method, f"{server.url}/b", json={"x": 1})
            assert r.text == "ok"
            assert [(q.path, q.conn, q.index) for q in server.requests] == [("/a", 0, 0), ("/b", 1, 0)]

    run(main())


async def close_second_request(req: Req) -> bytes | None:
    """Reads the second request on a connection and closes without a byte: the race of a keep-alive timeout."""
    return ok() if req.index == 0 else None


def test_a_get_on_a_connection_closed_before_answering_is_retried_once() -> None:
    async def main() -> None:
        async with RawServer(close_second_request) as server, client(server.url) as c:
            assert (await c.get(f"{server.url}/a")).text == "ok"
            assert (await c.get(f"{server.url}/b")).text == "ok"
            assert [(q.path, q.conn, q.index) for q in server.requests] == [("/a", 0, 0), ("/b", 0, 1), ("/b", 1, 0)]

    run(main())


def test_a_post_on_a_connection_closed_before_answering_is_not_retried() -> None:
    async def main() -> None:
        async with RawServer(close_second_request) as server, client(server.url) as c:
            assert (await c.get(f"{server.url}/a")).text == "ok"
            with pytest.raises(httpx.RemoteProtocolError):
                await c.post(f"{server.url}/prompt", json={"p": 1})
            assert [(q.path, q.conn) for q in server.requests] == [("/a", 0), ("/prompt", 0)]
            assert (await c.get(f"{server.url}/c")).text == "ok"  # and the pool still works

    run(main())


def test_a_fresh_connection_closed_before_answering_is_not_retried() -> None:
    async def never(req: Req) -> bytes | None:
        return None

    async def main() -> None:
        async with RawServer(never) as server, client(server.url) as c:
            with pytest.raises(httpx.RemoteProtocolError):
                await c.get(f"{server.url}/a")
            assert len(server.requests) == 1

    run(main())


def test_bytes_on_an_idle_connection_retire_it() -> None:
    idle = asyncio.Event()

    async def answer_then_408(req: Req) -> bytes | None:
        if req.index == 0:
            req.writer.write(ok())
            await idle.wait()
            req.writer.write(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n")
        return ok()

    async def main() -> None:
        async with RawServer(answer_then_408) as server, client(server.url) as c:
            transport = c._transport
            assert isinstance(transport, LoopTransport)
            assert (await c.get(f"{server.url}/a")).text == "ok"
            assert len(transport._idle) == 1
            idle.set()
            await until(lambda: not transport._idle and not transport._conns)
            assert (await c.get(f"{server.url}/b")).text == "ok"  # not the stray 408
            assert [(q.path, q.conn) for q in server.requests] == [("/a", 0), ("/b", 1)]

    run(main())


def test_bytes_after_a_response_retire_the_connection() -> None:
    async def two_answers(req: Req) -> bytes | None:
        return ok(b"first") + ok(b"stray") if req.path == "/a" else ok(req.path.encode())

    async def main() -> None:
        async with RawServer(two_answers) as server, client(server.url) as c:
            assert (await c.get(f"{server.url}/a")).text == "first"
            assert (await c.get(f"{server.url}/b")).text == "/b"
            assert server.connections == 2

    run(main())


def test_aclose_closes_idle_and_busy_connections() -> None:
    gate = asyncio.Event()

    async def held(req: Req) -> bytes | None:
        if req.path == "/held":
            await gate.wait()
        return ok()

    async def main() -> None:
        async with RawServer(held) as server:
            c = client(server.url)
            busy = asyncio.create_task(c.get(f"{server.url}/held"))
            await until(lambda: len(server.requests) == 1)
            assert (await c.get(f"{server.url}/a")).text == "ok"  # on a second connection, now idle
            await c.aclose()
            with pytest.raises(httpx.TransportError):
                await busy
            await until(lambda: server.hangups == [1])  # the idle one
            gate.set()
            await until(lambda: server.hangups == [1, 0])  # and the busy one

    run(main())


def test_a_response_cut_mid_body_is_a_read_error_and_not_reused() -> None:
    async def cut(req: Req) -> bytes | None:
        if req.path == "/cut":
            req.writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
            return None
        return ok()

    async def main() -> None:
        async with RawServer(cut) as server, client(server.url) as c:
            with pytest.raises(httpx.ReadError):
                await c.get(f"{server.url}/cut")
            assert (await c.get(f"{server.url}/next")).text == "ok"
            assert server.connections == 2

    run(main())


def test_a_silent_server_is_a_read_timeout_and_the_connection_is_dropped() -> None:
    gate = asyncio.Event()

    async def silent_once(req: Req) -> bytes | None:
        if req.path == "/slow":
            await gate.wait()
        return ok()

    async def main() -> None:
        async with RawServer(silent_once) as server, client(server.url, read=0.2) as c:
            with pytest.raises(httpx.ReadTimeout):
                await c.get(f"{server.url}/slow")
            gate.set()  # a late answer must not be taken for the next request's
            assert (await c.get(f"{server.url}/next")).text == "ok"
            assert [(q.path, q.conn) for q in server.requests] == [("/slow", 0), ("/next", 1)]

    run(main())


def test_connection_refused_is_a_connect_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: nothing listens there

    async def main() -> None:
        async with client(f"http://127.0.0.1:{port}") as c:
            for _ in range(2):  # and the failed attempt gave its slot back
                with pytest.raises(httpx.ConnectError):
                    await c.get(f"http://127.0.0.1:{port}/")
            assert isinstance(c._transport, LoopTransport) and c._transport._count == 0

    run(main())


def test_garbage_is_a_remote_protocol_error() -> None:
    async def garbage(req: Req) -> bytes | None:
        return b"SPDY/9 what\r\n\r\n"

    async def main() -> None:
        async with RawServer(garbage) as server, client(server.url) as c:
            with pytest.raises(httpx.RemoteProtocolError):
                await c.get(f"{server.url}/")

    run(main())


def test_another_origin_is_refused() -> None:
    async def main() -> None:
        async with RawServer() as server, client(server.url) as c:
            with pytest.raises(httpx.UnsupportedProtocol):
                await c.get(f"http://localhost:{server.port}/")
            assert server.connections == 0

    run(main())


# -- bodies ----------------------------------------------------------------------------------------------------------
def test_chunked_responses_and_reuse_after_them() -> None:
    async def chunked(req: Req) -> bytes | None:
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (b"hello ", b"chunked ", b"world"))
        return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"

    async def main() -> None:
        async with RawServer(chunked) as server, client(server.url) as c:
            for _ in range(3):
                assert (await c.get(f"{server.url}/")).text == "hello chunked world"
            assert server.connections == 1

    run(main())


def test_a_body_read_until_close() -> None:
    async def until_close(req: Req) -> bytes | None:
        req.writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it")
        return None

    async def main() -> None:
        async with RawServer(until_close) as server, client(server.url) as c:
            assert (await c.get(f"{server.url}/")).text == "all of it"
            assert (await c.get(f"{server.url}/")).text == "all of it"
            assert server.connections == 2

    run(main())


BIG = 20 * 1024 * 1024


async def big_body(req: Req) -> bytes | None:
    return ok(bytes(range(256)) * (BIG // 256))


def test_a_big_body_streams_in_bounded_chunks_with_backpressure() -> None:
    async def main() -> None:
        async with RawServer(big_body) as server, client(server.url) as c:
            transport = c._transport
            assert isinstance(transport, LoopTransport)
            async with c.stream("GET", f"{server.url}/big") as r:
                chunks = r.aiter_raw()
                sizes = [len(await anext(chunks))]
                (conn,) = transport._conns
                await until(lambda: conn.paused)  # we stopped consuming: reading stops, the server waits
                assert conn.transport is not None and not conn.transport.is_reading()
                assert conn.pending_size <= 2 * HIGH_WATER
                assert server.writers[0].transport.get_write_buffer_size() > 0
                sizes += [len(chunk) async for chunk in chunks]
            assert conn.transport.is_reading()  # resumed, and back in the pool
            assert sum(sizes) == BIG and len(sizes) > 10 and max(sizes) <= 2 * HIGH_WATER
            assert (await c.get(f"{server.url}/again")).content == bytes(range(256)) * (BIG // 256)
            assert server.connections == 1

    run(main())


def test_closing_a_stream_early_closes_its_connection() -> None:
    async def main() -> None:
        async with RawServer(big_body) as server, client(server.url) as c:
            transport = c._transport
            assert isinstance(transport, LoopTransport)
            async with c.stream("GET", f"{server.url}/big") as r:
                async for _ in r.aiter_raw():
                    break
            assert not transport._idle and not transport._conns and transport._count == 0
            r = await c.get(f"{server.url}/again")
            assert len(r.content) == BIG and server.connections == 2

    run(main())


def test_async_and_chunked_request_bodies() -> None:
    async def parts() -> AsyncIterator[bytes]:
        yield b'{"a": '
        yield b"1}"

    async def echo(request: web.Request) -> web.Response:
        return web.Response(body=await request.read())

    async def main() -> None:
        async with aiohttp_server(echo) as url, client(url) as c:
            assert (await c.post(f"{url}/", content=parts())).json() == {"a": 1}
            assert (await c.post(f"{url}/", content=b"raw")).content == b"raw"

    run(main())


# -- TLS -------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    command = "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=localhost"
    command += " -addext subjectAltName=IP:127.0.0.1,DNS:localhost"
    subprocess.run([*command.split(), "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


@pytest.mark.parametrize("trust", ["default", "off", "own-ca"])
def test_https_with_a_self_signed_certificate(certificate: tuple[Path, Path], trust: str) -> None:
    cert, key = certificate
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    contexts = {
        "default": tls_context(True),
        "off": tls_context(False),
        "own-ca": ssl.create_default_context(cafile=str(cert)),
    }

    async def main() -> None:
        async with RawServer(tls=server_tls) as server:
            transport = LoopTransport(server.url, ssl_context=contexts[trust])
            async with httpx.AsyncClient(transport=transport, timeout=5) as c:
                if trust == "default":
                    with pytest.raises(httpx.ConnectError, match="certificate"):
                        await c.get(f"{server.url}/")
                    return
                for i in range(3):
                    assert (await c.post(f"{server.url}/", content=b"hi %d" % i)).content == b"hi %d" % i
                assert server.connections == 1

    run(main())


# -- plugged into ComfyHTTP ------------------------------------------------------------------------------------------
def test_env_proxied_follows_httpx(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert not env_proxied("http://gpu-1:8188")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy:3128")
    assert env_proxied("https://comfy.example.com") and not env_proxied("http://gpu-1:8188")
    monkeypatch.setenv("ALL_PROXY", "http://proxy:3128")
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1,.lan")
    assert env_proxied("http://gpu-1:8188")
    assert not env_proxied("http://127.0.0.1:8188") and not env_proxied("http://gpu-1.lan:8188")


def test_comfy_http_uses_the_loop_transport_unless_proxied(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("HTTP_PROXY", "http://proxy:3128")

    def connection(url: str) -> ServerConnection:
        return ServerConnection(ServerSpec.parse(url), SocketOptions(), lambda *a: None, lambda *a: None)

    async def main() -> None:
        http = ComfyHTTP(HttpOptions())
        local, remote = connection("http://127.0.0.1:8188"), connection("http://gpu-1:8188")
        secure = [connection("https://127.0.0.1:8443"), connection("https://127.0.0.1:8444")]
        assert isinstance(http._client(local)._transport, LoopTransport)
        assert not isinstance(http._client(remote)._transport, LoopTransport)
        tls = {id(http._client(c)._transport._ssl) for c in secure}  # type: ignore[attr-defined]
        assert len(tls) == 1 and http._tls is not None and http._tls.verify_mode == ssl.CERT_REQUIRED
        await http.aclose()

    run(main())
