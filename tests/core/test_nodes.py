"""Node and model catalogues, pure: parsing real ``/object_info`` answers (captured from two real ComfyUI 0.3.75
servers of one pool into ``object_info_sample.json``, trimmed to a few node types), filtering, and comparing the
servers' catalogues into sentences a person can act on."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from comfy_notebook.core.errors import ComfyError, NotFound, ProtocolError
from comfy_notebook.core.listing import (
    FOLDER,
    MODEL,
    NODE,
    Disagreement,
    ModelListing,
    NodeListing,
    compare,
    summarize,
)
from comfy_notebook.core.nodes import (
    Catalog,
    NodeInfo,
    matches,
    parse_input,
    parse_names,
    parse_node,
    parse_object_info,
    suggest,
)

SAMPLE: dict[str, Any] = json.loads((Path(__file__).parent / "object_info_sample.json").read_text(encoding="utf-8"))
A, B, C = "http://a:8188", "http://b:8188", "http://c:8188"


@pytest.fixture(scope="module")
def a() -> Catalog:
    return parse_object_info(SAMPLE["a"], server=A)


@pytest.fixture(scope="module")
def b() -> Catalog:
    return parse_object_info(SAMPLE["b"], server=B)


def brief(node: NodeInfo) -> list[tuple[Any, ...]]:
    return [(i.name, i.type, i.required, i.widget, i.default, i.min, i.max, i.step) for i in node.inputs]


# -- parsing ----------------------------------------------------------------------------------------------------------
def test_every_real_entry_is_read(a: Catalog, b: Catalog) -> None:
    assert set(a.nodes) == set(SAMPLE["a"]) and a.malformed == ()
    assert set(b.nodes) == set(SAMPLE["b"]) and b.malformed == ()
    assert all(node.server == A for node in a.nodes.values())


def test_the_test_node_is_described_as_the_server_defines_it(a: Catalog) -> None:
    node = a.nodes["SlowSteps"]
    assert (node.name, node.display_name, node.category) == ("SlowSteps", "Slow Steps (test)", "comfy_notebook_tests")
    assert node.output_node is False and node.description == ""
    assert brief(node) == [
        ("image", "IMAGE", True, False, None, None, None, None),
        ("steps", "INT", True, True, 5, 1, 10000, None),
        ("step_seconds", "FLOAT", True, True, 0.1, 0.0, 60.0, 0.01),
    ]
    assert [(o.name, o.type, o.is_list) for o in node.outputs] == [("IMAGE", "IMAGE", False)]
    assert [i.name for i in node.widgets] == ["steps", "step_seconds"] and [i.name for i in node.links] == ["image"]
    assert (
        repr(node)
        == "NodeInfo('SlowSteps', category='comfy_notebook_tests', inputs=3, outputs=1, server='http://a:8188')"
    )


def test_ksampler_inputs_follow_input_order_with_choices_and_options(a: Catalog) -> None:
    node = a.nodes["KSampler"]
    assert [i.name for i in node.inputs] == SAMPLE["a"]["KSampler"]["input_order"]["required"]
    seed = node.input("seed")
    assert (seed.type, seed.widget, seed.min, seed.max) == ("INT", True, 0, 18446744073709551615)
    assert seed.options["control_after_generate"] is True
    assert seed.describe() == "seed: INT, required, default 0, 0..18446744073709551615"  # not 1.8e+19
    sampler = node.input("sampler_name")
    assert sampler.type == "COMBO" and sampler.widget
    assert sampler.choices is not None and sampler.choices[0] == "euler" and "dpmpp_2m" in sampler.choices
    assert node.input("model").widget is False and node.input("positive").type == "CONDITIONING"
    assert node.input("cfg").describe() == "cfg: FLOAT, required, default 8.0, 0..100, step 0.1"
    with pytest.raises(KeyError, match="KSampler has no input 'nope'"):
        node.input("nope")


def test_both_combo_forms(a: Catalog) -> None:
    newer = a.nodes["LatentBatchSeedBehavior"].input("seed_behavior")  # ["COMBO", {"options": [...]}]
    assert (newer.type, newer.choices, newer.default, newer.widget) == ("COMBO", ("random", "fixed"), "fixed", True)
    listed = a.nodes["LoraLoader"].input("lora_name")  # [[...files...], {...}]
    assert listed.type == "COMBO" and listed.choices == ("only_a.safetensors", "sub/deep.safetensors")
    remote = a.nodes["LoadImageOutput"].input("image")  # "COMBO" filled by the page from a route: no choices
    assert remote.type == "COMBO" and remote.choices is None and remote.options["image_upload"] is True
    empty = a.nodes["LoadImage"].input("image")  # an empty input folder: a list, but empty
    assert empty.choices == () and "choices (none)" in empty.describe()


def test_optional_hidden_list_outputs_flags_and_force_input(a: Catalog) -> None:
    clip = a.nodes["CLIPLoader"]
    assert [(i.name, i.required) for i in clip.inputs] == [("clip_name", True), ("type", True), ("device", False)]
    save = a.nodes["SaveImage"]
    assert save.output_node and save.outputs == () and save.hidden == ("prompt", "extra_pnginfo")
    assert "output node" in save.describe() and "outputs: none" in save.describe()
    assert a.nodes["RebatchImages"].outputs[0].is_list
    assert a.nodes["CheckpointLoader"].deprecated and a.nodes["LoadImageOutput"].experimental
    assert a.nodes["TripoConversionNode"].api_node
    forced = a.nodes["KlingVideoExtendNode"].input("video_id")  # a STRING drawn as a socket
    assert forced.type == "STRING" and forced.widget is False
    assert a.nodes["PreviewAny"].input("source").type == "*"
    assert a.nodes["TripoConversionNode"].input("original_model_task_id").type.count(",") == 2
    checkpoint = a.nodes["CheckpointLoaderSimple"]
    assert [(o.name, o.type) for o in checkpoint.outputs] == [("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")]
    assert checkpoint.outputs[0].tooltip.startswith("The model used")


def test_input_order_wins_over_the_objects_own_order() -> None:
    body = copy.deepcopy(SAMPLE["a"]["SlowSteps"])
    body["input"]["required"] = dict(reversed(body["input"]["required"].items()))
    assert [i.name for i in parse_node("SlowSteps", body).inputs] == ["image", "steps", "step_seconds"]
    del body["input_order"]  # older servers: the object's order
    assert [i.name for i in parse_node("SlowSteps", body).inputs] == ["step_seconds", "steps", "image"]


def test_malformed_entries_are_set_aside_not_fatal() -> None:
    body = {
        **SAMPLE["a"],
        "NotAnObject": 5,
        "BadInput": {"input": {"required": {"x": 7}}},
        "BadType": {"input": {"required": {"x": [{"a": 1}]}}},
        "BadSection": {"input": {"optional": ["x"]}},
        "Bare": {"input": {}},  # odd but readable: no inputs, no outputs
    }
    catalog = parse_object_info(body, server=A)
    assert set(catalog.malformed) == {"NotAnObject", "BadInput", "BadType", "BadSection"}
    assert catalog.nodes["Bare"].inputs == () and catalog.nodes["Bare"].display_name == "Bare"
    assert "KSampler" in catalog.nodes
    with pytest.raises(ProtocolError, match=r"http://a:8188 sent a /object_info that is not an object"):
        parse_object_info(["KSampler"], server=A)
    with pytest.raises(ValueError, match="input 'x'"):
        parse_input("x", "INT", required=True)


def test_hostile_values_stay_data() -> None:
    body = {"input": {"required": {"<b>x</b>": ["INT", {"default": "<script>", "min": "0", "max": float("nan")}]}},
            "display_name": ["not", "text"], "output": [["a", "b"]], "output_name": [7], "category": None}  # fmt: skip
    node = parse_node("<img src=x>", body)
    spec = node.inputs[0]
    assert (spec.name, spec.default, spec.min, spec.max) == ("<b>x</b>", "<script>", None, None)
    assert node.display_name == "<img src=x>" and node.category == ""
    assert [(o.name, o.type) for o in node.outputs] == [("COMBO", "COMBO")]


def test_names_lists() -> None:
    assert parse_names(SAMPLE["models_loras"]["a"], server=A, what="x") == (
        "only_a.safetensors",
        "sub/deep.safetensors",
    )
    for bad in ({"a": 1}, ["a", 3], None):
        with pytest.raises(ProtocolError, match="http://a:8188 sent a list of model folders that is not a list"):
            parse_names(bad, server=A, what="list of model folders")


def test_filter_and_suggestions(a: Catalog) -> None:
    nodes = list(a.nodes.values())
    assert {n.name for n in nodes if matches(n, "lora")} == {"LoraLoader"}
    assert {n.name for n in nodes if matches(n, "SLOW STEPS")} == {"SlowSteps"}  # display name, any case
    assert {n.name for n in nodes if matches(n, "comfy_notebook_tests")} == {"SlowSteps", "RaiseError"}  # category
    assert all(matches(n, None) and matches(n, "") for n in nodes)
    assert suggest("ksampler", a.nodes) == ["KSampler"]
    assert suggest("SlowStep", a.nodes) == ["SlowSteps"]
    assert suggest("Zebra", a.nodes) == []
    assert issubclass(NotFound, ComfyError) and issubclass(NotFound, LookupError)


# -- comparing servers ------------------------------------------------------------------------------------------------
def test_node_types_only_one_server_has(a: Catalog, b: Catalog) -> None:
    found = compare(NODE, {A: a.nodes, B: b.nodes})
    assert [(d.name, d.present, d.missing) for d in found] == [("RaiseError", (A,), (B,)), ("SlowSteps", (A,), (B,))]
    assert str(found[1]) == (
        "node type SlowSteps is on http://a:8188 only: a prompt that uses it is refused by http://b:8188"
    )
    assert summarize(found) == [
        "2 node types (RaiseError, SlowSteps) are on http://a:8188 only: a prompt that uses one is refused by "
        "http://b:8188"
    ]
    assert compare(NODE, {A: a.nodes}) == () and compare(NODE, {}) == ()


def test_model_files_some_servers_lack() -> None:
    loras = {A: ["lora_x.safetensors", "shared.safetensors"], B: ["shared.safetensors"], C: ["shared.safetensors"]}
    (only,) = compare(MODEL, loras, folder="loras")
    assert (only.name, only.present, only.missing, only.folder) == ("lora_x.safetensors", (A,), (B, C), "loras")
    assert str(only) == (
        "lora_x.safetensors (loras) is on http://a:8188 only: a prompt that uses it fails validation on "
        "http://b:8188 and http://c:8188"
    )
    real = compare(MODEL, SAMPLE["models_loras"], folder="loras")  # what two real servers answered
    assert summarize(real) == [
        "2 files of loras (only_a.safetensors, sub/deep.safetensors) are on a only: a prompt that uses one fails "
        "validation on b"
    ]


def test_one_line_per_split_and_long_groups_shortened() -> None:
    per_server = {A: [f"Pack{i:02}" for i in range(12)] + ["Common", "OnAB"], B: ["Common", "OnAB"], C: ["Common"]}
    lines = summarize(compare(NODE, per_server))
    assert lines == [
        "node type OnAB is on http://a:8188 and http://b:8188 only: a prompt that uses it is refused by http://c:8188",
        "12 node types (Pack00, Pack01, Pack02, Pack03, Pack04, Pack05, Pack06, Pack07 ... and 4 more) are on "
        "http://a:8188 only: a prompt that uses one is refused by http://b:8188 and http://c:8188",
    ]
    folder = Disagreement(FOLDER, "extras", (A,), (B, C))
    assert (
        str(folder)
        == "model folder 'extras' is on http://a:8188 only: http://b:8188 and http://c:8188 have no such folder"
    )


def test_listings_read_well(a: Catalog) -> None:
    nodes = (a.nodes["KSampler"], a.nodes["SlowSteps"])
    missing = compare(NODE, {A: ["KSampler", "SlowSteps"], B: ["KSampler"]})
    listing = NodeListing(nodes, (A, B), {"KSampler": (A, B), "SlowSteps": (A,)}, missing, {C: f"{C} did not answer"})
    assert repr(listing) == "NodeListing(2 node types on 2 servers, 2 notes)"
    assert listing.notes == (str(missing[0]), "http://c:8188 did not answer")
    assert "SlowSteps" in listing and "Nope" not in listing and listing["SlowSteps"] is nodes[1]
    assert listing.names == ("KSampler", "SlowSteps") and len(listing) == 2 and list(listing) == list(nodes)
    broken = NodeListing(nodes, (A,), {}, malformed={A: ("BadPack1", "BadPack2")})
    assert broken.notes == (
        "http://a:8188 described 2 node types in a form that could not be read: BadPack1, BadPack2",
    )
    one = NodeListing(nodes[:1], (A,), {"KSampler": (A,)}, filter="ks")
    assert repr(one) == "NodeListing(1 node type matching 'ks' on 1 server)" and one.notes == ()
    models = ModelListing("loras", ("x.safetensors",), {A: ("x.safetensors",), B: ()})
    assert repr(models) == "ModelListing(1 file in 'loras' on 2 servers)" and "x.safetensors" in models
    assert repr(ModelListing(None, ("checkpoints", "loras"), {A: ("checkpoints", "loras")})) == (
        "ModelListing(2 model folders on 1 server)"
    )
