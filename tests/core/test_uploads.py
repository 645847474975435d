"""Local inputs made ready for upload: every accepted kind of object, and a clear error for everything else, before
anything is queued."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from comfy_notebook.core.errors import ProtocolError
from comfy_notebook.core.uploads import (
    Upload,
    UploadError,
    is_uploadable,
    mask_layer,
    refused,
    stored_value,
    too_large,
)


def png_bytes(color: tuple[int, int, int] = (10, 20, 30), size: tuple[int, int] = (4, 3)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_a_pil_image_is_sent_as_png_under_a_content_addressed_name() -> None:
    image = Image.new("RGB", (5, 4), (200, 100, 50))
    upload = Upload(image)
    assert upload.filename.startswith("cn-") and upload.filename.endswith(".png")
    assert upload.mime == "image/png"
    assert decode(upload.data).getpixel((0, 0)) == (200, 100, 50)
    # The same pixels, the same name; other pixels, another name.
    assert Upload(image.copy()).filename == upload.filename
    assert Upload(Image.new("RGB", (5, 4), (0, 0, 0))).filename != upload.filename


@pytest.mark.parametrize(
    ("array", "pixel"),
    [
        (np.full((3, 4, 3), 255, dtype=np.uint8), (255, 255, 255)),
        (np.full((3, 4, 3), 0.5, dtype=np.float32), (128, 128, 128)),
        (np.full((1, 3, 4, 3), 1.0, dtype=np.float64), (255, 255, 255)),  # a ComfyUI batch of one
        (np.full((3, 4, 4), 7, dtype=np.uint8), (7, 7, 7, 7)),
        (np.full((3, 4), 9, dtype=np.uint8), 9),
        (np.full((3, 4, 1), 2.0, dtype=np.float32), 255),  # clipped to 0-1
    ],
)
def test_numpy_arrays_become_png(array: np.ndarray, pixel: object) -> None:
    image = decode(Upload(array).data)
    assert image.size == (4, 3)
    assert image.getpixel((0, 0)) == pixel


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((3, 4, 2), dtype=np.uint8), "shape (3, 4, 2)"),
        (np.zeros((3,), dtype=np.uint8), "shape (3,)"),
        (np.zeros((3, 4, 3), dtype=np.int64), "int64"),
        (np.full((3, 4, 3), np.nan, dtype=np.float32), "NaN"),
    ],
)
def test_unusable_arrays_are_refused_with_the_reason(array: np.ndarray, message: str) -> None:
    with pytest.raises(UploadError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Upload(array)


def test_bytes_keep_their_format_and_get_the_right_extension() -> None:
    data = png_bytes()
    upload = Upload(data)
    assert upload.data == data and upload.filename.endswith(".png")
    wav = b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 24
    assert Upload(wav, kind="file").filename.endswith(".wav")
    assert Upload(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 16, kind="file").mime == "video/mp4"
    assert Upload(b"something else", kind="file").filename.endswith(".bin")


def test_a_path_is_read_now_and_keeps_its_suffix(tmp_path: Path) -> None:
    path = tmp_path / "Photo.JPG"
    Image.new("RGB", (3, 3), (1, 2, 3)).save(path, format="JPEG")
    upload = Upload(path)
    assert upload.data == path.read_bytes()
    assert upload.filename.endswith(".jpg") and upload.mime == "image/jpeg"
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"not really a video")
    assert Upload(str(clip), kind="file").filename.endswith(".mp4")


def test_unreadable_inputs_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(UploadError, match=r"cannot read .*missing\.png"):
        Upload(tmp_path / "missing.png")
    with pytest.raises(UploadError, match="cannot read"):
        Upload(tmp_path)  # a folder
    with pytest.raises(UploadError, match="cannot upload a dict"):
        Upload({"a": 1})
    with pytest.raises(UploadError, match="empty bytes"):
        Upload(b"")
    with pytest.raises(UploadError, match=r"not an image PIL can read.*kind=.file."):
        Upload(b"RIFF\x24\x00\x00\x00WAVEfmt ")  # audio sent as an image
    with pytest.raises(UploadError, match="kind must be one of"):
        Upload(png_bytes(), kind="video")


@pytest.mark.parametrize("name", ["../evil.png", "a/b.png", "a\\b.png", ".hidden.png", "", "x..png", "é.png"])
def test_a_name_that_would_escape_the_input_folder_is_refused(name: str) -> None:
    with pytest.raises(UploadError, match="escape the server's input folder"):
        Upload(png_bytes(), name=name)


def test_a_chosen_name_is_kept() -> None:
    upload = Upload(png_bytes(), name="my input (1).png")
    assert upload.filename == "my input (1).png" and upload.named


def test_a_mask_is_grayscale_and_travels_as_inverted_alpha() -> None:
    mask = Image.new("L", (4, 2), 0)
    mask.putpixel((1, 0), 255)
    upload = Upload(mask, kind="mask", image=Image.new("RGB", (4, 2), (9, 9, 9)))
    assert decode(upload.data).mode == "L"
    assert isinstance(upload.image, Upload) and upload.image.kind == "image"
    layer = decode(mask_layer(upload.data))
    assert layer.mode == "RGBA"
    # LoadImage reads MASK as 1 - alpha: a masked pixel (255) has alpha 0.
    assert layer.getpixel((1, 0))[3] == 0 and layer.getpixel((0, 0))[3] == 255
    # The stored file is the image with this mask: its name depends on both.
    other = Upload(mask, kind="mask", image=Image.new("RGB", (4, 2), (1, 1, 1)))
    assert other.filename != upload.filename and other.key != upload.key


def test_a_mask_onto_a_file_already_on_the_server() -> None:
    upload = Upload(np.ones((2, 2), dtype=np.float32), kind="mask", image="photo.png")
    assert upload.image == "photo.png"
    with pytest.raises(UploadError, match="escape"):
        Upload(np.ones((2, 2), dtype=np.float32), kind="mask", image="../photo.png")
    with pytest.raises(UploadError, match="image= is for masks"):
        Upload(png_bytes(), image="photo.png")


def test_what_becomes_an_upload_in_a_cell() -> None:
    assert is_uploadable(Image.new("RGB", (1, 1)))
    assert is_uploadable(np.zeros((1, 1, 3)))
    assert is_uploadable(b"x") and is_uploadable(Path("x.png")) and is_uploadable(Upload(png_bytes()))
    assert not is_uploadable("photo.png")  # a name on the server stays a name
    assert not is_uploadable(3) and not is_uploadable([1, 2])


def test_the_servers_answer_names_the_stored_file() -> None:
    upload = Upload(png_bytes())
    body = json.dumps({"name": "x (1).png", "subfolder": "", "type": "input"}).encode()
    assert stored_value(body, server="http://a", upload=upload) == "x (1).png"
    body = json.dumps({"name": "x.png", "subfolder": "sub/dir", "type": "input"}).encode()
    assert stored_value(body, server="http://a", upload=upload) == "sub/dir/x.png"


@pytest.mark.parametrize(
    "answer",
    [
        {"name": "../../etc/passwd", "subfolder": "", "type": "input"},
        {"name": "x.png", "subfolder": "../..", "type": "input"},
        {"name": 3},
        [],
    ],
)
def test_a_hostile_or_malformed_answer_is_a_protocol_error(answer: object) -> None:
    with pytest.raises(ProtocolError, match=r"http://a answered the upload of cn-"):
        stored_value(json.dumps(answer).encode(), server="http://a", upload=Upload(png_bytes()))


def test_refusals_say_why_and_name_the_server() -> None:
    upload = Upload(png_bytes())
    error = refused(413, b"", server="http://a", upload=upload, limit=None)
    assert "http://a refused the upload" in str(error) and "too large (HTTP 413" in str(error)
    assert "--max-upload-size" in str(error) and "proxy" in str(error)
    assert "its limit is 2 MB" in str(refused(413, b"", server="http://a", upload=upload, limit=2_000_000))
    assert "HTTP 500 boom" in str(refused(500, b"boom", server="http://a", upload=upload, limit=None))
    assert too_large(upload, server="http://a", limit=0) is None
    assert too_large(upload, server="http://a", limit=10**6) is None
    error = too_large(upload, server="http://a", limit=10)
    assert error is not None and "over http://a's upload limit" in str(error)
