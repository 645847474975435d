"""HTTP to ComfyUI servers: one ``httpx.AsyncClient`` per server on our lean transport (``transport.py``), a few
requests at a time per server, capped bodies, and errors that name the server without its credentials.

Also the synchronous file fetch used by results of the bulk path on first use: it runs in the caller's thread with
a short-lived client, so it works whatever became of the engine in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any

import httpx
from httpx._utils import URLPattern, get_environment_proxies

from comfy_notebook.core import protocol as wire
from comfy_notebook.core.errors import ComfyError, ProtocolError, ServerUnavailable, describe
from comfy_notebook.core.servers import ServerSpec
from comfy_notebook.engine.connection import ServerConnection
from comfy_notebook.engine.loop import THREAD_NAME
from comfy_notebook.engine.transport import LoopTransport, tls_context

log = logging.getLogger(__name__)

_JSON_HEADERS = {"Content-Type": "application/json", "Accept": "*/*", "User-Agent": "comfy-notebook"}

#: 400/403: ComfyUI refuses the name (it does for ``..``); that loses this file, not the whole result.
VIEW_MISSING = (400, 403, 404)


@dataclass(frozen=True)
class HttpOptions:
    timeout: float = 30.0  # well above ComfyUI's 0.3-1.2 s GC stalls
    connect_timeout: float = 5.0
    verify_tls: bool = True
    max_json_bytes: int = 64 * 1024 * 1024  # a full history was 6 MB
    max_file_bytes: int = 256 * 1024 * 1024
    cancel_timeout: float = 1.0
    #: Questions asked to find out what became of a prompt (``/queue``, ``/history/{id}``) after a fault.
    probe_timeout: float = 5.0


def view_params(ref: wire.ImageRef) -> dict[str, str]:
    return {"filename": ref.filename, "subfolder": ref.subfolder, "type": ref.type}


class ComfyHTTP:
    """The engine's HTTP calls. Create it on the loop thread; every method runs there.

    One ``httpx.AsyncClient`` per server: a single client shared by many servers spends most of its time in its
    connection pool's bookkeeping (measured: 53-62 % of the loop thread's CPU at 64 servers, and idle connections
    closed and reopened whenever more than its keep-alive limit were open), while a small pool per server keeps
    every connection alive and the bookkeeping trivial.
    """

    def __init__(self, options: HttpOptions) -> None:
        self.options = options
        self._clients: dict[str, httpx.AsyncClient] = {}
        self._tls: ssl.SSLContext | None = None  # built on first https use, then shared: one costs ~30 ms
        self._transports: dict[str, LoopTransport] = {}  # the hot POST goes to these directly
        self._prompt_urls: dict[str, httpx.URL] = {}
        self._timeouts = httpx.Timeout(options.timeout, connect=options.connect_timeout).as_dict()

    def _client(self, conn: ServerConnection) -> httpx.AsyncClient:
        client = self._clients.get(conn.server)
        if client is None:
            options = self.options
            timeout = httpx.Timeout(options.timeout, connect=options.connect_timeout)
            # The request slots bound ordinary requests; cancels bypass them, hence a few connections more.
            room = conn.http_slots_total + 2
            url = conn.spec.url
            if env_proxied(url):
                # Our transport does not speak to proxies, and a custom transport makes httpx ignore the
                # environment's: keep httpx's own for a server that HTTP(S)_PROXY/ALL_PROXY (minus NO_PROXY) covers.
                client = httpx.AsyncClient(
                    timeout=timeout,
                    limits=httpx.Limits(max_connections=room, max_keepalive_connections=room),
                    verify=options.verify_tls,
                    follow_redirects=False,
                    cookies=_no_cookies(),
                )
            else:
                if url.startswith("https:") and self._tls is None:
                    self._tls = tls_context(options.verify_tls)
                transport = self._transports[conn.server] = LoopTransport(
                    url, max_connections=room, ssl_context=self._tls
                )
                client = httpx.AsyncClient(
                    transport=transport, timeout=timeout, follow_redirects=False, cookies=_no_cookies()
                )
            self._clients[conn.server] = client
        return client

    async def forget(self, server: str) -> None:
        """Close the client of a server we no longer use."""
        client = self._clients.pop(server, None)
        self._transports.pop(server, None)
        self._prompt_urls.pop(server, None)
        if client is not None:
            await client.aclose()

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        self._transports.clear()
        await asyncio.gather(*(c.aclose() for c in clients), return_exceptions=True)

    async def post_prompt(self, conn: ServerConnection, body: dict[str, Any]) -> tuple[int, bytes, int | None]:
        """``POST /prompt``: status, body, and the highest queue number the URL had given us when the request went
        out (see ``Affinity.posted``); a transport failure is status 0 with the (redacted) reason as the body.

        The one request made per prompt goes straight to our transport: httpx's client layer (URL parsing,
        redirects, auth, cookies merging) was a tenth of the client's CPU per prompt at 64 servers and does
        nothing for this request. A server reached through a proxy keeps the client's full path."""
        seen = None
        try:
            async with conn.http_slots:
                seen = conn.affinity.highest  # read now, not before waiting for a slot: answers came meanwhile
                client = self._client(conn)
                transport = self._transports.get(conn.server)
                if transport is None:
                    response = await client.post(
                        conn.spec.http_url("/prompt"), json=body, headers=_headers(conn), params=conn.affinity.params()
                    )
                else:
                    url = self._prompt_urls.get(conn.server)
                    if url is None:
                        url = httpx.URL(conn.spec.http_url("/prompt"), params=conn.affinity.params())
                        self._prompt_urls[conn.server] = url
                    headers = {**_JSON_HEADERS, **_headers(conn)}
                    content = json.dumps(body, separators=(",", ":")).encode()
                    request = httpx.Request(
                        "POST", url, headers=headers, content=content, extensions={"timeout": self._timeouts}
                    )
                    response = await transport.handle_async_request(request)
                    await response.aread()
        except httpx.TransportError as exc:
            return 0, conn.redact(describe(exc)).encode(), seen
        conn.saw_cookies(response.headers.get_list("set-cookie"))
        return response.status_code, response.content, seen

    async def get(
        self,
        conn: ServerConnection,
        path: str,
        *,
        limit: int,
        timeout: float | None = None,
        params: dict[str, str] | None = None,
        missing: tuple[int, ...] = (404,),
    ) -> bytes | None:
        """A body of at most ``limit`` bytes (a hostile server cannot make us buffer gigabytes); None for a
        ``missing`` status."""
        request_timeout = httpx.USE_CLIENT_DEFAULT if timeout is None else timeout
        url = conn.spec.http_url(path)
        params = {**(params or {}), **conn.affinity.params()}
        try:
            async with (
                conn.http_slots,
                self._client(conn).stream(
                    "GET", url, params=params, headers=_headers(conn), timeout=request_timeout
                ) as r,
            ):
                conn.saw_cookies(r.headers.get_list("set-cookie"))
                if r.status_code in missing:
                    return None
                chunks, size = [], 0
                async for chunk in r.aiter_bytes():
                    size += len(chunk)
                    if size > limit:
                        raise ProtocolError(
                            f"{conn.server} sent more than {limit} bytes for {path}", server=conn.server
                        )
                    chunks.append(chunk)
        except httpx.HTTPError as exc:
            error = ServerUnavailable(
                f"{conn.server} did not answer GET {path}: {conn.redact(describe(exc))}", server=conn.server
            )
            error.refused = isinstance(exc, httpx.ConnectError)
            raise error from None
        body = b"".join(chunks)
        if r.status_code >= 400:
            text = conn.redact(describe(body.decode("utf-8", "replace")))
            raise ServerUnavailable(
                f"{conn.server} answered GET {path} with HTTP {r.status_code}: {text}", server=conn.server
            )
        return body

    async def get_json(self, conn: ServerConnection, path: str, timeout: float | None = None) -> Any:
        body = await self.get(conn, path, limit=self.options.max_json_bytes, timeout=timeout)
        try:
            return None if body is None else json.loads(body)
        except ValueError:
            raise ProtocolError(f"{conn.server} sent malformed JSON for {path}", server=conn.server) from None

    async def history(
        self, conn: ServerConnection, prompt_id: str, timeout: float | None = None
    ) -> wire.HistoryEntry | None:
        body = await self.get_json(conn, f"/history/{prompt_id}", timeout) or {}
        return wire.parse_history(body, prompt_id, server=conn.server)

    async def recent_history(self, conn: ServerConnection, count: int) -> Any:
        """The ``count`` most recently finished prompts of everyone, as ``GET /history?max_items=N`` returns them."""
        body = await self.get(conn, "/history", limit=self.options.max_json_bytes, params={"max_items": str(count)})
        try:
            return json.loads(body) if body else {}
        except ValueError:  # a ProtocolError, which the harvest logs and survives (a JSON error would kill it)
            raise ProtocolError(f"{conn.server} sent malformed JSON for /history", server=conn.server) from None

    async def view(self, conn: ServerConnection, ref: wire.ImageRef) -> bytes | None:
        limit = self.options.max_file_bytes
        body = await self.get(conn, "/view", limit=limit, params=view_params(ref), missing=VIEW_MISSING)
        if body is None:
            log.warning("%s did not serve file %r (type %s)", conn.server, ref.filename, ref.type)
        return body

    async def landed(self, conn: ServerConnection, prompt_id: str) -> bool:
        """Whether the server has the prompt queued, running or finished (best effort)."""
        with contextlib.suppress(ComfyError):
            if wire.queue_contains(await self.get_json(conn, "/queue", timeout=self.options.probe_timeout), prompt_id):
                return True
            return await self.history(conn, prompt_id, timeout=self.options.probe_timeout) is not None
        return False

    async def unqueue(self, conn: ServerConnection, prompt_id: str) -> None:
        """Delete a prompt from the server's queue if it has not started (ComfyUI leaves a running one alone).
        Unlike ``drop`` it never interrupts: a prompt that started meanwhile must finish."""
        await self.post_json(conn, "/queue", {"delete": [prompt_id]}, timeout=self.options.probe_timeout)

    async def post_json(self, conn: ServerConnection, path: str, body: Any, timeout: float) -> None:
        """A small control POST; a failure is a ``ServerUnavailable`` naming the server."""
        try:
            async with conn.http_slots:
                response = await self._client(conn).post(
                    conn.spec.http_url(path),
                    json=body,
                    headers=_headers(conn),
                    params=conn.affinity.params(),
                    timeout=timeout,
                )
        except httpx.HTTPError as exc:
            raise ServerUnavailable(
                f"{conn.server} did not answer POST {path}: {conn.redact(describe(exc))}", server=conn.server
            ) from None
        conn.saw_cookies(response.headers.get_list("set-cookie"))
        if response.status_code >= 400:
            raise ServerUnavailable(
                f"{conn.server} answered POST {path} with HTTP {response.status_code}", server=conn.server
            )

    async def upload(
        self, conn: ServerConnection, path: str, *, filename: str, data: bytes, mime: str, fields: dict[str, str]
    ) -> tuple[int, bytes]:
        """A multipart POST to one of ComfyUI's upload routes (file field ``image``); status and body. Through the
        same cookies and affinity key as every other call, so a balancer keeps it on the prompt's backend."""
        try:
            async with conn.http_slots:
                response = await self._client(conn).post(
                    conn.spec.http_url(path),
                    files={"image": (filename, data, mime)},
                    data=fields,
                    headers=_headers(conn),
                    params=conn.affinity.params(),
                )
        except httpx.HTTPError as exc:
            error = ServerUnavailable(
                f"{conn.server} did not answer POST {path}: {conn.redact(describe(exc))}", server=conn.server
            )
            error.refused = isinstance(exc, httpx.ConnectError)
            raise error from None
        conn.saw_cookies(response.headers.get_list("set-cookie"))
        return response.status_code, response.content[:4096]

    async def drop(self, conn: ServerConnection, prompt_id: str) -> None:
        """Targeted cancel: delete the prompt from the queue, and interrupt it only if it is the one running.
        Bypasses the request slots: a cancel must go out even when the slots are taken by a hung server."""
        timeout = self.options.cancel_timeout
        calls = [
            self._client(conn).post(
                url, json=body, headers=_headers(conn), params=conn.affinity.params(), timeout=timeout
            )
            for url, body in (
                (conn.spec.http_url("/queue"), {"delete": [prompt_id]}),
                (conn.spec.http_url("/interrupt"), {"prompt_id": prompt_id}),
            )
        ]
        for outcome in await asyncio.gather(*calls, return_exceptions=True):
            if isinstance(outcome, BaseException):
                log.info("could not cancel %s on %s: %s", prompt_id, conn.server, conn.redact(describe(outcome)))


