"""The kernel-global engine behind ``comfy_notebook.set_servers/submit/run/get_status/reset``.

One engine per process (per kernel): every cell, the magics and the status panel share its lock and pool.
It starts lazily on first use, reading ``COMFY_SERVERS`` (URLs separated by commas or spaces) when no servers
were set explicitly, and ``COMFY_MODE`` (``lock`` or ``pool``) when no options were given.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from comfy_notebook.core.listing import ModelListing, NodeListing
from comfy_notebook.core.nodes import NodeInfo
from comfy_notebook.core.workflow import Workflow
from comfy_notebook.engine.engine import Engine, EngineOptions, ServerLike
from comfy_notebook.engine.sweep import Sweep
from comfy_notebook.engine.task import Result, Task


class _Shared:
    """The process-wide engine slot, guarded so two threads never start two engines."""

    engine: Engine | None = None
    guard = threading.Lock()


ENV_SERVERS = "COMFY_SERVERS"
ENV_MODE = "COMFY_MODE"


def servers_from_env() -> list[str]:
    return [url for url in re.split(r"[,\s]+", os.environ.get(ENV_SERVERS, "")) if url]


def options_from_env() -> EngineOptions:
    mode = os.environ.get(ENV_MODE, "").strip().lower()
    return EngineOptions(mode=mode) if mode else EngineOptions()


def get_engine(options: EngineOptions | None = None) -> Engine:
    """The shared engine, started on first use."""
    with _Shared.guard:
        if _Shared.engine is None or _Shared.engine.closed:
            _Shared.engine = Engine(servers_from_env(), options or options_from_env())
        return _Shared.engine


def set_servers(servers: Iterable[ServerLike]) -> list[str]:
    """Set the pool: URLs (``http://user:pass@host:port/prefix``) or ``{"url": ..., "token": ..., "headers": ...}``.
    Returns the servers' public URLs (credentials removed)."""
    if isinstance(servers, str):
        servers = [servers]
    return get_engine().set_servers(servers)


def set_mode(mode: str) -> str:
    """``"lock"`` (the default: the original fix, new work goes to the locked server) or ``"pool"`` (every
    server at once: prompts wait client-side and go to whichever server has room)."""
    return get_engine().set_mode(mode)


def submit(workflow: Workflow | str | Path, *, server: ServerLike | None = None, progress: bool = True) -> Task:
    """Queue a workflow and return its ``Task`` at once (``progress=False``: no per-prompt events)."""
    return get_engine().submit(workflow, server=server, progress=progress)


def submit_many(
    workflows: Iterable[Workflow | str | Path], *, server: ServerLike | None = None, progress: bool = False
) -> list[Task]:
    """Queue many workflows at once: the bulk path (no per-prompt events unless ``progress=True``; files the
    server keeps on disk are fetched on first use)."""
    return get_engine().submit_many(workflows, server=server, progress=progress)


def run(workflow: Workflow | str | Path, *, server: ServerLike | None = None, timeout: float | None = None) -> Result:
    """Submit and wait: the ``Result``, or the prompt's error."""
    return get_engine().run(workflow, server=server, timeout=timeout)


def sweep(
    workflow: Workflow | str | Path,
    over: Mapping[str, Iterable[Any]] | Iterable[tuple[str, Iterable[Any]]],
    *,
    zip: bool = False,  # the name users expect (``zip=True`` for paired lists)
    server: ServerLike | None = None,
    progress: bool = True,
) -> Sweep:
    """Run ``workflow`` over every combination of ``over`` (``{"3.seed": range(8), "KSampler.cfg": [5, 7]}``; keys
    are ``node_id.input`` or ``title.input``/``class_type.input`` naming one node), or with ``zip=True`` the i-th
    values together. Checked before anything is queued; returns the ``Sweep`` at once (``.wait()``, ``.results``,
    ``.save(folder)``, ``.cancel()``). In pool mode the points spread over every server."""
    return get_engine().sweep(workflow, over, zip=zip, server=server, progress=progress)


def get_status() -> dict[str, Any]:
    """The lock and pool status (JSON-serialisable, never credentials)."""
    return get_engine().get_status()


def reset() -> dict[str, Any]:
    """The manual reset: clear the lock, close sockets (1000), cancel pending tasks. Returns the new status."""
    return get_engine().reset()


def lock(server: ServerLike) -> str:
    """Pin the lock to one server of the pool by hand."""
    return get_engine().pin(server)


def nodes(filter: str | None = None, *, server: ServerLike | None = None) -> NodeListing:
    """The node types of the pool's servers whose name, display name or category contains ``filter`` (any case);
    node types only some servers have are noted (a prompt that uses one is refused by the others)."""
    return get_engine().nodes(filter, server)


def node(name: str, *, server: ServerLike | None = None) -> NodeInfo:
    """One node type: its inputs (type, default, range, choices) and outputs; ``NotFound`` if no server has it."""
    return get_engine().node(name, server)


def models(folder: str | None = None, *, server: ServerLike | None = None) -> ModelListing:
    """The files in a model folder (``"checkpoints"``, ``"loras"``, ...) per server, or the folder names; files only
    some servers have are noted (a prompt that uses one fails validation on the others)."""
    return get_engine().models(folder, server)


def to_api(workflow: Workflow | str | Path, *, server: ServerLike | None = None) -> Workflow:
    """A saved UI-format workflow (dict, JSON text or path) in the API format, converted as the ComfyUI page does
    when it queues it, with the node definitions of ``server`` (else the locked or first answering one).
    ``run``, ``submit`` and ``%%comfy`` accept UI-format workflows directly; this shows what they send."""
    return get_engine().to_api(workflow, server)


def shutdown() -> None:
    """Stop the shared engine and its thread (the next call starts a fresh one)."""
    with _Shared.guard:
        engine, _Shared.engine = _Shared.engine, None
    if engine is not None:
        engine.close()
