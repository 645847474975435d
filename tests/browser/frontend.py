"""ComfyUI's own page as the reference converter: open a real server's page in headless chromium, load a UI-format
workflow the way the page loads a file, and read the prompt the Queue button would send.

The Queue button runs each widget's ``beforeQueued`` hook, then ``app.graphToPrompt()``, then ``afterQueued``
(where ``control_after_generate: randomize`` picks a new seed). We call ``graphToPrompt()`` alone, right after
loading: that is the prompt queued with the loaded values, before any such mutation (with the default
``Comfy.WidgetControlMode = after``, ``beforeQueued`` changes nothing on a first queue anyway). The output is read
as ``JSON.stringify`` text, exactly the bytes the page would post.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from comfy_notebook.tools.comfyui_env import ensure_env

READY_TIMEOUT_MS = 90_000
FRONTEND_ONLY = {"Reroute", "PrimitiveNode", "Note", "MarkdownNote"}

#: The page is ready once the app exists and both server node types and its own (PrimitiveNode) are registered.
READY = """() => !!(window.app && window.app.graph && window.app.vueAppReady && window.LiteGraph
    && window.LiteGraph.registered_node_types.PrimitiveNode && window.LiteGraph.registered_node_types.SaveImage)"""

#: Load as a dropped file is loaded (clean graph, view restored), then build the prompt the Queue button sends.
CONVERT = """async (workflow) => {
    await window.app.loadGraphData(workflow, true, true, null);
    const now = Date.now();
    const prompt = await window.app.graphToPrompt();
    return [JSON.stringify(prompt.output), now];
}"""

#: The page's default title of every node type (the server's display name, or the page's translation of it).
TITLES = """() => Object.fromEntries(Object.entries(window.LiteGraph.registered_node_types)
    .map(([name, type]) => [name, type.title]))"""

#: Lists the workflow templates the ComfyUI environment ships, with its own manifest and asset resolver.
LIST_TEMPLATES = """
import json
from comfyui_workflow_templates_core import get_asset_path, iter_templates
print(json.dumps(sorted(
    [entry.template_id, get_asset_path(entry.template_id, asset.filename)]
    for entry in iter_templates() for asset in entry.assets if asset.filename.endswith(".json"))))
"""


class Frontend:
    """One chromium page on a real server's ComfyUI page."""

    def __init__(self, page: Any, url: str) -> None:
        self.page = page
        self.url = url
        self.errors: list[str] = []
        self._titles: dict[str, str] | None = None
        page.on("pageerror", lambda error: self.errors.append(str(error)))

    def open(self) -> None:
        self.page.goto(self.url)
        self.page.wait_for_function(READY, timeout=READY_TIMEOUT_MS)

    def convert(self, workflow: Mapping[str, Any]) -> tuple[dict[str, Any], datetime]:
        """The page's prompt for ``workflow``, and the page's clock when it built it (for ``%date:...%``)."""
        text, millis = self.page.evaluate(CONVERT, workflow)
        prompt: dict[str, Any] = json.loads(text)
        return prompt, datetime.fromtimestamp(millis / 1000)

    def titles(self) -> dict[str, str]:
        """The page's default title per node type (read once: node types do not change while it is open)."""
        if self._titles is None:
            self._titles = dict(self.page.evaluate(TITLES))
        return self._titles

    def version(self) -> str:
        return str(self.page.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__"))


def templates() -> list[tuple[str, Path]]:
    """Every workflow template's JSON file in the pinned ComfyUI environment (id, path); index files included."""
    env = ensure_env()
    out = subprocess.run([str(env.python), "-c", LIST_TEMPLATES], capture_output=True, text=True, check=True)
    return [(template_id, Path(path)) for template_id, path in json.loads(out.stdout)]


def node_types(workflow: Mapping[str, Any]) -> set[str]:
    """The node types a workflow needs from the server (frontend-only, subgraph and group types left out)."""
    subgraphs = [s for s in (workflow.get("definitions") or {}).get("subgraphs") or [] if isinstance(s, Mapping)]
    groups = (workflow.get("extra") or {}).get("groupNodes") or {}
    made_up = {str(s.get("id")) for s in subgraphs} | {f"workflow>{name}" for name in groups}
    made_up |= {f"workflow/{name}" for name in groups}
    nodes: list[Any] = list(workflow.get("nodes") or [])
    for container in [*subgraphs, *groups.values()]:
        nodes += container.get("nodes") or []
    kinds = {str(n.get("type")) for n in nodes if isinstance(n, Mapping)}
    return kinds - FRONTEND_ONLY - made_up


def exact(value: Any) -> str:
    """A value as JSON text: ``1`` and ``1.0``, ``true`` and ``1`` differ, key order does not."""
    return json.dumps(value, sort_keys=True)


@dataclass
class Comparison:
    """Node by node, input by input: what differs between the page's prompt and ours."""

    differences: list[str] = field(default_factory=list)
    localized_titles: list[str] = field(default_factory=list)

    @property
    def agree(self) -> bool:
        return not self.differences


def compare(
    page: Mapping[str, Any], ours: Mapping[str, Any], page_titles: Mapping[str, str], object_info: Mapping[str, Any]
) -> Comparison:
    """Every node id, ``class_type`` and input must match exactly, in the same order. ``_meta.title`` too, but for
    one difference: an untitled node gets the page's *translated* display name (a few types differ from the
    server's name in the page's English locale); ours is the server's, so ``page == translation`` and
    ``ours == server's`` there."""
    result = Comparison()
    if set(page) == set(ours) and list(page) != list(ours):
        result.differences.append(f"node order: {list(page)} on the page, {list(ours)} ours")
    for node_id in sorted(set(page) | set(ours)):
        theirs, mine = page.get(node_id), ours.get(node_id)
        if theirs is None or mine is None:
            side = "the page" if mine is None else "ours"
            result.differences.append(f"node {node_id}: only in {side} ({(theirs or mine or {}).get('class_type')})")
            continue
        kind = theirs.get("class_type")
        if kind != mine.get("class_type"):
            result.differences.append(
                f"node {node_id}: class_type {kind!r} on the page, {mine.get('class_type')!r} ours"
            )
        page_title, our_title = theirs.get("_meta", {}).get("title"), mine.get("_meta", {}).get("title")
        if page_title != our_title:
            server_title = (object_info.get(kind) or {}).get("display_name") or kind
            if page_title == page_titles.get(kind) and our_title == server_title:
                result.localized_titles.append(f"{kind}: {page_title!r} (server: {server_title!r})")
            else:
                result.differences.append(
                    f"node {node_id} ({kind}): title {page_title!r} on the page, {our_title!r} ours"
                )
        if set(theirs.get("inputs", {})) == set(mine.get("inputs", {})) and list(theirs["inputs"]) != list(
            mine["inputs"]
        ):
            result.differences.append(f"node {node_id} ({kind}): input order {list(theirs['inputs'])} on the page")
        for name in sorted(set(theirs.get("inputs", {})) | set(mine.get("inputs", {}))):
            a, b = theirs["inputs"].get(name, "<absent>"), mine["inputs"].get(name, "<absent>")
            if exact(a) != exact(b):
                result.differences.append(
                    f"node {node_id} ({kind}) input {name!r}: {exact(a)[:200]} on the page, {exact(b)[:200]} ours"
                )
    return result


def without_class(prompt: Mapping[str, Any]) -> set[str]:
    """Node ids the page queued without a ``class_type`` (nodes of types the server does not have)."""
    return {node_id for node_id, node in prompt.items() if "class_type" not in node}
