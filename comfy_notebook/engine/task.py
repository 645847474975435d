"""``Task`` (a prompt in flight) and ``Result`` (a finished prompt), the objects users hold.

A Task is written only by the engine's loop thread and read from any thread: its fields are plain attributes
replaced whole, so readers see a consistent value without locks. Waiting goes through a
``concurrent.futures.Future``, so a cell can block on ``task.result()`` or ``await task``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL.Image import Image

from comfy_notebook.core.failover import Attempt
from comfy_notebook.core.outputs import FileRef, count_media, text_outputs
from comfy_notebook.engine.files import Fetcher, FileStore, OutputFile

#: pending: not sent yet; waiting: in the client-side queue of pool mode; queued: on its server's queue.
PENDING, WAITING, QUEUED, RUNNING = "pending", "waiting", "queued", "running"
SUCCESS, ERROR, INTERRUPTED, CANCELLED = "success", "error", "interrupted", "cancelled"
FINISHED = frozenset({SUCCESS, ERROR, INTERRUPTED, CANCELLED})

#: How a blocking wait passes the time: ``waiter(event, timeout)`` returns once ``event`` is set or ``timeout``
#: seconds passed, and says whether it is set. The notebook extension installs one that keeps widget buttons
#: answering while a cell blocks (``notebook/uipoll.py``); the engine itself knows nothing of kernels.
Waiter = Callable[[threading.Event, float | None], bool]


class _Waiting:
    waiter: Waiter | None = None  # None: a plain ``event.wait``


def set_waiter(waiter: Waiter | None) -> Waiter | None:
    """Install how ``blocking_wait`` (so ``Task.result()``, ``Sweep.wait()``) passes the time; None restores the plain
    wait. Returns the waiter it replaces."""
    previous, _Waiting.waiter = _Waiting.waiter, waiter
    return previous


def blocking_wait(event: threading.Event, timeout: float | None = None) -> bool:
    """Block until ``event`` is set or ``timeout`` seconds passed, through the installed waiter; True if it is set."""
    waiter = _Waiting.waiter
    return event.wait(timeout) if waiter is None else waiter(event, timeout)


class Result:
    """A finished prompt: its history outputs, its files and texts, always from the server that ran it.

    ``files`` lists every output file of every node; their bytes arrive with the result, except on the bulk path
    (``submit_many``), where files the server keeps on disk are fetched on first use (``file.data``, ``images``,
    ``save()``, ``fetch()``, or displaying the result).
    """

    def __init__(
        self,
        prompt_id: str,
        server: str,
        status: str,
        *,
        outputs: dict[str, Any],
        refs: list[FileRef],
        fetched: dict[FileRef, bytes],
        fetch: Fetcher,
        elapsed: float,
    ) -> None:
        self.prompt_id = prompt_id
        self.server = server
        self.status = status
        self.outputs = outputs
        #: Every output file as the server named it (``files`` wraps these).
        self.refs = refs
        #: Node id -> the strings it showed (``PreviewAny`` and ShowText-like nodes).
        self.texts: dict[str, list[str]] = text_outputs(outputs)
        self.elapsed = elapsed
        self._store = FileStore(server, prompt_id, fetched, fetch)
        self._files = [OutputFile(ref, self._store) for ref in refs]
        self._images: list[Image] | None = None

    @property
    def files(self) -> list[OutputFile]:
        """Every output file of every node, in node order; bytes are fetched on first use of ``data``."""
        return list(self._files)

    def fetch(self) -> list[OutputFile]:
        """Fetch every file's bytes not here yet, in one batch; the files the server served. Those it does not
        serve are left out, with a warning in the log."""
        self._store.load(self.refs)
        return [file for file in self._files if self._store.served(file.ref)]

    @property
    def images(self) -> list[Image]:
        """The still images (``images`` outputs that are not animations or videos) as PIL images, decoded on first
        use; animations, videos and other files are in ``files``."""
        if self._images is None:
            stills = [file for file in self._files if file.is_still_image]
            self._store.load(file.ref for file in stills)
            self._images = [file.to_pil() for file in stills if self._store.served(file.ref)]
        return self._images

    def save(self, folder: str | Path) -> list[Path]:
        """Write every output file under ``folder`` as ``subfolder/filename``, with server names made safe;
        never overwrites a file."""
        root = Path(folder).resolve()
        return [file.save_under(root) for file in self.fetch()]

    def __repr__(self) -> str:
        counted = count_media(file.media for file in self._files)
        files = f"files={len(self._files)}" + (f" ({counted})" if counted else "")
        texts = f" texts={sum(len(t) for t in self.texts.values())}" if self.texts else ""
        return (
            f"<Result {self.status} prompt_id={self.prompt_id} server={self.server} {files}{texts} "
            f"elapsed={self.elapsed:.2f}s>"
        )


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
        """Wait for the result (through ``blocking_wait``); raise the prompt's error (validation, execution, lost,
        cancelled)."""
        if not self._future.done() and timeout != 0:
            finished = threading.Event()
            self._future.add_done_callback(lambda _future: finished.set())
            blocking_wait(finished, timeout)
        try:
            return self._future.result(0)
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
