"""Workflows: loading API-format JSON, refusing UI format helpfully, and substituting variables by lookup only."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from comfy_notebook.core.errors import WorkflowError
from comfy_notebook.core.workflow import (
    is_ui_format,
    load_workflow,
    model_files,
    parse_workflow,
    substitute,
    validate,
    variables,
)

GRAPH = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "nb"}},
}

UI_FORMAT = {
    "last_node_id": 3,
    "last_link_id": 2,
    "nodes": [
        {"id": 1, "type": "EmptyImage", "pos": [0, 0], "widgets_values": [64, 64, 1, 0], "outputs": []},
        {"id": 2, "type": "ImageInvert", "pos": [300, 0], "inputs": [{"name": "image", "link": 1}]},
    ],
    "links": [[1, 1, 0, 2, 0, "IMAGE"]],
    "groups": [],
    "config": {},
    "extra": {},
    "version": 0.4,
}


def node(inputs: dict[str, Any]) -> dict[str, Any]:
    return {"1": {"class_type": "KSampler", "inputs": inputs}}


# -- loading -------------------------------------------------------------------------------------------------------
def test_load_from_dict_is_a_validated_deep_copy() -> None:
    source = copy.deepcopy(GRAPH)
    loaded = load_workflow(source)
    assert loaded == GRAPH
    loaded["2"]["inputs"]["image"][0] = "changed"
    loaded["1"]["inputs"]["width"] = 1
    assert source == GRAPH  # the caller's dict is never modified


def test_load_from_dict_normalises_ids_and_missing_inputs() -> None:
    loaded = load_workflow({1: {"class_type": "EmptyImage"}, "2": {"class_type": "X", "inputs": {}, "_meta": {}}})
    assert loaded == {
        "1": {"class_type": "EmptyImage", "inputs": {}},
        "2": {"class_type": "X", "inputs": {}, "_meta": {}},
    }


def test_load_from_json_text() -> None:
    assert load_workflow(json.dumps(GRAPH)) == GRAPH
    assert load_workflow("\n\n   " + json.dumps(GRAPH, indent=2) + "\n") == GRAPH


def test_load_from_a_path_object(tmp_path: Path) -> None:
    file = tmp_path / "workflow_api.json"
    file.write_text(json.dumps(GRAPH), encoding="utf-8")
    assert load_workflow(file) == GRAPH


def test_load_from_a_path_string(tmp_path: Path) -> None:
    file = tmp_path / "workflow_api.json"
    file.write_text(json.dumps(GRAPH), encoding="utf-8")
    assert load_workflow(str(file)) == GRAPH
    assert load_workflow(f"  {file}  ") == GRAPH


def test_load_from_a_path_string_without_json_suffix(tmp_path: Path) -> None:
    file = tmp_path / "graph.txt"
    file.write_text(json.dumps(GRAPH), encoding="utf-8")
    assert load_workflow(str(file)) == GRAPH


def test_missing_json_file_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(WorkflowError) as info:
        load_workflow(str(missing))
    assert "cannot read workflow file" in str(info.value)
    assert str(missing) in str(info.value)
    with pytest.raises(WorkflowError):
        load_workflow(missing)


@pytest.mark.parametrize("source", ["hello", "x" * 300, "/" + "a" * 5000, "'single quoted'"])
def test_text_that_is_neither_json_nor_a_file_is_a_workflow_error(source: str) -> None:
    # "x" * 300 is too long for a file name: the path check used to leak an OSError (ENAMETOOLONG)
    with pytest.raises(WorkflowError) as info:
        load_workflow(source)
    assert "not valid JSON" in str(info.value)


@pytest.mark.parametrize("source", [42, None, ["1"], b"{}"])
def test_unsupported_source_types(source: Any) -> None:
    with pytest.raises(WorkflowError) as info:
        load_workflow(source)
    assert "a workflow must be a dict, JSON text or a path" in str(info.value)


# -- malformed JSON ------------------------------------------------------------------------------------------------
def test_malformed_json_names_line_and_column() -> None:
    text = '{\n  "1": {\n    "class_type": "KSampler",\n    "inputs": {"seed": 1,}\n  }\n}'
    with pytest.raises(WorkflowError) as info:
        parse_workflow(text)
    exc = info.value
    assert (exc.line, exc.column) == (4, 26)  # the "}" right after the trailing comma
    assert "at line 4, column 26" in str(exc)
    assert str(exc).splitlines()[-1].strip() == '"inputs": {"seed": 1,}'  # the offending line is quoted


def test_missing_comma_is_reported_on_the_next_line() -> None:
    text = '{\n  "1": {\n    "class_type": "KSampler"\n    "inputs": {}\n  }\n}'
    with pytest.raises(WorkflowError) as info:
        parse_workflow(text)
    assert (info.value.line, info.value.column) == (4, 5)
    assert "Expecting ',' delimiter" in str(info.value)


def test_malformed_file_is_named_in_the_error(tmp_path: Path) -> None:
    file = tmp_path / "broken.json"
    file.write_text('{"1": {"class_type": "X",\n}}', encoding="utf-8")
    with pytest.raises(WorkflowError) as info:
        load_workflow(file)
    assert str(info.value).startswith(f"{file} is not valid JSON")
    assert info.value.line == 2


def test_quoted_line_follows_json_line_numbering() -> None:
    # a lone "\r" is JSON whitespace, not a line break for the parser: the quoted line must be the one at fault
    text = '{"1": {"class_type": "A"},\r "2": oops}'
    with pytest.raises(WorkflowError) as info:
        parse_workflow(text)
    assert info.value.line == 1
    assert "oops" in str(info.value)


def test_control_character_message_reads_well() -> None:
    with pytest.raises(WorkflowError) as info:
        parse_workflow('{"1": "a\tb"}')
    assert "at at" not in str(info.value)
    assert "Invalid control character at line 1, column 9" in str(info.value)


def test_empty_text() -> None:
    with pytest.raises(WorkflowError) as info:
        load_workflow("")
    assert info.value.line == 1


# -- shape ---------------------------------------------------------------------------------------------------------
def test_ui_format_without_a_converter_says_how_to_run_it() -> None:
    assert is_ui_format(UI_FORMAT)
    for source in (UI_FORMAT, json.dumps(UI_FORMAT)):
        with pytest.raises(WorkflowError) as info:
            load_workflow(source)
        message = str(info.value)
        assert "UI-format" in message
        assert "cn.to_api(workflow)" in message and "cn.run" in message
        assert "Export (API)" in message


def test_ui_format_goes_through_the_converter(tmp_path: Path) -> None:
    seen: list[dict[str, Any]] = []

    def convert(ui: dict[str, Any]) -> dict[str, Any]:
        seen.append(ui)
        return {"9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ui"}}}

    path = tmp_path / "saved.json"
    path.write_text(json.dumps(UI_FORMAT))
    for source in (UI_FORMAT, json.dumps(UI_FORMAT), path, str(path)):
        graph = load_workflow(source, convert=convert)
        assert graph == {"9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ui"}}}
    assert len(seen) == 4 and all(is_ui_format(ui) for ui in seen)
    # An API-format workflow never reaches it.
    load_workflow(GRAPH, convert=convert)
    assert len(seen) == 4


def test_ui_format_file_is_refused(tmp_path: Path) -> None:
    file = tmp_path / "workflow.json"
    file.write_text(json.dumps(UI_FORMAT), encoding="utf-8")
    with pytest.raises(WorkflowError, match="Export \\(API\\)"):
        load_workflow(file)


def test_api_format_is_not_mistaken_for_ui_format() -> None:
    assert not is_ui_format(GRAPH)
    assert not is_ui_format({"nodes": {"class_type": "X"}, "links": {"class_type": "Y"}})


def test_saved_prompt_request_body_is_unwrapped() -> None:
    body = {"prompt": GRAPH, "client_id": "abc", "prompt_id": "p", "extra_data": {"extra_pnginfo": {}}}
    assert load_workflow(body) == GRAPH
    assert load_workflow(json.dumps(body)) == GRAPH


def test_a_node_whose_id_is_prompt_is_not_unwrapped() -> None:
    graph = {"prompt": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat"}}, "2": {"class_type": "X"}}
    assert load_workflow(graph) == {
        "prompt": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat"}},
        "2": {"class_type": "X", "inputs": {}},
    }


@pytest.mark.parametrize(
    ("graph", "named"),
    [
        ({"1": {"class_type": "X"}, "7": {"inputs": {}}}, "'7'"),
        ({"4": {"class_type": 5, "inputs": {}}}, "'4'"),
        ({"5": "KSampler"}, "'5'"),
        ({"6": None}, "'6'"),
    ],
)
def test_node_without_class_type_is_refused(graph: dict[str, Any], named: str) -> None:
    with pytest.raises(WorkflowError) as info:
        validate(graph)
    assert f"node {named} has no 'class_type'" in str(info.value)


def test_inputs_must_be_an_object() -> None:
    with pytest.raises(WorkflowError) as info:
        validate({"3": {"class_type": "KSampler", "inputs": [1, 2]}})
    assert "node '3' (KSampler): 'inputs' must be an object" in str(info.value)


@pytest.mark.parametrize("data", [{}, [], [GRAPH], "x", 3, None])
def test_top_level_must_be_a_non_empty_object(data: Any) -> None:
    with pytest.raises(WorkflowError, match="non-empty JSON object of nodes"):
        validate(data)


# -- substitution --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [42, -1.5, "a photo of a cat", True, False, None, [1, "two", 3.0], {"a": [1, {}]}])
def test_variable_is_replaced_by_a_value_of_any_json_type(value: Any) -> None:
    result = substitute(node({"seed": "$seed", "other": 1}), {"seed": value})
    assert result["1"]["inputs"] == {"seed": value, "other": 1}


def test_substituted_values_are_copies() -> None:
    value = {"tags": ["a"]}
    result = substitute(node({"x": "$v"}), {"v": value})
    value["tags"].append("b")
    assert result["1"]["inputs"]["x"] == {"tags": ["a"]}


def test_tuples_become_lists() -> None:
    assert substitute(node({"size": "$size"}), {"size": (512, 768)})["1"]["inputs"]["size"] == [512, 768]


def test_substitution_reaches_nested_values_but_not_keys() -> None:
    workflow = {
        "1": {"class_type": "X", "inputs": {"list": ["$a", ["$b"]], "dict": {"k": "$a"}, "$a": "literal key"}},
        "$a": {"class_type": "Y", "inputs": {}},
    }
    result = substitute(workflow, {"a": 1, "b": 2})
    assert result["1"]["inputs"] == {"list": [1, [2]], "dict": {"k": 1}, "$a": "literal key"}
    assert "$a" in result


def test_substitute_does_not_modify_its_input() -> None:
    workflow = node({"seed": "$seed", "list": ["$seed"]})
    before = copy.deepcopy(workflow)
    substitute(workflow, {"seed": 5})
    assert workflow == before


@pytest.mark.parametrize(
    "text",
    [
        "a $5 bill",
        "$5",
        "$",
        "$ seed",
        "cost: $seed",
        "$seed ",
        " $seed",
        "$seed\n",  # "$" in a regex would match before the final newline
        "$seed-2",
        "${seed}",
        "$seed.attr",
        "$$",
        "$$5",
        "$$$ cash",
        "price in $$: 5",
    ],
)
def test_dollar_signs_that_are_not_a_whole_variable_are_left_alone(text: str) -> None:
    result = substitute(node({"text": text}), {"seed": 1})
    assert result["1"]["inputs"]["text"] == text


def test_double_dollar_escapes_a_literal_name() -> None:
    result = substitute(node({"a": "$$name", "b": "$$$name", "c": "$name"}), {"name": "value"})
    assert result["1"]["inputs"] == {"a": "$name", "b": "$$name", "c": "value"}


def test_escaped_names_need_no_variable() -> None:
    workflow = node({"a": "$$undefined"})
    assert variables(workflow) == set()
    assert substitute(workflow, {})["1"]["inputs"]["a"] == "$undefined"


def test_variables_lists_the_names_used() -> None:
    workflow = {
        "1": {"class_type": "X", "inputs": {"a": "$seed", "b": ["$steps", {"c": "$seed"}], "d": "$$no", "e": "$5"}}
    }
    assert variables(workflow) == {"seed", "steps"}


def test_unknown_names_are_all_listed() -> None:
    workflow = node({"w": "$width", "h": "$height", "s": "$seed", "z": "$zeta"})
    with pytest.raises(WorkflowError) as info:
        substitute(workflow, {"seed": 1})
    message = str(info.value)
    assert "$height, $width, $zeta" in message
    assert "$seed" not in message


@pytest.mark.parametrize(
    ("value", "type_name"),
    [(object(), "object"), (lambda: 1, "function"), ({1, 2}, "set"), (1 + 2j, "complex")],
)
def test_values_that_are_not_json_are_refused(value: Any, type_name: str) -> None:
    with pytest.raises(WorkflowError) as info:
        substitute(node({"x": "$thing"}), {"thing": value})
    assert "$thing" in str(info.value)
    assert f"is a {type_name}" in str(info.value)


def test_bytes_and_paths_in_a_cell_are_sent_as_files(tmp_path: Path) -> None:
    from comfy_notebook.core.uploads import Upload

    sent = substitute(node({"x": "$thing"}), {"thing": b"RIFF\x00\x00\x00\x00WAVE"})["1"]["inputs"]["x"]
    assert isinstance(sent, Upload) and sent.kind == "file" and sent.filename.endswith(".wav")
    with pytest.raises(WorkflowError, match=r"\$thing: cannot read"):
        substitute(node({"x": "$thing"}), {"thing": tmp_path / "missing.mp4"})


def test_circular_values_are_refused() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(WorkflowError, match=r"\$loop"):
        substitute(node({"x": "$loop"}), {"loop": loop})


class Spy:
    """A callable that records being called or turned into text."""

    calls = 0

    def __call__(self, *args: Any) -> str:
        Spy.calls += 1
        return "called"

    def __str__(self) -> str:
        Spy.calls += 1
        return "called"

    __repr__ = __str__


class RecordingNamespace(Mapping[str, Any]):
    """A namespace that records every name looked up."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.values = values
        self.looked_up: list[str] = []

    def __getitem__(self, key: str) -> Any:
        self.looked_up.append(key)
        return self.values[key]

    def __contains__(self, key: object) -> bool:
        self.looked_up.append(str(key))
        return key in self.values

    def __iter__(self) -> Iterator[str]:
        raise AssertionError("the namespace must not be enumerated")

    def __len__(self) -> int:
        raise AssertionError("the namespace must not be enumerated")


