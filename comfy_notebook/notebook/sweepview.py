"""A sweep as HTML and text: one tile per point, the header line, the static grid; pure functions, no widgets.

The live grid (``grid.py``) shows these tiles one widget each; a saved notebook, nbconvert and terminal IPython get
the same tiles as one static table (two axes: rows = first axis, columns = second) or a wrapped gallery (one axis,
three or more, or a zipped sweep), with thumbnails inline as data URIs. Clicking a thumbnail opens the image at full
size in place (``<details>``: no script, so it works in a saved notebook too); a second click closes it.
Thumbnails are made once per point from bytes already here, so building them never does I/O unless asked to.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import TYPE_CHECKING

from PIL import Image as PILImage

from comfy_notebook.core.errors import ComfyError, ExecutionError, ValidationError
from comfy_notebook.core.sweep import format_value
from comfy_notebook.notebook import media, render, theme

if TYPE_CHECKING:
    from comfy_notebook.engine.sweep import Sweep, SweepPoint

#: Thumbnail box, in CSS pixels (the image is scaled to fit, keeping its aspect).
THUMB = 128
#: Full-size images embedded for the click-to-zoom view, all points together; beyond it tiles keep the thumbnail.
MAX_FULL_TOTAL_BYTES = media.MAX_INLINE_TOTAL_BYTES
TILE_WIDTH = THUMB + 12  # border-box: 5 px padding and 1 px border a side
_EMBEDDABLE = frozenset({"image/png", "image/jpeg", "image/webp", "image/gif"})

#: The zoom: a click on the thumbnail (the ``<summary>``) opens the full image over the thumbnail's place.
ZOOM_CSS = (
    "<style>"
    "details.comfy-zoom>summary{list-style:none;cursor:zoom-in;outline:none}"
    "details.comfy-zoom>summary::-webkit-details-marker{display:none}"
    "details.comfy-zoom[open]>summary{cursor:zoom-out}"
    "details.comfy-zoom[open] .comfy-thumb{display:none!important}"
    "details.comfy-zoom[open] .comfy-full{display:block!important}"
    ".comfy-tile:has(details.comfy-zoom[open]){width:auto!important}"
    "</style>"
)


@dataclass(frozen=True)
class Thumb:
    """A point's picture: the thumbnail and, when it fits the budget, the full image, as data URIs."""

    thumb: str
    full: str | None
    name: str


