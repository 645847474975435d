"""What events cannot tell: sockets that dropped, prompts that went silent, servers that restarted or hung, and
watchdog limits. Missed events are never replayed, so the prompt's own server is asked what happened.

A prompt is declared lost (and the dispatcher sends it elsewhere) when its server has no record of it, when the
server stays unreachable past the reconnect window, or at once when another server can take the work and this
one refused the connection (nothing listens: the process is gone) or stopped answering our pings (hung).
"""

from __future__ import annotations

import asyncio
import logging
import time

from comfy_notebook.core import protocol as wire
from comfy_notebook.core.affinity import no_affinity_message
from comfy_notebook.core.errors import ComfyError, NoAffinity, PromptLost, ServerUnavailable
from comfy_notebook.core.failover import overdue
from comfy_notebook.engine.connection import Flight, ServerConnection
from comfy_notebook.engine.runtime import Runtime
from comfy_notebook.engine.task import QUEUED, RUNNING, WAITING

log = logging.getLogger(__name__)

#: The silence check's limit on a URL known to be a balancer without affinity.
BROKEN_SILENCE = 2.0


class Recovery:
    """Reconnects, reconciles, watches."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._last_queue_poll: dict[str, float] = {}
        self._last_positions = 0.0
        self._last_ghost_check = 0.0

    # -- a socket closed ----------------------------------------------------------------------------------------------
    def socket_lost(self, conn: ServerConnection, hung: bool) -> None:
        """The socket of a server holding prompts of ours closed abnormally (``hung``: our pings went
        unanswered)."""
        if hung and self.rt.others_available(conn.server):
            self.lose_all(conn, f"{conn.server} stopped answering (no reply to pings)", "stopped answering")
        elif self.rt.live_flights(conn):
            self.rt.spawn(self.recover(conn), f"recovering {conn.server}")

    async def recover(self, conn: ServerConnection) -> None:
        """Reconnect and reconcile every in-flight prompt."""
        if conn.recovering:
            return
        conn.recovering = True
        options = self.rt.options
        try:
            deadline = time.monotonic() + options.reconnect_window
            delay = options.reconnect_delay
            while self.rt.live_flights(conn):
                try:
                    await conn.ensure_open()
                    break
                except ServerUnavailable as exc:
                    gone = exc.refused and self.rt.others_available(conn.server)
                    if gone or time.monotonic() >= deadline:
                        self.lose_all(conn, f"{conn.server} is unreachable ({exc.message})", "became unreachable")
                        return
                    await asyncio.sleep(delay)
                    delay = min(2 * delay, options.reconnect_delay_max)
            await self.reconcile(conn, self.rt.live_flights(conn))
        finally:
            conn.recovering = False

    def lose_all(self, conn: ServerConnection, why: str, short: str) -> None:
        """Every prompt of ours on a server we give up on is lost, including one whose POST or result read is
        still on its way there (a hung server answers neither before the HTTP timeout)."""
        for flight in list(conn.flights.values()):
            message = f"prompt {flight.prompt_id} is lost: {why}"
            if flight.posted and not flight.done.done():
                self.lose(flight, conn.server, message, short)
            elif flight.posting or _finished(flight):
                lost = PromptLost(message, server=conn.server, prompt_id=flight.prompt_id, why=short)
                self.abort(flight, conn.server, lost)

    def abort(self, flight: Flight, server: str, exc: ComfyError) -> None:
        """Stop an attempt that waits on ``server`` for its POST's answer or its result. A POST on its way may have
        queued the prompt there: if the server finishes it after all, that is a counted duplicate."""
        driver = flight.driver
        if driver is None or driver.done() or driver is asyncio.current_task() or flight.aborted is not None:
            return
        if flight.posting:
            self.rt.ghost(server, flight.prompt_id, flight.task)
        flight.aborted = exc
        driver.cancel()

    def lose(self, flight: Flight, server: str, message: str, short: str) -> None:
        if not flight.done.done():
            flight.done.set_exception(PromptLost(message, server=server, prompt_id=flight.prompt_id, why=short))

    async def reconcile(self, conn: ServerConnection, flights: list[Flight]) -> None:
        """Ask the prompt's server: finished (history), still queued/running (keep waiting), or gone (lost)."""
        if not flights:
            return
        api = self.rt.api
        try:
            queue = await api.get_json(conn, "/queue", timeout=self.rt.options.http.probe_timeout)
            for flight in flights:
                pid = flight.prompt_id
                flight.last_heard = time.monotonic()
                if flight.done.done() or flight.stealing:  # being taken back: its absence is ours
                    continue
                position = wire.queue_position(queue, pid)
                if position is not None:
                    if flight.task.status == QUEUED:
                        flight.task._update(queue_position=position)  # 0: next in line
                    continue
                entry = await api.history(conn, pid, timeout=self.rt.options.http.probe_timeout)
                if flight.done.done() or flight.stealing:
                    continue
                if entry is not None:
                    flight.done.set_result(entry)
                elif flight.backends != conn.affinity.backend_changes:
                    self.lose(
                        flight,
                        conn.server,
                        f"prompt {pid} is lost: the balancer at {conn.server} sent us to another backend (its "
                        "cookie changed), and the new one does not know it",
                        "was replaced by another backend behind its balancer",
                    )
                elif flight.generation == conn.generation:  # our socket never dropped: no restart
                    what = f"prompt {pid} it accepted was unknown to it a moment later"
                    if conn.affinity.vanished(what):
                        log.warning("%s", no_affinity_message(conn.server, conn.affinity.broken or ""))
                    message = no_affinity_message(conn.server, conn.affinity.suspicion(what))
                    flight.done.set_exception(NoAffinity(message, server=conn.server, prompt_id=pid))
                else:
                    message = (
                        f"prompt {pid} is lost: {conn.server} has neither a history entry nor a queue item for it "
                        "(the server was restarted or dropped it)"
                    )
                    self.lose(flight, conn.server, message, "restarted and forgot the prompt")
        except ComfyError as exc:
            log.info("could not reconcile prompts on %s: %s", conn.server, exc.message)
            if not conn.is_open and not conn.recovering:
                self.rt.spawn(self.recover(conn), f"recovering {conn.server}")

    # -- the monitor --------------------------------------------------------------------------------------------------
    async def monitor(self) -> None:
        """Safety net, every ``monitor_interval``: silent prompts, queue positions, watchdog limits, cooldowns that
        ended (waiting prompts may bind now) and prompts left on lost servers."""
        options = self.rt.options
        while True:
            await asyncio.sleep(options.monitor_interval)
            try:
                self.tick(time.monotonic())
            except Exception:  # the safety net must outlive a bug in one of its checks
                log.exception("the engine monitor failed a check")

    def tick(self, now: float) -> None:
        rt, options = self.rt, self.rt.options
        rt.warm_pool()
        rt.pump()
        self.refresh_positions()
        for conn in list(rt.connections.values()):
            if conn.recovering:
                continue
            live = rt.live_flights(conn)
            self.watchdog(conn, live, now)
            # Through a balancer without affinity our socket hears nothing of most prompts: ask sooner.
            silence = min(options.silence_check, BROKEN_SILENCE) if conn.affinity.broken else options.silence_check
            silent = [f for f in live if now - f.last_heard > silence]
            # Positions for prompts with events (a cell shows them); quiet ones are harvested, never polled.
            waiting = [f for f in live if f.task.status == QUEUED and not f.quiet]
            poll_queue = (
                waiting
                and len(waiting) <= options.queue_poll_max
                and now - self._last_queue_poll.get(conn.server, 0.0) >= options.queue_poll
            )
            if silent or poll_queue:
                self._last_queue_poll[conn.server] = now
                rt.spawn(self.reconcile(conn, silent or waiting), f"reconciling {conn.server}")
        if rt.ghosts and now - self._last_ghost_check >= options.ghost_check:
            self._last_ghost_check = now
            for server in list(rt.ghosts):
                rt.spawn(self.check_ghosts(server, now), f"checking prompts left on {server}")

    def refresh_positions(self) -> None:
        """Client-side queue positions of waiting prompts (once per tick, not per binding: O(n)). A long queue is
        refreshed less often (every 500 waiting prompts add a tick): 10,000 positions took 12 ms per refresh."""
        rt = self.rt
        if not rt.waiting:
            return
        now = time.monotonic()
        if now - self._last_positions < self.rt.options.monitor_interval * (len(rt.waiting) // 500):
            return
        self._last_positions = now
        for key, position in rt.scheduler.positions().items():
            waiting = rt.waiting.get(key)
            if waiting is not None and waiting.task.status == WAITING and waiting.task.queue_position != position:
                waiting.task._update(queue_position=position)

    def watchdog(self, conn: ServerConnection, live: list[Flight], now: float) -> None:
        """Per-phase limits: a queued prompt on a server that said nothing at all for ``limits.start`` is lost; a
        running one past ``limits.execution`` (off by default) is interrupted and fails."""
        limits = self.rt.options.limits
        for flight in live:
            status = flight.task.status
            if status == QUEUED and overdue("queued", max(flight.posted_at, conn.last_event), now, limits):
                self.lose(
                    flight,
                    conn.server,
                    f"prompt {flight.prompt_id} is lost: {conn.server} did not start it within {limits.start} s "
                    "and reported nothing meanwhile",
                    "did not start it",
                )
                self.rt.spawn(self.rt.api.drop(conn, flight.prompt_id), f"dropping {flight.prompt_id}")
            elif status == RUNNING and overdue("running", flight.started_at, now, limits):
                if not flight.done.done():
                    flight.done.set_exception(
                        ComfyError(
                            f"prompt {flight.prompt_id} ran longer than execution_timeout ({limits.execution} s) on "
                            f"{conn.server} and was interrupted",
                            server=conn.server,
                            prompt_id=flight.prompt_id,
                        )
                    )
                self.rt.spawn(self.rt.api.drop(conn, flight.prompt_id), f"interrupting {flight.prompt_id}")

    async def check_ghosts(self, server: str, now: float) -> None:
        """Ask a lost server that answers again about the prompts we moved away from it: finished ones are
        counted as duplicates; ones it no longer knows are forgotten; queued or running ones are watched on."""
        rt = self.rt
        ghosts = rt.ghosts.get(server, {})
        for pid in [p for p, g in ghosts.items() if now - g.since > rt.options.ghost_ttl]:
            del ghosts[pid]
        conn = rt.connections.get(server)
        record = rt.pool.records.get(server)
        if not ghosts or conn is None or (record is not None and rt.pool.cooling(record)):
            if not ghosts:
                rt.ghosts.pop(server, None)
            return
        try:
            await conn.ensure_open()  # events of a ghost that finishes later arrive on this socket
            queue = await rt.api.get_json(conn, "/queue", timeout=self.rt.options.http.probe_timeout)
            for pid in list(ghosts):
                if wire.queue_position(queue, pid) is not None:
                    continue
                if await rt.api.history(conn, pid, timeout=self.rt.options.http.probe_timeout) is not None:
                    rt.count_duplicate(server, pid)
                else:
                    ghosts.pop(pid, None)
        except ComfyError as exc:
            log.debug("prompts left on %s cannot be checked yet: %s", server, exc.message)
        if not ghosts:
            rt.ghosts.pop(server, None)


def _finished(flight: Flight) -> bool:
    """The server reported this attempt finished (its result may still be on its way to us)."""
    done = flight.done
    return done.done() and not done.cancelled() and done.exception() is None
