"""Test-only ComfyUI custom nodes: slow progress with previews, a node that fails on demand, and the output kinds
the test servers have no node for: a GIF reported as VideoHelperSuite reports it, several text strings, a mesh for the
built-in ``SaveGLB``, and audio (ComfyUI's own audio nodes fail to import there: ``nodes_audio.py`` needs
``torchaudio``, which the pinned environment does not install).

Loaded by real ComfyUI servers through ``--extra-model-paths-config`` (section ``custom_nodes`` pointing at
the ``tests/comfy_nodes`` folder). They need no model files, so real-server tests can exercise ``progress``
events, binary preview frames, interrupts and ``execution_error`` on a CPU-only machine.

This module runs inside the ComfyUI process, where ``comfy``, ``torch`` and ``numpy`` exist; it is never
imported by the project's own test process.
"""

from __future__ import annotations

import io
import math
import os
import time
import wave
from typing import Any

import av  # type: ignore[import-not-found]
import comfy.utils  # type: ignore[import-not-found]
import folder_paths  # type: ignore[import-not-found]
import numpy as np
import torch
from comfy_api.latest import Types  # type: ignore[import-not-found]
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


def _frames(images: Any) -> list[Image.Image]:
    """Every image of a ComfyUI IMAGE batch as a PIL image."""
    return [_to_pil(images[i : i + 1]) for i in range(images.shape[0])]


class SaveGifVHS:
    """Saves the batch as an animated GIF and reports it the way VideoHelperSuite's Video Combine does: under the
    output key ``gifs``, with ``format``, ``frame_rate``, ``workflow`` and the server-local ``fullpath`` (which a
    client must never use), so the client's handling of that popular custom node is tested without installing it."""

    CATEGORY = CATEGORY
    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "images": ("IMAGE",),
                "frame_rate": ("FLOAT", {"default": 8.0, "min": 0.1, "max": 120.0}),
                "filename_prefix": ("STRING", {"default": "gif/vhs"}),
                "save_output": ("BOOLEAN", {"default": True}),
            }
        }

    def run(self, images: Any, frame_rate: float, filename_prefix: str, save_output: bool) -> dict[str, Any]:
        root = folder_paths.get_output_directory() if save_output else folder_paths.get_temp_directory()
        height, width = images.shape[1], images.shape[2]
        folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(filename_prefix, root, width, height)
        frames = _frames(images)
        file = f"{name}_{counter:05}.gif"
        path = os.path.join(folder, file)
        duration = round(1000 / frame_rate)
        frames[0].save(path, save_all=True, append_images=frames[1:], duration=duration, loop=0)
        kind = "output" if save_output else "temp"
        gif = {"filename": file, "subfolder": subfolder, "type": kind, "format": "image/gif"}
        gif |= {"frame_rate": frame_rate, "workflow": f"{name}_{counter:05}.png", "fullpath": path}
        return {"ui": {"gifs": [gif]}}


class ShowTextList:
    """Shows several strings, as text-display custom nodes (ShowText and the like) do: ``{"ui": {"text": [...]}}``.
    The built-in ``PreviewAny`` shows exactly one."""

    CATEGORY = CATEGORY
    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"text": ("STRING", {"default": "", "multiline": True}), "copies": ("INT", {"default": 2})}}

    def run(self, text: str, copies: int) -> dict[str, Any]:
        return {"ui": {"text": [f"{i}: {text}" for i in range(copies)]}}


class SineAudio:
    """A short sine wave as ComfyUI's AUDIO type: ``{"waveform": [batch, channels, samples], "sample_rate": ...}``."""

    CATEGORY = CATEGORY
    RETURN_TYPES = ("AUDIO",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "seconds": ("FLOAT", {"default": 0.5, "min": 0.01, "max": 60.0}),
                "frequency": ("FLOAT", {"default": 440.0, "min": 1.0, "max": 20000.0}),
                "sample_rate": ("INT", {"default": 8000, "min": 1000, "max": 192000}),
            }
        }

    def run(self, seconds: float, frequency: float, sample_rate: int) -> tuple[dict[str, Any]]:
        t = torch.arange(round(seconds * sample_rate), dtype=torch.float32) / sample_rate
        wave_ = 0.5 * torch.sin(2 * math.pi * frequency * t)
        return ({"waveform": wave_.reshape(1, 1, -1), "sample_rate": sample_rate},)


