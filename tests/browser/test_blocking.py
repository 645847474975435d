"""Buttons answer while a ``%%comfy`` cell blocks, in JupyterLab: the panel's Reset and the progress widget's Cancel
end the running prompt on its server within 2 s (the servers' ``/queue`` and ``/history`` asked directly), the cell
ends with a short "cancelled" message, a cell queued with Shift+Enter meanwhile runs only after the blocking one, and
the kernel's stop button still cancels the waiting cell's prompt.

(A queued cell behind a cell that ends in an error, a cancelled one included, is aborted by Jupyter itself, as
behind any failed cell; so the queued cell waits behind a prompt that finishes.)

Real ComfyUI servers, real JupyterLab, headless Chromium; screenshots go to out/screenshots/.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
from pathlib import Path
from typing import Any

import nbformat
from nbformat.v4 import new_code_cell, new_notebook
from playwright.sync_api import expect

from comfy_notebook.tools.local_pool import LocalPool
from tests.browser.conftest import Lab
from tests.browser.test_lab import KERNEL_STATUS, PROGRESS_BAR, TIMEOUT_MS, WIDTH_BETWEEN, run_cell

STEPS, STEP_SECONDS = 40, 0.25  # a 10 s prompt: it is surely still running when a button is clicked
SHORT_STEPS = 16  # a 4 s prompt that finishes, with a cell queued behind it
#: What the issue asks: a click takes effect on the server within this many seconds.
ANSWER_SECONDS = 2.0
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only


def slow_body(color: int, steps: int = STEPS) -> str:
    workflow = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 96, "height": 96, "batch_size": 1, "color": color}},
        "2": {"class_type": "SlowSteps", "inputs": {"image": ["1", 0], "steps": steps, "step_seconds": STEP_SECONDS}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "blocking"}},
    }
    return "{\n" + ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in workflow.items()) + "\n}"


QUEUED_CELL = (
    "import comfy_notebook as cn\nprint('queued cell ran; prompts pending:', cn.get_status()['pending_tasks_count'])"
)


def write_notebook(root: Path, urls: list[str]) -> str:
    nb = new_notebook(
        cells=[
            new_code_cell(f"%load_ext comfy_notebook\n%comfy servers {' '.join(urls)}"),
            new_code_cell("%comfy status"),
            new_code_cell("%%comfy first <<\n" + slow_body(0x3050C0)),  # ended by the panel's Reset
            new_code_cell("%%comfy second <<\n" + slow_body(0xC05030)),  # ended by its own Cancel button
            new_code_cell("%%comfy third <<\n" + slow_body(0x30A050, SHORT_STEPS)),  # finishes
            new_code_cell(QUEUED_CELL),  # typed and queued while "third" blocks
            new_code_cell("%%comfy fourth <<\n" + slow_body(0x808080)),  # ended by the kernel's stop button
        ],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}},
    )
    nbformat.write(nb, root / "blocking.ipynb")
    return "blocking.ipynb"


def get_json(url: str) -> Any:
    with _HTTP.open(url, timeout=5.0) as resp:
        return json.loads(resp.read())


def running_prompt(urls: list[str]) -> tuple[str, str]:
    """(server, prompt_id) of the one prompt running on the pool, polled from the servers' ``/queue``."""
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while time.monotonic() < deadline:
        for url in urls:
            running = get_json(f"{url}/queue")["queue_running"]
            if running:
                return url, str(running[0][1])
        time.sleep(0.05)  # polling the servers, bounded by the deadline
    raise AssertionError(f"no prompt started running on {urls}")


def seconds_until_idle(urls: list[str], since: float) -> float:
    """Poll every server's ``/queue`` until nothing runs or waits anywhere; seconds from ``since``."""
    deadline = since + 10.0
    while time.monotonic() < deadline:
        queues = [get_json(f"{url}/queue") for url in urls]
        if not any(q["queue_running"] or q["queue_pending"] for q in queues):
            return time.monotonic() - since
        time.sleep(0.02)  # polling the servers, bounded by the deadline
    raise AssertionError(f"the prompt still runs 10 s after the click: {queues}")


def assert_interrupted(server: str, prompt_id: str) -> None:
    """The server's own record: the prompt was stopped, not finished (protocol.md: interrupted -> error)."""
    entry = get_json(f"{server}/history/{prompt_id}")[prompt_id]
    assert entry["status"]["status_str"] == "error" and not entry["status"]["completed"], entry["status"]
    events = [name for name, _data in entry["status"]["messages"]]
    assert "execution_interrupted" in events, events


def cell(page: Any, index: int) -> Any:
    return page.locator(".jp-Notebook .jp-Cell").nth(index)


def bar_width(page: Any, index: int, above: float) -> float:
    selector = f".jp-Notebook .jp-Cell:nth-child({index + 1}) {PROGRESS_BAR}"
    handle = page.wait_for_function(WIDTH_BETWEEN, arg=[selector, above, 100], timeout=TIMEOUT_MS)
    return float(handle.json_value())


