"""The sweep grid: tiles, labels, states, table vs gallery, the static HTML, Cancel; in an in-process shell against
fake ComfyUI servers (real sweeps over real servers: tests/integration/test_notebooks.py::test_sweeps).

The pure renderings are checked on a ``Sweep`` built from a plan and hand-set tasks (as test_render does for
single tasks); the live grid on sweeps the engine really ran on the fakes."""

from __future__ import annotations

import base64
import io
import json
import re
import threading
import time
from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output
from PIL import Image

from comfy_notebook import api
from comfy_notebook.core.errors import (
    Cancelled,
    ExecutionError,
    InputError,
    NodeError,
    ServerUnavailable,
    ValidationError,
    WorkflowError,
)
from comfy_notebook.core.outputs import file_refs
from comfy_notebook.core.sweep import plan
from comfy_notebook.engine.sweep import Sweep
from comfy_notebook.engine.task import Progress, Result, Task
from comfy_notebook.notebook import sweepview
from comfy_notebook.notebook.grid import CSS_GRID, SweepGrid
from tests.fakes.fake_comfy import FakeComfy, wait_until
from tests.notebook.conftest import magics_of

WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
A, B = "http://10.0.0.1:8188", "http://10.0.0.2:8188"
GRAPH = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "color": 0, "steps": 2, "step_delay": 0.0}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "grid"}},
}
BODY = json.dumps(GRAPH)
IMG = re.compile(r'<img class="comfy-thumb" src="data:image/(?:jpeg|png);base64,')


def hand_made(over: dict[str, list[Any]], *, zip_: bool = False) -> Sweep:
    """A Sweep of hand-set tasks (nothing runs): its points' states are whatever a test writes."""
    layout = plan(GRAPH, over, zip=zip_)
    tasks = [Task(f"p-{p.index}", layout.workflow_for(p), lambda _t: None) for p in layout.points]
    return Sweep(layout, tasks, lambda _tasks: None, started_at=time.time())


def tile_texts(html: str) -> list[str]:
    """Each tile's visible text (tags removed), in document order."""
    tiles = re.split(r'<div class="comfy-tile comfy-tile-[a-z]+"', html)[1:]  # each up to the next one ...
    tiles = [tile.split("</td>")[0] for tile in tiles]  # ... or to the end of its table cell
    return [re.sub(r"\s+", " ", re.sub(r"<[^>]+>|^[^>]*>", " ", tile)).strip() for tile in tiles]


# -- pure renderings --------------------------------------------------------------------------------------------------
def test_two_axes_make_a_table_with_the_values_as_row_and_column_headers() -> None:
    sweep = hand_made({"1.width": [8, 16], "1.height": [8, 16, 24]})
    html = sweepview.sweep_html(sweep, sweepview.Thumbs())
    (table,) = re.findall(r'<table class="comfy-sweep-table">(.*?)</table>', html, flags=re.DOTALL)
    rows = re.findall(r"<tr>(.*?)</tr>", table, flags=re.DOTALL)
    assert len(rows) == 3  # the header row and one per width
    assert re.findall(r"<th>([^<]*)</th>", rows[0]) == ["8", "16", "24"]  # the corner names the axes instead
    assert "width &darr;" in rows[0] and "height &rarr;" in rows[0]
    assert [re.findall(r"<th>([^<]*)</th>", row) for row in rows[1:]] == [["8"], ["16"]]
    assert [row.count('<div class="comfy-tile ') for row in rows[1:]] == [3, 3]
    assert "comfy-tile-label" not in html  # the headers carry the labels; each tile's title has the full one
    assert 'title="width=16, height=24"' in rows[2]


