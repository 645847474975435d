"""The live grid of a sweep: one tile per point, a header line and a Cancel button.

Two axes lay out as a table (rows = first axis, columns = second, headers = their values); one axis, three or more,
or a zipped sweep as a wrapped gallery whose tiles carry their full labels. Each tile shows its state badge
(waiting, queued, running on a server with a progress bar, done, error, cancelled), the thumbnail once done (click
for full size) or the error's first line.

Like the progress widget it is refreshed from the engine's loop thread (``Engine.every``), never from the socket
path, and only when ``sweep.version`` moved (or the header's elapsed second did): each tile is its own HTML widget
and is rewritten only when its point changed, so a running point's progress costs one small comm message. A few
thumbnails are made per tick, from bytes already fetched; ``finish()`` (the cell's own thread) makes the rest and
leaves a static HTML snapshot for the saved notebook.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import ipywidgets as widgets

from comfy_notebook.engine.engine import Engine
from comfy_notebook.engine.sweep import Sweep
from comfy_notebook.notebook import sweepview, theme

CSS_GRID = "comfy-sweep-grid"
CSS_HEADER = "comfy-sweep-header"
CSS_TILE = "comfy-sweep-tile"
CSS_CANCEL = "comfy-sweep-cancel"
#: Thumbnails made per refresh on the loop thread (each is a decode and a resize: a few ms).
THUMBS_PER_TICK = 4


class SweepGrid:
    """Live view of one ``Sweep``; ``cancel()`` cancels the sweep, ``close()`` stops the ticker."""

    def __init__(self, sweep: Sweep, engine: Engine, *, interval: float = 0.25) -> None:
        self.sweep = sweep
        self.thumbs = sweepview.Thumbs()
        self.header = widgets.HTML()
        self.header.add_class(CSS_HEADER)
        self.cancel_button = widgets.Button(
            description="Cancel",
            icon="stop",
            tooltip="cancel every point of this sweep that has not finished, on every server",
            layout=widgets.Layout(width="auto", height="26px", flex="0 0 auto"),
        )
        self.cancel_button.add_class(CSS_CANCEL)
        self.cancel_button.on_click(self._on_cancel)
        top = widgets.HBox([self.header, self.cancel_button], layout=widgets.Layout(align_items="center"))
        self.tiles = [widgets.HTML() for _ in sweep.points]
        for tile in self.tiles:
            tile.add_class(CSS_TILE)
        self.body = self._layout()
        self.box = widgets.VBox([widgets.HTML(sweepview.ZOOM_CSS), top, self.body])
        self.box.add_class(CSS_GRID)
        self._lock = threading.Lock()
        self._version = -1  # the sweep's version last drawn in full (no thumbnail left for a later tick)
        self._seen = [-1] * len(sweep.points)
        self._header_seen = ""
        self._closed = False
        self._finished = False
        self._ticker: Callable[[], None] | None = None
        self.refresh()
        if not sweep.done():
            self._ticker = engine.every(interval, self._tick)
            if self._finished:
                self._stop_ticker()

    def _layout(self) -> widgets.Box:
        sweep = self.sweep
        if not sweepview.is_table(sweep):
            layout = widgets.Layout(display="flex", flex_flow="row wrap", align_items="flex-start")
            return widgets.Box(list(self.tiles), layout=layout)
        rows, columns = sweepview.axis_values(sweep, 0), sweepview.axis_values(sweep, 1)
        cells: list[widgets.Widget] = [_head(sweepview.corner_html(sweep))]
        cells += [_head(theme.esc(value)) for value in columns]
        by_coords = {point.coords: tile for point, tile in zip(sweep.points, self.tiles, strict=True)}
        for r, row in enumerate(rows):
            cells.append(_head(theme.esc(row)))
            cells += [by_coords.get((r, c)) or widgets.HTML() for c in range(len(columns))]
        template = f"max-content repeat({len(columns)}, max-content)"  # no track stretches to fill the row
        layout = widgets.Layout(
            grid_template_columns=template, grid_gap="0px 2px", align_items="flex-start", justify_content="flex-start"
        )
        return widgets.GridBox(cells, layout=layout)

    # -- refreshing ---------------------------------------------------------------------------------------------------
    def refresh(self, *, fetch: bool = False, thumbs: int | None = None) -> None:
        """Rewrite the tiles whose point changed and the header; callable from any thread. At most ``thumbs`` new
        thumbnails are made (None: all); ``fetch`` fetches missing bytes for them (never on the loop thread)."""
        with self._lock:
            if self._closed:
                return
            sweep = self.sweep
            version = sweep.version
            if version != self._version or fetch:
                self._draw_tiles(fetch, thumbs)
                deferred = any(seen != p.task.version for seen, p in zip(self._seen, sweep.points, strict=True))
                self._version = -1 if deferred else version
            header = sweepview.header_html(sweep)  # also when no point moved: the elapsed time goes on
            if header != self._header_seen:
                self._header_seen = header
                self.header.value = header
            hidden = "none" if sweep.done() else ""
            if self.cancel_button.layout.display != hidden:
                self.cancel_button.layout.display = hidden

    def _draw_tiles(self, fetch: bool, budget: int | None) -> None:
        """Rewrite each tile whose point changed (caller holds the lock); ``budget`` new thumbnails at most."""
        sweep = self.sweep
        for i, point in enumerate(sweep.points):
            task = point.task
            version = task.version
            success = task.status == "success"
            if version == self._seen[i] and not (fetch and success and not self.thumbs.has(point)):
                continue
            thumb = None
            if success:
                if budget is not None and not self.thumbs.has(point):
                    if budget <= 0:
                        continue  # a later tick makes it
                    budget -= 1
                thumb = self.thumbs.get(point, fetch=fetch)
            html = sweepview.tile_html(point, thumb, label=sweepview.tile_label(sweep, point))
            if self.tiles[i].value != html:
                self.tiles[i].value = html
            self._seen[i] = version

    def _tick(self) -> None:
        done = self.sweep.done()  # read first, so the last refresh sees the final state
        self.refresh(thumbs=THUMBS_PER_TICK)
        if done and all(s == p.task.version for s, p in zip(self._seen, self.sweep.points, strict=True)):
            self._finished = True
            self._stop_ticker()

    def finish(self) -> None:
        """The cell is done waiting: the final state with every thumbnail (made here, off the loop thread)."""
        self.refresh(fetch=True)

    def cancel(self) -> int:
        """Cancel every point that has not finished (the Cancel button); returns how many were cancelled."""
        pending = sum(1 for point in self.sweep.points if not point.task.done())
        self.cancel_button.disabled = True
        self.cancel_button.description = "Cancelling"
        self.sweep.cancel()
        self.refresh()  # the header counts them: "3 cancelled"
        return pending

    def _on_cancel(self, _button: widgets.Button) -> None:
        self.cancel()

    def _stop_ticker(self) -> None:
        ticker, self._ticker = self._ticker, None
        if ticker is not None:
            ticker()

    def close(self) -> None:
        self._stop_ticker()
        with self._lock:
            self._closed = True
            for widget in self.box.children[1].children:
                widget.close()
            for widget in self.body.children:
                widget.close()
            for widget in (*self.box.children, self.box):
                widget.close()

    @property
    def closed(self) -> bool:
        return self._closed

    # -- display ------------------------------------------------------------------------------------------------------
    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        """The widget view plus the static grid (thumbnails inline), for saved notebooks and nbconvert."""
        bundle: dict[str, Any] = dict(self.box._repr_mimebundle_(**kwargs) or {})
        bundle["text/plain"] = sweepview.sweep_text(self.sweep)
        bundle["text/html"] = sweepview.sweep_html(self.sweep, self.thumbs)
        return bundle

    def __repr__(self) -> str:
        return sweepview.sweep_text(self.sweep)


def _head(html: str) -> widgets.HTML:
    """A header cell of the table layout (an axis value, or the corner naming the axes)."""
    style = f"{theme.box_style(padding='4px 6px')};font-weight:600;color:{theme.MUTED};line-height:1.4"
    cell = widgets.HTML(f'<div class="comfy-sweep-axis" style="{style}">{html}</div>')
    cell.add_class("comfy-sweep-head")
    return cell
