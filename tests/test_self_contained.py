"""The repository stands on its own: no tracked file points outside it, and every cited `docs/*.md` exists."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
THIS = Path(__file__).resolve().relative_to(ROOT).as_posix()
OUTSIDE = (b"/work/", b"shared/docs", b"../shared")  # notes kept outside the repository
CITATION = re.compile(r"(?<![\w./-])docs/[\w./-]*\.md")


def tracked_files(root: Path = ROOT) -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [name for name in out.decode().split("\0") if name and (root / name).is_file()]


def outside_references(root: Path, files: list[str]) -> list[str]:
    found = []
    for name in files:
        data = (root / name).read_bytes()
        found += [f"{name}: {marker.decode()}" for marker in OUTSIDE if marker in data]
    return found


def missing_citations(root: Path, files: list[str]) -> list[str]:
    missing = []
    for name in files:
        if name.endswith((".py", ".md")):
            text = (root / name).read_text(encoding="utf-8", errors="replace")
            missing += [f"{name}: {cited}" for cited in CITATION.findall(text) if not (root / cited).is_file()]
    return missing


def test_no_file_points_outside_the_repository() -> None:
    files = [name for name in tracked_files() if name != THIS]
    assert files, "git ls-files found nothing"
    assert outside_references(ROOT, files) == []


def test_cited_docs_exist() -> None:
    assert missing_citations(ROOT, tracked_files()) == []


def test_checks_catch_violations(tmp_path: Path) -> None:
    gone = "/".join(("docs", "gone.md"))  # built, so that this file itself cites no missing doc
    (tmp_path / "mod.py").write_text(f'"""See docs/protocol.md and {gone}."""\n', encoding="utf-8")
    (tmp_path / "notes.md").write_text("Read /work/shared/docs/x.md and ../shared/y.md\n", encoding="utf-8")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "protocol.md").write_text("# protocol\n", encoding="utf-8")
    files = ["mod.py", "notes.md", "docs/protocol.md"]
    assert missing_citations(tmp_path, files) == [f"mod.py: {gone}"]
    assert len(outside_references(tmp_path, files)) == 3
