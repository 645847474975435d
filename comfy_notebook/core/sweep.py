"""Sweeps: one workflow run over every combination (or zipped pairs) of a few input values.

``plan(workflow, {"3.seed": range(4), "KSampler.cfg": [5, 7]})`` checks every key and value against the
workflow BEFORE anything is queued and lays out the points: the cartesian product by default (the first axis
varies slowest, so two axes read as rows and columns), or with ``zip=True`` the i-th value of every axis together.

A key is ``node.input``, split at the last dot that leaves a known node and input. ``node`` is a node id, else a
node's title (``_meta.title``), else a node's class type; a title or class type must name exactly one node.
``parse_over`` reads the cell syntax ``KEY=V1,V2,...`` (see its docstring for values and ranges).
"""

from __future__ import annotations

import builtins
import itertools
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from comfy_notebook.core.errors import WorkflowError
from comfy_notebook.core.uploads import Upload, UploadError, as_upload, is_uploadable
from comfy_notebook.core.workflow import Workflow, load_workflow, with_inputs

__all__ = ["MAX_POINTS", "Axis", "Point", "SweepPlan", "format_value", "parse_over", "plan", "point_label"]

#: A sweep larger than this is almost certainly a typo (``range(10**6)``); split it into several sweeps.
MAX_POINTS = 100_000


@dataclass(frozen=True)
class Axis:
    """One swept input: ``key`` as the user wrote it, the ``node_id`` and ``input`` it resolved to, its ``values``
    and ``name``, the short label used in file names and grids (the input name, or the key when two axes share
    an input name)."""

    key: str
    node_id: str
    input: str
    values: tuple[Any, ...]
    name: str = ""

    def __len__(self) -> int:
        return len(self.values)


@dataclass(frozen=True)
class Point:
    """One run of a sweep: its ``index`` in submission order, its ``params`` (user key -> value) and its
    ``coords`` (its index along each axis)."""

    index: int
    params: dict[str, Any] = field(hash=False)
    coords: tuple[int, ...]


@dataclass(frozen=True, eq=False)
class SweepPlan:
    """What a sweep will run: the checked ``axes`` and every ``point``; ``workflow_for(point)`` builds one."""

    workflow: Workflow
    axes: tuple[Axis, ...]
    points: tuple[Point, ...]
    zip: bool = False

    @property
    def shape(self) -> tuple[int, ...]:
        """Values per axis (product), or ``(n,)`` for a zipped sweep."""
        return (len(self.points),) if self.zip else tuple(len(axis) for axis in self.axes)

    def workflow_for(self, point: Point) -> Workflow:
        """A fresh API-format copy of the workflow with ``point``'s values set (``Upload`` values kept as objects,
        uploaded once the prompt has a server)."""
        values = {(axis.node_id, axis.input): axis.values[i] for axis, i in zip(self.axes, point.coords, strict=True)}
        return load_workflow(with_inputs(self.workflow, values))

    def label(self, point: Point) -> str:
        """``seed=3, cfg=7``: the point's values by their axes' short names."""
        return point_label({axis.name: axis.values[i] for axis, i in zip(self.axes, point.coords, strict=True)})


def plan(
    workflow: Workflow,
    over: Mapping[str, Iterable[Any]] | Iterable[tuple[str, Iterable[Any]]],
    *,
    zip: bool = False,  # the name users expect (``zip=True`` for paired lists); ``builtins.zip`` below
) -> SweepPlan:
    """Check ``over`` (key -> values) against the API-format ``workflow`` and lay out the points.

    Raises ``WorkflowError`` for an unknown or ambiguous node (listing the nodes), an unknown input (listing the
    node's inputs), a link input, a duplicate, an empty axis, values JSON cannot carry, or unequal zipped lengths.
    """
    pairs = list(over.items()) if isinstance(over, Mapping) else list(over)
    if not pairs:
        raise WorkflowError("a sweep needs at least one input to vary, e.g. {'3.seed': range(4)}")
    seen: dict[tuple[str, str], str] = {}
    axes: list[Axis] = []
    for key, raw in pairs:
        node_id, name = resolve(workflow, key)
        if (node_id, name) in seen:
            raise WorkflowError(
                f"sweep keys {seen[(node_id, name)]!r} and {key!r} both set input {name!r} of node {node_id}"
            )
        seen[(node_id, name)] = key
        axes.append(Axis(key, node_id, name, _values(key, raw)))
    axes = _named(axes)
    if zip:
        lengths = {axis.key: len(axis) for axis in axes}
        if len(set(lengths.values())) > 1:
            listed = ", ".join(f"{key}: {n}" for key, n in lengths.items())
            raise WorkflowError(f"zip=True pairs the i-th values of every axis, so they need equal lengths ({listed})")
        coords: Iterable[tuple[int, ...]] = ((i,) * len(axes) for i in range(len(axes[0])))
        total = len(axes[0])
    else:
        total = 1
        for axis in axes:
            total *= len(axis)
        coords = itertools.product(*(range(len(axis)) for axis in axes))
    if total > MAX_POINTS:
        raise WorkflowError(f"this sweep has {total} points, more than {MAX_POINTS}: split it into smaller sweeps")
    points = tuple(
        Point(index, {axis.key: axis.values[i] for axis, i in builtins.zip(axes, c, strict=True)}, tuple(c))
        for index, c in enumerate(coords)
    )
    return SweepPlan(workflow, tuple(axes), points, zip)


