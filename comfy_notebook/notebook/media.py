"""A result's files as inline media: pure functions from a ``Result`` to HTML pieces and a static PNG, no widgets.

Stills, GIFs and animated WEBP/PNG become ``<img>`` (browsers animate the last three), videos ``<video controls>``,
audio ``<audio controls>``, text an escaped ``<pre>``, anything else a line with its name, kind and size. Bytes go
inline as data URIs whose MIME type comes from our own table or the bytes, never from the server, so a saved
notebook plays them without a kernel; a size budget keeps notebooks reasonable and says what it left out.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from PIL import Image as PILImage

from comfy_notebook.core.errors import ComfyError
from comfy_notebook.core.outputs import NOUNS, count_media, sniff_mime

if TYPE_CHECKING:
    from comfy_notebook.engine.files import OutputFile
    from comfy_notebook.engine.task import Result

#: One file larger than this is listed, not embedded.
MAX_INLINE_FILE_BYTES = 8 * 1024 * 1024
#: All of a result's embedded files together.
MAX_INLINE_TOTAL_BYTES = 24 * 1024 * 1024
#: A string shown longer than this is cut (the whole of it is in ``result.texts``).
MAX_TEXT_CHARS = 20_000
#: The static preview: at most this many tiles of at most this many pixels a side.
PREVIEW_TILES = 8
PREVIEW_SIZE = 256


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def image_mime(data: bytes) -> str:
    """The image type the bytes show (PNG when they show none)."""
    mime = sniff_mime(data)
    return mime if mime is not None and mime.startswith("image/") else "image/png"


def human_size(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    if size < 1024 * 1024:
        return f"{size / 1024:.1f} kB"
    return f"{size / (1024 * 1024):.1f} MB"


def where(file: OutputFile) -> str:
    return f"{file.subfolder}/{file.filename}" if file.subfolder else file.filename


def noun(file: OutputFile) -> str:
    """``video``, ``3D model``, ``other file`` ..."""
    return NOUNS.get(file.media, "other file")


def counts(result: Result) -> str:
    """``2 images, 1 video, 2 texts``, or ``no outputs``."""
    parts = [count_media(file.media for file in result.files)]
    texts = sum(len(strings) for strings in result.texts.values())
    if texts:
        parts.append(f"{texts} text{'s' if texts != 1 else ''}")
    return ", ".join(part for part in parts if part) or "no outputs"


def available(result: Result) -> tuple[list[OutputFile], str]:
    """The files whose bytes are here (fetching the rest now), and why any are missing; never raises, so a result
    whose server went away still renders."""
    try:
        return result.fetch(), ""
    except ComfyError as exc:  # the server stopped answering: show what came with the result
        return [file for file in result.files if file.fetched], str(exc)


@dataclass
class Budget:
    """Bytes left for embedding, and how many visual items may still be shown."""

    total: int = MAX_INLINE_TOTAL_BYTES
    items: int = 16
    skipped: list[str] = field(default_factory=list)


def _data_uri(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def file_line(file: OutputFile, note: str) -> str:
    """A file that is not embedded: its name, kind, type and size (or why there is none)."""
    return (
        f'<div class="comfy-result-file comfy-media-{esc(file.media)}"><code>{esc(where(file))}</code> &middot; '
        f"{esc(file.kind)} &middot; {esc(file.mime)} &middot; {esc(note)}</div>"
    )


def file_html(file: OutputFile, budget: Budget) -> str:
    """One file whose bytes are here, inline when it is media and fits the budget, else a line."""
    data = file.data
    size = human_size(len(data))
    if file.media not in ("image", "animation", "video", "audio"):
        return file_line(file, size)
    if budget.items <= 0:
        budget.skipped.append(where(file))
        return ""
    if len(data) > MAX_INLINE_FILE_BYTES or len(data) > budget.total:
        why = (
            f"over the {human_size(MAX_INLINE_FILE_BYTES)} limit per file"
            if len(data) > MAX_INLINE_FILE_BYTES
            else f"the {human_size(MAX_INLINE_TOTAL_BYTES)} limit per result is reached"
        )
        return file_line(file, f"{size}, not shown inline ({why}): use result.files or result.save()")
    budget.total -= len(data)
    budget.items -= 1
    name = esc(where(file))
    css = f"comfy-result-media comfy-media-{esc(file.media)}"
    if file.media in ("image", "animation"):
        uri = _data_uri(image_mime(data), data)
        return f'<img src="{uri}" class="{css}" title="{name}" alt="{name}" style="max-width:100%;margin:2px"/>'
    uri = _data_uri(file.mime, data)
    if file.media == "video":
        return (
            f'<video src="{uri}" class="{css}" controls loop playsinline preload="metadata" title="{name}" '
            f'style="max-width:100%;margin:2px"></video>'
        )
    return f'<div class="{css}"><audio src="{uri}" controls preload="metadata" title="{name}"></audio> {name}</div>'


def texts_html(result: Result) -> str:
    """Each node's strings as escaped preformatted text."""
    blocks = []
    for node_id, strings in result.texts.items():
        for text in strings:
            shown = text if len(text) <= MAX_TEXT_CHARS else text[:MAX_TEXT_CHARS] + f"... ({len(text)} characters)"
            blocks.append(
                f'<pre class="comfy-result-text" title="node {esc(node_id)}" '
                f'style="white-space:pre-wrap;margin:2px 0">{esc(shown)}</pre>'
            )
    return "".join(blocks)


def preview_png(result: Result) -> str | None:
    """A small PNG strip of the still images and the first frame of each animation, base64, for notebook viewers
    that show no HTML; None when there is nothing to show. Uses only bytes already here."""
    tiles = []
    for file in result.files:
        if file.media not in ("image", "animation") or not file.fetched:
            continue
        try:
            with PILImage.open(io.BytesIO(file.data)) as image:
                image.seek(0)
                tile = image.convert("RGBA")
        except (OSError, ValueError, ComfyError):  # bytes PIL cannot read are left out, never an error
            continue
        tile.thumbnail((PREVIEW_SIZE, PREVIEW_SIZE))
        tiles.append(tile)
        if len(tiles) == PREVIEW_TILES:
            break
    if not tiles:
        return None
    gap = 4
    width = sum(tile.width for tile in tiles) + gap * (len(tiles) - 1)
    strip = PILImage.new("RGBA", (width, max(tile.height for tile in tiles)), (0, 0, 0, 0))
    x = 0
    for tile in tiles:
        strip.paste(tile, (x, 0))
        x += tile.width + gap
    buffer = io.BytesIO()
    strip.save(buffer, format="PNG", optimize=True)
    return base64.b64encode(buffer.getvalue()).decode("ascii")
