"""A lean HTTP/1.1 transport for ``httpx.AsyncClient``: one origin, a keep-alive pool of asyncio Protocols feeding h11.

Why: httpx's default (httpcore on anyio) spends most of its ~0.9 ms of CPU per request here on syscalls a keep-alive
client does not need (``getpeername()`` per ``extra()`` lookup, a readability poll before reuse, pausing and resuming
reading around every receive, head and body in two ``send()``). This one writes a request in one ``transport.write``,
always reads into a buffer (pausing only past ``HIGH_WATER`` unread bytes) and learns that the server closed a
connection from ``connection_lost`` instead of probing the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any, TypeVar, cast

import h11
import httpx

#: Unread response bytes past which we stop reading the socket: a hostile server cannot make us buffer a huge body.
HIGH_WATER = 1 << 20
#: A request sent on a keep-alive connection that the server had closed is sent again only if repeating it is
#: harmless: the engine's failover decides what to do about a POST that may or may not have landed.
RETRYABLE = frozenset({"GET", "HEAD"})
_PORTS = {"http": 80, "https": 443}
_MAX_HEAD = 100 * 1024  # a response head this large is garbage (httpcore's limit too)
_T = TypeVar("_T")


def tls_context(verify: bool = True) -> ssl.SSLContext:
    """The context httpx would build (certifi or SSL_CERT_FILE/DIR; no checks at all with ``verify=False``). Share
    it: building one costs ~30 ms here, far too much per server."""
    ctx = httpx.create_ssl_context(verify=verify)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


class _Stale(Exception):
    """The server closed the connection before a byte of the response arrived (typically while it was idle)."""


def _expire(fut: asyncio.Future[Any]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())


async def _wait(fut: asyncio.Future[_T], timeout: float | None) -> _T:
    """``await fut`` or TimeoutError; a timer handle is much cheaper than ``asyncio.wait_for``'s extra task."""
    if timeout is None:
        return await fut
    handle = fut.get_loop().call_later(timeout, _expire, fut)
    try:
        return await fut
    finally:
        handle.cancel()


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection. Received bytes wait in ``pending`` until the reader feeds them to h11, so the
    unread amount is known exactly and reading pauses only when it is large."""

    def __init__(self, pool: LoopTransport) -> None:
        self.pool = pool
        self.loop = asyncio.get_running_loop()
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=_MAX_HEAD)
        self.transport: asyncio.Transport | None = None
        self.pending: list[bytes] = []
        self.pending_size = 0
        self.paused = False
        self.lost = False
        self.eof_fed = False
        self.got_bytes = False  # a byte of the current response arrived
        self.idle = False  # in the pool's idle list
        self.dead = False  # closed and no longer counted by the pool
        self.reused = False  # served a request before: the server may have closed it while idle
        self.waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.idle:  # unsolicited bytes (e.g. a 408 before the server closes): nothing sane to reuse
            self.pool.discard(self)
            return
        self.got_bytes = True
        self.pending.append(data)
        self.pending_size += len(data)
        if self.pending_size > HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._wake()
        if self.idle:  # closed by the server while idle: just forget it, no probing before reuse
            self.pool.discard(self)

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    @property
    def usable(self) -> bool:
        return not (self.lost or self.pending or self.transport is None or self.transport.is_closing())

    def send(self, request: httpx.Request, body: bytes) -> None:
        """Head and body in ONE write: one syscall, and no small segment waiting on the peer's delayed ACK."""
        h = self.h11
        target = request.url.raw_path
        parts = [h.send(h11.Request(method=request.method, target=target, headers=request.headers.raw))]
        if body:
            parts.append(h.send(h11.Data(data=body)))
        parts.append(h.send(h11.EndOfMessage()))
        self.got_bytes = False
        assert self.transport is not None
        self.transport.write(b"".join(p for p in parts if p))

    async def next_event(self, request: httpx.Request, timeout: float | None) -> Any:
        """The next h11 event of the response, reading as needed."""
        while True:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as exc:  # after EOF: the body was cut short; before: garbage
                error = httpx.ReadError if self.eof_fed else httpx.RemoteProtocolError
                raise error(str(exc), request=request) from None
            if isinstance(event, h11.ConnectionClosed):
                raise httpx.ReadError("the server closed the connection mid-response", request=request)
            if event is not h11.NEED_DATA:
                return event
            if self.pending:
                for chunk in self.pending:
                    self.h11.receive_data(chunk)
                self.pending.clear()
                self.pending_size = 0
                if self.paused and self.transport is not None:
                    self.paused = False
                    self.transport.resume_reading()
            elif self.lost:
                if not self.got_bytes:
                    raise _Stale
                self.h11.receive_data(b"")  # EOF: ends a read-until-close body, or makes h11 report truncation
                self.eof_fed = True
            else:
                self.waiter = self.loop.create_future()
                try:
                    await _wait(self.waiter, timeout)
                except TimeoutError:
                    raise httpx.ReadTimeout("timed out waiting for the server", request=request) from None
                finally:
                    self.waiter = None