def resolve(workflow: Workflow, key: str) -> tuple[str, str]:
    """``(node_id, input)`` for a key ``node.input``; the error lists what exists.

    The key splits at its last dot unless that names no input of that node and an earlier dot does: titles may hold
    dots (``"Sampler v1.5.seed"``), and so may input names (``"3.resize.width"``)."""
    if not isinstance(key, str) or "." not in key.strip(". "):
        raise WorkflowError(f"sweep key {key!r} must be 'node.input', e.g. '3.seed' or 'KSampler.seed'")
    missing: tuple[str, str] | None = None  # the last-dot split whose node exists, for the error
    unknown: WorkflowError | None = None
    for dot in reversed([i for i, char in enumerate(key) if char == "."]):
        where, name = key[:dot].strip(), key[dot + 1 :].strip()
        if not where or not name:
            continue
        try:
            node_id = _node(workflow, key, where)
        except WorkflowError as exc:
            unknown = unknown or exc
            continue
        if name in workflow[node_id].get("inputs", {}):
            return _settable(workflow, key, node_id, name)
        missing = missing or (node_id, name)
    if missing is None:
        assert unknown is not None
        raise unknown
    node_id, name = missing
    node = workflow[node_id]
    have = ", ".join(sorted(node.get("inputs", {}))) or "none"
    raise WorkflowError(
        f"sweep key {key!r}: node {node_id} ({node['class_type']}) has no input {name!r}; its inputs: {have}"
    )


def _settable(workflow: Workflow, key: str, node_id: str, name: str) -> tuple[str, str]:
    value = workflow[node_id]["inputs"][name]
    if _is_link(value):
        raise WorkflowError(
            f"sweep key {key!r}: input {name!r} of node {node_id} is a link from node {value[0]} (output "
            f"{value[1]}), not a value: sweep an input of node {value[0]} instead"
        )
    return node_id, name


def _node(workflow: Workflow, key: str, where: str) -> str:
    if where in workflow:
        return where
    for field_name, of in (("title", _title), ("class type", _class)):
        matches = [node_id for node_id, node in workflow.items() if of(node) == where]
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise WorkflowError(
                f"sweep key {key!r}: {len(matches)} nodes have the {field_name} {where!r} (use a node id): "
                + _listing(workflow, matches)
            )
    raise WorkflowError(
        f"sweep key {key!r}: no node has the id, title or class type {where!r}; the nodes: " + _listing(workflow)
    )


def _title(node: dict[str, Any]) -> Any:
    meta = node.get("_meta")
    return meta.get("title") if isinstance(meta, dict) else None


def _class(node: dict[str, Any]) -> Any:
    return node.get("class_type")


def _listing(workflow: Workflow, ids: Iterable[str] | None = None, limit: int = 60) -> str:
    """``3 (KSampler), 6 (CLIPTextEncode 'Positive')``: ids, class types and titles that differ from them."""
    described = []
    for node_id in list(workflow if ids is None else ids)[:limit]:
        node = workflow[node_id]
        title = _title(node)
        titled = f" {title!r}" if isinstance(title, str) and title and title != node["class_type"] else ""
        described.append(f"{node_id} ({node['class_type']}{titled})")
    more = len(list(workflow if ids is None else ids)) - len(described)
    return ", ".join(described) + (f" and {more} more" if more > 0 else "")


def _is_link(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
    )


def _values(key: str, raw: Any) -> tuple[Any, ...]:
    """An axis's values, each one JSON or an ``Upload`` (local images, arrays, bytes and paths become uploads)."""
    # Iterable, but one value: a string, a dict, an image (a 1-D array is a list of numbers, np.linspace & co)
    single = isinstance(raw, str | bytes | Mapping) or (is_uploadable(raw) and getattr(raw, "ndim", 0) != 1)
    try:
        items = None if single else list(itertools.islice(raw, MAX_POINTS + 1))  # never a range(10**9) in memory
    except TypeError:
        items = None
    if items is None:
        raise WorkflowError(
            f"sweep key {key!r}: the values must be a list (or range) of values, not one {type(raw).__name__} "
            f"(write [value] for a single value)"
        )
    if not items:
        raise WorkflowError(f"sweep key {key!r} has no values")
    if len(items) > MAX_POINTS:
        raise WorkflowError(f"sweep key {key!r} has more than {MAX_POINTS} values: split it into smaller sweeps")
    return tuple(_value(key, item) for item in items)


