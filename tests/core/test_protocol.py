"""The wire protocol without sockets: request bodies, frame parsing, /prompt, /history and /queue answers."""

from __future__ import annotations

import json
import struct
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from comfy_notebook.core import protocol as wire
from comfy_notebook.core.errors import ExecutionError, ProtocolError, ServerUnavailable, ValidationError

SERVER = "http://127.0.0.1:8188"
PID = "5b7c6a2e-3f1d-4c8e-9a0b-1d2e3f4a5b6c"
SID = "0f3c2d9e8b7a46c5a4b3c2d1e0f9a8b7"

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(32))
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(32)) + b"\xff\xd9"

WORKFLOW = {
    "3": {"class_type": "KSampler", "inputs": {"steps": 0, "cfg": 200.0}},
    "10": {"class_type": "LoadImage", "inputs": {"image": "missing.png"}},
    "12": {"class_type": "SaveImage", "inputs": {"filename_prefix": "x"}},
}


def text(kind: str, data: Any) -> str:
    return json.dumps({"type": kind, "data": data})


# -- /prompt body --------------------------------------------------------------------------------------------------
def test_new_id_is_a_lowercase_uuid4() -> None:
    ids = {wire.new_id() for _ in range(500)}
    assert len(ids) == 500
    for value in ids:
        parsed = uuid.UUID(value)
        assert parsed.version == 4
        assert str(parsed) == value  # canonical 8-4-4-4-12 form
        assert value == value.lower()


def test_prompt_body_carries_the_graph_and_ids_and_never_a_number() -> None:
    client_id, prompt_id = wire.new_id(), wire.new_id()
    body = wire.prompt_body(WORKFLOW, client_id=client_id, prompt_id=prompt_id)
    assert body == {"prompt": WORKFLOW, "client_id": client_id, "prompt_id": prompt_id}
    assert "number" not in body
    assert json.loads(json.dumps(body)) == body


def test_prompt_body_with_extra_data() -> None:
    extra = {"extra_pnginfo": {"workflow": {"nodes": []}}}
    body = wire.prompt_body(WORKFLOW, client_id="c", prompt_id=PID, extra_data=extra)
    assert body["extra_data"] == extra
    assert body["extra_data"] is not extra  # a copy: later edits of the caller's dict do not leak in
    assert "number" not in body
    assert "extra_data" not in wire.prompt_body(WORKFLOW, client_id="c", prompt_id=PID, extra_data={})


# -- text frames ---------------------------------------------------------------------------------------------------
def test_status_on_connect_carries_the_sid() -> None:
    raw = text("status", {"status": {"exec_info": {"queue_remaining": 2}}, "sid": SID})
    assert wire.parse_text(raw) == wire.Status(queue_remaining=2, sid=SID)


def test_status_broadcast_without_sid() -> None:
    assert wire.parse_text(text("status", {"status": {"exec_info": {"queue_remaining": 0}}})) == wire.Status(0, None)


def test_parse_text_accepts_bytes() -> None:
    raw = text("status", {"status": {"exec_info": {"queue_remaining": 7}}}).encode()
    assert wire.parse_text(raw) == wire.Status(7)


def test_execution_start() -> None:
    event = wire.parse_text(text("execution_start", {"prompt_id": PID, "timestamp": 1732741200123}))
    assert event == wire.ExecutionStart(PID)


def test_execution_cached() -> None:
    event = wire.parse_text(text("execution_cached", {"nodes": ["4", "7"], "prompt_id": PID, "timestamp": 1}))
    assert event == wire.ExecutionCached(PID, ("4", "7"))
    empty = wire.parse_text(text("execution_cached", {"nodes": [], "prompt_id": PID, "timestamp": 1}))
    assert empty == wire.ExecutionCached(PID, ())


def test_executing_a_node() -> None:
    event = wire.parse_text(text("executing", {"node": "3", "display_node": "3", "prompt_id": PID}))
    assert event == wire.Executing(PID, "3")
    assert isinstance(event, wire.Executing)
    assert not event.done


def test_executing_null_node_is_done() -> None:
    event = wire.parse_text(text("executing", {"node": None, "display_node": None, "prompt_id": PID}))
    assert event == wire.Executing(PID, None)
    assert isinstance(event, wire.Executing)
    assert event.done


