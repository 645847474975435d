"""What the servers can run, asked of REAL ComfyUI servers: node types (``/object_info``, kept per server until the
server may have restarted) and model files (``/models``), per server, and what the servers disagree about.

The shared ``real_pool`` (three identical servers) shows the listings, the test node described as its code
defines it, clear errors, the cache and a restart. A pool of two servers of this module's own disagrees on purpose:
only the first has the test custom nodes, a LoRA file and a model folder of its own (``LocalPool.start(...,
model_paths=...)``; nothing is written into the shared ComfyUI environment). There the notes are checked against
what the servers really do with a prompt that uses what one of them lacks.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

from comfy_notebook import api
from comfy_notebook.core.errors import ConfigError, ExecutionError, NotFound, ServerUnavailable, ValidationError
from comfy_notebook.core.listing import FOLDER, MODEL, NODE
from comfy_notebook.engine.engine import Engine
from comfy_notebook.notebook import extension
from comfy_notebook.tools.local_pool import LocalPool, PortInUseError, find_free_base_port
from tests.engine.conftest import FAST, POOL
from tests.fakes.fake_comfy import wait_until
from tests.integration.conftest import TEST_NODES_DIR, all_up
from tests.notebook.conftest import make_shell
from tests.workflows import slow_workflow

TEST_NODES = {"SlowSteps", "RaiseError"}


@pytest.fixture
def engine(real_pool: LocalPool) -> Iterator[Engine]:
    eng = Engine(real_pool.urls, FAST)
    yield eng
    eng.close()


# -- three identical servers ------------------------------------------------------------------------------------------
def test_nodes_are_listed_per_server_and_agree(engine: Engine, real_pool: LocalPool) -> None:
    listing = engine.nodes()
    assert listing.servers == tuple(real_pool.urls)
    assert len(listing) > 400 and {"KSampler", "EmptyImage", "SaveImage", *TEST_NODES} <= set(listing.names)
    assert listing.disagreements == () and listing.notes == () and listing.unreachable == {}
    assert all(listing.where[name] == tuple(real_pool.urls) for name in listing.names)
    assert list(listing.names) == sorted(listing.names, key=str.casefold)
    found = engine.nodes("slow step")  # the display name "Slow Steps (test)", any case
    assert found.names == ("SlowSteps",) and found.filter == "slow step"
    assert "SaveImage" in engine.nodes("IMAGE").names  # by category ("image")
    assert engine.nodes("no such thing anywhere").names == ()


def test_the_test_node_is_described_as_its_code_defines_it(engine: Engine, real_pool: LocalPool) -> None:
    node = engine.node("SlowSteps")
    assert (node.display_name, node.category, node.output_node) == ("Slow Steps (test)", "comfy_notebook_tests", False)
    brief = [(i.name, i.type, i.required, i.widget, i.default, i.min, i.max, i.step) for i in node.inputs]
    assert brief == [
        ("image", "IMAGE", True, False, None, None, None, None),
        ("steps", "INT", True, True, 5, 1, 10000, None),
        ("step_seconds", "FLOAT", True, True, 0.1, 0.0, 60.0, 0.01),
    ]
    assert [(o.name, o.type, o.is_list) for o in node.outputs] == [("IMAGE", "IMAGE", False)]
    assert node.server == real_pool.urls[0] and node.missing_on == () and node.notes == ()
    direct = httpx.get(f"{real_pool.urls[1]}/object_info/SlowSteps", timeout=10).json()["SlowSteps"]
    assert [i.name for i in node.inputs] == direct["input_order"]["required"]
    raising = engine.node("RaiseError", server=real_pool.urls[2])
    assert raising.server == real_pool.urls[2] and raising.input("message").default == "comfy_notebook test failure"


def test_unknown_node_type_is_a_clear_error(engine: Engine, real_pool: LocalPool) -> None:
    with pytest.raises(NotFound) as info:
        engine.node("Nope")
    message = str(info.value)
    assert message.startswith("no node type 'Nope' on ") and all(url in message for url in real_pool.urls)
    with pytest.raises(NotFound, match=r"did you mean SlowSteps\?"):
        engine.node("slowsteps")
    with pytest.raises(ServerUnavailable, match="is not in the server pool"):
        engine.node("SlowSteps", server="http://127.0.0.1:9")


def test_models_listed_per_folder(engine: Engine, real_pool: LocalPool) -> None:
    folders = engine.models()
    assert folders.folder is None and {"checkpoints", "loras", "configs", "custom_nodes"} <= set(folders.names)
    assert set(folders.per_server) == set(real_pool.urls) and folders.notes == ()
    checkpoints = engine.models("checkpoints")  # the shared environment has none (its placeholder is filtered out)
    assert checkpoints.names == () and checkpoints.per_server == {url: () for url in real_pool.urls}
    configs = engine.models("configs")  # ComfyUI's own .yaml configs: on every server
    assert "v1-inference.yaml" in configs.names and configs.disagreements == ()
    nodes = engine.models("custom_nodes")  # a folder without extensions: every file, by relative path
    assert "comfy_notebook_test_nodes/__init__.py" in nodes.names
    with pytest.raises(NotFound, match=r"no model folder 'unet' on .* \(did you mean diffusion_models\?\)"):
        engine.models("unet")  # a legacy name loaders accept, /models/{folder} does not
    with pytest.raises(NotFound, match=r"no model folder 'nope' on .*\(folders: checkpoints, configs, loras"):
        engine.models("nope")
    with pytest.raises(ConfigError, match="not a model folder name"):
        engine.models("../loras")


def test_object_info_is_fetched_once_and_shared(real_pool: LocalPool) -> None:
    urls = real_pool.urls
    eng = Engine(urls, FAST)
    try:
        gate = threading.Barrier(6)
        answers: list[int] = []

        def ask() -> None:
            gate.wait()
            answers.append(len(eng.nodes()))

        threads = [threading.Thread(target=ask) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert len(answers) == 6 and len(set(answers)) == 1
        assert eng.discovery.fetches == {url: 1 for url in urls}  # six callers at once: one request per server
        raw = eng.object_info()
        assert eng.object_info() is raw and "SlowSteps" in raw  # the kept body, not a new one
        eng.node("KSampler")
        eng.nodes("sampler")
        assert eng.discovery.fetches == {url: 1 for url in urls}
        eng.set_servers(urls[:2])  # removed: forgotten, so asked afresh when it is back
        eng.set_servers(urls)
        eng.nodes()
        assert eng.discovery.fetches == {urls[0]: 1, urls[1]: 1, urls[2]: 2}
        eng.reset()  # forgets every server
        assert eng.object_info() is not raw
        assert eng.discovery.fetches == {urls[0]: 2, urls[1]: 1, urls[2]: 2}
        eng.pin(urls[1])  # object_info() without a server: the locked one
        eng.object_info()
        assert eng.discovery.fetches[urls[1]] == 2
    finally:
        eng.close()


def test_a_restart_drops_the_kept_copy(real_pool: LocalPool) -> None:
    urls = real_pool.urls
    eng = Engine(urls, POOL)  # pool mode keeps a socket open to every server
    try:
        wait_until(lambda: len(eng._connections) == 3 and all(c.is_open for c in eng._connections.values()), 30)
        conn = eng._connections[urls[2]]
        eng.nodes()
        assert eng.discovery.fetches == {url: 1 for url in urls}
        before = conn.generation
        real_pool.kill(2)
        wait_until(lambda: not conn.is_open, 10)
        real_pool.restart(2)  # nothing asked meanwhile: only the socket can tell
        wait_until(lambda: conn.generation > before and conn.is_open, 90)  # the pool reopened its socket
        assert eng.nodes().servers == tuple(urls)
        assert eng.discovery.fetches == {urls[0]: 1, urls[1]: 1, urls[2]: 2}  # the others' copies still kept
    finally:
        eng.close()
        all_up(real_pool)


# -- two servers that disagree ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Split:
    urls: list[str]
    folders: list[dict[str, list[Path]]]  # per server: its own model folders


@pytest.fixture(scope="module")
def split_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Split]:
    """Two real servers: the first with the test nodes, ``loras/lora_x.safetensors`` and a ``comfy_test_extras``
    folder; both with ``loras/shared.safetensors`` and ``checkpoints/both.safetensors``. The files are never loaded
    by a passing test, so a few bytes do."""
    root = tmp_path_factory.mktemp("split-pool")
    paths: list[dict[str, list[Path]]] = []
    for name, files in (
        ("first", ["loras/lora_x.safetensors", "loras/shared.safetensors", "checkpoints/both.safetensors",
                   "comfy_test_extras/thing.bin"]),
        ("second", ["loras/shared.safetensors", "checkpoints/both.safetensors"]),
    ):  # fmt: skip
        folders: dict[str, list[Path]] = {}
        for file in files:
            target = root / "models" / name / file
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(b"not a model")
            folders[target.parent.name] = [target.parent]
        paths.append(folders)
    paths[0]["custom_nodes"] = [TEST_NODES_DIR]
    with LocalPool(root / "state") as pool:
        for attempt in range(5):
            try:
                urls = pool.start(2, base_port=find_free_base_port(2), model_paths=paths)
                break
            except PortInUseError:
                if attempt == 4:
                    raise
        yield Split(urls, paths)


@pytest.fixture(scope="module")
def split(split_pool: Split) -> list[str]:
    return split_pool.urls


@pytest.fixture
def split_engine(split: list[str]) -> Iterator[Engine]:
    eng = Engine(split, FAST)
    yield eng
    eng.close()


def lora_workflow(lora: str) -> dict:
    """Checkpoint -> LoRA -> text encoding -> a preview: validation checks both file names against the lists."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "both.safetensors"}},
        "2": {"class_type": "LoraLoader", "inputs": {"model": ["1", 0], "clip": ["1", 1], "lora_name": lora,
                                                     "strength_model": 1.0, "strength_clip": 1.0}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 1], "text": "x"}},
        "4": {"class_type": "PreviewAny", "inputs": {"source": ["3", 0]}},
    }  # fmt: skip


