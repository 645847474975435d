"""A ``%%comfy NAME << --over ...`` sweep in JupyterLab: the grid fills live while the cell blocks (tiles turn done
one by one), a thumbnail opens full size, the grid's Cancel stops every unfinished point on both servers within 2 s
(their ``/queue`` asked directly), and the panel and the finished grid read in the dark theme too.

Real ComfyUI servers in pool mode, real JupyterLab, headless Chromium. Screenshots: ``out/screenshots/sweep-*.png``.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import nbformat
from nbformat.v4 import new_code_cell, new_notebook
from playwright.sync_api import expect

from comfy_notebook.tools.local_pool import LocalPool
from tests.browser.conftest import Lab
from tests.browser.test_blocking import ANSWER_SECONDS, running_prompt, seconds_until_idle
from tests.browser.test_lab import TIMEOUT_MS, run_cell

STEP_SECONDS = 0.25
COLORS = [0x3050C0, 0xC05030, 0x30A050]  # the first axis: three colours (rows)
STEPS = [4, 8]  # the second axis: 1 s and 2 s of work (columns)
POINTS = len(COLORS) * len(STEPS)
#: The sweep cancelled half-way: 8 points of 3 s over two servers, 12 s in all.
CANCEL_POINTS, CANCEL_STEPS = 8, 12

#: The number of finished tiles in the grid of cell ``index`` once it is in ``(above, total)``; falsy until then.
DONE_TILES = """([index, above, total]) => {
    const cell = document.querySelectorAll('.jp-Notebook .jp-Cell')[index];
    const done = cell ? cell.querySelectorAll('.comfy-sweep-grid .comfy-tile-success').length : 0;
    return done > above && done < total ? done : false;
}"""


#: Larger than a tile's 128 px thumbnail, so a click has a full-size picture to open.
SIZE = 192


def graph(steps: int) -> str:
    workflow = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1, "color": 0}},
        "2": {"class_type": "SlowSteps", "inputs": {"image": ["1", 0], "steps": steps, "step_seconds": STEP_SECONDS}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "sweep"}},
    }
    return "{\n" + ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in workflow.items()) + "\n}"


def sweep_cell(name: str, colors: list[int], steps: list[int], body_steps: int) -> str:
    over = f"--over 1.color={','.join(map(str, colors))}"
    if len(steps) > 1:
        over += f" --over 2.steps={','.join(map(str, steps))}"
    return f"%%comfy {name} << {over}\n" + graph(body_steps)


def sweep_notebook(urls: list[str], *, cancel_cell: bool = True) -> Any:
    cells = [
        new_code_cell(f"%load_ext comfy_notebook\n%comfy servers {' '.join(urls)}\n%comfy mode pool"),
        new_code_cell("%comfy status"),
        new_code_cell(sweep_cell("grid", COLORS, STEPS, STEPS[0])),
        new_code_cell(
            "print(len(grid.results), 'results;', len(grid.servers), 'servers;',"
            f" sorted({{p['1.color'] for p, _r in grid.results}}) == {sorted(COLORS)})"
        ),
    ]
    if cancel_cell:
        cells.append(new_code_cell(sweep_cell("stopped", list(range(CANCEL_POINTS)), [], CANCEL_STEPS)))
    metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}}
    return new_notebook(cells=cells, metadata=metadata)


def cell(page: Any, index: int) -> Any:
    return page.locator(".jp-Notebook .jp-Cell").nth(index)


def done_tiles_between(page: Any, index: int, above: int, total: int) -> int:
    handle = page.wait_for_function(DONE_TILES, arg=[index, above, total], timeout=TIMEOUT_MS)
    return int(handle.json_value())


def switch_theme(page: Any, name: str) -> None:
    """Settings > Theme > ``name``, as a person does it (applied at once, no reload)."""
    page.locator(".lm-MenuBar-itemLabel", has_text="Settings").click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Theme$")).hover()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(f"^{re.escape(name)}$")).click()
    expect(page.locator("body")).to_have_attribute("data-jp-theme-name", name, timeout=10_000)


def test_grid_fills_live_cancels_and_reads_in_both_themes(
    lab: Lab, lab_pool: LocalPool, page: Any, screenshots: Path
) -> None:
    urls = lab_pool.urls
    nbformat.write(sweep_notebook(urls), lab.root / "sweep.ipynb")
    page.goto(lab.open_url("sweep.ipynb"))
    expect(run_cell(page, 0, 1).locator(".jp-OutputArea")).to_contain_text("pool", timeout=TIMEOUT_MS)
    panel = run_cell(page, 1, 2).locator(".comfy-status-panel")
    expect(panel).to_be_visible(timeout=TIMEOUT_MS)

    # 1. The grid fills live: tiles turn done one after another while the cell still blocks.
    grid_cell = run_cell(page, 2, 3)
    grid = grid_cell.locator(".comfy-sweep-grid")
    expect(grid).to_be_visible(timeout=TIMEOUT_MS)
    expect(grid.locator(".comfy-tile")).to_have_count(POINTS, timeout=TIMEOUT_MS)
    seen = [done_tiles_between(page, 2, 0, POINTS)]
    running = grid_cell.locator(".jp-InputPrompt").inner_text()
    page.screenshot(path=screenshots / "sweep-grid-live.png")
    seen.append(done_tiles_between(page, 2, seen[0], POINTS))
    assert running == "[*]:", f"the first tiles were done only after the cell ended ({running})"
    expect(grid_cell.locator(".jp-InputPrompt")).to_have_text("[3]:", timeout=TIMEOUT_MS)
    expect(grid.locator(".comfy-tile-success")).to_have_count(POINTS)
    assert 0 < seen[0] < seen[1] < POINTS, seen
    # Rows are the colours, columns the step counts: a table with both axes' values as headers.
    for value in [*map(str, COLORS), *map(str, STEPS)]:
        expect(grid).to_contain_text(value)
    expect(grid.locator("img.comfy-thumb")).to_have_count(POINTS)
    # The kernel side agrees: every point has a result, both servers ran points, each colour is there.
    out = run_cell(page, 3, 4).locator(".jp-OutputArea")
    expect(out).to_contain_text(f"{POINTS} results; 2 servers; True", timeout=TIMEOUT_MS)
    # A thumbnail opens full size on click, and closes again.
    zoom = grid.locator("details.comfy-zoom").first
    zoom.locator("summary").click()
    expect(zoom.locator("img.comfy-full")).to_be_visible()
    assert zoom.locator("img.comfy-full").evaluate("img => img.naturalWidth") == SIZE
    grid_cell.scroll_into_view_if_needed()
    page.screenshot(path=screenshots / "sweep-grid-zoom.png")
    zoom.locator("summary").click()
    expect(zoom.locator("img.comfy-full")).to_be_hidden()
    grid_cell.screenshot(path=screenshots / "sweep-grid.png")

    # 2. The grid's Cancel stops every unfinished point on both servers within 2 s, and the cell says so.
    stopped_cell = run_cell(page, 4, 5)
    stopped = stopped_cell.locator(".comfy-sweep-grid")
    running_prompt(urls)
    expect(stopped.locator(".comfy-tile")).to_have_count(CANCEL_POINTS, timeout=TIMEOUT_MS)
    clicked = time.monotonic()
    stopped.get_by_role("button", name="Cancel").click()
    on_servers = seconds_until_idle(urls, clicked)
    expect(stopped_cell.locator(".jp-OutputArea")).to_contain_text(re.compile("cancelled", re.I), timeout=2_000)
    in_cell = time.monotonic() - clicked
    assert on_servers <= ANSWER_SECONDS, f"the sweep's Cancel took {on_servers:.2f} s to empty both servers"
    assert in_cell <= ANSWER_SECONDS + 0.5, f"the cell said 'cancelled' {in_cell:.2f} s after Cancel"
    expect(stopped_cell.locator(".jp-InputPrompt")).to_have_text("[5]:", timeout=5_000)
    expect(stopped.locator(".comfy-tile-cancelled").first).to_be_visible(timeout=5_000)
    cancelled = stopped.locator(".comfy-tile-cancelled").count()
    assert cancelled >= CANCEL_POINTS - 2, f"only {cancelled} of {CANCEL_POINTS} points were cancelled"
    stopped_cell.screenshot(path=screenshots / "sweep-cancelled.png")
    print(f"sweep Cancel: both servers idle after {on_servers:.2f} s, cell ended after {in_cell:.2f} s")

    # 3. The dark theme: the panel and the finished grid stay readable (screenshots to look at).
    switch_theme(page, "JupyterLab Dark")
    panel.scroll_into_view_if_needed()
    cell(page, 1).screenshot(path=screenshots / "sweep-panel-dark.png")
    grid_cell.scroll_into_view_if_needed()
    grid_cell.screenshot(path=screenshots / "sweep-grid-dark.png")
    # The tile text follows the theme: light on dark, not the light theme's dark grey.
    color = grid.locator(".comfy-tile").first.evaluate("e => getComputedStyle(e).color")
    assert _luminance(color) > 0.5, f"tile text {color} is dark on the dark theme"
    switch_theme(page, "JupyterLab Light")


def _luminance(css_color: str) -> float:
    """0 (black) .. 1 (white) from ``rgb(r, g, b)`` / ``rgba(...)``."""
    r, g, b = (int(v) for v in re.findall(r"\d+", css_color)[:3])
    return (0.2126 * r + 0.7152 * g + 0.0722 * b) / 255