def test_bare_executing_after_reconnect_has_no_prompt_id_and_is_not_done() -> None:
    bare = wire.parse_text(text("executing", {"node": "5"}))
    assert bare == wire.Executing(None, "5")
    null = wire.parse_text(text("executing", {"node": None}))
    assert isinstance(null, wire.Executing)
    assert not null.done  # a finished marker must name the prompt


def test_progress() -> None:
    event = wire.parse_text(text("progress", {"value": 3, "max": 20, "prompt_id": PID, "node": "3"}))
    assert event == wire.Progress(PID, "3", 3, 20)


def test_progress_with_float_values_and_no_prompt_id() -> None:
    event = wire.parse_text(text("progress", {"value": 3.0, "max": 20.0, "node": "3"}))
    assert event == wire.Progress(None, "3", 3, 20)


def test_progress_state_is_not_needed_and_ignored() -> None:
    data = {"prompt_id": PID, "nodes": {"3": {"value": 1, "max": 20, "state": "running", "node_id": "3"}}}
    assert wire.parse_text(text("progress_state", data)) is None


def test_executed() -> None:
    output = {"images": [{"filename": "ComfyUI_00001_.png", "subfolder": "", "type": "output"}]}
    raw = text("executed", {"node": "9", "display_node": "9", "output": output, "prompt_id": PID})
    assert wire.parse_text(raw) == wire.Executed(PID, "9", output)


def test_executed_with_null_output() -> None:
    assert wire.parse_text(text("executed", {"node": "9", "output": None, "prompt_id": PID})) == wire.Executed(
        PID, "9", {}
    )


def test_execution_success() -> None:
    raw = text("execution_success", {"prompt_id": PID, "timestamp": 1732741200999})
    assert wire.parse_text(raw) == wire.ExecutionSuccess(PID)


def test_execution_error() -> None:
    data = {
        "prompt_id": PID,
        "node_id": "4",
        "node_type": "KSampler",
        "executed": ["1", "2"],
        "exception_message": "Expected all tensors to be on the same device",
        "exception_type": "RuntimeError",
        "traceback": ['  File "execution.py", line 1, in f\n', "    raise\n"],
        "current_inputs": {"steps": [20]},
        "current_outputs": {},
        "timestamp": 1732741201000,
    }
    assert wire.parse_text(text("execution_error", data)) == wire.ExecutionFailed(
        prompt_id=PID,
        node_id="4",
        node_type="KSampler",
        exception_type="RuntimeError",
        exception_message="Expected all tensors to be on the same device",
        traceback=('  File "execution.py", line 1, in f\n', "    raise\n"),
    )


def test_execution_error_with_missing_details_gets_defaults() -> None:
    event = wire.parse_text(text("execution_error", {"prompt_id": PID}))
    assert event == wire.ExecutionFailed(PID, None, None, "Exception", "", ())


def test_execution_interrupted() -> None:
    data = {"prompt_id": PID, "node_id": "5", "node_type": "SlowSteps", "executed": ["1"], "timestamp": 1}
    assert wire.parse_text(text("execution_interrupted", data)) == wire.ExecutionInterrupted(PID, "5")


@pytest.mark.parametrize(
    "raw",
    [
        text("feature_flags", {"supports_preview_metadata": True, "max_upload_size": 104857600}),
        text("crystools.monitor", {"cpu_utilization": 12.5}),
        text("some_future_event", {"prompt_id": PID}),
        json.dumps({"type": "progress_text", "data": None}),
    ],
)
def test_unknown_message_types_are_ignored(raw: str) -> None:
    assert wire.parse_text(raw) is None


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "not json",
        '{"type": "status", "data": ',
        "null",
        "[]",
        '"status"',
        "42",
        b"\xff\xfe\x00garbage",
        '{"data": {"prompt_id": "x"}}',
        '{"type": ["status"], "data": {}}',
        '{"type": "status"}',
        '{"type": "status", "data": []}',
        '{"type": "execution_start", "data": "x"}',
        "[" * 100_000 + "]" * 100_000,  # nesting deeper than the recursion limit
        '{"type": "status", "data": ' + "[" * 50_000 + "]" * 50_000 + "}",
    ],
)
def test_malformed_text_frames_are_ignored(raw: str | bytes) -> None:
    assert wire.parse_text(raw) is None


