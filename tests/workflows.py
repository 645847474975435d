"""Workflows shared by the fake-server and real-server tiers (the fake runs the real test nodes' names)."""

from __future__ import annotations

from typing import Any


def slow_workflow(
    tag: int = 0, *, steps: int = 2, step_seconds: float = 0.0, output: str = "SaveImage", size: int = 8
) -> dict[str, Any]:
    """EmptyImage -> SlowSteps (real progress events, previews, interruptible) -> output; ``tag`` makes each graph
    distinct so ComfyUI never serves it from its cache."""
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": size, "height": size, "batch_size": 1, "color": tag}},
        "2": {"class_type": "SlowSteps", "inputs": {"image": ["1", 0], "steps": steps, "step_seconds": step_seconds}},
        "3": {"class_type": output, "inputs": {"images": ["2", 0], "filename_prefix": "t"}},
    }


def raising_workflow(message: str, tag: int = 0) -> dict[str, Any]:
    graph = slow_workflow(tag)
    graph["2"] = {"class_type": "RaiseError", "inputs": {"image": ["1", 0], "message": message}}
    return graph
