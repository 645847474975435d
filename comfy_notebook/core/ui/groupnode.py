"""Legacy group node *instances*: when ComfyUI's page builds a prompt, a group node stands for its inner nodes
(ids ``"<group id>:<index>"``), whose widgets take the group node's values.

The page resolves an inner node's inputs only one step: to the node outside that feeds the group node's input, or
to the inner node that feeds it, never through Reroutes, bypassed or muted nodes (an input whose source is not in
the prompt is then removed). A link from a group node's output leads to the inner node behind that output, whatever
that node's mode. Both quirks are kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from comfy_notebook.core.errors import WorkflowError
from comfy_notebook.core.ui.graph import (
    BYPASS,
    Input,
    Node,
    Output,
    configure_comfy_node,
    key,
    mode_of,
    saved_inputs,
    saved_outputs,
    title_of,
)
from comfy_notebook.core.ui.groupdef import GroupConfig
from comfy_notebook.core.ui.resolve import Executable, Resolved
from comfy_notebook.core.ui.values import js_string


def configure_group_node(node: Node, config: GroupConfig, definitions: Any) -> None:
    """A group node is configured like any node of its made-up type; its inner nodes are built when needed."""
    assert config.definition is not None
    node.group = GroupInstance(config, node, definitions)
    node.title = title_of(node.data, config.name)
    configure_comfy_node(node, config.definition)


class GroupInstance:
    """One group node's inner nodes, built from the stored nodes on first use."""

    def __init__(self, config: GroupConfig, node: Node, definitions: Any) -> None:
        self.config, self.node, self.definitions = config, node, definitions
        self._inner: list[Node] | None = None

    def inner(self) -> list[Node]:
        """The inner nodes, their widgets refreshed from the group node's (as the page does on every use)."""
        if self._inner is None:
            self._inner = [self._create(index, data) for index, data in enumerate(self.config.nodes)]
        self._push_widgets(self._inner)
        return self._inner

    def _create(self, index: int, data: Mapping[str, Any]) -> Node:
        kind = js_string(data.get("type"))
        inner = Node(f"{js_string(self.node.id)}:{index}", kind, "", mode_of(data), self.node.graph, data)
        inner.properties = dict(data.get("properties") or {})
        if kind in self.definitions:
            definition = self.definitions[kind]
            inner.title = title_of(data, definition.title)
            configure_comfy_node(inner, definition)
        else:
            inner.title = title_of(data, kind)
            inner.inputs = saved_inputs(data) or ([Input("", "*")] if kind == "Reroute" else [])
            inner.outputs = saved_outputs(data) or ([Output("*")] if kind in ("Reroute", "PrimitiveNode") else [])
        return inner

    def _push_widgets(self, inner: list[Node]) -> None:
        """Each group widget's value goes into the inner widget it stands for (through primitives and reroutes)."""
        for new_name, (index, old_name) in self.config.new_to_old_widget.items():
            widget = self.node.widget(new_name)
            if widget is None:
                continue
            value, target = widget.value, inner[index]
            if target.type == "PrimitiveNode":
                for node_index, input_name in self.config.primitive_to_widget.get(index, []):
                    found = inner[node_index].widget(input_name)
                    if found is not None:
                        found.value = value
                continue
            if target.type == "Reroute":
                for link in self.config.links_from.get(index, {}).get(0, []):
                    other, slot = inner[link[2]], link[3]
                    found = other.widget(other.inputs[slot].widget if slot < len(other.inputs) else None)
                    if found is not None:
                        found.value = value
            found = target.widget(old_name)
            if found is not None:
                found.value = value

    def source(self, index: int, slot: int) -> tuple[Node, Any] | None:
        """What feeds inner node ``index`` at ``slot`` and from which output slot: the node outside that feeds the
        group node's matching input, or an inner node; ``None`` for nothing or an inner primitive (whose value is
        already in the widget)."""
        external = self.config.old_to_new_input.get(index, {}).get(slot)
        graph = self.node.graph
        if external is not None:
            if external >= len(self.node.inputs) or self.node.inputs[external].link is None:
                return None
            link = graph.link(self.node.inputs[external].link)
            origin = graph.node(link.origin_id) if link is not None else None
            return None if link is None or origin is None else (origin, link.origin_slot)
        inner_link = self.config.links_to.get(index, {}).get(slot)
        inner = self.inner()
        if not inner_link or not 0 <= inner_link[0] < len(inner) or inner[inner_link[0]].type == "PrimitiveNode":
            return None
        return inner[inner_link[0]], inner_link[1]

    def expand(self, nodes: dict[str, Executable]) -> None:
        """Add the inner nodes, then the group node itself, to the flattened graph (the page's order)."""
        for inner in self.inner():
            nodes[js_string(inner.id)] = GroupChild(inner, (), None, nodes, self)
        nodes[key(self.node.id)] = GroupNodeExecutable(self.node, (), None, nodes, self)


def _index(node: Node) -> int:
    return int(js_string(node.id).rsplit(":", 1)[1])


class GroupChild(Executable):
    """An inner node of a group node: each input is looked up one step, through the group."""

    @property
    def id(self) -> str:
        return js_string(self.node.id)

    def resolve_input(self, slot: int, visited: set[str] | None = None, wanted: Any = None) -> Resolved | None:
        assert self.group is not None
        found = self.group.source(_index(self.node), slot)
        if found is None:
            return None
        origin, origin_slot = found
        origin_id = js_string(origin.id)
        if origin_id not in self.nodes and origin_id.rsplit(":", 1)[-1] not in self.nodes:
            raise WorkflowError(
                f"group node {self.group.node.label}: inner node {self.id} is fed by unknown node {origin_id}"
            )
        return Resolved(origin_id, origin_slot)


class GroupNodeExecutable(Executable):
    """The group node itself: left out of the prompt; its outputs lead to the inner nodes behind them."""

    def resolve_output(self, slot: int, wanted: Any, visited: set[str]) -> Resolved | None:
        assert self.group is not None
        node, config = self.node, self.group.config
        if node.mode == BYPASS:  # the same slot index first, then the first input of exactly the wanted type
            for index in [slot, *range(len(self.inputs))]:
                if 0 <= index < len(self.inputs) and self.inputs[index].type == wanted:
                    return self.resolve_input(index, visited)
            return None
        links = node.outputs[slot].links if 0 <= slot < len(node.outputs) else []
        link = node.graph.link(links[0]) if links else None
        if link is None or link.origin_slot not in config.new_to_old_output:
            raise WorkflowError(f"group node {node.label}: its output {slot} cannot be followed into the group")
        index, origin_slot = config.new_to_old_output[link.origin_slot]
        target: Node | None = self.group.inner()[index]
        via = None
        while target is not None and target.type == "Reroute":
            found = self.group.source(_index(target), 0)
            via, target = (found[1], found[0]) if found is not None else (None, None)
        if target is None:
            raise WorkflowError(f"group node {node.label}: its output {slot} leads to nothing inside the group")
        return Resolved(f"{self.id}:{js_string(target.id).rsplit(':', 1)[-1]}", origin_slot if via is None else via)