@pytest.mark.parametrize(
    ("over", "zip_", "labels"),
    [
        ({"1.width": [8, 16]}, False, ["width=8", "width=16"]),
        ({"1.width": [8, 16], "1.height": [4, 5]}, True, ["width=8, height=4", "width=16, height=5"]),
        (
            {"1.width": [8], "1.height": [4, 5], "1.color": [1]},
            False,
            ["width=8, height=4, color=1", "width=8, height=5, color=1"],
        ),
    ],
)
def test_one_axis_three_axes_or_a_zip_make_a_gallery_with_full_labels(
    over: dict[str, list[Any]], zip_: bool, labels: list[str]
) -> None:
    html = sweepview.sweep_html(hand_made(over, zip_=zip_), sweepview.Thumbs())
    assert "<table" not in html and 'class="comfy-sweep-gallery"' in html
    assert re.findall(r'<div class="comfy-tile-label"[^>]*>([^<]*)</div>', html) == labels


def test_each_state_is_a_badge_with_its_server_progress_or_error() -> None:
    sweep = hand_made({"1.width": [1, 2, 3, 4, 5, 6]})
    waiting, queued, running, failed, cancelled, _pending = (p.task for p in sweep.points)
    waiting._update(status="waiting", queue_position=2)
    queued._update(status="queued", server=A, queue_position=0)
    running._update(status="running", server=B, node="1", progress=Progress(3, 12, "1"))
    failed._update(server=A)
    failed._finish(error=ServerUnavailable("a <node> failed\nsecond line", server=A), status="error")
    cancelled._finish(error=Cancelled("cancelled", server=B), status="cancelled")
    html = sweepview.sweep_html(sweep, sweepview.Thumbs())
    assert tile_texts(html) == [
        "width=1 waiting #3",
        "width=2 queued on 10.0.0.1:8188",
        "width=3 running 3/12 on 10.0.0.2:8188",
        "width=4 error 10.0.0.1:8188 a &lt;node&gt; failed",
        "width=5 cancelled",
        "width=6 sending",
    ]
    badges = re.findall(r'class="comfy-badge comfy-state comfy-state-(\w+)" style="[^"]*background:([^;"]+)', html)
    tones = dict(badges)
    assert tones["running"].startswith("var(--jp-brand-color1,") and tones["error"].startswith("var(--jp-error-color1")
    assert tones["cancelled"].startswith("var(--jp-warn-color1") and tones["queued"].startswith("var(--jp-info-color1")
    assert 'style="width:25%;' in html  # the running point's progress bar: 3 of 12
    assert "second line" not in html
    header = sweepview.header_html(sweep)
    assert "0/6 done" in header and "running 1" in header and "1 failed" in header and "1 cancelled" in header
    assert "by server: 10.0.0.1:8188 2, 10.0.0.2:8188 1" in header  # the cancelled one never had a server
    text = sweepview.sweep_text(sweep)
    assert text.splitlines()[0].startswith("comfy sweep 6: 0/6 done (1 cancelled, 1 error, 1 pending, 1 queued")
    assert f"  width=4  error  {A}  a <node> failed" in text.splitlines()


def test_labels_and_errors_are_escaped_and_credentials_never_shown() -> None:
    sweep = hand_made({"1.color": ["<b>red</b>", "blue"]})
    first = sweep.points[0].task
    first._update(server="http://alice:s3cret@10.0.0.1:8188")
    first._finish(error=ServerUnavailable("GET http://bob:pw@h:1/x?token=abc failed", server=None), status="error")
    html = sweepview.sweep_html(sweep, sweepview.Thumbs())
    assert "<b>red</b>" not in html and "&lt;b&gt;red&lt;/b&gt;" in html
    for secret in ("s3cret", "alice", "bob", ":pw@", "abc"):
        assert secret not in html and secret not in sweepview.sweep_text(sweep)


# -- the live grid on fake servers ------------------------------------------------------------------------------------
def sweep_cell(ip: InteractiveShell, line: str, body: str = BODY) -> Any:
    return ip.run_cell(f"%%comfy {line}\n{body}")


