"""Primitive nodes: a frontend-only node that holds one value and writes it into the widget of every input it is
wired to, plus the number widgets' own rounding, which runs whenever a value is written that way.

On load the page gives a wired primitive the widget of its first target, fills it from ``widgets_values[0]`` and,
for numbers, narrows it to every target's range (merging the targets' specs); when it builds a prompt the
primitive writes its value into each target widget, whose change handler rounds it to the target's step. The page
looks the primitive's links up in the *root* graph, even for a primitive inside a subgraph; so does this.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from comfy_notebook.core.errors import WorkflowError
from comfy_notebook.core.ui.graph import Graph, Link, Node, Widget
from comfy_notebook.core.ui.nodedefs import WIDGET_TYPES, WidgetDef, widgets_for
from comfy_notebook.core.ui.values import UNDEFINED, is_js_truthy

REPLACE_PROPERTY = "Run widget replace on values"
_CORE_WIDGETS = WIDGET_TYPES - {"WEBCAM", "AUDIO_UI", "AUDIOUPLOAD", "AUDIO_RECORD", "LOAD_3D", "PREVIEW_3D"}
_IGNORED_IN_MERGE = {"default", "forceInput", "defaultInput", "control_after_generate", "multiline", "tooltip"}
_IGNORED_IN_MERGE |= {"dynamicPrompts"}


def js_round(value: float) -> float:
    """``Math.round``: halves go up (towards +infinity)."""
    if not math.isfinite(value):
        return value
    low = math.floor(value)
    return float(low + 1 if value - low >= 0.5 else low)


def _option(options: Mapping[str, Any], name: str, fallback: float) -> float:
    """A numeric widget option, JavaScript style (``options.name ?? fallback``)."""
    value = options.get(name)
    return fallback if value is None or isinstance(value, bool) or not isinstance(value, int | float) else value


def number_changed(widget: Widget, value: Any) -> None:
    """A number widget's change handler, run when a primitive writes into it: INT rounds to its step (from its
    ``min``), FLOAT rounds to its precision and stays in its range (``0..2048`` unless the spec says otherwise)."""
    kind, options = widget.spec.kind, widget.spec.options
    if kind not in ("int", "float") or isinstance(value, bool) or not isinstance(value, int | float):
        return
    low = _option(options, "min", 0)
    if kind == "int":
        step = _option(options, "step", 1) or 1
        if step == 1:
            widget.value = js_round(value)
        else:
            offset = math.fmod(low, step) if math.isfinite(low) else math.nan
            widget.value = js_round((value - offset) / step) * step + offset
        return
    step = _option(options, "step", 0.5)
    precision = max(0, -math.floor(math.log10(step))) if step > 0 else 0
    spec_round = options.get("round")
    rounding = 10.0**-precision if precision and not is_js_truthy(spec_round) else spec_round
    if not is_js_truthy(rounding) or not isinstance(rounding, int | float):
        widget.value = value
        return
    rounded = js_round(value / rounding) * rounding
    fixed = float(Decimal(rounded).quantize(Decimal(1).scaleb(-precision), rounding=ROUND_HALF_UP))
    widget.value = min(max(fixed, low), _option(options, "max", 2048))


def _target_spec(node: Node, name: str) -> tuple[str, dict[str, Any]] | None:
    """The spec of a target's widget input (what the page's widget config getter returns)."""
    if node.definition is not None and name in node.definition.specs:
        kind, options = node.definition.specs[name]
        return kind, {"name": name, **options}
    widget = node.widget(name)
    if widget is not None:  # a subgraph node's promoted widget: the inner widget's spec
        kind = {"int": "INT", "float": "FLOAT", "toggle": "BOOLEAN", "combo": "COMBO"}.get(widget.spec.kind, "STRING")
        return kind, {"name": name, **widget.spec.options}
    return None


def _merge(first: tuple[str, dict[str, Any]], second: tuple[str, dict[str, Any]]) -> tuple[str, dict[str, Any]] | None:
    """The page's merge of two numeric widget specs (one primitive feeding both): the ranges intersect, the steps
    combine, every other option must agree."""
    kind, one, two = first[0], first[1], second[1]
    if kind != second[0]:
        return None
    low1, high1 = _bound(one, "min", -math.inf), _bound(one, "max", math.inf)
    low2, high2 = _bound(two, "min", -math.inf), _bound(two, "max", math.inf)
    if low1 > high2 or high1 < low2:
        return None
    step1, step2 = _bound(one, "step", 1), _bound(two, "step", 1)
    merged = {"min": max(low1, low2), "max": min(high1, high2), "step": abs(step1 * step2) / _gcd(step1, step2)}
    one, two = {**one, **merged}, {**two, **merged}
    for name in set(one) | set(two):
        if name not in _IGNORED_IN_MERGE and one.get(name) != two.get(name):
            return None
    return kind, {**one, **two}


def _bound(options: Mapping[str, Any], name: str, fallback: float) -> float:
    value = options.get(name)
    return fallback if value is None else float(value)


def _gcd(a: float, b: float) -> float:
    while b != 0:
        a, b = b, math.fmod(a, b)
    return a


def configure_primitive(node: Node) -> None:
    """Once the graph is loaded: a wired primitive takes its first target's widget and value, then its own saved
    value, then (numbers) the range every target allows."""
    links = node.outputs[0].links if node.outputs else []
    if not links or node.widgets:
        return
    first = node.graph.link(links[0])
    target = node.graph.node(first.target_id) if first is not None else None
    if first is None or target is None or not 0 <= first.target_slot < len(target.inputs):
        return
    target_input = target.inputs[first.target_slot]
    name = target_input.widget
    if name is None:
        if str(target_input.type) not in _CORE_WIDGETS:
            return
        spec: tuple[str, dict[str, Any]] | None = (str(target_input.type), {"name": target_input.name})
        name = target_input.name
    else:
        spec = _target_spec(target, name)
    if spec is None:
        return
    widget = _primitive_widget(spec)
    theirs = target.widget(name)
    if theirs is not None:
        widget.value = theirs.value
    node.widgets = [widget]
    values = node.data.get("widgets_values")
    if isinstance(values, list) and values:
        widget.value = values[0]
    if spec[0] not in ("INT", "FLOAT"):
        return
    config = spec
    root = _root(node.graph)
    for link_id in links:
        link = root.link(link_id)
        their_node = node.graph.node(link.target_id) if link is not None else None
        if link is None or their_node is None or not 0 <= link.target_slot < len(their_node.inputs):
            continue
        their_widget = their_node.inputs[link.target_slot].widget
        other = _target_spec(their_node, their_widget) if their_widget is not None else None
        merged = _merge(config, other) if other is not None else None
        if merged is None:
            continue
        config = merged
        value = widget.value
        widget = _primitive_widget(merged)
        widget.value = value
        low, high = merged[1]["min"], merged[1]["max"]
        if isinstance(value, int | float) and not isinstance(value, bool):
            widget.value = min(max(value, low), high)
        number_changed(widget, widget.value)
        node.widgets = [widget]
        apply_primitive(node, root, lambda _node, text: text)


def _primitive_widget(spec: tuple[str, dict[str, Any]]) -> Widget:
    """The primitive's own value widget, built like the target's (so it rounds like it)."""
    kind, options = spec
    if kind in _CORE_WIDGETS:
        built = widgets_for("value", kind, {k: v for k, v in options.items() if k != "control_after_generate"}, {})
        return Widget(built[0])
    return Widget(WidgetDef("value", "value", None))


def _root(graph: Graph) -> Graph:
    return graph.root if graph.root is not None else graph


def apply_primitive(node: Node, root: Graph, replace: Callable[[Node, str], str]) -> None:
    """What the page does to a primitive before it builds a prompt: its value goes into every target widget (its
    links looked up in the root graph), each target rounding it as if a person had typed it."""
    links = node.outputs[0].links if node.outputs else []
    if not links:
        return
    value = node.widgets[0].value if node.widgets else UNDEFINED
    if is_js_truthy(value) and node.properties.get(REPLACE_PROPERTY) and isinstance(value, str):
        value = replace(node, value)
    for link_id in links:
        link: Link | None = root.link(link_id)
        if link is None:
            raise WorkflowError(
                f"primitive node {node.label}: its link {link_id!r} is not in the root graph, where the page looks "
                "for it (ComfyUI's page fails to queue this workflow too)"
            )
        target = node.graph.node(link.target_id)
        if target is None or not 0 <= link.target_slot < len(target.inputs):
            continue
        widget = target.widget(target.inputs[link.target_slot].widget)
        if widget is None:
            continue
        widget.value = value
        number_changed(widget, widget.value)
