"""Legacy group node *types* (``extra.groupNodes``): the node type ComfyUI's page builds from a group's stored
nodes, and the maps between the group node's inputs, widgets and outputs and the inner nodes'.

Every inner input no inner link feeds becomes an input (or a widget) of the group node, named after the inner input
(prefixed by the inner node's title when names clash); every inner output no inner link uses becomes an output. The
page's bookkeeping is reproduced step by step, index quirks included, because a group node's saved widget values
and links only make sense against exactly that layout.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from comfy_notebook.core.ui.graph import GROUP_PREFIX
from comfy_notebook.core.ui.nodedefs import WIDGET_TYPES, NodeDef, node_def, page_inputs
from comfy_notebook.core.ui.values import js_string

_FRONTEND = {"Reroute", "PrimitiveNode", "Note", "MarkdownNote"}


@dataclass(eq=False)
class GroupConfig:
    """One group node type: its stored nodes and links, and the page's maps between them and the group node."""

    name: str
    nodes: list[Mapping[str, Any]]
    links: list[list[Any]]
    settings: Mapping[str, Any]
    links_from: dict[Any, dict[Any, list[list[Any]]]] = field(default_factory=dict)
    links_to: dict[Any, dict[Any, list[Any]]] = field(default_factory=dict)
    external_from: dict[Any, dict[Any, Any]] = field(default_factory=dict)
    new_to_old_output: dict[int, tuple[int, int]] = field(default_factory=dict)
    old_to_new_input: dict[int, dict[int, int]] = field(default_factory=dict)
    old_to_new_widget: dict[int, dict[str, str | None]] = field(default_factory=dict)
    new_to_old_widget: dict[str, tuple[int, str]] = field(default_factory=dict)
    primitive_defs: dict[int, list[Any]] = field(default_factory=dict)
    primitive_to_widget: dict[int, list[tuple[int, str]]] = field(default_factory=dict)
    required: dict[str, Any] = field(default_factory=dict)
    outputs: list[Any] = field(default_factory=list)
    input_count: int = 0
    definition: NodeDef | None = None

    def custom(self, index: int, section: str, key: Any) -> Mapping[str, Any]:
        """The group's per-node settings (``config``): a renamed or hidden input or output."""
        node = self.settings.get(str(index)) or {}
        found = (node.get(section) or {}).get(js_string(key)) if isinstance(node, Mapping) else None
        return found if isinstance(found, Mapping) else {}


def register_group_nodes(data: Mapping[str, Any], definitions: Any, missing: dict[str, list[str]]) -> None:
    """Build every group node type whose inner node types all exist; report the others' missing types."""
    for name, raw in data.items():
        if not isinstance(raw, Mapping) or not isinstance(raw.get("nodes"), list):
            continue
        group_type = f"{GROUP_PREFIX}{name}"
        nodes = [n for n in raw["nodes"] if isinstance(n, Mapping)]
        absent = [n.get("type") for n in nodes if n.get("type") not in definitions and n.get("type") not in _FRONTEND]
        for kind in absent:
            missing.setdefault(js_string(kind), []).append(f"inside group node type {group_type!r}")
        if absent:
            continue
        settings = raw.get("config")
        links = [list(link) for link in raw.get("links") or [] if isinstance(link, list | tuple) and len(link) >= 4]
        config = GroupConfig(str(name), nodes, links, settings if isinstance(settings, Mapping) else {})
        _build(config, raw, definitions)
        definitions.groups[group_type] = config