def test_a_two_axis_sweep_cell_fills_the_table_and_leaves_a_static_grid(
    loaded: InteractiveShell, fake: FakeComfy
) -> None:
    with capture_output() as captured:
        outcome = sweep_cell(loaded, "s << --over 1.width=8,16 --over 1.height=8,16,24")
    assert outcome.success and outcome.result is None
    sweep = loaded.user_ns["s"]
    assert isinstance(sweep, Sweep) and sweep.done() and len(sweep) == 6
    assert {p.status for p in sweep.points} == {"success"}
    sent = [fake.history(p.task.prompt_id)["prompt"][2]["1"]["inputs"] for p in sweep.points]
    assert [(i["width"], i["height"]) for i in sent] == [(w, h) for w in (8, 16) for h in (8, 16, 24)]

    (grid,) = magics_of(loaded).grids
    assert CSS_GRID in grid.box._dom_classes
    # 1 corner + 3 column heads, then per row 1 head + 3 tiles, each tile the point at its (row, column)
    cells = grid.body.children
    assert len(cells) == 4 + 2 * 4 and grid.body.layout.grid_template_columns == "max-content repeat(3, max-content)"
    assert [cells[i] for i in (5, 6, 7, 9, 10, 11)] == grid.tiles
    for tile in grid.tiles:
        assert IMG.search(tile.value) and 'class="comfy-badge comfy-state comfy-state-success"' in tile.value
        assert "comfy-zoom" not in tile.value  # the fake's 8 px pictures: nothing to zoom into (see below)
    assert grid.cancel_button.layout.display == "none"  # nothing left to cancel

    shown = [out for out in captured.outputs if not out.update]
    (final,) = [out for out in captured.outputs if out.update]  # the static grid for saved notebooks
    assert len(shown) == 1 and WIDGET_MIME in shown[0].data
    assert WIDGET_MIME in final.data and final.data["text/html"].count('<img class="comfy-thumb"') == 6
    assert "6/6 done" in final.data["text/html"] and '<table class="comfy-sweep-table">' in final.data["text/html"]
    assert final.data["text/plain"].startswith("comfy sweep 2x3: 6/6 done (6 success); by server: " + fake.url)


def finished(sweep: Sweep, pictures: list[bytes]) -> Sweep:
    """Each point of ``sweep`` succeeded with one of ``pictures`` (bytes already here, as after a run)."""
    for point, data in zip(sweep.points, pictures, strict=True):
        outputs = {"3": {"images": [{"filename": f"p{point.index}.png", "subfolder": "", "type": "output"}]}}
        refs = file_refs(outputs)
        result = Result(point.task.prompt_id, A, "success", outputs=outputs, refs=refs,
                        fetched={refs[0]: data}, fetch=lambda r: [None for _ in r], elapsed=1.0)  # fmt: skip
        point.task._update(server=A)
        point.task._finish(result)
    return sweep


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 80, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_thumbnail_is_small_and_a_click_opens_the_picture_at_full_size() -> None:
    big, small = png(600, 300), png(64, 64)
    sweep = finished(hand_made({"1.width": [600, 64]}), [big, small])
    thumbs = sweepview.Thumbs()
    large, tiny = (thumbs.get(point) for point in sweep.points)
    assert large is not None and tiny is not None
    with Image.open(io.BytesIO(base64.b64decode(large.thumb.split(",", 1)[1]))) as image:
        assert image.size == (2 * sweepview.THUMB, sweepview.THUMB)  # twice the box, for sharp screens
    assert large.full is not None and base64.b64decode(large.full.split(",", 1)[1]) == big  # the file itself
    assert tiny.full is None  # no larger than its thumbnail: nothing to zoom into
    html = sweepview.sweep_html(sweep, thumbs)
    assert html.count('<details class="comfy-zoom">') == 1 and html.count('class="comfy-full"') == 1
    # The full picture sits in the <summary> next to the thumbnail, hidden until the <details> opens; the
    # zoom's <style> swaps them (a click anywhere on it closes it again).
    assert re.search(r'<summary[^>]*><img class="comfy-thumb"[^>]*/><img class="comfy-full"[^>]*display:none', html)
    assert "details.comfy-zoom[open] .comfy-full{display:block!important}" in html
    assert thumbs.get(sweep.points[0]) is large  # made once