@pytest.mark.parametrize(
    ("kind", "data"),
    [
        ("status", {"status": {"exec_info": {"queue_remaining": "3"}}}),
        ("status", {"status": {"exec_info": {"queue_remaining": True}}}),
        ("status", {"status": {"exec_info": {"queue_remaining": None}}}),
        ("status", {"status": {"exec_info": []}}),
        ("status", {"status": "idle"}),
        ("execution_start", {"prompt_id": 42}),
        ("execution_start", {"prompt_id": None}),
        ("execution_cached", {"nodes": ["1"]}),
        ("execution_cached", {"nodes": "12", "prompt_id": PID}),
        ("execution_cached", {"nodes": 3, "prompt_id": PID}),
        ("progress", {"value": "3", "max": 20, "prompt_id": PID, "node": "3"}),
        ("progress", {"value": 3, "max": [20], "prompt_id": PID, "node": "3"}),
        ("progress", {"value": 3, "prompt_id": PID, "node": "3"}),
        ("progress", {"value": False, "max": 20, "prompt_id": PID}),
        ("executed", {"node": "9", "output": [1, 2], "prompt_id": PID}),
        ("executed", {"node": "9", "output": {}, "prompt_id": ["x"]}),
        ("executed", {"output": {}, "prompt_id": PID}),
        ("execution_success", {"prompt_id": {"id": PID}}),
        ("execution_error", {"node_id": "4", "exception_message": "boom"}),
        ("execution_interrupted", {"prompt_id": None, "node_id": "5"}),
    ],
)
def test_wrong_field_types_are_ignored(kind: str, data: Any) -> None:
    assert wire.parse_text(text(kind, data)) is None


@pytest.mark.parametrize("number", ["Infinity", "-Infinity", "NaN", "1e400"])
def test_non_finite_numbers_are_ignored(number: str) -> None:
    raw = '{"type": "progress", "data": {"value": NUMBER, "max": 20, "prompt_id": "x"}}'.replace("NUMBER", number)
    assert wire.parse_text(raw) is None
    raw = '{"type": "status", "data": {"status": {"exec_info": {"queue_remaining": NUMBER}}}}'.replace("NUMBER", number)
    assert wire.parse_text(raw) is None


# -- binary frames -------------------------------------------------------------------------------------------------
def preview_frame(image_type: int, data: bytes) -> bytes:
    return struct.pack(">II", 1, image_type) + data


def metadata_frame(meta: Any, data: bytes, *, length: int | None = None) -> bytes:
    blob = meta if isinstance(meta, bytes) else json.dumps(meta).encode()
    return struct.pack(">II", 4, len(blob) if length is None else length) + blob + data


def test_binary_preview_jpeg() -> None:
    event = wire.parse_binary(preview_frame(1, JPEG))
    assert event == wire.Preview("image/jpeg", JPEG)
    assert isinstance(event, wire.Preview)
    assert event.prompt_id is None and event.node_id is None


def test_binary_preview_png() -> None:
    assert wire.parse_binary(preview_frame(2, PNG)) == wire.Preview("image/png", PNG)


def test_binary_preview_unknown_image_type_keeps_the_bytes() -> None:
    assert wire.parse_binary(preview_frame(9, b"abc")) == wire.Preview("application/octet-stream", b"abc")


def test_binary_preview_with_metadata() -> None:
    meta = {
        "node_id": "12",
        "display_node_id": "12",
        "parent_node_id": None,
        "real_node_id": "12",
        "prompt_id": PID,
        "image_type": "image/png",
    }
    assert wire.parse_binary(metadata_frame(meta, PNG)) == wire.Preview("image/png", PNG, PID, "12")


def test_binary_preview_with_metadata_jpeg_and_defaults() -> None:
    jpeg = {"prompt_id": PID, "node_id": 7, "image_type": "image/jpeg"}
    assert wire.parse_binary(metadata_frame(jpeg, JPEG)) == wire.Preview("image/jpeg", JPEG, PID, "7")
    bare = wire.parse_binary(metadata_frame({}, PNG))
    assert bare == wire.Preview("image/png", PNG, None, None)