def _build(config: GroupConfig, raw: Mapping[str, Any], definitions: Any) -> None:
    for link in config.links:
        source, source_slot, target, target_slot = link[:4]
        if source is None:
            continue  # a link from outside the group
        config.links_from.setdefault(source, {}).setdefault(source_slot, []).append(link)
        config.links_to.setdefault(target, {})[target_slot] = link
    for ext in raw.get("external") or []:
        if isinstance(ext, list | tuple) and len(ext) >= 3:
            config.external_from.setdefault(ext[0], {})[ext[1]] = ext[2]
    seen_inputs: dict[str, int] = {}
    converted_later: list[Callable[[], None]] = []
    for index, node in enumerate(config.nodes):
        spec = _node_spec(config, index, node, definitions)
        if spec is None:
            continue
        inputs = {**spec.get("required", {}), **spec.get("optional", {})}
        if inputs:
            converted_later.append(_node_inputs(config, index, node, inputs, seen_inputs))
        for slot, kind in enumerate(spec.get("output") or []):
            _node_output(config, index, slot, kind)
    for finish in converted_later:  # widget inputs come after every node's plain inputs
        finish()
    definition = {"input": {"required": config.required}, "output": config.outputs, "display_name": config.name}
    config.definition = node_def(f"{GROUP_PREFIX}{config.name}", definition)


def _node_spec(config: GroupConfig, index: int, node: Mapping[str, Any], definitions: Any) -> dict[str, Any] | None:
    """An inner node's spec: the server's, or what the page makes up for a wired primitive or a reroute."""
    kind = js_string(node.get("type"))
    if kind in definitions:
        required, optional = page_inputs(kind, definitions.raw(kind))
        return {"required": required, "optional": optional, "output": list(definitions.raw(kind).get("output") or [])}
    links_from = config.links_from.get(index)
    if kind == "PrimitiveNode":
        if not links_from or not links_from.get(0):
            return None
        first = links_from[0][0]
        value_type = first[5] if len(first) > 5 else None
        if value_type == "COMBO":  # the target's option list
            target_type = js_string(config.nodes[first[2]].get("type"))
            widget = js_string(((node.get("outputs") or [{}])[0].get("widget") or {}).get("name"))
            required, optional = page_inputs(target_type, definitions.raw(target_type))
            value_type = (required.get(widget) or optional.get(widget) or [None])[0]
        value: list[Any] = [value_type, {}]
        config.primitive_defs[index] = value
        return {"required": {"value": value}, "output": [value_type]}
    if kind == "Reroute":
        return _reroute_spec(config, index, links_from)
    return None  # other frontend-only nodes are left out of the group node type


def _reroute_spec(config: GroupConfig, index: int, links_from: Mapping[Any, Any] | None) -> dict[str, Any] | None:
    links_to = config.links_to.get(index)
    if links_to and links_from and not config.external_from.get(index, {}).get(0):
        return None  # used inside the group only
    kind: Any = "*"
    if links_from:
        for link in links_from.get(0, []):
            target_inputs = config.nodes[link[2]].get("inputs") or []
            if kind == "*" and link[3] < len(target_inputs):
                kind = target_inputs[link[3]].get("type")
    elif links_to:
        source, slot = links_to[0][0], links_to[0][1]
        kind = (config.nodes[source].get("outputs") or [])[slot].get("type")
    else:
        kind = next((link[5] for link in config.links if link[2] == index and len(link) > 5), "*")
        if kind == "*":
            kind = config.external_from.get(index, {}).get(0) or kind
    return {"required": {kind: [kind, {"forceInput": True}]}, "output": [kind]}


def _input_config(
    config: GroupConfig,
    index: int,
    node: Mapping[str, Any],
    name: str,
    *,
    seen: dict[str, int],
    spec: Any,
    **extra: Any,
) -> tuple[str, Any, Mapping[str, Any]]:
    """The group node's name and spec for an inner input (prefixed by the inner node's title on a clash)."""
    custom = config.custom(index, "input", name)
    label = next((i.get("label") for i in node.get("inputs") or [] if i.get("name") == name), None)
    new_name = custom.get("name") or label or name
    entry, prefix = new_name, ""
    if (node.get("type") == "PrimitiveNode" and node.get("title")) or new_name in seen:
        prefix = f"{node.get('title') or node.get('type')} "
        entry = new_name = f"{prefix}{name}"
        if new_name in seen:
            new_name = f"{prefix}{seen[new_name]} {name}"
    seen[entry] = seen.get(entry, 1) + 1
    if name in ("seed", "noise_seed"):
        extra["control_after_generate"] = f"{prefix}control_after_generate"
    if _spec_type(spec) == "IMAGEUPLOAD":
        widget = (spec[1] if len(spec) > 1 else {}).get("widget") or "image"
        extra["widget"] = config.old_to_new_widget.get(index, {}).get(widget) or "image"
    if extra:
        spec = [spec[0], {**(spec[1] if len(spec) > 1 else {}), **extra}]
    return str(new_name), spec, custom


