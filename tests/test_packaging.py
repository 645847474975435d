"""Packaging facts the code relies on: the Python floor, the top-level package, the typed marker."""

from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path

import comfy_notebook

ROOT = Path(__file__).resolve().parent.parent


def test_python_311_is_the_floor() -> None:
    """3.10's ``asyncio.TimeoutError`` is not the builtin ``TimeoutError`` the engine catches: a handshake timeout
    there would be an internal error and recovery could hang. So 3.10 is not supported, and the metadata says so."""
    assert importlib.metadata.metadata("comfy-notebook")["Requires-Python"] == ">=3.11"
    assert sys.version_info >= (3, 11)


def test_the_package_is_at_the_top_level_and_typed() -> None:
    package = Path(comfy_notebook.__file__).resolve().parent
    assert package == ROOT / "comfy_notebook"
    assert (package / "py.typed").exists()
    assert not (ROOT / "src").exists()