def _data_uri(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


class Thumbs:
    """Each point's ``Thumb``, made once. ``get`` uses only bytes already here unless ``fetch`` (never on the
    engine's loop thread: fetching is blocking HTTP)."""

    def __init__(self) -> None:
        self._made: dict[int, Thumb | None] = {}
        self.full_budget = MAX_FULL_TOTAL_BYTES

    def has(self, point: SweepPoint) -> bool:
        return point.index in self._made

    def get(self, point: SweepPoint, *, fetch: bool = False) -> Thumb | None:
        if point.index in self._made:
            return self._made[point.index]
        result = point.result
        if result is None:
            return None
        if fetch:
            media.available(result)  # fetch what is missing (never raises)
        pictures = [f for f in result.files if f.media in ("image", "animation")]
        picture = next((f for f in pictures if f.is_still_image), pictures[0] if pictures else None)
        if picture is None:
            self._made[point.index] = None  # a point without images: nothing to wait for
            return None
        if not picture.fetched:
            return None  # its bytes come later (quiet sweeps): try again then
        try:
            data = picture.data
            thumb, size = self._thumbnail(data)
        except (OSError, ValueError, ComfyError):
            self._made[point.index] = None
            return None
        mime = media.image_mime(data)
        full = None
        larger = max(size) > THUMB  # zooming into a picture no larger than its thumbnail shows nothing new
        if larger and mime in _EMBEDDABLE and len(data) <= min(media.MAX_INLINE_FILE_BYTES, self.full_budget):
            self.full_budget -= len(data)
            full = _data_uri(mime, data)
        made = Thumb(thumb, full, media.where(picture))
        self._made[point.index] = made
        return made

    @staticmethod
    def _thumbnail(data: bytes) -> tuple[str, tuple[int, int]]:
        """The thumbnail's data URI and the picture's own size."""
        with PILImage.open(io.BytesIO(data)) as image:
            image.seek(0)
            size = image.size
            picture = image.convert("RGBA" if "A" in image.getbands() else "RGB")
        picture.thumbnail((THUMB * 2, THUMB * 2))  # twice the box: sharp on high-density screens
        buffer = io.BytesIO()
        if picture.mode == "RGBA":
            picture.save(buffer, format="PNG", optimize=True)
            return _data_uri("image/png", buffer.getvalue()), size
        picture.save(buffer, format="JPEG", quality=85)
        return _data_uri("image/jpeg", buffer.getvalue()), size


# -- pieces -----------------------------------------------------------------------------------------------------------
def short_server(url: str | None) -> str:
    """``127.0.0.1:8188`` from ``http://127.0.0.1:8188``: tiles are narrow."""
    text = render.public_url(url)
    return text.split("://", 1)[-1].rstrip("/")


def _bar(fraction: float) -> str:
    width = f"{max(0.0, min(1.0, fraction)) * 100:.0f}%"
    return (
        '<div class="comfy-tile-bar" style="height:4px;margin:4px 0 2px;border-radius:2px;'
        f'background:rgba(127, 127, 127, 0.25)"><div style="width:{width};height:100%;border-radius:2px;'
        f'background:{theme.BRAND}"></div></div>'
    )


def _picture(thumb: Thumb) -> str:
    box = f"width:{THUMB}px;height:{THUMB}px;object-fit:contain;display:block;border-radius:3px"
    name = theme.esc(thumb.name)
    small = f'<img class="comfy-thumb" src="{thumb.thumb}" alt="{name}" title="{name}" style="{box}"/>'
    if thumb.full is None:
        return small
    full = (
        f'<img class="comfy-full" src="{thumb.full}" alt="{name}" title="{name} (click to close)" '
        'style="display:none;max-width:none;border-radius:3px"/>'
    )
    return f'<details class="comfy-zoom"><summary title="click for full size">{small}{full}</summary></details>'


def _state(point: SweepPoint) -> str:
    """The badge (with a short fact beside it), then small lines: the server, the progress bar, the error."""
    task = point.task
    status = task.status
    where = theme.esc(short_server(task.server))
    badge = theme.badge
    tone, css = theme.state_tone(status), f"comfy-state comfy-state-{status}"
    side, below = "", ""
    if status == "waiting":
        place = f" #{task.queue_position + 1}" if task.queue_position is not None else ""
        return badge(f"waiting{place}", tone, css, title="waiting here for a server with room")
    if status == "pending":
        head, below = badge("sending", tone, css), _small(f"to {where}") if where else ""
    elif status == "queued":
        head, below = badge("queued", tone, css), _small(f"on {where}")
    elif status == "running":
        progress = task.progress
        if progress is not None and progress.max > 0:
            side = f"{progress.value}/{progress.max}"
        head = badge("running", tone, css)
        below = _bar(progress.fraction if progress is not None else 0.0) + _small(f"on {where}")
    elif status == "success":
        head, side = badge("done", tone, css), render.format_duration(task.elapsed, precise=True)
        below = _small(where)
    else:
        head, below = badge(status, tone, css), _small(where) if where else ""
        if task.error is not None and status == "error":
            line, full = error_summary(task.error)
            below += (
                f'<div class="comfy-tile-error" title="{theme.esc(full)}" style="font-size:0.85em;margin-top:3px;'
                f'color:{theme.TONES["error"][0]}">{theme.esc(line)}</div>'
            )
    beside = f' <span style="font-size:0.85em;opacity:0.85">{theme.esc(side)}</span>' if side else ""
    return f"<div>{head}{beside}</div>{below}"


def _small(html: str) -> str:
    return f'<div class="comfy-tile-where" style="font-size:0.85em;opacity:0.8;margin-top:1px">{html}</div>'


def error_summary(error: BaseException) -> tuple[str, str]:
    """(what a narrow tile shows, its tooltip): a node's exception as ``RuntimeError: message``, a refused input
    as ``SlowSteps steps: Value 0 smaller than min of 1`` (the tile already names the server), anything else by
    its message's first line."""
    full = render.first_line(render.scrub(str(error)), 300)
    short = full
    if isinstance(error, ExecutionError) and error.exception_message is not None:
        short = f"{error.exception_type or 'Exception'}: {error.exception_message}"
    elif isinstance(error, ValidationError):
        found = [(node, e) for node in error.nodes for e in node.errors]
        if found:
            node, first = found[0]
            where = f"{node.class_type} {first.input_name}" if first.input_name else node.class_type
            short = f"{where}: {first.message}"
            full = "; ".join(f"{n.class_type} #{n.node_id} {e.input_name or ''}: {e.message}" for n, e in found)
    return render.first_line(render.scrub(short), 140), render.first_line(render.scrub(full), 300)


def tile_html(point: SweepPoint, thumb: Thumb | None, *, label: str | None) -> str:
    """One point: its label (in a gallery; a table's headers carry it), the picture when done, the state badge."""
    title = theme.esc(point.label)
    head = (
        f'<div class="comfy-tile-label" style="font-weight:600;margin-bottom:3px">{theme.esc(label)}</div>'
        if label
        else ""
    )
    picture = _picture(thumb) if thumb is not None else ""
    style = (
        f"box-sizing:border-box;width:{TILE_WIDTH}px;padding:5px;margin:3px;border:1px solid {theme.BORDER};"
        f"border-radius:5px;background:{theme.RAISED};line-height:1.4;font-size:var(--jp-ui-font-size1, 13px);"
        f"color:{theme.TEXT};font-family:{theme.FONT};white-space:normal;overflow-wrap:anywhere;text-align:left"
    )
    return (
        f'<div class="comfy-tile comfy-tile-{theme.esc(point.task.status)}" title="{title}" style="{style}">'
        f"{head}{picture}{_state(point)}</div>"
    )


def is_table(sweep: Sweep) -> bool:
    """Two axes (not zipped) read as a table; anything else is a gallery with full labels."""
    return len(sweep.axes) == 2 and not sweep.zip


def tile_label(sweep: Sweep, point: SweepPoint) -> str | None:
    return None if is_table(sweep) else point.label


def axis_values(sweep: Sweep, axis: int) -> list[str]:
    return [format_value(value) for value in sweep.axes[axis].values]


def corner_html(sweep: Sweep) -> str:
    """The table's top-left cell: which axis runs down and which across."""
    down, across = (theme.esc(axis.name) for axis in sweep.axes)
    return f'<span class="comfy-axes" style="opacity:0.8">{down} &darr; &nbsp; {across} &rarr;</span>'


def header_counts(sweep: Sweep) -> dict[str, int]:
    counts = sweep.counts()
    finished = sum(n for status, n in counts.items() if status in ("success", "error", "interrupted", "cancelled"))
    return {**counts, "finished": finished}


def header_html(sweep: Sweep) -> str:
    """``[7/12 done] sweep 4 x 3 · running 2 · waiting 3 · 1 failed · by server: a 4, b 3 · elapsed 12 s``: the
    badge counts the points that succeeded; its colour says whether the sweep still runs (blue), ended well
    (green), ended with failures or cancellations (orange) or with nothing done (red)."""
    counts = header_counts(sweep)
    total = len(sweep)
    succeeded = counts.get("success", 0)
    errors = counts.get("error", 0) + counts.get("interrupted", 0)
    cancelled = counts.get("cancelled", 0)
    if counts["finished"] < total:
        tone = "busy"
    elif succeeded == total:
        tone = "ok"
    elif succeeded == 0 and errors:
        tone = "error"
    else:
        tone = "warn"
    shape = " &times; ".join(str(n) for n in sweep.shape) + (" zipped" if sweep.zip else "")
    pieces = [theme.badge(f"{succeeded}/{total} done", tone, "comfy-sweep-progress"), f"sweep {shape}"]
    for status in ("running", "queued", "waiting", "pending"):
        if counts.get(status):
            pieces.append(f"{status} {counts[status]}")
    if errors:
        pieces.append(f'<span style="color:{theme.TONES["error"][0]}">{errors} failed</span>')
    if cancelled:
        pieces.append(f"{cancelled} cancelled")
    servers = sweep.servers
    if servers:
        by = ", ".join(f"{theme.esc(short_server(url))} {n}" for url, n in sorted(servers.items()))
        pieces.append(f'<span class="comfy-sweep-servers">by server: {by}</span>')
    pieces.append(f"elapsed {render.format_duration(sweep.elapsed, precise=counts['finished'] == total)}")
    return (
        f'<div class="comfy-sweep-summary" style="{theme.box_style(padding="2px 0")};line-height:1.6">'
        f"{' &middot; '.join(pieces)}</div>"
    )


# -- the whole grid, static -------------------------------------------------------------------------------------------
def sweep_html(sweep: Sweep, thumbs: Thumbs, *, fetch: bool = False) -> str:
    """The grid as static HTML (saved notebooks, nbconvert, front ends without widgets)."""
    tiles = [tile_html(p, thumbs.get(p, fetch=fetch), label=tile_label(sweep, p)) for p in sweep.points]
    if is_table(sweep):
        rows_, columns = (axis_values(sweep, 0), axis_values(sweep, 1))
        head = f"<th>{corner_html(sweep)}</th>" + "".join(f"<th>{theme.esc(c)}</th>" for c in columns)
        by_coords = {p.coords: tile for p, tile in zip(sweep.points, tiles, strict=True)}
        body = "".join(
            f"<tr><th>{theme.esc(row)}</th>"
            + "".join(f"<td>{by_coords.get((r, c), '')}</td>" for c in range(len(columns)))
            + "</tr>"
            for r, row in enumerate(rows_)
        )
        grid = f'<table class="comfy-sweep-table"><tr>{head}</tr>{body}</table>'
    else:
        flex = "display:flex;flex-wrap:wrap;align-items:flex-start"
        grid = f'<div class="comfy-sweep-gallery" style="{flex}">{"".join(tiles)}</div>'
    css = theme.table_css("comfy-sweep-table") + ZOOM_CSS
    return (
        f'<div class="comfy-sweep" style="{theme.box_style()}">{css}{header_html(sweep)}'
        f'<div style="overflow-x:auto">{grid}</div></div>'
    )


def sweep_text(sweep: Sweep) -> str:
    """The sweep as plain text: a summary line, then one line per point."""
    counts = header_counts(sweep)
    shape = "x".join(str(n) for n in sweep.shape) + (" zipped" if sweep.zip else "")
    states = ", ".join(f"{n} {status}" for status, n in sorted(sweep.counts().items()))
    servers = ", ".join(f"{render.public_url(url)} {n}" for url, n in sorted(sweep.servers.items()))
    lines = [
        f"comfy sweep {shape}: {counts.get('success', 0)}/{len(sweep)} done ({states})"
        + (f"; by server: {servers}" if servers else "")
        + f"; elapsed {render.format_duration(sweep.elapsed, precise=sweep.done())}"
    ]
    width = max((len(p.label) for p in sweep.points), default=0)
    for point in sweep.points:
        task = point.task
        where = f"  {render.public_url(task.server)}" if task.server else ""
        error = f"  {render.first_line(render.scrub(str(task.error)), 120)}" if task.error is not None else ""
        lines.append(f"  {point.label.ljust(width)}  {task.status}{where}{error}")
    return "\n".join(lines)
