"""Taking a queued prompt back for an idle server (pool mode's tail).

When nothing waits client-side any more, the last prompts sit in servers' queues behind running ones, and a
server that finishes early goes idle: with a slow server in the pool, the last prompt could wait there for a
whole slow run. The scheduler (``Scheduler.steals``, pure) decides which prompt is worth moving; this module does
it safely: ``POST /queue {"delete"}`` (which ComfyUI applies to pending prompts only), then ``/queue`` and
``/history`` on that server. Only a prompt found in neither (it was deleted before it started) is moved; one that
started meanwhile stays and finishes where it is. Nothing can run twice and nothing is lost.
"""

from __future__ import annotations

import logging
import time

from comfy_notebook.core import protocol as wire
from comfy_notebook.core.errors import ComfyError, Moved
from comfy_notebook.core.scheduler import Queued
from comfy_notebook.engine.connection import Flight, ServerConnection
from comfy_notebook.engine.runtime import Runtime
from comfy_notebook.engine.task import RUNNING

log = logging.getLogger(__name__)

#: Shortest time between two looks for prompts to take back (the monitor pumps every ``monitor_interval``).
CONSIDER_GAP = 0.02


class Stealer:
    """Finds queued prompts to move when a server is idle, and moves them."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.under_way: dict[str, str] = {}  # prompt id -> the idle server it is being taken for
        self._last = 0.0

    def consider(self) -> None:
        """Called whenever room may have appeared and nothing waits: start the moves the scheduler picks."""
        rt = self.rt
        if rt.waiting:
            return
        # At most every CONSIDER_GAP: pumps come with every event, and a scan is O(servers + prompts) (at 64
        # servers, scanning on each one cost more CPU per prompt than everything else the engine does).
        now = time.monotonic()
        if now - self._last < CONSIDER_GAP:
            return
        self._last = now
        if not any(rt.scheduler.idle(r) for r in rt.pool.records.values()):
            return
        flights = {}
        queued = []
        for conn in rt.connections.values():
            for flight, ahead in self._queued_on(conn):
                flights[flight.task.key] = (conn, flight)
                queued.append(Queued(flight.task.key, conn.server, ahead))
        for pick, thief in rt.scheduler.steals(queued, busy=self.under_way.values()):
            conn, flight = flights[pick.key]
            flight.stealing = True
            self.under_way[flight.prompt_id] = thief
            rt.spawn(self.take(conn, flight, thief), f"taking prompt {flight.prompt_id} back from {conn.server}")

    def _queued_on(self, conn: ServerConnection) -> list[tuple[Flight, int]]:
        """Our movable prompts on ``conn`` that have not started, each with how many prompts run before it."""
        record = self.rt.pool.records.get(conn.server)
        if record is None:
            return []
        live = sorted(self.rt.live_flights(conn), key=lambda f: f.number if f.number is not None else -1)
        others = max(0, record.queue_remaining - record.in_flight)  # other clients' prompts there
        out = []
        for ahead, flight in enumerate(live):
            started = flight.started_at or flight.task.status == RUNNING
            if flight.movable and flight.counted and not flight.stealing and not started and flight.number is not None:
                out.append((flight, ahead + others))
        return out

    async def take(self, conn: ServerConnection, flight: Flight, thief: str) -> None:
        api, prompt_id = self.rt.api, flight.prompt_id
        timeout = self.rt.options.http.probe_timeout
        flight.movable = False  # one try per prompt: a server that refused or ignored the delete keeps it
        try:
            await api.unqueue(conn, prompt_id)
            if wire.queue_contains(await api.get_json(conn, "/queue", timeout=timeout), prompt_id):
                return  # it started before the delete (or the server ignored it): it finishes there
            if await api.history(conn, prompt_id, timeout=timeout) is not None:
                return  # it ran and finished meanwhile: its result is collected as usual
            if flight.done.done() or flight.task.done():
                return
            log.info("prompt %s had not started on %s: moving it to the idle %s", prompt_id, conn.server, thief)
            message = f"{conn.server} had not started prompt {prompt_id}; moved to the idle {thief}"
            flight.done.set_exception(Moved(message, server=conn.server, prompt_id=prompt_id))
        except ComfyError as exc:  # the prompt stays where it is; the watchdog looks after that server
            log.info("could not take prompt %s back from %s: %s", prompt_id, conn.server, exc.message)
        finally:
            flight.stealing = False
            self.under_way.pop(prompt_id, None)