def test_the_zoom_budget_keeps_a_huge_sweep_reasonable(monkeypatch: pytest.MonkeyPatch) -> None:
    picture = png(400, 400)
    monkeypatch.setattr(sweepview, "MAX_FULL_TOTAL_BYTES", len(picture) * 2)
    sweep = finished(hand_made({"1.width": [1, 2, 3]}), [picture] * 3)
    thumbs = sweepview.Thumbs()
    assert [thumbs.get(p).full is not None for p in sweep.points] == [True, True, False]  # type: ignore[union-attr]
    assert sweepview.sweep_html(sweep, thumbs).count('<img class="comfy-thumb"') == 3  # thumbnails for all


def test_the_grid_shows_waiting_and_queued_points_live(loaded: InteractiveShell, fake: FakeComfy) -> None:
    loaded.run_line_magic("config", "ComfyMagics.grid_interval = 0.05")
    loaded.run_line_magic("comfy", "mode pool")
    fake.hold()  # the server keeps what it is given queued: two (the pool's depth), the rest wait here
    with capture_output():
        assert sweep_cell(loaded, "s << --no-wait --over 1.width=1,2,3,4").success
    sweep = loaded.user_ns["s"]
    (grid,) = magics_of(loaded).grids
    wait_until(lambda: [p.status for p in sweep.points] == ["queued", "queued", "waiting", "waiting"], timeout=10)
    wait_until(lambda: "waiting #" in grid.tiles[3].value and "queued" in grid.tiles[0].value, timeout=5)
    assert "0/4 done" in grid.header.value and grid.cancel_button.layout.display != "none"
    fake.release()
    sweep.wait(20)
    wait_until(lambda: all(IMG.search(tile.value) for tile in grid.tiles), timeout=5)
    wait_until(lambda: "4/4 done" in grid.header.value and grid.cancel_button.layout.display == "none", timeout=5)


def test_cancel_on_the_grid_cancels_every_unfinished_point_and_ends_the_cell(
    loaded: InteractiveShell, fake: FakeComfy, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.hold()
    clicked = threading.Event()

    def click() -> None:  # what the Cancel button does when clicked while the cell waits
        wait_until(lambda: bool(magics_of(loaded).grids) and len(fake.pending_prompt_ids) == 3, timeout=10)
        magics_of(loaded).grids[0].cancel_button.click()
        clicked.set()

    clicker = threading.Thread(target=click)
    clicker.start()
    outcome = sweep_cell(loaded, "s << --over 1.width=1,2,3")
    clicker.join()
    assert clicked.is_set()
    assert isinstance(outcome.error_in_exec, Cancelled)
    out = capsys.readouterr().out
    assert "Cancelled\x1b[0m: 3 of 3 sweep points cancelled\n" in out and "Traceback" not in out
    sweep = loaded.user_ns["s"]  # stored before the wait: what finished is kept
    assert [p.status for p in sweep.points] == ["cancelled"] * 3
    wait_until(lambda: sorted(fake.deleted_from_queue) == sorted(p.task.prompt_id for p in sweep.points), timeout=5)
    grid = magics_of(loaded).grids[0]
    assert all("comfy-state-cancelled" in tile.value for tile in grid.tiles)
    assert "0/3 done" in grid.header.value and "3 cancelled" in grid.header.value  # said once, in the header
    assert grid.cancel_button.layout.display == "none"


def test_failed_points_never_fail_the_cell(loaded: InteractiveShell, fake: FakeComfy) -> None:
    body = json.dumps({
        "1": {"class_type": "Raise", "inputs": {"message": "no GPU today"}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}},
    })  # fmt: skip
    with capture_output() as captured:
        outcome = sweep_cell(loaded, "s << --over 1.message='no GPU today','nor tomorrow'", body)
    assert outcome.success
    sweep = loaded.user_ns["s"]
    assert [params for params, _ in sweep.errors] == [{"1.message": "no GPU today"}, {"1.message": "nor tomorrow"}]
    assert all(isinstance(error, ExecutionError) for _, error in sweep.errors) and sweep.results == []
    (final,) = [out for out in captured.outputs if out.update]
    where = fake.url.removeprefix("http://")
    assert tile_texts(final.data["text/html"]) == [
        f"message=no GPU today error {where} RuntimeError: no GPU today",
        f"message=nor tomorrow error {where} RuntimeError: nor tomorrow",
    ]  # the node's exception; the tooltip has the whole first line, naming the node
    assert f'title="node 1 (Raise) raised RuntimeError on {fake.url}: nor tomorrow"' in final.data["text/html"]
    assert "0/2 done" in final.data["text/html"] and "2 failed" in final.data["text/html"]


