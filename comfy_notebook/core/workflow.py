"""Workflows: API-format graphs from a dict, JSON text or a file; UI-format files refused helpfully;
notebook variables substituted by name lookup (never evaluation).

Substitution syntax: a JSON *string value* that is exactly ``"$name"`` is replaced by the variable ``name``
(any JSON value: ``"seed": "$seed"`` becomes ``"seed": 42``). A ``$`` anywhere else is left alone, so prompts
like ``"a $5 bill"`` are safe; ``"$$name"`` is the escape for a literal ``"$name"``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from comfy_notebook.core.errors import WorkflowError
from comfy_notebook.core.uploads import Upload, UploadError, as_upload, is_uploadable

Workflow = dict[str, Any]

_VARIABLE = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)\Z")  # with re.match; \Z, not $, which allows a final "\n"
_ESCAPED = re.compile(r"\$(\$+[A-Za-z_][A-Za-z0-9_]*)\Z")  # "$$name" -> "$name", "$$$name" -> "$$name"

UI_FORMAT_HELP = (
    "this is a UI-format workflow (it has 'nodes' and 'links'), and converting it to the API format needs a "
    "server's node definitions: pass it to cn.run / cn.submit / %%comfy, which convert it, or convert it with "
    "cn.to_api(workflow) (or export it from ComfyUI with Workflow > Export (API))."
)

#: Turns a UI-format workflow (what the ComfyUI page saves) into the API format; the engine supplies one that
#: knows the target server's node definitions.
Converter = Callable[[dict[str, Any]], Any]


def load_workflow(source: Workflow | str | Path, *, convert: Converter | None = None) -> Workflow:
    """An API-format workflow from a dict, JSON text or a path; a deep copy, validated. A UI-format workflow is
    converted with ``convert`` (without one it is an error that says how to run it)."""
    if isinstance(source, Path):
        return _from_file(source, convert)
    if isinstance(source, str):
        text = source.strip()
        if text and text[0] not in "{[" and len(text) < 4096 and "\n" not in text:
            path = Path(text).expanduser()
            try:
                is_file = path.suffix.lower() == ".json" or path.is_file()
            except (OSError, ValueError):  # e.g. a name too long to be a path: treat it as JSON text
                is_file = False
            if is_file:
                return _from_file(path, convert)
        return parse_workflow(source, convert=convert)
    if isinstance(source, Mapping):
        return validate(_copy(source), convert)
    raise WorkflowError(f"a workflow must be a dict, JSON text or a path, not {type(source).__name__}")


def _copy(source: Mapping[str, Any]) -> Workflow:
    """A deep copy through JSON: what the server will receive, checked now (a value JSON cannot carry is an
    error here, not at the POST), and several times faster than ``copy.deepcopy`` (a bulk submit copies each).
    ``Upload`` inputs are carried over as they are (the engine uploads them once the prompt has a server)."""
    uploads: list[Upload] = []

    def keep(value: Any) -> Any:
        if isinstance(value, Upload):
            uploads.append(value)
            return {_UPLOAD_SLOT: len(uploads) - 1}
        hint = " (wrap local inputs in comfy_notebook.Upload(...))" if is_uploadable(value) else ""
        raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable{hint}")

    try:
        copied: Workflow = json.loads(json.dumps(dict(source), default=keep))
    except (TypeError, ValueError) as exc:
        raise WorkflowError(f"the workflow holds a value that cannot be sent as JSON: {exc}") from None
    if uploads:
        placed = 0
        for node in copied.values():
            inputs = node.get("inputs") if isinstance(node, dict) else None
            if not isinstance(inputs, dict):
                continue
            for name, value in inputs.items():
                if isinstance(value, dict) and set(value) == {_UPLOAD_SLOT}:
                    inputs[name] = uploads[value[_UPLOAD_SLOT]]
                    placed += 1
        if placed != len(uploads):
            raise WorkflowError("an Upload must be the value of a node input (where a file name goes), not nested")
    return copied


_UPLOAD_SLOT = "__comfy_notebook_upload__"


def uploads_of(workflow: Workflow) -> dict[tuple[str, str], Upload]:
    """The inputs of a workflow that are local objects to upload, by ``(node_id, input_name)``."""
    found = {}
    for node_id, node in workflow.items():
        for name, value in node["inputs"].items():
            if isinstance(value, Upload):
                found[(node_id, name)] = value
    return found


def with_inputs(workflow: Workflow, values: Mapping[tuple[str, str], Any]) -> Workflow:
    """A copy of ``workflow`` (shallow where nothing changes) with the given inputs replaced."""
    graph = dict(workflow)
    for (node_id, name), value in values.items():
        node = graph[node_id]
        graph[node_id] = {**node, "inputs": {**node["inputs"], name: value}}
    return graph


def _from_file(path: Path, convert: Converter | None = None) -> Workflow:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise WorkflowError(f"cannot read workflow file {str(path)!r}: {exc.strerror or exc}") from None
    return parse_workflow(text, origin=str(path), convert=convert)


def parse_workflow(text: str, *, origin: str = "workflow", convert: Converter | None = None) -> Workflow:
    """Parse JSON text; a syntax error names the line and column."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        # json counts lines by "\n" only (splitlines() would also split on "\r", "\f", "\u2028", ...)
        lines = exc.doc.split("\n")
        line = lines[exc.lineno - 1] if exc.lineno <= len(lines) else ""
        pointer = f"\n    {line.strip()[:120]}" if line.strip() else ""
        reason = exc.msg.removesuffix(" at")  # "Invalid control character at" would read "... at at line 1"
        raise WorkflowError(
            f"{origin} is not valid JSON: {reason} at line {exc.lineno}, column {exc.colno}{pointer}",
            line=exc.lineno,
            column=exc.colno,
        ) from None
    return validate(data, convert)


