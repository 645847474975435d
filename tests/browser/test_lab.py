"""What a person sees in JupyterLab: the status panel, a ``%%comfy`` cell's progress bar moving, its image, the
panel showing the lock, and the Reset button clearing it. Real ComfyUI servers, real JupyterLab, headless Chromium.

Screenshots of each step go to out/screenshots/ so a person can check them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import nbformat
from nbformat.v4 import new_code_cell, new_notebook
from playwright.sync_api import expect

from comfy_notebook.tools.local_pool import LocalPool
from tests.browser.conftest import Lab

STEPS, STEP_SECONDS = 20, 0.15  # ~3 s of real progress events: many distinct bar widths
TIMEOUT_MS = 60_000
KERNEL_STATUS = '.jp-StatusBar-TextItem[title^="Change kernel"]'
PROGRESS_BAR = ".comfy-progress .widget-hprogress .progress-bar"

#: The bar's width in percent once it is above ``above`` and below ``below``; falsy (keep polling) until then.
WIDTH_BETWEEN = """([selector, above, below]) => {
    const bar = document.querySelector(selector);
    const width = bar ? parseFloat(bar.style.width) : NaN;
    return width > above && width < below ? width : false;
}"""


def write_notebook(root: Path, urls: list[str]) -> str:
    """A notebook that loads the extension, points at the pool, shows the panel and runs a slow workflow."""
    workflow = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 160, "height": 160, "batch_size": 1, "color": 0x20A060}},
        "2": {"class_type": "SlowSteps", "inputs": {"image": ["1", 0], "steps": STEPS, "step_seconds": STEP_SECONDS}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "lab"}},
    }
    body = "{\n" + ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in workflow.items()) + "\n}"
    nb = new_notebook(
        cells=[
            new_code_cell(f"%load_ext comfy_notebook\n%comfy servers {' '.join(urls)}"),
            new_code_cell("%comfy status"),
            new_code_cell("%%comfy result <<\n" + body),
        ],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}},
    )
    nbformat.write(nb, root / "comfy.ipynb")
    return "comfy.ipynb"


def run_cell(page: Any, index: int, count: int) -> Any:
    """Shift+Enter in cell ``index`` once the kernel is idle; check it started (prompt ``[*]`` or ``[count]``)."""
    expect(page.locator(KERNEL_STATUS)).to_have_text(re.compile(r"\| Idle$"), timeout=TIMEOUT_MS)
    cell = page.locator(".jp-Notebook .jp-Cell").nth(index)
    cell.locator(".jp-InputArea-editor").click()
    page.keyboard.press("Shift+Enter")
    expect(cell.locator(".jp-InputPrompt")).to_have_text(re.compile(rf"\[(\*|{count})\]:"), timeout=10_000)
    return cell


def bar_width_between(page: Any, above: float, below: float) -> float:
    handle = page.wait_for_function(WIDTH_BETWEEN, arg=[PROGRESS_BAR, above, below], timeout=TIMEOUT_MS)
    return float(handle.json_value())


def test_progress_image_lock_and_reset(lab: Lab, lab_pool: LocalPool, page: Any, screenshots: Path) -> None:
    urls = lab_pool.urls
    page.goto(lab.open_url(write_notebook(lab.root, urls)))

    # 1. Load the extension and show the panel: nothing is locked yet.
    expect(run_cell(page, 0, 1).locator(".jp-OutputArea")).to_contain_text(urls[1], timeout=TIMEOUT_MS)
    panel_cell = run_cell(page, 1, 2)
    panel = panel_cell.locator(".comfy-status-panel")
    expect(panel).to_be_visible(timeout=TIMEOUT_MS)
    locked = panel.locator(".comfy-locked")
    expect(locked).to_have_text("locked: none")
    expect(panel.locator("tr.comfy-server-row")).to_have_count(2)
    page.screenshot(path=screenshots / "01-panel.png")

    # 2. Run the workflow: while the cell blocks, the progress bar moves through at least two widths below 100 %.
    run_cell(page, 2, 3)
    first = bar_width_between(page, 0, 100)
    page.screenshot(path=screenshots / "02-progress.png")
    # The panel keeps refreshing while that cell blocks the kernel: it picks up the lock the run has taken.
    expect(locked).to_have_text(re.compile(r"locked: http://127\.0\.0\.1:\d+"), timeout=5_000)
    expect(page.locator(".jp-Notebook .jp-Cell").nth(2).locator(".jp-InputPrompt")).to_have_text("[*]:")
    second = bar_width_between(page, min(first + 20, 75), 100)  # far enough along to see it in the screenshot
    assert 0 < first < second < 100
    page.screenshot(path=screenshots / "03-progress-later.png")

    # 3. The cell ends with the output image and its summary naming the server that ran it.
    workflow_cell = page.locator(".jp-Notebook .jp-Cell").nth(2)
    expect(workflow_cell.locator(".jp-InputPrompt")).to_have_text("[3]:", timeout=TIMEOUT_MS)
    image = workflow_cell.locator(".comfy-result img")
    expect(image).to_be_visible(timeout=TIMEOUT_MS)
    assert image.evaluate("img => img.complete && img.naturalWidth") == 160
    expect(workflow_cell.locator(PROGRESS_BAR)).to_have_attribute("style", re.compile(r"width: 100%"))
    summary = workflow_cell.locator(".comfy-result-summary").inner_text()
    server = re.search(r"server: (http://127\.0\.0\.1:\d+)", summary)
    assert server and server.group(1) in urls and summary.startswith("success"), summary
    page.screenshot(path=screenshots / "04-image.png")

    # 4. Within the panel's ~1 s refresh (the kernel is idle now) it shows the lock on that server, nothing pending.
    expect(locked).to_have_text(f"locked: {server.group(1)}", timeout=10_000)
    expect(panel.locator(".comfy-pending")).to_have_text("pending tasks: 0", timeout=10_000)
    expect(panel.locator("tr.comfy-server-locked")).to_contain_text(server.group(1))
    panel.scroll_into_view_if_needed()
    page.screenshot(path=screenshots / "05-locked.png")

    # 5. Reset in the panel clears the lock, and says so.
    panel.get_by_role("button", name="Reset").click()
    expect(locked).to_have_text("locked: none", timeout=10_000)
    expect(panel.locator(".comfy-status-note")).to_contain_text(f"reset: lock cleared (was {server.group(1)})")
    expect(panel.locator("tr.comfy-server-locked")).to_have_count(0)
    page.screenshot(path=screenshots / "06-reset.png")
