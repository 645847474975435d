"""The engine: routes prompts (lock, pool, per-prompt affinity), drives each one to its result, and recovers from
lost sockets by asking the prompt's own server what happened.

Everything here runs on the loop thread owned by ``LoopThread``; the public methods at the bottom are the only
entry points from other threads and they return quickly.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from comfy_notebook.core import protocol as wire
from comfy_notebook.core.errors import (
    Cancelled,
    ComfyError,
    PromptInterrupted,
    PromptLost,
    ProtocolError,
    ServerUnavailable,
    ValidationError,
    describe,
)
from comfy_notebook.core.lock import ServerLock
from comfy_notebook.core.pool import Pool
from comfy_notebook.core.servers import ServerSpec
from comfy_notebook.core.workflow import Workflow, load_workflow
from comfy_notebook.engine.connection import Flight, ServerConnection, SocketOptions
from comfy_notebook.engine.http import ComfyHTTP, HttpOptions, fetch_files
from comfy_notebook.engine.loop import LoopThread
from comfy_notebook.engine.task import (
    QUEUED,
    RUNNING,
    Progress,
    Result,
    Task,
)

log = logging.getLogger(__name__)

ServerLike = str | ServerSpec | Mapping[str, Any]

#: Newest history entries read per walk of quiet prompts (ComfyUI keeps at most 10,000).
HARVEST_WINDOW_MIN, HARVEST_WINDOW_MAX = 4, 10_000


@dataclass(frozen=True)
class EngineOptions:
    """Timeouts and limits. Keep timeouts well above ComfyUI's 0.3-1.2 s GC stalls."""

    socket: SocketOptions = field(default_factory=SocketOptions)
    http: HttpOptions = field(default_factory=HttpOptions)
    #: After a lost socket, how long to keep trying to reach the server before its prompts are declared lost.
    reconnect_window: float = 6.0
    #: A posted prompt with no event for this long is checked through ``/queue`` and ``/history``.
    silence_check: float = 10.0
    #: How often queue positions of waiting prompts are refreshed (only for short queues of ours).
    queue_poll: float = 2.0
    queue_poll_max: int = 32
    reset_timeout: float = 1.5


def to_spec(server: ServerLike) -> ServerSpec:
    if isinstance(server, ServerSpec):
        return server
    if isinstance(server, str):
        return ServerSpec.parse(server)
    if isinstance(server, Mapping) and isinstance(server.get("url"), str):
        return ServerSpec.parse(server["url"], token=server.get("token"), headers=server.get("headers"))
    raise ServerUnavailable(
        f"a server must be a URL string or {{'url': ..., 'token': ...}}, not {type(server).__name__}"
    )