def _spec_type(spec: Any) -> Any:
    kind = spec[0] if isinstance(spec, list | tuple) and spec else None
    return "COMBO" if isinstance(kind, list | tuple) else kind


def _node_inputs(
    config: GroupConfig, index: int, node: Mapping[str, Any], inputs: dict[str, Any], seen: dict[str, int]
) -> Callable[[], None]:
    """Plain widgets and unfed sockets of one inner node now; its converted widgets later (returned)."""
    widget_map: dict[str, str | None] = {}
    config.old_to_new_widget[index] = widget_map
    slots: list[str] = []
    converted: dict[int, str] = {}
    saved = node.get("inputs") or []
    for name, spec in inputs.items():
        if _spec_type(spec) not in WIDGET_TYPES:
            slots.append(name)
            continue
        position = next(
            (i for i, s in enumerate(saved) if s.get("name") == name and (s.get("widget") or {}).get("name") == name),
            -1,
        )
        if position > -1:  # a widget shown as an input too: placed with the other converted widgets
            converted[position] = name
            widget_map[name] = None
            continue
        new_name, new_spec, _custom = _input_config(config, index, node, name, seen=seen, spec=spec)
        config.required[new_name] = new_spec
        widget_map[name] = new_name
        config.new_to_old_widget[new_name] = (index, name)
    links_to = config.links_to.get(index, {})
    input_map: dict[int, int] = {}
    config.old_to_new_input[index] = input_map
    for i, name in enumerate(slots):
        if links_to.get(i):
            _primitive_link(config, links_to[i], name, inputs)
            continue
        new_name, new_spec, custom = _input_config(config, index, node, name, seen=seen, spec=inputs[name])
        if custom.get("visible") is False:
            continue
        config.required[new_name] = new_spec
        input_map[i] = config.input_count
        config.input_count += 1

    def converted_widgets() -> None:
        names = [converted[k] for k in sorted(converted, key=str)]  # the page sorts the indexes as text
        for i, name in enumerate(names):
            if links_to.get(len(slots) + i):
                _primitive_link(config, links_to[len(slots) + i], name, inputs)
                continue
            new_name, spec, _custom = _input_config(
                config, index, node, name, seen=seen, spec=inputs[name], defaultInput=True
            )
            config.required[new_name] = spec
            config.new_to_old_widget[new_name] = (index, name)
            widget_map[name] = new_name
            input_map[len(slots) + i] = config.input_count
            config.input_count += 1

    return converted_widgets


def _primitive_link(config: GroupConfig, link: list[Any], name: str, inputs: Mapping[str, Any]) -> None:
    """An inner input fed by an inner primitive: the primitive's value widget takes the target's options."""
    source, target = link[0], link[2]
    value = config.primitive_defs.get(source)
    if value is None or config.nodes[source].get("type") != "PrimitiveNode":
        return
    options = dict(inputs[name][1]) if len(inputs[name]) > 1 else {}
    value_name = config.old_to_new_widget.get(source, {}).get("value") or ""
    options.update(control_after_generate=True, control_prefix=value_name[: max(0, len(value_name) - 6)])
    value[1:] = [options]  # the same list object is the group node's spec: the page mutates it in place
    config.primitive_to_widget.setdefault(source, []).append((target, name))


def _node_output(config: GroupConfig, index: int, slot: int, kind: Any) -> None:
    """An inner output becomes a group output unless only inner links use it."""
    internal = config.links_from.get(index, {}).get(slot) and not config.external_from.get(index, {}).get(slot)
    visible = config.custom(index, "output", slot).get("visible")
    if not (not internal if visible is None else visible):
        return
    config.new_to_old_output[len(config.outputs)] = (index, slot)
    config.outputs.append(kind)
