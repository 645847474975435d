"""Every output kind on real ComfyUI servers: still PNGs, animated WEBP and PNG, a VideoHelperSuite-style GIF, MP4
and WEBM videos, FLAC and WAV audio, a GLB mesh and text, through ``run`` and through the bulk path, with their
bytes checked, saved, rendered, and returned again by an identical (fully cached) re-run.

Built-in nodes where ComfyUI 0.3.75 has them (``SaveImage``, ``SaveAnimatedWEBP``, ``SaveAnimatedPNG``,
``CreateVideo`` + ``SaveVideo``, ``SaveWEBM``, ``SaveGLB``, ``PrimitiveString`` + ``PreviewAny``); the test nodes
for the rest (tests/comfy_nodes: the GIF, several texts, audio, a mesh).
"""

from __future__ import annotations

import base64
import io
import re
import time
import wave
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from comfy_notebook.engine.engine import Engine
from comfy_notebook.engine.files import OutputFile
from comfy_notebook.engine.task import Result
from comfy_notebook.notebook import render
from comfy_notebook.tools.local_pool import LocalPool
from tests.engine.conftest import FAST

SIZE, FRAMES, RATE, SECONDS = 16, 3, 8000, 0.5
_tags = iter(range(1, 1_000_000))


def fresh_tag() -> int:
    """A colour no earlier prompt of this session used, so the first run of a workflow is never cached."""
    return (next(_tags) * 7919 + int(time.time() * 1000)) % 0xFFFFFF


def rgb(value: int) -> tuple[int, int, int]:
    return (value >> 16) & 0xFF, (value >> 8) & 0xFF, value & 0xFF


def every_kind(tag: int) -> dict[str, Any]:
    """One prompt with one output node of every kind; ``tag`` colours the images and names the text."""
    noise = ["2", 0]
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": FRAMES,
              "color": tag}},
        "2": {"class_type": "ImageAddNoise", "inputs": {"image": ["1", 0], "seed": tag, "strength": 0.5}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "still"}},
        "4": {"class_type": "SaveAnimatedWEBP", "inputs": {"images": noise, "filename_prefix": "awebp", "fps": 6.0,
              "lossless": True, "quality": 80, "method": "default"}},
        "5": {"class_type": "SaveAnimatedPNG", "inputs": {"images": noise, "filename_prefix": "apng", "fps": 6.0,
              "compress_level": 4}},
        "6": {"class_type": "SaveGifVHS", "inputs": {"images": noise, "frame_rate": 8.0, "filename_prefix": "gif/vhs",
              "save_output": True}},
        "7": {"class_type": "CreateVideo", "inputs": {"images": noise, "fps": 8.0}},
        "8": {"class_type": "SaveVideo", "inputs": {"video": ["7", 0], "filename_prefix": "video/clip", "format": "mp4",
              "codec": "h264"}},
        "9": {"class_type": "SaveWEBM", "inputs": {"images": noise, "filename_prefix": "webm", "codec": "vp9",
              "fps": 8.0, "crf": 32.0}},
        "10": {"class_type": "SineAudio", "inputs": {"seconds": SECONDS, "frequency": 440.0, "sample_rate": RATE}},
        "11": {"class_type": "SaveAudioTest", "inputs": {"audio": ["10", 0], "filename_prefix": "audio/sine",
               "format": "flac", "save_output": True}},
        "12": {"class_type": "SaveAudioTest", "inputs": {"audio": ["10", 0], "filename_prefix": "preview",
               "format": "wav", "save_output": False}},
        "13": {"class_type": "PrimitiveString", "inputs": {"value": f"<b>{tag}</b> & co"}},
        "14": {"class_type": "PreviewAny", "inputs": {"source": ["13", 0]}},
        "15": {"class_type": "ShowTextList", "inputs": {"text": f"line {tag}", "copies": 2}},
        "16": {"class_type": "TestTetrahedron", "inputs": {"size": 1.0}},
        "17": {"class_type": "SaveGLB", "inputs": {"mesh": ["16", 0], "filename_prefix": "mesh/tetra"}},
    }  # fmt: skip


