"""Test-only ComfyUI custom nodes: slow progress with previews, and a node that fails on demand.

Loaded by real ComfyUI servers through ``--extra-model-paths-config`` (section ``custom_nodes`` pointing at
the ``tests/comfy_nodes`` folder). They need no model files, so real-server tests can exercise ``progress``
events, binary preview frames, interrupts and ``execution_error`` on a CPU-only machine.

This module runs inside the ComfyUI process, where ``comfy``, ``torch`` and ``numpy`` exist; it is never
imported by the project's own test process.
"""

from __future__ import annotations

import time
from typing import Any

import comfy.utils  # type: ignore[import-not-found]
import numpy as np
from PIL import Image

CATEGORY = "comfy_notebook_tests"
PREVIEW_MAX_SIZE = 512


def _to_pil(image: Any) -> Image.Image:
    """First image of a ComfyUI IMAGE batch (float tensor [B, H, W, C] in 0..1) as a PIL image."""
    array = np.clip(image[0].cpu().numpy() * 255.0, 0, 255).astype(np.uint8)
    return Image.fromarray(array)


class SlowSteps:
    """Sleeps per step and reports progress with a JPEG preview: real `progress` events and preview frames.

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
        preview = _to_pil(image)
        bar = comfy.utils.ProgressBar(steps)
        for i in range(steps):
            time.sleep(step_seconds)
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
