"""The same panel and sweep grid outside JupyterLab: in Jupyter Notebook 7 (live widgets, headless Chromium), and as
the static HTML that nbconvert makes of an executed notebook (no kernel, no widget manager: the static snapshots).

Real ComfyUI servers in pool mode. Screenshots: ``out/screenshots/notebook7-*.png``, ``nbconvert-*.png``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import nbformat
from nbformat.v4 import new_code_cell, new_notebook
from playwright.sync_api import expect

from comfy_notebook.tools.local_pool import LocalPool
from comfy_notebook.tools.notebooks import execute_notebook
from tests.browser.conftest import Lab, notebook7_url
from tests.browser.test_grid import graph
from tests.browser.test_lab import TIMEOUT_MS

COLORS, STEPS = [0x3050C0, 0xC05030], [1, 2]
POINTS = len(COLORS) * len(STEPS)


def small_sweep_notebook(urls: list[str], *, pool_env: bool = False) -> Any:
    """Load, pool mode, the panel, a 2 x 2 sweep (a table with both axes' values as headers)."""
    servers = "" if pool_env else f"\n%comfy servers {' '.join(urls)}"
    over = f"--over 1.color={','.join(map(str, COLORS))} --over 2.steps={','.join(map(str, STEPS))}"
    cells = [
        new_code_cell(f"%load_ext comfy_notebook{servers}\n%comfy mode pool"),
        new_code_cell("%comfy status"),
        new_code_cell(f"%%comfy small << {over}\n" + graph(1)),
    ]
    metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}}
    return new_notebook(cells=cells, metadata=metadata)


def test_panel_and_grid_render_in_notebook7(notebook7: Lab, lab_pool: LocalPool, page: Any, screenshots: Path) -> None:
    nbformat.write(small_sweep_notebook(lab_pool.urls), notebook7.root / "nb7.ipynb")
    page.goto(notebook7_url(notebook7, "nb7.ipynb"))
    cells = page.locator(".jp-Notebook .jp-Cell")
    expect(cells).to_have_count(3, timeout=TIMEOUT_MS)
    # The page has its kernel (it opens on "No Kernel") and the kernel is idle: keys typed now are not lost.
    expect(page.locator("[data-jp-item-name=kernelName]")).to_have_text("Python 3 (ipykernel)", timeout=TIMEOUT_MS)
    expect(page.locator('.jp-Notebook-ExecutionIndicator[data-status="idle"]')).to_be_visible(timeout=TIMEOUT_MS)
    # Run the three cells as a person does: Shift+Enter three times (the later ones queue behind the first).
    cells.nth(0).locator(".jp-InputArea-editor").click()
    for _ in range(3):
        page.keyboard.press("Shift+Enter")
    for index in range(3):
        expect(cells.nth(index).locator(".jp-InputPrompt")).to_have_text(f"[{index + 1}]:", timeout=TIMEOUT_MS)
    panel = cells.nth(1).locator(".comfy-status-panel")
    expect(panel).to_be_visible()
    expect(panel.locator("tr.comfy-server-row")).to_have_count(2)
    expect(panel).to_contain_text("pool")
    expect(panel.get_by_role("button", name="Reset")).to_be_visible()
    grid = cells.nth(2).locator(".comfy-sweep-grid")
    expect(grid.locator(".comfy-tile-success")).to_have_count(POINTS, timeout=TIMEOUT_MS)
    expect(grid.locator("img.comfy-thumb")).to_have_count(POINTS)
    for value in map(str, [*COLORS, *STEPS]):
        expect(grid).to_contain_text(value)
    widths = grid.locator("img.comfy-thumb").evaluate_all("imgs => imgs.map(i => i.complete && i.naturalWidth)")
    assert all(width and width > 0 for width in widths), widths
    page.screenshot(path=screenshots / "notebook7-panel-grid.png", full_page=True)


def test_panel_and_grid_as_static_html_from_nbconvert(
    lab_pool: LocalPool, tmp_path: Path, page: Any, screenshots: Path
) -> None:
    source = tmp_path / "static.ipynb"
    nbformat.write(small_sweep_notebook(lab_pool.urls, pool_env=True), source)
    saved = execute_notebook(source, tmp_path / "out", env={"COMFY_SERVERS": " ".join(lab_pool.urls)}, timeout=120)
    html = saved.with_suffix(".html").read_text(encoding="utf-8")
    # No widget views (they need a kernel and a CDN-loaded manager): the static snapshots carry the story.
    assert "application/vnd.jupyter.widget-view+json" not in html
    panel = re.search(r'<div class="comfy-status".*?</table>', html, re.S)
    assert panel and all(url in panel.group(0) for url in lab_pool.urls), "no static panel naming both servers"
    assert len(re.findall(r'class="comfy-tile comfy-tile-success"', html)) == POINTS, "no static grid of 4 done tiles"
    thumbs = [tag for tag in re.findall(r"<img [^>]*>", html) if 'class="comfy-thumb"' in tag]
    assert len(thumbs) == POINTS and all('src="data:image/' in tag for tag in thumbs), "thumbnails not inline"
    # And it reads in a browser, offline: every thumbnail decodes.
    page.goto(saved.with_suffix(".html").as_uri())
    thumbs = page.locator("img.comfy-thumb")
    expect(thumbs).to_have_count(POINTS)
    widths = thumbs.evaluate_all("imgs => imgs.map(i => i.complete && i.naturalWidth)")
    assert all(width and width > 0 for width in widths), widths
    expect(page.locator(".comfy-status").first).to_be_visible()
    page.screenshot(path=screenshots / "nbconvert-panel-grid.png", full_page=True)
