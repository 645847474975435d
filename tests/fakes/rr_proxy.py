"""A per-request round-robin reverse proxy, the balancer setup that loses ComfyUI results.

Every HTTP request and every WebSocket connection goes to the next upstream in turn, as nginx/haproxy round
robin does without stickiness (see docs/protocol.md, "Load balancers"). It works in front of real ComfyUI servers
too: query strings, bodies, status codes and headers pass through (Host is kept, as haproxy does), and
WebSocket frames are bridged both ways, pings and pongs included, so a frozen upstream stays detectable by
client keepalives. A close frame's code passes through; an upstream that drops its TCP connection makes the
proxy drop the client's too, so the client sees 1006 as it would without the proxy.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from aiohttp import WSMsgType, web
from multidict import CIMultiDict
from yarl import URL

from .fake_comfy import ThreadedAiohttpServer

_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Connection",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Content-Length",
    )
)
_WS_HANDSHAKE = frozenset(
    h.lower()
    for h in ("Sec-WebSocket-Key", "Sec-WebSocket-Version", "Sec-WebSocket-Extensions", "Sec-WebSocket-Accept")
)
_UNSENDABLE_CLOSE = frozenset({1005, 1006, 1015})  # reserved codes that never appear in a close frame


def _filtered(headers: Any, drop: frozenset[str]) -> CIMultiDict[str]:
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in drop)


def _abort_client_ws(ws: aiohttp.ClientWebSocketResponse) -> None:
    """Drop an upstream socket's TCP connection without a close frame."""
    conn = getattr(ws, "_conn", None)
    transport = getattr(conn, "transport", None)
    if transport is not None:
        transport.abort()