def test_reset_and_cancel_answer_while_a_cell_blocks(
    lab: Lab, lab_pool: LocalPool, page: Any, screenshots: Path
) -> None:
    urls = lab_pool.urls
    page.goto(lab.open_url(write_notebook(lab.root, urls)))
    expect(run_cell(page, 0, 1).locator(".jp-OutputArea")).to_contain_text(urls[1], timeout=TIMEOUT_MS)
    panel = run_cell(page, 1, 2).locator(".comfy-status-panel")
    expect(panel).to_be_visible(timeout=TIMEOUT_MS)

    # 1. The panel's Reset, clicked while the "first" cell blocks on a 10 s prompt.
    first = run_cell(page, 2, 3)
    server, prompt_id = running_prompt(urls)
    bar_width(page, 2, 0)  # the widget is live: its bar moves while the cell blocks
    expect(first.locator(".jp-InputPrompt")).to_have_text("[*]:")
    page.screenshot(path=screenshots / "blocking-01-running.png")
    clicked = time.monotonic()
    panel.get_by_role("button", name="Reset").click()
    on_server = seconds_until_idle(urls, clicked)
    expect(first.locator(".jp-OutputArea")).to_contain_text(re.compile("cancel", re.I), timeout=2_000)
    in_cell = time.monotonic() - clicked
    expect(first.locator(".jp-InputPrompt")).to_have_text("[3]:", timeout=2_000)
    assert on_server <= ANSWER_SECONDS, f"Reset took {on_server:.2f} s to stop the prompt on {server}"
    assert in_cell <= ANSWER_SECONDS + 0.5, f"the cell said 'cancelled' {in_cell:.2f} s after Reset"
    assert_interrupted(server, prompt_id)
    page.screenshot(path=screenshots / "blocking-02-reset.png")
    print(f"Reset: prompt stopped on its server after {on_server:.2f} s, cell ended after {in_cell:.2f} s")

    # 2. The progress widget's Cancel, while the "second" cell blocks.
    second = run_cell(page, 3, 4)
    server, prompt_id = running_prompt(urls)
    bar_width(page, 3, 0)
    expect(second.locator(".jp-InputPrompt")).to_have_text("[*]:")
    clicked = time.monotonic()
    second.get_by_role("button", name="Cancel").click()
    on_server = seconds_until_idle(urls, clicked)
    expect(second.locator(".jp-OutputArea")).to_contain_text(re.compile("cancel", re.I), timeout=2_000)
    in_cell = time.monotonic() - clicked
    expect(second.locator(".jp-InputPrompt")).to_have_text("[4]:", timeout=2_000)
    assert on_server <= ANSWER_SECONDS, f"Cancel took {on_server:.2f} s to stop the prompt on {server}"
    assert in_cell <= ANSWER_SECONDS + 0.5, f"the cell said 'cancelled' {in_cell:.2f} s after Cancel"
    assert_interrupted(server, prompt_id)
    page.screenshot(path=screenshots / "blocking-03-cancel.png")
    print(f"Cancel: prompt stopped on its server after {on_server:.2f} s, cell ended after {in_cell:.2f} s")

    # 3. A cell typed and queued while "third" blocks is held (time passes, it has not run) and runs after it.
    third = run_cell(page, 4, 5)
    running_prompt(urls)
    width = bar_width(page, 4, 0)
    queued = cell(page, 5)
    queued.locator(".jp-InputArea-editor").click()
    page.keyboard.press("Shift+Enter")
    expect(queued.locator(".jp-InputPrompt")).to_have_text("[*]:", timeout=10_000)
    bar_width(page, 4, width + 2 * 100 / SHORT_STEPS)  # two more steps done while the queued cell waits
    expect(third.locator(".jp-InputPrompt")).to_have_text("[*]:")
    assert queued.locator(".jp-OutputArea-output").count() == 0, queued.locator(".jp-OutputArea").inner_text()
    page.screenshot(path=screenshots / "blocking-04-queued.png")
    expect(third.locator(".jp-InputPrompt")).to_have_text("[5]:", timeout=TIMEOUT_MS)
    expect(third.locator(".comfy-result img")).to_be_visible(timeout=TIMEOUT_MS)
    expect(queued.locator(".jp-InputPrompt")).to_have_text("[6]:", timeout=TIMEOUT_MS)
    expect(queued.locator(".jp-OutputArea")).to_contain_text("queued cell ran; prompts pending: 0")
    expect(page.locator(KERNEL_STATUS)).to_have_text(re.compile(r"\| Idle$"), timeout=TIMEOUT_MS)
    page.screenshot(path=screenshots / "blocking-05-after.png")

    # 4. The kernel's stop button (an interrupt) still reaches a cell that waits this way: its prompt is cancelled.
    fourth = run_cell(page, 6, 7)
    server, prompt_id = running_prompt(urls)
    bar_width(page, 6, 0)
    clicked = time.monotonic()
    page.locator('jp-button[data-command="notebook:interrupt-kernel"]').click()
    on_server = seconds_until_idle(urls, clicked)
    expect(fourth.locator(".jp-OutputArea")).to_contain_text("interrupted", timeout=5_000)
    assert on_server <= ANSWER_SECONDS, f"the interrupt took {on_server:.2f} s to stop the prompt on {server}"
    assert_interrupted(server, prompt_id)
    print(f"Interrupt: prompt stopped on its server after {on_server:.2f} s")
