"""What arrives on the sockets: events update the prompts they name, socket state drives the lock and the pool.

Both handlers run on the loop thread inside the socket reader, so they never wait: anything slow is spawned.
"""

from __future__ import annotations

import logging
import time

from comfy_notebook.core import protocol as wire
from comfy_notebook.engine.connection import ServerConnection
from comfy_notebook.engine.harvest import presume_finished
from comfy_notebook.engine.recovery import Recovery
from comfy_notebook.engine.runtime import Runtime
from comfy_notebook.engine.task import RUNNING, Progress

log = logging.getLogger(__name__)


class Events:
    """The ``on_event`` / ``on_socket`` callbacks of every ``ServerConnection``."""

    def __init__(self, rt: Runtime, recovery: Recovery) -> None:
        self.rt = rt
        self.recovery = recovery

    def on_event(self, conn: ServerConnection, event: wire.Event) -> None:
        rt = self.rt
        if isinstance(event, wire.Status):
            record = rt.pool.records.get(conn.server)
            if record is None or event.queue_remaining < record.queue_remaining:
                conn.harvest_wake.set()  # the queue went down: something finished (a POST only makes it grow)
            if record is not None:
                presume_finished(rt, conn, record.queue_remaining, event.queue_remaining)
            rt.pool.set_queue(conn.server, event.queue_remaining)
            rt.pump(conn.server)  # the queue moved: this server may have room now
            return
        prompt_id = getattr(event, "prompt_id", None)
        if isinstance(event, wire.Preview) and prompt_id is None:
            prompt_id = conn.running
        flight = conn.flights.get(prompt_id) if prompt_id else None
        if flight is None:
            if isinstance(event, wire.Executing) and event.done and prompt_id:
                rt.count_duplicate(conn.server, prompt_id)  # a prompt we had moved away, finished here anyway
            return  # another client's prompt, or one we no longer track
        flight.last_heard = time.monotonic()
        task = flight.task
        if task.done() and not (isinstance(event, wire.Executing) and event.done):
            return  # cancelled: its last events until the server drops it must not make it look alive again
        if isinstance(event, wire.ExecutionStart):
            conn.running = prompt_id
            flight.started_at = flight.last_heard
            task._update(status=RUNNING, started_at=time.time(), queue_position=0)
        elif isinstance(event, wire.Executing):
            if event.done:
                if conn.running == prompt_id:
                    conn.running = None
                if flight.started_at and not flight.done.done():
                    rt.pool.observe(conn.server, flight.last_heard - flight.started_at)
                if not flight.done.done():
                    flight.done.set_result(None)
            else:
                conn.running = prompt_id
                if task.status != RUNNING:
                    flight.started_at = flight.last_heard
                task._update(status=RUNNING, node=event.node, queue_position=0)
        elif isinstance(event, wire.Progress):
            task._update(progress=Progress(event.value, event.max, event.node))
        elif isinstance(event, wire.Preview):
            task._update(preview=(event.mime_type, event.data))

    def on_socket(self, conn: ServerConnection, what: str, code: int | None, detail: str) -> None:
        rt, server = self.rt, conn.server
        if what == "connecting":
            rt.lock.connecting(server, chosen=False)
        elif what == "open":
            rt.lock.opened(server)
            rt.pool.mark_ok(server)
            rt.pump()
        elif what == "backend":
            log.warning(
                "the balancer at %s sent us to another backend (its cookie changed): prompts the old one held are "
                "sent again",
                server,
            )
            if detail == "http" and conn.is_open:  # the socket may still reach the old one: reopen it with the cookie
                rt.spawn(conn.close(1000), f"moving the socket of {server} to its new backend")
        elif what == "closing":
            rt.lock.closing(server)
        elif what == "error":
            rt.lock.error(server)
            rt.pool.mark_failed(server, f"WebSocket connect failed: {detail}")
        elif what == "closed":
            rt.lock.closed(server, code)
            if code != 1000:
                why = f"{detail}, " if detail else ""
                log.warning("WebSocket to %s closed abnormally (%s%s)", server, why, code or "no close frame")
                rt.pool.mark_failed(server, f"WebSocket closed abnormally ({why}{code or 1006})")
            if any((f.posted or f.posting) and not f.task.done() for f in conn.flights.values()):
                self.recovery.socket_lost(conn, hung=detail == "ping timeout")
