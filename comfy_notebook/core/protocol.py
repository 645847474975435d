"""ComfyUI's wire protocol without sockets (the sans-I/O idea of ``h11`` and ``websockets``).

Building the ``/prompt`` body, turning WebSocket frames into typed events, and turning ``/prompt`` and
``/history`` answers into results or readable errors. Parsers never raise on server data they do not know:
unknown message types and malformed frames become ``None`` (the engine logs and ignores them), because one odd
frame must never take down a socket that carries other prompts' events.
"""

from __future__ import annotations

import json
import struct
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from comfy_notebook.core.errors import (
    ExecutionError,
    InputError,
    NodeError,
    ProtocolError,
    ServerUnavailable,
    ValidationError,
    describe,
)
from comfy_notebook.core.outputs import FileRef, file_refs, image_refs, text_outputs

Workflow = dict[str, Any]


def new_id() -> str:
    """A lowercase uuid4: the form ComfyUI mints itself, used for both prompt ids and client ids."""
    return str(uuid.uuid4())


def prompt_body(
    workflow: Workflow, *, client_id: str, prompt_id: str, extra_data: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The ``POST /prompt`` body. ``number`` is never sent (an equal number + id pair gives a 500 after queueing)."""
    body: dict[str, Any] = {"prompt": workflow, "client_id": client_id, "prompt_id": prompt_id}
    if extra_data:
        body["extra_data"] = dict(extra_data)
    return body


# -- events ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Status:
    """Broadcast on every queue change: a free load signal."""

    queue_remaining: int
    sid: str | None = None


@dataclass(frozen=True)
class ExecutionStart:
    prompt_id: str


@dataclass(frozen=True)
class ExecutionCached:
    prompt_id: str
    nodes: tuple[str, ...]


@dataclass(frozen=True)
class Executing:
    """``node`` None with our ``prompt_id`` is the real "done" marker (history is written by then)."""

    prompt_id: str | None
    node: str | None

    @property
    def done(self) -> bool:
        return self.node is None and self.prompt_id is not None


@dataclass(frozen=True)
class Progress:
    prompt_id: str | None
    node: str | None
    value: int
    max: int


@dataclass(frozen=True)
class Executed:
    prompt_id: str
    node: str
    output: dict[str, Any]


@dataclass(frozen=True)
class ExecutionSuccess:
    prompt_id: str


@dataclass(frozen=True)
class ExecutionFailed:
    """``execution_error``: a node raised."""

    prompt_id: str
    node_id: str | None
    node_type: str | None
    exception_type: str
    exception_message: str
    traceback: tuple[str, ...] = ()


@dataclass(frozen=True)
class ExecutionInterrupted:
    prompt_id: str
    node_id: str | None = None


@dataclass(frozen=True)
class Preview:
    """A preview image (binary event 1 has no prompt id; event 4 carries one)."""

    mime_type: str
    data: bytes = field(repr=False)
    prompt_id: str | None = None
    node_id: str | None = None


Event = (
    Status
    | ExecutionStart
    | ExecutionCached
    | Executing
    | Progress
    | Executed
    | ExecutionSuccess
    | ExecutionFailed
    | ExecutionInterrupted
    | Preview
)

_IMAGE_TYPES = {1: "image/jpeg", 2: "image/png"}


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError("not a number")
    return int(value)


def parse_text(raw: str | bytes) -> Event | None:
    """One WebSocket text message -> event, or None for unknown types and malformed data."""
    try:
        message = json.loads(raw)
        kind, data = message["type"], message.get("data") or {}
        if not isinstance(data, dict):
            return None
        return _TEXT_PARSERS[kind](data) if kind in _TEXT_PARSERS else None
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError, RecursionError):
        # OverflowError: ``Infinity`` where an int belongs; RecursionError: absurdly nested JSON.
        return None


def _status(d: dict[str, Any]) -> Status:
    return Status(_int(d["status"]["exec_info"]["queue_remaining"]), _str(d.get("sid")))


def _list(value: Any) -> list[Any]:
    """A JSON list, or empty when absent; any other type is malformed (a string is not a list of node ids)."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise TypeError("not a list")
    return value


def _required_id(d: dict[str, Any], key: str = "prompt_id") -> str:
    value = d.get(key)
    if not isinstance(value, str):
        raise TypeError(f"{key} missing")
    return value


def _executing(d: dict[str, Any]) -> Executing:
    node = d.get("node")
    return Executing(_str(d.get("prompt_id")), None if node is None else str(node))


def _progress(d: dict[str, Any]) -> Progress:
    node = d.get("node")
    return Progress(_str(d.get("prompt_id")), None if node is None else str(node), _int(d["value"]), _int(d["max"]))


def _executed(d: dict[str, Any]) -> Executed:
    output = d.get("output") or {}
    if not isinstance(output, dict):
        raise TypeError("output")
    return Executed(_required_id(d), str(d["node"]), output)


def _failed(d: dict[str, Any]) -> ExecutionFailed:
    trace = d.get("traceback") or ()
    return ExecutionFailed(
        prompt_id=_required_id(d),
        node_id=None if d.get("node_id") is None else str(d["node_id"]),
        node_type=_str(d.get("node_type")),
        exception_type=str(d.get("exception_type") or "Exception"),
        exception_message=str(d.get("exception_message") or ""),
        traceback=tuple(str(line) for line in trace) if isinstance(trace, list) else (),
    )


_TEXT_PARSERS: dict[str, Any] = {
    "status": _status,
    "execution_start": lambda d: ExecutionStart(_required_id(d)),
    "execution_cached": lambda d: ExecutionCached(_required_id(d), tuple(str(n) for n in _list(d.get("nodes")))),
    "executing": _executing,
    "progress": _progress,
    "executed": _executed,
    "execution_success": lambda d: ExecutionSuccess(_required_id(d)),
    "execution_error": _failed,
    "execution_interrupted": lambda d: ExecutionInterrupted(
        _required_id(d), None if d.get("node_id") is None else str(d["node_id"])
    ),
}


def parse_binary(raw: bytes) -> Event | None:
    """One binary frame -> Preview, or None (text-to-all frames, unknown types, truncated frames)."""
    if len(raw) < 8:
        return None
    (event,) = struct.unpack(">I", raw[:4])
    if event == 1:
        (image_type,) = struct.unpack(">I", raw[4:8])
        return Preview(_IMAGE_TYPES.get(image_type, "application/octet-stream"), raw[8:])
    if event == 4:
        (length,) = struct.unpack(">I", raw[4:8])
        if length > len(raw) - 8:
            return None
        try:
            meta = json.loads(raw[8 : 8 + length])
        except (ValueError, RecursionError):
            return None
        if not isinstance(meta, dict):
            return None
        mime = meta.get("image_type")
        return Preview(
            mime if isinstance(mime, str) else "image/png",
            raw[8 + length :],
            _str(meta.get("prompt_id")),
            None if meta.get("node_id") is None else str(meta.get("node_id")),
        )
    return None


# -- /prompt answers ------------------------------------------------------------------------------------------------
def node_errors(raw: Any, workflow: Mapping[str, Any] | None = None) -> tuple[NodeError, ...]:
    """``node_errors`` as ComfyUI sends it -> one ``NodeError`` per node, tolerant of missing fields."""
    if not isinstance(raw, dict):
        return ()
    nodes = []
    for node_id, raw_entry in raw.items():
        entry = raw_entry if isinstance(raw_entry, dict) else {}
        class_type = entry.get("class_type")
        if not isinstance(class_type, str):
            node = (workflow or {}).get(str(node_id))
            class_type = node.get("class_type", "?") if isinstance(node, dict) else "?"
        errors = []
        raw_errors = entry.get("errors")
        for err in raw_errors if isinstance(raw_errors, list) else ():
            if not isinstance(err, dict):
                continue
            extra = err.get("extra_info") if isinstance(err.get("extra_info"), dict) else {}
            input_name = extra.get("input_name") if isinstance(extra, dict) else None
            errors.append(
                InputError(
                    type=str(err.get("type", "error")),
                    message=describe(err.get("message", "")),
                    details=describe(err.get("details", "")),
                    input_name=input_name if isinstance(input_name, str) else None,
                )
            )
        nodes.append(NodeError(str(node_id), str(class_type), tuple(errors)))
    return tuple(sorted(nodes, key=lambda n: (len(n.node_id), n.node_id)))


def format_node_errors(nodes: tuple[NodeError, ...]) -> str:
    """One line per failing input: ``node 3 (KSampler) input 'steps': Value smaller than min: ...``."""
    lines = []
    for node in nodes:
        if not node.errors:
            lines.append(f"  node {node.node_id} ({node.class_type}): invalid")
        for err in node.errors:
            where = f" input {err.input_name!r}" if err.input_name else ""
            detail = f": {err.details}" if err.details and err.details not in err.message else ""
            lines.append(f"  node {node.node_id} ({node.class_type}){where}: {err.message}{detail}")
    return "\n".join(lines)


@dataclass(frozen=True)
class Queued:
    """A successful ``POST /prompt``."""

    prompt_id: str
    number: int | None


def parse_prompt_response(
    status: int, body: bytes, *, server: str, prompt_id: str, workflow: Mapping[str, Any] | None = None
) -> Queued:
    """Interpret ``POST /prompt``: a 200 with empty ``node_errors`` is the only success."""
    try:
        data = json.loads(body) if body else None
    except ValueError:
        data = None
    # Only ComfyUI's own 200 and 400 carry its JSON; anything else (a proxy's 401/403/502, a 500) is the server's
    # or the proxy's failure, never a workflow problem.
    if status not in (200, 400) or (status == 400 and not isinstance(data, dict)):
        text = body.decode("utf-8", "replace") if data is None else json.dumps(data)
        raise ServerUnavailable(
            f"{server} answered POST /prompt with HTTP {status}: {describe(text)}",
            server=server,
            prompt_id=prompt_id,
        )
    if not isinstance(data, dict):
        raise ProtocolError(f"{server} answered POST /prompt with a non-JSON body", server=server, prompt_id=prompt_id)
    nodes = node_errors(data.get("node_errors"), workflow)
    if status == 200 and not nodes:
        number = data.get("number")
        return Queued(prompt_id, number if isinstance(number, int) else None)
    raw_error = data.get("error")
    error: dict[str, Any] = raw_error if isinstance(raw_error, dict) else {}
    headline = describe(error.get("message") or "the workflow failed validation") if error else ""
    if status == 200:
        headline = "the server dropped invalid outputs and queued the rest"
    message = f"{server} refused the workflow: {headline}".rstrip(": ")
    if error.get("details") and not nodes:
        message += f" ({describe(error['details'])})"
    if nodes:
        message += "\n" + format_node_errors(nodes)
    raise ValidationError(message, nodes, server=server, prompt_id=prompt_id, partially_queued=status == 200)


# -- /history answers -----------------------------------------------------------------------------------------------
#: The name of ``core.outputs.FileRef`` from when only images were understood.
ImageRef = FileRef


@dataclass(frozen=True)
class HistoryEntry:
    prompt_id: str
    status: str  # "success" | "error" | "interrupted"
    outputs: dict[str, Any]
    messages: tuple[tuple[str, dict[str, Any]], ...]

    def images(self) -> list[FileRef]:
        return image_refs(self.outputs)

    def files(self) -> list[FileRef]:
        """Every output file of every node (see ``core.outputs``)."""
        return file_refs(self.outputs)

    def texts(self) -> dict[str, list[str]]:
        return text_outputs(self.outputs)

    def error(self, server: str) -> ExecutionError | None:
        """The ``execution_error`` recorded in the entry's messages, as an exception."""
        for kind, data in self.messages:
            if kind == "execution_error":
                return execution_error(data, server=server, prompt_id=self.prompt_id)
        return None


def parse_history(body: Any, prompt_id: str, *, server: str) -> HistoryEntry | None:
    """``GET /history/{id}`` -> entry, or None when the server has none (unknown, queued, running or evicted)."""
    if not isinstance(body, dict):
        raise ProtocolError(f"{server} sent a malformed history for {prompt_id}", server=server, prompt_id=prompt_id)
    entry = body.get(prompt_id)
    if entry is None:
        return None
    if not isinstance(entry, dict):
        raise ProtocolError(f"{server} sent a malformed history for {prompt_id}", server=server, prompt_id=prompt_id)
    raw_outputs, raw_status = entry.get("outputs"), entry.get("status")
    outputs: dict[str, Any] = raw_outputs if isinstance(raw_outputs, dict) else {}
    status: dict[str, Any] = raw_status if isinstance(raw_status, dict) else {}
    messages: list[tuple[str, dict[str, Any]]] = []
    for item in status.get("messages") or ():
        if isinstance(item, list | tuple) and len(item) == 2 and isinstance(item[0], str) and isinstance(item[1], dict):
            messages.append((item[0], item[1]))
    kinds = {kind for kind, _ in messages}
    if status.get("status_str") == "success" or (not status and outputs):
        state = "success"
    elif "execution_interrupted" in kinds:
        state = "interrupted"
    else:
        state = "error"
    return HistoryEntry(prompt_id, state, outputs, tuple(messages))


def queue_contains(body: Any, prompt_id: str) -> bool:
    """Whether ``GET /queue`` lists ``prompt_id`` as running or pending."""
    if not isinstance(body, dict):
        return False
    for key in ("queue_running", "queue_pending"):
        for item in body.get(key) or ():
            if isinstance(item, list) and len(item) > 1 and item[1] == prompt_id:
                return True
    return False


def queue_position(body: Any, prompt_id: str) -> int | None:
    """0 when running, n when n prompts run or wait ahead of it, None when absent."""
    if not isinstance(body, dict):
        return None
    running = [i for i in body.get("queue_running") or () if isinstance(i, list) and len(i) > 1]
    if any(item[1] == prompt_id for item in running):
        return 0
    pending = [i for i in body.get("queue_pending") or () if isinstance(i, list) and len(i) > 1]
    pending.sort(key=lambda item: item[0] if isinstance(item[0], int | float) else 0)
    for index, item in enumerate(pending):
        if item[1] == prompt_id:
            return len(running) + index
    return None


def execution_error(data: Mapping[str, Any], *, server: str, prompt_id: str) -> ExecutionError:
    node_id = data.get("node_id")
    node_type = _str(data.get("node_type"))
    exc_type = str(data.get("exception_type") or "Exception")
    exc_message = describe(data.get("exception_message") or "", limit=1000)
    trace = data.get("traceback")
    where = f"node {node_id} ({node_type or '?'})" if node_id is not None else "a node"
    return ExecutionError(
        f"{where} raised {exc_type} on {server}: {exc_message}",
        server=server,
        prompt_id=prompt_id,
        node_id=None if node_id is None else str(node_id),
        node_type=node_type,
        exception_type=exc_type,
        exception_message=exc_message,
        traceback=tuple(str(line) for line in trace) if isinstance(trace, list) else (),
    )
