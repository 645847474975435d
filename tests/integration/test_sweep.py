"""Sweeps on real ComfyUI servers, in pool mode over two of them: a 3x4 sweep whose every image shows its own
parameters (colour and width), spread over both servers; a point that fails alone; a cancel that empties both
servers' queues; sweeps over uploaded images and over a UI-format workflow."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from comfy_notebook.core.errors import Cancelled, ExecutionError, ValidationError
from comfy_notebook.engine.engine import Engine
from comfy_notebook.engine.task import RUNNING
from comfy_notebook.tools.local_pool import LocalPool
from tests.engine.conftest import FAST
from tests.fakes.fake_comfy import wait_until
from tests.workflows import slow_workflow

POOL = dataclasses.replace(FAST, mode="pool", retries=2)
COLORS = [0xFF0000, 0x00FF00, 0x0000FF]
WIDTHS = [8, 9, 10, 11]
UI_WORKFLOWS = Path(__file__).resolve().parents[1] / "core" / "ui" / "workflows"


@pytest.fixture
def two(real_pool: LocalPool) -> Iterator[Engine]:
    """Pool mode over the first two servers."""
    eng = Engine(real_pool.urls[:2], POOL)
    yield eng
    eng.close()


def rgb(color: int) -> tuple[int, int, int]:
    return (color >> 16) & 0xFF, (color >> 8) & 0xFF, color & 0xFF


def colours(image: Image.Image) -> set[tuple[int, ...]]:
    pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    return {tuple(int(c) for c in pixel) for pixel in np.unique(pixels, axis=0)}


def queue_of(url: str) -> dict[str, Any]:
    queue: dict[str, Any] = httpx.get(f"{url}/queue", timeout=10).json()
    return queue


def prompt_on(url: str, prompt_id: str) -> dict[str, Any]:
    """The graph ``url`` ran for ``prompt_id``, from its own history."""
    entry = httpx.get(f"{url}/history/{prompt_id}", timeout=10).json()[prompt_id]
    graph: dict[str, Any] = entry["prompt"][2]
    return graph


def test_a_3x4_sweep_over_two_servers(two: Engine, real_pool: LocalPool, tmp_path: Path) -> None:
    """Every point's image has its colour and width, the server that ran it holds it in its history with exactly
    those inputs, and the work is spread over both servers."""
    step = 0.15
    sweep = two.sweep(slow_workflow(steps=2, step_seconds=step), {"EmptyImage.color": COLORS, "1.width": WIDTHS}).wait(
        120
    )
    assert sweep.shape == (3, 4) and len(sweep.points) == 12 and sweep.counts() == {"success": 12}
    assert [p.coords for p in sweep.points] == [(i, j) for i in range(3) for j in range(4)]
    for point in sweep.points:
        color, width = point.params["EmptyImage.color"], point.params["1.width"]
        assert (color, width) == (COLORS[point.coords[0]], WIDTHS[point.coords[1]])
        result = point.result
        assert result is not None and result.server == point.server == point.task.server
        (image,) = result.images
        assert image.size == (width, 8) and colours(image) == {rgb(color)}
        ran = prompt_on(result.server, result.prompt_id)
        assert ran["1"]["inputs"] == {"width": width, "height": 8, "batch_size": 1, "color": color}
        assert point.task.progress is not None and point.task.progress.max == 2  # progress events came
    servers = sweep.servers
    assert set(servers) == set(real_pool.urls[:2]) and sum(servers.values()) == 12
    assert min(servers.values()) >= 3, f"the work was not spread over both servers: {servers}"
    ideal = 12 * 2 * step / 2
    print(f"3x4 sweep over 2 servers: {sweep.elapsed:.2f} s (the sleeps alone: {ideal:.2f} s), {servers}")

    assert [params for params, _ in sweep.results] == [p.params for p in sweep.points] and sweep.errors == []
    saved = sweep.save(tmp_path)
    names = sorted(path.name for path in saved)
    assert names == sorted(f"color={c}_width={w}.png" for c in COLORS for w in WIDTHS)
    assert sweep.save(tmp_path)[0].name == "color=16711680_width=8 (1).png"  # never overwrites
    with Image.open(tmp_path / "color=255_width=11.png") as saved_image:
        assert saved_image.size == (11, 8) and saved_image.convert("RGB").getpixel((0, 0)) == (0, 0, 255)

    frame = sweep.dataframe()
    assert list(frame.columns) == [
        "EmptyImage.color",
        "1.width",
        "status",
        "server",
        "prompt_id",
        "elapsed",
        "error",
        "result",
    ]
    assert len(frame) == 12 and set(frame["status"]) == {"success"} and frame["error"].isna().all()
    assert list(frame.loc[5, ["EmptyImage.color", "1.width"]]) == [0x00FF00, 9]
    assert repr(sweep).startswith("<Sweep 12 points (3x4) success=12 elapsed=")


def test_a_failing_point_fails_alone(two: Engine) -> None:
    """Point 1 saves outside the output folder (the server raises in ``SaveImage``), point 3 asks for 0 steps (the
    server refuses it at validation); the two others give their images."""
    sweep = two.sweep(
        slow_workflow(steps=1, step_seconds=0.05),
        {"SaveImage.filename_prefix": ["a", "../escape", "b", "c"], "2.steps": [1, 2, 1, 0]},
        zip=True,
    )
    assert sweep.wait(120) is sweep
    assert [p.status for p in sweep.points] == ["success", "error", "success", "error"]
    (params1, raised), (params3, refused) = sweep.errors
    assert params1 == {"SaveImage.filename_prefix": "../escape", "2.steps": 2}
    assert isinstance(raised, ExecutionError) and raised.node_id == "3" and "outside the output folder" in str(raised)
    assert params3 == {"SaveImage.filename_prefix": "c", "2.steps": 0}
    assert isinstance(refused, ValidationError) and refused.server in two.pool.records
    assert [params["SaveImage.filename_prefix"] for params, _ in sweep.results] == ["a", "b"]
    assert all(len(result.images) == 1 for _, result in sweep.results)


def test_cancel_cancels_every_unfinished_point_on_both_servers(two: Engine, real_pool: LocalPool) -> None:
    urls = real_pool.urls[:2]
    sweep = two.sweep(slow_workflow(steps=100, step_seconds=0.05), {"1.color": list(range(1, 11))})
    wait_until(lambda: len({p.server for p in sweep.points if p.status == RUNNING}) == 2, 60)
    assert all(queue_of(url)["queue_running"] for url in urls)
    started = time.monotonic()
    sweep.cancel()
    assert time.monotonic() - started < 2.0
    assert sweep.done() and sweep.counts() == {"cancelled": 10}
    assert all(isinstance(error, Cancelled) for _, error in sweep.errors)
    # Both servers drop our prompts: nothing of the sweep is left queued or running anywhere.
    ours = {attempt.prompt_id for p in sweep.points for attempt in p.task.attempts}
    assert len(ours) == 4  # depth 2 on each server; the six others were still waiting client-side

    def left() -> set[str]:
        return {item[1] for url in urls for key in ("queue_running", "queue_pending") for item in queue_of(url)[key]}

    wait_until(lambda: not (left() & ours), 5)


def test_a_sweep_over_uploaded_images(two: Engine) -> None:
    """Each point uploads its own picture to the server it is bound to: LoadImage -> ImageInvert -> SaveImage."""
    sources = [Image.new("RGB", (5, 3), (40 * i, 200 - 40 * i, 90)) for i in range(4)]
    graph = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "placeholder.png"}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "sweep-up"}},
    }
    sweep = two.sweep(graph, {"LoadImage.image": sources}).wait(120)
    assert sweep.counts() == {"success": 4}
    for source, (params, result) in zip(sources, sweep.results, strict=True):
        assert params["LoadImage.image"].digest  # the value is the Upload it became
        (image,) = result.images
        want = 255 - np.asarray(source, dtype=np.int16)
        assert np.abs(np.asarray(image.convert("RGB"), dtype=np.int16) - want).max() <= 1


def test_a_sweep_over_a_ui_format_workflow(two: Engine) -> None:
    """The page's saved JSON, converted with a server's node types, then swept by the node's title."""
    saved = json.loads((UI_WORKFLOWS / "notes.json").read_text())
    sweep = two.sweep(saved, {"EmptyImage.color": [0x102030, 0x405060]}).wait(120)
    assert sweep.counts() == {"success": 2}
    seen = [colours(result.images[0]) for _, result in sweep.results]
    assert seen == [{(0x10, 0x20, 0x30)}, {(0x40, 0x50, 0x60)}]
