"""Subgraph nodes as ComfyUI's page sets them up: their inputs and outputs, the widgets they promote from the
nodes inside, the ``proxyWidgets`` property, and the widget values they push into their definition when saved.

A subgraph input wired to a widget input inside becomes a widget on every instance (a copy of the inner widget,
named after the subgraph input); an instance's ``widgets_values`` fill those copies. When the page builds a prompt
an unconnected instance input takes its copy's value, and inner nodes read it through the instance
(see :mod:`comfy_notebook.core.ui.resolve`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from comfy_notebook.core.errors import WorkflowError
from comfy_notebook.core.ui.graph import (
    Graph,
    Input,
    Node,
    Output,
    Widget,
    each_node,
    load_widget_values,
    saved_inputs,
    saved_outputs,
)
from comfy_notebook.core.ui.values import js_string


def configure_subgraph_node(node: Node, subgraph: Graph) -> None:
    """Inputs in the definition's slot order, each keeping the saved link of the same name (saved inputs the
    definition lacks follow), outputs typed by the definition, then promoted widgets, the saved widget values, and
    ``proxyWidgets``."""
    node.subgraph = subgraph
    node.title = js_string(node.data.get("title")) if node.data.get("title") else subgraph.name
    promotable = {s.name for s in subgraph.inputs if subgraph.configured and _inner_widget(subgraph, s.name)}
    saved = saved_inputs(node.data)
    by_name = {item.name: item for item in saved}
    inputs = []
    for slot in subgraph.inputs:
        found = by_name.get(slot.name)
        widget_name = slot.name if slot.name in promotable else (found.widget if found is not None else None)
        inputs.append(Input(slot.name, slot.type, found.link if found is not None else None, widget_name))
    names = {slot.name for slot in subgraph.inputs}
    node.inputs = inputs + [item for item in saved if item.name not in names]
    saved_outs = saved_outputs(node.data)
    node.outputs = [
        Output(slot.type, saved_outs[i].links if i < len(saved_outs) else []) for i, slot in enumerate(subgraph.outputs)
    ] + saved_outs[len(subgraph.outputs) :]
    node.widgets = []
    if subgraph.configured:  # a definition listed later than the one using it is still empty here
        for item in node.inputs:
            _promote(node, subgraph, item)
    load_widget_values(node)
    values = node.data.get("widgets_values")
    proxies = node.properties.get("proxyWidgets")
    if proxies:
        _apply_proxy_widgets(node, proxies, values if isinstance(values, list) else [])


def _inner_widget(subgraph: Graph, name: str) -> Widget | None:
    """The first inner widget the subgraph input ``name`` is wired to, found through the link slots as saved."""
    slot = next((s for s in subgraph.inputs if s.name == name), None)
    for link_id in slot.link_ids if slot is not None else []:
        link = subgraph.link(link_id)
        inner = subgraph.node(link.target_id) if link is not None else None
        if link is None or inner is None or not 0 <= link.saved_target_slot < len(inner.inputs):
            continue
        widget = inner.widget(inner.inputs[link.saved_target_slot].widget)
        if widget is not None:
            return widget
    return None


def _promote(node: Node, subgraph: Graph, item: Input) -> None:
    """Show the inner widget this input's subgraph slot is wired to on the instance, under the slot's name."""
    slot = next((s for s in subgraph.inputs if s.name == item.name), None)
    widget = _inner_widget(subgraph, item.name) if slot is not None else None
    if slot is None or widget is None:
        return
    position = sum(1 for i in node.inputs if i.widget)
    node.widgets.insert(min(position, len(node.widgets)), widget.copy_for(slot.name))
    item.widget = slot.name


def announce_inputs(subgraph: Graph, instances: list[Node]) -> None:
    """What a definition tells the instances that already exist when it finishes loading (instances inside a
    definition listed earlier): each input it has is added to them, and one whose first link ends at a node with
    a widget *of the input's name* becomes a promoted widget (without the instance's saved value)."""
    for slot in subgraph.inputs:
        for node in instances:
            existing = next((item for item in node.inputs if item.name == slot.name), None)
            if existing is None:
                node.inputs.append(Input(slot.name, slot.type))
                continue
            link = subgraph.link(slot.link_ids[0]) if slot.link_ids else None
            if link is None:
                raise WorkflowError(
                    f"subgraph {subgraph.name!r}: input {slot.name!r} has no link inside, and subgraph node "
                    f"{node.label} uses it before the definition is loaded (ComfyUI's page fails to load this too)"
                )
            inner = subgraph.node(link.target_id)
            widget = inner.widget(slot.name) if inner is not None else None
            if widget is not None:
                position = sum(1 for i in node.inputs if i.widget)
                node.widgets.insert(min(position, len(node.widgets)), widget.copy_for(slot.name))
                existing.widget = slot.name


def _apply_proxy_widgets(node: Node, raw: Any, values: list[Any]) -> None:
    """``properties.proxyWidgets``: ``[node_id, widget]`` pairs; ``"-1"`` names one of the instance's own promoted
    widgets (re-filled from ``widgets_values`` at that position), others show an inner widget. Any own widget whose
    name appears in the list is replaced by the list's entry (or dropped when the entry points inside)."""
    try:
        parsed = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        parsed = None
    if not isinstance(parsed, list) or not all(
        isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in parsed
    ):
        raise WorkflowError(f"subgraph node {node.label}: properties.proxyWidgets must be a list of [node, widget]")
    own = [next((w for w in node.widgets if w.name == name), None) for nid, name in parsed if nid == "-1"]
    names = {name for _nid, name in parsed}
    node.widgets = [w for w in node.widgets if w.name not in names] + [w for w in own if w is not None]
    for index, value in enumerate(values):
        if index < len(parsed) and parsed[index][0] == "-1" and value is not None:
            widget = node.widget(parsed[index][1])
            if widget is not None:
                widget.value = value


def connected_widgets(subgraph: Graph, name: str) -> Iterator[Widget]:
    """The inner widgets the subgraph input ``name`` is wired to."""
    slot = next((s for s in subgraph.inputs if s.name == name), None)
    for link_id in slot.link_ids if slot is not None else []:
        link = subgraph.link(link_id)
        inner = subgraph.node(link.target_id) if link is not None else None
        if link is None or inner is None or not 0 <= link.target_slot < len(inner.inputs) or not inner.widgets:
            continue
        widget = inner.widget(inner.inputs[link.target_slot].widget)
        if widget is not None:
            yield widget


def push_promoted_values(root: Graph, subgraphs: list[Graph]) -> None:
    """What the page does to the definitions when it saves the graph before building a prompt: every subgraph
    node writes its promoted widgets' values into the inner widgets they came from (root nodes first, then each
    definition's nodes, so the last instance written wins)."""
    for graph in [root, *subgraphs]:
        for node in graph:
            if node.subgraph is None:
                continue
            for widget in node.widgets:
                item = next((i for i in node.inputs if i.name == widget.name), None)
                if item is None:
                    continue
                for inner in connected_widgets(node.subgraph, item.name):
                    inner.value = widget.value


def used_subgraphs(root: Graph) -> list[Graph]:
    """The definitions the root graph uses, directly or inside other definitions, in definition order."""
    used = {id(node.subgraph) for node in each_node(root) if node.subgraph is not None}
    return [graph for graph in root.definitions if id(graph) in used]
