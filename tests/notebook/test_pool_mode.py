"""Pool mode in the notebook, against a real engine and fake ComfyUI servers: the panel shows the mode, the
client-side queue and the per-server counters; a cell's progress says where its prompt is (waiting for a server,
queued or running on one) and, after a failover, where it moved and how many attempts it took."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

from comfy_notebook import api
from comfy_notebook.core.failover import Attempt
from comfy_notebook.engine.task import Task
from comfy_notebook.notebook import render
from comfy_notebook.notebook.panel import StatusPanel
from comfy_notebook.notebook.progress import ProgressWidget
from tests.fakes.fake_comfy import FakeComfy, wait_until
from tests.notebook.conftest import WORKFLOW, magics_of


def no_wait(ip: InteractiveShell, body: str = WORKFLOW) -> Task:
    """A ``%%comfy --no-wait`` cell: its Task (the cell value, shown as a live progress widget)."""
    outcome = ip.run_cell(f"%%comfy --no-wait\n{body}")
    assert outcome.success and isinstance(outcome.result, Task)
    return outcome.result


def slow(steps: int, step_delay: float) -> str:
    return json.dumps({
        "1": {"class_type": "EmptyImage", "inputs": {"steps": steps, "step_delay": step_delay}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}},
    })  # fmt: skip


def rows(html: str) -> dict[str, dict[str, str]]:
    """The panel's server table: url -> {column title: cell text}."""
    titles = re.findall(r"<th[^>]*>(.*?)</th>", html)
    found = {}
    for row in re.findall(r'<tr class="comfy-server-row[^"]*">(.*?)</tr>', html):
        cells = dict(zip(titles, re.findall(r"<td>(.*?)</td>", row), strict=True))
        found[cells["server"].removesuffix(" (locked)")] = cells
    return found


@pytest.fixture
def pool(loaded: InteractiveShell) -> Iterator[InteractiveShell]:
    """The extension in pool mode with a fast-refreshing panel."""
    loaded.run_line_magic("config", "ComfyMagics.panel_interval = 0.05")
    loaded.run_line_magic("config", "ComfyMagics.progress_interval = 0.05")
    loaded.run_line_magic("comfy", "mode pool")
    yield loaded


def show_panel(ip: InteractiveShell) -> StatusPanel:
    with capture_output():
        ip.run_line_magic("comfy", "status")
    panel = magics_of(ip).panel
    assert panel is not None
    return panel


