"""What ComfyUI's page builds for one node class from the server's ``/object_info``: its input sockets, its
widgets (in the order ``widgets_values`` fills them) and its output types.

A UI-format workflow stores widget values as a bare list, so converting it needs exactly the page's widget list:
an INT input marked ``control_after_generate`` (or named ``seed``/``noise_seed``) is followed by a UI-only control
widget, a COMBO so marked by a control and a filter widget, an image-upload COMBO by an ``upload`` button; inputs
with ``forceInput`` get no widget. The page builds widgets in ``input_order`` (required, then optional), so this does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from comfy_notebook.core.errors import WorkflowError
from comfy_notebook.core.ui.values import UNDEFINED, is_js_truthy

#: Input types the page draws as a widget (the core constructors and the core extensions' custom ones).
WIDGET_TYPES = frozenset(
    {"INT", "FLOAT", "BOOLEAN", "STRING", "MARKDOWN", "COMBO", "IMAGEUPLOAD", "COLOR", "IMAGECOMPARE", "CHART"}
    | {"GALLERIA", "TEXTAREA", "WEBCAM", "AUDIO_UI", "AUDIOUPLOAD", "AUDIO_RECORD", "LOAD_3D", "PREVIEW_3D"}
)
#: Widgets whose value only the live page can produce (a camera frame, a rendered 3D scene, a recording).
PAGE_ONLY_TYPES = frozenset({"WEBCAM", "LOAD_3D", "AUDIO_UI", "AUDIOUPLOAD", "AUDIO_RECORD"})
#: Save nodes whose ``filename_prefix`` gets ``%date:...%`` and ``%Node.widget%`` replaced when queued.
SAVE_NODES = frozenset(
    {"SaveImage", "SaveVideo", "SaveAnimatedWEBP", "SaveWEBM", "SaveAudio", "SaveGLB", "SaveAnimatedPNG"}
    | {"CLIPSave", "VAESave", "ModelSave", "LoraSave", "SaveLatent"}
)
_UPLOAD_FLAGS = ("image_upload", "video_upload", "animated_image_upload")
_SEED_NAMES = ("seed", "noise_seed")


@dataclass(frozen=True)
class WidgetDef:
    """One widget of a node, as the page creates it.

    ``in_prompt``: the page sends its value (UI-only controls and buttons are not sent). ``takes_value``: it takes
    the next ``widgets_values`` entry on load. ``kind`` decides how a loaded value is read back (``"text"`` goes
    through a textarea, ``"fixed"`` ignores what is loaded)."""

    name: str
    kind: str
    default: Any
    in_prompt: bool = True
    takes_value: bool = True
    dynamic_prompts: bool = False
    upload_folder: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)  # the input's spec options (ranges, steps, rounding)


@dataclass(frozen=True)
class InputDef:
    """One input socket: its name, type, and the widget it belongs to (a widget input can also take a link)."""

    name: str
    type: str
    widget: str | None = None


@dataclass(frozen=True)
class NodeDef:
    """Everything the converter needs about one node class."""

    class_type: str
    title: str
    inputs: tuple[InputDef, ...]
    widgets: tuple[WidgetDef, ...]
    outputs: tuple[str, ...]
    #: ``(name, is_widget_or_forced, force_input, counts_two)`` in the page's record order, for the legacy
    #: ``widgets_values`` migration (values stored for ``forceInput`` inputs by frontends before 1.16).
    legacy_slots: tuple[tuple[str, bool, bool, bool], ...] = ()
    page_only: tuple[str, ...] = ()
    specs: Mapping[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)

    @property
    def is_save_node(self) -> bool:
        return self.class_type in SAVE_NODES


def _or(options: Mapping[str, Any], key: str, fallback: Any) -> Any:
    """JavaScript's ``options[key] ?? fallback``."""
    value = options.get(key)
    return fallback if value is None else value


def _spec(name: str, raw: Any, class_type: str) -> tuple[str, dict[str, Any]]:
    """``(type, options)`` of one input spec; a list type is a COMBO with those options."""
    if not isinstance(raw, list | tuple) or not raw:
        raise WorkflowError(f"the server's definition of {class_type} has a malformed input {name!r}")
    kind, options = raw[0], (dict(raw[1]) if len(raw) > 1 and isinstance(raw[1], Mapping) else {})
    if isinstance(kind, list | tuple):
        return "COMBO", {**options, "options": list(kind)}
    return (kind, options) if isinstance(kind, str) else ("UNKNOWN", options)