#: (node, kind, media, MIME type, subfolder, type) of every file, in the order ``result.files`` lists them.
EXPECTED = [
    *[("3", "images", "image", "image/png", "", "output")] * FRAMES,
    ("4", "images", "animation", "image/webp", "", "output"),
    ("5", "images", "animation", "image/png", "", "output"),
    ("6", "gifs", "animation", "image/gif", "gif", "output"),
    ("8", "images", "video", "video/mp4", "video", "output"),
    ("9", "images", "video", "video/webm", "", "output"),
    ("11", "audio", "audio", "audio/flac", "audio", "output"),
    ("12", "audio", "audio", "audio/wav", "", "temp"),
    ("17", "3d", "model", "model/gltf-binary", "mesh", "output"),
]


def frames_of(file: OutputFile, fmt: str) -> int:
    image = file.to_pil()
    assert image.format == fmt and image.size == (SIZE, SIZE), (file, image.format, image.size)
    return int(getattr(image, "n_frames", 1))


def flac_streaminfo(data: bytes) -> tuple[int, int, int]:
    """(sample rate, channels, total samples) from the STREAMINFO block that follows ``fLaC``."""
    assert data[:4] == b"fLaC" and data[4] & 0x7F == 0  # block type 0: STREAMINFO
    bits = int.from_bytes(data[18:26], "big")
    return bits >> 44, ((bits >> 41) & 0x7) + 1, bits & ((1 << 36) - 1)


def check_bytes(result: Result, tag: int) -> None:
    """Every file decodes as what it claims to be, with this prompt's content."""
    files = result.files
    assert [(f.node_id, f.kind, f.media, f.mime, f.subfolder, f.type) for f in files] == EXPECTED
    assert [image.getpixel((0, 0)) for image in result.images] == [rgb(tag)] * FRAMES
    assert all(image.size == (SIZE, SIZE) for image in result.images)
    webp, apng, gif, mp4, webm, flac, wav, glb = files[FRAMES:]
    assert webp.animated and apng.animated and not gif.animated  # VHS sends no flag: its kind says it
    assert frames_of(webp, "WEBP") == FRAMES
    assert frames_of(apng, "PNG") == FRAMES
    assert frames_of(gif, "GIF") == FRAMES
    assert mp4.data[4:8] == b"ftyp" and b"avc1" in mp4.data  # H.264 in an MP4 container
    assert webm.data[:4] == b"\x1a\x45\xdf\xa3" and b"V_VP9" in webm.data
    assert flac_streaminfo(flac.data) == (RATE, 1, int(RATE * SECONDS))
    with wave.open(io.BytesIO(wav.data)) as sound:
        assert (sound.getframerate(), sound.getnchannels(), sound.getnframes()) == (RATE, 1, int(RATE * SECONDS))
        samples = array("h", sound.readframes(sound.getnframes()))
    assert 16_000 < max(samples) < 16_500  # a sine of amplitude 0.5, not silence
    assert glb.data[:4] == b"glTF" and int.from_bytes(glb.data[8:12], "little") == len(glb.data)
    assert result.texts == {"14": [f"<b>{tag}</b> & co"], "15": [f"0: line {tag}", f"1: line {tag}"]}


def check_saved(result: Result, folder: Path) -> None:
    written = result.save(folder)
    assert [p.relative_to(folder.resolve()).as_posix() for p in written] == [
        f"{f.subfolder}/{f.filename}" if f.subfolder else f.filename for f in result.files
    ]
    assert [p.read_bytes() for p in written] == [f.data for f in result.files]


def history_on(url: str, prompt_id: str) -> dict[str, Any]:
    entry: dict[str, Any] = httpx.get(f"{url}/history/{prompt_id}", timeout=10).json()[prompt_id]
    return entry


