"""What a finished prompt produced: the files and texts in its history entry's ``outputs``, whatever node wrote them.

ComfyUI records each output node's ``ui`` dict as it is. Files are lists of ``{filename, subfolder, type}`` under
a key that says what they are (``images``, ``gifs`` from VideoHelperSuite, ``audio``, ``3d``, ...); animated WEBP
and PNG, and videos from ``SaveVideo``/``SaveWEBM``, come as ``images`` next to ``animated: [true]``; text is a
list of strings under ``text``. Everything here is data from the server: names are never paths until
``core.paths`` made them safe, and malformed entries are skipped rather than trusted or raised on.
"""

from __future__ import annotations

import posixpath
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

#: The file's extension -> MIME type. Ours rather than ``mimetypes``', whose answers depend on the machine.
_MIME_BY_EXTENSION = {
    "png": "image/png",
    "apng": "image/apng",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
    "gif": "image/gif",
    "bmp": "image/bmp",
    "tif": "image/tiff",
    "tiff": "image/tiff",
    "avif": "image/avif",
    "svg": "image/svg+xml",
    "mp4": "video/mp4",
    "m4v": "video/mp4",
    "webm": "video/webm",
    "mov": "video/quicktime",
    "mkv": "video/x-matroska",
    "avi": "video/x-msvideo",
    "wav": "audio/wav",
    "flac": "audio/flac",
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "ogg": "audio/ogg",
    "m4a": "audio/mp4",
    "aac": "audio/aac",
    "glb": "model/gltf-binary",
    "gltf": "model/gltf+json",
    "obj": "model/obj",
    "stl": "model/stl",
    "ply": "model/ply",
    "fbx": "application/octet-stream",
    "txt": "text/plain",
    "json": "application/json",
    "safetensors": "application/octet-stream",
}

#: Leading bytes -> MIME type, for names without a known extension.
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"fLaC", "audio/flac"),
    (b"OggS", "audio/ogg"),
    (b"ID3", "audio/mpeg"),
    (b"\x1a\x45\xdf\xa3", "video/webm"),
    (b"glTF", "model/gltf-binary"),
)

OCTET_STREAM = "application/octet-stream"


def mime_from_name(filename: str) -> str | None:
    """The MIME type a file name's extension stands for, or None when it is unknown."""
    _, ext = posixpath.splitext(filename.replace("\\", "/").lower())
    return _MIME_BY_EXTENSION.get(ext.lstrip("."))


def sniff_mime(data: bytes) -> str | None:
    """The MIME type the first bytes show, or None."""
    for magic, mime in _MAGIC:
        if data.startswith(magic):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return "audio/wav"
    if data[4:8] == b"ftyp":
        return "video/mp4"
    return None


def media(mime: str, *, animated: bool = False, kind: str = "images") -> str:
    """What a file is to a viewer: ``image`` (a still), ``animation`` (GIF, animated WEBP/PNG), ``video``,
    ``audio``, ``model`` (3D) or ``other``. VideoHelperSuite's ``gifs`` are animations even without the flag."""
    top = mime.split("/", 1)[0]
    if top == "image":
        return "animation" if animated or kind == "gifs" else "image"
    if top in ("video", "audio", "model"):
        return top
    return "other"


#: Each ``media`` value in reading order, as a noun.
NOUNS = {
    "image": "image",
    "animation": "animation",
    "video": "video",
    "audio": "audio file",
    "model": "3D model",
    "other": "other file",
}


def count_media(medias: Iterable[str]) -> str:
    """``3 images, 1 video, 2 audio files``: how many files of each ``media``, in a fixed order; empty for none."""
    counts = Counter(medias)
    return ", ".join(f"{n} {noun}{'s' if n != 1 else ''}" for key, noun in NOUNS.items() if (n := counts[key]))


@dataclass(frozen=True)
class FileRef:
    """An output file as the server names it: the node that wrote it, the output key it came under (``kind``)
    and whether the node said it is animated. Never joined onto a local path unsanitised."""

    filename: str
    subfolder: str
    type: str
    node_id: str
    kind: str = "images"
    animated: bool = False

    @property
    def mime(self) -> str | None:
        """From the extension; None when it says nothing (the bytes may: ``sniff_mime``)."""
        return mime_from_name(self.filename)


def _node_order(node_id: str) -> tuple[tuple[int, int | str], ...]:
    """Node ids in reading order: ``2`` before ``10``, subgraph ids such as ``12:5`` after their parent ``12``."""
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in node_id.split(":"))


def _nodes(outputs: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The well-formed node entries, in a stable order (the history's own order changes on a cached re-run)."""
    nodes = [(str(node_id), output) for node_id, output in outputs.items() if isinstance(output, dict)]
    return sorted(nodes, key=lambda item: _node_order(item[0]))


def file_refs(outputs: Mapping[str, Any]) -> list[FileRef]:
    """Every file of every output node: any list whose items are dicts with a string ``filename``. Items that are
    not well formed (a non-string subfolder or type, no filename) are skipped."""
    refs = []
    for node_id, output in _nodes(outputs):
        flags = output.get("animated")
        animated = isinstance(flags, list) and any(flag is True for flag in flags)
        for kind, items in output.items():
            if not isinstance(items, list):
                continue
            for item in items:
                if not isinstance(item, dict) or not isinstance(item.get("filename"), str):
                    continue
                subfolder = item.get("subfolder") or ""
                where = item.get("type") or "output"
                if isinstance(subfolder, str) and isinstance(where, str):
                    refs.append(FileRef(item["filename"], subfolder, where, node_id, str(kind), animated))
    return refs


def image_refs(outputs: Mapping[str, Any]) -> list[FileRef]:
    """The files listed under ``images`` (stills, and the animations and videos flagged ``animated``)."""
    return [ref for ref in file_refs(outputs) if ref.kind == "images"]


def text_outputs(outputs: Mapping[str, Any]) -> dict[str, list[str]]:
    """Node id -> the strings it showed under ``text`` (``PreviewAny``, ShowText-like nodes); other items skipped."""
    texts = {}
    for node_id, output in _nodes(outputs):
        items = output.get("text")
        if isinstance(items, list):
            strings = [item for item in items if isinstance(item, str)]
            if strings:
                texts[node_id] = strings
    return texts