class _Body(httpx.AsyncByteStream):
    """The response body as h11 delivers it. A plain async iterator (not a generator), so abandoning it early needs
    no finalizer: ``aclose()`` before the end closes the connection, which cannot be reused mid-body."""

    def __init__(self, conn: _Connection, request: httpx.Request, timeout: float | None) -> None:
        self.conn: _Connection | None = conn
        self.request = request
        self.timeout = timeout

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        conn = self.conn
        if conn is None:
            raise StopAsyncIteration
        try:
            while True:
                event = await conn.next_event(self.request, self.timeout)
                if isinstance(event, h11.Data):
                    if event.data:
                        return bytes(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    break
                else:
                    raise httpx.RemoteProtocolError(f"unexpected {type(event).__name__}", request=self.request)
        except BaseException:
            self.conn = None
            conn.pool.discard(conn)
            raise
        self.conn = None
        conn.pool.release(conn)
        raise StopAsyncIteration

    async def aclose(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.pool.discard(conn)


async def _read_body(request: httpx.Request) -> bytes:
    """The whole body (ours are small JSON); ``json=`` bodies are read already, and their stream is both kinds."""
    return await request.aread() if isinstance(request.stream, AsyncIterable) else request.read()


class LoopTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 to ONE origin over at most ``max_connections`` keep-alive connections; requests beyond that wait
    their turn (FIFO). ``ssl_context`` is used for https (pass a shared one: see ``tls_context``)."""

    def __init__(self, origin: str | httpx.URL, *, max_connections: int = 8, ssl_context: ssl.SSLContext | None = None):
        url = httpx.URL(origin)
        if url.scheme not in _PORTS:
            raise ValueError(f"not an http(s) origin: {url.scheme}://{url.host}")
        self.origin = (url.scheme, url.host, url.port or _PORTS[url.scheme])
        self._ssl = (ssl_context or tls_context()) if url.scheme == "https" else None
        self._max = max_connections
        self._count = 0  # slots taken: open connections, connections being opened, slots handed to a waiter
        self._idle: list[_Connection] = []
        self._conns: set[_Connection] = set()
        self._waiters: deque[asyncio.Future[_Connection | None]] = deque()
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if (url.scheme, url.host, url.port or _PORTS.get(url.scheme)) != self.origin:
            raise httpx.UnsupportedProtocol(f"this transport only serves {self.origin}", request=request)
        timeouts = request.extensions.get("timeout", {})
        body = await _read_body(request)
        conn, retried = await self._acquire(request, timeouts.get("pool")), False
        while True:
            if conn is None or not conn.usable:  # we hold a slot: open a fresh connection in it
                if conn is not None:
                    self.discard(conn, keep_slot=True)
                try:
                    conn = await self._open(request, timeouts.get("connect"))
                except BaseException:
                    self._free_slot()
                    raise
            try:
                # asyncio buffers what the socket does not take at once: a server that stops reading is a read timeout
                conn.send(request, body)
                return await self._response(conn, request, timeouts.get("read"))
            except _Stale:
                if conn.reused and not retried and request.method in RETRYABLE:
                    retried = True
                    continue  # the loop discards it and opens a fresh one in the same slot
                self.discard(conn)
                raise httpx.RemoteProtocolError(
                    "the server closed the connection without sending a response", request=request
                ) from None
            except h11.LocalProtocolError as exc:
                self.discard(conn)
                raise httpx.LocalProtocolError(str(exc), request=request) from None
            except BaseException:
                self.discard(conn)
                raise

    async def _response(self, conn: _Connection, request: httpx.Request, timeout: float | None) -> httpx.Response:
        while True:
            event = await conn.next_event(request, timeout)
            if isinstance(event, h11.Response):
                break
            if not isinstance(event, h11.InformationalResponse):
                raise httpx.RemoteProtocolError(f"unexpected {type(event).__name__}", request=request)
        return httpx.Response(
            event.status_code,
            headers=event.headers.raw_items(),
            stream=_Body(conn, request, timeout),
            extensions={"http_version": b"HTTP/" + event.http_version, "reason_phrase": event.reason},
        )

    async def _acquire(self, request: httpx.Request, timeout: float | None) -> _Connection | None:
        """An idle connection, or None meaning "you hold a slot: open one"; else wait for either (FIFO)."""
        if self._closed:
            raise httpx.ConnectError("the transport is closed", request=request)
        if self._idle:
            conn = self._idle.pop()  # the most recently used: the least likely to have been closed by the server
            conn.idle = False
            return conn
        if self._count < self._max:
            self._count += 1
            return None
        fut: asyncio.Future[_Connection | None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            return await _wait(fut, timeout)
        except TimeoutError:
            raise httpx.PoolTimeout("timed out waiting for a connection", request=request) from None
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                item = fut.result()  # handed over just as we were cancelled: pass it on, never leak it
                if item is None:
                    self._free_slot()
                else:
                    self._park(item)
            raise
        finally:
            with contextlib.suppress(ValueError):  # still queued after a timeout or a cancellation
                self._waiters.remove(fut)

    async def _open(self, request: httpx.Request, timeout: float | None) -> _Connection:
        _, host, port = self.origin
        loop = asyncio.get_running_loop()
        conn = _Connection(self)
        try:
            async with asyncio.timeout(timeout):
                transport, _ = await loop.create_connection(
                    lambda: conn, host, port, ssl=self._ssl, server_hostname=host if self._ssl else None
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(f"timed out connecting to {host}:{port}", request=request) from None
        except OSError as exc:  # refused, unreachable, DNS, TLS (certificate) errors
            raise httpx.ConnectError(str(exc) or type(exc).__name__, request=request) from None
        if self._closed:  # closed while we connected
            transport.close()
            raise httpx.ConnectError("the transport is closed", request=request)
        self._conns.add(conn)
        return conn

    def _hand(self, item: _Connection | None) -> bool:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(item)
                return True
        return False

    def _park(self, conn: _Connection) -> None:
        if not self._hand(conn):
            conn.idle = True
            self._idle.append(conn)

    def _free_slot(self) -> None:
        if not self._hand(None):
            self._count -= 1

    def release(self, conn: _Connection) -> None:
        """Back to the pool after a complete response, if h11 says the connection can carry another."""
        h = conn.h11
        if h.our_state is h11.DONE and h.their_state is h11.DONE and not h.trailing_data[0] and conn.usable:
            h.start_next_cycle()
            conn.reused = True
            self._park(conn)
        else:
            self.discard(conn)

    def discard(self, conn: _Connection, *, keep_slot: bool = False) -> None:
        """Close ``conn`` for good (idempotent); its slot goes to the next waiter, unless the caller keeps it."""
        if conn.dead:
            return
        conn.dead = True
        self._conns.discard(conn)
        if conn.idle:
            conn.idle = False
            self._idle.remove(conn)
        if conn.transport is not None:
            conn.transport.abort()
        if not keep_slot and not self._closed:
            self._free_slot()

    async def aclose(self) -> None:
        self._closed = True
        for conn in list(self._conns):
            self.discard(conn)
        await asyncio.sleep(0)  # the sockets close in callbacks: let them run before the engine stops its loop
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_exception(httpx.ConnectError("the transport is closed"))
