"""``Sweep``: the handle of a running sweep, one ``Task`` per point (``Engine.sweep`` builds it).

Every point is an ordinary prompt submitted through the engine's usual path (pool mode binds each one late, to
whichever server has room), so a failing point fails alone and the others run on. Reading is lock-free, as for
``Task``: a point's status, progress, server, result and error are its task's.
"""

from __future__ import annotations

import collections
import importlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from comfy_notebook.core.errors import ComfyError
from comfy_notebook.core.paths import safe_name
from comfy_notebook.core.sweep import Axis, SweepPlan, format_value
from comfy_notebook.engine.files import write_new
from comfy_notebook.engine.task import Result, Task, blocking_wait

__all__ = ["Sweep", "SweepPoint"]

#: Longest file-name stem ``save`` builds from a point's values (file systems stop at 255 bytes).
_STEM_MAX = 150


@dataclass(frozen=True, eq=False)
class SweepPoint:
    """One point: ``index`` (submission order), ``params`` (user key -> value), ``coords`` (index along each
    axis), ``label`` (``seed=3, cfg=7``) and its ``task``."""

    index: int
    params: dict[str, Any] = field(repr=False)
    coords: tuple[int, ...]
    label: str
    task: Task

    @property
    def status(self) -> str:
        return self.task.status

    @property
    def server(self) -> str | None:
        return self.task.server

    @property
    def error(self) -> BaseException | None:
        return self.task.error

    @property
    def result(self) -> Result | None:
        """The result once the point succeeded, else ``None`` (never raises, never waits)."""
        if not self.task.done() or self.task.error is not None:
            return None
        return self.task.result(0)


