"""Loading a UI-format workflow into graphs, in the order ComfyUI's page loads it: group node types, subgraph
definitions (in the order they are listed), the root graph, then the after-load fixes (link slots, inputs whose
widget is gone, primitive nodes taking their widget).

The order matters: a subgraph node inside a definition listed *before* the definition it instantiates gets no
widgets, exactly as in the page.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from comfy_notebook.core.errors import WorkflowError
from comfy_notebook.core.ui.graph import (
    BYPASS,
    GROUP_PREFIX,
    NEVER,
    TYPE_PATCHES,
    Graph,
    Input,
    Node,
    Output,
    SubgraphSlot,
    configure_comfy_node,
    drop_inputs_without_widgets,
    each_node,
    fix_link_slots,
    key,
    missing_types_error,
    mode_of,
    read_links,
    saved_inputs,
    saved_outputs,
    title_of,
)
from comfy_notebook.core.ui.groupdef import GroupConfig, register_group_nodes
from comfy_notebook.core.ui.groupnode import configure_group_node
from comfy_notebook.core.ui.nodedefs import NodeDef, node_def
from comfy_notebook.core.ui.primitive import configure_primitive
from comfy_notebook.core.ui.subgraph import announce_inputs, configure_subgraph_node
from comfy_notebook.core.ui.values import is_js_truthy, js_string

_FRONTEND_TYPES = {"Reroute": "Reroute", "PrimitiveNode": "Primitive", "Note": "Note", "MarkdownNote": "Markdown Note"}


class Definitions:
    """The server's node classes (``/object_info``), each turned into the page's node once, on first use."""

    def __init__(self, object_info: Mapping[str, Any]) -> None:
        if not isinstance(object_info, Mapping):
            raise WorkflowError("object_info must be the server's /object_info answer: a mapping of node classes")
        self._info = object_info
        self._cache: dict[str, NodeDef] = {}
        self.groups: dict[str, GroupConfig] = {}

    def __contains__(self, class_type: object) -> bool:
        return isinstance(class_type, str) and isinstance(self._info.get(class_type), Mapping)

    def raw(self, class_type: str) -> Mapping[str, Any]:
        found = self._info[class_type]
        assert isinstance(found, Mapping)
        return found

    def __getitem__(self, class_type: str) -> NodeDef:
        if class_type not in self._cache:
            self._cache[class_type] = node_def(class_type, self.raw(class_type))
        return self._cache[class_type]


def _is_ui(data: Any) -> bool:
    return isinstance(data, Mapping) and isinstance(data.get("nodes"), list)


def _new_separator(data: Any) -> Any:
    """Group node types saved as ``workflow/NAME`` (before frontend 1.2.63) are ``workflow>NAME`` now."""
    kind = data.get("type") if isinstance(data, Mapping) else None
    if isinstance(kind, str) and kind.startswith("workflow/"):
        return {**data, "type": GROUP_PREFIX + kind[len("workflow/") :]}
    return data


def _node_type(data: Mapping[str, Any]) -> str:
    kind = js_string(data.get("type"))
    return TYPE_PATCHES.get(kind, kind)


def load(ui: Mapping[str, Any], object_info: Mapping[str, Any]) -> Graph:
    """The root graph of ``ui``, loaded and configured; a clear error for what the page could not load."""
    if not _is_ui(ui):
        raise WorkflowError(
            "this is not a UI-format workflow (a ComfyUI page's saved file has a top-level 'nodes' list)"
        )
    definitions = Definitions(object_info)
    extra = ui.get("extra")
    group_data = extra.get("groupNodes") if isinstance(extra, Mapping) else None
    missing: dict[str, list[str]] = {}
    if isinstance(group_data, Mapping) and group_data:
        register_group_nodes(group_data, definitions, missing)
        ui = {**ui, "nodes": [_new_separator(n) for n in ui["nodes"]]}
    raw_definitions = ui.get("definitions")
    raw_subgraphs = raw_definitions.get("subgraphs") if isinstance(raw_definitions, Mapping) else None
    subgraph_data = [s for s in raw_subgraphs or [] if isinstance(s, Mapping) and _is_ui(s) and "id" in s]
    graphs: dict[str, Graph] = {}
    for data in subgraph_data:
        graph = Graph(js_string(data["id"]), js_string(data.get("name") or data["id"]))
        graph.inputs = _slots(data.get("inputs"))
        graph.outputs = _slots(data.get("outputs"))
        graphs[graph.id or ""] = graph
    _collect_missing(ui["nodes"], "", definitions, graphs, missing)
    for data in subgraph_data:
        _collect_missing(data["nodes"], js_string(data.get("name") or data["id"]), definitions, graphs, missing)
    if missing:
        raise missing_types_error(missing)
    instances: dict[str, list[Node]] = {}
    for data in subgraph_data:
        graph = graphs[js_string(data["id"])]
        _configure(graph, data, definitions, graphs, instances)
        announce_inputs(graph, instances.get(graph.id or "", []))
    root = Graph(None, "workflow")
    root.definitions = list(graphs.values())
    for graph in graphs.values():
        graph.root = root
    _configure(root, ui, definitions, graphs, instances)
    fix_link_slots(root)
    nodes = list(each_node(root))
    for node in nodes:
        drop_inputs_without_widgets(node)
    for node in nodes:
        if node.type == "PrimitiveNode":
            configure_primitive(node)
    for node in root:  # KSampler samplers lost a "sample_" prefix long ago; the page still fixes old files
        widget = node.widget("sampler_name") if node.type in ("KSampler", "KSamplerAdvanced") else None
        if widget is not None and isinstance(widget.value, str) and widget.value.startswith("sample_"):
            widget.value = widget.value[7:]
    return root


def _slots(raw: Any) -> list[SubgraphSlot]:
    slots = []
    for item in raw or []:
        if isinstance(item, Mapping):
            slots.append(
                SubgraphSlot(js_string(item.get("name", "")), item.get("type"), list(item.get("linkIds") or []))
            )
    return slots


def _collect_missing(
    nodes: list[Any], where: str, definitions: Definitions, graphs: Mapping[str, Graph], missing: dict[str, list[str]]
) -> None:
    """Every node class neither the server nor the page knows; page-only widgets are refused here too."""
    for data in nodes:
        if not isinstance(data, Mapping):
            continue
        kind = _node_type(data)
        title = f" {js_string(data['title'])!r}" if is_js_truthy(data.get("title")) else ""
        label = f"#{js_string(data.get('id'))}{title}" + (f" in subgraph {where!r}" if where else "")
        if kind in definitions:
            page_only = definitions[kind].page_only
            if page_only and mode_of(data) not in (NEVER, BYPASS):
                raise WorkflowError(
                    f"node {label} ({kind}) needs ComfyUI's page: its {page_only[0]!r} widget is produced there "
                    "(camera, 3D scene or recording) when the prompt is queued; export the API format from the page"
                )
            continue
        if kind in _FRONTEND_TYPES or kind in graphs or kind in definitions.groups:
            continue
        missing.setdefault(kind, []).append(label)


def _configure(
    graph: Graph,
    data: Mapping[str, Any],
    definitions: Definitions,
    graphs: Mapping[str, Graph],
    instances: dict[str, list[Node]],
) -> None:
    read_links(graph, data.get("links"))
    created: list[Node] = []
    for raw in data["nodes"]:
        if not isinstance(raw, Mapping):
            continue
        kind = _node_type(raw)
        node = Node(raw.get("id"), kind, "", mode_of(raw), graph, raw)
        properties = raw.get("properties")
        node.properties = dict(properties) if isinstance(properties, Mapping) else {}
        graph.nodes[key(node.id)] = node
        created.append(node)
    for node in created:
        kind = node.type
        if kind in definitions:
            definition = definitions[kind]
            node.title = title_of(node.data, definition.title)
            configure_comfy_node(node, definition)
        elif kind in definitions.groups:
            configure_group_node(node, definitions.groups[kind], definitions)
        elif kind in graphs:
            configure_subgraph_node(node, graphs[kind])
            instances.setdefault(kind, []).append(node)
        else:
            node.title = title_of(node.data, _FRONTEND_TYPES.get(kind, kind))
            node.inputs = saved_inputs(node.data)
            node.outputs = saved_outputs(node.data)
            if kind == "Reroute":
                node.inputs = node.inputs or [Input("", "*")]
                node.outputs = node.outputs or [Output("*")]
            elif kind == "PrimitiveNode":
                node.outputs = node.outputs or [Output("*")]
    graph.configured = True