def test_substitution_never_calls_or_evaluates() -> None:
    Spy.calls = 0
    namespace = RecordingNamespace({"__import__": "just a string", "seed": 3, "spy": Spy()})
    workflow = node(
        {
            "a": "$__import__",
            "b": "$seed",
            "c": "__import__('os').system('exit 1')",
            "d": "$__import__('os')",
            "e": "${seed + 1}",
            "f": "seed",
        }
    )
    result = substitute(workflow, namespace)
    assert result["1"]["inputs"] == {
        "a": "just a string",
        "b": 3,
        "c": "__import__('os').system('exit 1')",
        "d": "$__import__('os')",
        "e": "${seed + 1}",
        "f": "seed",
    }
    assert set(namespace.looked_up) == {"__import__", "seed"}  # only whole "$name" values are looked up

    with pytest.raises(WorkflowError):
        substitute(node({"x": "$spy"}), namespace)
    assert Spy.calls == 0  # a callable value is refused, never called nor rendered


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_strings_not_starting_with_a_dollar_are_never_changed(text: str) -> None:
    if text.startswith("$"):
        text = "x" + text
    assert substitute(node({"t": text}), {})["1"]["inputs"]["t"] == text


NAME = "[A-Za-z_][A-Za-z0-9_]*"


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from("$ab_1 \n.")))
def test_substitution_of_dollar_strings_is_lookup_or_identity(text: str) -> None:
    namespace = {"a": 1, "b": None, "_": "u", "ab": [1], "a1": {"k": 2}, "b_1": "s"}
    is_variable = re.fullmatch(rf"\$({NAME})", text)
    is_escape = re.fullmatch(rf"\$\$+{NAME}", text)
    try:
        result = substitute(node({"t": text}), namespace)["1"]["inputs"]["t"]
    except WorkflowError:
        assert is_variable and is_variable.group(1) not in namespace
        return
    if is_variable:
        assert result == namespace[is_variable.group(1)]
    elif is_escape:
        assert result == text[1:]
    else:
        assert result == text


