"""UI-format workflows (what ComfyUI's page saves) converted to the API format (what ``POST /prompt`` takes),
exactly as the page's Queue button converts them.

The conversion needs the server's node definitions (``GET /object_info``): a saved workflow stores widget values as
a bare list, and only the definitions say which input each value belongs to. What the page does is followed step
by step, quirks included, so a workflow gives the same prompt here as in the browser (``tests/browser`` checks
this against the real page for every workflow template ComfyUI ships):

- widget values by the page's widget order; UI-only widgets (``control_after_generate``, upload buttons) skipped;
- links, through Reroutes, bypassed nodes (mode 4) and subgraphs; muted nodes (mode 2), notes and other
  frontend-only nodes left out, and any input whose source was left out removed;
- primitive nodes writing their value into their targets; subgraphs flattened with ids like ``"12:5"``; legacy
  group nodes expanded the same way;
- dynamic prompts (``{a|b}`` picks one at random, as the page does) and ``%date:...%`` in save nodes' prefixes.

Nothing here does I/O: pass the ``/object_info`` answer of the server that will run the prompt.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from comfy_notebook.core.ui.graph import BYPASS, NEVER, Graph, Node, Widget, each_node
from comfy_notebook.core.ui.load import load
from comfy_notebook.core.ui.primitive import apply_primitive
from comfy_notebook.core.ui.resolve import execution_order, flatten, is_array_index
from comfy_notebook.core.ui.subgraph import push_promoted_values, used_subgraphs
from comfy_notebook.core.ui.values import UNDEFINED, Undefined, dynamic_prompt, js_value, replace_in_prefix

__all__ = ["to_api"]


def to_api(
    ui: Mapping[str, Any],
    object_info: Mapping[str, Any],
    *,
    now: datetime | None = None,
    choose: Callable[[list[str]], str] = random.choice,
) -> dict[str, Any]:
    """The API-format prompt ComfyUI's page would queue for the UI-format workflow ``ui``.

    ``object_info`` is the body of the target server's ``GET /object_info``. ``now`` is the local time used for
    ``%date:...%`` in file name prefixes (default: the current time); ``choose`` picks one option of a dynamic
    prompt ``{a|b}`` (default: at random, like the page). Raises :class:`~comfy_notebook.core.errors.WorkflowError`
    for a workflow that cannot be converted, naming every node type the server does not have."""
    root = load(ui, object_info)
    moment = datetime.now() if now is None else now

    def replace(_node: Node, text: str) -> str:
        return replace_in_prefix(text, _lookup(root), moment)

    for node in execution_order(root):
        for inner in _inner_nodes(node):
            if inner.type == "PrimitiveNode":
                apply_primitive(inner, root, replace)
    push_promoted_values(root, used_subgraphs(root))
    output: dict[str, Any] = {}
    for dto in flatten(root).values():
        node = dto.node
        if node.is_virtual or node.mode in (NEVER, BYPASS):
            continue
        inputs: dict[str, Any] = {}
        for widget in node.widgets:
            if widget.name and widget.spec.in_prompt:
                inputs[widget.name] = _boxed(_serialized(node, widget, replace, choose))
        for index, item in enumerate(dto.inputs):
            resolved = dto.resolve_input(index)
            if resolved is None:
                continue
            if resolved.is_widget:
                inputs[item.name] = _boxed(resolved.value)
            else:
                inputs[item.name] = [resolved.origin_id, resolved.origin_slot]
        output[dto.id] = {"inputs": inputs, "class_type": node.type, "_meta": {"title": node.title}}
    for entry in output.values():
        for name, value in list(entry["inputs"].items()):
            if isinstance(value, list) and len(value) == 2 and value[0] not in output:
                del entry["inputs"][name]  # its source was muted, bypassed or dropped
    result: dict[str, Any] = js_value(_object_order(output))
    return result


def _object_order(output: dict[str, Any]) -> dict[str, Any]:
    """The key order of a JavaScript object (and so of the page's JSON): array-index keys ascending, then the
    others (``"12:5"``) as inserted."""
    indexes = sorted((k for k in output if is_array_index(k)), key=int)
    return {k: output[k] for k in [*indexes, *(k for k in output if not is_array_index(k))]}


def _inner_nodes(node: Node) -> list[Node]:
    """A node, or the nodes a subgraph node (or group node) stands for, recursively."""
    if node.subgraph is not None:
        return [inner for child in node.subgraph for inner in _inner_nodes(child)]
    if node.group is not None:
        return node.group.inner()
    return [node]


def _serialized(
    node: Node, widget: Widget, replace: Callable[[Node, str], str], choose: Callable[[list[str]], str]
) -> Any:
    """A widget's value as the page sends it (dynamic prompts resolved, a save node's prefix expanded)."""
    value = widget.value
    if node.definition is not None and node.definition.is_save_node and widget.name == "filename_prefix":
        return replace(node, value) if isinstance(value, str) else value
    if widget.spec.dynamic_prompts and isinstance(value, str):
        return dynamic_prompt(value, choose)
    return value


def _boxed(value: Any) -> Any:
    """A list value is sent as ``{"__value__": [...]}`` (a bare list would read as a link)."""
    return {"__value__": value} if isinstance(value, list) else value


def _lookup(root: Graph) -> Callable[[str, str], Any]:
    """``%Node.widget%``: the node whose ``Node name for S&R`` property (else title) matches, first found."""

    def find(name: str, widget_name: str) -> Any:
        nodes = [n for n in each_node(root) if n.properties.get("Node name for S&R") == name]
        nodes = nodes or [n for n in each_node(root) if n.title == name]
        if not nodes:
            return UNDEFINED
        widget = nodes[0].widget(widget_name)
        if widget is None:
            return UNDEFINED
        value = widget.value
        return "" if isinstance(value, Undefined) else value

    return find