def test_binary_preview_repr_hides_the_image_bytes() -> None:
    event = wire.parse_binary(preview_frame(2, PNG))
    assert "PNG" not in repr(event)


@pytest.mark.parametrize(
    "frame",
    [
        struct.pack(">I", 3) + struct.pack(">I", 2) + b"12" + b"Loading model 50%",  # text to every socket
        struct.pack(">II", 2, 1) + b"\x00" * 16,  # unencoded preview: never sent encoded like this
        struct.pack(">II", 99, 1) + PNG,  # unknown event
        struct.pack(">II", 0, 0),
    ],
)
def test_other_binary_events_are_ignored(frame: bytes) -> None:
    assert wire.parse_binary(frame) is None


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"\x00",
        b"\x00\x00\x00\x01",  # event 1 without an image type
        b"\x00\x00\x00\x01\x00\x00\x00",
        b"\x00\x00\x00\x04\x00\x00",
        metadata_frame(b'{"prompt_id": "x"}', b"", length=500),  # metadata longer than the frame
        metadata_frame({"prompt_id": PID}, b"", length=0xFFFFFFFF),
        metadata_frame(b'{"prompt_id": ', PNG),  # metadata cut short
        metadata_frame(b"\xff\xfe\xfd", PNG),  # not UTF-8
        metadata_frame([PID, "12"], PNG),  # JSON, but not an object
        metadata_frame(b"[" * 60_000 + b"]" * 60_000, PNG),  # nesting deeper than the recursion limit
    ],
)
def test_truncated_or_malformed_binary_frames_are_ignored(frame: bytes) -> None:
    assert wire.parse_binary(frame) is None


# -- fuzz: parsers never raise -------------------------------------------------------------------------------------
KNOWN_TYPES = [
    "status",
    "execution_start",
    "execution_cached",
    "executing",
    "progress",
    "progress_state",
    "executed",
    "execution_success",
    "execution_error",
    "execution_interrupted",
]
FIELDS = [
    "prompt_id",
    "node",
    "node_id",
    "node_type",
    "nodes",
    "value",
    "max",
    "output",
    "status",
    "sid",
    "exception_type",
    "exception_message",
    "traceback",
    "image_type",
]

# values a careless or hostile server could put where a number, id or list belongs
EDGE_VALUES = [float("inf"), float("-inf"), float("nan"), 10**400, -1, 0, True, False, None, "", "3", [], {}]
json_values = st.recursive(
    st.sampled_from(EDGE_VALUES) | st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
status_like = st.fixed_dictionaries(
    {"status": st.fixed_dictionaries({"exec_info": st.fixed_dictionaries({"queue_remaining": json_values})})}
)
data_values = st.dictionaries(st.sampled_from(FIELDS), json_values, min_size=1, max_size=8) | status_like | json_values
messages = st.fixed_dictionaries(
    {"type": st.sampled_from(KNOWN_TYPES) | json_values, "data": data_values}
) | st.dictionaries(st.sampled_from(["type", "data"]), json_values)


def assert_event_or_none(result: object) -> None:
    assert result is None or isinstance(result, wire.Event)


FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.text())
def test_fuzz_parse_text_arbitrary_text(raw: str) -> None:
    assert_event_or_none(wire.parse_text(raw))


@FUZZ
@given(st.binary())
def test_fuzz_parse_text_and_parse_binary_arbitrary_bytes(raw: bytes) -> None:
    assert_event_or_none(wire.parse_text(raw))
    assert_event_or_none(wire.parse_binary(raw))


@FUZZ
@given(messages)
def test_fuzz_parse_text_structured_but_wrong_json(message: Any) -> None:
    assert_event_or_none(wire.parse_text(json.dumps(message)))


