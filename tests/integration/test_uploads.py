"""Local inputs on real ComfyUI servers: an image-to-image run from a PIL image, arrays, masks through ComfyUI's mask
upload, audio files, a shared input uploaded once per server in pool mode, and a failover that uploads again to the
new server."""

from __future__ import annotations

import dataclasses
import io
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image

from comfy_notebook.core.uploads import Upload
from comfy_notebook.engine.engine import Engine
from comfy_notebook.engine.task import RUNNING
from comfy_notebook.tools.local_pool import LocalPool
from tests.engine.conftest import FAST
from tests.fakes.fake_comfy import wait_until

POOL = dataclasses.replace(FAST, mode="pool", retries=2)


@pytest.fixture
def pool(real_pool: LocalPool) -> Iterator[Engine]:
    eng = Engine(real_pool.urls, POOL)
    yield eng
    eng.close()


def photo(color: tuple[int, int, int], size: tuple[int, int] = (6, 4)) -> Image.Image:
    image = Image.new("RGB", size, color)
    image.putpixel((0, 0), (255 - color[0], 0, 0))  # not uniform: a resize or a wrong file shows
    return image


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def is_inverted(image: Image.Image, source: Image.Image) -> bool:
    """ComfyUI works in floats and truncates on save: a pixel may be one off."""
    got, want = pixels(image), 255 - pixels(source)
    return got.shape == want.shape and int(np.abs(got - want).max()) <= 1


def img2img(source: object, *, sleep: float = 0.0, tag: int = 0) -> dict:
    """LoadImage (our upload) -> [SlowSteps] -> ImageInvert -> SaveImage."""
    graph: dict = {
        "1": {"class_type": "LoadImage", "inputs": {"image": source}},
        "3": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": f"up{tag}"}},
    }
    if sleep:
        graph["2"] = {"class_type": "SlowSteps", "inputs": {"image": ["1", 0], "steps": 10, "step_seconds": sleep}}
        graph["3"]["inputs"]["image"] = ["2", 0]
    return graph


def served(url: str, filename: str) -> bool:
    response = httpx.get(f"{url}/view", params={"filename": filename, "type": "input"}, timeout=10)
    return response.status_code == 200


def test_image_to_image_from_a_pil_image_on_every_server(pool: Engine) -> None:
    """Each prompt's input goes to the server it is bound to: a wrong server would fail LoadImage's validation, and
    a wrong file would give another picture."""
    sources = [photo((20 * i, 100, 200 - 20 * i)) for i in range(9)]
    tasks = pool.submit_many([img2img(Upload(s), tag=i) for i, s in enumerate(sources)])
    results = [t.result(timeout=120) for t in tasks]
    assert len({r.server for r in results}) >= 2, "pool mode should have used several servers"
    for source, result in zip(sources, results, strict=True):
        (image,) = result.images
        assert is_inverted(image, source)


def test_arrays_and_image_files(pool: Engine, tmp_path) -> None:  # type: ignore[no-untyped-def]
    array = np.zeros((4, 6, 3), dtype=np.float32)
    array[..., 1] = 1.0  # green
    path = tmp_path / "blue.png"
    photo((0, 0, 255)).save(path)
    by_array = pool.run(img2img(Upload(array), tag=100), timeout=60)
    assert by_array.images[0].convert("RGB").getpixel((1, 1)) == (255, 0, 255)
    by_path = pool.run(img2img(Upload(path, kind="file"), tag=101), timeout=60)
    assert is_inverted(by_path.images[0], photo((0, 0, 255)))


def test_a_shared_input_is_uploaded_once_per_server(pool: Engine, real_pool: LocalPool) -> None:
    shared = Upload(photo((1, 2, 3), size=(5, 5)))
    tasks = pool.submit_many([img2img(shared, tag=1000 + i, sleep=0.01) for i in range(12)])
    results = [t.result(timeout=120) for t in tasks]
    used = {r.server for r in results}
    assert len(used) >= 2
    uploads = {s["url"]: s["uploads"] for s in pool.get_status()["servers"]}
    assert all(uploads[url] == 1 for url in used), uploads
    assert sum(uploads.values()) == len(used)
    for url in used:
        assert served(url, shared.filename)


def test_a_mask_goes_through_comfyuis_mask_upload(pool: Engine) -> None:
    """LoadImage gives the image and the mask we sent: ComfyUI stored the image with our mask as its alpha."""
    mask = Image.new("L", (6, 4), 0)
    for x in range(3):
        for y in range(4):
            mask.putpixel((x, y), 255)  # the left half is masked
    source = photo((40, 80, 120))
    graph = {
        "1": {"class_type": "LoadImage", "inputs": {"image": Upload(mask, kind="mask", image=source)}},
        "2": {"class_type": "MaskToImage", "inputs": {"mask": ["1", 1]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "mask"}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "masked"}},
    }
    result = pool.run(graph, timeout=60)
    by_node = {ref.node_id: image for ref, image in zip(result.refs, result.images, strict=True)}
    assert by_node["3"].convert("L").getpixel((0, 0)) == 255 and by_node["3"].convert("L").getpixel((5, 0)) == 0
    assert int(np.abs(pixels(by_node["4"]) - pixels(source)).max()) <= 1


def animated_gif(colors: list[tuple[int, int, int]]) -> bytes:
    frames = [Image.new("RGB", (8, 8), color) for color in colors]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buffer.getvalue()


def test_a_video_file_feeds_a_loader_node(pool: Engine) -> None:
    """A file that is no still image (here an animated GIF, which ComfyUI's video loader decodes with PyAV)."""
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    upload = Upload(animated_gif(colors), kind="file")
    assert upload.filename.endswith(".gif")
    graph = {
        "1": {"class_type": "LoadVideo", "inputs": {"file": upload}},
        "2": {"class_type": "GetVideoComponents", "inputs": {"video": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "frames"}},
    }
    result = pool.run(graph, timeout=60)
    firsts = [tuple(int(c) for c in pixels(image)[4, 4]) for image in result.images]
    assert len(firsts) == len(colors)
    for got, want in zip(firsts, colors, strict=True):
        assert max(abs(g - w) for g, w in zip(got, want, strict=True)) <= 8, (got, want)  # GIF palette, YUV
    assert served(result.server, upload.filename)


def test_after_a_failover_the_new_server_gets_the_upload(pool: Engine, real_pool: LocalPool) -> None:
    source = photo((90, 60, 30))
    task = pool.submit(img2img(Upload(source), sleep=0.3, tag=int(time.time())))
    wait_until(lambda: task.status == RUNNING, timeout=60)
    first = task.server
    assert first is not None
    real_pool.kill(first)
    try:
        result = task.result(timeout=90)
        assert result.server != first
        assert [a.server for a in task.attempts] == [first, result.server]
        assert is_inverted(result.images[0], source)
        assert served(result.server, Upload(source).filename)
    finally:
        real_pool.restart(first)