def is_ui_format(data: Any) -> bool:
    """UI-format (front-end) workflows have top-level ``nodes`` and ``links`` lists."""
    return isinstance(data, dict) and isinstance(data.get("nodes"), list) and "links" in data


def validate(data: Any, convert: Converter | None = None) -> Workflow:
    """Check the API-format shape ``{node_id: {"class_type": str, "inputs": {...}}}`` (after converting a
    UI-format workflow with ``convert``)."""
    if is_ui_format(data):
        if convert is None:
            raise WorkflowError(UI_FORMAT_HELP)
        data = convert(data)
    body_graph = data.get("prompt") if isinstance(data, dict) else None
    if isinstance(body_graph, dict) and "class_type" not in data and "class_type" not in body_graph:
        data = data["prompt"]  # a saved /prompt request body: its graph is what we need
    if not isinstance(data, dict) or not data:
        raise WorkflowError('a workflow must be a non-empty JSON object of nodes: {"1": {"class_type": ...}}')
    graph: Workflow = {}
    for node_id, node in data.items():
        if not isinstance(node, dict) or not isinstance(node.get("class_type"), str):
            raise WorkflowError(f"node {node_id!r} has no 'class_type': this does not look like an API-format workflow")
        inputs = node.get("inputs", {})
        if not isinstance(inputs, dict):
            raise WorkflowError(f"node {node_id!r} ({node['class_type']}): 'inputs' must be an object")
        graph[str(node_id)] = {**node, "inputs": inputs}
    return graph


def variables(workflow: Workflow) -> set[str]:
    """The names a workflow refers to with ``"$name"``."""
    found: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, str):
            match = _VARIABLE.match(value)
            if match:
                found.add(match.group(1))
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(workflow)
    return found


def substitute(workflow: Workflow, namespace: Mapping[str, Any]) -> Workflow:
    """Replace every ``"$name"`` string value by ``namespace[name]`` (a lookup, never ``eval``)."""
    missing = sorted(name for name in variables(workflow) if name not in namespace)
    if missing:
        names = ", ".join(f"${name}" for name in missing)
        raise WorkflowError(f"the workflow refers to {names}, but no such variable is defined")

    def replace(value: Any) -> Any:
        if isinstance(value, str):
            match = _VARIABLE.match(value)
            if match:
                return _json_value(match.group(1), namespace[match.group(1)])
            escaped = _ESCAPED.match(value)
            return escaped.group(1) if escaped else value
        if isinstance(value, dict):
            return {key: replace(item) for key, item in value.items()}
        if isinstance(value, list):
            return [replace(item) for item in value]
        return value

    result: Workflow = replace(workflow)
    return result


def _json_value(name: str, value: Any) -> Any:
    """Only JSON-representable values may enter a workflow, and local inputs (a PIL image, an array, bytes, a
    ``Path``), which become uploads; anything else is a clear error."""
    if is_uploadable(value):
        try:
            return as_upload(value)
        except UploadError as exc:
            raise WorkflowError(f"${name}: {exc}") from None
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError):
        raise WorkflowError(
            f"${name} is a {type(value).__name__}, which cannot be sent to ComfyUI (use a number, string, "
            "bool, list or dict; or a PIL image, numpy array, bytes or Path to upload)"
        ) from None


#: Inputs that name a model file a server must load (checkpoints, diffusion models, LoRAs, VAEs, text encoders,
#: control nets, upscalers, ...): the pool prefers a server that loaded the same files last.
_MODEL_INPUT_SUFFIX = "_name"
_NOT_MODELS = frozenset({"sampler_name", "scheduler_name", "filename_prefix", "image_name", "audio_name"})


def model_files(workflow: Workflow) -> frozenset[str]:
    """The model files a workflow loads, as ``input=value`` pairs (``ckpt_name=sd15.safetensors``)."""
    found = set()
    for node in workflow.values():
        inputs = node.get("inputs") if isinstance(node, dict) else None
        if not isinstance(inputs, dict):
            continue
        for name, value in inputs.items():
            if name.endswith(_MODEL_INPUT_SUFFIX) and name not in _NOT_MODELS and isinstance(value, str) and value:
                found.add(f"{name}={value}")
    return frozenset(found)
