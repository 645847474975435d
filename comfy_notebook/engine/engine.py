"""The engine's public, thread-safe face. Every call hops onto the loop thread owned by ``LoopThread`` and
returns quickly; the work itself lives in the parts wired together here:

* ``dispatch``: routing (lock, pool late binding, ``server=``) and the life of each prompt, failover included;
* ``events``: what arrives on the sockets;
* ``harvest``: completion of quiet (bulk) prompts from ``/history``;
* ``recovery``: reconnects, reconciliation, the watchdog and prompts left on lost servers;
* ``control``: servers, mode, pin, cancel, reset, status;
* ``discovery``: the node types and model files of each server (``nodes``, ``node``, ``models``, ``object_info``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from comfy_notebook.core import protocol as wire
from comfy_notebook.core.errors import ConfigError, WorkflowError
from comfy_notebook.core.listing import ModelListing, NodeListing
from comfy_notebook.core.lock import ServerLock
from comfy_notebook.core.nodes import NodeInfo
from comfy_notebook.core.pool import Pool
from comfy_notebook.core.servers import ServerSpec
from comfy_notebook.core.sweep import plan as plan_sweep
from comfy_notebook.core.ui import to_api as ui_to_api
from comfy_notebook.core.workflow import Converter, Workflow, load_workflow
from comfy_notebook.engine.control import Control
from comfy_notebook.engine.discovery import Discovery
from comfy_notebook.engine.dispatch import Dispatcher
from comfy_notebook.engine.events import Events
from comfy_notebook.engine.harvest import Harvester
from comfy_notebook.engine.loop import LoopThread
from comfy_notebook.engine.options import EngineOptions
from comfy_notebook.engine.recovery import Recovery
from comfy_notebook.engine.runtime import Runtime
from comfy_notebook.engine.sweep import Sweep
from comfy_notebook.engine.task import WAITING, Result, Task

log = logging.getLogger(__name__)

ServerLike = str | ServerSpec | Mapping[str, Any]

__all__ = ["Engine", "EngineOptions", "ServerLike", "to_spec"]


def to_spec(server: ServerLike) -> ServerSpec:
    """A ``ServerSpec`` from a URL, a spec or ``{"url": ..., "token": ..., "headers": ...}``; a malformed one
    raises ``ConfigError`` (a ``ValueError``), never a connection error."""
    if isinstance(server, ServerSpec):
        return server
    if isinstance(server, str):
        return ServerSpec.parse(server)
    if isinstance(server, Mapping) and isinstance(server.get("url"), str):
        return ServerSpec.parse(server["url"], token=server.get("token"), headers=server.get("headers"))
    raise ConfigError(f"a server must be a URL string or {{'url': ..., 'token': ...}}, not {type(server).__name__}")


class Engine:
    """Owns the loop thread and, on it, the lock, the pool, the scheduler and every connection."""

    def __init__(self, servers: Iterable[ServerLike] = (), options: EngineOptions | None = None) -> None:
        self.options = options or EngineOptions()
        specs = [to_spec(s) for s in servers]  # validate BEFORE a thread exists: a bad URL must not leak one
        self._thread = LoopThread()
        try:
            self._thread.run(self._start(specs))
        except BaseException:
            self._thread.stop()
            raise

    async def _start(self, specs: list[ServerSpec]) -> None:
        rt = self._rt = Runtime(self.options, self._on_event, self._on_socket)
        self._recovery = Recovery(rt)
        self._events = Events(rt, self._recovery)
        self._dispatch = Dispatcher(rt, Harvester(rt))
        self._control = Control(rt, self._dispatch)
        self._discovery = Discovery(rt)
        self._monitor = rt.spawn(self._recovery.monitor(), "the engine monitor")
        await self._control.set_servers(specs)

    # The connections call these; the indirection lets ``Runtime`` exist before ``Events``.
    def _on_event(self, conn: Any, event: wire.Event) -> None:
        self._events.on_event(conn, event)

    def _on_socket(self, conn: Any, what: str, code: int | None, detail: str) -> None:
        self._events.on_socket(conn, what, code, detail)

    # -- servers and mode ---------------------------------------------------------------------------------------------
    def set_servers(self, servers: Iterable[ServerLike]) -> list[str]:
        specs = [to_spec(s) for s in servers]
        return self._thread.run(self._set_servers(specs))

    async def _set_servers(self, specs: list[ServerSpec]) -> list[str]:
        urls = await self._control.set_servers(specs)
        self._discovery.prune()  # a server that left the pool may be another one when it comes back
        return urls

    def set_mode(self, mode: str) -> str:
        """``"lock"`` (the original fix: new work goes to the locked server) or ``"pool"`` (every server at once,
        late binding)."""
        return self._thread.run(self._control.set_mode(mode))

    @property
    def mode(self) -> str:
        return self._rt.mode

    def pin(self, server: ServerLike) -> str:
        """Lock to ``server`` by hand (it must be in the pool); in both modes every new prompt then goes there."""
        return self._thread.run(self._control.pin(to_spec(server)))

    # -- prompts ------------------------------------------------------------------------------------------------------
    def submit(
        self, workflow: Workflow | str | Path, *, server: ServerLike | None = None, progress: bool = True
    ) -> Task:
        """Queue a workflow; returns at once with the task (lock mode: its server already chosen; pool mode: it
        waits client-side, status ``waiting``, until a server has room).

        ``progress=False`` asks the server for no per-prompt events (no progress, previews or node names): the
        bulk path, see ``submit_many``."""
        return self.submit_many([workflow], server=server, progress=progress)[0]

    def submit_many(
        self, workflows: Iterable[Workflow | str | Path], *, server: ServerLike | None = None, progress: bool = False
    ) -> list[Task]:
        """Queue many workflows in one step. By default they are quiet (``progress=False``): the server sends no
        per-prompt events and completion is read from ``/history`` in queue order, which lets a busy server run
        at its own pace (events alone cost it about a fifth of its throughput)."""
        spec = to_spec(server) if server is not None else None
        convert = self._converter(spec)
        graphs = [load_workflow(w, convert=convert) for w in workflows]
        tasks = [Task(wire.new_id(), graph, self._cancel_from_thread) for graph in graphs]
        admitted = self._thread.submit(self._dispatch.admit_all(tasks, spec, quiet=not progress))
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
        self, workflow: Workflow | str | Path, *, server: ServerLike | None = None, timeout: float | None = None
    ) -> Result:
        return self.submit(workflow, server=server).result(timeout)

    def sweep(
        self,
        workflow: Workflow | str | Path,
        over: Mapping[str, Iterable[Any]] | Iterable[tuple[str, Iterable[Any]]],
        *,
        zip: bool = False,  # the name users expect (``zip=True`` for paired lists)
        server: ServerLike | None = None,
        progress: bool = True,
    ) -> Sweep:
        """Run ``workflow`` once per point of ``over`` (``{"3.seed": range(8), "KSampler.cfg": [5, 7]}``: the
        cartesian product, or with ``zip=True`` the i-th values together); returns at once with the ``Sweep``.

        Every key and value is checked before anything is queued (``WorkflowError`` naming what exists). The points
        go through ``submit_many``, so pool mode spreads them over every server as each has room; ``progress=True``
        (the default) gives each prompt its progress events, for a live grid."""
        spec = self._maybe_spec(server)
        layout = plan_sweep(load_workflow(workflow, convert=self._converter(spec)), over, zip=zip)
        started = time.time()
        graphs = [layout.workflow_for(point) for point in layout.points]
        tasks = self.submit_many(graphs, server=spec, progress=progress)
        return Sweep(layout, tasks, self._cancel_many, started_at=started)

    def _cancel_many(self, tasks: list[Task]) -> None:
        """Cancel several tasks in one hop; each is settled at once, and the drops on the servers get
        ``cancel_wait`` seconds in all (not each), so cancelling a large sweep returns quickly."""
        # Waiting ones first: a slot freed by a cancelled running prompt must not start another point of it.
        tasks = sorted(tasks, key=lambda task: task.status != WAITING)
        if self._thread.in_loop_thread():
            for task in tasks:
                self._rt.spawn(self._control.cancel(task, "cancelled with its sweep"), f"cancelling {task.key}")
        elif self._thread.alive:
            wait = self.options.cancel_wait
            future = self._thread.submit(self._cancel_briefly(tasks, wait))
            with contextlib.suppress(concurrent.futures.TimeoutError, concurrent.futures.CancelledError):
                future.result(timeout=wait + 0.5)

    async def _cancel_briefly(self, tasks: list[Task], wait: float) -> None:
        drops = [d for d in [await self._control.cancel(t, "cancelled with its sweep") for t in tasks] if d]
        if drops:
            work = asyncio.gather(*(asyncio.shield(d) for d in drops), return_exceptions=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(work, wait)

    def _cancel_from_thread(self, task: Task) -> None:
        """``Task.cancel()``: settles the task at once; the drop on the server goes on in the background. Never
        blocks a cell for long and never raises a timeout."""
        if self._thread.in_loop_thread():
            self._rt.spawn(self._control.cancel(task, "cancelled"), f"cancelling {task.key}")
        elif self._thread.alive:
            wait = self.options.cancel_wait
            future = self._thread.submit(self._control.cancel_briefly(task, "cancelled", wait))
            with contextlib.suppress(concurrent.futures.TimeoutError, concurrent.futures.CancelledError):
                future.result(timeout=wait + 0.5)

    # -- status and control -------------------------------------------------------------------------------------------
    def get_status(self) -> dict[str, Any]:
        if self._thread.in_loop_thread():
            return self.status_now()
        return self._thread.run(self._status(), timeout=5)

    async def _status(self) -> dict[str, Any]:
        return self._control.status()

    def status_now(self) -> dict[str, Any]:
        """The status snapshot; call only on the loop thread (``get_status`` does the hop)."""
        return self._control.status()

    def reset(self) -> dict[str, Any]:
        """Clear the lock, close sockets with 1000, cancel every pending task (best effort on the servers), forget
        the servers' node types (asked again on next use)."""
        return self._thread.run(self._reset(), timeout=self.options.reset_timeout + 3)

    async def _reset(self) -> dict[str, Any]:
        self._discovery.forget()
        return await self._control.reset()

    # -- what the servers can run -------------------------------------------------------------------------------------
    def object_info(self, server: ServerLike | None = None) -> dict[str, Any]:
        """The raw ``GET /object_info`` of ``server``, else of the locked (or pinned) server, else of the first
        server of the pool that answers. Kept per server until it may have restarted: treat it as read-only."""
        return self._thread.run(self._discovery.object_info(self._maybe_spec(server)))

    def nodes(self, filter: str | None = None, server: ServerLike | None = None) -> NodeListing:
        """The node types of every server of the pool (or of ``server``) whose name, display name or category
        contains ``filter`` (any case); with several servers, where each one is and what the differences mean."""
        return self._thread.run(self._discovery.nodes(filter, self._maybe_spec(server)))

    def node(self, name: str, server: ServerLike | None = None) -> NodeInfo:
        """One node type described: inputs (type, default, range, choices), outputs; ``NotFound`` naming the
        servers asked (with close names) when none has it."""
        return self._thread.run(self._discovery.node(name, self._maybe_spec(server)))

    def models(self, folder: str | None = None, server: ServerLike | None = None) -> ModelListing:
        """The files in a model folder (``"checkpoints"``, ``"loras"``, ...) of every server, or (no folder) the
        folder names; files only some servers have are noted. Asked afresh each time."""
        return self._thread.run(self._discovery.models(folder, self._maybe_spec(server)))

    def to_api(self, workflow: Workflow | str | Path, server: ServerLike | None = None) -> Workflow:
        """A UI-format workflow (what the ComfyUI page saves) in the API format, as the page itself would queue
        it, using the node definitions of ``server`` (else the locked or first answering server). An API-format
        workflow comes back as loaded."""
        return load_workflow(workflow, convert=self._converter(self._maybe_spec(server)))

    def _converter(self, spec: ServerSpec | None) -> Converter:
        """Converts UI-format workflows with ``spec``'s node definitions, fetched only when one shows up (cached
        per server by discovery)."""

        def convert(ui: dict[str, Any]) -> Workflow:
            url, object_info = self._thread.run(self._discovery.defining(spec))
            try:
                return ui_to_api(ui, object_info)
            except WorkflowError as exc:
                raise WorkflowError(f"converting this UI-format workflow with the node types of {url}: {exc}") from None

        return convert

    @staticmethod
    def _maybe_spec(server: ServerLike | None) -> ServerSpec | None:
        return None if server is None else to_spec(server)

    @property
    def discovery(self) -> Discovery:
        """Read-only view for tests and tools (``discovery.fetches`` counts ``/object_info`` requests)."""
        return self._discovery

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
            self._thread.run(self._control.shutdown(), timeout=5)
        self._thread.stop()

    @property
    def closed(self) -> bool:
        return not self._thread.alive

    @property
    def thread(self) -> LoopThread:
        return self._thread

    # Read-only views for tests and tools (the loop thread owns them).
    @property
    def pool(self) -> Pool:
        return self._rt.pool

    @property
    def lock(self) -> ServerLock:
        return self._rt.lock

    @property
    def _connections(self) -> dict[str, Any]:
        return self._rt.connections

    @property
    def _drivers(self) -> set[asyncio.Task[Any]]:
        return self._rt.background
