"""The life of one prompt: choose its server (the lock, the pool's late binding, or the user's ``server=``), open
the socket BEFORE the POST, post it, wait for it, collect it; and when its server is lost, send it again elsewhere.

Each try is an ``Attempt`` on the task and a ``Flight`` on one connection; a retry gets a fresh prompt id, so a
lost server that finishes the old one later is told apart (a counted duplicate, see ``events``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from dataclasses import dataclass, field

from comfy_notebook.core import failover
from comfy_notebook.core import protocol as wire
from comfy_notebook.core.affinity import no_affinity_message
from comfy_notebook.core.errors import Cancelled, ComfyError, Moved, ServerUnavailable, ValidationError, describe
from comfy_notebook.core.failover import Attempt
from comfy_notebook.core.scheduler import Job
from comfy_notebook.core.servers import ServerSpec
from comfy_notebook.core.workflow import model_files
from comfy_notebook.engine.collect import collect
from comfy_notebook.engine.connection import Flight, ServerConnection
from comfy_notebook.engine.harvest import Harvester
from comfy_notebook.engine.options import POOL
from comfy_notebook.engine.runtime import Runtime, Waiting
from comfy_notebook.engine.steal import Stealer
from comfy_notebook.engine.task import PENDING, QUEUED, RUNNING, WAITING, Result, Task

log = logging.getLogger(__name__)

#: Prompts admitted between two yields to the loop: 10,000 at once kept every server idle for half a second.
ADMIT_CHUNK = 128


@dataclass
class _Trip:
    """What one prompt's driver remembers across attempts."""

    explicit: ServerSpec | None  # the user's ``server=``: never moved elsewhere
    quiet: bool
    avoid: set[str] = field(default_factory=set)  # servers that lost it
    unreachable: set[str] = field(default_factory=set)  # servers whose socket did not open (nothing sent)
    seq: int = -1  # its first place in the client-side queue, kept by retries
    moved_from: tuple[str, str] | None = None  # (server, why) of the last loss


