"""Quickstart: submit a workflow, watch its progress, save its images, print the status, reset.

    COMFY_SERVERS="http://127.0.0.1:8188 http://127.0.0.1:8189" python examples/quickstart.py [--slow]

``--slow`` uses the ``SlowSteps`` node of the project's test nodes (loaded by ``make demo``) to show real
progress events without any model files; without it the workflow uses only ComfyUI's built-in nodes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import comfy_notebook as cn
from comfy_notebook.api import servers_from_env


def workflow(slow: bool, seed: int) -> dict[str, Any]:
    graph: dict[str, Any] = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 256, "height": 256, "batch_size": 1, "color": seed}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "quickstart"}},
    }
    if slow:
        graph["4"] = {"class_type": "SlowSteps", "inputs": {"image": ["2", 0], "steps": 10, "step_seconds": 0.15}}
        graph["3"]["inputs"]["images"] = ["4", 0]
    return graph


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slow", action="store_true", help="use the SlowSteps test node to show progress")
    parser.add_argument("--out", type=Path, default=Path("out/quickstart"))
    args = parser.parse_args()

    servers = cn.set_servers(servers_from_env() or ["http://127.0.0.1:8188"])
    print(f"pool: {', '.join(servers)}")

    task = cn.submit(workflow(args.slow, seed=int(time.time()) % 0xFFFFFF))
    print(f"submitted {task.prompt_id} to {task.server}")
    shown = -1
    while not task.done():  # a script polls; the notebook extension draws this as a live widget
        if task.version != shown:
            shown = task.version
            bar = f"{task.progress.value}/{task.progress.max}" if task.progress else "-"
            print(f"  {task.status:<8} node={task.node_class or '-':<12} progress={bar:<6} {task.elapsed:5.1f}s")
        time.sleep(0.05)
    try:
        result = task.result()
    except cn.ComfyError as exc:
        print(f"failed: {exc}", file=sys.stderr)
        return 1
    saved = result.save(args.out)
    print(f"{result.status} on {result.server} in {result.elapsed:.2f}s; saved {', '.join(map(str, saved))}")

    print("status:", json.dumps(cn.get_status(), indent=2))
    after = cn.reset()
    print(f"reset: locked_server={after['locked_server']} connection_state={after['connection_state']}")
    cn.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
