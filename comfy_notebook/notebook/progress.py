"""The per-task progress widget: state badge and line, progress bar with a Cancel button, latest preview image.

The state line says where the prompt is ("waiting for a server (position 2)" in the client-side queue of pool
mode, "queued on URL", "running on URL"), the node and step, and after a failover where it moved and why ("moved
from A to B: A stopped answering"); the final line counts the attempts when there was more than one.

It is refreshed from the engine's loop thread (``Engine.every``), so it keeps moving while the cell that started
the task blocks, and after a ``--no-wait`` cell has returned. Widget traits are written only when their value
changed (each write is a comm message), and the ticker stops itself once the task is done. Cancel ends this
prompt on its server (the blocking cell then ends with a short "cancelled" message); it hides once the task is
done. When a blocking cell displays the ``Result`` below, ``collapse()`` hides the widget: the Result's summary
says "success, server, elapsed" once, not twice (a failover's "moved from A to B" stays as a one-line note).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import ipywidgets as widgets

from comfy_notebook.engine.engine import Engine
from comfy_notebook.engine.task import Task
from comfy_notebook.notebook import render, theme

CSS_BOX = "comfy-progress"
CSS_TEXT = "comfy-progress-text"
CSS_BAR = "comfy-progress-bar"
CSS_PREVIEW = "comfy-preview"
CSS_CANCEL = "comfy-cancel-button"


def _note_html(task: Task) -> str:
    """What a collapsed widget still says: where a failover moved the prompt (the Result does not carry it)."""
    if not task.moved:
        return ""
    attempts = f" ({len(task.attempts)} attempts)" if len(task.attempts) > 1 else ""
    note = render.esc(render.scrub(task.moved) + attempts)
    style = theme.box_style(padding="2px 0")
    return f'<div class="comfy-task-note" style="{style}">{theme.muted(note, "comfy-moved")}</div>'


def _note_text(task: Task) -> str:
    return f"comfy prompt {task.prompt_id}: {render.scrub(task.moved)}" if task.moved else ""


class ProgressWidget:
    """Live view of one ``Task``; ``close()`` stops the ticker and closes the widgets."""

    def __init__(self, task: Task, engine: Engine, *, interval: float = 0.15) -> None:
        self.task = task
        self.text = widgets.HTML()
        self.text.add_class(CSS_TEXT)
        self.bar = widgets.IntProgress(value=0, min=0, max=1, layout=widgets.Layout(flex="1 1 auto", width="auto"))
        self.bar.add_class(CSS_BAR)
        self.cancel_button = widgets.Button(
            description="Cancel",
            icon="stop",
            tooltip="cancel this prompt on its server",
            layout=widgets.Layout(width="auto", height="26px", flex="0 0 auto"),
        )
        self.cancel_button.add_class(CSS_CANCEL)
        self.cancel_button.on_click(self._on_cancel)
        self.row = widgets.HBox([self.bar, self.cancel_button], layout=widgets.Layout(align_items="center"))
        self.preview = widgets.Image(format="jpeg", layout=widgets.Layout(display="none", max_width="320px"))
        self.preview.add_class(CSS_PREVIEW)
        self.box = widgets.VBox([self.text, self.row, self.preview])
        self.box.add_class(CSS_BOX)
        self._lock = threading.Lock()
        self._last_preview: tuple[str, bytes] | None = None
        self._closed = False
        self._finished = False
        self._collapsed = False
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
            html = _note_html(task) if self._collapsed else render.task_html(task)
            if self.text.value != html:
                self.text.value = html
            _show(self.box, not self._collapsed or bool(html))
            _show(self.row, not self._collapsed)
            _show(self.cancel_button, not task.done())
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

    def collapse(self) -> None:
        """The outcome is displayed below (a blocking cell's ``Result``): hide everything it would repeat."""
        self._collapsed = True
        self.refresh()

    def cancel(self) -> None:
        """Cancel this prompt on its server (the Cancel button); the blocking cell then ends as cancelled."""
        if self.task.done():
            return
        self.cancel_button.disabled = True
        self.cancel_button.description = "Cancelling"
        self.task.cancel()
        self.refresh()

    def _on_cancel(self, _button: widgets.Button) -> None:
        self.cancel()

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
            for widget in (self.box, self.text, self.row, self.bar, self.cancel_button, self.preview):
                widget.close()

    @property
    def closed(self) -> bool:
        return self._closed

    # -- display ------------------------------------------------------------------------------------------------------
    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        """The widget view plus static text/HTML, for front ends without widgets (nbconvert, GitHub)."""
        bundle: dict[str, Any] = dict(self.box._repr_mimebundle_(**kwargs) or {})
        task = self.task
        bundle["text/plain"] = _note_text(task) if self._collapsed else render.task_text(task)
        bundle["text/html"] = _note_html(task) if self._collapsed else render.task_html(task)
        return bundle

    def __repr__(self) -> str:
        return render.task_text(self.task)


def _show(widget: widgets.DOMWidget, visible: bool) -> None:
    display = "" if visible else "none"
    if widget.layout.display != display:
        widget.layout.display = display
