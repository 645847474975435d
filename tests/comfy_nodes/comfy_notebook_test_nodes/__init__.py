"""Test-only ComfyUI custom nodes: slow progress with previews, and a node that fails on demand.

Loaded by real ComfyUI servers through ``--extra-model-paths-config`` (section ``custom_nodes`` pointing at
the ``tests/comfy_nodes`` folder). They need no model files, so real-server tests can exercise ``progress``
events, binary preview frames, interrupts and ``execution_error`` on a CPU-only machine.

This module runs inside the ComfyUI process, where ``comfy``, ``torch`` and ``numpy`` exist; it is never
imported by the project's own test process.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import comfy.utils  # type: ignore[import-not-found]
import numpy as np
from PIL import Image

CATEGORY = "comfy_notebook_tests"
PREVIEW_MAX_SIZE = 512
# Per-server speed factor, so one pool can mix fast and slow servers (pool-mode tests and benchmarks): 0.5 is half
# speed (each sleep takes twice as long). Same name as comfy_notebook.tools.local_pool.SPEED_ENV, which this module
# cannot import (it runs inside the ComfyUI process).
SPEED_ENV = "COMFY_NOTEBOOK_SPEED"


def speed_factor() -> float:
    """The server's speed factor from ``COMFY_NOTEBOOK_SPEED`` (default 1.0), read per run so it is never stale.

    A bad value fails the prompt with a message naming the variable rather than silently running at full speed.
    """
    raw = os.environ.get(SPEED_ENV, "").strip()
    if not raw:
        return 1.0
    try:
        speed = float(raw)
    except ValueError:
        speed = math.nan
    if not math.isfinite(speed) or speed <= 0:
        raise ValueError(f"{SPEED_ENV}={raw!r}: expected a positive finite number (1.0 = full speed)")
    return speed


def _to_pil(image: Any) -> Image.Image:
    """First image of a ComfyUI IMAGE batch (float tensor [B, H, W, C] in 0..1) as a PIL image."""
    array = np.clip(image[0].cpu().numpy() * 255.0, 0, 255).astype(np.uint8)
    return Image.fromarray(array)


class SlowSteps:
    """Sleeps per step and reports progress with a JPEG preview: real `progress` events and preview frames.

    The node sleeps ``steps * step_seconds / speed`` in total, ``speed`` being the server's ``COMFY_NOTEBOOK_SPEED``;
    a prompt of exactly N ms is ``steps=1, step_seconds=N / 1000`` (ComfyUI does not round FLOAT inputs to their
    ``step``, which only guides the UI widget).

    ``ProgressBar.update_absolute`` goes through the server's progress hook, which checks for an interrupt
    first, so an interrupt lands within one step.
    """

    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "image": ("IMAGE",),
                "steps": ("INT", {"default": 5, "min": 1, "max": 10000}),
                "step_seconds": ("FLOAT", {"default": 0.1, "min": 0.0, "max": 60.0, "step": 0.01}),
            }
        }

    @classmethod
    def IS_CHANGED(cls, **kwargs: Any) -> float:
        return time.time()  # never cached: every run really executes

    def run(self, image: Any, steps: int, step_seconds: float) -> tuple[Any]:
        step_sleep = step_seconds / speed_factor()
        preview = _to_pil(image)
        bar = comfy.utils.ProgressBar(steps)
        for i in range(steps):
            time.sleep(step_sleep)
            bar.update_absolute(i + 1, steps, ("JPEG", preview, PREVIEW_MAX_SIZE))
        return (image,)


class RaiseError:
    """Raises RuntimeError(message): a node failure the client must surface as ``execution_error``."""

    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "image": ("IMAGE",),
                "message": ("STRING", {"default": "comfy_notebook test failure"}),
            }
        }

    @classmethod
    def IS_CHANGED(cls, **kwargs: Any) -> float:
        return time.time()

    def run(self, image: Any, message: str) -> tuple[Any]:
        raise RuntimeError(message)


NODE_CLASS_MAPPINGS = {"SlowSteps": SlowSteps, "RaiseError": RaiseError}
NODE_DISPLAY_NAME_MAPPINGS = {"SlowSteps": "Slow Steps (test)", "RaiseError": "Raise Error (test)"}
