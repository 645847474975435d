"""The engine's shared state on the loop thread: the lock, the pool, the scheduler, every connection and the
bookkeeping of which prompt is where. The engine's parts (dispatch, events, harvest, recovery, control) each
hold this object; only the loop thread touches it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from comfy_notebook.core.errors import ServerUnavailable
from comfy_notebook.core.lock import ServerLock
from comfy_notebook.core.pool import Pool
from comfy_notebook.core.scheduler import Job, Scheduler
from comfy_notebook.core.servers import ServerSpec
from comfy_notebook.engine.connection import Flight, ServerConnection
from comfy_notebook.engine.http import ComfyHTTP
from comfy_notebook.engine.options import POOL, EngineOptions
from comfy_notebook.engine.task import Task
from comfy_notebook.engine.uploader import Uploader

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Waiting:
    """A pool-mode prompt in the client-side queue: its job, and the future its driver awaits for a server."""

    task: Task
    job: Job
    bound: asyncio.Future[Flight]
    quiet: bool


@dataclass(eq=False)
class Ghost:
    """A prompt left behind on a lost server (we moved it elsewhere): if that server finishes it anyway, it is a
    duplicate to count, never a second result."""

    task: Task
    since: float = field(default_factory=time.monotonic)


class Runtime:
    """State shared by the engine's parts. Create it on the loop thread."""

    def __init__(
        self,
        options: EngineOptions,
        on_event: Callable[..., None],
        on_socket: Callable[..., None],
    ) -> None:
        self.options = options
        self.mode = options.mode
        self.lock = ServerLock()
        self.pool = Pool()
        self.scheduler = Scheduler(self.pool, depth=options.depth)
        self.api = ComfyHTTP(options.http)  # the AsyncClient must be created on the loop thread
        self.uploads = Uploader(self.api)
        self.connections: dict[str, ServerConnection] = {}
        self.waiting: dict[str, Waiting] = {}
        self.ghosts: dict[str, dict[str, Ghost]] = {}  # server -> prompt id -> ghost
        self.background: set[asyncio.Task[Any]] = set()
        #: Servers added by a one-off ``server=`` (not in the pool): their sockets close when their work ends.
        self.transient: set[str] = set()
        self._on_event = on_event
        self._on_socket = on_socket
        #: Set by the dispatcher: bind waiting prompts now (to the one server named, when only its room changed).
        self.pump: Callable[..., None] = lambda server=None: None

    # -- background work ----------------------------------------------------------------------------------------------
    def spawn(self, coro: Coroutine[Any, Any, Any], what: str = "background task") -> asyncio.Task[Any]:
        """A background task with a strong reference (the loop keeps only weak ones) whose failure is logged."""
        task = asyncio.get_running_loop().create_task(coro)
        self.background.add(task)
        task.add_done_callback(lambda t: self._finished(t, what))
        return task

    def _finished(self, task: asyncio.Task[Any], what: str) -> None:
        self.background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s failed", what, exc_info=task.exception())

    # -- connections and affinity -------------------------------------------------------------------------------------
    def connection(self, spec: ServerSpec) -> ServerConnection:
        conn = self.connections.get(spec.url)
        if conn is None:
            conn = ServerConnection(spec, self.options.socket, self._on_event, self._on_socket)
            if not self.options.affinity_key:
                conn.affinity.key = None
            self.connections[spec.url] = conn
        return conn

    def attach(self, flight: Flight, spec: ServerSpec) -> ServerConnection:
        """Record prompt -> server affinity before anything is sent."""
        conn = self.connection(spec)
        conn.flights[flight.prompt_id] = flight
        flight.server = spec.url
        flight.task._update(server=spec.url)
        flight.counted = spec.url in self.pool.records
        if flight.counted:
            self.pool.records[spec.url].in_flight += 1
        return conn

    def release(self, flight: Flight) -> None:
        """The server is done with this prompt (finished, lost or dropped): free its place for the next one."""
        if not flight.counted:
            return
        flight.counted = False
        record = self.pool.records.get(flight.server)
        if record is not None:
            record.in_flight = max(0, record.in_flight - 1)
        self.pump(flight.server)

    def detach(self, flight: Flight) -> None:
        """Forget this attempt on its server (after its result, its loss, or a move before its POST)."""
        server = flight.server
        self.release(flight)
        conn = self.connections.get(server)
        if conn is not None and conn.flights.get(flight.prompt_id) is flight:
            del conn.flights[flight.prompt_id]
            if not conn.flights and server in self.transient:
                self.transient.discard(server)
                self.spawn(self.retire(server), f"closing the socket to {server}")

    async def retire(self, server: str) -> None:
        """Close and forget the connection of a server we no longer use (removed, or a finished one-off)."""
        conn = self.connections.get(server)
        if conn is None or conn.flights or server in self.pool.records or server in self.transient:
            return
        del self.connections[server]
        await conn.close(1000)
        await self.api.forget(server)
        self.uploads.forget(server)

    def ghost(self, server: str, prompt_id: str, task: Task) -> None:
        """Remember a prompt we moved away from ``server``, in case that server finishes it after all."""
        self.ghosts.setdefault(server, {})[prompt_id] = Ghost(task)

    def count_duplicate(self, server: str, prompt_id: str) -> bool:
        """``server`` finished a prompt we had moved away: count it (once); the result is not used."""
        ghost = self.ghosts.get(server, {}).pop(prompt_id, None)
        if ghost is None:
            return False
        ghost.task._update(duplicates=ghost.task.duplicates + 1)
        record = self.pool.records.get(server)
        if record is not None:
            record.duplicates += 1
        log.info("%s finished prompt %s after it had been moved: counted as a duplicate", server, prompt_id)
        return True

    def warm_pool(self) -> None:
        """Pool mode: keep a socket open to every server that is not cooling down. Its ``status`` broadcasts
        tell its load (other clients' queue included) before any work is bound to it, and a server that comes
        back is noticed without waiting for a prompt."""
        if self.mode != POOL:
            return
        for record in self.pool.records.values():
            conn = self.connection(record.spec)
            if not (conn.is_open or conn.opening or self.pool.cooling(record)):
                self.spawn(self._warm(conn), f"connecting to {record.url}")

    async def _warm(self, conn: ServerConnection) -> None:
        with contextlib.suppress(ServerUnavailable):  # the failure is recorded (cooldown) by the socket callback
            await conn.ensure_open()

    def live_flights(self, conn: ServerConnection) -> list[Flight]:
        return [f for f in conn.flights.values() if f.posted and not f.done.done()]

    def find(self, task: Task) -> tuple[ServerConnection, Flight] | None:
        for conn in self.connections.values():
            flight = conn.flights.get(task.prompt_id)
            if flight is not None and flight.task is task:
                return conn, flight
        return None

    def others_available(self, server: str) -> bool:
        """Whether a server other than ``server`` could take work now (in the pool and not cooling down)."""
        return any(url != server and not self.pool.cooling(r) for url, r in self.pool.records.items())
