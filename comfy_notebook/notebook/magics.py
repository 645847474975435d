"""``%comfy`` (pool, status panel, reset, lock) and ``%%comfy`` (run a workflow cell, or a sweep over it).

The magics translate cells into ``comfy_notebook.api`` / engine calls and own the notebook-side UI state (the one
status panel, the progress widgets, the sweep grids, the display formatters), so unloading the extension can close
all of it.
User errors end the cell as failed with a short rendering (``_render_traceback_``), never a long traceback.
"""

from __future__ import annotations

import functools
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class, no_var_expand
from IPython.display import display
from traitlets import CaselessStrEnum, Enum, Float, List, Unicode, observe

from comfy_notebook import api
from comfy_notebook.core.errors import Cancelled, ComfyError
from comfy_notebook.core.listing import ModelListing, NodeListing
from comfy_notebook.core.nodes import NodeInfo
from comfy_notebook.core.workflow import Workflow, load_workflow, parse_workflow, substitute
from comfy_notebook.engine.options import MODES
from comfy_notebook.engine.sweep import Sweep
from comfy_notebook.engine.task import Result, Task
from comfy_notebook.notebook import catalog, render, sweepcell, sweepview
from comfy_notebook.notebook.grid import SweepGrid
from comfy_notebook.notebook.panel import StatusPanel
from comfy_notebook.notebook.progress import ProgressWidget
from comfy_notebook.notebook.syntax import (
    COMMANDS,
    HELP,
    CellOptions,
    parse_catalog_args,
    parse_cell_line,
    split_words,
)
from comfy_notebook.notebook.uipoll import ui_wait

_F = TypeVar("_F", bound=Callable[..., Any])


def _magic(kind: Callable[[str], Any], name: str) -> Callable[[_F], _F]:
    """``line_magic(name)`` / ``cell_magic(name)`` with the type IPython's union return type hides."""
    return cast(Callable[[_F], _F], kind(name))


def _display(obj: Any, **kwargs: Any) -> None:
    display(obj, **kwargs)  # type: ignore[no-untyped-call]


# -- clean errors -----------------------------------------------------------------------------------------------------
_RED, _RESET = "\x1b[0;31m", "\x1b[0m"


def clean(exc: BaseException) -> BaseException:
    """Give ``exc`` a short cell rendering (IPython calls ``_render_traceback_`` instead of printing a traceback).

    The exception keeps its type, so ``ename`` in the notebook is still ``ValidationError`` etc.
    """
    lines = render.error_lines(exc)

    def _render_traceback_() -> list[str]:
        name, sep, rest = lines[0].partition(":")
        return [f"{_RED}{name}{_RESET}{sep}{rest}", *lines[1:]]

    exc._render_traceback_ = _render_traceback_  # type: ignore[attr-defined]
    return exc


def _top_level_text(describe: Callable[[Any], str]) -> Callable[[Any, Any, bool], None]:
    """A ``text/plain`` printer: the full description for a displayed object, the short repr inside a list."""

    def printer(obj: Any, p: Any, cycle: bool) -> None:
        p.text(describe(obj) if len(p.stack) <= 1 else repr(obj))

    return printer


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")