# the fields each message type carries (from the protocol table), each present or not, with any value
TYPE_FIELDS = {
    "status": ["status", "sid"],
    "execution_start": ["prompt_id", "timestamp"],
    "execution_cached": ["nodes", "prompt_id", "timestamp"],
    "executing": ["node", "display_node", "prompt_id"],
    "progress": ["value", "max", "prompt_id", "node"],
    "progress_state": ["prompt_id", "nodes"],
    "executed": ["node", "display_node", "output", "prompt_id"],
    "execution_success": ["prompt_id", "timestamp"],
    "execution_error": ["prompt_id", "node_id", "node_type", "exception_message", "exception_type", "traceback"],
    "execution_interrupted": ["prompt_id", "node_id", "node_type", "executed", "timestamp"],
}
edge_or_any = st.sampled_from(EDGE_VALUES) | json_values
typed_messages = st.sampled_from(sorted(TYPE_FIELDS)).flatmap(
    lambda kind: st.fixed_dictionaries(
        {
            "type": st.just(kind),
            "data": st.fixed_dictionaries({}, optional={name: edge_or_any for name in TYPE_FIELDS[kind]}) | status_like,
        }
    )
)


@FUZZ
@given(typed_messages)
def test_fuzz_parse_text_each_type_with_wrong_field_values(message: Any) -> None:
    assert_event_or_none(wire.parse_text(json.dumps(message)))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    event=st.sampled_from([1, 2, 3, 4]) | st.integers(0, 2**32 - 1),
    second=st.integers(0, 2**32 - 1) | st.integers(0, 64),
    meta=json_values | st.dictionaries(st.sampled_from(FIELDS), json_values),
    raw_meta=st.booleans(),
    tail=st.binary(max_size=64),
)
def test_fuzz_parse_binary_structured_frames(event: int, second: int, meta: Any, raw_meta: bool, tail: bytes) -> None:
    blob = json.dumps(meta).encode()
    length = second if raw_meta else len(blob)
    frame = struct.pack(">II", event, length) + blob + tail
    result = wire.parse_binary(frame)
    assert_event_or_none(result)
    if event in (1, 4) and result is not None:
        assert isinstance(result, wire.Preview)


# -- POST /prompt answers ------------------------------------------------------------------------------------------
def respond(status: int, body: Any) -> wire.Queued:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return wire.parse_prompt_response(status, raw, server=SERVER, prompt_id=PID, workflow=WORKFLOW)


def input_error(kind: str, message: str, details: str, name: str) -> dict[str, Any]:
    return {
        "type": kind,
        "message": message,
        "details": details,
        "extra_info": {"input_name": name, "input_config": ["INT", {"min": 1}], "received_value": 0},
    }


NODE_ERRORS = {
    "10": {
        "errors": [
            input_error("value_not_in_list", "Value not in list", "image: 'missing.png' not in ['a.png']", "image")
        ],
        "dependent_outputs": ["12"],
        "class_type": "LoadImage",
    },
    "3": {
        "errors": [
            input_error("value_smaller_than_min", "Value 0 smaller than min of 1", "steps", "steps"),
            input_error("value_bigger_than_max", "Value 200.0 bigger than max of 100.0", "cfg", "cfg"),
        ],
        "dependent_outputs": ["12"],
        "class_type": "KSampler",
    },
}


def test_prompt_accepted() -> None:
    queued = respond(200, {"prompt_id": PID, "number": 3, "node_errors": {}})
    assert queued == wire.Queued(PID, 3)


def test_prompt_accepted_without_a_usable_number() -> None:
    assert respond(200, {"prompt_id": PID, "number": "3", "node_errors": {}}) == wire.Queued(PID, None)
    assert respond(200, {"prompt_id": PID}) == wire.Queued(PID, None)


def test_400_with_node_errors_lists_every_node_class_and_input() -> None:
    body = {
        "error": {
            "type": "prompt_outputs_failed_validation",
            "message": "Prompt outputs failed validation",
            "details": "",
            "extra_info": {},
        },
        "node_errors": NODE_ERRORS,
    }
    with pytest.raises(ValidationError) as info:
        respond(400, body)
    exc = info.value
    assert exc.server == SERVER
    assert exc.prompt_id == PID
    assert exc.partially_queued is False
    assert [n.node_id for n in exc.nodes] == ["3", "10"]  # numeric order, not "10" < "3"
    assert [n.class_type for n in exc.nodes] == ["KSampler", "LoadImage"]
    assert [e.input_name for e in exc.nodes[0].errors] == ["steps", "cfg"]
    assert exc.nodes[0].errors[0].type == "value_smaller_than_min"
    lines = str(exc).splitlines()
    assert lines[0] == f"{SERVER} refused the workflow: Prompt outputs failed validation"
    assert lines[1].startswith("  node 3 (KSampler) input 'steps': Value 0 smaller than min of 1")
    assert lines[2].startswith("  node 3 (KSampler) input 'cfg': Value 200.0 bigger than max of 100.0")
    assert lines[3].startswith("  node 10 (LoadImage) input 'image': Value not in list")
    assert "'missing.png' not in ['a.png']" in lines[3]  # details that add information are shown
    assert len(lines) == 4