# -- model files -----------------------------------------------------------------------------------------------------
MODEL_GRAPH: dict[str, Any] = {
    "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd15.safetensors"}},
    "2": {"class_type": "UNETLoader", "inputs": {"unet_name": "flux1-dev.safetensors", "weight_dtype": "default"}},
    "3": {
        "class_type": "LoraLoader",
        "inputs": {"model": ["1", 0], "clip": ["1", 1], "lora_name": "style.safetensors", "strength_model": 1.0},
    },
    "4": {"class_type": "VAELoader", "inputs": {"vae_name": "ae.safetensors"}},
    "5": {
        "class_type": "KSampler",
        "inputs": {"model": ["3", 0], "sampler_name": "euler", "scheduler": "normal", "seed": 1, "steps": 20},
    },
    "6": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": "ComfyUI"}},
    "7": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["4", 0]}},
}


def test_model_files_are_the_name_inputs_as_input_equals_value() -> None:
    assert model_files(MODEL_GRAPH) == {
        "ckpt_name=sd15.safetensors",
        "unet_name=flux1-dev.safetensors",
        "lora_name=style.safetensors",
        "vae_name=ae.safetensors",
    }
    assert isinstance(model_files(MODEL_GRAPH), frozenset)


def test_model_files_ignore_names_that_are_not_models() -> None:
    graph = node(
        {
            "sampler_name": "euler",
            "scheduler_name": "karras",
            "filename_prefix": "out/nb",
            "image_name": "input.png",
            "audio_name": "clip.wav",
        }
    )
    assert model_files(graph) == frozenset()


