"""What ``bench/pool.py``'s parts share: the servers, the workflow, warming up and the helpers around them."""

from __future__ import annotations

import math
import os
import platform
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import comfy_notebook as cn
from comfy_notebook.tools.local_pool import LocalPool, PortInUseError, ServerStartError, find_free_base_port

ROOT = Path(__file__).resolve().parent.parent
TEST_NODES_DIR = ROOT / "tests" / "comfy_nodes"
RUN = uuid.uuid4().hex[:8]
SERVERS = 4
MIN_MS, MAX_MS = 50, 300
_PORT_ATTEMPTS = 5


# --------------------------------------------------------------------------------------------------------------------
def workflow(color: int, seconds: float, folder: str) -> dict[str, Any]:
    """``tests/workflows.slow_workflow`` with one step of ``seconds`` and a fresh output folder per run (SaveImage
    lists its folder on every save, so a shared folder would slow every later run). ``color`` keeps each graph
    distinct, so ComfyUI never serves it from its cache."""
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": color}},
        "2": {"class_type": "SlowSteps", "inputs": {"image": ["1", 0], "steps": 1, "step_seconds": seconds}},
        "3": {
            "class_type": "SaveImage",
            "inputs": {"images": ["2", 0], "filename_prefix": f"bench-pool/{RUN}/{folder}/img"},
        },
    }


class Colors:
    """Distinct EmptyImage colors for the whole run (the input's maximum is 0xFFFFFF)."""

    def __init__(self) -> None:
        self._next = 1
        self._lock = threading.Lock()

    def take(self) -> int:
        with self._lock:
            self._next += 1
            return self._next


COLORS = Colors()


def pct(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (p99 of 20 values is the maximum)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[min(len(ordered), rank) - 1]


def start_pool(state_dir: Path, speeds: list[float]) -> tuple[LocalPool, list[str]]:
    """Servers with the test nodes on ports below the kernel's ephemeral range (32768 and up here): a port there can
    be taken as the source port of any outgoing connection, ours included, between our check and the server's bind,
    or while a killed server is down before its restart on the same port."""
    pool = LocalPool(state_dir)
    for attempt in range(_PORT_ATTEMPTS):
        try:
            base = find_free_base_port(len(speeds), low=20000, high=32000)
            return pool, pool.start(len(speeds), base_port=base, custom_nodes=[TEST_NODES_DIR], speeds=speeds)
        except (PortInUseError, ServerStartError) as exc:
            taken = isinstance(exc, PortInUseError) or "address already in use" in str(exc).lower()
            if attempt == _PORT_ATTEMPTS - 1 or not taken:
                raise
            print(f"  a port was taken meanwhile, trying other ports: {str(exc).splitlines()[0]}", flush=True)
    raise AssertionError("unreachable")


def clear_history(urls: Sequence[str]) -> None:
    """Every run starts from an empty history (thousands of entries slow ComfyUI down, see bench/run.py)."""
    for url in urls:
        httpx.post(url + "/history", json={"clear": True}, timeout=30).raise_for_status()


def foreign_comfy_processes(ours: set[int]) -> int:
    """ComfyUI servers (``python .../main.py``) running on this machine that we did not start."""
    count = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in ours:
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(a.endswith(b"main.py") for a in argv[1:3]) and b"python" in argv[0]:
            count += 1
    return count


def our_pids(pool: LocalPool) -> set[int]:
    return {s.pid for s in pool.status(probe_timeout=0.5) if s.pid is not None}


def wait_sockets_open(engine: cn.Engine, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(s["connection_state"] == "OPEN" for s in engine.get_status()["servers"]):
            return
        time.sleep(0.02)
    raise RuntimeError("the engine did not open a socket to every server")


def warm(engine: cn.Engine, urls: Sequence[str]) -> None:
    """One zero-length prompt on every server: sockets open, ComfyUI's first-run costs paid outside the clock."""
    tasks = [engine.submit(workflow(COLORS.take(), 0.0, "warm"), server=url) for url in urls]
    for task in tasks:
        task.result(timeout=120)


# -- the machine ---------------------------------------------------------------------------------------------------
def machine(url: str) -> dict[str, Any]:
    system = httpx.get(url + "/system_stats", timeout=10).json().get("system", {})
    return {
        "python": platform.python_version(),
        "comfyui": system.get("comfyui_version"),
        "comfyui_python": str(system.get("python_version", "")).split()[0],
        "pytorch": system.get("pytorch_version"),
        "comfy_notebook": getattr(cn, "__version__", None),
        "nproc": os.cpu_count(),
        "platform": platform.platform(),
        "loadavg_at_start": os.getloadavg(),
    }
