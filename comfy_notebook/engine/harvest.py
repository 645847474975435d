"""The bulk path's completion: quiet prompts get no events, so their results are read from ``/history`` with as
few requests as possible (each one costs the busy server, and the client about a millisecond of CPU).

Two things keep it cheap at scale. The server's ``status`` broadcasts tell when its queue shrank, so the place of a
finished quiet prompt is given back at once (``presume_finished``: pool mode binds the next prompt without waiting
for the history), and the history is then read in batches: one ``GET /history?max_items=k`` per ``harvest_gap``
or per ``HARVEST_BATCH`` finished prompts, at once when the server's queue ran dry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from comfy_notebook.core import protocol as wire
from comfy_notebook.core.errors import ComfyError
from comfy_notebook.engine.connection import Flight, ServerConnection
from comfy_notebook.engine.runtime import Runtime

log = logging.getLogger(__name__)

#: Newest history entries read per walk of quiet prompts (ComfyUI keeps at most 10,000).
HARVEST_WINDOW_MIN, HARVEST_WINDOW_MAX = 4, 10_000
#: Finished quiet prompts worth a history read before ``harvest_gap`` is over.
HARVEST_BATCH = 16


def presume_finished(rt: Runtime, conn: ServerConnection, before: int, after: int) -> None:
    """The server's queue went from ``before`` to ``after`` prompts: when all of them were ours, that many of our
    oldest quiet prompts there left it (a POST only makes it grow), so their places are free now; their results
    are read with the next batch. With other clients' prompts in the queue, nothing is presumed."""
    left = before - after
    if left <= 0:
        return
    counted = [f for f in rt.live_flights(conn) if f.counted]
    if before > len(counted):
        return  # someone else's prompts were queued there too: the ones that left may be theirs
    quiet = sorted((f for f in counted if f.quiet and f.number is not None), key=lambda f: f.number or 0)
    for flight in quiet[:left]:
        flight.finished_hint = True
        rt.release(flight)


class Harvester:
    """One harvest loop per server while it holds quiet prompts of ours."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    def start(self, conn: ServerConnection) -> None:
        """Harvest ``conn`` while it holds quiet prompts. A new POST does not wake a running harvest: nothing
        finished because of it (in pool mode a walk per POST doubled the history reads)."""
        if not conn.harvesting:
            conn.harvesting = True
            self.rt.spawn(self.harvest(conn), f"the history harvest on {conn.server}")

    async def harvest(self, conn: ServerConnection) -> None:
        """The server finishes a client's prompts in queue-number order, so each time a ``status`` broadcast says
        the queue moved, one ``GET /history?max_items=k`` of the newest entries tells which of the oldest
        unfinished ones are done; ``k`` follows how many finished last time. If none of ours is in that window,
        the oldest may have finished before it, so it is asked for by id and the next window covers every prompt
        still outstanding (a burst of POSTs can delay the first walk while hundreds finish). A walk that stalls
        is caught by the silence check like any other prompt.
        """
        options = self.rt.options
        window = HARVEST_WINDOW_MIN
        wait = True  # nothing has finished when the harvest starts (its first POST just went out)
        try:
            while True:
                if wait:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(conn.harvest_wake.wait(), options.harvest_idle)
                    conn.harvest_wake.clear()
                    await self.gather(conn, options.harvest_gap)
                wait = True
                quiet = sorted(
                    (f for f in self.rt.live_flights(conn) if f.quiet and f.number is not None),
                    key=lambda f: f.number or 0,
                )
                if not quiet and not any(f.quiet and not f.done.done() for f in conn.flights.values()):
                    return
                found = 0
                try:
                    if quiet:
                        hinted = sum(1 for f in quiet if f.finished_hint)  # known to be done: read them all
                        found = await self.walk(conn, quiet, min(len(quiet), max(window, hinted + HARVEST_WINDOW_MIN)))
                except ComfyError as exc:
                    log.info("could not read history on %s: %s", conn.server, exc.message)
                if found < 0:  # the oldest had dropped out of the window: at once, read enough to cover them all
                    window = min(HARVEST_WINDOW_MAX, len(quiet) + HARVEST_WINDOW_MIN)
                    wait = False
                    continue
                if found:
                    window = min(HARVEST_WINDOW_MAX, max(HARVEST_WINDOW_MIN, 2 * found))
                    now = time.monotonic()
                    for flight in quiet:
                        flight.last_heard = now
        finally:
            conn.harvesting = False

    async def gather(self, conn: ServerConnection, gap: float) -> None:
        """Let finished prompts accumulate for one history read: until ``gap`` has passed, ``HARVEST_BATCH`` of
        them are known to be done, or the server's queue ran dry (nothing more to wait for)."""
        deadline = time.monotonic() + gap
        while True:
            record = self.rt.pool.records.get(conn.server)
            if record is None or record.queue_remaining == 0:
                return
            done = sum(1 for f in self.rt.live_flights(conn) if f.finished_hint)
            left = deadline - time.monotonic()
            if done >= HARVEST_BATCH or left <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(conn.harvest_wake.wait(), left)
            conn.harvest_wake.clear()

    async def walk(self, conn: ServerConnection, oldest_first: list[Flight], window: int) -> int:
        """Settle the finished prompts at the head of ``oldest_first``; returns how many, or -1 when only the
        by-id question found the oldest one (the window was too small)."""
        recent = await self.rt.api.recent_history(conn, window)
        found = 0
        for flight in oldest_first:
            entry = wire.parse_history(recent, flight.prompt_id, server=conn.server)
            if entry is None:
                break
            if not flight.done.done():
                flight.done.set_result(entry)
            found += 1
        if found:
            return found
        oldest = oldest_first[0]
        entry = await self.rt.api.history(conn, oldest.prompt_id)
        if entry is None:
            return 0
        if not oldest.done.done():
            oldest.done.set_result(entry)
        return -1
