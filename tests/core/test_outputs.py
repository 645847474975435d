"""Files and texts in a history entry's outputs, for every output kind real nodes report (``core.outputs``)."""

from __future__ import annotations

from typing import Any

import pytest

from comfy_notebook.core import protocol as wire
from comfy_notebook.core.outputs import FileRef, file_refs, media, mime_from_name, sniff_mime, text_outputs

#: The outputs of one real prompt on ComfyUI 0.3.75 (tests/integration/test_outputs.py runs the same nodes),
#: in the order its history listed them.
REAL = {
    "13": {"text": ["0: line", "1: line"]},
    "15": {"3d": [{"filename": "m_00001_.glb", "subfolder": "mesh", "type": "output"}]},
    "3": {"images": [{"filename": "still_00001_.png", "subfolder": "", "type": "output"}]},
    "5": {"images": [{"filename": "apng_00001_.png", "subfolder": "", "type": "output"}], "animated": [True]},
    "4": {"images": [{"filename": "awebp_00001_.webp", "subfolder": "", "type": "output"}], "animated": [True]},
    "6": {
        "gifs": [
            {
                "filename": "vhs_00001.gif",
                "subfolder": "gif",
                "type": "output",
                "format": "image/gif",
                "frame_rate": 8.0,
                "workflow": "vhs_00001.png",
                "fullpath": "/srv/comfy/out/gif/vhs_00001.gif",
            }
        ]
    },
    "8": {"images": [{"filename": "v_00001_.mp4", "subfolder": "video", "type": "output"}], "animated": [True]},
    "10": {"audio": [{"filename": "a_00001_.flac", "subfolder": "audio", "type": "output"}]},
    "17": {"audio": [{"filename": "pa_00001_.wav", "subfolder": "", "type": "temp"}]},
    "12": {"text": ["<b>hi</b> & bye"]},
}


def test_every_file_of_every_node_with_its_kind_in_node_order() -> None:
    refs = file_refs(REAL)
    assert [(r.node_id, r.kind, r.filename, r.subfolder, r.type, r.animated) for r in refs] == [
        ("3", "images", "still_00001_.png", "", "output", False),
        ("4", "images", "awebp_00001_.webp", "", "output", True),
        ("5", "images", "apng_00001_.png", "", "output", True),
        ("6", "gifs", "vhs_00001.gif", "gif", "output", False),
        ("8", "images", "v_00001_.mp4", "video", "output", True),
        ("10", "audio", "a_00001_.flac", "audio", "output", False),
        ("15", "3d", "m_00001_.glb", "mesh", "output", False),
        ("17", "audio", "pa_00001_.wav", "", "temp", False),
    ]
    assert [media(r.mime or "", animated=r.animated, kind=r.kind) for r in refs] == [
        "image",
        "animation",
        "animation",
        "animation",
        "video",
        "audio",
        "model",
        "audio",
    ]


def test_texts_per_node() -> None:
    assert text_outputs(REAL) == {"12": ["<b>hi</b> & bye"], "13": ["0: line", "1: line"]}


def test_a_history_entry_hands_out_files_texts_and_its_images() -> None:
    entry = wire.parse_history({"p": {"outputs": REAL, "status": {"status_str": "success"}}}, "p", server="s")
    assert entry is not None
    assert entry.files() == file_refs(REAL)
    assert entry.texts() == text_outputs(REAL)
    assert [r.filename for r in entry.images()] == [
        "still_00001_.png",
        "awebp_00001_.webp",
        "apng_00001_.png",
        "v_00001_.mp4",
    ]
    assert wire.ImageRef("a.png", "", "output", "1") == FileRef("a.png", "", "output", "1", "images", False)


def test_malformed_entries_are_skipped_and_hostile_names_stay_data() -> None:
    outputs: dict[str, Any] = {
        "1": {
            "gifs": [
                {"filename": "../../etc/passwd", "subfolder": "../..", "type": "output"},
                {"filename": ["x"]},
                {"subfolder": "", "type": "output"},
                {"filename": "sub.gif", "subfolder": 3},
                {"filename": "type.gif", "type": {"output": 1}},
                "plain.gif",
                None,
            ],
            "animated": [True, "yes"],
            "text": ["ok", 5, None, {"a": 1}],
            "audio": "a.flac",
        },
        "2": "images",
        "3": ["images"],
        "4": {"text": "not a list", "images": {"filename": "x.png"}},
        "5": {"text": [3]},
        "12:5": {"video": [{"filename": "<script>.mp4"}]},
    }
    assert file_refs(outputs) == [
        FileRef("../../etc/passwd", "../..", "output", "1", "gifs", True),
        FileRef("<script>.mp4", "", "output", "12:5", "video", False),
    ]
    assert text_outputs(outputs) == {"1": ["ok"]}


def test_animated_is_only_a_true_flag() -> None:
    image = {"filename": "a.webp", "subfolder": "", "type": "output"}
    assert not file_refs({"1": {"images": [image], "animated": [False]}})[0].animated
    assert not file_refs({"1": {"images": [image], "animated": "true"}})[0].animated
    assert file_refs({"1": {"images": [image, image], "animated": [False, True]}})[1].animated


def test_node_order_is_numeric_and_subgraph_ids_follow_their_parent() -> None:
    item = [{"filename": "f.png"}]
    outputs = {key: {"images": item} for key in ("10", "9", "12:5", "12", "x", "2")}
    assert [r.node_id for r in file_refs(outputs)] == ["2", "9", "10", "12", "12:5", "x"]


@pytest.mark.parametrize(
    ("name", "mime"),
    [
        ("a.PNG", "image/png"),
        ("a.webp", "image/webp"),
        ("a.gif", "image/gif"),
        ("dir\\a.mp4", "video/mp4"),
        ("a.webm", "video/webm"),
        ("a.flac", "audio/flac"),
        ("a.wav", "audio/wav"),
        ("a.mp3", "audio/mpeg"),
        ("a.opus", "audio/ogg"),
        ("a.glb", "model/gltf-binary"),
        ("a", None),
        ("a.unknown", None),
    ],
)
def test_mime_from_name(name: str, mime: str | None) -> None:
    assert mime_from_name(name) == mime


@pytest.mark.parametrize(
    ("data", "mime"),
    [
        (b"\x89PNG\r\n\x1a\n....", "image/png"),
        (b"\xff\xd8\xff\xe0", "image/jpeg"),
        (b"GIF89a...", "image/gif"),
        (b"RIFF\0\0\0\0WEBPVP8 ", "image/webp"),
        (b"RIFF\0\0\0\0WAVEfmt ", "audio/wav"),
        (b"fLaC\0\0\0\x22", "audio/flac"),
        (b"\0\0\0\x20ftypisom", "video/mp4"),
        (b"\x1a\x45\xdf\xa3\x9f", "video/webm"),
        (b"glTF\x02\0\0\0", "model/gltf-binary"),
        (b"hello", None),
        (b"", None),
    ],
)
def test_sniff_mime(data: bytes, mime: str | None) -> None:
    assert sniff_mime(data) == mime


def test_media_of_a_mime_type() -> None:
    assert media("image/png") == "image"
    assert media("image/png", animated=True) == "animation"
    assert media("image/gif", kind="gifs") == "animation"
    assert media("video/mp4", kind="gifs") == "video"  # VideoHelperSuite reports its MP4s under gifs too
    assert media("audio/flac") == "audio"
    assert media("model/gltf-binary") == "model"
    assert media("application/octet-stream") == "other"
