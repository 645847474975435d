"""Notebook-layer fixtures: an in-process IPython shell (the singleton, so ``display()`` reaches its formatters),
the extension loaded with widgets forced on, and fake ComfyUI servers."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell
from traitlets.config import Config

from comfy_notebook import api
from comfy_notebook.engine.loop import THREAD_NAME
from comfy_notebook.notebook import extension
from comfy_notebook.notebook.magics import ComfyMagics
from tests.fakes.fake_comfy import FakeComfy, running_fake

#: Two nodes the fake runs: an image source and an output node (with ``$``-variables where a test needs them).
WORKFLOW = """{
  "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8}},
  "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "nb"}}
}"""


def engine_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == THREAD_NAME]


def make_shell(config: Config | None = None) -> InteractiveShell:
    cfg = config or Config()
    cfg.HistoryManager.hist_file = ":memory:"
    InteractiveShell.clear_instance()
    return InteractiveShell.instance(config=cfg)


@pytest.fixture(autouse=True)
def _clean_process(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test starts and ends without an engine, a carried-over pool or mode, COMFY_SERVERS or COMFY_MODE."""
    monkeypatch.delenv(api.ENV_SERVERS, raising=False)
    monkeypatch.delenv(api.ENV_MODE, raising=False)
    api.shutdown()
    extension._Carry.servers = extension._Carry.mode = None
    yield
    api.shutdown()
    extension._Carry.servers = extension._Carry.mode = None


@pytest.fixture
def shell() -> Iterator[InteractiveShell]:
    ip = make_shell()
    yield ip
    extension.unload(ip)
    InteractiveShell.clear_instance()


@pytest.fixture
def fake() -> Iterator[FakeComfy]:
    yield from running_fake(steps=2)


@pytest.fixture
def fake2() -> Iterator[FakeComfy]:
    yield from running_fake(steps=2)


@pytest.fixture
def loaded(shell: InteractiveShell, fake: FakeComfy) -> InteractiveShell:
    """The extension loaded, widgets on (there is no kernel here), the pool = the fake."""
    shell.run_line_magic("load_ext", "comfy_notebook")
    shell.run_line_magic("config", "ComfyMagics.widgets = 'on'")
    shell.run_line_magic("comfy", f"servers {fake.url}")
    return shell


def magics_of(ip: InteractiveShell) -> ComfyMagics:
    magics: Any = ip.magics_manager.registry["ComfyMagics"]
    assert isinstance(magics, ComfyMagics)
    return magics