def test_a_sweep_without_widgets_shows_the_static_grid(loaded: InteractiveShell, fake: FakeComfy) -> None:
    loaded.run_line_magic("config", "ComfyMagics.widgets = 'off'")
    with capture_output() as captured:
        assert sweep_cell(loaded, "s << --over 1.width=8,16").success
    first, final = captured.outputs
    assert WIDGET_MIME not in first.data and final.update and WIDGET_MIME not in final.data
    assert final.data["text/html"].count('<img class="comfy-thumb"') == 2 and not magics_of(loaded).grids


def test_displaying_a_sweep_shows_a_live_grid_and_closing_stops_it(loaded: InteractiveShell, fake: FakeComfy) -> None:
    loaded.user_ns["s"] = sweep = api.sweep(BODY, {"1.width": [8, 16]})
    with capture_output() as captured:
        outcome = loaded.run_cell("s")
    assert outcome.result is sweep and not captured.outputs  # Out[n]: the display hook shows the live grid
    (grid,) = magics_of(loaded).grids
    assert isinstance(grid, SweepGrid) and grid.sweep is sweep
    sweep.wait(20)
    wait_until(lambda: "2/2 done" in grid.header.value, timeout=5)
    loaded.run_line_magic("unload_ext", "comfy_notebook")
    assert grid.closed and grid.box.comm is None


def test_a_plan_error_fails_the_cell_with_one_line(
    loaded: InteractiveShell, fake: FakeComfy, capsys: pytest.CaptureFixture[str]
) -> None:
    outcome = sweep_cell(loaded, "s << --over 9.seed=1,2")
    assert isinstance(outcome.error_in_exec, WorkflowError)
    out = capsys.readouterr().out
    assert "sweep key '9.seed'" in out and "1 (EmptyImage)" in out and "Traceback" not in out
    assert "s" not in loaded.user_ns and fake.posted_prompt_ids == []


def test_a_finished_sweep_displayed_later_shows_every_thumbnail_at_once(
    loaded: InteractiveShell, fake: FakeComfy
) -> None:
    sweep = api.sweep(BODY, {"1.width": [1, 2, 3], "1.height": [4, 5, 6]}).wait(20)
    with capture_output():
        loaded.display_formatter.format(sweep)
    (grid,) = magics_of(loaded).grids
    assert all(IMG.search(tile.value) for tile in grid.tiles)  # no ticker runs for a finished sweep


def test_a_refused_input_reads_as_the_node_input_and_why() -> None:
    sweep = hand_made({"1.width": [0]})
    refused = ValidationError(
        f"{A} refused the workflow: Prompt outputs failed validation",
        (NodeError("1", "EmptyImage", (InputError("value_smaller_than_min", "Value 0 smaller than min of 1",
                                                  "width", "width"),)),),
        server=A,
    )  # fmt: skip
    task = sweep.points[0].task
    task._update(server=A)
    task._finish(error=refused, status="error")
    html = sweepview.sweep_html(sweep, sweepview.Thumbs())
    assert tile_texts(html) == ["width=0 error 10.0.0.1:8188 EmptyImage width: Value 0 smaller than min of 1"]
    assert 'title="EmptyImage #1 width: Value 0 smaller than min of 1"' in html