class RoundRobinProxy(ThreadedAiohttpServer):
    """Reverse proxy on 127.0.0.1 sending each request / WebSocket to the next of `upstreams`.

    ``sticky``: a cookie name, for HAProxy's ``cookie NAME insert indirect`` with ``option redispatch``: a request
    or handshake carrying ``NAME=s<i>`` goes to upstream i; one without it (or whose upstream refuses the
    connection) goes to the next in turn and its answer (the 101 included) sets ``NAME=s<i>``."""

    def __init__(self, upstreams: list[str], port: int = 0, *, sticky: str | None = None) -> None:
        super().__init__(port)
        self.sticky = sticky
        if not upstreams:
            raise ValueError("need at least one upstream")
        self.upstreams = [u.rstrip("/") for u in upstreams]
        self.routed: list[tuple[str, str, str]] = []  # (upstream, "http" | "ws", "METHOD path_qs")
        self._next = 0
        self._session: aiohttp.ClientSession | None = None
        self._bridges: set[tuple[Any, aiohttp.ClientWebSocketResponse]] = set()

    def _build_app(self) -> web.Application:
        app = web.Application(client_max_size=1024**3)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    async def _on_start(self) -> None:
        self._session = aiohttp.ClientSession(
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),  # each request stands alone, like a balancer
            skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=60),
        )

    async def _on_stop(self) -> None:
        for transport, up in list(self._bridges):
            if transport is not None:
                transport.abort()
            _abort_client_ws(up)
        if self._session is not None:
            await self._session.close()

    def _pick(self, kind: str, request: web.Request, *, skip: str | None = None) -> tuple[str, str | None]:
        """The upstream, and the cookie to set (sticky mode, when the request did not name a usable one)."""
        named = request.cookies.get(self.sticky, "") if self.sticky else ""
        index = int(named[1:]) if named[1:].isdigit() and int(named[1:]) < len(self.upstreams) else None
        set_cookie = None
        if index is None or self.upstreams[index] == skip:
            index = self._next % len(self.upstreams)
            self._next += 1
            if self.upstreams[index] == skip:
                index = self._next % len(self.upstreams)
                self._next += 1
            set_cookie = f"{self.sticky}=s{index}; path=/" if self.sticky else None
        upstream = self.upstreams[index]
        self.routed.append((upstream, kind, f"{request.method} {request.path_qs}"))
        return upstream, set_cookie

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        kind = "ws" if request.headers.get("Upgrade", "").lower() == "websocket" else "http"
        upstream, set_cookie = self._pick(kind, request)
        relay = self._bridge if kind == "ws" else self._forward
        response = await relay(request, upstream, set_cookie)
        if response.status == 502 and self.sticky:  # option redispatch: another upstream, a new cookie
            upstream, set_cookie = self._pick(kind, request, skip=upstream)
            response = await relay(request, upstream, set_cookie)
        return response

    async def _forward(self, request: web.Request, upstream: str, set_cookie: str | None = None) -> web.Response:
        assert self._session is not None
        body = await request.read()
        try:
            async with self._session.request(
                request.method,
                URL(upstream + request.raw_path, encoded=True),
                headers=_filtered(request.headers, _HOP),
                data=body if body else None,
                allow_redirects=False,
            ) as resp:
                payload = await resp.read()
                headers = _filtered(resp.headers, _HOP)
                if set_cookie:
                    headers.add("Set-Cookie", set_cookie)
                return web.Response(status=resp.status, body=payload, headers=headers)
        except TimeoutError:
            return web.Response(status=504, text="504 Gateway Time-out")
        except aiohttp.ClientError:
            return web.Response(status=502, text="502 Bad Gateway")

    async def _bridge(self, request: web.Request, upstream: str, set_cookie: str | None = None) -> web.StreamResponse:
        assert self._session is not None
        try:
            up = await self._session.ws_connect(
                URL(upstream.replace("http", "ws", 1) + request.raw_path, encoded=True),
                headers=_filtered(request.headers, _HOP | _WS_HANDSHAKE),
                autoping=False,  # pings travel end to end, so a frozen upstream is still noticed
                autoclose=False,
                max_msg_size=0,
                timeout=aiohttp.ClientWSTimeout(ws_close=2.0),
            )
        except aiohttp.WSServerHandshakeError as exc:
            return web.Response(status=exc.status, text=f"{exc.status}: upstream refused the WebSocket")
        except (aiohttp.ClientError, TimeoutError):
            return web.Response(status=502, text="502 Bad Gateway")
        down = web.WebSocketResponse(autoping=False, autoclose=False, max_msg_size=0, timeout=2.0)
        if set_cookie:
            down.headers.add("Set-Cookie", set_cookie)  # on the 101, as HAProxy's cookie insert does
        await down.prepare(request)
        bridge = (request.transport, up)
        self._bridges.add(bridge)
        closing = asyncio.Event()

        def abort_down() -> None:
            if request.transport is not None:
                request.transport.abort()

        try:
            await asyncio.gather(
                self._pump(up, down, closing, abort_down),
                self._pump(down, up, closing, lambda: _abort_client_ws(up)),
            )
        finally:
            self._bridges.discard(bridge)
            if not up.closed:
                _abort_client_ws(up)
        return down

    @staticmethod
    async def _pump(src: Any, dst: Any, closing: asyncio.Event, abort_dst: Any) -> None:
        """Copy frames src -> dst until a close (passed on with its code) or a dropped connection (dropped too)."""
        while True:
            msg = await src.receive()
            try:
                if msg.type is WSMsgType.TEXT:
                    await dst.send_str(msg.data)
                elif msg.type is WSMsgType.BINARY:
                    await dst.send_bytes(msg.data)
                elif msg.type is WSMsgType.PING:
                    await dst.ping(msg.data)
                elif msg.type is WSMsgType.PONG:
                    await dst.pong(msg.data)
                elif msg.type is WSMsgType.CLOSE:
                    closing.set()
                    code = 1000 if msg.data in _UNSENDABLE_CLOSE else msg.data
                    reason = (msg.extra or "").encode()
                    await asyncio.gather(
                        dst.close(code=code, message=reason),
                        src.close(code=code, message=reason),
                        return_exceptions=True,
                    )
                    return
                else:  # CLOSING (our own close in progress), CLOSED or ERROR (connection lost)
                    if not closing.is_set():
                        closing.set()
                        abort_dst()
                    return
            except (ConnectionError, RuntimeError):
                if not closing.is_set():
                    closing.set()
                    abort_dst()
                return
