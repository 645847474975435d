"""The per-task progress widget: state line, progress bar, latest preview image.

The state line says where the prompt is ("waiting for a server (position 2)" in the client-side queue of pool
mode, "queued on URL", "running on URL"), the node and step, and after a failover where it moved and why ("moved
from A to B: A stopped answering"); the final line counts the attempts when there was more than one.

It is refreshed from the engine's loop thread (``Engine.every``), so it keeps moving while the cell that started
the task blocks, and after a ``--no-wait`` cell has returned. Widget traits are written only when their value
changed (each write is a comm message), and the ticker stops itself once the task is done.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import ipywidgets as widgets

from comfy_notebook.engine.engine import Engine
from comfy_notebook.engine.task import Task
from comfy_notebook.notebook import render

CSS_BOX = "comfy-progress"
CSS_TEXT = "comfy-progress-text"
CSS_BAR = "comfy-progress-bar"
CSS_PREVIEW = "comfy-preview"


class ProgressWidget:
    """Live view of one ``Task``; ``close()`` stops the ticker and closes the widgets."""

    def __init__(self, task: Task, engine: Engine, *, interval: float = 0.15) -> None:
        self.task = task
        self.text = widgets.HTML()
        self.text.add_class(CSS_TEXT)
        self.bar = widgets.IntProgress(value=0, min=0, max=1)
        self.bar.add_class(CSS_BAR)
        self.preview = widgets.Image(format="jpeg", layout=widgets.Layout(display="none", max_width="320px"))
        self.preview.add_class(CSS_PREVIEW)
        self.box = widgets.VBox([self.text, self.bar, self.preview])
        self.box.add_class(CSS_BOX)
        self._lock = threading.Lock()
        self._last_preview: tuple[str, bytes] | None = None
        self._closed = False
        self._finished = False
        self._cancel: Callable[[], None] | None = None
        self.refresh()
        if not task.done():
            self._cancel = engine.every(interval, self._tick)
            if self._finished:  # the task ended before ``every`` returned the handle
                self._stop_ticker()

    # -- refreshing ---------------------------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Copy the task's state into the widgets; callable from any thread."""
        with self._lock:
            if self._closed:
                return
            task = self.task
            html = render.task_html(task)
            if self.text.value != html:
                self.text.value = html
            value, maximum = self._bar_values(task)
            if self.bar.max != maximum:
                self.bar.max = maximum
            if self.bar.value != value:
                self.bar.value = value
            style = render.bar_style(task.status)
            if self.bar.bar_style != style:
                self.bar.bar_style = style
            preview = task.preview
            if preview is not None and preview is not self._last_preview:
                self._last_preview = preview
                mime, data = preview
                self.preview.format = mime.split("/", 1)[-1] or "jpeg"
                self.preview.value = data
            # Shown while the prompt runs; on success the real images follow, so the stand-in goes away.
            display = "" if preview is not None and task.status != "success" else "none"
            if self.preview.layout.display != display:
                self.preview.layout.display = display

    @staticmethod
    def _bar_values(task: Task) -> tuple[int, int]:
        if task.status == "success":
            return 1, 1
        progress = task.progress
        if progress is None or progress.max <= 0:
            return 0, 1
        return min(progress.value, progress.max), progress.max

    def _tick(self) -> None:
        done = self.task.done()  # read before refreshing, so the last refresh sees the final state
        self.refresh()
        if done:
            self._finished = True
            self._stop_ticker()

    def _stop_ticker(self) -> None:
        cancel, self._cancel = self._cancel, None
        if cancel is not None:
            cancel()

    def close(self) -> None:
        self._stop_ticker()
        with self._lock:
            self._closed = True
            for widget in (self.box, self.text, self.bar, self.preview):
                widget.close()

    @property
    def closed(self) -> bool:
        return self._closed

    # -- display ------------------------------------------------------------------------------------------------------
    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        """The widget view plus static text/HTML, for front ends without widgets (nbconvert, GitHub)."""
        bundle: dict[str, Any] = dict(self.box._repr_mimebundle_(**kwargs) or {})
        bundle["text/plain"] = render.task_text(self.task)
        bundle["text/html"] = render.task_html(self.task)
        return bundle

    def __repr__(self) -> str:
        return render.task_text(self.task)