def test_model_files_of_other_loaders_are_found_too() -> None:
    graph = node({"clip_name": "t5xxl.safetensors", "control_net_name": "canny.pth", "model_name": "4x.pth"})
    assert model_files(graph) == {"clip_name=t5xxl.safetensors", "control_net_name=canny.pth", "model_name=4x.pth"}


@pytest.mark.parametrize("value", [3, 1.5, None, True, "", {"a": 1}], ids=repr)
def test_model_files_ignore_values_that_are_not_file_names(value: Any) -> None:
    assert model_files(node({"ckpt_name": value})) == frozenset()


def test_model_files_ignore_links() -> None:
    graph = {
        "1": {"class_type": "PrimitiveString", "inputs": {"value": "sd15.safetensors"}},
        "2": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ["1", 0]}},
    }
    assert model_files(graph) == frozenset()


def test_model_files_name_each_file_once_and_keep_the_input_name() -> None:
    graph = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "a.safetensors"}},
        "2": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "a.safetensors"}},
        "3": {"class_type": "UNETLoader", "inputs": {"unet_name": "a.safetensors"}},
    }
    assert model_files(graph) == {"ckpt_name=a.safetensors", "unet_name=a.safetensors"}


def test_model_files_of_workflows_without_loaders_or_with_odd_nodes_are_empty() -> None:
    assert model_files(GRAPH) == frozenset()
    assert model_files({}) == frozenset()
    odd: dict[str, Any] = {
        "1": {"class_type": "X"},
        "2": {"class_type": "X", "inputs": None},
        "3": {"class_type": "X", "inputs": ["ckpt_name", "a.safetensors"]},
        "4": "not a node",
    }
    assert model_files(odd) == frozenset()