def test_a_model_file_on_one_server_only(split_engine: Engine, split: list[str]) -> None:
    first, second = split
    loras = split_engine.models("loras")
    assert loras.names == ("lora_x.safetensors", "shared.safetensors")
    assert loras.per_server == {first: ("lora_x.safetensors", "shared.safetensors"), second: ("shared.safetensors",)}
    (only,) = loras.disagreements
    assert (only.kind, only.name, only.present, only.missing) == (MODEL, "lora_x.safetensors", (first,), (second,))
    assert loras.notes == (
        f"lora_x.safetensors (loras) is on {first} only: a prompt that uses it fails validation on {second}",
    )
    assert split_engine.models("checkpoints").disagreements == ()
    # What the note says is what the servers do:
    with pytest.raises(ValidationError) as refused:
        split_engine.run(lora_workflow("lora_x.safetensors"), server=second, timeout=60)
    (node,) = refused.value.nodes
    assert (node.class_type, node.errors[0].type, node.errors[0].input_name) == (
        "LoraLoader", "value_not_in_list", "lora_name"
    )  # fmt: skip
    with pytest.raises(ExecutionError):  # accepted by the first: it fails only at loading a fake checkpoint
        split_engine.run(lora_workflow("lora_x.safetensors"), server=first, timeout=60)


