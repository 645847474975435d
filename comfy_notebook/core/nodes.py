"""What a ComfyUI server can run: its node types from ``GET /object_info``, parsed into readable descriptions
(inputs in the page's order with type, default, range and choices; outputs by slot), and filtered. Pure: no I/O.

``core/listing.py`` compares the catalogues of several servers.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from comfy_notebook.core.errors import ProtocolError

#: Input types the page draws as a widget (a value typed in the node) rather than a socket (a link).
WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
#: Folder names ComfyUI still accepts in loaders but not in ``GET /models/{folder}`` (404 there).
LEGACY_FOLDERS = {"unet": "diffusion_models", "clip": "text_encoders"}
_SHOWN_NAMES = 8  # names listed in one sentence before "... and N more"


@dataclass(frozen=True)
class InputSpec:
    """One input of a node type, as the server describes it."""

    name: str
    type: str  # "INT", "IMAGE", "COMBO", "*" (anything), "A,B" (either)
    required: bool
    widget: bool  # a value set in the node (INT, FLOAT, STRING, BOOLEAN, COMBO), not a link from another node
    default: Any = None
    min: float | None = None
    max: float | None = None
    step: float | None = None
    #: COMBO choices (model files, sampler names, ...); None when the server gives none (filled by the page).
    choices: tuple[Any, ...] | None = None
    tooltip: str = ""
    #: Every option the server sent (``multiline``, ``control_after_generate``, ``image_upload``, ...).
    options: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False, hash=False)

    def describe(self) -> str:
        """``steps: INT, required, default 20, 1..10000`` (long choice lists shortened)."""
        parts = [self.type, "required" if self.required else "optional"]
        if not self.widget:
            parts.append("link")
        if self.default is not None:
            parts.append(f"default {self.default!r}")
        if self.min is not None or self.max is not None:
            parts.append(f"{number_text(self.min)}..{number_text(self.max)}")
        if self.step is not None:
            parts.append(f"step {number_text(self.step)}")
        if self.choices is not None:
            parts.append(f"choices {shorten([str(c) for c in self.choices], 6) or '(none)'}")
        return f"{self.name}: {', '.join(parts)}"


@dataclass(frozen=True)
class OutputSpec:
    """One output of a node type: its slot number is its place in ``NodeInfo.outputs``."""

    name: str
    type: str
    is_list: bool = False
    tooltip: str = ""

    def describe(self) -> str:
        """``LATENT``, ``upscaled (IMAGE)``, ``IMAGE, a list``."""
        text = self.type if self.name == self.type else f"{self.name} ({self.type})"
        return f"{text}, a list" if self.is_list else text


@dataclass(frozen=True, repr=False)
class NodeInfo:
    """A node type as one server describes it. ``server``, ``missing_on`` and ``notes`` are filled when it comes
    from a pool: where the description was read, which servers lack the type, and what else to know."""

    name: str
    display_name: str
    category: str
    description: str
    output_node: bool
    inputs: tuple[InputSpec, ...]
    outputs: tuple[OutputSpec, ...]
    hidden: tuple[str, ...] = ()
    python_module: str = ""
    deprecated: bool = False
    experimental: bool = False
    api_node: bool = False
    server: str = ""
    missing_on: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    def input(self, name: str) -> InputSpec:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise KeyError(f"{self.name} has no input {name!r} (inputs: {', '.join(i.name for i in self.inputs)})")

    @property
    def widgets(self) -> tuple[InputSpec, ...]:
        return tuple(i for i in self.inputs if i.widget)

    @property
    def links(self) -> tuple[InputSpec, ...]:
        return tuple(i for i in self.inputs if not i.widget)

    def flags(self) -> list[str]:
        return [f for f, on in (("output node", self.output_node), ("deprecated", self.deprecated),
                                ("experimental", self.experimental), ("API node", self.api_node)) if on]  # fmt: skip

    def describe(self) -> str:
        """Several lines: name, category, description, each input and output, and the notes."""
        title = self.name if self.display_name in ("", self.name) else f"{self.name} ({self.display_name})"
        lines = [f"{title}  [{self.category or 'no category'}]" + "".join(f"  {f}" for f in self.flags())]
        if self.description:
            lines.append(f"  {self.description}")
        lines.append("  inputs:" if self.inputs else "  inputs: none")
        lines += [f"    {spec.describe()}" for spec in self.inputs]
        lines.append("  outputs:" if self.outputs else "  outputs: none")
        lines += [f"    {slot}: {output.describe()}" for slot, output in enumerate(self.outputs)]
        if self.server:
            lines.append(f"  from {self.server}")
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)

    def __repr__(self) -> str:
        where = f", server={self.server!r}" if self.server else ""
        return (
            f"NodeInfo({self.name!r}, category={self.category!r}, inputs={len(self.inputs)}, "
            f"outputs={len(self.outputs)}{where})"
        )


# -- parsing ----------------------------------------------------------------------------------------------------------
def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return value


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _list(body: Mapping[str, Any], key: str) -> list[Any]:
    value = body.get(key)
    return value if isinstance(value, list) else []


def parse_input(name: str, spec: Any, *, required: bool) -> InputSpec:
    """``["INT", {"default": 5, ...}]``, ``[["a", "b"], {...}]`` (a COMBO as a list) or ``["COMBO", {"options":
    [...]}]`` (the newer form); a malformed spec raises ``ValueError``."""
    if not isinstance(spec, list | tuple) or not spec:
        raise ValueError(f"input {name!r} is not a [type, options] list")
    kind, options = spec[0], spec[1] if len(spec) > 1 else {}
    if not isinstance(options, Mapping):
        options = {}
    choices: tuple[Any, ...] | None = None
    if isinstance(kind, list | tuple):
        kind, choices = "COMBO", tuple(kind)
    elif not isinstance(kind, str):
        raise ValueError(f"input {name!r} has a type that is neither a name nor a list of choices")
    elif kind == "COMBO" and isinstance(options.get("options"), list | tuple):
        choices = tuple(options["options"])
    return InputSpec(
        name=name,
        type=kind,
        required=required,
        widget=kind in WIDGET_TYPES and not options.get("forceInput"),
        default=options.get("default"),
        min=_number(options.get("min")),
        max=_number(options.get("max")),
        step=_number(options.get("step")),
        choices=choices,
        tooltip=_text(options.get("tooltip")),
        options=dict(options),
    )


def _ordered(section: Mapping[str, Any], order: Any) -> list[str]:
    """The section's names in ``input_order`` (the order the page shows them), then any it did not list."""
    names = [n for n in order if isinstance(n, str) and n in section] if isinstance(order, list) else []
    return names + [n for n in section if n not in names]