def test_panel_and_progress_show_the_client_side_queue_and_the_counters(
    pool: InteractiveShell, fake: FakeComfy
) -> None:
    panel = show_panel(pool)
    assert "mode: pool" in panel.html.value and "waiting: 0" in panel.html.value
    fake.hold()  # the server keeps what it gets queued: 2 (the pool's depth), the rest waits here
    tasks = [no_wait(pool, slow(40, 0.05))] + [no_wait(pool) for _ in range(3)]
    widgets = magics_of(pool).progress_widgets
    assert [w.task for w in widgets] == tasks
    wait_until(lambda: [t.status for t in tasks] == ["queued", "queued", "waiting", "waiting"], timeout=10)

    wait_until(lambda: "waiting: 2" in panel.html.value, timeout=5)
    wait_until(lambda: rows(panel.html.value)[fake.url]["queued"] == "2", timeout=5)
    assert rows(panel.html.value)[fake.url]["running"] == "0"
    assert '<b class="comfy-mode comfy-mode-pool">mode: pool</b>' in panel.html.value
    assert "waiting: 2" in render.status_text(api.get_status())
    wait_until(lambda: f"queued on {fake.url}" in widgets[0].text.value, timeout=5)
    # Client-side places, 1 = next to go (the engine refreshes them on its ~0.5 s tick).
    wait_until(lambda: "waiting for a server (position 1)" in widgets[2].text.value, timeout=5)
    wait_until(lambda: "waiting for a server (position 2)" in widgets[3].text.value, timeout=5)
    assert "server:" not in widgets[3].text.value and widgets[3].bar.value == 0

    fake.release()  # the slow one runs for ~2 s; the others follow as room appears
    wait_until(lambda: rows(panel.html.value)[fake.url]["running"] == "1", timeout=5)
    wait_until(lambda: f"running on {fake.url}" in widgets[0].text.value, timeout=5)
    for task in tasks:
        assert task.result(15).server == fake.url
    wait_until(lambda: rows(panel.html.value)[fake.url]["done"] == "4", timeout=5)
    assert "waiting: 0" in panel.html.value and "pending tasks: 0" in panel.html.value
    wait_until(lambda: all(w.bar.bar_style == "success" for w in widgets), timeout=5)
    assert all("attempts" not in w.text.value for w in widgets)  # one try each

    raising = json.dumps({"1": {"class_type": "Raise", "inputs": {"message": "no"}},
                          "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}}})  # fmt: skip
    assert not pool.run_cell(f"%%comfy\n{raising}").success
    wait_until(lambda: rows(panel.html.value)[fake.url]["failed"] == "1", timeout=5)
    assert rows(panel.html.value)[fake.url]["retried"] == "0"


def test_a_failover_shows_in_the_progress_widget_and_the_panel(
    pool: InteractiveShell, fake: FakeComfy, fake2: FakeComfy
) -> None:
    pool.run_line_magic("comfy", f"servers {fake.url} {fake2.url}")
    panel = show_panel(pool)
    fake.hold()
    fake2.hold()
    task = no_wait(pool)
    (widget,) = magics_of(pool).progress_widgets
    wait_until(lambda: task.status == "queued", timeout=10)
    victim, rescuer = (fake, fake2) if task.server == fake.url else (fake2, fake)
    first_id = task.prompt_id
    rescuer.release()
    victim.stop()  # a killed process: the socket drops, the reconnect is refused, the prompt moves

    result = task.result(20)
    assert result.server == rescuer.url and task.prompt_id != first_id  # a fresh id per attempt
    assert [a.server for a in task.attempts] == [victim.url, rescuer.url]
    wait_until(lambda: widget.bar.bar_style == "success", timeout=5)
    text = widget.text.value
    assert f"moved from {victim.url} to {rescuer.url}: {victim.url} " in text and "2 attempts" in text
    assert task.moved is not None and render.esc(task.moved) in text
    assert "2 attempts" in repr(widget) and f"server: {rescuer.url}" in repr(widget)

    status = api.get_status()
    assert status["retries"] == 1
    wait_until(lambda: rows(panel.html.value)[rescuer.url]["done"] == "1", timeout=5)  # the next refresh
    assert "retries: 1" in panel.html.value
    table = rows(panel.html.value)
    assert table[victim.url]["retried"] == "1" and table[rescuer.url]["done"] == "1"
    assert table[victim.url]["health"].startswith("down")


def test_progress_widget_renders_the_task_fields_the_engine_writes(pool: InteractiveShell, fake: FakeComfy) -> None:
    """The widget's input is the Task; these are the fields a failover writes, set the way the engine sets them."""
    a, b = "http://10.0.0.1:8188", "http://10.0.0.2:8188"
    task = Task("p-1", json.loads(WORKFLOW), lambda _task: None)
    widget = ProgressWidget(task, api.get_engine(), interval=0.05)
    try:
        task._update(status="waiting", server=None, queue_position=4)
        wait_until(lambda: "waiting for a server (position 5)" in widget.text.value)
        attempts = [Attempt(a, "p-1", "lost", "stopped answering"), Attempt(b, "p-2")]
        moved = f"moved from {a} to {b}: {a} stopped answering"
        task._update(status="running", server=b, prompt_id="p-2", attempts=attempts, moved=moved, queue_position=0)
        wait_until(lambda: f"running on {b}" in widget.text.value)
        assert moved in widget.text.value and "attempts" not in widget.text.value
        assert repr(widget).startswith("comfy prompt p-2: running on " + b)
    finally:
        widget.close()
