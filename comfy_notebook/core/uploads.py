"""Local inputs of a workflow: a PIL image, a numpy array, raw bytes or a file path, made ready for ComfyUI's upload
routes when the workflow is submitted, so an unreadable file or an unsupported object is an error before anything is
queued. The engine uploads each one to the server its prompt is bound to (``engine/uploader.py``).

Names are content-addressed (``cn-<sha256 prefix>.png``): the same bytes always get the same name, so a sweep that
shares one input uploads it once per server, and a re-upload after a failover can never clobber a different file.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

from PIL import Image as PILImage
from PIL import UnidentifiedImageError

from comfy_notebook.core.errors import ComfyError, ProtocolError, describe

KINDS = ("image", "mask", "file")
#: A file name ComfyUI's upload route would store as given (no folders, no parent references, no hidden files).
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-+=()[] ")

# Magic numbers of the formats ComfyUI's loaders take, for bytes that come without a name.
_SIGNATURES: tuple[tuple[bytes, int, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", 0, ".png"),
    (b"\xff\xd8\xff", 0, ".jpg"),
    (b"GIF8", 0, ".gif"),
    (b"WEBP", 8, ".webp"),
    (b"WAVE", 8, ".wav"),
    (b"AVI ", 8, ".avi"),
    (b"fLaC", 0, ".flac"),
    (b"OggS", 0, ".ogg"),
    (b"ID3", 0, ".mp3"),
    (b"ftyp", 4, ".mp4"),
    (b"\x1a\x45\xdf\xa3", 0, ".webm"),
    (b"BM", 0, ".bmp"),
)


class UploadError(ComfyError, ValueError):
    """A local input could not be prepared, or a server refused its upload (too large, malformed). Never retried on
    another server: the same bytes would meet the same refusal."""


class Upload:
    """A local object to upload as a workflow input: put it where a file name goes (``LoadImage.image``, ...).

    ``kind``: ``"image"`` (anything PIL reads; arrays and PIL images are sent as PNG), ``"file"`` (bytes or a path
    sent as they are: videos, audio, anything a loader node reads) or ``"mask"`` (a grayscale mask, white = masked as
    in ComfyUI's MASK). A mask with ``image=`` goes through ComfyUI's mask upload, which stores the image with the
    mask in its alpha channel: ``LoadImage`` then gives both (exactly what the mask editor does). ``image`` may be
    another ``Upload`` or the name of a file already in the server's input folder. ``name`` replaces the
    content-addressed file name.
    """

    __slots__ = ("data", "digest", "filename", "image", "kind", "mime", "named")
    data: bytes
    digest: str
    filename: str
    image: Upload | str | None
    kind: str
    mime: str
    named: bool

    def __init__(self, source: Any, kind: str = "image", *, name: str | None = None, image: Any = None) -> None:
        if kind not in KINDS:
            raise UploadError(f"upload kind must be one of {', '.join(KINDS)}, not {kind!r}")
        if image is not None and kind != "mask":
            raise UploadError("image= is for masks: Upload(mask, kind='mask', image=...)")
        if isinstance(source, Upload):
            source = source.data
        data, extension = _read(source, kind)
        if kind in ("image", "mask"):
            data, extension = _as_image(data, extension, kind, source)
        self.kind = kind
        self.data = data
        self.digest = hashlib.sha256(data).hexdigest()
        self.image = None
        if image is not None:
            self.image = image if isinstance(image, str) else Upload(image)
            if isinstance(self.image, str):
                check_name(self.image)
        self.named = name is not None
        if name is not None:
            check_name(name)
            self.filename = name
        else:
            tag = self.digest[:16]
            if isinstance(self.image, Upload):  # the stored file is the image with this mask: name both
                tag = f"{tag}-{self.image.digest[:8]}"
            elif isinstance(self.image, str):
                tag = f"{tag}-{hashlib.sha256(self.image.encode()).hexdigest()[:8]}"
            self.filename = f"cn-{tag}{extension}"
        self.mime = _MIME.get(Path(self.filename).suffix.lower(), "application/octet-stream")

    @property
    def key(self) -> str:
        """What identifies the file a server stores: its name (which, unnamed, is its content)."""
        if isinstance(self.image, Upload):
            return f"{self.filename}|{self.digest}|{self.image.key}"
        return f"{self.filename}|{self.digest}|{self.image or ''}"

    def __repr__(self) -> str:
        onto = f" onto {self.image if isinstance(self.image, str) else self.image.filename}" if self.image else ""
        return f"<Upload {self.kind} {self.filename} ({len(self.data):,} bytes){onto}>"


def is_uploadable(value: Any) -> bool:
    """Whether a notebook variable holds something ``"$name"`` turns into an upload (a PIL image, a numpy array,
    bytes, a ``Path``, or an ``Upload``). Strings stay strings: a file name on the server is a plain value."""
    return isinstance(value, Upload | PILImage.Image | bytes | bytearray | memoryview | Path) or _is_array(value)


def as_upload(value: Any) -> Upload:
    """The upload a cell variable stands for: pixels (a PIL image, an array) are images; bytes and paths are sent
    as they are (an image file, a video, audio), since a cell cannot say which."""
    if isinstance(value, Upload):
        return value
    return Upload(value, kind="image" if isinstance(value, PILImage.Image) or _is_array(value) else "file")


def check_name(name: str) -> None:
    """A name must stay inside the server's input folder: no separators, no ``..``, no hidden file."""
    if not isinstance(name, str) or not name or name.startswith(".") or ".." in name or not set(name) <= _NAME_CHARS:
        raise UploadError(
            f"upload name {name!r} is not a plain file name (letters, digits, ' ._-+=()[]'; no folders, no '..'): "
            "it would escape the server's input folder"
        )


def _is_array(value: Any) -> bool:
    return type(value).__module__ == "numpy" and hasattr(value, "__array_interface__")


def _read(source: Any, kind: str) -> tuple[bytes, str]:
    """The bytes of ``source`` and the file extension they deserve."""
    if isinstance(source, PILImage.Image):
        return _png(source if kind == "image" else source.convert("L")), ".png"
    if _is_array(source):
        return _png(_array_image(source)), ".png"
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        if not data:
            raise UploadError("cannot upload empty bytes")
        return data, _sniff(data)
    if isinstance(source, str | os.PathLike):
        path = Path(source).expanduser()
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise UploadError(f"cannot read {str(path)!r} for upload: {exc.strerror or exc}") from None
        suffix = path.suffix.lower()
        return data, suffix if suffix and set(suffix) <= _NAME_CHARS and len(suffix) <= 10 else _sniff(data)
    raise UploadError(
        f"cannot upload a {type(source).__name__}: use a PIL image, a numpy array (H x W x C, uint8 or float 0-1), "
        "bytes, or a path to a file"
    )


def _png(image: PILImage.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)  # uploads are transient: speed over size
    return buffer.getvalue()


def _array_image(array: Any) -> PILImage.Image:
    """H x W (gray) or H x W x C (C = 1, 3, 4) of uint8, or of floats in 0-1 (ComfyUI's own image convention)."""
    import numpy as np  # noqa: PLC0415 - only someone who passes an array has numpy

    shape = tuple(array.shape)
    if len(shape) == 4 and shape[0] == 1:  # a ComfyUI batch of one
        array, shape = array[0], shape[1:]
    if len(shape) == 3 and shape[2] == 1:
        array, shape = array[:, :, 0], shape[:2]
    if len(shape) not in (2, 3) or (len(shape) == 3 and shape[2] not in (3, 4)) or 0 in shape:
        raise UploadError(f"cannot upload an array of shape {shape}: expected H x W or H x W x C with C = 1, 3 or 4")
    if array.dtype == np.uint8:
        pixels = array
    elif array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise UploadError("cannot upload an array with NaN or infinite values")
        pixels = (np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    elif array.dtype == np.bool_:
        pixels = array.astype(np.uint8) * 255
    else:
        raise UploadError(f"cannot upload an array of {array.dtype}: use uint8 (0-255) or floats (0-1)")
    return PILImage.fromarray(np.ascontiguousarray(pixels))


def _as_image(data: bytes, extension: str, kind: str, source: Any) -> tuple[bytes, str]:
    """Check that image bytes decode (a clear error now beats a node failing on the server); a mask is made
    grayscale PNG (white = masked)."""
    try:
        with PILImage.open(io.BytesIO(data)) as image:
            image.load()
            if kind == "mask" and (image.mode != "L" or image.format != "PNG"):
                return _png(image.convert("L")), ".png"
            fmt = (image.format or "").lower()
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        what = str(source) if isinstance(source, str | os.PathLike) else f"{len(data):,} bytes"
        raise UploadError(
            f"{what} is not an image PIL can read ({describe(exc, 120)}); for videos, audio or other files use "
            "Upload(..., kind='file')"
        ) from None
    return data, extension if extension != ".bin" else f".{fmt or 'png'}"


def _sniff(data: bytes) -> str:
    for magic, offset, extension in _SIGNATURES:
        if data[offset : offset + len(magic)] == magic:
            return extension
    return ".bin"


def mask_layer(mask_png: bytes) -> bytes:
    """The file ComfyUI's mask upload takes: its alpha channel becomes the image's alpha, and ``LoadImage`` reads
    MASK as ``1 - alpha``, so a mask (white = masked) travels as alpha = 255 - mask."""
    with PILImage.open(io.BytesIO(mask_png)) as mask:
        gray = mask.convert("L")
    layer = PILImage.new("RGBA", gray.size, (0, 0, 0, 0))
    layer.putalpha(gray.point(lambda v: 255 - v))
    return _png(layer)


def stored_value(body: bytes, *, server: str, upload: Upload) -> str:
    """The workflow value naming a file the server stored, from an upload's ``200`` answer ``{name, subfolder,
    type}``; a name that is not plain (a hostile server) is refused, never put in a workflow."""
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    name = answer.get("name") if isinstance(answer, dict) else None
    subfolder = answer.get("subfolder") or "" if isinstance(answer, dict) else ""
    if not isinstance(name, str) or not isinstance(subfolder, str):
        raise ProtocolError(f"{server} answered the upload of {upload.filename} with malformed JSON", server=server)
    try:
        check_name(name)
        for part in subfolder.split("/") if subfolder else ():
            check_name(part)
    except UploadError:
        raise ProtocolError(
            f"{server} answered the upload of {upload.filename} with an unsafe name {describe(name, 80)!r}",
            server=server,
        ) from None
    return f"{subfolder}/{name}" if subfolder else name


def refused(status: int, body: bytes, *, server: str, upload: Upload, limit: int | None) -> UploadError:
    """The error for an upload answered with an HTTP error status."""
    size = f"{len(upload.data) / 1e6:.1f} MB"
    if status == 413:
        where = f"its limit is {limit / 1e6:.0f} MB" if limit else "ComfyUI's limit is --max-upload-size"
        return UploadError(
            f"{server} refused the upload of {upload.filename} ({size}): too large (HTTP 413; {where}, and a proxy "
            "in front may have a lower one)",
            server=server,
        )
    text = describe(body.decode("utf-8", "replace"), 160)
    message = f"{server} refused the upload of {upload.filename} ({size}): HTTP {status} {text}"
    return UploadError(message, server=server)


def too_large(upload: Upload, *, server: str, limit: int) -> UploadError | None:
    """An error before sending, when the server declares a limit (``/features`` ``max_upload_size``) the file passes."""
    if limit <= 0 or len(upload.data) < limit:
        return None
    return UploadError(
        f"{upload.filename} is {len(upload.data) / 1e6:.1f} MB, over {server}'s upload limit of {limit / 1e6:.0f} MB "
        "(ComfyUI's --max-upload-size)",
        server=server,
    )


_MIME = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".bmp": "image/bmp",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
    ".mp4": "video/mp4",
    ".webm": "video/webm",
    ".mov": "video/quicktime",
    ".avi": "video/x-msvideo",
    ".mkv": "video/x-matroska",
    ".wav": "audio/wav",
    ".flac": "audio/flac",
    ".mp3": "audio/mpeg",
    ".ogg": "audio/ogg",
}
