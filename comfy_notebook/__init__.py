"""comfy-notebook: run ComfyUI workflows from Jupyter on a pool of servers without losing a result.

    import comfy_notebook as cn
    cn.set_servers(["http://127.0.0.1:8188", "http://127.0.0.1:8189"])
    result = cn.run(workflow)          # or: task = cn.submit(workflow); task.result()
    result.images, cn.get_status(), cn.reset()
    cn.nodes("sampler"), cn.node("KSampler"), cn.models("checkpoints")   # what the servers can run
    sweep = cn.sweep(workflow, {"3.seed": range(4), "3.cfg": [5, 7]}).wait()   # sweep.results, sweep.save(dir)

In IPython/Jupyter: ``%load_ext comfy_notebook``, then ``%comfy`` and ``%%comfy``.
"""

from comfy_notebook.api import (
    get_engine,
    get_status,
    lock,
    models,
    node,
    nodes,
    reset,
    run,
    set_mode,
    set_servers,
    shutdown,
    submit,
    submit_many,
    sweep,
    to_api,
)
from comfy_notebook.core.errors import (
    Cancelled,
    ComfyError,
    ConfigError,
    ExecutionError,
    NoAffinity,
    NotFound,
    PromptInterrupted,
    PromptLost,
    ProtocolError,
    ServerUnavailable,
    ValidationError,
    WorkflowError,
)
from comfy_notebook.core.listing import ModelListing, NodeListing
from comfy_notebook.core.nodes import NodeInfo
from comfy_notebook.core.servers import ServerSpec
from comfy_notebook.core.uploads import Upload, UploadError
from comfy_notebook.core.workflow import load_workflow
from comfy_notebook.engine.engine import Engine, EngineOptions
from comfy_notebook.engine.files import OutputFile
from comfy_notebook.engine.http import HttpOptions
from comfy_notebook.engine.sweep import Sweep, SweepPoint
from comfy_notebook.engine.task import Result, Task

__version__ = "0.1.0"

__all__ = [
    "Cancelled",
    "ComfyError",
    "ConfigError",
    "Engine",
    "EngineOptions",
    "ExecutionError",
    "HttpOptions",
    "ModelListing",
    "NoAffinity",
    "NodeInfo",
    "NodeListing",
    "NotFound",
    "OutputFile",
    "PromptInterrupted",
    "PromptLost",
    "ProtocolError",
    "Result",
    "ServerSpec",
    "ServerUnavailable",
    "Sweep",
    "SweepPoint",
    "Task",
    "Upload",
    "UploadError",
    "ValidationError",
    "WorkflowError",
    "get_engine",
    "get_status",
    "load_workflow",
    "lock",
    "models",
    "node",
    "nodes",
    "reset",
    "run",
    "set_mode",
    "set_servers",
    "shutdown",
    "submit",
    "submit_many",
    "sweep",
    "to_api",
]


def load_ipython_extension(ipython: object) -> None:
    """``%load_ext comfy_notebook``."""
    from comfy_notebook.notebook.extension import load  # noqa: PLC0415 - keep IPython out of plain imports

    load(ipython)


def unload_ipython_extension(ipython: object) -> None:
    """``%unload_ext comfy_notebook``: removes the magics, closes widgets, stops the engine thread."""
    from comfy_notebook.notebook.extension import unload  # noqa: PLC0415

    unload(ipython)
