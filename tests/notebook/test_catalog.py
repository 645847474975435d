"""What the servers can run, as the notebook shows it: the text and HTML of node and model listings (built from a
real ``/object_info`` captured from two servers, plus hostile names), the ``%comfy nodes / node / models``
commands' usage errors, and the display formatters' life with the extension. Listing real servers through the
magics is in ``tests/integration/test_discovery.py``."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

from comfy_notebook.core.listing import FOLDER, MODEL, NODE, Disagreement, ModelListing, NodeListing, compare
from comfy_notebook.core.nodes import NodeInfo, parse_node, parse_object_info
from comfy_notebook.notebook import catalog
from comfy_notebook.notebook.syntax import HELP
from tests.core.test_nodes import SAMPLE

A, B = "http://a:8188", "http://b:8188"
SECRET = "http://alice:s3cret@c:8188"
HOSTILE = "<script>alert(1)</script>"

NODES_A = parse_object_info(SAMPLE["a"], server=A).nodes


def listing_of(*names: str, missing: tuple[str, ...] = ("SlowSteps",)) -> NodeListing:
    nodes = tuple(NODES_A[n] for n in names)
    per_server = {A: names, B: [n for n in names if n not in missing]}
    differences = compare(NODE, per_server)
    marked = {d.name: d for d in differences}
    nodes = tuple(replace(n, missing_on=marked[n.name].missing) if n.name in marked else n for n in nodes)
    where = {n: tuple(s for s, held in per_server.items() if n in held) for n in names}
    return NodeListing(nodes, (A, B), where, differences, {}, "s")


def text_of(html: str) -> str:
    return re.sub(r"<[^>]+>", "", html)


# -- node listings ----------------------------------------------------------------------------------------------------
def test_nodes_table_flags_what_one_server_lacks() -> None:
    listing = listing_of("KSampler", "SlowSteps")
    text = catalog.nodes_text(listing)
    assert text.splitlines()[:2] == [
        "2 node types matching 's' on http://a:8188 and http://b:8188",
        "warning: node type SlowSteps is on http://a:8188 only: a prompt that uses it is refused by http://b:8188",
    ]
    assert re.search(r"SlowSteps\s+Slow Steps \(test\)\s+comfy_notebook_tests\s+http://b:8188$", text, re.M)
    html = catalog.nodes_html(listing)
    assert html.count('class="comfy-catalog-warning"') == 1
    assert "<th>missing on</th>" in html and "<td>http://b:8188</td>" in html
    inputs = "model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image, denoise"
    assert f"<td>{inputs}</td>" in html
    assert "overflow: auto" in html  # 500 node types scroll inside the output


def test_nodes_without_disagreements_have_no_warning_or_column() -> None:
    listing = listing_of("KSampler", "EmptyImage", missing=())
    assert "warning" not in catalog.nodes_text(listing)
    html = catalog.nodes_html(listing)
    assert "comfy-catalog-warning" not in html and "missing on" not in html
    empty = NodeListing((), (A,), {}, filter="zebra")
    assert "no node type matches" in catalog.nodes_text(empty)
    assert "0 node types matching &#x27;zebra&#x27; on http://a:8188" in catalog.nodes_html(empty)


def test_hostile_names_and_credentials_never_reach_the_page() -> None:
    evil = parse_node(
        HOSTILE,
        {"input": {"required": {HOSTILE: [[HOSTILE, "ok"], {"default": HOSTILE}]}}, "display_name": HOSTILE,
         "category": HOSTILE, "description": HOSTILE, "output": [HOSTILE], "output_name": [HOSTILE]},
        server=SECRET,
    )  # fmt: skip
    note = f"{SECRET} did not answer GET /object_info: {HOSTILE}"
    listing = NodeListing((evil,), (SECRET,), {HOSTILE: (SECRET,)}, (), {SECRET: note})
    models = ModelListing("loras", (HOSTILE,), {SECRET: (HOSTILE,), A: ()},
                          (Disagreement(MODEL, HOSTILE, (SECRET,), (A,), "loras"),))  # fmt: skip
    for html in (catalog.nodes_html(listing), catalog.node_html(evil), catalog.models_html(models)):
        assert "<script>" not in html and "&lt;script&gt;" in html
        assert "s3cret" not in html and "alice" not in html
    for text in (catalog.nodes_text(listing), catalog.node_text(evil), catalog.models_text(models)):
        assert "s3cret" not in text and "alice" not in text


# -- one node type ----------------------------------------------------------------------------------------------------
def test_one_node_type_inputs_and_outputs() -> None:
    text = catalog.node_text(NODES_A["KSampler"])
    lines = text.splitlines()
    assert lines[0] == "KSampler  [sampling, from http://a:8188]"
    assert re.search(r"^\s+seed\s+INT\s+required\s+widget\s+0\s+0\.\.18446744073709551615$", text, re.M)
    assert re.search(r"^\s+cfg\s+FLOAT\s+required\s+widget\s+8\.0\s+0\.\.100 step 0\.1$", text, re.M)
    assert re.search(r"^\s+model\s+MODEL\s+required\s+link$", text, re.M)
    assert re.search(r"sampler_name .*euler, euler_cfg_pp.* \.\.\. and \d+ more$", text, re.M)
    assert re.search(r"^\s+0\s+LATENT\s+LATENT$", text, re.M)
    html = catalog.node_html(NODES_A["LoadImageOutput"])
    assert "experimental" in html and "(filled by the page)" in html
    assert "(none on this server)" in catalog.node_text(NODES_A["LoadImage"])
    save = catalog.node_text(NODES_A["SaveImage"])
    assert "output node" in save.splitlines()[0] and "outputs: none" in save
    noted = replace(NODES_A["SlowSteps"], notes=("node type SlowSteps is on a only",))
    assert catalog.node_text(noted).splitlines()[1] == "warning: node type SlowSteps is on a only"
    assert 'class="comfy-catalog-warning"' in catalog.node_html(noted)


# -- model folders and files ------------------------------------------------------------------------------------------
def test_models_per_server_columns_and_warnings() -> None:
    loras = SAMPLE["models_loras"]  # what two real servers answered for /models/loras
    per_server = {A: tuple(loras["a"]), B: tuple(loras["b"])}
    listing = ModelListing("loras", tuple(loras["a"]), per_server, compare(MODEL, per_server, folder="loras"))
    text = catalog.models_text(listing)
    assert text.splitlines()[:2] == [
        "2 files in 'loras' on http://a:8188 and http://b:8188",
        "warning: 2 files of loras (only_a.safetensors, sub/deep.safetensors) are on http://a:8188 only: a prompt "
        "that uses one fails validation on http://b:8188",
    ]
    assert re.search(r"^\s+sub/deep\.safetensors\s+\u2713\s+-$", text, re.M)
    html = catalog.models_html(listing)
    assert "<th>http://a:8188</th><th>http://b:8188</th>" in html and html.count("comfy-catalog-warning") == 1
    folders = ModelListing(None, ("checkpoints", "extras"), {A: ("checkpoints", "extras"), B: ("checkpoints",)},
                           (Disagreement(FOLDER, "extras", (A,), (B,)),))  # fmt: skip
    expected = "model folder 'extras' is on http://a:8188 only: http://b:8188 has no such folder"
    assert f"warning: {expected}" in catalog.models_text(folders)
    one = ModelListing("checkpoints", ("x.safetensors",), {A: ("x.safetensors",)})
    assert catalog.models_text(one).splitlines() == [
        "1 file in 'checkpoints' on http://a:8188",
        "  file",
        "  x.safetensors",
    ]


# -- the magics -------------------------------------------------------------------------------------------------------
@pytest.fixture
def bare(shell: InteractiveShell) -> InteractiveShell:
    """The extension loaded with no server at all (usage errors need none)."""
    shell.run_line_magic("load_ext", "comfy_notebook")
    return shell


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("node", r"usage: %comfy node NAME \[--server URL\]"),
        ("node --server http://h:1", r"usage: %comfy node NAME"),
        ("nodes --server", "--server needs a URL"),
        ("models --server", "--server needs a URL"),
    ],
)
def test_catalog_usage_errors(bare: InteractiveShell, line: str, message: str) -> None:
    with pytest.raises(UsageError, match=message) as info:
        bare.run_line_magic("comfy", line)
    assert "\n" not in str(info.value)


def test_without_servers_the_cell_fails_with_one_clear_line(bare: InteractiveShell, capsys) -> None:
    for line in ("nodes", "node KSampler", "models loras"):
        outcome = bare.run_cell(f"%comfy {line}")
        assert not outcome.success
        out = capsys.readouterr()
        assert "ServerUnavailable\x1b[0m: no ComfyUI server is configured" in out.out + out.err
        assert "Traceback" not in out.out + out.err


def test_help_lists_the_catalog_commands() -> None:
    for command in ("%comfy nodes [FILTER]", "%comfy node NAME", "%comfy models [FOLDER]", "--server URL"):
        assert command in HELP


def test_formatters_show_tables_and_leave_with_the_extension(bare: InteractiveShell) -> None:
    listing = listing_of("KSampler", "SlowSteps")
    bundle = bare.display_formatter.format(listing)[0]
    assert bundle["text/html"] == catalog.nodes_html(listing)
    assert bundle["text/plain"] == catalog.nodes_text(listing)
    assert bare.display_formatter.format([listing])[0]["text/plain"] == f"[{listing!r}]"  # inside a list: the repr
    slow = NODES_A["SlowSteps"]
    assert bare.display_formatter.format(slow)[0]["text/html"] == catalog.node_html(slow)
    bare.run_line_magic("unload_ext", "comfy_notebook")
    html = bare.display_formatter.formatters["text/html"]
    assert all(cls not in html.type_printers for cls in (NodeListing, NodeInfo, ModelListing))
    assert "text/html" not in bare.display_formatter.format(listing)[0]
    assert text_of(catalog.nodes_html(listing)).startswith("2 node types")