def test_node_error_class_type_falls_back_to_the_workflow() -> None:
    body = {"error": {"message": "Prompt outputs failed validation"}, "node_errors": {"10": {"errors": []}, "99": {}}}
    with pytest.raises(ValidationError) as info:
        respond(400, body)
    assert [(n.node_id, n.class_type) for n in info.value.nodes] == [("10", "LoadImage"), ("99", "?")]
    assert "node 10 (LoadImage): invalid" in str(info.value)
    assert "node 99 (?): invalid" in str(info.value)


def test_200_with_node_errors_is_a_partially_queued_validation_error() -> None:
    body = {"prompt_id": PID, "number": 4, "node_errors": {"3": NODE_ERRORS["3"]}}
    with pytest.raises(ValidationError) as info:
        respond(200, body)
    exc = info.value
    assert exc.partially_queued is True
    assert "dropped invalid outputs and queued the rest" in str(exc)
    assert "node 3 (KSampler) input 'steps'" in str(exc)
    assert exc.server == SERVER


def test_400_prompt_no_outputs_without_node_errors() -> None:
    body = {
        "error": {"type": "prompt_no_outputs", "message": "Prompt has no outputs", "details": "", "extra_info": {}},
        "node_errors": {},
    }
    with pytest.raises(ValidationError) as info:
        respond(400, body)
    assert str(info.value) == f"{SERVER} refused the workflow: Prompt has no outputs"
    assert info.value.nodes == ()
    assert info.value.partially_queued is False


def test_400_invalid_prompt_shows_its_details() -> None:
    body = {
        "error": {
            "type": "invalid_prompt",
            "message": "Cannot execute because a node is missing the class_type property.",
            "details": "Node ID '#5'",
            "extra_info": {},
        },
        "node_errors": [],
    }
    with pytest.raises(ValidationError) as info:
        respond(400, body)
    assert "missing the class_type property" in str(info.value)
    assert "(Node ID '#5')" in str(info.value)


def test_400_with_hostile_node_errors_is_still_a_validation_error() -> None:
    body = {
        "error": {"message": "bad"},
        "node_errors": {"1": {"errors": 5}, "2": "x", "3": {"errors": ["not a dict", {"extra_info": "x"}]}},
    }
    with pytest.raises(ValidationError) as info:
        respond(400, body)
    assert [n.node_id for n in info.value.nodes] == ["1", "2", "3"]
    assert len(info.value.nodes[2].errors) == 1


def test_long_server_messages_are_shortened() -> None:
    body = {"error": {"message": "x " * 5000}, "node_errors": {}}
    with pytest.raises(ValidationError) as info:
        respond(400, body)
    assert len(str(info.value)) < 400
    assert str(info.value).endswith("...")


@pytest.mark.parametrize("status", [500, 502])
def test_server_error_plain_text_is_server_unavailable_naming_the_server(status: int) -> None:
    body = b"500 Internal Server Error\n\nServer got itself in trouble"
    with pytest.raises(ServerUnavailable) as info:
        respond(status, body)
    exc = info.value
    assert not isinstance(exc, ValidationError)
    assert exc.server == SERVER
    assert exc.prompt_id == PID
    assert SERVER in str(exc)
    assert f"HTTP {status}" in str(exc)
    assert "Server got itself in trouble" in str(exc)
    assert "\n" not in str(exc)


def test_500_with_json_is_still_server_unavailable() -> None:
    with pytest.raises(ServerUnavailable):
        respond(500, {"error": {"message": "oops"}, "node_errors": {}})


@pytest.mark.parametrize("status", [401, 403, 404, 502])
def test_a_proxys_json_error_is_server_unavailable_not_a_validation_error(status: int) -> None:
    with pytest.raises(ServerUnavailable) as info:
        respond(status, {"error": {"message": "unauthorized"}, "node_errors": {}})
    assert not isinstance(info.value, ValidationError)
    assert f"HTTP {status}" in str(info.value)