def test_folders_and_files_added_on_the_fly(split_engine: Engine, split_pool: Split) -> None:
    first, second = split_pool.urls
    folders = split_engine.models()
    assert folders.names[-1] == "comfy_test_extras" and "comfy_test_extras" not in folders.per_server[second]
    assert folders.notes == (f"model folder 'comfy_test_extras' is on {first} only: {second} has no such folder",)
    extras = split_engine.models("comfy_test_extras")
    assert extras.names == ("thing.bin",) and extras.per_server == {first: ("thing.bin",), second: ()}
    assert [(d.kind, d.missing) for d in extras.disagreements] == [(FOLDER, (second,))]
    added = split_pool.folders[1]["loras"][0] / "lora_x.safetensors"
    added.write_bytes(b"now on both")
    try:
        assert split_engine.models("loras").disagreements == ()  # never cached: a copied file counts at once
    finally:
        added.unlink()
    assert len(split_engine.models("loras").disagreements) == 1


def test_node_types_on_one_server_only(split_engine: Engine, split: list[str]) -> None:
    first, second = split
    listing = split_engine.nodes()
    only_first = {d.name for d in listing.disagreements}
    assert only_first >= TEST_NODES and all(d.present == (first,) for d in listing.disagreements)
    assert all(d.kind == NODE and d.missing == (second,) for d in listing.disagreements)
    (note,) = listing.notes  # one line for the whole pack
    assert note.startswith(f"{len(only_first)} node types (") and note.endswith(
        f"are on {first} only: a prompt that uses one is refused by {second}"
    )
    assert listing.where["SlowSteps"] == (first,) and listing.where["KSampler"] == (first, second)
    slow = split_engine.node("SlowSteps")
    assert slow.missing_on == (second,) and slow.notes == (
        f"node type SlowSteps is on {first} only: a prompt that uses it is refused by {second}",
    )
    assert split_engine.nodes("slow").names == ("SlowSteps",) and len(split_engine.nodes("slow").notes) == 1
    with pytest.raises(ValidationError, match="SlowSteps"):  # what the note says is what the server does
        split_engine.run(slow_workflow(int(time.time())), server=second, timeout=60)
    with pytest.raises(NotFound, match=f"no node type 'SlowSteps' on {second}"):
        split_engine.node("SlowSteps", server=second)


