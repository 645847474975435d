"""UI-format workflows (as the ComfyUI page saves them) run as they are on real servers: converted with the target
server's own node definitions, the same prompt the page would queue (the page itself is compared in
``tests/browser/test_frontend_conversion.py``), then run to images."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from comfy_notebook.core.errors import WorkflowError
from comfy_notebook.core.ui import to_api
from comfy_notebook.engine.engine import Engine
from comfy_notebook.tools.local_pool import LocalPool
from tests.engine.conftest import FAST

WORKFLOWS = Path(__file__).resolve().parents[1] / "core" / "ui" / "workflows"
#: Hand-made UI workflows whose nodes need no model file: they run to images on a CPU server.
RUNNABLE = [
    "converted_widgets",
    "group_node",
    "links_as_objects",
    "notes",
    "subgraph",
    "subgraph_nested",
    "widgets",
]


@pytest.fixture(scope="module")
def engine(real_pool: LocalPool) -> Iterator[Engine]:
    eng = Engine(real_pool.urls, FAST)
    yield eng
    eng.close()


def ui(name: str) -> dict:
    data: dict = json.loads((WORKFLOWS / f"{name}.json").read_text())
    return data


@pytest.mark.parametrize("name", RUNNABLE)
def test_a_saved_ui_workflow_runs_as_it_is(engine: Engine, name: str) -> None:
    path = WORKFLOWS / f"{name}.json"
    result = engine.run(path, timeout=120)
    assert result.status == "success"
    assert result.files, f"{name}: no output files"
    # What ran is what the page would queue, converted with that server's own node definitions.
    assert engine.to_api(path, server=result.server) == to_api(ui(name), engine.object_info(result.server))


def test_a_missing_node_type_is_named_before_anything_is_queued(engine: Engine) -> None:
    with pytest.raises(WorkflowError, match="FancyUpscaler"):
        engine.submit(ui("missing_types"))
    assert engine.get_status()["pending_tasks_count"] == 0


def test_json_text_and_the_bulk_path_convert_too(engine: Engine) -> None:
    text = (WORKFLOWS / "widgets.json").read_text()
    tasks = engine.submit_many([text, ui("notes")])
    assert [t.result(timeout=120).status for t in tasks] == ["success", "success"]


def test_a_cell_runs_a_ui_workflow_pasted_into_it(real_pool: LocalPool) -> None:
    """``%%comfy`` with the page's saved JSON as its body; ``"$name"`` variables still work after the conversion
    (here a widget value of the saved workflow)."""
    from IPython.core.interactiveshell import InteractiveShell

    from comfy_notebook import api
    from comfy_notebook.engine.task import Result
    from comfy_notebook.notebook import extension
    from tests.notebook.conftest import make_shell

    saved = ui("notes")
    empty = next(node for node in saved["nodes"] if node["type"] == "EmptyImage")
    empty["widgets_values"] = [32, 24, 1, "$color"]
    api.shutdown()
    ip = make_shell()
    try:
        ip.run_line_magic("load_ext", "comfy_notebook")
        ip.run_line_magic("comfy", f"servers {real_pool.urls[0]}")
        ip.user_ns["color"] = 0x00FF00
        result = ip.run_cell_magic("comfy", "", json.dumps(saved, indent=1))
        assert isinstance(result, Result) and result.status == "success"
        (image,) = result.images
        assert image.size == (32, 24) and image.convert("RGB").getpixel((0, 0)) == (0, 255, 0)
    finally:
        extension.unload(ip)
        InteractiveShell.clear_instance()
        api.shutdown()