def cached_nodes(url: str, prompt_id: str) -> list[str]:
    messages = history_on(url, prompt_id)["status"]["messages"]
    return next(data["nodes"] for kind, data in messages if kind == "execution_cached")


@pytest.fixture
def engine(real_pool: LocalPool) -> Iterator[Engine]:
    eng = Engine(real_pool.urls, FAST)
    yield eng
    eng.close()


def test_every_kind_through_run(engine: Engine, tmp_path: Path) -> None:
    tag = fresh_tag()
    result = engine.run(every_kind(tag), timeout=120)
    assert result.status == "success"
    assert all(file.fetched for file in result.files)  # a watched prompt's files all come with the result
    check_bytes(result, tag)
    check_saved(result, tmp_path)
    assert repr(result).endswith(
        f"files={len(EXPECTED)} (3 images, 3 animations, 2 videos, 2 audio files, 1 3D model) texts=3 "
        f"elapsed={result.elapsed:.2f}s>"
    )


def test_every_kind_through_the_bulk_path_fetches_output_files_on_first_use(engine: Engine, tmp_path: Path) -> None:
    tags = [fresh_tag(), fresh_tag()]
    results = [task.result(180) for task in engine.submit_many([every_kind(tag) for tag in tags])]
    for result, tag in zip(results, tags, strict=True):
        assert result.status == "success"
        # Temp files come at once (a restart wipes them); those the server keeps on disk wait for first use.
        assert [f.fetched for f in result.files] == [f.type == "temp" for f in result.files]
        check_bytes(result, tag)
        check_saved(result, tmp_path / result.prompt_id)


def test_an_identical_rerun_is_served_from_the_cache_and_still_returns_every_output(engine: Engine) -> None:
    graph = every_kind(fresh_tag())
    first = engine.run(graph, timeout=120)
    again = engine.run(graph, timeout=120)
    assert again.server == first.server and cached_nodes(again.server, again.prompt_id) == list(graph)
    assert again.refs == first.refs and again.texts == first.texts  # the first run's files, listed again
    assert [f.data for f in again.files] == [f.data for f in first.files]
    (bulk,) = [task.result(60) for task in engine.submit_many([graph])]
    assert bulk.server == first.server and cached_nodes(bulk.server, bulk.prompt_id) == list(graph)
    assert bulk.refs == first.refs and [f.data for f in bulk.fetch()] == [f.data for f in first.files]


def test_a_real_result_renders_every_kind_and_a_static_png(engine: Engine) -> None:
    tag = fresh_tag()
    result = engine.run(every_kind(tag), timeout=120)
    html = render.result_html(result)
    assert html.count('<img src="data:image/png;base64,') == FRAMES + 1  # the stills and the animated PNG
    assert html.count('<img src="data:image/webp;base64,') == 1 and html.count('<img src="data:image/gif;') == 1
    assert html.count('<video src="data:video/mp4;base64,') == 1 and html.count('<video src="data:video/webm;') == 1
    assert html.count('<audio src="data:audio/flac;base64,') == 1 and html.count('<audio src="data:audio/wav;') == 1
    glb = r"<code>mesh/tetra_\d{5}_\.glb</code> &middot; 3d &middot; model/gltf-binary &middot; [\d.]+ k?B</div>"
    assert re.search(glb, html)
    assert f"&lt;b&gt;{tag}&lt;/b&gt; &amp; co" in html and f"<b>{tag}</b>" not in html
    bundle = render.result_bundle(result)
    assert bundle is not None
    strip = Image.open(io.BytesIO(base64.b64decode(bundle["image/png"])))
    assert strip.size == (6 * SIZE + 5 * 4, SIZE)  # 3 stills and the first frames of the WEBP, PNG and GIF
    assert strip.convert("RGB").getpixel((0, 0)) == rgb(tag)
