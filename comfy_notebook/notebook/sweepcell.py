"""A ``%%comfy NAME << --over KEY=V1,V2`` sweep cell: the axes from the cell line (and a ``--sweep VAR`` dict), the
live grid, the blocking wait, the static grid it leaves, and the line it ends with.

The wait goes through ``uipoll.ui_wait`` like a single prompt's, so the grid's Cancel button (and the panel's
Reset) are answered while the cell blocks; a kernel interrupt cancels every unfinished point. Failed points never
fail the cell; cancelled ones end it with one line (``Cancelled``). ``NAME <<`` gets the Sweep before the wait, so
an interrupted cell keeps what finished.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

from IPython.core.error import UsageError
from IPython.display import display

from comfy_notebook import api
from comfy_notebook.core.errors import Cancelled
from comfy_notebook.core.sweep import parse_over
from comfy_notebook.core.workflow import Workflow
from comfy_notebook.engine.sweep import Sweep
from comfy_notebook.notebook import sweepview
from comfy_notebook.notebook.grid import SweepGrid
from comfy_notebook.notebook.syntax import CellOptions
from comfy_notebook.notebook.uipoll import ui_wait


def run(
    options: CellOptions,
    workflow: Callable[[], Workflow],
    namespace: MutableMapping[str, Any],
    grid_for: Callable[[Sweep], SweepGrid] | None,
    timeout: float | None,
) -> Sweep | None:
    """Plan and submit every point, show the grid (live when ``grid_for`` makes one), wait unless ``--no-wait``.

    Returns the Sweep only for ``--no-wait`` without a target (the cell's value, shown by its formatter); raises
    ``ComfyError`` (a plan error, ``Cancelled``) or ``TimeoutError`` for the caller to render as one line."""
    graph, over = workflow(), axes(options, namespace)
    try:
        sweep = api.sweep(graph, over, zip=options.zip, server=options.server)
    except KeyboardInterrupt:  # during the submission: the engine has cancelled every point it had started
        raise Cancelled("interrupted while the sweep was being submitted: every point was cancelled") from None
    grid: SweepGrid | None = None
    shown: Any = None
    handle: Any = None
    try:  # from here on an interrupt (the kernel's stop button) cancels what has not finished
        if options.target is not None:
            namespace[options.target] = sweep
        if options.no_wait and options.target is None:
            return sweep
        if options.no_wait:
            _display(grid_for(sweep) if grid_for is not None else StaticSweep(sweep))
            return None
        grid = grid_for(sweep) if grid_for is not None else None
        shown = grid if grid is not None else StaticSweep(sweep)
        handle = display(shown, display_id=True)  # type: ignore[no-untyped-call]
        wait(sweep, timeout)
    except KeyboardInterrupt:
        sweep.cancel()
        raise Cancelled(f"interrupted: {outcome_text(sweep)}") from None
    finally:
        if grid is not None:
            grid.finish()  # every thumbnail, made here; then the saved static grid shows the outcome
        if handle is not None:
            handle.update(shown)
    stopped = cancelled_message(sweep)
    if stopped is not None:
        raise Cancelled(stopped)
    return None


def axes(options: CellOptions, namespace: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """``(key, values)`` pairs: the ``--sweep VAR`` dict's first, then each ``--over`` in order. A bad ``--over``
    is a ``WorkflowError`` (from ``parse_over``); a missing or non-dict variable a one-line ``UsageError``."""
    pairs: list[tuple[str, Any]] = []
    if options.sweep_var is not None:
        if options.sweep_var not in namespace:
            raise UsageError(f"%%comfy: --sweep {options.sweep_var}: no notebook variable of that name")
        value = namespace[options.sweep_var]
        if not isinstance(value, Mapping):
            raise UsageError(
                f"%%comfy: --sweep {options.sweep_var} must name a dict of axes like {{'3.seed': range(4)}}, "
                f"not a {type(value).__name__}"
            )
        pairs += [(str(key), values) for key, values in value.items()]
    pairs += [parse_over(text) for text in options.over]
    return pairs


def wait(sweep: Sweep, timeout: float | None) -> None:
    """Block until every point finished, answering widget clicks meanwhile. A timeout cancels the unfinished
    points and raises ``TimeoutError``; ``KeyboardInterrupt`` propagates (the caller cancels)."""
    finished = threading.Event()
    left = [len(sweep.points)]
    count = threading.Lock()

    def one_done(_task: Any) -> None:
        with count:
            left[0] -= 1
            if left[0] <= 0:
                finished.set()

    if not sweep.points:
        return
    for point in sweep.points:
        point.task.add_done_callback(one_done)
    if not ui_wait(finished, timeout):
        pending = sum(1 for point in sweep.points if not point.task.done())
        sweep.cancel()
        raise TimeoutError(
            f"the sweep did not finish within {timeout:g} s: {pending} of {len(sweep)} points were cancelled"
        )


def outcome_text(sweep: Sweep) -> str:
    """``5 of 12 sweep points cancelled; 6 done, 1 failed``: what a stopped sweep leaves."""
    counts = sweep.counts()
    failed = counts.get("error", 0) + counts.get("interrupted", 0)
    rest = [f"{n} {what}" for n, what in ((counts.get("success", 0), "done"), (failed, "failed")) if n]
    cancelled = f"{counts.get('cancelled', 0)} of {len(sweep)} sweep points cancelled"
    return cancelled + (f"; {', '.join(rest)}" if rest else "")


def cancelled_message(sweep: Sweep) -> str | None:
    """The short line a sweep cell ends with when points were cancelled (Cancel, a reset), else None."""
    return outcome_text(sweep) if sweep.counts().get("cancelled") else None


def _display(obj: Any) -> None:
    display(obj)  # type: ignore[no-untyped-call]


class StaticSweep:
    """A sweep shown without widgets: the static grid, made afresh at each display (the final one fetches)."""

    def __init__(self, sweep: Sweep) -> None:
        self.sweep = sweep
        self.thumbs = sweepview.Thumbs()

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        html = sweepview.sweep_html(self.sweep, self.thumbs, fetch=self.sweep.done())
        return {"text/plain": sweepview.sweep_text(self.sweep), "text/html": html}