class Engine:
    """Owns the loop thread, the HTTP client, the lock, the pool and every connection."""

    def __init__(self, servers: Iterable[ServerLike] = (), options: EngineOptions | None = None) -> None:
        self.options = options or EngineOptions()
        self.lock = ServerLock()
        self.pool = Pool()
        self._connections: dict[str, ServerConnection] = {}
        self._drivers: set[asyncio.Task[None]] = set()
        self._thread = LoopThread()
        self._api: ComfyHTTP = self._thread.run(self._make_api())
        self._monitor = self._thread.submit(self._monitor_loop())
        self.set_servers(servers)

    async def _make_api(self) -> ComfyHTTP:
        return ComfyHTTP(self.options.http)  # the AsyncClient must be created on the loop thread

    # =================================================================================================================
    # public, thread-safe API
    # =================================================================================================================
    def set_servers(self, servers: Iterable[ServerLike]) -> list[str]:
        specs = [to_spec(s) for s in servers]
        return self._thread.run(self._set_servers(specs))

    def submit(
        self, workflow: Workflow | str | Path, *, server: ServerLike | None = None, progress: bool = True
    ) -> Task:
        """Queue a workflow; returns at once with the task (its server already chosen).

        ``progress=False`` asks the server for no per-prompt events (no progress, previews or node names): the
        bulk path, see ``submit_many``."""
        return self.submit_many([workflow], server=server, progress=progress)[0]

    def submit_many(
        self, workflows: Iterable[Workflow | str | Path], *, server: ServerLike | None = None, progress: bool = False
    ) -> list[Task]:
        """Queue many workflows in one step. By default they are quiet (``progress=False``): the server sends no
        per-prompt events and completion is read from ``/history`` in queue order, which lets a busy server run
        at its own pace (events alone cost it about a fifth of its throughput)."""
        graphs = [load_workflow(w) for w in workflows]
        spec = to_spec(server) if server is not None else None
        tasks = [Task(wire.new_id(), graph, self._cancel_from_thread) for graph in graphs]
        admitted = self._thread.submit(self._admit_all(tasks, spec, quiet=not progress))
        try:
            admitted.result()
        except BaseException:
            # A kernel interrupt while we wait must not leave prompts running that nobody holds a handle to:
            # let the (quick) admission finish, then cancel what it started.
            if not isinstance(admitted.exception(timeout=5), Exception):
                for task in tasks:
                    task.cancel()
            raise
        return tasks

    def run(
        self,
        workflow: Workflow | str | Path,
        *,
        server: ServerLike | None = None,
        timeout: float | None = None,
    ) -> Result:
        return self.submit(workflow, server=server).result(timeout)

    def get_status(self) -> dict[str, Any]:
        if self._thread.in_loop_thread():
            return self.status_now()
        return self._thread.run(self._status(), timeout=5)

    def reset(self) -> dict[str, Any]:
        """Clear the lock, close sockets with 1000, cancel every pending task (best effort on the servers)."""
        return self._thread.run(self._reset(), timeout=self.options.reset_timeout + 3)

    def pin(self, server: ServerLike) -> str:
        """Lock to ``server`` by hand (it must be in the pool)."""
        return self._thread.run(self._pin(to_spec(server)))

    def every(self, interval: float, fn: Callable[[], None]) -> Callable[[], None]:
        """Call ``fn`` on the loop thread every ``interval`` seconds until the returned function is called.

        For UI refreshers (the status panel, progress widgets): they keep running while a cell blocks. ``fn`` must
        be quick and must not block; exceptions are logged, never raised into the loop.
        """

        async def tick() -> None:
            while True:
                try:
                    fn()
                except Exception:
                    log.exception("a periodic callback failed")
                await asyncio.sleep(interval)

        future = self._thread.submit(tick())

        def cancel() -> None:
            if self._thread.alive:
                self._thread.loop.call_soon_threadsafe(future.cancel)

        return cancel

    def close(self) -> None:
        """Stop the loop thread; pending tasks end with ``Cancelled``. The engine cannot be used afterwards."""
        if not self._thread.alive:
            return
        with contextlib.suppress(Exception):
            self._thread.run(self._shutdown(), timeout=5)
        self._thread.stop()

    @property
    def closed(self) -> bool:
        return not self._thread.alive

    @property
    def thread(self) -> LoopThread:
        return self._thread

    # =================================================================================================================
    # routing and the life of one prompt (loop thread)
    # =================================================================================================================
    async def _set_servers(self, specs: list[ServerSpec]) -> list[str]:
        self.pool.set_servers(specs)
        for spec in specs:  # refresh credentials of live connections
            conn = self._connections.get(spec.url)
            if conn is not None:
                conn.spec = spec
        locked = self.lock.route()
        if locked is not None and locked not in self.pool.records:
            self.lock.reset()
            conn = self._connections.get(locked)
            if conn is not None and not conn.flights:
                await conn.close(1000)
        return [s.url for s in specs]

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """A background task with a strong reference (the loop keeps only weak ones)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._drivers.add(task)
        task.add_done_callback(self._drivers.discard)
        return task

    def _connection(self, spec: ServerSpec) -> ServerConnection:
        conn = self._connections.get(spec.url)
        if conn is None:
            conn = ServerConnection(spec, self.options.socket, self._on_event, self._on_socket)
            self._connections[spec.url] = conn
        return conn

    def _route(self, exclude: set[str]) -> ServerSpec:
        """The server for new work: the locked one, else the pool's least-loaded choice (the lock candidate)."""
        locked = self.lock.route()
        if locked is not None and locked not in exclude:
            if locked in self.pool.records:
                return self.pool.records[locked].spec
            self.lock.reset()
        spec = self.pool.choose(exclude).spec
        self.lock.connecting(spec.url, chosen=True)
        return spec

    async def _admit_all(self, tasks: list[Task], explicit: ServerSpec | None, *, quiet: bool) -> None:
        for task in tasks:
            if explicit is not None:
                record = self.pool.records.get(explicit.url)
                spec = record.spec if record is not None and not explicit.headers else explicit
            else:
                spec = self._route(set())
            flight = Flight(task, asyncio.get_running_loop().create_future(), quiet=quiet)
            self._attach(flight, spec)
            flight.driver = self._spawn(self._drive(flight, explicit is not None))

    def _attach(self, flight: Flight, spec: ServerSpec) -> ServerConnection:
        """Record prompt -> server affinity before anything is sent."""
        conn = self._connection(spec)
        conn.flights[flight.task.prompt_id] = flight
        flight.task._update(server=spec.url)
        if spec.url in self.pool.records:
            self.pool.records[spec.url].in_flight += 1
        return conn

    def _detach(self, flight: Flight) -> None:
        conn = self._connections.get(flight.task.server or "")
        if conn is not None and conn.flights.pop(flight.task.prompt_id, None) is not None:
            record = self.pool.records.get(conn.server)
            if record is not None:
                record.in_flight = max(0, record.in_flight - 1)

    async def _drive(self, flight: Flight, explicit: bool) -> None:
        task = flight.task
        try:
            conn = await self._open_for(flight, explicit)
            flight.posting = True
            try:
                await self._post(flight, conn)
            finally:
                flight.posting = False
            if task.done():  # cancelled while the POST was on its way: now the server has it, drop it
                await self._api.drop(conn, task.prompt_id)
                return
            entry = await flight.done
            task._finish(await self._collect(flight, conn, entry))
        except ComfyError as exc:
            task._finish(error=exc)
        except asyncio.CancelledError:
            task._finish(
                error=Cancelled(f"prompt {task.prompt_id} was cancelled", server=task.server, prompt_id=task.prompt_id)
            )
        except Exception as exc:
            log.exception("internal error while running prompt %s on %s", task.prompt_id, task.server)
            task._finish(
                error=ComfyError(f"internal error: {describe(exc)}", server=task.server, prompt_id=task.prompt_id)
            )
        finally:
            self._detach(flight)
            if not flight.done.done():
                flight.done.cancel()

    async def _open_for(self, flight: Flight, explicit: bool) -> ServerConnection:
        """Open the socket BEFORE the POST. If the chosen server is unreachable nothing was sent, so the prompt may
        move to another server of the pool (unless the user named the server)."""
        tried: set[str] = set()
        while True:
            conn = self._connections[flight.task.server or ""]
            try:
                await conn.ensure_open()
            except ServerUnavailable:
                tried.add(conn.server)
                if explicit or tried >= set(self.pool.records):
                    raise
                spec = self._route(tried)
                self._detach(flight)
                self._attach(flight, spec)
                log.info(
                    "moving prompt %s from %s to %s before sending it", flight.task.prompt_id, conn.server, spec.url
                )
                continue
            if not explicit:
                self.lock.opened(conn.server)  # takes the lock if this server was the pool's choice
            return conn

    async def _post(self, flight: Flight, conn: ServerConnection) -> None:
        task = flight.task
        client_id = conn.quiet_id if flight.quiet else conn.client_id
        body = wire.prompt_body(task.workflow, client_id=client_id, prompt_id=task.prompt_id)
        status, content = await self._api.post_prompt(conn, body)
        if status == 0 or status >= 500:
            # We minted the id, so we can ask whether the prompt landed before calling it failed.
            if await self._api.landed(conn, task.prompt_id):
                log.info(
                    "POST for %s on %s failed (%s) but the prompt was queued",
                    task.prompt_id,
                    conn.server,
                    status,
                )
                self._mark_posted(flight, conn)
                return
            if status == 0:
                self.pool.mark_failed(conn.server, "POST /prompt failed")
                raise ServerUnavailable(
                    f"{conn.server} did not accept prompt {task.prompt_id}: {content.decode()}",
                    server=conn.server,
                    prompt_id=task.prompt_id,
                )
        try:
            queued = wire.parse_prompt_response(
                status, content, server=conn.server, prompt_id=task.prompt_id, workflow=task.workflow
            )
        except ValidationError as exc:
            if exc.partially_queued:  # the valid part was queued: the user must fix the workflow, so drop it
                self._spawn(self._api.drop(conn, task.prompt_id))
            raise
        self._mark_posted(flight, conn, queued.number)

    def _mark_posted(self, flight: Flight, conn: ServerConnection, number: int | None = None) -> None:
        flight.posted = True
        flight.number = number
        flight.last_heard = time.monotonic()
        if flight.task.status not in (RUNNING,) and not flight.task.done():  # a late POST answer never revives
            flight.task._update(status=QUEUED)  # a cancelled task
        if flight.quiet:
            conn.harvest_wake.set()
            if not conn.harvesting:
                conn.harvesting = True
                self._spawn(self._harvest(conn))

    async def _collect(self, flight: Flight, conn: ServerConnection, entry: wire.HistoryEntry | None) -> Result:
        """History and images from the prompt's own server (never another one)."""
        task = flight.task
        for delay in (0.0, 0.1, 0.3, 1.0):  # transient failures and the history-write race get a few tries
            if entry is not None:
                break
            await asyncio.sleep(delay)
            try:
                entry = await self._api.history(conn, task.prompt_id)
            except ServerUnavailable:
                if delay == 1.0:
                    raise
        if entry is None:
            raise ProtocolError(
                f"{conn.server} reported prompt {task.prompt_id} finished but has no history for it",
                server=conn.server,
                prompt_id=task.prompt_id,
            )
        refs = entry.images()
        # Temp files are wiped when a server restarts, so they come now; so does everything for prompts someone
        # watches. Bulk (quiet) results fetch files the server keeps on disk on first use (see engine/files.py).
        now = [ref for ref in refs if not flight.quiet or ref.type != "output"]
        data = await asyncio.gather(*(self._api.view(conn, ref) for ref in now))
        fetched = {ref: blob for ref, blob in zip(now, data, strict=True) if blob is not None}
        fetch = functools.partial(fetch_files, conn.spec, self.options.http)
        result = Result(
            task.prompt_id,
            conn.server,
            entry.status,
            outputs=entry.outputs,
            refs=refs,
            fetched=fetched,
            fetch=fetch,
            elapsed=time.time() - task.submitted_at,
        )
        if entry.status == "success":
            return result
        if entry.status == "interrupted":
            error: ComfyError = PromptInterrupted(
                f"prompt {task.prompt_id} was interrupted on {conn.server}",
                server=conn.server,
                prompt_id=task.prompt_id,
            )
        else:
            failed = entry.error(conn.server)
            error = failed or ComfyError(
                f"prompt {task.prompt_id} failed on {conn.server}",
                server=conn.server,
                prompt_id=task.prompt_id,
            )
        error.result = result
        raise error

    # =================================================================================================================
    # events, socket state, recovery (loop thread)
    # =================================================================================================================
    def _on_event(self, conn: ServerConnection, event: wire.Event) -> None:
        if isinstance(event, wire.Status):
            self.pool.set_queue(conn.server, event.queue_remaining)
            conn.harvest_wake.set()
            return
        prompt_id = getattr(event, "prompt_id", None)
        if isinstance(event, wire.Preview) and prompt_id is None:
            prompt_id = conn.running
        flight = conn.flights.get(prompt_id) if prompt_id else None
        if flight is None:
            return  # another client's prompt, or one we no longer track
        flight.last_heard = time.monotonic()
        task = flight.task
        if isinstance(event, wire.ExecutionStart):
            conn.running = prompt_id
            task._update(status=RUNNING, started_at=time.time(), queue_position=0)
        elif isinstance(event, wire.Executing):
            if event.done:
                if conn.running == prompt_id:
                    conn.running = None
                if not flight.done.done():
                    flight.done.set_result(None)
            else:
                conn.running = prompt_id
                task._update(status=RUNNING, node=event.node, queue_position=0)
        elif isinstance(event, wire.Progress):
            task._update(progress=Progress(event.value, event.max, event.node))
        elif isinstance(event, wire.Preview):
            task._update(preview=(event.mime_type, event.data))

    def _on_socket(self, conn: ServerConnection, what: str, code: int | None, detail: str) -> None:
        server = conn.server
        if what == "connecting":
            self.lock.connecting(server, chosen=False)
        elif what == "open":
            self.lock.opened(server)
            self.pool.mark_ok(server)
        elif what == "closing":
            self.lock.closing(server)
        elif what == "error":
            self.lock.error(server)
            self.pool.mark_failed(server, f"WebSocket connect failed: {detail}")
        elif what == "closed":
            self.lock.closed(server, code)
            if code != 1000:
                log.warning("WebSocket to %s closed abnormally (%s)", server, code or "no close frame")
                self.pool.mark_failed(server, f"WebSocket closed abnormally ({code or 1006})")
            if any(f.posted and not f.task.done() for f in conn.flights.values()):
                self._spawn(self._recover(conn))

    async def _harvest(self, conn: ServerConnection) -> None:
        """Complete quiet prompts with as few requests as possible (each one costs the busy server).

        The server finishes a client's prompts in queue-number order, so each time a ``status`` broadcast says the
        queue moved, one ``GET /history?max_items=k`` of the newest entries tells which of the oldest unfinished
        ones are done; ``k`` follows how many finished last time. If none of ours is in that window, the oldest
        may have finished before it, so it is asked for by id and the next window covers every prompt still
        outstanding (a burst of POSTs can delay the first walk while hundreds finish). At most ~50 walks a second;
        a walk that stalls is caught by the silence check like any other prompt.
        """
        window = HARVEST_WINDOW_MIN
        try:
            while True:
                quiet = sorted(
                    (f for f in self._live_flights(conn) if f.quiet and f.number is not None),
                    key=lambda f: f.number or 0,
                )
                if not quiet and not any(f.quiet and not f.done.done() for f in conn.flights.values()):
                    return
                found = 0
                try:
                    if quiet:
                        found = await self._harvest_walk(conn, quiet, min(len(quiet), window))
                except ComfyError as exc:
                    log.info("could not read history on %s: %s", conn.server, exc.message)
                if found < 0:  # the oldest had dropped out of the window: at once, read enough to cover them all
                    window = min(HARVEST_WINDOW_MAX, len(quiet) + HARVEST_WINDOW_MIN)
                    continue
                if found:
                    window = min(HARVEST_WINDOW_MAX, max(HARVEST_WINDOW_MIN, 2 * found))
                    now = time.monotonic()
                    for flight in quiet:
                        flight.last_heard = now
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(conn.harvest_wake.wait(), 1.0)
                conn.harvest_wake.clear()
                await asyncio.sleep(0.02)
        finally:
            conn.harvesting = False

    async def _harvest_walk(self, conn: ServerConnection, oldest_first: list[Flight], window: int) -> int:
        """Settle the finished prompts at the head of ``oldest_first``; returns how many, or -1 when only the
        by-id question found the oldest one (the window was too small)."""
        recent = await self._api.recent_history(conn, window)
        found = 0
        for flight in oldest_first:
            entry = wire.parse_history(recent, flight.task.prompt_id, server=conn.server)
            if entry is None:
                break
            if not flight.done.done():
                flight.done.set_result(entry)
            found += 1
        if found:
            return found
        oldest = oldest_first[0]
        entry = await self._api.history(conn, oldest.task.prompt_id)
        if entry is None:
            return 0
        if not oldest.done.done():
            oldest.done.set_result(entry)
        return -1

    async def _recover(self, conn: ServerConnection) -> None:
        """Reconnect and reconcile every in-flight prompt: missed events are never replayed."""
        if conn.recovering:
            return
        conn.recovering = True
        try:
            deadline = time.monotonic() + self.options.reconnect_window
            delay = 0.2
            while self._live_flights(conn):
                try:
                    await conn.ensure_open()
                    break
                except ServerUnavailable as exc:
                    if time.monotonic() >= deadline:
                        self._lose_all(conn, f"{conn.server} is unreachable ({exc.message})")
                        return
                    await asyncio.sleep(delay)
                    delay = min(2 * delay, 1.0)
            await self._reconcile(conn, self._live_flights(conn))
        finally:
            conn.recovering = False

    def _live_flights(self, conn: ServerConnection) -> list[Flight]:
        return [f for f in conn.flights.values() if f.posted and not f.done.done()]

    def _lose_all(self, conn: ServerConnection, why: str) -> None:
        for flight in self._live_flights(conn):
            pid = flight.task.prompt_id
            flight.done.set_exception(PromptLost(f"prompt {pid} is lost: {why}", server=conn.server, prompt_id=pid))

    async def _reconcile(self, conn: ServerConnection, flights: list[Flight]) -> None:
        """Ask the prompt's server: finished (history), still queued/running (keep waiting), or gone (lost)."""
        if not flights:
            return
        try:
            queue = await self._api.get_json(conn, "/queue", timeout=5)
            for flight in flights:
                pid = flight.task.prompt_id
                flight.last_heard = time.monotonic()
                if flight.done.done():
                    continue
                position = wire.queue_position(queue, pid)
                if position is not None:
                    if flight.task.status == QUEUED:
                        flight.task._update(queue_position=position)  # 0: next in line
                    continue
                entry = await self._api.history(conn, pid, timeout=5)
                if flight.done.done():
                    continue
                if entry is not None:
                    flight.done.set_result(entry)
                else:
                    flight.done.set_exception(
                        PromptLost(
                            f"prompt {pid} is lost: {conn.server} has neither a history entry nor a queue item for "
                            "it (the server was restarted or dropped it)",
                            server=conn.server,
                            prompt_id=pid,
                        )
                    )
        except ComfyError as exc:
            log.info("could not reconcile prompts on %s: %s", conn.server, exc.message)
            if not conn.is_open and not conn.recovering:
                self._spawn(self._recover(conn))

    async def _monitor_loop(self) -> None:
        """Safety net for what events cannot tell: prompts silent too long, and queue positions of waiting ones."""
        last_queue_poll: dict[str, float] = {}
        while True:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            for conn in list(self._connections.values()):
                if conn.recovering:
                    continue
                live = self._live_flights(conn)
                silent = [f for f in live if now - f.last_heard > self.options.silence_check]
                waiting = [f for f in live if f.task.status == QUEUED]
                poll_queue = (
                    waiting
                    and len(waiting) <= self.options.queue_poll_max
                    and now - last_queue_poll.get(conn.server, 0.0) >= self.options.queue_poll
                )
                if silent or poll_queue:
                    last_queue_poll[conn.server] = now
                    self._spawn(self._reconcile(conn, silent or waiting))

    # =================================================================================================================
    # cancel, reset, status (loop thread)
    # =================================================================================================================
    def _find(self, prompt_id: str) -> tuple[ServerConnection, Flight] | None:
        for conn in self._connections.values():
            flight = conn.flights.get(prompt_id)
            if flight is not None:
                return conn, flight
        return None

    def _cancel_from_thread(self, task: Task) -> None:
        if self._thread.in_loop_thread():
            self._spawn(self._cancel(task, "cancelled"))
        elif self._thread.alive:
            self._thread.run(self._cancel(task, "cancelled"), timeout=self.options.reset_timeout + 3)

    async def _cancel(self, task: Task, why: str) -> None:
        found = self._find(task.prompt_id)
        if found is None:
            return
        conn, flight = found
        posted = flight.posted
        task._finish(
            error=Cancelled(
                f"prompt {task.prompt_id} on {conn.server} was {why}",
                server=conn.server,
                prompt_id=task.prompt_id,
            ),
            status="cancelled",
        )
        if flight.posting:
            return  # a POST cannot be unsent: the driver drops the prompt once the server has answered
        if flight.driver is not None:
            flight.driver.cancel()
        if posted:
            await asyncio.wait_for(self._api.drop(conn, task.prompt_id), self.options.reset_timeout)

    async def _reset(self) -> dict[str, Any]:
        self.lock.reset()
        cancels = [
            self._cancel(flight.task, "cancelled by reset")
            for conn in self._connections.values()
            for flight in list(conn.flights.values())
        ]
        closes = [conn.close(1000) for conn in self._connections.values()]
        work = asyncio.gather(*cancels, *closes, return_exceptions=True)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(work, self.options.reset_timeout)
        self.lock.reset()  # a close that raced the reset must not leave a lock behind
        return self.status_now()

    async def _pin(self, spec: ServerSpec) -> str:
        record = self.pool.get(spec.url)
        conn = self._connection(record.spec)
        self.lock.pin(record.url, is_open=conn.is_open)
        return record.url

    async def _status(self) -> dict[str, Any]:
        return self.status_now()

    def status_now(self) -> dict[str, Any]:
        """The status snapshot; call only on the loop thread (``get_status`` does the hop)."""
        status = self.lock.snapshot()
        status["pending_tasks_count"] = sum(len(c.flights) for c in self._connections.values())
        servers = self.pool.snapshot()
        for entry in servers:
            conn = self._connections.get(entry["url"])
            entry["connection_state"] = conn.state.value if conn else "CLOSED"
            entry["locked"] = entry["url"] == status["locked_server"]
        status["servers"] = servers
        return status

    async def _shutdown(self) -> None:
        for conn in self._connections.values():
            for flight in list(conn.flights.values()):
                flight.task._finish(
                    error=Cancelled(
                        "the comfy-notebook engine was shut down",
                        server=conn.server,
                        prompt_id=flight.task.prompt_id,
                    ),
                    status="cancelled",
                )
        self._monitor.cancel()
        await asyncio.gather(*(c.close(1000) for c in self._connections.values()), return_exceptions=True)
        await self._api.aclose()
