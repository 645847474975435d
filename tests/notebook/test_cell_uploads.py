"""A ``%%comfy`` cell whose ``"$name"`` variable holds a local object (a PIL image, an array, bytes, a Path) uploads
it to the server that runs the prompt (the real-server side is in ``tests/integration/test_uploads.py``)."""

from __future__ import annotations

from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell
from PIL import Image

from comfy_notebook.core.errors import WorkflowError
from comfy_notebook.engine.task import Result
from tests.fakes.fake_comfy import FakeComfy

CELL = """{
  "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "source": "$photo"}},
  "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "nb"}}
}"""


def posted_source(fake: FakeComfy, result: Result) -> Any:
    entry = fake.history(result.prompt_id)
    assert entry is not None
    return entry["prompt"][2]["1"]["inputs"]["source"]


def test_a_pil_image_in_a_cell_variable_is_uploaded(loaded: InteractiveShell, fake: FakeComfy) -> None:
    loaded.user_ns["photo"] = Image.new("RGB", (3, 3), (5, 6, 7))
    result = loaded.run_cell_magic("comfy", "", CELL)
    assert isinstance(result, Result)
    ((kind, subfolder, name),) = fake.uploads
    assert (kind, subfolder) == ("input", "") and name.startswith("cn-") and name.endswith(".png")
    assert posted_source(fake, result) == name


def test_a_string_variable_stays_a_name_on_the_server(loaded: InteractiveShell, fake: FakeComfy) -> None:
    loaded.user_ns["photo"] = "already-there.png"
    result = loaded.run_cell_magic("comfy", "", CELL)
    assert fake.uploads == []
    assert posted_source(fake, result) == "already-there.png"


def test_an_unreadable_path_fails_the_cell_before_anything_is_queued(
    loaded: InteractiveShell, fake: FakeComfy, tmp_path: Any
) -> None:
    from pathlib import Path

    loaded.user_ns["photo"] = Path(tmp_path) / "missing.png"
    with pytest.raises(WorkflowError, match=r"\$photo: cannot read .*missing\.png"):
        loaded.run_cell_magic("comfy", "", CELL)
    assert fake.uploads == [] and fake.history_ids == []