def parse_node(name: str, body: Any, *, server: str = "") -> NodeInfo:
    """One ``/object_info`` entry; a malformed one raises ``ValueError``."""
    if not isinstance(body, Mapping) or not isinstance(body.get("input", {}), Mapping):
        raise ValueError(f"node type {name!r} is not described by an object with an 'input' object")
    sections, order = body.get("input", {}), body.get("input_order")
    order = order if isinstance(order, Mapping) else {}
    inputs = []
    for part in ("required", "optional"):
        section = sections.get(part) or {}
        if not isinstance(section, Mapping):
            raise ValueError(f"node type {name!r}: input.{part} is not an object")
        inputs += [parse_input(n, section[n], required=part == "required") for n in _ordered(section, order.get(part))]
    hidden = sections.get("hidden") or {}
    kinds, names, lists, tips = (_list(body, k) for k in ("output", "output_name", "output_is_list", "output_tooltips"))
    outputs = []
    for i, kind in enumerate(kinds):
        type_name = "COMBO" if isinstance(kind, list) else str(kind)
        label = names[i] if i < len(names) and isinstance(names[i], str) else type_name
        tip = _text(tips[i]) if i < len(tips) else ""
        outputs.append(OutputSpec(label, type_name, bool(i < len(lists) and lists[i] is True), tip))
    return NodeInfo(
        name=name,
        display_name=_text(body.get("display_name")) or name,
        category=_text(body.get("category")),
        description=_text(body.get("description")),
        output_node=body.get("output_node") is True,
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        hidden=tuple(str(h) for h in hidden) if isinstance(hidden, Mapping) else (),
        python_module=_text(body.get("python_module")),
        deprecated=body.get("deprecated") is True,
        experimental=body.get("experimental") is True,
        api_node=body.get("api_node") is True,
        server=server,
    )


@dataclass(frozen=True)
class Catalog:
    """One server's node types. ``malformed`` names entries that could not be read (a broken custom node must
    not hide the rest)."""

    server: str
    nodes: Mapping[str, NodeInfo]
    malformed: tuple[str, ...] = ()


def parse_object_info(body: Any, *, server: str) -> Catalog:
    """A ``GET /object_info`` body; anything but an object is a ``ProtocolError`` naming the server."""
    if not isinstance(body, Mapping):
        raise ProtocolError(f"{server} sent a /object_info that is not an object", server=server)
    nodes, malformed = {}, []
    for name, entry in body.items():
        try:
            nodes[str(name)] = parse_node(str(name), entry, server=server)
        except ValueError:
            malformed.append(str(name))
    return Catalog(server, nodes, tuple(malformed))


def parse_names(body: Any, *, server: str, what: str) -> tuple[str, ...]:
    """A ``GET /models`` or ``/models/{folder}`` body: a list of names (anything else is a ``ProtocolError``)."""
    if not isinstance(body, list) or not all(isinstance(n, str) for n in body):
        raise ProtocolError(f"{server} sent a {what} that is not a list of names", server=server)
    return tuple(body)


def matches(node: NodeInfo, text: str | None) -> bool:
    """Case-insensitive substring of the type name, the display name or the category."""
    if not text:
        return True
    needle = text.casefold()
    return any(needle in value.casefold() for value in (node.name, node.display_name, node.category))


def suggest(name: str, known: Iterable[str]) -> list[str]:
    """Names close to ``name`` (a different case first), for "did you mean" hints."""
    known = list(known)
    same = [k for k in known if k.casefold() == name.casefold() and k != name]
    return same or difflib.get_close_matches(name, known, n=3, cutoff=0.6)


# -- words ------------------------------------------------------------------------------------------------------------
def join(items: Sequence[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def number_text(value: float | None) -> str:
    """``20``, ``0.01``, ``18446744073709551615`` (never ``1.8e+19`` for a seed's range); empty for None."""
    if value is None:
        return ""
    return str(value) if isinstance(value, int) else f"{value:g}"


def shorten(names: Sequence[str], limit: int = _SHOWN_NAMES) -> str:
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown} ... and {len(names) - limit} more"
