"""The output files of a finished prompt: named by the server that ran it, their bytes fetched from that server
(never another) on first use, and written locally only under names ``core.paths`` made safe."""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from PIL import Image as PILImage
from PIL.Image import Image

from comfy_notebook.core.errors import ComfyError
from comfy_notebook.core.outputs import OCTET_STREAM, FileRef, media, sniff_mime
from comfy_notebook.core.paths import safe_name, safe_relative

#: Fetches files from the result's server now: their bytes, or None for a file the server does not serve.
Fetcher = Callable[[list[FileRef]], list[bytes | None]]


class FileStore:
    """The bytes of one result's files: those that came with the result, the rest fetched on first use (one call
    for all that are asked for together), and the names the server refused. Thread-safe: a cell and a worker
    thread may read the same result."""

    def __init__(self, server: str, prompt_id: str, fetched: dict[FileRef, bytes], fetch: Fetcher) -> None:
        self.server = server
        self.prompt_id = prompt_id
        self._data = dict(fetched)
        self._unserved: set[FileRef] = set()
        self._fetch = fetch
        self._lock = threading.Lock()

    def peek(self, ref: FileRef) -> bytes | None:
        """The bytes if they are here already; never fetches."""
        return self._data.get(ref)

    def load(self, refs: Iterable[FileRef]) -> None:
        """Fetch whichever of ``refs`` are not here yet (a server that refuses a name is not asked again)."""
        with self._lock:
            missing = list(dict.fromkeys(r for r in refs if r not in self._data and r not in self._unserved))
            if not missing:
                return
            for ref, data in zip(missing, self._fetch(missing), strict=True):
                if data is None:
                    self._unserved.add(ref)
                else:
                    self._data[ref] = data

    def served(self, ref: FileRef) -> bool:
        """Whether the server served ``ref`` (fetching it now if needed)."""
        self.load([ref])
        return ref in self._data

    def get(self, ref: FileRef) -> bytes:
        self.load([ref])
        data = self._data.get(ref)
        if data is None:
            where = f"{ref.subfolder}/{ref.filename}" if ref.subfolder else ref.filename
            raise ComfyError(
                f"{self.server} does not serve {where!r} ({ref.type}), an output of node {ref.node_id} of "
                f"prompt {self.prompt_id}",
                server=self.server,
                prompt_id=self.prompt_id,
            )
        return data


class OutputFile:
    """One output file of one node: ``node_id``, ``kind`` (the output key: ``images``, ``gifs``, ``audio``,
    ``3d``, ...), the server's ``filename``/``subfolder``/``type``, its ``mime`` and ``media``; ``data`` is
    fetched from the server that ran the prompt on first use."""

    __slots__ = ("_store", "ref")

    def __init__(self, ref: FileRef, store: FileStore) -> None:
        self.ref = ref
        self._store = store

    @property
    def node_id(self) -> str:
        return self.ref.node_id

    @property
    def kind(self) -> str:
        return self.ref.kind

    @property
    def filename(self) -> str:
        return self.ref.filename

    @property
    def subfolder(self) -> str:
        return self.ref.subfolder

    @property
    def type(self) -> str:
        return self.ref.type

    @property
    def animated(self) -> bool:
        return self.ref.animated

    @property
    def mime(self) -> str:
        """From the extension; for a name that says nothing, from the bytes once they are here."""
        data = self._store.peek(self.ref)
        return self.ref.mime or (sniff_mime(data) if data is not None else None) or OCTET_STREAM

    @property
    def media(self) -> str:
        """``image`` (a still), ``animation``, ``video``, ``audio``, ``model`` or ``other``."""
        return media(self.mime, animated=self.animated, kind=self.kind)

    @property
    def is_still_image(self) -> bool:
        """What ``Result.images`` holds: a still under ``images`` (an animation's first frame is not one)."""
        return self.kind == "images" and self.media == "image"

    @property
    def fetched(self) -> bool:
        """Whether the bytes are here already (reading this never fetches)."""
        return self._store.peek(self.ref) is not None

    @property
    def data(self) -> bytes:
        """The bytes, fetched from the result's server on first use; a ``ComfyError`` if it does not serve them."""
        return self._store.get(self.ref)

    def to_pil(self) -> Image:
        """The image as PIL decodes it (an animation keeps its frames: ``seek``, ``n_frames``)."""
        if self.media not in ("image", "animation"):
            raise ValueError(f"{self.filename!r} is {self.mime}, not an image")
        image = PILImage.open(io.BytesIO(self.data))
        image.load()
        return image

    def save(self, path: str | Path) -> Path:
        """Write the bytes to ``path``: a folder (existing, ending in a separator, or without a suffix) gets the
        server's name made safe, without overwriting anything; a file path is written as given, never over an
        existing file."""
        target = Path(path)
        if target.is_dir() or str(path).endswith(("/", "\\")) or not target.suffix:
            target.mkdir(parents=True, exist_ok=True)
            return write_new(target.resolve(), safe_name(self.filename, fallback="output"), self.data)
        target.parent.mkdir(parents=True, exist_ok=True)
        data = self.data
        with open(target, "xb") as handle:
            handle.write(data)
        return target

    def save_under(self, root: Path) -> Path:
        """``Result.save``'s layout: ``root/<subfolder>/<filename>``, both made safe, never overwriting."""
        relative = safe_relative(self.subfolder, self.filename)
        return write_new(root, relative, self.data)

    def __repr__(self) -> str:
        where = f"{self.subfolder}/{self.filename}" if self.subfolder else self.filename
        return f"<OutputFile node={self.node_id} kind={self.kind} {self.mime} {where!r} ({self.type})>"


def write_new(root: Path, relative: str, data: bytes) -> Path:
    """Write ``data`` at ``root/relative`` (already safe) or at ``name (n).ext`` beside it; never overwrites."""
    target = (root / relative).resolve()
    if not target.is_relative_to(root):  # belt and braces: safe_relative already forbids this
        raise ComfyError(f"refusing to write outside {root}: {target}")
    target.parent.mkdir(parents=True, exist_ok=True)
    for n in range(10_000):
        candidate = target if n == 0 else target.with_name(f"{target.stem} ({n}){target.suffix}")
        try:
            with open(candidate, "xb") as handle:
                handle.write(data)
        except FileExistsError:
            continue
        return candidate
    raise ComfyError(f"too many files named like {target.name}")
