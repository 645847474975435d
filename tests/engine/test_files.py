"""``Result.files`` and ``OutputFile``: lazy bytes from the result's server, saving under safe names, what
``images`` holds. The server here is a dict behind the same fetch signature the engine passes (``fetch_files``);
the real servers' files are in tests/integration/test_outputs.py."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from comfy_notebook.core.errors import ComfyError, ServerUnavailable
from comfy_notebook.core.outputs import FileRef, file_refs
from comfy_notebook.engine.task import Result

SERVER = "http://10.0.0.1:8188"


def png(color: int = 0, size: int = 4) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (color, 0, 0)).save(buf, format="PNG")
    return buf.getvalue()


def gif() -> bytes:
    frames = [Image.new("RGB", (4, 4), (c, 0, 0)) for c in (0, 255)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


class Server:
    """Files by (type, subfolder, filename), and every fetch call it got."""

    def __init__(self, files: dict[tuple[str, str, str], bytes]) -> None:
        self.files = files
        self.calls: list[list[str]] = []
        self.down = False

    def fetch(self, refs: list[FileRef]) -> list[bytes | None]:
        if self.down:
            raise ServerUnavailable(f"{SERVER} did not answer GET /view", server=SERVER)
        self.calls.append([r.filename for r in refs])
        return [self.files.get((r.type, r.subfolder, r.filename)) for r in refs]


OUTPUTS: dict[str, Any] = {
    "3": {"images": [{"filename": "still.png", "subfolder": "", "type": "output"}]},
    "4": {"images": [{"filename": "anim.webp", "subfolder": "", "type": "output"}], "animated": [True]},
    "6": {"gifs": [{"filename": "vhs.gif", "subfolder": "gif", "type": "output", "format": "image/gif"}]},
    "8": {"images": [{"filename": "v.mp4", "subfolder": "video", "type": "output"}], "animated": [True]},
    "10": {"audio": [{"filename": "a.wav", "subfolder": "", "type": "temp"}]},
    "12": {"text": ["hello", "world"]},
}
FILES = {
    ("output", "", "still.png"): png(1),
    ("output", "", "anim.webp"): b"RIFF\0\0\0\0WEBPVP8X",
    ("output", "gif", "vhs.gif"): gif(),
    ("output", "video", "v.mp4"): b"\0\0\0\x20ftypisom",
    ("temp", "", "a.wav"): b"RIFF\0\0\0\0WAVEfmt ",
}


def result(server: Server, outputs: dict[str, Any] = OUTPUTS, fetched: dict[FileRef, bytes] | None = None) -> Result:
    return Result(
        "p-1",
        SERVER,
        "success",
        outputs=outputs,
        refs=file_refs(outputs),
        fetched=fetched or {},
        fetch=server.fetch,
        elapsed=1.5,
    )


def test_files_are_listed_without_fetching_and_each_is_fetched_once_on_first_use() -> None:
    server = Server(dict(FILES))
    res = result(server)
    files = res.files
    assert [(f.node_id, f.kind, f.filename, f.mime, f.media) for f in files] == [
        ("3", "images", "still.png", "image/png", "image"),
        ("4", "images", "anim.webp", "image/webp", "animation"),
        ("6", "gifs", "vhs.gif", "image/gif", "animation"),
        ("8", "images", "v.mp4", "video/mp4", "video"),
        ("10", "audio", "a.wav", "audio/wav", "audio"),
    ]
    assert server.calls == [] and not any(f.fetched for f in files)
    assert files[3].data == FILES[("output", "video", "v.mp4")]
    assert files[3].data and res.files[3].fetched
    assert server.calls == [["v.mp4"]]
    assert res.texts == {"12": ["hello", "world"]}


def test_images_are_the_stills_only_and_fetched_in_one_call() -> None:
    server = Server(dict(FILES))
    res = result(server)
    assert [image.getpixel((0, 0)) for image in res.images] == [(1, 0, 0)]
    assert server.calls == [["still.png"]]
    animation = res.files[2].to_pil()
    assert getattr(animation, "n_frames", 1) == 2
    with pytest.raises(ValueError, match=r"'v.mp4' is video/mp4, not an image"):
        res.files[3].to_pil()


def test_bytes_that_came_with_the_result_are_not_fetched_again() -> None:
    server = Server(dict(FILES))
    refs = file_refs(OUTPUTS)
    res = result(server, fetched={refs[0]: png(9)})
    assert res.images[0].getpixel((0, 0)) == (9, 0, 0)
    assert server.calls == []


def test_a_file_the_server_does_not_serve_is_a_clear_error_and_is_left_out_of_images_save_and_fetch(
    tmp_path: Path,
) -> None:
    files = dict(FILES)
    del files[("output", "", "still.png")]
    server = Server(files)
    res = result(server)
    with pytest.raises(ComfyError) as info:
        _ = res.files[0].data
    assert SERVER in str(info.value) and "'still.png'" in str(info.value) and "node 3" in str(info.value)
    assert info.value.server == SERVER and info.value.prompt_id == "p-1"
    assert res.images == []
    assert [f.filename for f in res.fetch()] == ["anim.webp", "vhs.gif", "v.mp4", "a.wav"]
    assert len(res.save(tmp_path)) == 4
    assert server.calls == [["still.png"], ["anim.webp", "vhs.gif", "v.mp4", "a.wav"]]  # refused names: asked once


def test_an_unreachable_server_raises_and_a_later_try_fetches() -> None:
    server = Server(dict(FILES))
    res = result(server)
    server.down = True
    with pytest.raises(ServerUnavailable):
        res.fetch()
    server.down = False
    assert len(res.fetch()) == 5


def test_result_save_writes_every_file_in_its_subfolder_and_never_overwrites(tmp_path: Path) -> None:
    res = result(Server(dict(FILES)))
    first = res.save(tmp_path)
    assert sorted(str(p.relative_to(tmp_path)) for p in first) == [
        "a.wav",
        "anim.webp",
        "gif/vhs.gif",
        "still.png",
        "video/v.mp4",
    ]
    assert (tmp_path / "video" / "v.mp4").read_bytes() == FILES[("output", "video", "v.mp4")]
    second = res.save(tmp_path)
    assert {p.name for p in second} == {"a (1).wav", "anim (1).webp", "vhs (1).gif", "still (1).png", "v (1).mp4"}


def test_hostile_names_never_leave_the_folder(tmp_path: Path) -> None:
    outputs = {
        "1": {"gifs": [{"filename": "../../x.gif", "subfolder": "../../..", "type": "output"}]},
        "2": {"audio": [{"filename": "/etc/passwd", "subfolder": "/abs", "type": "output"}]},
        "3": {"3d": [{"filename": "..", "subfolder": "a/../../b", "type": "output"}]},
    }
    served = {("output", "../../..", "../../x.gif"): gif(), ("output", "/abs", "/etc/passwd"): b"secret"}
    served[("output", "a/../../b", "..")] = b"glTF"
    res = result(Server(served), outputs)
    root = tmp_path / "out"
    written = res.save(root)
    assert len(written) == 3
    assert all(p.resolve().is_relative_to(root.resolve()) for p in written)
    one = res.files[1].save(tmp_path / "single")
    assert one.parent == (tmp_path / "single").resolve() and one.name == "passwd"
    assert res.files[2].save(tmp_path / "single").name == "output"  # ".." is no name: a fallback


def test_output_file_save_to_a_folder_or_a_file(tmp_path: Path) -> None:
    res = result(Server(dict(FILES)))
    video = res.files[3]
    assert video.save(tmp_path / "clips") == (tmp_path / "clips" / "v.mp4").resolve()
    assert video.save(tmp_path / "clips").name == "v (1).mp4"
    assert video.save(str(tmp_path / "new") + "/").name == "v.mp4"
    target = tmp_path / "named" / "clip.mp4"
    assert video.save(target) == target and target.read_bytes() == video.data
    with pytest.raises(FileExistsError):
        video.save(target)  # an explicit file name is never overwritten


def test_mime_of_a_name_without_extension_comes_from_the_bytes_once_here() -> None:
    outputs = {"1": {"files": [{"filename": "blob", "subfolder": "", "type": "output"}]}}
    res = result(Server({("output", "", "blob"): b"fLaC\0\0\0\x22"}), outputs)
    file = res.files[0]
    assert (file.mime, file.media) == ("application/octet-stream", "other")
    _ = file.data
    assert (file.mime, file.media) == ("audio/flac", "audio")


def test_repr_counts_files_by_media_and_texts() -> None:
    text = repr(result(Server({})))
    assert text == (
        f"<Result success prompt_id=p-1 server={SERVER} files=5 (1 image, 2 animations, 1 video, 1 audio file) "
        "texts=2 elapsed=1.50s>"
    )
    empty = repr(result(Server({}), {}))
    assert empty == f"<Result success prompt_id=p-1 server={SERVER} files=0 elapsed=1.50s>"
    assert repr(result(Server({})).files[3]) == "<OutputFile node=8 kind=images video/mp4 'video/v.mp4' (output)>"