def _headers(conn: ServerConnection) -> dict[str, str]:
    """The server's own headers (credentials) plus its affinity: the balancer's cookies and our key."""
    return {**conn.spec.headers, **conn.affinity.headers()}


def _no_cookies() -> httpx.Cookies:
    """httpx's own jar stays empty: the connection's jar is shared with its socket (see ``core.affinity``)."""
    return httpx.Cookies(CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])))


def env_proxied(url: str) -> bool:
    """Whether a stock ``httpx.AsyncClient`` would send requests for ``url`` through a proxy from the environment:
    the same rules, from httpx's own (private) helpers, so the two cannot disagree."""
    target = httpx.URL(url)
    mounts = sorted(((URLPattern(key), proxy) for key, proxy in get_environment_proxies().items()), key=lambda m: m[0])
    return next((proxy is not None for pattern, proxy in mounts if pattern.matches(target)), False)


class _SyncClients:
    """One ``httpx.Client`` per TLS setting for the whole process: building a client builds an SSL context
    (milliseconds), far too slow per result. ``httpx.Client`` is safe to share between threads."""

    guard = threading.Lock()
    clients: dict[bool, httpx.Client] = {}

    @classmethod
    def get(cls, verify: bool) -> httpx.Client:
        with cls.guard:
            client = cls.clients.get(verify)
            if client is None:
                client = cls.clients[verify] = httpx.Client(
                    verify=verify, limits=httpx.Limits(max_connections=8), cookies=_no_cookies()
                )
            return client


