"""Sweep planning: key resolution (ids, titles, class types), value checks before anything is queued, the product
and zipped layouts, each point's workflow, and the cell syntax ``KEY=V1,V2,...``."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from comfy_notebook.core.errors import WorkflowError
from comfy_notebook.core.sweep import MAX_POINTS, format_value, parse_over, plan, point_label
from comfy_notebook.core.uploads import Upload

GRAPH: dict[str, Any] = {
    "3": {
        "class_type": "KSampler",
        "inputs": {"seed": 1, "cfg": 7.0, "steps": 20, "model": ["4", 0], "positive": ["6", 0]},
        "_meta": {"title": "KSampler"},
    },
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd15.safetensors"}},
    "6": {
        "class_type": "CLIPTextEncode",
        "inputs": {"text": "a fox", "clip": ["4", 1]},
        "_meta": {"title": "Positive"},
    },
    "7": {
        "class_type": "CLIPTextEncode",
        "inputs": {"text": "blurry", "clip": ["4", 1]},
        "_meta": {"title": "Negative"},
    },
    "9": {"class_type": "LoadImage", "inputs": {"image": "in.png"}},
}


def graph() -> dict[str, Any]:
    return json.loads(json.dumps(GRAPH))


# -- layout -------------------------------------------------------------------------------------------------------
def test_the_cartesian_product_first_axis_slowest() -> None:
    layout = plan(graph(), {"3.seed": range(3), "3.cfg": [5, 7]})
    assert layout.shape == (3, 2)
    assert [p.coords for p in layout.points] == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]
    assert [p.params for p in layout.points][:3] == [
        {"3.seed": 0, "3.cfg": 5},
        {"3.seed": 0, "3.cfg": 7},
        {"3.seed": 1, "3.cfg": 5},
    ]
    assert [p.index for p in layout.points] == list(range(6))
    assert [(a.key, a.node_id, a.input, a.values, a.name) for a in layout.axes] == [
        ("3.seed", "3", "seed", (0, 1, 2), "seed"),
        ("3.cfg", "3", "cfg", (5, 7), "cfg"),
    ]


def test_zip_pairs_the_values_and_needs_equal_lengths() -> None:
    layout = plan(graph(), {"3.seed": [1, 2, 3], "6.text": ["a", "b", "c"]}, zip=True)
    assert layout.shape == (3,)
    assert [p.params for p in layout.points] == [
        {"3.seed": 1, "6.text": "a"},
        {"3.seed": 2, "6.text": "b"},
        {"3.seed": 3, "6.text": "c"},
    ]
    assert [p.coords for p in layout.points] == [(0, 0), (1, 1), (2, 2)]
    with pytest.raises(WorkflowError, match=r"equal lengths \(3.seed: 3, 6.text: 2\)"):
        plan(graph(), {"3.seed": [1, 2, 3], "6.text": ["a", "b"]}, zip=True)


def test_each_point_gets_a_fresh_workflow_with_its_values() -> None:
    source = graph()
    layout = plan(source, {"3.seed": [10, 11], "Positive.text": ["a cat", "a dog"]})
    built = [layout.workflow_for(p) for p in layout.points]
    assert [(w["3"]["inputs"]["seed"], w["6"]["inputs"]["text"]) for w in built] == [
        (10, "a cat"),
        (10, "a dog"),
        (11, "a cat"),
        (11, "a dog"),
    ]
    assert built[0]["3"]["inputs"]["model"] == ["4", 0] and built[0]["7"] == GRAPH["7"]
    built[0]["4"]["inputs"]["ckpt_name"] = "changed"  # no point shares anything with another or with the source
    assert built[1]["4"]["inputs"]["ckpt_name"] == "sd15.safetensors" == source["4"]["inputs"]["ckpt_name"]
    assert source == GRAPH


def test_labels_and_short_names() -> None:
    layout = plan(graph(), {"Positive.text": ["x"], "Negative.text": ["y"], "3.seed": [4]})
    assert [a.name for a in layout.axes] == ["Positive.text", "Negative.text", "seed"]  # 'text' twice: full keys
    assert layout.label(layout.points[0]) == "Positive.text=x, Negative.text=y, seed=4"
    assert point_label({"seed": 3, "cfg": 7.5, "on": True, "s": "a b", "l": [1, 2]}) == (
        "seed=3, cfg=7.5, on=true, s=a b, l=[1,2]"
    )
    assert format_value(None) == "null"


# -- keys ---------------------------------------------------------------------------------------------------------
def test_keys_by_id_title_or_unique_class_type() -> None:
    layout = plan(graph(), {"KSampler.seed": [1], "Negative.text": ["z"], "LoadImage.image": ["b.png"]})
    assert [(a.node_id, a.input) for a in layout.axes] == [("3", "seed"), ("7", "text"), ("9", "image")]
    assert layout.axes[0].key == "KSampler.seed"  # as the user wrote it


def test_a_title_with_dots_splits_at_the_last_dot() -> None:
    source = graph()
    source["3"]["_meta"]["title"] = "Sampler v1.5"
    assert plan(source, {"Sampler v1.5.seed": [1]}).axes[0].node_id == "3"


def test_an_input_name_with_a_dot() -> None:
    source = graph()
    source["3"]["inputs"]["resize.width"] = 512
    assert plan(source, {"3.resize.width": [1]}).axes[0].input == "resize.width"
    assert plan(source, {"KSampler.resize.width": [1]}).axes[0].node_id == "3"
    with pytest.raises(WorkflowError, match=r"node 3 \(KSampler\) has no input 'resize\.height'"):
        plan(source, {"3.resize.height": [1]})


def test_an_ambiguous_class_type_lists_the_nodes() -> None:
    with pytest.raises(WorkflowError) as info:
        plan(graph(), {"CLIPTextEncode.text": ["a"]})
    message = str(info.value)
    assert "2 nodes have the class type 'CLIPTextEncode' (use a node id)" in message
    assert "6 (CLIPTextEncode 'Positive'), 7 (CLIPTextEncode 'Negative')" in message


def test_an_ambiguous_title_lists_the_nodes() -> None:
    source = graph()
    source["7"]["_meta"]["title"] = "Positive"
    with pytest.raises(WorkflowError, match=r"2 nodes have the title 'Positive'.*6 \(CLIPTextEncode 'Positive'\)"):
        plan(source, {"Positive.text": ["a"]})


def test_an_unknown_node_lists_every_node() -> None:
    with pytest.raises(WorkflowError) as info:
        plan(graph(), {"12.seed": [1]})
    assert str(info.value) == (
        "sweep key '12.seed': no node has the id, title or class type '12'; the nodes: 3 (KSampler), "
        "4 (CheckpointLoaderSimple), 6 (CLIPTextEncode 'Positive'), 7 (CLIPTextEncode 'Negative'), 9 (LoadImage)"
    )


def test_an_unknown_input_lists_the_nodes_inputs() -> None:
    with pytest.raises(WorkflowError) as info:
        plan(graph(), {"3.sead": [1]})
    assert str(info.value) == (
        "sweep key '3.sead': node 3 (KSampler) has no input 'sead'; its inputs: cfg, model, positive, seed, steps"
    )


@pytest.mark.parametrize("key", ["seed", "", ".seed", "3.", 3])
def test_a_key_must_be_node_dot_input(key: Any) -> None:
    with pytest.raises(WorkflowError, match=r"must be 'node\.input'"):
        plan(graph(), {key: [1]})


def test_a_link_input_is_not_a_parameter() -> None:
    with pytest.raises(WorkflowError, match=r"'3.model': input 'model' of node 3 is a link from node 4 \(output 0\)"):
        plan(graph(), {"3.model": [["4", 0]]})


def test_two_keys_for_one_input_are_refused() -> None:
    with pytest.raises(
        WorkflowError, match=r"sweep keys '3\.seed' and 'KSampler\.seed' both set input 'seed' of node 3"
    ):
        plan(graph(), {"3.seed": [1], "KSampler.seed": [2]})
    with pytest.raises(WorkflowError, match="both set"):  # pairs, as the cell syntax gives them
        plan(graph(), [("3.seed", [1]), ("3.seed", [2])])


# -- values -------------------------------------------------------------------------------------------------------
def test_nothing_to_sweep_and_empty_axes_are_errors() -> None:
    with pytest.raises(WorkflowError, match="at least one input"):
        plan(graph(), {})
    with pytest.raises(WorkflowError, match=r"'3\.seed' has no values"):
        plan(graph(), {"3.seed": []})


@pytest.mark.parametrize("values", ["abc", 5, {"a": 1}, b"xy", None])
def test_values_must_be_a_list(values: Any) -> None:
    with pytest.raises(WorkflowError, match="the values must be a list"):
        plan(graph(), {"6.text": values})


def test_values_json_cannot_carry_are_refused_before_anything_is_queued() -> None:
    with pytest.raises(WorkflowError, match=r"'3.cfg': .*object.*cannot be sent to ComfyUI"):
        plan(graph(), {"3.cfg": [object()]})
    with pytest.raises(WorkflowError, match="cannot be sent"):
        plan(graph(), {"3.cfg": [float("nan")]})


def test_numpy_values_become_plain_numbers() -> None:
    layout = plan(graph(), {"3.cfg": np.linspace(5, 6, 3), "3.seed": np.arange(2)})
    assert layout.axes[0].values == (5.0, 5.5, 6.0) and type(layout.axes[1].values[0]) is int
    json.dumps(layout.workflow_for(layout.points[-1]))


def test_uploads_are_values_and_stay_objects_in_each_workflow() -> None:
    red, blue = Image.new("RGB", (4, 4), "red"), Image.new("RGB", (4, 4), "blue")
    layout = plan(graph(), {"9.image": [red, Upload(blue)]})
    first, second = (layout.workflow_for(p)["9"]["inputs"]["image"] for p in layout.points)
    assert isinstance(first, Upload) and isinstance(second, Upload) and first.digest != second.digest
    assert layout.label(layout.points[0]) == f"image={first.filename}"


def test_a_sweep_too_large_is_refused() -> None:
    with pytest.raises(WorkflowError, match=f"1000000 points, more than {MAX_POINTS}"):
        plan(graph(), {"3.seed": range(1000), "3.steps": range(1000)})
    with pytest.raises(WorkflowError, match=f"'3.seed' has more than {MAX_POINTS} values"):
        plan(graph(), {"3.seed": range(10**12)})  # refused without listing them


# -- the cell syntax ----------------------------------------------------------------------------------------------
def test_parse_over_reads_json_scalars_and_plain_strings() -> None:
    assert parse_over("3.seed=1,2,3") == ("3.seed", [1, 2, 3])
    assert parse_over(" KSampler.cfg = 5, 7.5 ") == ("KSampler.cfg", [5, 7.5])
    assert parse_over("3.sampler_name=euler, euler a,dpmpp_2m") == ("3.sampler_name", ["euler", "euler a", "dpmpp_2m"])
    assert parse_over('6.text="a fox, running","a \\"quoted\\" cat",plain') == (
        "6.text",
        ["a fox, running", 'a "quoted" cat', "plain"],
    )
    assert parse_over("5.flag=true,false,null") == ("5.flag", [True, False, None])
    assert parse_over("5.size=[512,512],[768, 768]") == ("5.size", [[512, 512], [768, 768]])
    assert parse_over("6.text=007") == ("6.text", ["007"])  # not JSON: a string, never an octal surprise


def test_parse_over_ranges() -> None:
    assert parse_over("3.seed=range(4)") == ("3.seed", [0, 1, 2, 3])
    assert parse_over("3.seed=range(1, 9, 3)") == ("3.seed", [1, 4, 7])
    assert parse_over("3.seed=1..4") == ("3.seed", [1, 2, 3, 4])
    assert parse_over("3.seed=3..1") == ("3.seed", [3, 2, 1])
    assert parse_over("3.seed=-1..1,range(10,12),99") == ("3.seed", [-1, 0, 1, 10, 11, 99])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("3.seed", "reads KEY=V1,V2"),
        ("=1,2", "reads KEY=V1,V2"),
        ("3.seed=", "has no values"),
        ("3.seed=1,,2", "empty value"),
        ("3.seed=1,2,", "empty value"),
        ('6.text="open', "unclosed quote"),
        ("5.size=[1,2", "unclosed quote or bracket"),
        ("3.seed=range(0, 5, 0)", "step of 0"),
        ("3.seed=range(999999999)", "more than"),
    ],
)
def test_parse_over_errors(text: str, message: str) -> None:
    with pytest.raises(WorkflowError, match=message):
        parse_over(text)


def test_a_parsed_axis_plans() -> None:
    layout = plan(graph(), [parse_over("3.seed=1..3"), parse_over("Positive.text=a fox,a cat")])
    assert layout.shape == (3, 2) and layout.points[-1].params == {"3.seed": 3, "Positive.text": "a cat"}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.booleans(), st.text())))
def test_parse_over_round_trips_json_values(values: list[Any]) -> None:
    if not values:
        return
    text = "3.x=" + ",".join(json.dumps(v) for v in values)
    assert parse_over(text) == ("3.x", values)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 4), min_size=1, max_size=4))
def test_the_product_has_every_combination_once(sizes: list[int]) -> None:
    source = {str(i): {"class_type": "N", "inputs": {"v": 0}} for i in range(len(sizes))}
    layout = plan(source, {f"{i}.v": range(n) for i, n in enumerate(sizes)})
    combos = [tuple(p.params.values()) for p in layout.points]
    assert len(combos) == len(set(combos)) == int(np.prod(sizes))
    assert all(tuple(p.coords) == combo for p, combo in zip(layout.points, combos, strict=True))
