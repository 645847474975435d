"""``to_api``: UI-format workflows converted as ComfyUI's page converts them (pure; no server).

The workflows in ``workflows/`` are hand-made, one per feature, plus legacy group nodes made by the page
itself; ``workflows/object_info.json`` is the ``/object_info`` of a real test server (ComfyUI 0.3.75 with
``tests/comfy_nodes``), cut down to the node types they use. ``tests/browser/test_frontend_conversion.py`` checks
every one of them, and every shipped template, against the real page; here each feature's result is spelled out.
"""

from __future__ import annotations

import copy
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from comfy_notebook.core.errors import WorkflowError
from comfy_notebook.core.ui.convert import to_api
from comfy_notebook.core.ui.nodedefs import node_def
from comfy_notebook.core.ui.values import dynamic_prompt, format_date, js_number, js_string, textarea_value

HERE = Path(__file__).resolve().parent / "workflows"
OBJECT_INFO: dict[str, Any] = json.loads((HERE / "object_info.json").read_text(encoding="utf-8"))
NOW = datetime(2024, 5, 6, 7, 8, 9)


def workflow(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((HERE / f"{name}.json").read_text(encoding="utf-8"))
    return loaded


def convert(name: str, object_info: dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
    return to_api(workflow(name), OBJECT_INFO if object_info is None else object_info, now=NOW, **kwargs)


def inputs(prompt: dict[str, Any], node_id: str) -> dict[str, Any]:
    found: dict[str, Any] = prompt[node_id]["inputs"]
    return found


# -- widgets ------------------------------------------------------------------------------------------------------
def test_widget_values_go_to_inputs_in_the_pages_widget_order() -> None:
    prompt = convert("widgets")
    assert inputs(prompt, "1") == {"width": 96, "height": 64, "batch_size": 1, "color": 0x3366CC}
    assert inputs(prompt, "2") == {
        "upscale_method": "bilinear",
        "width": 80,
        "height": 48,
        "crop": "center",
        "image": ["1", 0],
    }
    assert inputs(prompt, "4")["direction"] == "down" and inputs(prompt, "4")["match_image_size"] is False
    assert prompt["1"]["class_type"] == "EmptyImage"
    assert prompt["1"]["_meta"] == {"title": "Source"}
    assert prompt["2"]["_meta"] == {"title": "Upscale Image"}  # untitled: the server's display name


def test_missing_short_or_dict_widget_values_leave_defaults() -> None:
    prompt = convert("widgets")
    defaults = {"width": 512, "height": 512, "batch_size": 1, "color": 0}
    assert inputs(prompt, "6") == defaults  # no widgets_values
    assert inputs(prompt, "7") == defaults  # a dict: the page ignores it
    assert inputs(prompt, "8") == {**defaults, "width": 32}  # fewer values than widgets


def test_seed_controls_and_other_ui_only_widgets_are_skipped() -> None:
    prompt = convert("seeds_and_ui_widgets")
    sampler = inputs(prompt, "5")
    assert "control_after_generate" not in sampler
    assert sampler["seed"] == 18446744073709552000  # as JavaScript holds 18446744073709551615
    assert sampler["sampler_name"] == "euler"  # an old "sample_euler", renamed by the page on load
    assert inputs(prompt, "6")["seed"] == 42 and inputs(prompt, "6")["steps"] == 4
    assert inputs(prompt, "7") == {"noise_seed": 9007199254740992}
    assert inputs(prompt, "8") == {"value": 7}  # an INT whose spec asks for control_after_generate
    assert inputs(prompt, "9") == {"image": "example.png"}  # the upload button's value is not sent
    assert inputs(prompt, "10") == {"image": "undefined"}  # no file, no options: the page's String(undefined)
    assert inputs(prompt, "13") == {"preview": "", "source": ["8", 0]}  # PreviewAny's text box is always sent
    assert prompt["12"]["class_type"] == "ControlNetLoader"  # T2IAdapterLoader, renamed on load
    assert inputs(prompt, "2")["text"] == "a photo of a cat\non a mat"  # a textarea turns \r\n into \n


def test_a_combo_with_control_after_generate_has_control_and_filter_widgets() -> None:
    # No node on the test server has such a COMBO; the layout follows the page's widget code.
    info = {
        "Picker": {
            "input": {"required": {"choice": [["a", "b", "c"], {"control_after_generate": True}], "n": ["INT", {}]}},
            "input_order": {"required": ["choice", "n"]},
            "output": ["STRING"],
            "display_name": "Picker",
        }
    }
    assert [w.name for w in node_def("Picker", info["Picker"]).widgets] == [
        "choice",
        "control_after_generate",
        "control_filter_list",
        "n",
    ]
    ui = {"nodes": [{"id": 1, "type": "Picker", "mode": 0, "widgets_values": ["b", "randomize", "", 5]}], "links": []}
    assert to_api(ui, info)["1"]["inputs"] == {"choice": "b", "n": 5}


# -- links and modes ----------------------------------------------------------------------------------------------
def test_links_become_node_id_and_slot_pairs() -> None:
    prompt = convert("links_as_objects")
    assert inputs(prompt, "2") == {"image": ["1", 0]}
    assert inputs(prompt, "3") == {"images": ["2", 0]}


def test_bypassed_nodes_pass_their_input_and_muted_nodes_are_left_out() -> None:
    prompt = convert("muted_bypassed")
    assert "2" not in prompt and "3" not in prompt and "15" not in prompt  # bypassed, muted, muted
    assert inputs(prompt, "4")["images"] == ["1", 0]  # through a bypassed ImageInvert
    assert "images" not in inputs(prompt, "5")  # fed by a muted node: the input is removed
    assert inputs(prompt, "8")["images"] == ["7", 0]  # a bypassed ImageBlend passes the same slot index
    assert inputs(prompt, "10") == {}  # bypassed ImageToMask: no IMAGE input for a MASK output
    assert inputs(prompt, "14")["images"] == ["7", 0]  # through two bypassed nodes
    assert inputs(prompt, "17")["width"] == 64  # a widget input whose bypassed source passes nothing
    assert "height" not in inputs(prompt, "20")  # a widget input fed by a muted node


def test_reroutes_are_followed() -> None:
    prompt = convert("reroutes")
    assert not {"2", "3", "4", "6", "9", "12", "15"} & set(prompt)
    assert inputs(prompt, "5")["images"] == ["1", 0]  # three reroutes
    assert inputs(prompt, "7") == {}  # a reroute with nothing on its input
    assert inputs(prompt, "10")["images"] == ["1", 0]  # a reroute after a bypassed node
    assert inputs(prompt, "13")["width"] == ["11", 0]  # into a widget input
    assert inputs(prompt, "16")["images"] == ["1", 0]  # a muted reroute still passes


def test_a_linked_widget_input_takes_the_link() -> None:
    prompt = convert("converted_widgets")
    assert inputs(prompt, "3") == {"width": ["1", 0], "height": ["1", 0], "batch_size": 1, "color": 0}
    assert inputs(prompt, "4")["string_a"] == ["2", 0] and inputs(prompt, "4")["string_b"] == "b"
    assert inputs(prompt, "5")["filename_prefix"] == ["4", 0]


def test_notes_are_left_out() -> None:
    assert set(convert("notes")) == {"3", "4"}


# -- primitives and text ------------------------------------------------------------------------------------------
def test_primitive_nodes_write_their_value_into_their_targets() -> None:
    prompt = convert("primitives")
    assert not {"1", "4", "5", "7", "9", "10", "12", "13"} & set(prompt)
    assert inputs(prompt, "2")["width"] == 72 and inputs(prompt, "3")["height"] == 72  # one primitive, two targets
    assert inputs(prompt, "2")["color"] == 16777215  # 99999999 clamped to the target's max
    assert inputs(prompt, "6")["spacing_width"] == 6  # 5 rounded to the target's step of 2
    assert inputs(prompt, "8")["blend_factor"] == 0.12  # rounded to the target's precision
    assert inputs(prompt, "8")["blend_mode"] == "difference"
    assert inputs(prompt, "3")["color"] == 77  # a primitive without a saved value takes the target's
    assert inputs(prompt, "11")["filename_prefix"] == "prims/2024"  # %date:yyyy% in a save node's prefix


def test_dynamic_prompts_comments_and_replacements() -> None:
    prompt = convert("text")
    assert inputs(prompt, "2")["text"] == "a red car \non a {road} big"
    assert inputs(prompt, "3")["text"] == "ends with a backslash \\undefined"  # the page reads past the end
    assert inputs(prompt, "4")["text"] == "12345"
    assert inputs(prompt, "6") == {
        "string_a": "line one\nline two\nthree",
        "string_b": "{not|dynamic}",
        "delimiter": "p-80",
    }
    assert inputs(prompt, "8")["filename_prefix"] == "2024-05-06/80x60-%Missing.value%-%nodot%"


def test_random_choices_use_the_given_chooser() -> None:
    ui = workflow("text")
    node = next(n for n in ui["nodes"] if n["id"] == 2)
    node["widgets_values"] = ["{cat|dog|{owl|bat}}"]
    assert convert_ui(ui, choose=lambda options: options[-1])["2"]["inputs"]["text"] == "bat"
    assert convert_ui(ui, choose=lambda options: options[0])["2"]["inputs"]["text"] == "cat"


def convert_ui(ui: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    return to_api(ui, OBJECT_INFO, now=NOW, **kwargs)


# -- subgraphs ----------------------------------------------------------------------------------------------------
def test_subgraph_nodes_are_flattened_with_path_ids() -> None:
    prompt = convert("subgraph")
    assert not {"11", "12", "13"} & set(prompt)
    assert inputs(prompt, "11:2") == {
        "blend_factor": 0.25,
        "blend_mode": "multiply",
        "image1": ["10", 0],
        "image2": ["11:1", 0],
    }
    assert inputs(prompt, "11:1")["color"] == 0xFF0000  # the instance's promoted widget
    assert inputs(prompt, "12:1")["color"] == 0x00FF00  # another instance, another value
    assert "image1" not in inputs(prompt, "12:2")  # nothing connected to that instance's input
    assert inputs(prompt, "13:2")["blend_factor"] == ["14", 0]  # a linked instance input wins over its widget
    assert inputs(prompt, "15")["images"] == ["11:2", 0]
    assert inputs(prompt, "17")["images"] == ["12:1", 0]  # the second output


def test_nested_subgraphs_depend_on_definition_order_as_in_the_page() -> None:
    nested, late = convert("subgraph_nested"), convert("subgraph_nested_late")
    assert inputs(nested, "23")["images"] == ["22:5:2", 0]
    assert inputs(nested, "21:5:1")["color"] == 0xABCDEF and inputs(nested, "22:5:1")["color"] == 0x123456
    assert inputs(nested, "21:5:2")["blend_factor"] == 0.6  # the inner instance's own value
    assert inputs(late, "21:5:1")["color"] == 0xABCDEF
    assert inputs(late, "21:5:2")["blend_factor"] == 0.5  # inner definition listed last: no promoted widget yet


def test_muted_or_bypassed_subgraph_nodes_still_queue_their_inner_nodes() -> None:
    prompt = convert("subgraph_modes")
    assert {"31:1", "31:2", "33:1", "33:2"} <= set(prompt)
    assert inputs(prompt, "32")["images"] == ["30", 0]  # bypassed: its input passed through
    assert inputs(prompt, "34")["images"] == ["33:2", 0]  # muted: followed inside anyway
    assert (
        inputs(prompt, "35:2")["blend_factor"] == 0.33 and inputs(prompt, "35:1")["color"] == 0x333333
    )  # proxyWidgets


def test_a_primitive_inside_a_subgraph_uses_the_root_graphs_links_as_the_page_does() -> None:
    assert inputs(convert("subgraph_primitive"), "10:2")["width"] == 64  # root link 1 leads elsewhere: not applied
    with pytest.raises(WorkflowError, match=r"primitive node #1 \(Primitive\) in subgraph 'subgraph_primitive_broken'"):
        convert("subgraph_primitive_broken")  # no root link 100: the page fails with a TypeError


def test_inner_muted_and_bypassed_nodes() -> None:
    prompt = convert("subgraph_inner_modes")
    assert set(prompt) == {"40", "42", "43"}
    assert inputs(prompt, "42")["images"] == ["40", 0] and inputs(prompt, "43") == {}


# -- legacy group nodes and old files -----------------------------------------------------------------------------
def test_group_nodes_stand_for_their_inner_nodes() -> None:
    prompt = convert("group_node")
    assert inputs(prompt, "13:1") == {
        "upscale_method": "bicubic",
        "width": 56,
        "height": 30,
        "crop": "center",
        "image": ["1", 0],
    }
    assert inputs(prompt, "13:2")["image1"] == ["13:1", 0]
    assert inputs(prompt, "5")["images"] == ["13:3", 0] and inputs(prompt, "8")["images"] == ["13:3", 0]
    assert "13" not in prompt and "13:0" not in prompt  # the group node and its inner primitive


def test_group_node_instances_modes_and_quirks() -> None:
    prompt = convert("group_node_instances")
    assert inputs(prompt, "15:2")["blend_factor"] == 0.9  # a second instance (saved as workflow/NAME)
    assert "image" not in inputs(prompt, "15:1")  # fed through a reroute, which the page does not follow here
    assert inputs(prompt, "18")["images"] == ["10", 0] and "17:1" in prompt  # bypassed: passes, still queued
    assert inputs(prompt, "20")["images"] == ["19:3", 0]  # muted: still followed inside
    inner_modes = convert("group_node_inner_modes")
    assert "images" not in inputs(inner_modes, "5")  # the group output leads to a muted inner node


def test_group_node_widgets_and_primitives() -> None:
    assert inputs(convert("group_node_primitive"), "13:1")["batch_size"] == ["13:0", 0]
    seeded = convert("group_node_seed")
    assert inputs(seeded, "13:1")["seed"] == 18446744073709552000 and inputs(seeded, "13:2")["seed"] == 42


def test_files_from_older_frontends() -> None:
    prompt = convert("legacy_format")
    assert inputs(prompt, "3")["width"] == 40  # a primitive on an input saved among converted widgets only
    assert inputs(prompt, "4") == {"start_percent": 0.2, "end_percent": 0.8, "print_keyframes": True}
    assert inputs(prompt, "6")["images"] == ["1", 0]  # a stale target slot: the input's link id counts


# -- errors -------------------------------------------------------------------------------------------------------
def test_node_types_the_server_lacks_are_all_named() -> None:
    with pytest.raises(WorkflowError) as raised:
        convert("missing_types")
    message = str(raised.value)
    assert "FancyUpscaler (node #51 'my upscaler')" in message
    assert "NoSuchNodeInSubgraph (node #1 in subgraph 'Has a missing node')" in message


def test_a_missing_type_inside_a_group_node_is_named() -> None:
    ui = workflow("group_node")
    ui["extra"]["groupNodes"]["Scale and blend"]["nodes"][1]["type"] = "GoneNode"
    with pytest.raises(WorkflowError, match=r"GoneNode \(node inside group node type 'workflow>Scale and blend'\)"):
        convert_ui(ui)


@pytest.mark.parametrize("bad", [{"nodes": "x"}, {"1": {"class_type": "EmptyImage", "inputs": {}}}, [], "text"])
def test_what_is_not_a_ui_workflow_is_refused(bad: Any) -> None:
    with pytest.raises(WorkflowError, match="not a UI-format workflow"):
        to_api(bad, OBJECT_INFO)


def test_object_info_must_be_a_mapping() -> None:
    with pytest.raises(WorkflowError, match="object_info"):
        to_api(workflow("notes"), [])  # type: ignore[arg-type]


def test_widgets_only_the_page_can_fill_are_refused_unless_the_node_is_off() -> None:
    ui = {"nodes": [{"id": 3, "type": "Load3D", "mode": 0, "title": "scene"}], "links": []}
    with pytest.raises(WorkflowError, match=r"node #3 'scene' \(Load3D\) needs ComfyUI's page"):
        to_api(ui, OBJECT_INFO)
    muted = copy.deepcopy(ui)
    muted["nodes"][0]["mode"] = 2
    assert to_api(muted, OBJECT_INFO) == {}


def test_a_loop_of_reroutes_is_refused() -> None:
    ui = {
        "nodes": [
            {
                "id": 1,
                "type": "Reroute",
                "inputs": [{"name": "", "type": "*", "link": 2}],
                "outputs": [{"type": "*", "links": [1, 3]}],
            },
            {
                "id": 2,
                "type": "Reroute",
                "inputs": [{"name": "", "type": "*", "link": 1}],
                "outputs": [{"type": "*", "links": [2]}],
            },
            {
                "id": 3,
                "type": "PreviewImage",
                "inputs": [{"name": "images", "type": "IMAGE", "link": 3}],
                "outputs": [],
            },
        ],
        "links": [[1, 1, 0, 2, 0, "*"], [2, 2, 0, 1, 0, "*"], [3, 1, 0, 3, 0, "IMAGE"]],
        "version": 0.4,
    }
    with pytest.raises(WorkflowError, match="loop"):
        to_api(ui, OBJECT_INFO)


def test_a_malformed_proxy_widgets_property_is_refused() -> None:
    ui = workflow("subgraph_modes")
    next(n for n in ui["nodes"] if n.get("title") == "proxied")["properties"]["proxyWidgets"] = [["-1"]]
    with pytest.raises(WorkflowError, match="proxyWidgets"):
        convert_ui(ui)


def test_neither_the_workflow_nor_object_info_is_modified() -> None:
    for name in ("subgraph", "group_node_primitive", "primitives", "seeds_and_ui_widgets"):
        ui, info = workflow(name), copy.deepcopy(OBJECT_INFO)
        before = copy.deepcopy(ui)
        to_api(ui, info, now=NOW)
        assert ui == before and info == OBJECT_INFO


# -- JavaScript values --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "expected"),
    [(1.0, 1), (2**53 + 1, 2**53), (18446744073709551615, 18446744073709552000), (0.5, 0.5), (-0.0, 0), (7, 7)],
)
def test_numbers_as_javascript_holds_them(value: float, expected: float) -> None:
    result = js_number(value)
    assert result == expected and type(result) is type(expected)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, "null"), (True, "true"), (3.0, "3"), (0.1, "0.1"), (1e21, "1e+21"), (1e-7, "1e-7"), ([1, None], "1,")],
)
def test_strings_as_javascript_writes_them(value: Any, expected: str) -> None:
    assert js_string(value) == expected


def test_textareas_normalise_values() -> None:
    assert textarea_value(None) == "" and textarea_value("a\r\nb\rc") == "a\nb\nc" and textarea_value(2.5) == "2.5"


def test_dynamic_prompt_syntax() -> None:
    assert dynamic_prompt("{a|b}", lambda options: options[1]) == "b"
    assert dynamic_prompt("x // gone\ny /* gone */z", lambda o: o[0]) == "x \ny z"
    assert dynamic_prompt(r"\{literal\} \| {a|b}", lambda o: o[0]) == "{literal} | a"


def test_date_formats() -> None:
    assert format_date("yyyy-MM-dd hh:mm:ss yy M d", datetime(2024, 5, 6, 7, 8, 9)) == "2024-05-06 07:08:09 24 5 6"