def fetch_files(
    spec: ServerSpec,
    options: HttpOptions,
    refs: list[wire.ImageRef],
    *,
    affinity: tuple[Mapping[str, str], Mapping[str, str]] = ({}, {}),
) -> list[bytes | None]:
    """Fetch ``refs`` from ``spec``'s server now, in this thread (None for a file the server does not serve).
    ``affinity``: the headers and query parameters that reach the prompt's backend behind a balancer."""
    if threading.current_thread().name == THREAD_NAME:
        raise RuntimeError("image bytes cannot be fetched on the engine's loop thread; read them from a cell")
    out: list[bytes | None] = []
    timeout = httpx.Timeout(options.timeout, connect=options.connect_timeout)
    client = _SyncClients.get(options.verify_tls)
    for ref in refs:
        try:
            with client.stream(
                "GET",
                spec.http_url("/view"),
                params={**view_params(ref), **affinity[1]},
                headers={**spec.headers, **affinity[0]},
                timeout=timeout,
            ) as response:
                if response.status_code in VIEW_MISSING:
                    log.warning("%s did not serve file %r (type %s)", spec.url, ref.filename, ref.type)
                    out.append(None)
                    continue
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > options.max_file_bytes:
                        raise ProtocolError(f"{spec.url} sent too large a file for /view", server=spec.url)
        except httpx.HTTPError as exc:
            raise ServerUnavailable(f"{spec.url} did not answer GET /view: {describe(exc)}", server=spec.url) from None
        if response.status_code >= 400:
            raise ServerUnavailable(f"{spec.url} answered GET /view with HTTP {response.status_code}", server=spec.url)
        out.append(bytes(body))
    return out
