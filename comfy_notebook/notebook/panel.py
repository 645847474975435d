"""The live status panel: lock, connection, pending tasks, one row per server, and a Reset button.

One instance per kernel (the magics own it). It is refreshed about once a second from the engine's loop thread,
so it keeps updating while the kernel is idle and while a ``%%comfy`` cell blocks; the HTML is written only when
it changed. Reset runs in the click handler (the kernel's main thread, when it is not busy with a cell).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import ipywidgets as widgets

from comfy_notebook import api
from comfy_notebook.engine.engine import Engine
from comfy_notebook.notebook import render

CSS_PANEL = "comfy-status-panel"
CSS_HTML = "comfy-status-html"
CSS_NOTE = "comfy-status-note"
CSS_RESET = "comfy-reset-button"


class StatusPanel:
    """``get_status()`` as a widget; ``close()`` cancels the refresher and closes the widgets."""

    def __init__(self, engine: Engine, *, interval: float = 1.0) -> None:
        self.engine = engine
        self.html = widgets.HTML()
        self.html.add_class(CSS_HTML)
        self.note = widgets.HTML()
        self.note.add_class(CSS_NOTE)
        self.button = widgets.Button(description="Reset", tooltip="clear the server lock and cancel pending tasks")
        self.button.add_class(CSS_RESET)
        self.button.on_click(self._on_reset)
        self.box = widgets.VBox([self.html, widgets.HBox([self.button, self.note])])
        self.box.add_class(CSS_PANEL)
        self._lock = threading.Lock()
        self._closed = False
        self.refresh()
        self._cancel: Callable[[], None] | None = engine.every(interval, self.refresh)

    def refresh(self) -> None:
        """Read the status and write it if it changed; quick, safe on the loop thread and elsewhere."""
        if self._closed or self.engine.closed:
            return
        self.show(self.engine.get_status())  # on the loop thread this is ``status_now()``, no hop

    def show(self, status: dict[str, Any]) -> None:
        html = render.status_html(status)
        with self._lock:
            if not self._closed and self.html.value != html:
                self.html.value = html

    def reset(self) -> str:
        """The manual reset, reported in the panel: ``reset: lock cleared (was URL), N tasks cancelled (time)``."""
        self.button.disabled = True
        try:
            before = self.engine.get_status()
            after = api.reset()
            outcome = render.reset_outcome(before, after)
            self.show(after)
        except Exception as exc:
            outcome = f"reset failed: {render.first_line(render.scrub(str(exc)))}"
        finally:
            self.button.disabled = False
        with self._lock:
            if not self._closed:
                self.note.value = render.esc(outcome)
        return outcome

    def _on_reset(self, _button: widgets.Button) -> None:
        self.reset()

    def close(self) -> None:
        cancel, self._cancel = self._cancel, None
        if cancel is not None:
            cancel()
        with self._lock:
            self._closed = True
            for widget in self.box.children[1].children:
                widget.close()
            for widget in (*self.box.children, self.box):
                widget.close()

    @property
    def closed(self) -> bool:
        return self._closed

    # -- display ------------------------------------------------------------------------------------------------------
    def _status(self) -> dict[str, Any]:
        return {} if self.engine.closed else self.engine.get_status()

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        """The widget view plus a static snapshot for front ends without widgets."""
        bundle: dict[str, Any] = dict(self.box._repr_mimebundle_(**kwargs) or {})
        status = self._status()
        bundle["text/plain"] = render.status_text(status)
        bundle["text/html"] = render.status_html(status)
        return bundle

    def _repr_html_(self) -> str:
        return render.status_html(self._status())

    def __repr__(self) -> str:
        return render.status_text(self._status())