def test_model_files_tell_workflows_apart_by_their_models() -> None:
    other = copy.deepcopy(MODEL_GRAPH)
    other["1"]["inputs"]["ckpt_name"] = "sdxl.safetensors"
    other["5"]["inputs"]["seed"] = 2
    assert model_files(other) != model_files(MODEL_GRAPH)
    assert model_files(other) - model_files(MODEL_GRAPH) == {"ckpt_name=sdxl.safetensors"}
    reseeded = copy.deepcopy(MODEL_GRAPH)
    reseeded["5"]["inputs"]["seed"] = 99
    assert model_files(reseeded) == model_files(MODEL_GRAPH)


# -- local inputs (uploads) -------------------------------------------------------------------------------------------


def _load_image_graph(value: object) -> dict[str, object]:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": value}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
    }


def test_an_upload_input_survives_loading_and_is_found() -> None:
    from PIL import Image

    from comfy_notebook.core.uploads import Upload
    from comfy_notebook.core.workflow import uploads_of, with_inputs

    upload = Upload(Image.new("RGB", (2, 2)))
    graph = load_workflow(_load_image_graph(upload))
    assert graph["1"]["inputs"]["image"] is upload
    assert uploads_of(graph) == {("1", "image"): upload}
    sent = with_inputs(graph, {("1", "image"): "cn-x.png"})
    assert sent["1"]["inputs"]["image"] == "cn-x.png"
    assert graph["1"]["inputs"]["image"] is upload  # the task's own workflow is left alone
    assert sent["2"] is graph["2"]


def test_a_raw_local_object_in_a_dict_names_the_fix() -> None:
    from PIL import Image

    with pytest.raises(WorkflowError, match=r"Upload\(\.\.\.\)"):
        load_workflow(_load_image_graph(Image.new("RGB", (2, 2))))


def test_an_upload_nested_in_a_list_is_refused() -> None:
    from PIL import Image

    from comfy_notebook.core.uploads import Upload

    with pytest.raises(WorkflowError, match="value of a node input"):
        load_workflow(_load_image_graph([Upload(Image.new("RGB", (2, 2)))]))


def test_a_cell_variable_holding_an_image_becomes_an_upload() -> None:
    from PIL import Image

    from comfy_notebook.core.uploads import Upload

    graph = substitute(_load_image_graph("$photo"), {"photo": Image.new("RGB", (2, 2), (1, 2, 3))})
    upload = graph["1"]["inputs"]["image"]
    assert isinstance(upload, Upload) and upload.kind == "image"
    assert load_workflow(graph)["1"]["inputs"]["image"] is upload
    # A string variable stays a file name on the server.
    assert substitute(_load_image_graph("$name"), {"name": "photo.png"})["1"]["inputs"]["image"] == "photo.png"
