"""Local names for server-supplied file names: a hostile server must not choose where a file lands."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from comfy_notebook.core.paths import safe_name, safe_relative


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("ComfyUI_00001_.png", "ComfyUI_00001_.png"),
        ("my image (1).png", "my image (1).png"),
        ("../../etc/passwd", "passwd"),
        ("..\\..\\Windows\\win.ini", "win.ini"),
        ("/etc/shadow", "shadow"),
        ("a/b/c.png", "c.png"),
        ("..", "image"),
        (".", "image"),
        ("", "image"),
        ("dir/", "image"),
        ("...", "image"),
        (".bashrc", "bashrc"),
        ("name\x00.png", "name_.png"),
        ("a:b*c?.png", "a_b_c_.png"),
        ("  spaced.png  ", "spaced.png"),
        ("trailing.", "trailing"),
        ("画像.png", "_.png"),
    ],
)
def test_safe_name(name: str, expected: str) -> None:
    assert safe_name(name) == expected


def test_safe_name_fallback_and_length() -> None:
    assert safe_name("..", fallback="preview") == "preview"
    assert len(safe_name("a" * 1000 + ".png")) == 150


@pytest.mark.parametrize(
    ("subfolder", "filename", "expected"),
    [
        ("", "ComfyUI_00001_.png", "ComfyUI_00001_.png"),
        ("batch/2024", "x.png", "batch/2024/x.png"),
        ("../../etc", "../passwd", "etc/passwd"),
        ("/abs/dir", "f.png", "abs/dir/f.png"),
        ("a\\..\\b", "f.png", "a/b/f.png"),
        ("a//b/./c", "f.png", "a/b/c/f.png"),
        ("...", "f.png", "_/f.png"),
        (" .. ", "f.png", "_/f.png"),
        ("C:\\Windows", "f.png", "C_/Windows/f.png"),
        ("sub", "", "sub/image"),
    ],
)
def test_safe_relative(subfolder: str, filename: str, expected: str) -> None:
    assert safe_relative(subfolder, filename) == expected


FRAGMENTS = ["/", "\\", ".", "..", "../", "..\\", " ", "a", "~", ":", "\x00", "\n", "\u2028", "\uff0e"]
hostile = st.text() | st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=3), max_size=12).map("".join)


def assert_safe_component(part: str) -> None:
    assert part not in {"", ".", ".."}
    assert "/" not in part and "\\" not in part and "\x00" not in part
    assert not part.startswith(".")
    assert len(part) <= 150


@settings(max_examples=200, deadline=None)
@given(hostile)
def test_safe_name_is_always_one_harmless_component(name: str) -> None:
    assert_safe_component(safe_name(name))


@settings(max_examples=200, deadline=None)
@given(hostile, hostile)
def test_safe_relative_always_stays_inside_the_target_folder(subfolder: str, filename: str) -> None:
    relative = safe_relative(subfolder, filename)
    assert not relative.startswith("/")
    assert "\\" not in relative
    for part in relative.split("/"):
        assert_safe_component(part)
    base = Path("/x")
    resolved = (base / relative).resolve()
    assert resolved.is_relative_to(base.resolve())
    assert resolved != base.resolve()
    assert PurePosixPath(relative).parts == tuple(relative.split("/"))