# -- the magics -------------------------------------------------------------------------------------------------------
@magics_class
class ComfyMagics(Magics):
    """``%comfy`` / ``%%comfy``. Configurable with ``%config ComfyMagics.<trait> = ...`` or ``ipython_config.py``."""

    servers = List(
        Unicode(),
        default_value=[],
        help="ComfyUI servers (http://[user:pass@]host:port[/prefix]); empty: COMFY_SERVERS or %comfy servers",
    ).tag(config=True)
    default_timeout = Float(
        None, allow_none=True, help="seconds a %%comfy cell waits when it has no --timeout (None: no limit)"
    ).tag(config=True)
    mode = CaselessStrEnum(
        list(MODES),
        None,
        allow_none=True,
        help="lock: one server at a time, new prompts go to the locked server; pool: every server at once, prompts "
        "wait client-side for a server with room; None: COMFY_MODE, else lock (see %comfy mode)",
    ).tag(config=True)
    widgets = Enum(
        ["auto", "on", "off"], "auto", help="live widgets: auto = only in a kernel (not in terminal IPython)"
    ).tag(config=True)
    progress_interval = Float(0.15, help="seconds between progress widget refreshes").tag(config=True)
    panel_interval = Float(1.0, help="seconds between status panel refreshes").tag(config=True)
    grid_interval = Float(0.25, help="seconds between sweep grid refreshes").tag(config=True)

    def __init__(self, shell: Any = None, **kwargs: Any) -> None:
        self._ready = False  # @observe handlers run during construction: apply config only once started
        self._applying = False  # ``%comfy mode`` writes the trait after it changed the engine: no second call
        super().__init__(shell=shell, **kwargs)
        self.panel: StatusPanel | None = None
        self.progress_widgets: list[ProgressWidget] = []
        self.grids: list[SweepGrid] = []
        self._ui_lock = threading.Lock()
        self._formatters: list[tuple[Any, type]] = []

    # -- lifecycle ----------------------------------------------------------------------------------------------------
    def start(self, carried_servers: list[Any] | None = None, carried_mode: str | None = None) -> None:
        """Start the engine (it reads COMFY_SERVERS and COMFY_MODE), apply the configured servers and mode (else
        the ones carried over a reload), register the display formatters.

        A configuration mistake (a malformed URL, an unknown COMFY_MODE) is a one-line ``UsageError``."""
        try:
            engine = api.get_engine()
        except ComfyError as exc:  # it read COMFY_SERVERS / COMFY_MODE
            where = f"check {api.ENV_SERVERS} and {api.ENV_MODE}"
            raise UsageError(f"comfy_notebook could not start: {render.scrub(str(exc))} ({where})") from None
        try:
            if self.servers:
                api.set_servers(list(self.servers))
            elif carried_servers:
                engine.set_servers(carried_servers)
            if self.mode is not None:
                api.set_mode(self.mode)
            elif carried_mode is not None:
                engine.set_mode(carried_mode)
        except ComfyError as exc:
            raise UsageError(f"comfy_notebook could not apply ComfyMagics config: {render.scrub(str(exc))}") from None
        self._register_formatters()
        self._formatters += catalog.register(self.shell, _top_level_text)
        self._ready = True

    def close(self) -> None:
        """Close the panel and every progress widget (cancelling their tickers), unregister the formatters."""
        self._ready = False
        with self._ui_lock:
            panel, self.panel = self.panel, None
            progress, self.progress_widgets = self.progress_widgets, []
            grids, self.grids = self.grids, []
        if panel is not None:
            panel.close()
        for widget in progress:
            widget.close()
        for grid in grids:
            grid.close()
        for formatter, cls in self._formatters:
            formatter.pop(cls, None)
        self._formatters = []

    @observe("servers")
    def _servers_changed(self, change: dict[str, Any]) -> None:
        if getattr(self, "_ready", False):
            api.set_servers(list(change["new"]))

    @observe("mode")
    def _mode_changed(self, change: dict[str, Any]) -> None:
        if getattr(self, "_ready", False) and not self._applying and change["new"] is not None:
            api.set_mode(change["new"])

    def set_mode(self, mode: str) -> str:
        """Switch the engine's mode and keep the ``mode`` trait in step (so a later ``%config`` still applies)."""
        try:
            applied = api.set_mode(mode.strip().lower())
        except ComfyError as exc:
            raise UsageError(f"%comfy mode: {render.scrub(str(exc))}") from None
        self._applying = True
        try:
            self.mode = applied
        finally:
            self._applying = False
        return applied

    def _register_formatters(self) -> None:
        display_formatter = getattr(self.shell, "display_formatter", None)
        if display_formatter is None:
            return
        plain = display_formatter.formatters["text/plain"]
        html = display_formatter.formatters["text/html"]
        registrations: list[tuple[Any, type, Callable[..., Any]]] = [
            (display_formatter.mimebundle_formatter, Task, self._task_bundle),
            (html, Task, render.task_html),
            (plain, Task, _top_level_text(render.task_text)),
            (display_formatter.mimebundle_formatter, Result, render.result_bundle),  # a static PNG beside the HTML
            (html, Result, render.result_html),
            (plain, Result, _top_level_text(render.result_text)),
            (display_formatter.mimebundle_formatter, Sweep, self._sweep_bundle),
            (html, Sweep, lambda sweep: sweepview.sweep_html(sweep, sweepview.Thumbs())),
            (plain, Sweep, _top_level_text(sweepview.sweep_text)),
        ]
        for formatter, cls, fn in registrations:
            formatter.for_type(cls, fn)
            self._formatters.append((formatter, cls))

    def use_widgets(self) -> bool:
        if self.widgets != "auto":
            return bool(self.widgets == "on")
        return getattr(self.shell, "kernel", None) is not None

    def progress_for(self, task: Task) -> ProgressWidget:
        """A live progress widget for ``task``, tracked so unloading closes it."""
        widget = ProgressWidget(task, api.get_engine(), interval=self.progress_interval)
        with self._ui_lock:
            self.progress_widgets.append(widget)
        return widget

    def grid_for(self, sweep: Sweep) -> SweepGrid:
        """A live grid for ``sweep``, tracked so unloading closes it."""
        grid = SweepGrid(sweep, api.get_engine(), interval=self.grid_interval)
        with self._ui_lock:
            self.grids.append(grid)
        return grid

    def status_panel(self) -> StatusPanel:
        """THE panel of this kernel, created on first use (again if the engine was shut down meanwhile)."""
        with self._ui_lock:
            panel = self.panel
            if panel is not None and not panel.closed and not panel.engine.closed:
                return panel
            self.panel = None
        if panel is not None:
            panel.close()
        fresh = StatusPanel(api.get_engine(), interval=self.panel_interval)
        with self._ui_lock:
            self.panel = fresh
        return fresh

    def _task_bundle(self, task: Task) -> dict[str, Any] | None:
        """Displaying a Task in a kernel shows its live progress widget; elsewhere the static text/HTML."""
        if not self._ready or not self.use_widgets():
            return None
        return self.progress_for(task)._repr_mimebundle_()

    def _sweep_bundle(self, sweep: Sweep) -> dict[str, Any] | None:
        """Displaying a Sweep in a kernel shows its live grid; elsewhere the static grid."""
        if not self._ready or not self.use_widgets():
            return None
        return self.grid_for(sweep)._repr_mimebundle_()

    # -- %comfy -------------------------------------------------------------------------------------------------------
    @_magic(line_magic, "comfy")
    def comfy_line(self, line: str) -> Result | Task | Sweep | NodeListing | NodeInfo | ModelListing | None:
        """Manage the server pool and the lock; ``%comfy help`` lists the commands."""
        tokens = split_words(line, "%comfy")
        if not tokens:
            raise UsageError(f"%comfy needs a command: {COMMANDS}")
        command, args = tokens[0], tokens[1:]
        if command not in ("-h", "--help") and (command.startswith("-") or "<<" in tokens[:2] or command[-2:] == "<<"):
            if "-f" not in tokens and "--file" not in tokens and not any(t.startswith("--file=") for t in tokens):
                raise UsageError("%comfy runs a workflow only from a file: %comfy [NAME <<] -f FILE [options]")
            return self.run(line, "")  # the line form of %%comfy: IPython refuses a cell magic with an empty body
        if command in ("help", "-h", "--help"):
            _say(HELP)
        elif command == "servers":
            if args:
                try:
                    api.set_servers(args)
                except ComfyError as exc:
                    raise UsageError(f"%comfy servers: {render.scrub(str(exc))}") from None
            _say(render.servers_text(api.get_status()))
        elif command == "mode":
            if len(args) > 1:
                raise UsageError("usage: %comfy mode [lock|pool]")
            _say(render.mode_text(self.set_mode(args[0]) if args else api.get_engine().mode))
        elif command == "status":
            self._no_args(command, args)
            if self.use_widgets():
                _display(self.status_panel())
            else:
                status = api.get_status()
                _display({"text/plain": render.status_text(status), "text/html": render.status_html(status)}, raw=True)
        elif command == "reset":
            self._no_args(command, args)
            before = api.get_status()
            _say(render.reset_outcome(before, api.reset()))
            if self.panel is not None:
                self.panel.refresh()
        elif command == "lock":
            if len(args) != 1:
                raise UsageError("usage: %comfy lock URL (a server of the pool)")
            try:
                url = api.lock(args[0])
            except ComfyError as exc:
                raise UsageError(f"%comfy lock: {render.scrub(str(exc))}") from None
            _say(f"locked: {url}")
        elif command in ("nodes", "node", "models"):
            return self._catalog(command, args)
        else:
            raise UsageError(f"unknown %comfy command {command!r}: use {COMMANDS}")
        return None

    @staticmethod
    def _catalog(command: str, args: list[str]) -> NodeListing | NodeInfo | ModelListing:
        """``%comfy nodes [FILTER]``, ``node NAME``, ``models [FOLDER]``: the answer is the cell's value (a table;
        ``x = %comfy nodes sampler`` keeps it)."""
        text, server = parse_catalog_args(command, args)
        try:
            if command == "nodes":
                return api.nodes(text, server=server)
            if command == "node":
                return api.node(str(text), server=server)
            return api.models(text, server=server)
        except ComfyError as exc:
            raise clean(exc) from None

    @staticmethod
    def _no_args(command: str, args: list[str]) -> None:
        if args:
            raise UsageError(f"%comfy {command} takes no arguments (got {' '.join(args)!r})")

    # -- %%comfy ------------------------------------------------------------------------------------------------------
    @no_var_expand
    @_magic(cell_magic, "comfy")
    def comfy_cell(self, line: str, cell: str) -> Result | Task | Sweep | None:
        """Run the workflow in the cell (JSON, API format) and wait for its images; see ``%comfy help``."""
        return self.run(line, cell)

    def run(self, line: str, cell: str) -> Result | Task | Sweep | None:
        """Submit, show progress, wait (unless ``--no-wait``), store or return the outcome."""
        options = parse_cell_line(line)
        if options.is_sweep:
            return self.run_sweep(options, cell)
        try:
            workflow = self._workflow(options, cell)
            task = api.submit(workflow, server=options.server)
        except ComfyError as exc:
            raise clean(exc) from None
        if options.no_wait:
            if options.target is None:
                return task  # displayed by the Task formatter: the live widget in a kernel
            self.shell.user_ns[options.target] = task  # type: ignore[union-attr]
            _display(task)
            return None
        widget = handle = None
        try:
            widget = self.progress_for(task) if self.use_widgets() else None
            if widget is not None:
                handle = display(widget, display_id=True)  # type: ignore[no-untyped-call]
            result = self._wait(task, options.timeout if options.timeout is not None else self.default_timeout)
            if widget is not None:
                widget.collapse()  # the Result below says "success, server, elapsed": once, not twice
        except KeyboardInterrupt:  # the kernel's stop button: cancel this prompt only, end the cell cleanly
            task.cancel()
            what = "had already finished" if task.status == "success" else "was cancelled"
            message = f"interrupted: prompt {task.prompt_id} {render.task_where(task)} {what}"
            raise clean(Cancelled(message, server=task.server, prompt_id=task.prompt_id)) from None
        finally:
            if widget is not None:
                widget.refresh()  # the final state, written from this cell's thread
            if handle is not None:
                handle.update(widget)  # so the saved static fallback shows the outcome, not "pending"
        if options.target is None:
            return result  # displayed once, by the Result formatter (summary and images)
        self.shell.user_ns[options.target] = result  # type: ignore[union-attr]
        _display(result)
        return None

    def run_sweep(self, options: CellOptions, cell: str) -> Sweep | None:
        """A sweep cell (``sweepcell.run``): the live grid, the wait, the static grid; errors as one short line."""
        namespace = self.shell.user_ns if self.shell is not None else {}
        timeout = options.timeout if options.timeout is not None else self.default_timeout
        try:
            return sweepcell.run(
                options,
                lambda: self._workflow(options, cell),
                namespace,
                self.grid_for if self.use_widgets() else None,
                timeout,
            )
        except (ComfyError, TimeoutError) as exc:
            raise clean(exc) from None

    def _workflow(self, options: CellOptions, cell: str) -> Workflow:
        body = cell or ""
        if options.file and body.strip():
            raise UsageError("%%comfy: give the workflow either in the cell or with -f FILE, not both")
        # A UI-format workflow (as the ComfyUI page saves it) is converted with the target server's node types.
        convert = functools.partial(api.to_api, server=options.server)
        if options.file:
            workflow = load_workflow(Path(options.file).expanduser(), convert=convert)
        elif body.strip():
            # A leading newline makes JSON line numbers match the cell's (line 1 is the %%comfy line).
            workflow = parse_workflow("\n" + body, origin="the workflow in this cell", convert=convert)
        else:
            raise UsageError("%%comfy: the cell is empty: put an API-format workflow (JSON) in it, or use -f FILE")
        namespace = self.shell.user_ns if self.shell is not None else {}
        return substitute(workflow, namespace)

    @staticmethod
    def _wait(task: Task, timeout: float | None) -> Result:
        """Block until the task is done; the timeout cancels this prompt only.

        Widget clicks are answered meanwhile (a Cancel button, the panel's Reset), nothing else a user typed runs
        (``uipoll.ui_wait``); the kernel's stop button raises ``KeyboardInterrupt`` here as before."""
        finished = threading.Event()
        task.add_done_callback(lambda _task: finished.set())
        if not ui_wait(finished, timeout):
            task.cancel()
            where = render.task_where(task)
            message = f"prompt {task.prompt_id} {where} did not finish within {timeout:g} s; it was cancelled"
            raise clean(TimeoutError(message)) from None
        try:
            return task.result(0)
        except ComfyError as exc:
            raise clean(exc) from None
