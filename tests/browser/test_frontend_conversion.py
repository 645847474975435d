"""UI-format workflows converted to the API format: ``to_api`` against ComfyUI's own page as the reference.

A real test server serves the page (frontend 1.32.9). For every workflow template the pinned ComfyUI environment
ships whose node types the server has, and for every hand-made workflow in ``tests/core/ui/workflows`` (one per
feature: widgets, seeds, muted and bypassed nodes, reroutes, primitives, converted widgets, notes, subgraphs,
legacy group nodes, old file formats, text replacements), the page loads the workflow as it loads a file and
builds the prompt its Queue button sends (see ``frontend.py`` for why no seed is randomized on the way); ours must
equal it node by node and input by input. A summary, with every disagreement, goes to ``out/conversion.json``.

Templates refer to model files the CPU test server does not have: the page keeps such values as saved (it only
resets unknown COMBO values for its built-in default graph), and so do we.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Error as PlaywrightError

from comfy_notebook.core.errors import WorkflowError
from comfy_notebook.core.ui.convert import to_api
from comfy_notebook.tools.local_pool import LocalPool
from tests.browser.frontend import Comparison, Frontend, compare, node_types, templates, without_class

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / "tests" / "core" / "ui" / "workflows"
SUMMARY = ROOT / "out" / "conversion.json"
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only, never via a proxy

#: Hand-made workflows using node types the server lacks: the page queues those nodes without a class_type.
MISSING = "missing_types.json"
#: A primitive inside a subgraph whose link id the root graph lacks: the page's Queue button fails.
PAGE_FAILS = "subgraph_primitive_broken.json"
#: Hand-made workflows a CPU server runs as converted (the others keep, as on the page, inputs whose source the
#: page drops, or need model files).
RUNNABLE = (
    "converted_widgets.json",
    "group_node.json",
    "group_node_primitive.json",
    "links_as_objects.json",
    "notes.json",
    "primitives.json",
    "subgraph.json",
    "subgraph_modes.json",
    "subgraph_nested.json",
    "subgraph_nested_late.json",
    "widgets.json",
)


def _get(url: str) -> Any:
    with _HTTP.open(url, timeout=30) as response:
        return json.loads(response.read())


def _hand_made() -> list[Path]:
    return sorted(p for p in WORKFLOWS.glob("*.json") if p.name not in ("object_info.json", MISSING, PAGE_FAILS))


@pytest.fixture(scope="module")
def server(lab_pool: LocalPool) -> str:
    return lab_pool.urls[0]


@pytest.fixture(scope="module")
def object_info(server: str) -> dict[str, Any]:
    found: dict[str, Any] = _get(f"{server}/object_info")
    return found


@pytest.fixture(scope="module")
def frontend(browser: Any, server: str) -> Iterator[Frontend]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        page = Frontend(context.new_page(), f"{server}/")
        page.open()
        yield page
    finally:
        context.close()


@pytest.fixture(scope="module")
def summary(frontend: Frontend, server: str) -> dict[str, Any]:
    return {"frontend": frontend.version(), "server": server}


def _write(summary: dict[str, Any]) -> None:
    SUMMARY.parent.mkdir(parents=True, exist_ok=True)
    SUMMARY.write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def _convert_both(frontend: Frontend, workflow: dict[str, Any], object_info: dict[str, Any]) -> Comparison:
    page, now = frontend.convert(workflow)
    try:
        ours = to_api(workflow, object_info, now=now)
    except WorkflowError as exc:
        return Comparison([f"to_api failed: {exc}"])
    return compare(page, ours, frontend.titles(), object_info)


def _report(results: dict[str, Comparison]) -> dict[str, Any]:
    return {
        "agree": sum(1 for r in results.values() if r.agree),
        "compared": len(results),
        "disagreements": {name: r.differences for name, r in results.items() if not r.agree},
        "localized_titles": sorted({t for r in results.values() for t in r.localized_titles}),
    }


def test_every_loadable_template_converts_as_the_page_converts(
    frontend: Frontend, object_info: dict[str, Any], summary: dict[str, Any]
) -> None:
    shipped = templates()
    workflows: dict[str, dict[str, Any]] = {}
    skipped: dict[str, list[str]] = {}
    for template_id, path in shipped:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or not isinstance(data.get("nodes"), list):
            continue  # the template index files
        missing = sorted(node_types(data) - set(object_info))
        if missing:
            skipped[template_id] = missing
        else:
            workflows[template_id] = data
    results = {name: _convert_both(frontend, workflow, object_info) for name, workflow in workflows.items()}
    summary["templates"] = {
        "shipped_files": len(shipped),
        "workflows": len(workflows) + len(skipped),
        "eligible": len(workflows),
        "skipped_for_missing_node_types": skipped,
        **_report(results),
    }
    _write(summary)
    assert len(workflows) >= 100, f"only {len(workflows)} templates can be loaded by the test server: {skipped}"
    assert summary["templates"]["disagreements"] == {}


@pytest.mark.parametrize("name", [p.name for p in _hand_made()])
def test_hand_made_workflow_converts_as_the_page_converts(
    frontend: Frontend, object_info: dict[str, Any], summary: dict[str, Any], name: str
) -> None:
    workflow = json.loads((WORKFLOWS / name).read_text(encoding="utf-8"))
    result = _convert_both(frontend, workflow, object_info)
    hand_made = summary.setdefault("hand_made", {"results": {}})
    hand_made["results"][name] = result.differences or "agrees"
    hand_made.update(_report({n: Comparison([] if r == "agrees" else r) for n, r in hand_made["results"].items()}))
    _write(summary)
    assert result.differences == []


def test_node_types_the_server_lacks_are_named(
    frontend: Frontend, object_info: dict[str, Any], summary: dict[str, Any]
) -> None:
    workflow = json.loads((WORKFLOWS / MISSING).read_text(encoding="utf-8"))
    page, _now = frontend.convert(workflow)
    with pytest.raises(WorkflowError) as raised:
        to_api(workflow, object_info)
    summary["missing_node_types"] = {
        "page_nodes_without_class_type": sorted(without_class(page)),
        "ours": str(raised.value),
    }
    _write(summary)
    assert without_class(page) == {"51", "52:1"}  # the page would queue a prompt the server refuses
    message = str(raised.value)
    assert "FancyUpscaler (node #51 'my upscaler')" in message
    assert "NoSuchNodeInSubgraph (node #1 in subgraph 'Has a missing node')" in message


def test_a_workflow_the_page_cannot_queue_is_refused_clearly(
    frontend: Frontend, object_info: dict[str, Any], summary: dict[str, Any]
) -> None:
    workflow = json.loads((WORKFLOWS / PAGE_FAILS).read_text(encoding="utf-8"))
    with pytest.raises(PlaywrightError, match="TypeError") as page_error:
        frontend.convert(workflow)
    with pytest.raises(WorkflowError, match="root graph") as ours:
        to_api(workflow, object_info)
    summary["page_fails"] = {"page": str(page_error.value).splitlines()[0], "ours": str(ours.value)}
    _write(summary)


@pytest.mark.parametrize("name", RUNNABLE)
def test_the_server_accepts_what_we_convert(server: str, object_info: dict[str, Any], name: str) -> None:
    prompt = to_api(json.loads((WORKFLOWS / name).read_text(encoding="utf-8")), object_info)
    body = json.dumps({"prompt": prompt, "client_id": str(uuid.uuid4())}).encode()
    request = urllib.request.Request(f"{server}/prompt", data=body, headers={"Content-Type": "application/json"})
    try:
        with _HTTP.open(request, timeout=30) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        pytest.fail(f"{name}: the server refused the prompt ({exc.code}): {exc.read()[:1000]!r}")
    assert answer.get("node_errors") == {}
