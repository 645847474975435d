"""What the user steers: the server list, the mode, pinning, cancel, reset, the status snapshot and shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from comfy_notebook.core.affinity import KEY, OFF, no_affinity_message
from comfy_notebook.core.errors import Cancelled
from comfy_notebook.core.servers import ServerSpec
from comfy_notebook.engine.connection import ServerConnection
from comfy_notebook.engine.dispatch import Dispatcher
from comfy_notebook.engine.options import LOCK, check_mode
from comfy_notebook.engine.runtime import Runtime
from comfy_notebook.engine.task import QUEUED, RUNNING, Task

log = logging.getLogger(__name__)


class Control:
    """Loop-thread halves of the engine's public calls."""

    def __init__(self, rt: Runtime, dispatcher: Dispatcher) -> None:
        self.rt = rt
        self.dispatcher = dispatcher

    async def set_servers(self, specs: list[ServerSpec]) -> list[str]:
        rt = self.rt
        rt.pool.set_servers(specs)
        for spec in specs:  # refresh credentials of live connections
            conn = rt.connections.get(spec.url)
            if conn is not None:
                conn.spec = spec
        locked = rt.lock.route()
        if locked is not None and locked not in rt.pool.records:
            rt.lock.reset()
        # Servers that left the pool: their prompts finish where they run (the socket closes after the last one);
        # idle sockets close now.
        for url in [u for u in rt.connections if u not in rt.pool.records and u not in rt.transient]:
            if rt.connections[url].flights:
                rt.transient.add(url)
            else:
                await rt.retire(url)
        rt.warm_pool()
        rt.pump()  # a new server takes waiting work at once
        return [s.url for s in specs]

    async def set_mode(self, mode: str) -> str:
        """Switch between ``lock`` and ``pool``. Prompts already on a server stay there; waiting prompts of pool
        mode are routed by the lock from now on."""
        rt = self.rt
        rt.mode = check_mode(mode)
        if mode == LOCK:
            for waiting in list(rt.waiting.values()):
                if not waiting.bound.done():
                    spec = self.dispatcher.route(set())
                    waiting.bound.set_result(self.dispatcher.new_flight(waiting.task, spec, waiting.quiet))
            rt.waiting.clear()
        rt.warm_pool()
        rt.pump()
        return rt.mode

    async def pin(self, spec: ServerSpec) -> str:
        record = self.rt.pool.get(spec.url)
        conn = self.rt.connection(record.spec)
        self.rt.lock.pin(record.url, is_open=conn.is_open)
        return record.url

    # -- cancel and reset ---------------------------------------------------------------------------------------------
    async def cancel(self, task: Task, why: str) -> asyncio.Task[Any] | None:
        """Settle ``task`` as cancelled at once; the server-side drop runs in the background (returned)."""
        rt = self.rt
        if task.done():
            return None
        found = rt.find(task)
        server = found[0].server if found else task.server
        task._finish(
            error=Cancelled(f"prompt {task.prompt_id} on {server} was {why}", server=server, prompt_id=task.prompt_id),
            status="cancelled",
        )
        waiting = rt.waiting.pop(task.key, None)
        if waiting is not None:
            rt.scheduler.remove(task.key)
            waiting.bound.cancel()
        if found is None:
            return None
        conn, flight = found
        if flight.posting:
            return None  # a POST cannot be unsent: the driver drops the prompt once the server has answered
        driver = self.dispatcher.drivers.get(task.key)
        if driver is not None:
            driver.cancel()
        if not flight.posted:
            return None
        return rt.spawn(self._drop(conn, flight.prompt_id), f"cancelling {task.key}")

    async def _drop(self, conn: ServerConnection, prompt_id: str) -> None:
        """Best effort within ``reset_timeout``: a server that does not answer in time is not an error here."""
        try:
            await asyncio.wait_for(self.rt.api.drop(conn, prompt_id), self.rt.options.reset_timeout)
        except TimeoutError:
            log.info("%s did not confirm the cancel of %s in time", conn.server, prompt_id)

    async def cancel_briefly(self, task: Task, why: str, wait: float) -> None:
        """Cancel, then give the server-side drop up to ``wait`` seconds (a quick server has it done when the
        call returns; a hung one never holds the caller longer)."""
        drop = await self.cancel(task, why)
        if drop is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(drop), wait)

    async def reset(self) -> dict[str, Any]:
        rt = self.rt
        rt.lock.reset()
        tasks = [w.task for w in rt.waiting.values()]
        tasks += [f.task for conn in rt.connections.values() for f in conn.flights.values()]
        drops = [d for d in [await self.cancel(t, "cancelled by reset") for t in tasks] if d is not None]
        closes = [conn.close(1000) for conn in rt.connections.values()]
        work = asyncio.gather(*drops, *closes, return_exceptions=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(work, rt.options.reset_timeout)
        rt.lock.reset()  # a close that raced the reset must not leave a lock behind
        for conn in rt.connections.values():  # the user fixed the balancer, or knows better: look afresh
            conn.affinity.forget()
        rt.uploads.forget()  # someone may have cleared a server's input folder: upload afresh
        return self.status()

    # -- status -------------------------------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """The status snapshot; call only on the loop thread."""
        rt = self.rt
        status = rt.lock.snapshot()
        status["mode"] = rt.mode
        status["waiting"] = len(rt.waiting)
        status["pending_tasks_count"] = len(rt.waiting) + sum(len(c.flights) for c in rt.connections.values())
        servers = rt.pool.snapshot()
        for entry in servers:
            conn = rt.connections.get(entry["url"])
            flights = list(conn.flights.values()) if conn else []
            entry["connection_state"] = conn.state.value if conn else "CLOSED"
            entry["locked"] = entry["url"] == status["locked_server"]
            entry["running"] = sum(1 for f in flights if f.task.status == RUNNING)
            entry["queued"] = sum(1 for f in flights if f.task.status == QUEUED)
            # Behind a balancer: how our calls stay on one backend, how often it moved us, and why it cannot.
            affinity = conn.affinity if conn else None
            entry["affinity"] = affinity.mode if affinity else (KEY if rt.options.affinity_key else OFF)
            entry["backend_changes"] = affinity.backend_changes if affinity else 0
            broken = affinity.broken if affinity else None
            entry["affinity_error"] = no_affinity_message(entry["url"], broken) if broken else None
            entry["uploads"] = rt.uploads.sent.get(entry["url"], 0)
        status["servers"] = servers
        status["retries"] = sum(s["retried"] for s in servers)
        status["duplicates"] = sum(s["duplicates"] for s in servers)
        return status

    async def shutdown(self) -> None:
        rt = self.rt
        for task in [w.task for w in rt.waiting.values()] + [
            f.task for conn in rt.connections.values() for f in conn.flights.values()
        ]:
            task._finish(
                error=Cancelled(
                    "the comfy-notebook engine was shut down", server=task.server, prompt_id=task.prompt_id
                ),
                status="cancelled",
            )
        await asyncio.gather(*(c.close(1000) for c in rt.connections.values()), return_exceptions=True)
        await rt.api.aclose()