class Dispatcher:
    """Routes prompts and drives each one to its result."""

    def __init__(self, rt: Runtime, harvester: Harvester) -> None:
        self.rt = rt
        self.harvester = harvester
        self.drivers: dict[str, asyncio.Task[None]] = {}  # task.key -> its driver
        self.stealer = Stealer(rt)
        rt.pump = self.pump

    # -- admission ----------------------------------------------------------------------------------------------------
    async def admit_all(self, tasks: list[Task], explicit: ServerSpec | None, *, quiet: bool) -> None:
        """Lock mode (and ``server=``): each task's server is chosen before this returns. Pool mode: tasks join
        the client-side queue and are bound as servers have room."""
        rt = self.rt
        if explicit is not None and explicit.url not in rt.pool.records:
            rt.transient.add(explicit.url)
        for i, task in enumerate(tasks):
            if i and i % ADMIT_CHUNK == 0:
                await asyncio.sleep(0)  # let the first drivers post while the rest are admitted
            flight = None
            if explicit is not None or not self.late_binding():
                flight = self.new_flight(task, self.route_for(explicit, set()), quiet)
            driver = rt.spawn(self.drive(task, explicit, quiet, flight), f"the driver of prompt {task.key}")
            self.drivers[task.key] = driver
            driver.add_done_callback(functools.partial(self._forget_driver, task.key))

    def _forget_driver(self, key: str, _driver: asyncio.Task[None]) -> None:
        self.drivers.pop(key, None)

    def late_binding(self) -> bool:
        """Pool mode, unless a server was pinned by hand (``cn.lock(URL)``): then everything goes there."""
        return self.rt.mode == POOL and self.rt.lock.locked_server is None

    def route_for(self, explicit: ServerSpec | None, avoid: set[str]) -> ServerSpec:
        if explicit is None:
            return self.route(avoid)
        record = self.rt.pool.records.get(explicit.url)
        return record.spec if record is not None and not explicit.headers else explicit

    def route(self, avoid: set[str]) -> ServerSpec:
        """The server for new work in lock mode: the locked one, else the pool's least-loaded choice (the lock
        candidate). A retry avoids the servers that lost the prompt while there is another one."""
        lock, pool = self.rt.lock, self.rt.pool
        locked = lock.route()
        if locked is not None and locked not in avoid:
            if locked in pool.records:
                return pool.records[locked].spec
            lock.reset()
        try:
            spec = pool.choose(avoid).spec
        except ServerUnavailable:
            if not avoid:
                raise
            spec = pool.choose().spec
        lock.connecting(spec.url, chosen=True)
        return spec

    def new_flight(self, task: Task, spec: ServerSpec, quiet: bool) -> Flight:
        flight = Flight(task, asyncio.get_running_loop().create_future(), quiet=quiet)
        task.attempts.append(Attempt(spec.url, flight.prompt_id, failover.CONNECTING))
        self.rt.attach(flight, spec)
        if task.status == WAITING:
            task._update(status=PENDING, queue_position=None)
        return flight

    # -- pool mode: the client-side queue -----------------------------------------------------------------------------
    async def wait_for_server(self, task: Task, quiet: bool, avoid: set[str], seq: int) -> tuple[Flight, int]:
        """Wait in the client-side queue (a retry keeps its first place, ``seq``) until a server has room."""
        rt = self.rt
        job = Job(task.key, models=model_files(task.workflow), avoid=frozenset(avoid), seq=seq)
        waiting = Waiting(task, job, asyncio.get_running_loop().create_future(), quiet)
        rt.waiting[task.key] = waiting
        alone = len(rt.scheduler) == 0
        rt.scheduler.add(job)
        task._update(status=WAITING, server=None, queue_position=len(rt.scheduler) - 1)
        if alone:  # with others waiting, no server has room (every pump binds until one side runs out)
            self.pump()
        try:
            return await waiting.bound, job.seq
        except asyncio.CancelledError:
            if waiting.bound.done() and not waiting.bound.cancelled():  # bound just before the cancel
                flight = waiting.bound.result()
                rt.detach(flight)
            raise
        finally:
            rt.waiting.pop(task.key, None)
            rt.scheduler.remove(task.key)

    def pump(self, server: str | None = None) -> None:
        """Bind waiting prompts to servers with room (called whenever room may have appeared: on ``server`` only,
        when given); with nothing waiting, let an idle server take back a prompt queued elsewhere."""
        rt = self.rt
        if not rt.waiting:
            if self.late_binding():
                self.stealer.consider()
            return
        for job, url in rt.scheduler.assign(server):
            waiting = rt.waiting.pop(job.key, None)
            if waiting is None or waiting.bound.done():
                continue
            flight = self.new_flight(waiting.task, rt.pool.records[url].spec, waiting.quiet)
            flight.movable = True
            waiting.bound.set_result(flight)

    # -- one prompt, every attempt ------------------------------------------------------------------------------------
    async def drive(self, task: Task, explicit: ServerSpec | None, quiet: bool, flight: Flight | None) -> None:
        trip = _Trip(explicit, quiet)
        try:
            while True:
                if flight is None:
                    flight = await self.next_flight(task, trip)
                attempt = task.attempts[-1]
                if trip.moved_from is not None and trip.moved_from[0] != attempt.server:
                    old, why = trip.moved_from
                    task._update(moved=f"moved from {old} to {attempt.server}: {old} {why}")
                current = flight
                try:
                    result = await self.attempt(current, attempt, explicit is not None)
                except ComfyError as exc:
                    if not self.again(task, current, attempt, exc, trip):
                        if len(task.attempts) > 1 and failover.retryable(exc) and not task.done():
                            raise failover.exhausted(exc, task.attempts) from None
                        raise
                    flight = None
                    continue
                finally:
                    self.rt.detach(current)
                attempt.outcome = failover.SUCCESS
                self._count(attempt.server, "done")
                task._finish(result)
                return
        except ComfyError as exc:
            task._finish(error=exc)
        except asyncio.CancelledError:
            message = f"prompt {task.prompt_id} was cancelled"
            task._finish(error=Cancelled(message, server=task.server, prompt_id=task.prompt_id))
        except Exception as exc:
            log.exception("internal error while running prompt %s on %s", task.prompt_id, task.server)
            message = f"internal error: {describe(exc)}"
            task._finish(error=ComfyError(message, server=task.server, prompt_id=task.prompt_id))
        finally:
            if flight is not None and not flight.done.done():
                flight.done.cancel()

    async def next_flight(self, task: Task, trip: _Trip) -> Flight:
        """The next attempt's server: late binding in pool mode, else the lock's (or the user's) choice."""
        if trip.explicit is None and self.late_binding():
            flight, trip.seq = await self.wait_for_server(task, trip.quiet, trip.avoid, trip.seq)
            return flight
        return self.new_flight(task, self.route_for(trip.explicit, trip.avoid), trip.quiet)

    async def attempt(self, flight: Flight, attempt: Attempt, explicit: bool) -> Result:
        """One try: socket, POST, the finish, the result (or the prompt's error). Once the socket is open, the
        attempt can be stopped wherever it waits on the server (``Recovery.abort``): it then raises why."""
        conn = await self.open_for(flight, attempt, explicit)
        attempt.outcome = failover.RUNNING
        flight.driver = driver = asyncio.current_task()
        try:
            return await self._on_server(flight, conn)
        except asyncio.CancelledError:
            if flight.aborted is None or driver is None:
                raise
            driver.uncancel()
            raise flight.aborted from None
        finally:
            flight.driver = None

    async def _on_server(self, flight: Flight, conn: ServerConnection) -> Result:
        task = flight.task
        flight.posting = True
        try:
            await self.post(flight, conn)
        finally:
            flight.posting = False
        if task.done():  # cancelled while the POST was on its way: now the server has it, drop it
            await self.rt.api.drop(conn, flight.prompt_id)
            raise Cancelled(f"prompt {flight.prompt_id} was cancelled", server=conn.server, prompt_id=flight.prompt_id)
        entry = await flight.done
        self.rt.release(flight)  # the server is free for the next prompt while we read the result
        options = self.rt.options
        return await collect(
            self.rt.api, flight, conn, entry, retry_delays=options.collect_retry_delays, http=options.http
        )

    def again(self, task: Task, flight: Flight, attempt: Attempt, exc: ComfyError, trip: _Trip) -> bool:
        """Record how ``attempt`` ended and decide whether the prompt goes to a server again."""
        rt = self.rt
        unsent = attempt.outcome == failover.CONNECTING
        attempt.reason = failover.reason_of(exc) if failover.retryable(exc) else exc.message
        if isinstance(exc, Cancelled) or task.done():
            attempt.outcome = failover.CANCELLED
            return False
        if isinstance(exc, Moved):  # taken back before it started, for an idle server: costs no retry
            attempt.outcome = failover.MOVED
            attempt.reason = "had not started it"
            trip.avoid.add(attempt.server)
            trip.moved_from = (attempt.server, "had not started it and another server was idle")
            task._update(prompt_id=wire.new_id(), status=PENDING, progress=None, node=None, queue_position=None)
            return True
        if not failover.retryable(exc):
            attempt.outcome = failover.FAILED
            self._count(attempt.server, "failed")
            return False
        if unsent:
            # Nothing was sent. Lock mode already tried every server (``open_for``); pool mode puts the prompt
            # back at its place until every server of the pool has refused it.
            attempt.outcome = failover.UNREACHABLE
            attempt.reason = "could not be reached"
            trip.unreachable.add(attempt.server)
            pooled = trip.explicit is None and self.late_binding()
            return pooled and not set(rt.pool.records) <= trip.unreachable
        attempt.outcome = failover.LOST
        if trip.explicit is not None or not failover.should_retry(exc, task.attempts, rt.options.retries):
            self._count(attempt.server, "failed")
            return False
        self._count(attempt.server, "retried")
        trip.avoid.add(attempt.server)
        trip.moved_from = (attempt.server, attempt.reason)
        if flight.posted:
            rt.ghost(attempt.server, flight.prompt_id, task)
        log.warning("prompt %s on %s: %s; sending it again", flight.prompt_id, attempt.server, attempt.reason)
        task._update(prompt_id=wire.new_id(), status=PENDING, progress=None, node=None, queue_position=None)
        return True

    def _count(self, server: str, counter: str) -> None:
        record = self.rt.pool.records.get(server)
        if record is not None:
            setattr(record, counter, getattr(record, counter) + 1)

    async def open_for(self, flight: Flight, attempt: Attempt, explicit: bool) -> ServerConnection:
        """Open the socket BEFORE the POST. In lock mode, an unreachable server means nothing was sent, so the
        prompt moves on through the pool (unless the user named the server); pool mode requeues it instead."""
        rt = self.rt
        tried: set[str] = set()
        while True:
            conn = rt.connections[attempt.server]
            try:
                await conn.ensure_open()
            except ServerUnavailable:
                tried.add(conn.server)
                if explicit or self.late_binding() or tried >= set(rt.pool.records):
                    raise
                spec = self.route(tried)
                rt.detach(flight)
                rt.attach(flight, spec)
                attempt.server = spec.url
                log.info("moving prompt %s from %s to %s before sending it", flight.prompt_id, conn.server, spec.url)
                continue
            if not explicit and rt.mode != POOL:
                rt.lock.opened(conn.server)  # takes the lock if this server was the pool's choice
            return conn

    async def post(self, flight: Flight, conn: ServerConnection) -> None:
        task, prompt_id = flight.task, flight.prompt_id
        client_id = conn.quiet_id if flight.quiet else conn.client_id
        graph = await self.rt.uploads.workflow_for(conn, task.workflow)  # local inputs go to THIS server
        if task.done():
            return  # cancelled while its inputs were uploading: nothing was queued (``attempt`` raises Cancelled)
        body = wire.prompt_body(graph, client_id=client_id, prompt_id=prompt_id)
        status, content, seen = await self.rt.api.post_prompt(conn, body)
        if status == 0 or status >= 500:
            # We minted the id, so we can ask whether the prompt landed before calling it failed.
            if await self.rt.api.landed(conn, prompt_id):
                log.info("POST for %s on %s failed (%s) but the prompt was queued", prompt_id, conn.server, status)
                self.mark_posted(flight, conn)
                return
            if status == 0:
                self.rt.pool.mark_failed(conn.server, "POST /prompt failed")
                raise ServerUnavailable(
                    f"{conn.server} did not accept prompt {prompt_id}: {content.decode()}",
                    server=conn.server,
                    prompt_id=prompt_id,
                )
        try:
            queued = wire.parse_prompt_response(
                status, content, server=conn.server, prompt_id=prompt_id, workflow=task.workflow
            )
        except ValidationError as exc:
            if exc.partially_queued:  # the valid part was queued: the user must fix the workflow, so drop it
                self.rt.spawn(self.rt.api.drop(conn, prompt_id), f"dropping {prompt_id}")
            raise
        self.mark_posted(flight, conn, queued.number)
        if conn.affinity.posted(queued.number, seen):
            log.warning("%s", no_affinity_message(conn.server, conn.affinity.broken or ""))

    def mark_posted(self, flight: Flight, conn: ServerConnection, number: int | None = None) -> None:
        flight.posted = True
        flight.generation = conn.generation
        flight.backends = conn.affinity.backend_changes
        flight.number = number
        flight.last_heard = flight.posted_at = time.monotonic()
        if flight.task.status != RUNNING and not flight.task.done():  # a late POST answer never revives
            flight.task._update(status=QUEUED)  # a cancelled task
        if flight.quiet:
            self.harvester.start(conn)
