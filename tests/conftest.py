"""Marks by folder: everything under tests/integration needs real ComfyUI servers (``real``); tests/browser needs
JupyterLab and Chromium too (``browser``). ``make check`` runs ``-m "not real and not browser and not slow"``;
``slow`` marks fault scenarios of several seconds on the fake server, which ``make test`` runs with everything
else."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
MARKS_BY_FOLDER = {"integration": ("real",), "browser": ("browser", "real")}


@pytest.hookimpl(tryfirst=True)  # before `-m` deselection looks at the marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        relative = item.path.resolve().relative_to(HERE)
        for mark in MARKS_BY_FOLDER.get(relative.parts[0], ()):
            item.add_marker(getattr(pytest.mark, mark))