def page_inputs(class_type: str, definition: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``required`` and ``optional`` input specs as the page holds them: the server's, plus the inputs core
    extensions add before the node is registered (an ``upload`` button after an upload COMBO, a 3D preview)."""
    section = definition.get("input")
    raw_inputs: Mapping[str, Any] = section if isinstance(section, Mapping) else {}
    required: dict[str, Any] = dict(raw_inputs.get("required") or {})
    optional: dict[str, Any] = dict(raw_inputs.get("optional") or {})
    upload_of = next(
        (
            name
            for name, raw in required.items()
            if isinstance(raw, list | tuple)
            and len(raw) > 1
            and isinstance(raw[1], Mapping)
            and any(raw[1].get(flag) is True for flag in _UPLOAD_FLAGS)
            and (isinstance(raw[0], list | tuple) or raw[0] == "COMBO")
        ),
        None,
    )
    if upload_of is not None:
        required["upload"] = ["IMAGEUPLOAD", {**required[upload_of][1], "imageInputName": upload_of}]
    if class_type in ("Preview3D", "SaveGLB"):
        required["image"] = ["PREVIEW_3D"]
    return required, optional


def _record(class_type: str, definition: Mapping[str, Any]) -> dict[str, tuple[str, dict[str, Any], bool]]:
    """The page's input record ``name -> (type, options, optional)``: required, then optional."""
    required, optional = page_inputs(class_type, definition)
    record: dict[str, tuple[str, dict[str, Any], bool]] = {}
    for name, raw in required.items():
        kind, options = _spec(name, raw, class_type)
        record[name] = (kind, {**options, "isOptional": False}, False)
    for name, raw in optional.items():
        kind, options = _spec(name, raw, class_type)
        if options.get("defaultInput"):
            options["forceInput"] = True  # the page migrates an optional defaultInput to forceInput
        record[name] = (kind, {**options, "isOptional": True}, True)
    return record


def _ordered(definition: Mapping[str, Any], record: Mapping[str, tuple[str, dict[str, Any], bool]]) -> list[str]:
    """The page's widget order: ``input_order`` (required, then optional), then anything it did not list."""
    order = definition.get("input_order")
    if not isinstance(order, Mapping):
        return list(record)
    names: list[str] = []
    for section, optional in (("required", False), ("optional", True)):
        for name in order.get(section) or []:
            if name in record and record[name][2] is optional and name not in names:
                names.append(name)
    return [*names, *(name for name in record if name not in names)]


def node_def(class_type: str, definition: Mapping[str, Any]) -> NodeDef:
    """The page's node for ``class_type``, built from its ``/object_info`` entry."""
    record = _record(class_type, definition)
    specs = {name: (kind, options) for name, (kind, options, _optional) in record.items()}
    sockets: list[InputDef] = []
    widget_inputs: list[InputDef] = []
    widgets: list[WidgetDef] = []
    page_only: list[str] = []
    for name in _ordered(definition, record):
        kind, options = specs[name]
        if kind not in WIDGET_TYPES or options.get("forceInput"):
            sockets.append(InputDef(name, kind))
            continue
        if kind in PAGE_ONLY_TYPES:
            page_only.append(name)
        widgets.extend(widgets_for(name, kind, options, specs))
        widget_inputs.append(InputDef(name, kind, widget=name))
    widget_names = {w.name for w in widgets}
    legacy = tuple(
        (
            name,
            name in widget_names or bool(options.get("forceInput")),
            bool(options.get("forceInput")),
            is_js_truthy(options.get("control_after_generate")) or name in _SEED_NAMES,
        )
        for name, (_kind, options) in specs.items()
    )
    if class_type == "PreviewAny":  # the page adds a read-only text box that is sent, never loaded
        widgets.append(WidgetDef("preview", "text", "", takes_value=False))
    outputs = tuple("COMBO" if isinstance(o, list | tuple) else str(o) for o in definition.get("output") or [])
    title = definition.get("display_name") or definition.get("name") or class_type
    return NodeDef(
        class_type, str(title), (*sockets, *widget_inputs), tuple(widgets), outputs, legacy, tuple(page_only), specs
    )


def widgets_for(
    name: str, kind: str, options: dict[str, Any], specs: Mapping[str, tuple[str, dict[str, Any]]]
) -> list[WidgetDef]:
    """The widget(s) one input gets: the value widget, then its UI-only companions."""
    if kind == "INT":
        main = WidgetDef(name, "int", _or(options, "default", 0), options=options)
        has_control = _or(options, "control_after_generate", name in _SEED_NAMES)
        return [main, _control(options)] if is_js_truthy(has_control) else [main]
    if kind == "FLOAT":
        return [WidgetDef(name, "float", _or(options, "default", 0), options=options)]
    if kind == "BOOLEAN":
        return [WidgetDef(name, "toggle", _or(options, "default", False))]
    if kind == "STRING":
        dynamic = options.get("dynamicPrompts") is True
        text_kind = "text" if is_js_truthy(options.get("multiline")) else "string"
        return [WidgetDef(name, text_kind, _or(options, "default", ""), dynamic_prompts=dynamic, options=options)]
    if kind == "MARKDOWN":
        return [WidgetDef(name, "text", _or(options, "default", ""))]
    if kind == "COMBO":
        values = options.get("options") or []
        if is_js_truthy(options.get("default")):
            default = options["default"]
        elif values:
            default = values[0]
        else:
            default = "Loading..." if options.get("remote") else UNDEFINED
        upload = next((o for k, o in specs.values() if k == "IMAGEUPLOAD" and o.get("imageInputName") == name), None)
        folder = None if upload is None else str(upload.get("image_folder") or "input")
        widgets = [WidgetDef(name, "combo", default, upload_folder=folder, options={**options, **(upload or {})})]
        remote = options.get("remote")
        if is_js_truthy(remote):  # options fetched from the server: a refresh button, an auto-refresh toggle
            widgets.append(WidgetDef("Auto-refresh after generation", "toggle", False, in_prompt=False))
            if isinstance(remote, Mapping) and is_js_truthy(remote.get("refresh_button")):
                widgets.append(WidgetDef("refresh", "value", "refresh"))
        if is_js_truthy(options.get("control_after_generate")):
            filter_name = _companion_name("control_filter_list", options)
            widgets += [_control(options), WidgetDef(filter_name, "string", "", in_prompt=False)]
        return widgets
    if kind == "IMAGEUPLOAD":
        return [WidgetDef(name, "button", "image", in_prompt=False)]
    if kind in ("COLOR", "TEXTAREA"):
        return [WidgetDef(name, "value", options.get("default") or ("#000000" if kind == "COLOR" else ""))]
    if kind == "CHART":
        return [WidgetDef(name, "value", options.get("data") or {})]
    if kind == "IMAGECOMPARE":
        return [WidgetDef(name, "value", ["", ""])]
    if kind == "PREVIEW_3D":
        return [WidgetDef(name, "fixed", "")]  # a 3D viewer; its value is always ""
    return [WidgetDef(name, "value", UNDEFINED)]


def _companion_name(default: str, options: Mapping[str, Any]) -> str:
    """A control widget's name: the spec may name it, or give a prefix."""
    if isinstance(options.get(default), str):
        return str(options[default])
    if is_js_truthy(options.get("control_prefix")):
        return f"{options['control_prefix']} {default}"
    return default


def _control(options: Mapping[str, Any]) -> WidgetDef:
    """The UI-only ``control_after_generate`` combo (fixed / increment / decrement / randomize)."""
    return WidgetDef(_companion_name("control_after_generate", options), "control", "randomize", in_prompt=False)


def migrate_widget_values(node: NodeDef, values: list[Any]) -> list[Any]:
    """Drop values that frontends before 1.16 stored for ``forceInput`` inputs (the page does this on load when
    the value count matches the old layout exactly)."""
    slots = [slot for slot in node.legacy_slots if slot[1]]
    if sum(2 if slot[3] else 1 for slot in slots) != len(values):
        return values
    return [value for index, value in enumerate(values) if not (index < len(slots) and slots[index][2])]