def _value(key: str, value: Any) -> Any:
    if type(value).__module__ == "numpy" and getattr(value, "ndim", None) == 0:
        value = value.item()  # a numpy scalar from np.linspace & co: its plain Python value
    if is_uploadable(value):
        try:
            return as_upload(value)
        except UploadError as exc:
            raise WorkflowError(f"sweep key {key!r}: {exc}") from None
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError):
        raise WorkflowError(
            f"sweep key {key!r}: {value!r} is a {type(value).__name__}, which cannot be sent to ComfyUI (use "
            "numbers, strings, booleans, lists or dicts; or images, arrays, bytes or paths to upload)"
        ) from None


def _named(axes: list[Axis]) -> list[Axis]:
    """Short names: the input name unless two axes share it (then the keys as written)."""
    counts: dict[str, int] = {}
    for axis in axes:
        counts[axis.input] = counts.get(axis.input, 0) + 1
    return [Axis(a.key, a.node_id, a.input, a.values, a.input if counts[a.input] == 1 else a.key) for a in axes]


def format_value(value: Any) -> str:
    """A value as a label shows it: strings bare, uploads by file name, everything else as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, Upload):
        return value.filename
    return json.dumps(value, separators=(",", ":"))


def point_label(params: Mapping[str, Any], sep: str = ", ") -> str:
    """``seed=3, cfg=7`` from ``{"seed": 3, "cfg": 7}``."""
    return sep.join(f"{name}={format_value(value)}" for name, value in params.items())


# -- the cell syntax --------------------------------------------------------------------------------------------------
_RANGE = re.compile(r"range\(\s*(-?\d+)\s*(?:,\s*(-?\d+)\s*)?(?:,\s*(-?\d+)\s*)?\)\Z")
_SPAN = re.compile(r"(-?\d+)\.\.(-?\d+)\Z")
_CLOSE = {"(": ")", "[": "]", "{": "}"}


def parse_over(text: str) -> tuple[str, list[Any]]:
    """``KEY=V1,V2,...`` -> ``(KEY, [values])``, the cell syntax of one axis.

    Values are separated by commas. Each one is read as JSON where it parses (``7``, ``7.5``, ``true``,
    ``null``, ``"a, quoted string"``, ``[512, 768]``), else taken as a plain string with surrounding spaces removed
    (``euler``, ``a red fox``). Integer ranges: ``range(8)``, ``range(1, 9)``, ``range(0, 100, 25)`` as in
    Python, and ``1..8`` with both ends included; they mix with other values (``0,range(10,13)``).
    """
    key, sep, rest = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise WorkflowError(f"a sweep axis reads KEY=V1,V2,... (e.g. 3.seed=1,2,3), not {text!r}")
    values: list[Any] = []
    for item in _split(rest, text):
        values.extend(_item(item, text))
    if not values:
        raise WorkflowError(f"sweep axis {text!r} has no values: write {key}=V1,V2,...")
    return key, values


def _split(text: str, whole: str) -> list[str]:
    """Split at top-level commas (not inside quotes, brackets or parentheses)."""
    items, depth, start, quote, escaped = [], [], 0, False, False
    for i, char in enumerate(text):
        if quote:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                quote = False
            continue
        if char == '"':
            quote = True
        elif char in _CLOSE:
            depth.append(_CLOSE[char])
        elif depth and char == depth[-1]:
            depth.pop()
        elif char == "," and not depth:
            items.append(text[start:i])
            start = i + 1
    if quote or depth:
        raise WorkflowError(f"sweep axis {whole!r}: an unclosed quote or bracket")
    items.append(text[start:])
    stripped = [item.strip() for item in items]
    if len(stripped) > 1 and "" in stripped:
        raise WorkflowError(f"sweep axis {whole!r} has an empty value (two commas in a row, or one at the end)")
    return [item for item in stripped if item]


def _item(item: str, whole: str) -> list[Any]:
    match = _RANGE.match(item)
    if match:
        args = [int(g) for g in match.groups() if g is not None]
        if len(args) == 3 and args[2] == 0:
            raise WorkflowError(f"sweep axis {whole!r}: {item} has a step of 0")
        return _bounded(range(*args), item, whole)
    match = _SPAN.match(item)
    if match:
        first, last = int(match.group(1)), int(match.group(2))
        return _bounded(range(first, last + 1) if first <= last else range(first, last - 1, -1), item, whole)
    try:
        return [json.loads(item)]
    except ValueError:
        if item.startswith('"'):
            raise WorkflowError(f"sweep axis {whole!r}: {item} is not a valid quoted string") from None
        return [item]


def _bounded(values: range, item: str, whole: str) -> list[int]:
    if len(values) > MAX_POINTS:
        raise WorkflowError(f"sweep axis {whole!r}: {item} has {len(values)} values, more than {MAX_POINTS}")
    return list(values)