class SaveAudioTest:
    """Saves AUDIO as WAV or FLAC and reports it exactly as ComfyUI's ``SaveAudio`` / ``PreviewAudio`` do:
    ``{"ui": {"audio": [{filename, subfolder, type}]}}`` (those nodes cannot load on the test servers)."""

    CATEGORY = CATEGORY
    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "audio": ("AUDIO",),
                "filename_prefix": ("STRING", {"default": "audio/ComfyUI"}),
                "format": (["wav", "flac"],),
                "save_output": ("BOOLEAN", {"default": True}),
            }
        }

    def run(self, audio: dict[str, Any], filename_prefix: str, format: str, save_output: bool) -> dict[str, Any]:
        root = folder_paths.get_output_directory() if save_output else folder_paths.get_temp_directory()
        folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(filename_prefix, root)
        rate = int(audio["sample_rate"])
        results = []
        for waveform in audio["waveform"].cpu():
            file = f"{name}_{counter:05}_.{format}"
            data = _wav(waveform, rate) if format == "wav" else _flac(waveform, rate)
            with open(os.path.join(folder, file), "wb") as handle:
                handle.write(data)
            results.append({"filename": file, "subfolder": subfolder, "type": "output" if save_output else "temp"})
            counter += 1
        return {"ui": {"audio": results}}


def _wav(waveform: Any, rate: int) -> bytes:
    """16-bit PCM WAV of a [channels, samples] float waveform."""
    pcm = (waveform.clamp(-1, 1) * 32767).to(torch.int16).t().contiguous().numpy().tobytes()
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(waveform.shape[0])
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm)
    return buffer.getvalue()


def _flac(waveform: Any, rate: int) -> bytes:
    """FLAC through PyAV, as ComfyUI's ``save_audio`` writes it."""
    layout = "mono" if waveform.shape[0] == 1 else "stereo"
    buffer = io.BytesIO()
    container = av.open(buffer, mode="w", format="flac")
    stream = container.add_stream("flac", rate=rate, layout=layout)
    frame = av.AudioFrame.from_ndarray(
        waveform.movedim(0, 1).reshape(1, -1).float().numpy(), format="flt", layout=layout
    )
    frame.sample_rate = rate
    frame.pts = 0
    container.mux(stream.encode(frame))
    container.mux(stream.encode(None))
    container.close()
    return buffer.getvalue()


class TestTetrahedron:
    """A tetrahedron MESH for the built-in ``SaveGLB`` (its usual sources need model files)."""

    CATEGORY = CATEGORY
    RETURN_TYPES = ("MESH",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"size": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 100.0})}}

    def run(self, size: float) -> tuple[Any]:
        vertices = torch.tensor([[[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]]], dtype=torch.float32) * size
        faces = torch.tensor([[[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]]], dtype=torch.long)
        return (Types.MESH(vertices, faces),)


NODE_CLASS_MAPPINGS = {
    "SlowSteps": SlowSteps,
    "RaiseError": RaiseError,
    "SaveGifVHS": SaveGifVHS,
    "ShowTextList": ShowTextList,
    "TestTetrahedron": TestTetrahedron,
    "SineAudio": SineAudio,
    "SaveAudioTest": SaveAudioTest,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "SlowSteps": "Slow Steps (test)",
    "RaiseError": "Raise Error (test)",
    "SaveGifVHS": "Save GIF like VideoHelperSuite (test)",
    "ShowTextList": "Show Text List (test)",
    "TestTetrahedron": "Tetrahedron Mesh (test)",
    "SineAudio": "Sine Audio (test)",
    "SaveAudioTest": "Save Audio WAV/FLAC (test)",
}
