"""The bulk path's completion: quiet prompts get no events, so their results are read from ``/history`` with as
few requests as possible (each one costs the busy server)."""

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
        try:
            while True:
                quiet = sorted(
                    (f for f in self.rt.live_flights(conn) if f.quiet and f.number is not None),
                    key=lambda f: f.number or 0,
                )
                if not quiet and not any(f.quiet and not f.done.done() for f in conn.flights.values()):
                    return
                found = 0
                try:
                    if quiet:
                        found = await self.walk(conn, quiet, min(len(quiet), window))
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
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(conn.harvest_wake.wait(), options.harvest_idle)
                conn.harvest_wake.clear()
                await asyncio.sleep(options.harvest_gap)
        finally:
            conn.harvesting = False

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
