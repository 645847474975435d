"""``%load_ext`` / ``%reload_ext`` / ``%unload_ext comfy_notebook``.

IPython has no API to unregister magics, so ``unload`` removes them from the magics tables by hand, closes every
widget (ipywidgets keeps them alive until ``close()``), unregisters the formatters and stops the engine thread:
three reloads leave exactly one ``comfy-notebook-io`` thread, an unload leaves none. The server pool (with its
credentials, in memory only) and the mode are carried over to the next load, so ``%reload_ext`` forgets neither.
While loaded, every blocking wait of the engine (``task.result()``, ``cn.run``, a sweep's ``wait()``) goes through
``uipoll.ui_wait``, so widget buttons answer while a cell blocks.
"""

from __future__ import annotations

from typing import Any

from comfy_notebook import api
from comfy_notebook.core.servers import ServerSpec
from comfy_notebook.engine import task
from comfy_notebook.notebook.magics import ComfyMagics
from comfy_notebook.notebook.uipoll import ui_wait

MAGIC_NAME = "comfy"


class _Carry:
    """The pool and mode of the last unloaded engine, restored by the next load unless the config sets them."""

    servers: list[ServerSpec] | None = None
    mode: str | None = None


def load(ip: Any) -> None:
    """Register the magics and formatters and start the engine (reading config, a carried pool, COMFY_SERVERS)."""
    if ip is None:
        return
    if ComfyMagics.__name__ in ip.magics_manager.registry:  # loaded without an unload: drop the stale one first
        unload(ip)
    magics = ComfyMagics(shell=ip)
    ip.register_magics(magics)
    task.set_waiter(ui_wait)
    carried, _Carry.servers = _Carry.servers, None
    carried_mode, _Carry.mode = _Carry.mode, None
    try:
        magics.start(carried, carried_mode)
    except Exception:
        unload(ip)
        if carried is not None:  # a failed load (say a bad COMFY_MODE) loses nothing
            _Carry.servers = carried
        if carried_mode is not None:
            _Carry.mode = carried_mode
        raise


def unload(ip: Any) -> None:
    """Remove the magics, close the panel and progress widgets, unregister the formatters, stop the engine."""
    if ip is None:
        return
    manager = ip.magics_manager
    magics = manager.registry.pop(ComfyMagics.__name__, None)
    for kind in ("line", "cell"):
        fn = manager.magics[kind].get(MAGIC_NAME)
        if fn is not None and isinstance(getattr(fn, "__self__", None), ComfyMagics):
            del manager.magics[kind][MAGIC_NAME]
    if isinstance(magics, ComfyMagics):
        magics.close()
    previous = task.set_waiter(None)
    if previous is not ui_wait:  # someone else's waiter: leave it in place
        task.set_waiter(previous)
    ip.configurables[:] = [c for c in ip.configurables if not isinstance(c, ComfyMagics)]
    engine = api._Shared.engine  # the running engine only: unloading must never start one
    if engine is not None and not engine.closed:
        _Carry.servers = [record.spec for record in list(engine.pool.records.values())]
        _Carry.mode = engine.mode
    api.shutdown()
