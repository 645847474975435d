"""Flattening a loaded graph into executable nodes and resolving each input to the node output (or widget value)
that feeds it, as ComfyUI's page does when it builds a prompt.

Subgraph instances are expanded into their inner nodes, whose ids are the path of instance ids plus their own
(``"12:5"``). An input is followed upstream through Reroutes and other frontend-only nodes, through bypassed nodes
(to the input of a matching type), into subgraph instances (to the inner node behind the output) and out of them
(to what feeds the instance, or to the instance's promoted widget value). A muted or bypassed *subgraph* node does
not silence its inner nodes: the page queues them anyway.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from comfy_notebook.core.errors import WorkflowError
from comfy_notebook.core.ui.graph import BYPASS, SUBGRAPH_INPUT_ID, Graph, Group, Input, Link, Node, key
from comfy_notebook.core.ui.values import js_string


@dataclass(frozen=True)
class Resolved:
    """Where an input's value comes from: an output ``(origin_id, origin_slot)``, or a widget ``value``."""

    origin_id: str
    origin_slot: Any
    value: Any = None
    is_widget: bool = False


@dataclass(eq=False)
class Executable:
    """A node of the flattened graph (the page's ``ExecutableNodeDTO``)."""

    node: Node
    path: tuple[str, ...]
    instance: Node | None  # the subgraph node this node is inside
    nodes: dict[str, Executable]
    group: Group | None = None
    inputs: list[Input] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.inputs = list(self.node.inputs)

    @property
    def id(self) -> str:
        return ":".join((*self.path, key(self.node.id)))

    @property
    def graph(self) -> Graph:
        return self.node.graph

    def _where(self) -> str:
        return f"node {self.id} ({self.node.title})"

    def _mark(self, visited: set[str], side: str, slot: int) -> None:
        """Guard against cycles, keyed as the page keys them (by definition, not by instance)."""
        owner = self.instance.subgraph.id if self.instance is not None and self.instance.subgraph else None
        mark = f"{owner}:{js_string(self.node.id)}[{side}]{slot}"
        if mark in visited:
            raise WorkflowError(f"{self._where()}: its {'input' if side == 'I' else 'output'} {slot} is part of a loop")
        visited.add(mark)

    def resolve_input(self, slot: int, visited: set[str] | None = None, wanted: Any = None) -> Resolved | None:
        """What feeds input ``slot``: an output, a widget value, or nothing (``None``)."""
        visited = set() if visited is None else visited
        self._mark(visited, "I", slot)
        if not 0 <= slot < len(self.inputs):
            raise WorkflowError(f"{self._where()} has no input {slot}")
        item = self.inputs[slot]
        if item.link is None:
            return None
        link = self.graph.link(item.link)
        if link is None:
            raise WorkflowError(f"{self._where()}: input {item.name!r} uses link {item.link!r}, which does not exist")
        if self.instance is not None and link.origin_id == SUBGRAPH_INPUT_ID:
            return self._from_instance(link, item, visited)
        origin = self.graph.node(link.origin_id)
        if origin is None:
            raise WorkflowError(f"{self._where()}: input {item.name!r} comes from missing node {link.origin_id!r}")
        return self._dto(origin).resolve_output(link.origin_slot, item.type if wanted is None else wanted, visited)

    def _dto(self, node: Node, path: tuple[str, ...] | None = None) -> Executable:
        found = self.nodes.get(":".join((*(self.path if path is None else path), key(node.id))))
        if found is None:
            raise WorkflowError(f"{self._where()}: node {js_string(node.id)} is not part of the flattened graph")
        return found

    def _from_instance(self, link: Link, item: Input, visited: set[str]) -> Resolved | None:
        """A link from the subgraph's input slot: what feeds the instance there, or its promoted widget."""
        instance = self.instance
        assert instance is not None
        if not 0 <= link.origin_slot < len(instance.inputs):
            raise WorkflowError(f"{self._where()}: subgraph input {link.origin_slot} ({item.name!r}) does not exist")
        outer = instance.inputs[link.origin_slot]
        if outer.link is None:
            widget = instance.widget(outer.widget)
            return None if widget is None else Resolved(self.id, -1, widget.value, is_widget=True)
        outer_link = instance.graph.link(outer.link)
        if outer_link is None:
            raise WorkflowError(f"{self._where()}: subgraph node input {outer.name!r} uses a link that does not exist")
        return self._dto(instance, self.path[:-1]).resolve_input(outer_link.target_slot, visited)

    def resolve_output(self, slot: int, wanted: Any, visited: set[str]) -> Resolved | None:
        """The real output behind output ``slot`` (followed through bypassed, virtual and subgraph nodes)."""
        self._mark(visited, "O", slot)
        node = self.node
        if node.mode == BYPASS:
            index = self._bypass_slot(slot, wanted)
            return None if index < 0 else self.resolve_input(index, visited)
        if node.subgraph is not None:
            return self._into_subgraph(slot, wanted, visited)
        if node.is_virtual:  # a Reroute passes its input on; primitives and notes have none
            item = node.inputs[slot] if 0 <= slot < len(node.inputs) else None
            link = self.graph.link(item.link) if item is not None else None
            if link is None:
                return None
            target = self.graph.node(link.target_id)
            if target is None:
                raise WorkflowError(f"{self._where()}: its link {link.id!r} leads to a node that does not exist")
            return self._dto(target).resolve_input(link.target_slot, visited, wanted)
        return Resolved(self.id, slot)

    def _bypass_slot(self, slot: int, wanted: Any) -> int:
        """The input a bypassed node passes to output ``slot``: the same index if its type fits, else the first
        input of exactly the wanted type, else the first compatible one; ``-1`` for none."""
        inputs = self.inputs
        if not 0 <= slot < len(self.node.outputs):
            raise WorkflowError(f"{self._where()} has no output {slot}")
        output_type = self.node.outputs[slot].type
        if wanted in ("*", ""):
            return slot if len(inputs) > slot else 0
        if slot < len(inputs) and valid(inputs[slot].type, output_type) and valid(inputs[slot].type, wanted):
            return slot
        exact = next((i for i, item in enumerate(inputs) if item.type == wanted), -1)
        if exact != -1:
            return exact
        compatible = (i for i, item in enumerate(inputs) if valid(item.type, output_type) and valid(item.type, wanted))
        return next(compatible, -1)

    def _into_subgraph(self, slot: int, wanted: Any, visited: set[str]) -> Resolved | None:
        node, subgraph = self.node, self.node.subgraph
        assert subgraph is not None
        if not 0 <= slot < len(node.outputs):
            raise WorkflowError(f"{self._where()} has no output {slot}")
        links = subgraph.outputs[slot].link_ids if slot < len(subgraph.outputs) else []
        inner_link = subgraph.link(links[0]) if links else None
        if inner_link is None:
            return None
        inner = subgraph.node(inner_link.origin_id)
        if inner is None:
            raise WorkflowError(f"{self._where()}: its output {slot} comes from a node that does not exist")
        return self._dto(inner, (*self.path, key(node.id))).resolve_output(inner_link.origin_slot, wanted, visited)