def test_a_silent_server_is_a_note_never_a_hang(split: list[str]) -> None:
    with socket.socket() as hung, socket.socket() as free:
        hung.bind(("127.0.0.1", 0))
        hung.listen(8)  # connects succeed, nothing ever answers: a hung server
        free.bind(("127.0.0.1", 0))  # bound, not listening: refused
        hung_url = f"http://127.0.0.1:{hung.getsockname()[1]}"
        dead_url = f"http://127.0.0.1:{free.getsockname()[1]}"
        eng = Engine([*split, dead_url, hung_url], FAST)
        try:
            started = time.monotonic()
            loras = eng.models("loras")
            assert time.monotonic() - started < 10  # the listing timeout is 5 s
            assert loras.servers == tuple(split) and set(loras.unreachable) == {dead_url, hung_url}
            assert loras.unreachable[hung_url] == f"{hung_url} did not answer GET /models/loras within 5 s"
            assert loras.unreachable[dead_url].startswith(f"{dead_url} did not answer GET /models/loras: ")
            assert loras.notes[-2:] == tuple(loras.unreachable.values())
        finally:
            eng.close()


def test_the_magics_show_the_disagreements(split: list[str]) -> None:
    first, second = split
    api.shutdown()
    ip = make_shell()
    try:
        ip.run_line_magic("load_ext", "comfy_notebook")
        ip.run_line_magic("comfy", f"servers {first} {second}")
        outcome = ip.run_cell("%comfy models loras")  # the cell's value: shown by the formatters
        assert outcome.success
        bundle = ip.display_formatter.format(outcome.result)[0]
        assert f"warning: lora_x.safetensors (loras) is on {first} only" in bundle["text/plain"]
        assert 'class="comfy-catalog-warning"' in bundle["text/html"] and "lora_x.safetensors" in bundle["text/html"]
        node = ip.run_line_magic("comfy", f"node SlowSteps --server {first}")
        assert node.server == first and node.input("steps").default == 5
        assert ip.run_cell("x = %comfy nodes slow\nx.names").result == ("SlowSteps",)
        with capture_output() as captured:
            failed = ip.run_cell("%comfy node NoSuchNode")
        assert not failed.success and "Traceback" not in captured.stdout
        assert f"NotFound\x1b[0m: no node type 'NoSuchNode' on {first} and {second}" in captured.stdout
    finally:
        extension.unload(ip)
        InteractiveShell.clear_instance()
        api.shutdown()
