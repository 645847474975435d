"""``Task`` (a prompt in flight) and ``Result`` (a finished prompt), the objects users hold.

A Task is written only by the engine's loop thread and read from any thread: its fields are plain attributes
replaced whole, so readers see a consistent value without locks. Waiting goes through a
``concurrent.futures.Future``, so a cell can block on ``task.result()`` or ``await task``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image as PILImage
from PIL.Image import Image

from comfy_notebook.core.errors import ComfyError
from comfy_notebook.core.failover import Attempt
from comfy_notebook.core.paths import safe_relative
from comfy_notebook.core.protocol import ImageRef

#: pending: not sent yet; waiting: in the client-side queue of pool mode; queued: on its server's queue.
PENDING, WAITING, QUEUED, RUNNING = "pending", "waiting", "queued", "running"
SUCCESS, ERROR, INTERRUPTED, CANCELLED = "success", "error", "interrupted", "cancelled"
FINISHED = frozenset({SUCCESS, ERROR, INTERRUPTED, CANCELLED})


@dataclass(frozen=True)
class ImageFile:
    """One output image: the server's reference and its bytes, decoded on demand."""

    ref: ImageRef
    data: bytes = field(repr=False)

    def to_pil(self) -> Image:
        image = PILImage.open(io.BytesIO(self.data))
        image.load()
        return image


Fetcher = Callable[[list[ImageRef]], list[bytes | None]]


class Result:
    """A finished prompt: its history outputs and its images, always from the server that ran it.

    Image bytes arrive with the result, except on the bulk path (``submit_many``), where files the server keeps
    on disk are fetched on first use of ``files``, ``images`` or ``save()``.
    """

    def __init__(
        self,
        prompt_id: str,
        server: str,
        status: str,
        *,
        outputs: dict[str, Any],
        refs: list[ImageRef],
        fetched: dict[ImageRef, bytes],
        fetch: Fetcher,
        elapsed: float,
    ) -> None:
        self.prompt_id = prompt_id
        self.server = server
        self.status = status
        self.outputs = outputs
        self.refs = refs
        self.elapsed = elapsed
        self._fetched = fetched
        self._fetch = fetch
        self._images: list[Image] | None = None

    @property
    def files(self) -> list[ImageFile]:
        """Every output image with its bytes (fetched now if not yet here); files the server no longer serves
        are left out with a warning in the log."""
        missing = [ref for ref in self.refs if ref not in self._fetched]
        if missing:
            for ref, data in zip(missing, self._fetch(missing), strict=True):
                if data is not None:
                    self._fetched[ref] = data
        return [ImageFile(ref, self._fetched[ref]) for ref in self.refs if ref in self._fetched]

    @property
    def images(self) -> list[Image]:
        """The output images as PIL images, decoded on first use."""
        if self._images is None:
            self._images = [f.to_pil() for f in self.files]
        return self._images

    def save(self, folder: str | Path) -> list[Path]:
        """Write every image under ``folder``, with server names made safe; never overwrites a file."""
        root = Path(folder).resolve()
        written = []
        for file in self.files:
            target = (root / safe_relative(file.ref.subfolder, file.ref.filename)).resolve()
            if not target.is_relative_to(root):  # belt and braces: safe_relative already forbids this
                raise ComfyError(f"refusing to write outside {root}: {target}")
            target.parent.mkdir(parents=True, exist_ok=True)
            target = _unused(target)
            with open(target, "xb") as handle:
                handle.write(file.data)
            written.append(target)
        return written

    def __repr__(self) -> str:
        return (
            f"<Result {self.status} prompt_id={self.prompt_id} server={self.server} "
            f"images={len(self.refs)} elapsed={self.elapsed:.2f}s>"
        )


def _unused(path: Path) -> Path:
    if not path.exists():
        return path
    for n in range(1, 10_000):
        candidate = path.with_name(f"{path.stem} ({n}){path.suffix}")
        if not candidate.exists():
            return candidate
    raise ComfyError(f"too many files named like {path.name}")


@dataclass(frozen=True)
class Progress:
    """The latest ``progress`` event of a task's current node."""

    value: int
    max: int
    node: str | None

    @property
    def fraction(self) -> float:
        return 0.0 if self.max <= 0 else min(1.0, self.value / self.max)


class Task:
    """A submitted prompt. ``result()`` blocks; ``await task`` works in async cells."""

    def __init__(self, prompt_id: str, workflow: dict[str, Any], cancel: Callable[[Task], None]) -> None:
        self.key = prompt_id  # stable across retries; ``prompt_id`` is the current attempt's id
        self.prompt_id = prompt_id
        self.workflow = workflow
        self.server: str | None = None
        self.status = PENDING
        self.progress: Progress | None = None
        self.node: str | None = None
        self.queue_position: int | None = None  # on the server, or in the client-side queue while waiting
        #: Every try on a server (server, prompt id, outcome, reason); more than one after a failover.
        self.attempts: list[Attempt] = []
        #: After a failover: "moved from A to B: A stopped answering".
        self.moved: str | None = None
        #: Times a server we had moved this prompt away from finished it anyway (counted, never returned).
        self.duplicates = 0
        self.preview: tuple[str, bytes] | None = None
        self.submitted_at = time.time()
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.error: BaseException | None = None
        self.version = 0  # bumped on every change, so pollers redraw only when something moved
        self._future: concurrent.futures.Future[Result] = concurrent.futures.Future()
        self._cancel = cancel

    # -- reading ----------------------------------------------------------------------------------------------------
    @property
    def node_class(self) -> str | None:
        """The class_type of the node being executed."""
        node = self.workflow.get(self.node) if self.node else None
        return node.get("class_type") if isinstance(node, dict) else None

    @property
    def elapsed(self) -> float:
        return (self.finished_at or time.time()) - self.submitted_at

    def done(self) -> bool:
        return self._future.done()

    def result(self, timeout: float | None = None) -> Result:
        """Wait for the result; raise the prompt's error (validation, execution, lost, cancelled)."""
        try:
            return self._future.result(timeout)
        except concurrent.futures.TimeoutError:
            raise TimeoutError(
                f"prompt {self.prompt_id} on {self.server} did not finish within {timeout} s (it keeps running)"
            ) from None

    def __await__(self) -> Generator[Any, None, Result]:
        return asyncio.wrap_future(self._future).__await__()

    def add_done_callback(self, fn: Callable[[Task], None]) -> None:
        self._future.add_done_callback(lambda _f: fn(self))

    def cancel(self) -> None:
        """Cancel this prompt only: delete it from its server's queue or interrupt it if it runs."""
        self._cancel(self)

    def __repr__(self) -> str:
        bits = [f"<Task {self.status}", f"prompt_id={self.prompt_id}", f"server={self.server}"]
        if len(self.attempts) > 1:
            bits.append(f"attempts={len(self.attempts)}")
        if self.progress and self.status == RUNNING:
            bits.append(f"progress={self.progress.value}/{self.progress.max}")
        return " ".join(bits) + ">"

    # -- writing (engine loop thread only) ---------------------------------------------------------------------------
    def _update(self, **changes: Any) -> None:
        for key, value in changes.items():
            setattr(self, key, value)
        self.version += 1

    def _finish(self, result: Result | None = None, error: BaseException | None = None, status: str = "") -> bool:
        """Settle the task once; later calls are ignored (a reset may race a completion)."""
        if self._future.done():
            return False
        self._update(status=status or (result.status if result else ERROR), finished_at=time.time(), error=error)
        if error is not None:
            self._future.set_exception(error)
        else:
            assert result is not None
            self._future.set_result(result)
        return True