class Sweep:
    """A sweep's points, their tasks and what to do with the results; ``wait()`` blocks, ``cancel()`` stops it."""

    def __init__(
        self, plan: SweepPlan, tasks: list[Task], cancel: Callable[[list[Task]], None], *, started_at: float
    ) -> None:
        if len(tasks) != len(plan.points):
            raise ValueError(f"a sweep of {len(plan.points)} points got {len(tasks)} tasks")
        self.plan = plan
        self.points = [
            SweepPoint(point.index, point.params, point.coords, plan.label(point), task)
            for point, task in zip(plan.points, tasks, strict=True)
        ]
        self.started_at = started_at
        self._cancel = cancel
        self._finished = threading.Event()  # set by the last point's end, whichever thread settles it
        self._left = len(tasks)
        self._count = threading.Lock()
        if not tasks:
            self._finished.set()
        for task in tasks:
            task.add_done_callback(self._one_finished)

    def _one_finished(self, _task: Task) -> None:
        with self._count:
            self._left -= 1
            if self._left == 0:
                self._finished.set()

    # -- shape ---------------------------------------------------------------------------------------------------------
    @property
    def axes(self) -> tuple[Axis, ...]:
        return self.plan.axes

    @property
    def shape(self) -> tuple[int, ...]:
        """Values per axis (a product), or ``(points,)`` for a zipped sweep."""
        return self.plan.shape

    @property
    def zip(self) -> bool:
        return self.plan.zip

    def __len__(self) -> int:
        return len(self.points)

    def __iter__(self) -> Iterator[SweepPoint]:
        return iter(self.points)

    # -- progress ------------------------------------------------------------------------------------------------------
    def done(self) -> bool:
        return self._finished.is_set()

    @property
    def version(self) -> int:
        """Changes whenever any point changed, so pollers redraw only when something moved."""
        return sum(point.task.version for point in self.points)

    @property
    def elapsed(self) -> float:
        """Seconds from submission to the last point's end (or to now while points run)."""
        ends = [point.task.finished_at for point in self.points]
        end = max(e for e in ends if e is not None) if None not in ends and ends else time.time()
        return end - self.started_at

    @property
    def servers(self) -> dict[str, int]:
        """Points per server, for the points bound to one so far."""
        return dict(collections.Counter(p.task.server for p in self.points if p.task.server is not None))

    def counts(self) -> dict[str, int]:
        """Points per status (``waiting``, ``queued``, ``running``, ``success``, ``error``, ``cancelled``, ...)."""
        return dict(collections.Counter(point.task.status for point in self.points))

    def wait(self, timeout: float | None = None) -> Sweep:
        """Block until every point finished (through the engine's ``blocking_wait``, so a notebook's widget buttons
        keep answering); never raises a point's error (see ``errors``). A timeout raises ``TimeoutError`` (the
        points keep running); a kernel interrupt cancels every unfinished point."""
        try:
            finished = blocking_wait(self._finished, timeout)
        except BaseException:  # KeyboardInterrupt and friends: nothing may keep running
            self.cancel()
            raise
        if not finished:
            pending = sum(1 for p in self.points if not p.task.done())
            raise TimeoutError(
                f"{pending} of {len(self.points)} sweep points did not finish within {timeout} s (they keep running)"
            )
        return self

    def cancel(self) -> None:
        """Cancel every point that has not finished, on every server, in one hop to the engine. Returns quickly
        (the servers get ``cancel_wait`` seconds in all to confirm); finished points keep their results."""
        unfinished = [point.task for point in self.points if not point.task.done()]
        if unfinished:
            self._cancel(unfinished)

    # -- results -------------------------------------------------------------------------------------------------------
    @property
    def results(self) -> list[tuple[dict[str, Any], Result]]:
        """``(params, Result)`` of every point that succeeded so far, in point order."""
        return [(point.params, result) for point in self.points if (result := point.result) is not None]

    @property
    def errors(self) -> list[tuple[dict[str, Any], BaseException]]:
        """``(params, error)`` of every point that failed or was cancelled, in point order."""
        return [(point.params, point.task.error) for point in self.points if point.task.error is not None]

    def dataframe(self) -> Any:
        """A pandas DataFrame, one row per point: the params as columns, then ``status``, ``server``, ``prompt_id``,
        ``elapsed`` (seconds from submission to its end), ``error`` (its message) and ``result``."""
        try:
            pd = importlib.import_module("pandas")  # optional, and untyped: imported on use
        except ImportError:
            raise ImportError(
                "Sweep.dataframe() needs pandas (pip install pandas); Sweep.results needs nothing"
            ) from None
        rows = []
        for point in self.points:
            task = point.task
            rows.append(
                {
                    **point.params,
                    "status": task.status,
                    "server": task.server,
                    "prompt_id": task.prompt_id,
                    "elapsed": round(task.elapsed, 3) if task.done() else None,
                    "error": _message(task.error),
                    "result": point.result,
                }
            )
        return pd.DataFrame(rows, index=pd.Index([p.index for p in self.points], name="point"))

    def save(self, folder: str | Path) -> list[Path]:
        """Write every output file of every successful point under ``folder``, named by its values
        (``seed=3_cfg=7.png``; ``_1``, ``_2``, ... when a point has several files); never overwrites a file."""
        root = Path(folder).resolve()
        saved = []
        for point in self.points:
            result = point.result
            if result is None:
                continue
            stem = file_stem(self.axes, point.coords) or f"point-{point.index}"
            files = result.fetch()
            for k, file in enumerate(files, start=1):
                suffix = Path(safe_name(file.filename, fallback="output")).suffix
                name = f"{stem}_{k}{suffix}" if len(files) > 1 else f"{stem}{suffix}"
                saved.append(write_new(root, name, file.data))
        return saved

    def __repr__(self) -> str:
        counted = " ".join(f"{status}={n}" for status, n in sorted(self.counts().items()))
        shape = "x".join(str(n) for n in self.shape) + (" zipped" if self.zip else "")
        return f"<Sweep {len(self.points)} points ({shape}) {counted} elapsed={self.elapsed:.2f}s>"


def file_stem(axes: tuple[Axis, ...], coords: tuple[int, ...]) -> str:
    """``seed=3_cfg=7``: each axis's short name and value, made safe for a file name (no separators, bounded)."""
    parts = [f"{_safe(axis.name)}={_safe(format_value(axis.values[i]))}" for axis, i in zip(axes, coords, strict=True)]
    return "_".join(parts)[:_STEM_MAX].strip(" .")


def _safe(text: str) -> str:
    return safe_name(text.replace("/", "_").replace("\\", "_"), fallback="_")


def _message(error: BaseException | None) -> str | None:
    if error is None:
        return None
    return str(error) if isinstance(error, ComfyError) else f"{type(error).__name__}: {error}"
