"""The status panel against a real engine and a fake ComfyUI: content, loop-thread refresh, Reset, close, reprs."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from comfy_notebook import api
from comfy_notebook.notebook.panel import CSS_PANEL, StatusPanel
from tests.fakes.fake_comfy import FakeComfy, wait_until
from tests.notebook.conftest import WORKFLOW


@pytest.fixture
def panel(fake: FakeComfy) -> Iterator[StatusPanel]:
    api.set_servers([fake.url])
    widget = StatusPanel(api.get_engine(), interval=0.05)
    yield widget
    widget.close()


def test_panel_is_a_vbox_with_the_css_class_html_and_a_reset_button(panel: StatusPanel, fake: FakeComfy) -> None:
    assert CSS_PANEL in panel.box._dom_classes
    assert panel.button.description == "Reset"
    assert "locked: none" in panel.html.value
    assert fake.url in panel.html.value


def test_panel_refreshes_from_the_loop_thread_while_the_main_thread_blocks(panel: StatusPanel, fake: FakeComfy) -> None:
    api.run(WORKFLOW, timeout=10)  # takes the lock
    panel.html.value = "stale"
    time.sleep(0.4)  # a blocking cell: nothing on this thread refreshes the panel
    assert f"locked: {fake.url}" in panel.html.value
    assert "connection: OPEN" in panel.html.value


def test_reset_button_clears_the_lock_and_shows_the_outcome(panel: StatusPanel, fake: FakeComfy) -> None:
    api.run(WORKFLOW, timeout=10)
    panel.button.click()
    assert panel.note.value.startswith(f"reset: lock cleared (was {fake.url}), 0 tasks cancelled")
    assert "locked: none" in panel.html.value
    assert api.get_status()["locked_server"] is None
    assert not panel.button.disabled


def test_reset_cancels_pending_tasks_and_counts_them(panel: StatusPanel, fake: FakeComfy) -> None:
    fake.hold()
    task = api.submit(WORKFLOW)
    wait_until(lambda: task.prompt_id in fake.pending_prompt_ids)
    assert panel.reset().startswith(f"reset: lock cleared (was {fake.url}), 1 task cancelled")
    assert task.status == "cancelled"


def test_close_cancels_the_refresher_and_closes_the_widgets(panel: StatusPanel) -> None:
    panel.close()
    assert panel.closed
    assert panel.box.comm is None and panel.html.comm is None and panel.button.comm is None
    panel.html.value = "after close"
    time.sleep(0.2)
    assert panel.html.value == "after close"
    panel.close()  # idempotent


def test_static_renderings_for_front_ends_without_widgets(fake: FakeComfy) -> None:
    api.set_servers([fake.url.replace("http://", "http://alice:s3cret@")])
    panel = StatusPanel(api.get_engine(), interval=0.05)
    try:
        bundle = panel._repr_mimebundle_()
        assert "application/vnd.jupyter.widget-view+json" in bundle
        assert "locked: none" in bundle["text/html"] and "locked: none" in bundle["text/plain"]
        texts = [repr(panel), panel._repr_html_(), bundle["text/plain"], bundle["text/html"], panel.html.value]
        assert all(fake.url in text for text in texts)
        assert not any("s3cret" in text or "alice" in text for text in texts)
    finally:
        panel.close()