def test_413_plain_text_is_server_unavailable() -> None:
    with pytest.raises(ServerUnavailable) as info:
        respond(413, b"Request Entity Too Large")
    assert "HTTP 413" in str(info.value)


@pytest.mark.parametrize("body", [b"<html>ok</html>", b"", b"[1, 2]", b'"queued"'])
def test_200_without_a_json_object_is_a_protocol_error(body: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        respond(200, body)
    assert info.value.server == SERVER
    assert SERVER in str(info.value)


# -- GET /history answers ------------------------------------------------------------------------------------------
def history(status_str: str | None, messages: list[Any], outputs: dict[str, Any] | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "prompt": [3, PID, WORKFLOW, {"client_id": SID}, ["12"]],
        "outputs": outputs or {},
        "meta": {},
    }
    if status_str is not None:
        entry["status"] = {"status_str": status_str, "completed": status_str == "success", "messages": messages}
    return {PID: entry}


START = ["execution_start", {"prompt_id": PID, "timestamp": 1732741200000}]
CACHED = ["execution_cached", {"nodes": [], "prompt_id": PID, "timestamp": 1732741200001}]
OUTPUTS = {
    "12": {
        "images": [
            {"filename": "ComfyUI_00001_.png", "subfolder": "", "type": "output"},
            {"filename": "ComfyUI_00002_.png", "subfolder": "batch", "type": "output"},
        ]
    }
}
ERROR_DATA = {
    "prompt_id": PID,
    "node_id": "3",
    "node_type": "KSampler",
    "executed": ["10"],
    "exception_message": "CUDA out of memory",
    "exception_type": "torch.OutOfMemoryError",
    "traceback": ['  File "nodes.py", line 1\n'],
    "current_inputs": {},
    "current_outputs": {},
    "timestamp": 1732741200002,
}


def test_history_success() -> None:
    success = ["execution_success", {"prompt_id": PID, "timestamp": 1732741200003}]
    entry = wire.parse_history(history("success", [START, CACHED, success], OUTPUTS), PID, server=SERVER)
    assert entry is not None
    assert entry.prompt_id == PID
    assert entry.status == "success"
    assert entry.outputs == OUTPUTS
    assert [kind for kind, _ in entry.messages] == ["execution_start", "execution_cached", "execution_success"]
    assert entry.messages[0][1]["prompt_id"] == PID
    assert entry.error(SERVER) is None
    assert entry.images() == [
        wire.ImageRef("ComfyUI_00001_.png", "", "output", "12"),
        wire.ImageRef("ComfyUI_00002_.png", "batch", "output", "12"),
    ]


def test_history_error_builds_an_execution_error() -> None:
    entry = wire.parse_history(history("error", [START, ["execution_error", ERROR_DATA]]), PID, server=SERVER)
    assert entry is not None
    assert entry.status == "error"
    error = entry.error(SERVER)
    assert isinstance(error, ExecutionError)
    assert str(error) == f"node 3 (KSampler) raised torch.OutOfMemoryError on {SERVER}: CUDA out of memory"
    assert error.server == SERVER
    assert error.prompt_id == PID
    assert error.node_id == "3"
    assert error.node_type == "KSampler"
    assert error.exception_type == "torch.OutOfMemoryError"
    assert error.exception_message == "CUDA out of memory"
    assert error.traceback == ('  File "nodes.py", line 1\n',)


def test_history_interrupted() -> None:
    interrupted = [
        "execution_interrupted",
        {"prompt_id": PID, "node_id": "5", "node_type": "SlowSteps", "executed": ["1"], "timestamp": 1},
    ]
    entry = wire.parse_history(history("error", [START, interrupted]), PID, server=SERVER)
    assert entry is not None
    assert entry.status == "interrupted"
    assert entry.error(SERVER) is None


def test_history_without_status_but_with_outputs_is_success() -> None:
    entry = wire.parse_history(history(None, [], OUTPUTS), PID, server=SERVER)
    assert entry is not None
    assert entry.status == "success"


def test_history_skips_malformed_messages() -> None:
    messages = [START, ["x"], [1, {}], "execution_error", ["execution_error", "boom"], ("a", {}, "extra")]
    entry = wire.parse_history(history("error", messages), PID, server=SERVER)
    assert entry is not None
    assert entry.messages == (("execution_start", START[1]),)
    assert entry.error(SERVER) is None


@pytest.mark.parametrize("body", [{}, {"another-prompt-id": {"outputs": {}}}])
def test_history_without_the_entry_is_none(body: dict[str, Any]) -> None:
    assert wire.parse_history(body, PID, server=SERVER) is None


@pytest.mark.parametrize("body", [None, [], "{}", 3, {PID: "done"}, {PID: [1, 2]}])
def test_malformed_history_is_a_protocol_error(body: Any) -> None:
    with pytest.raises(ProtocolError) as info:
        wire.parse_history(body, PID, server=SERVER)
    assert info.value.server == SERVER
    assert info.value.prompt_id == PID
    assert SERVER in str(info.value) and PID in str(info.value)


def test_execution_error_without_node_id() -> None:
    error = wire.execution_error({"exception_type": "ValueError"}, server=SERVER, prompt_id=PID)
    assert str(error) == f"a node raised ValueError on {SERVER}: "
    assert error.node_id is None
    error = wire.execution_error({"node_id": 4}, server=SERVER, prompt_id=PID)
    assert str(error).startswith("node 4 (?) raised Exception on ")
    assert error.node_id == "4"


def test_image_refs_skips_malformed_entries() -> None:
    outputs = {
        "9": {
            "images": [
                {"filename": "ok.png", "subfolder": "", "type": "output"},
                {"filename": 5, "subfolder": "", "type": "output"},
                {"subfolder": "", "type": "output"},
                {"filename": "bad-subfolder.png", "subfolder": 5, "type": "output"},
                {"filename": "bad-type.png", "subfolder": "", "type": ["output"]},
                {"filename": "defaults.png"},
                {"filename": "preview.png", "subfolder": None, "type": "temp"},
                "ok.png",
                None,
            ]
        },
        "10": {"images": "ok.png"},
        "11": ["images"],
        "12": {"text": ["hello"]},
        "13": {"images": [{"filename": "second.png", "subfolder": "s", "type": "output"}]},
    }
    assert wire.image_refs(outputs) == [
        wire.ImageRef("ok.png", "", "output", "9"),
        wire.ImageRef("defaults.png", "", "output", "9"),
        wire.ImageRef("preview.png", "", "temp", "9"),
        wire.ImageRef("second.png", "s", "output", "13"),
    ]


# -- GET /queue answers --------------------------------------------------------------------------------------------
def item(number: int, prompt_id: str) -> list[Any]:
    return [number, prompt_id, {"1": {"class_type": "X", "inputs": {}}}, {"client_id": SID}, ["1"]]


QUEUE = {
    "queue_running": [item(4, "running-id")],
    "queue_pending": [item(7, "c"), item(5, "a"), item(6, "b")],  # the server does not sort them
}


def test_queue_contains() -> None:
    assert wire.queue_contains(QUEUE, "running-id")
    assert wire.queue_contains(QUEUE, "b")
    assert not wire.queue_contains(QUEUE, "gone")
    assert not wire.queue_contains({}, "a")
    assert not wire.queue_contains([], "a")
    assert not wire.queue_contains({"queue_running": ["a", ["a"], None], "queue_pending": None}, "a")


def test_queue_position_sorts_pending_by_number() -> None:
    assert wire.queue_position(QUEUE, "running-id") == 0
    assert wire.queue_position(QUEUE, "a") == 1
    assert wire.queue_position(QUEUE, "b") == 2
    assert wire.queue_position(QUEUE, "c") == 3
    assert wire.queue_position(QUEUE, "gone") is None


def test_queue_position_with_nothing_running() -> None:
    queue = {"queue_running": [], "queue_pending": [item(2, "y"), item(1, "x")]}
    assert wire.queue_position(queue, "x") == 0
    assert wire.queue_position(queue, "y") == 1


def test_queue_position_tolerates_malformed_bodies() -> None:
    assert wire.queue_position(None, "a") is None
    assert wire.queue_position({"queue_running": "x", "queue_pending": [["n", "a"], "junk", [1]]}, "a") == 0
