"""The WebSocket to one server, and the prompts in flight there.

One ``ServerConnection`` per server the engine has talked to. It keeps one client id for its lifetime, so that a
reconnect keeps receiving the events of prompts submitted earlier; the old socket is always closed completely before
a new one opens (ComfyUI's duplicate-clientId bug deregisters the new socket otherwise). The reader hands every
frame to the engine at once and never waits on a consumer: one slow reader stalls every client of a ComfyUI server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import websockets
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidMessage
from websockets.frames import Close
from websockets.protocol import State

from comfy_notebook.core.affinity import Affinity
from comfy_notebook.core.errors import ComfyError, ServerUnavailable, describe
from comfy_notebook.core.lock import ConnectionState
from comfy_notebook.core.protocol import Event, HistoryEntry, new_id, parse_binary, parse_text
from comfy_notebook.core.servers import ServerSpec

if TYPE_CHECKING:
    from comfy_notebook.engine.task import Task

log = logging.getLogger(__name__)

#: The close code ``websockets`` sends when our keepalive ping goes unanswered: the server hung.
PING_TIMEOUT = 1011

_STATES = {
    State.CONNECTING: ConnectionState.CONNECTING,
    State.OPEN: ConnectionState.OPEN,
    State.CLOSING: ConnectionState.CLOSING,
    State.CLOSED: ConnectionState.CLOSED,
}


@dataclass(frozen=True)
class SocketOptions:
    """WebSocket settings. The server never pings, so only our pings notice a hung server; a short close timeout
    keeps dead-peer detection fast; the frame limit is far above a full-size image (8 MB seen)."""

    # A hung server is noticed within interval + timeout + close timeout (< 3 s); the 2 s timeout stays well above
    # ComfyUI's GC stalls (up to ~1.5 s measured with four servers on two cores). A ping is a few bytes.
    ping_interval: float = 0.5
    ping_timeout: float = 2.0
    close_timeout: float = 0.25
    open_timeout: float = 5.0
    max_size: int = 64 * 1024 * 1024
    max_requests: int = 4  # concurrent HTTP requests per server (cancels and resets bypass this)


@dataclass(eq=False)
class Flight:
    """A prompt of ours on this server, from before its POST until its result is collected."""

    task: Task
    done: asyncio.Future[HistoryEntry | None]
    #: Quiet prompts are posted under a client id with no socket, so the server sends them no events (see
    #: ``Engine._harvest``); used for bulk work, where per-prompt events cost the server about a fifth of its rate.
    quiet: bool = False
    posting: bool = False  # the POST is on its way: cancelling now must wait for the answer, then drop it
    posted: bool = False
    number: int | None = None  # the server's queue number: quiet prompts finish in this order
    last_heard: float = field(default_factory=time.monotonic)
    posted_at: float = 0.0  # monotonic; the watchdog's start of the "queued" phase
    started_at: float = 0.0  # monotonic; the start of the "running" phase
    counted: bool = False  # counted in the pool record's ``in_flight`` (see ``Runtime.release``)
    movable: bool = False  # bound by pool mode's scheduler (not pinned): may be taken back for an idle server
    stealing: bool = False  # being taken back right now (see ``engine.steal``)
    finished_hint: bool = False  # a quiet prompt the server's queue no longer counts (see ``presume_finished``)
    server: str = ""  # where this attempt runs (set by ``Runtime.attach``)
    generation: int = 0  # the connection's socket generation when the prompt was posted
    #: This attempt's prompt id (a retry gets a fresh one, so a late finish of the old one is told apart).
    prompt_id: str = ""
    backends: int = 0  # the connection's backend changes when the prompt was posted (see ``core.affinity``)
    #: The task running this attempt while it waits on the server (its POST, its finish, its result), and why it
    #: was stopped there: a request to a server we gave up on is abandoned, not left to its HTTP timeout.
    driver: asyncio.Task[Any] | None = None
    aborted: ComfyError | None = None

    def __post_init__(self) -> None:
        self.prompt_id = self.prompt_id or self.task.prompt_id


def _close_code(received: Close | None, sent: Close | None) -> int | None:
    """The close code that describes what happened: the peer's, else ours (1009 frame too big, 1011 ping
    timeout), else None for a connection that just dropped (1006)."""
    if received is not None:
        return received.code
    return sent.code if sent is not None else None


class ServerConnection:
    """One server's socket, reader and in-flight prompts."""

    def __init__(
        self,
        spec: ServerSpec,
        options: SocketOptions,
        on_event: Callable[[ServerConnection, Event], None],
        on_state: Callable[[ServerConnection, str, int | None, str], None],
    ) -> None:
        self.spec = spec
        self.server = spec.url
        self.client_id = new_id()
        self.quiet_id = new_id()  # never connected: prompts posted under it get no events
        #: Cookies a balancer set and the key we send (see ``core.affinity``); the key is on unless the engine
        #: turns it off.
        self.affinity = Affinity(key=self.client_id)
        self.harvest_wake = asyncio.Event()  # set by every ``status`` broadcast: the queue moved
        self.harvesting = False
        self.flights: dict[str, Flight] = {}
        self.running: str | None = None  # the prompt executing now, for previews that carry no prompt id
        self._options = options
        self._on_event = on_event
        self._on_state = on_state
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._open_lock = asyncio.Lock()
        self.recovering = False
        self.last_event = time.monotonic()  # any frame from this server (the watchdog's sign of life)
        self.generation = 0  # sockets opened so far: a prompt that outlived a reconnect may have outlived the server
        #: Bounds our concurrent HTTP requests to this server. Measured: hundreds of concurrent requests slow
        #: ComfyUI (one loop thread and its prompt worker share a GIL) and httpcore's pool alike; 4 at a time
        #: completed 300 queued prompts about 35% faster than unbounded (see bench/).
        self.http_slots = asyncio.Semaphore(options.max_requests)
        self.http_slots_total = options.max_requests

    @property
    def state(self) -> ConnectionState:
        return ConnectionState.CLOSED if self._ws is None else _STATES[self._ws.state]

    @property
    def opening(self) -> bool:
        """A connect (or close) is in progress."""
        return self._open_lock.locked()

    @property
    def is_open(self) -> bool:
        return self._ws is not None and self._ws.state is State.OPEN

    def redact(self, text: str) -> str:
        """Server text or an exception message with any of this server's secrets blanked out."""
        for value in self.spec.headers.values():
            for secret in {value, value.split(" ", 1)[-1]}:
                if len(secret) >= 4:
                    text = text.replace(secret, "***")
        return text

    async def ensure_open(self) -> None:
        """Open the socket if it is not open; raise ``ServerUnavailable`` naming the server if that fails."""
        async with self._open_lock:
            if self.is_open:
                return
            await self._close_current(1000)
            self._on_state(self, "connecting", None, "")
            opts = self._options
            try:
                ws = await connect(
                    self.spec.ws_url(self.client_id),
                    additional_headers={**self.spec.headers, **self.affinity.headers()},
                    ping_interval=opts.ping_interval,
                    ping_timeout=opts.ping_timeout,
                    close_timeout=opts.close_timeout,
                    open_timeout=opts.open_timeout,
                    max_size=opts.max_size,
                    max_queue=None,  # the reader drains promptly; never apply backpressure to the server
                    # No permessage-deflate: the frames are small JSON and JPEG previews, and zlib on every frame
                    # cost both the server and us CPU for nothing.
                    compression=None,
                )
            except (OSError, TimeoutError, websockets.WebSocketException) as exc:
                reason = self.redact(describe(exc) or type(exc).__name__)
                self._on_state(self, "error", None, reason)
                error = ServerUnavailable(f"cannot open a WebSocket to {self.server}: {reason}", server=self.server)
                # Refused, or reset / closed before any HTTP answer: nothing serves the port (a killed process's
                # last threads still hold it for ~60 ms, and drop what connects meanwhile).
                error.refused = isinstance(exc, ConnectionRefusedError | ConnectionResetError | InvalidMessage)
                raise error from None
            self._ws = ws
            self.generation += 1
            self.affinity.reconnected()
            if ws.response is not None:
                self.saw_cookies(ws.response.headers.get_all("Set-Cookie"), on_socket=True)
            self._reader = asyncio.create_task(self._read(ws), name=f"comfy-reader {self.server}")
            self._on_state(self, "open", None, "")

    def saw_cookies(self, set_cookies: list[str], *, on_socket: bool = False) -> None:
        """Cookies of any answer from this URL (the socket's 101 or HTTP): kept for every call after it; a cookie
        that changed means a balancer sent us to another backend (``on_socket``: the new socket is already there)."""
        if set_cookies and self.affinity.absorb(set_cookies):
            self._on_state(self, "backend", None, "socket" if on_socket else "http")

    async def _read(self, ws: ClientConnection) -> None:
        code: int | None = None
        detail = ""
        try:
            async for message in ws:
                self.last_event = time.monotonic()
                event = parse_text(message) if isinstance(message, str) else parse_binary(message)
                if event is None:
                    log.debug("ignored a frame from %s", self.server)
                    continue
                try:
                    self._on_event(self, event)
                except Exception:  # a bug in event handling must not kill the socket
                    log.exception("error while handling an event from %s", self.server)
            code = _close_code(ws.protocol.close_rcvd, ws.protocol.close_sent)
        except websockets.ConnectionClosed as exc:
            code = _close_code(exc.rcvd, exc.sent)
            if exc.rcvd is None and exc.sent is not None and exc.sent.code == PING_TIMEOUT:
                detail = "ping timeout"
        except Exception as exc:  # pragma: no cover - defensive: any read error is a socket error
            log.warning("WebSocket to %s failed: %s", self.server, self.redact(describe(exc)))
        finally:
            if ws is self._ws:
                self._ws = None
                self.running = None
                self._on_state(self, "closed", code, detail)

    async def _close_current(self, code: int) -> None:
        ws, reader = self._ws, self._reader
        if ws is None:
            return
        self._on_state(self, "closing", None, "")
        with contextlib.suppress(Exception):
            await ws.close(code)
        if reader is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(reader), self._options.close_timeout + 1)

    async def close(self, code: int = 1000) -> None:
        """Close the socket completely (the reader has reported the close when this returns)."""
        async with self._open_lock:
            await self._close_current(code)

    def abort(self) -> None:
        """Drop the socket without a handshake (engine shutdown)."""
        if self._ws is not None:
            self._ws.transport.abort()