def valid(first: Any, second: Any) -> bool:
    """LiteGraph's type compatibility: ``*`` and empty match anything; comma lists match if any pair does."""
    a: Any = 0 if first in ("", "*") else first
    b: Any = 0 if second in ("", "*") else second
    if not a or not b or a == b:
        return True
    left, right = js_string(a).lower(), js_string(b).lower()
    if "," not in left and "," not in right:
        return left == right
    return any(valid(x, y) for x in left.split(",") for y in right.split(","))


def execution_order(graph: Graph) -> list[Node]:
    """The page's execution order of one graph's nodes: Kahn's algorithm over the links, nodes without inputs
    first in graph order, the nodes of a cycle last."""
    pending: dict[str, Node] = {}
    remaining: dict[str, int] = {}
    starts: list[Node] = []
    for node in graph:
        pending[key(node.id)] = node
        count = sum(1 for item in node.inputs if item.link is not None)
        if count:
            remaining[key(node.id)] = count
        else:
            starts.append(node)
    ordered: list[Node] = []
    done_links: set[str] = set()
    while starts:
        node = starts.pop(0)
        ordered.append(node)
        pending.pop(key(node.id), None)
        for output in node.outputs:
            for link_id in output.links:
                link = graph.link(link_id)
                if link is None or key(link.id) in done_links:
                    continue
                done_links.add(key(link.id))
                target = graph.node(link.target_id)
                if target is not None:
                    remaining[key(target.id)] = remaining.get(key(target.id), 0) - 1
                    if remaining[key(target.id)] == 0:
                        starts.append(target)
    index_keys = sorted((k for k in pending if is_array_index(k)), key=int)  # for...in lists array indexes first
    return ordered + [pending[k] for k in [*index_keys, *(k for k in pending if not is_array_index(k))]]


def is_array_index(text: str) -> bool:
    """A key JavaScript objects list first, in numeric order (``"7"``, not ``"07"`` or ``"12:5"``)."""
    return text.isdigit() and (text == "0" or not text.startswith("0")) and int(text) < 2**32 - 1


def flatten(root: Graph) -> dict[str, Executable]:
    """Every executable node by id, in the page's order; subgraph and group nodes expanded (and kept too)."""
    nodes: dict[str, Executable] = {}
    for node in execution_order(root):
        if node.group is not None:
            node.group.expand(nodes)
            continue
        own = Executable(node, (), None, nodes)
        if node.subgraph is not None:
            for inner in _inner(node, (), None, nodes, frozenset()):
                nodes[inner.id] = inner
        nodes[own.id] = own
    return nodes


def _inner(
    instance: Node, path: tuple[str, ...], parent: Node | None, nodes: dict[str, Executable], seen: frozenset[int]
) -> Iterator[Executable]:
    if id(instance) in seen:
        raise WorkflowError(f"subgraph node {instance.label} contains itself")
    own = Executable(instance, path, parent, nodes)
    nodes[own.id] = own
    subgraph = instance.subgraph
    assert subgraph is not None
    inner_path = (*path, key(instance.id))
    for node in subgraph:
        if node.group is not None:
            raise WorkflowError(
                f"group node {node.label} is inside subgraph {subgraph.name!r}: ComfyUI's page does not support that "
                "either; convert the group node to a subgraph"
            )
        if node.subgraph is not None:
            yield from _inner(node, inner_path, instance, nodes, seen | {id(instance)})
        else:
            dto = Executable(node, inner_path, instance, nodes)
            nodes[dto.id] = dto
            yield dto
