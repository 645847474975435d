"""A UI-format workflow loaded the way ComfyUI's page loads it: graphs (the root and each subgraph definition),
links, and nodes whose inputs and widget values follow the server's node definitions.

The page rebuilds every node from its definition and then pours the saved ``widgets_values`` into the widgets in
order, so a saved input list or widget list that no longer matches the definition is repaired the page's way, not
trusted. Link slots saved by older frontends are corrected the same way (a link's target slot becomes the index of
the input that holds it).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from comfy_notebook.core.errors import WorkflowError
from comfy_notebook.core.ui.nodedefs import NodeDef, WidgetDef, migrate_widget_values
from comfy_notebook.core.ui.values import UNDEFINED, is_js_truthy, js_string, textarea_value

SUBGRAPH_INPUT_ID = -10
SUBGRAPH_OUTPUT_ID = -20
NEVER, BYPASS = 2, 4
VIRTUAL_TYPES = frozenset({"Reroute", "PrimitiveNode", "Note", "MarkdownNote"})
#: Renamed node classes the page patches on load.
TYPE_PATCHES = {
    "T2IAdapterLoader": "ControlNetLoader",
    "ConditioningAverage ": "ConditioningAverage",
    "SDV_img2vid_Conditioning": "SVD_img2vid_Conditioning",
    "Load3DAnimation": "Load3D",
    "Preview3DAnimation": "Preview3D",
}
GROUP_PREFIX = "workflow>"


def key(value: Any) -> str:
    """How the page looks a node up by id (an object key: ``5`` and ``"5"`` are the same node)."""
    return js_string(value)


def slot_index(value: Any, what: str) -> int:
    """A slot index: an integer, or digits (the page's schema parses ``"1"``)."""
    if isinstance(value, bool):
        raise WorkflowError(f"{what}: a slot index must be a number, not {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    raise WorkflowError(f"{what}: a slot index must be a number, not {value!r}")


@dataclass
class Link:
    id: Any
    origin_id: Any
    origin_slot: int
    target_id: Any
    target_slot: int
    type: Any
    saved_target_slot: int = -1  # the target slot as saved (before the page corrects it after loading)


@dataclass
class Input:
    name: str
    type: Any
    link: Any = None
    widget: str | None = None


@dataclass
class Output:
    type: Any
    links: list[Any] = field(default_factory=list)
    widget: str | None = None


class Widget:
    """A widget on a node: its definition and its current value, read back the way the page reads it.

    A text box's value lives in its ``<textarea>``; a promoted copy on a subgraph node shares that element, so
    text widgets share one value cell with their copies (``_cell``)."""

    def __init__(self, spec: WidgetDef, name: str | None = None) -> None:
        self.spec = spec
        self.name = spec.name if name is None else name
        self._cell: list[Any] = [textarea_value(spec.default) if spec.kind == "text" else spec.default]
        self._changed = False
        self.initial = js_string(spec.default)  # an upload combo's fallback file, fixed at creation

    @property
    def value(self) -> Any:
        raw = self._cell[0]
        if self.spec.upload_folder is None:
            return raw
        raw = raw if self._changed else self.initial
        if not is_js_truthy(raw):
            return self.initial
        if isinstance(raw, list):
            if self.spec.options.get("allow_batch"):
                return [self._annotated(item) for item in raw]
            return self._annotated(raw[0]) if raw else UNDEFINED
        return self._annotated(raw)

    @value.setter
    def value(self, value: Any) -> None:
        if self.spec.kind == "fixed":
            return
        self._changed = True
        self._cell[0] = textarea_value(value) if self.spec.kind == "text" else value

    def _annotated(self, item: Any) -> Any:
        """An upload combo's file, with `` [output]`` added when the upload folder is not ``input``."""
        folder = self.spec.upload_folder or "input"

        def annotation(text: str) -> str:
            tagged = any(f"[{tag}]" in text.lower() for tag in ("input", "output", "temp"))
            return "" if tagged or folder == "input" else f" [{folder}]"

        if isinstance(item, str):
            return f"{item}{annotation(item)}"
        if isinstance(item, Mapping):
            name = js_string(item.get("filename") or "")
            sub = item.get("subfolder") or ""
            path = f"{js_string(sub)}/{name}" if sub else name
            return path + (annotation(js_string(item["type"])) if is_js_truthy(item.get("type")) else "")
        return js_string(item)

    def copy_for(self, name: str) -> Widget:
        """A promoted copy (a subgraph node shows its inner widget under the subgraph input's name): a text box
        shares its value with the original, any other widget copies the current value."""
        if self.spec.kind == "text":
            copy = Widget(self.spec, name)
            copy._cell = self._cell
            return copy
        copy = Widget(replace(self.spec, upload_folder=None), name)
        copy._cell = [self.value]
        return copy

    def __repr__(self) -> str:
        return f"Widget({self.name!r}={self.value!r})"


class Group(Protocol):
    """A legacy group node's inner nodes (see :mod:`comfy_notebook.core.ui.groupnode`)."""

    node: Node
    config: Any

    def inner(self) -> list[Node]: ...

    def expand(self, nodes: dict[str, Any]) -> None: ...

    def source(self, index: int, slot: int) -> tuple[Node, Any] | None: ...


@dataclass(eq=False)
class Node:
    """A node as the page holds it after loading."""

    id: Any
    type: str
    title: str
    mode: int
    graph: Graph
    data: Mapping[str, Any]
    definition: NodeDef | None = None
    inputs: list[Input] = field(default_factory=list)
    outputs: list[Output] = field(default_factory=list)
    widgets: list[Widget] = field(default_factory=list)
    properties: dict[str, Any] = field(default_factory=dict)
    subgraph: Graph | None = None  # the definition a subgraph node instantiates
    group: Group | None = None  # a legacy group node's inner nodes

    @property
    def is_virtual(self) -> bool:
        return self.type in VIRTUAL_TYPES or self.subgraph is not None or self.group is not None

    @property
    def label(self) -> str:
        """How errors name this node: its id, title and, inside a subgraph, the subgraph's name."""
        where = f" in subgraph {self.graph.name!r}" if self.graph.id is not None else ""
        return f"#{js_string(self.id)} ({self.title}){where}"

    def widget(self, name: str | None) -> Widget | None:
        return next((w for w in self.widgets if w.name == name), None) if name is not None else None


@dataclass
class SubgraphSlot:
    name: str
    type: Any
    link_ids: list[Any]


@dataclass(eq=False)
class Graph:
    """The root graph or one subgraph definition."""

    id: str | None
    name: str
    nodes: dict[str, Node] = field(default_factory=dict)
    links: dict[Any, Link] = field(default_factory=dict)
    inputs: list[SubgraphSlot] = field(default_factory=list)
    outputs: list[SubgraphSlot] = field(default_factory=list)
    configured: bool = False
    root: Graph | None = None  # for a subgraph definition: the root graph
    definitions: list[Graph] = field(default_factory=list)  # for the root: every subgraph definition, in order

    def node(self, node_id: Any) -> Node | None:
        return self.nodes.get(key(node_id)) if node_id is not None else None

    def link(self, link_id: Any) -> Link | None:
        return None if link_id is None else self.links.get(_link_key(link_id))

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes.values())


def _link_key(link_id: Any) -> Any:
    """Links live in a JavaScript Map: ``5`` and ``5.0`` are one key, ``"5"`` another."""
    if isinstance(link_id, float) and link_id.is_integer():
        return int(link_id)
    return link_id


def read_links(graph: Graph, raw_links: Any) -> None:
    """Links saved as arrays ``[id, origin, origin_slot, target, target_slot, type]`` or as objects."""
    if not isinstance(raw_links, list):
        return
    for raw in raw_links:
        if isinstance(raw, list | tuple) and len(raw) >= 5:
            values = list(raw) + [None] * (6 - len(raw))
            link_id, origin, origin_slot, target, target_slot, kind = values[:6]
        elif isinstance(raw, Mapping):
            link_id, origin, target = raw.get("id"), raw.get("origin_id"), raw.get("target_id")
            origin_slot, target_slot, kind = raw.get("origin_slot"), raw.get("target_slot"), raw.get("type")
        else:
            continue  # the page skips what it cannot read as a link
        where = f"{_graph_name(graph)}: link {link_id!r}"
        link = Link(link_id, origin, slot_index(origin_slot, where), target, slot_index(target_slot, where), kind)
        link.saved_target_slot = link.target_slot
        graph.links[_link_key(link_id)] = link


def _graph_name(graph: Graph) -> str:
    return "the workflow" if graph.id is None else f"subgraph {graph.name!r}"


def saved_inputs(data: Mapping[str, Any]) -> list[Input]:
    """A node's inputs exactly as saved."""
    result = []
    for raw in data.get("inputs") or []:
        if not isinstance(raw, Mapping):
            continue
        widget = raw.get("widget")
        name = widget.get("name") if isinstance(widget, Mapping) else None
        result.append(Input(str(raw.get("name", "")), raw.get("type"), raw.get("link"), name))
    return result


def saved_outputs(data: Mapping[str, Any]) -> list[Output]:
    result = []
    for raw in data.get("outputs") or []:
        if not isinstance(raw, Mapping):
            result.append(Output(None))
            continue
        widget = raw.get("widget")
        name = widget.get("name") if isinstance(widget, Mapping) else None
        result.append(Output(raw.get("type"), list(raw.get("links") or []), name))
    return result


def configure_comfy_node(node: Node, definition: NodeDef) -> None:
    """Inputs from the definition (each keeps the saved link of the same name, extra saved inputs follow), outputs
    typed by the definition, widgets with their defaults, then the saved ``widgets_values`` in widget order."""
    data = node.data
    node.definition = definition
    saved = saved_inputs(data)
    by_name = {item.name: item for item in saved}
    merged = []
    for spec in definition.inputs:
        found = by_name.get(spec.name)
        if found is None:
            merged.append(Input(spec.name, spec.type, None, spec.widget))
        else:
            merged.append(Input(spec.name, spec.type, found.link, spec.widget or found.widget))
    names = {spec.name for spec in definition.inputs}
    merged.extend(item for item in saved if item.name not in names)
    node.inputs = merged
    outputs = saved_outputs(data)
    node.outputs = [
        Output(kind, outputs[i].links if i < len(outputs) else [], outputs[i].widget if i < len(outputs) else None)
        for i, kind in enumerate(definition.outputs)
    ] + outputs[len(definition.outputs) :]
    node.widgets = [Widget(spec) for spec in definition.widgets]
    if not definition.is_save_node:
        node.properties.setdefault("Node name for S&R", definition.class_type)
    load_widget_values(node, migrate=True)


def load_widget_values(node: Node, *, migrate: bool = False) -> None:
    """Pour a saved ``widgets_values`` list into the widgets that take values, in order (a dict is ignored, as
    the page ignores it)."""
    values = node.data.get("widgets_values")
    if not isinstance(values, list):
        return
    if migrate and node.definition is not None:
        values = migrate_widget_values(node.definition, list(values))
    takers = [w for w in node.widgets if w.spec.takes_value]
    for widget, value in zip(takers, values, strict=False):
        widget.value = value


def drop_inputs_without_widgets(node: Node) -> None:
    """An input that claims a widget the node does not have is removed (with its link) once the graph is
    configured, as the page's widget-inputs extension does."""
    node.inputs = [item for item in node.inputs if item.widget is None or node.widget(item.widget) is not None]


def fix_link_slots(graph: Graph, seen: frozenset[int] = frozenset()) -> None:
    """Each link's target slot becomes the index of the input that holds it (the page does this after loading,
    for the root graph and, through subgraph nodes, every definition in use)."""
    for node in graph:
        for index, item in enumerate(node.inputs):
            link = graph.link(item.link) if is_js_truthy(item.link) else None  # the page skips link id 0
            if link is not None:
                link.target_slot = index
        if node.subgraph is not None and id(node.subgraph) not in seen:
            fix_link_slots(node.subgraph, seen | {id(node.subgraph)})


def each_node(graph: Graph, seen: frozenset[int] = frozenset()) -> Iterator[Node]:
    """Every node, depth first, a subgraph node's inner nodes before the subgraph node (the page's order for
    ``%Node.widget%`` lookups)."""
    for node in graph:
        if node.subgraph is not None and id(node.subgraph) not in seen:
            yield from each_node(node.subgraph, seen | {id(node.subgraph)})
        yield node


def missing_types_error(missing: Mapping[str, list[str]]) -> WorkflowError:
    """One clear error naming every node class the server does not have, with the nodes that use it."""
    parts = [f"{kind} (node {', '.join(nodes)})" for kind, nodes in sorted(missing.items())]
    return WorkflowError(
        f"the server has no node type {'; '.join(parts)}: install the custom nodes that provide "
        f"{'it' if len(missing) == 1 else 'them'} on the server, or remove {'it' if len(missing) == 1 else 'them'} "
        "from the workflow"
    )


def title_of(data: Mapping[str, Any], default: str) -> str:
    title = data.get("title")
    return js_string(title) if is_js_truthy(title) else default


def mode_of(data: Mapping[str, Any]) -> int:
    mode = data.get("mode")
    return mode if isinstance(mode, int) and not isinstance(mode, bool) else 0
