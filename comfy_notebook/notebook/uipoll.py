"""Block a kernel cell while widget buttons keep answering (the technique of the ``jupyter-ui-poll`` package).

A cell that waits (``%%comfy``, ``task.result()``, a sweep) holds the kernel's main thread, and ipykernel handles
shell messages only on that thread: a click on the panel's Reset or on a Cancel button would wait for the very cell
it should stop. So while we wait we take the main shell's pending messages off its socket ourselves: widget (comm)
messages are handled at once, on this thread, as ipykernel handles them while an async cell awaits (no busy/idle
status, outputs attributed to the click); every other request (a cell typed and queued meanwhile, a completion, a
kernel_info) is held and handed back to the kernel, in arrival order, when the wait ends, so it runs after the cell
and never during it. A kernel interrupt still raises ``KeyboardInterrupt`` in the waiting caller.

Why not the package itself: ``jupyter-ui-poll`` 1.1.0 calls ``Kernel.do_one_iteration()``, which ipykernel 7.4 no
longer has (its shell messages reach the main thread over an inproc socket pair from a shell-channel thread), and it
swaps the kernel's ``_main_asyncio_lock`` for a ``nullcontext`` that ipykernel 7.4's ``shell_main`` calls
``.locked()`` on. Measured with ipykernel 7.4.0: nothing is handled during its wait and a ``comm_open`` sent meanwhile
is lost. This module reads the main shell's socket itself: ipykernel 7's inproc socket, or ipykernel 6's shell
socket (the tests run on 7.4.0; 7.0.1 and 6.29.5 passed them too). Outside a kernel (an in-process shell, terminal
IPython, plain Python), off the kernel's main thread, or inside a widget callback that a wait is running, it is a
plain blocking wait.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from IPython import get_ipython

_log = logging.getLogger(__name__)

#: Longest sleep of a plain wait between two looks at the clock: an interrupt that is not a real signal
#: (``_thread.interrupt_main``, as ipykernel sends on Windows) is noticed only when Python code runs.
PLAIN_SLICE = 0.1
#: Longest sleep on the shell socket before the event is checked again (a finished prompt is seen within this).
POLL_SLICE = 0.05
#: The only shell messages handled while a cell waits.
COMM_TYPES = frozenset({"comm_open", "comm_msg", "comm_close"})


class _Active:
    """Set while a ui-polling wait runs: a widget callback that itself waits gets a plain wait (no nesting)."""

    waiting = False


def ui_wait(event: threading.Event, timeout: float | None = None) -> bool:
    """Block until ``event`` is set or ``timeout`` seconds passed; return whether it is set.

    In a kernel cell, widget messages are handled meanwhile and every other shell request is held until the
    wait ends; anywhere else this is a plain wait. ``KeyboardInterrupt`` (the kernel's stop button) propagates."""
    shell = _MainShell.find()
    if shell is None:
        return plain_wait(event, timeout)
    _Active.waiting = True
    try:
        return shell.wait(event, timeout)
    finally:
        _Active.waiting = False
        shell.release()


def plain_wait(event: threading.Event, timeout: float | None = None) -> bool:
    """``event.wait(timeout)`` in short slices, so a non-signal interrupt is noticed."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        remaining = PLAIN_SLICE if deadline is None else min(PLAIN_SLICE, deadline - time.monotonic())
        if event.wait(max(remaining, 0.0)):
            return True
        if deadline is not None and time.monotonic() >= deadline:
            return False


class _MainShell:
    """The kernel's main-shell inbox for the length of one wait: what was handled, what is held for later."""

    def __init__(self, kernel: Any, stream: Any, reply_socket: Any, loop: asyncio.AbstractEventLoop) -> None:
        import zmq  # noqa: PLC0415 - a kernel is running, so pyzmq is there; plain installs may not have it

        self._zmq = zmq
        self._kernel = kernel
        self._session = kernel.session
        self._stream = stream  # the ZMQStream the kernel's loop reads (the main shell's end of the inproc pair)
        self._socket = stream.socket
        self._copy = bool(getattr(stream, "_recv_copy", False))
        self._deliver: Callable[[list[Any]], Any] = stream._recv_callback
        self._reply_socket = reply_socket
        self._loop = loop
        self._held: list[list[Any]] = []

    @classmethod
    def find(cls) -> _MainShell | None:
        """The running ipykernel's main shell, when called on its main thread; else None (wait plainly)."""
        if _Active.waiting or threading.current_thread() is not threading.main_thread():
            return None
        kernel: Any = getattr(get_ipython(), "kernel", None)
        if kernel is None or getattr(kernel, "session", None) is None:
            return None
        try:
            channel = getattr(kernel, "shell_channel_thread", None)
            if channel is not None:  # ipykernel 7: a thread reads the shell socket, forwards over an inproc pair
                stream = channel.manager.get_shell_channel_to_subshell_pair(None).to_stream
                reply_socket = channel.manager.get_subshell_to_shell_channel_socket(None)
            else:  # ipykernel 6: the main thread reads the shell socket itself
                stream = reply_socket = kernel.shell_stream
            loop = kernel.io_loop.asyncio_loop
        except AttributeError:
            return None
        if stream is None or getattr(stream, "_recv_callback", None) is None or loop.is_closed():
            return None
        return cls(kernel, stream, reply_socket, loop)

    def wait(self, event: threading.Event, timeout: float | None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        poller = self._zmq.Poller()
        poller.register(self._socket, self._zmq.POLLIN)
        while not event.is_set():
            slice_ = POLL_SLICE if deadline is None else min(POLL_SLICE, deadline - time.monotonic())
            if slice_ <= 0:
                break
            if poller.poll(max(1, round(slice_ * 1000))):  # KeyboardInterrupt from a SIGINT surfaces here
                self._drain()
        self._drain()  # a click that came with the result is still answered
        return event.is_set()

    def _drain(self) -> None:
        """Handle every pending widget message now; hold everything else, in order."""
        while True:
            try:
                frames = self._socket.recv_multipart(self._zmq.NOBLOCK, copy=self._copy)
            except self._zmq.Again:
                return
            comm = self._comm_message(frames)
            if comm is None:
                self._held.append(frames)
            else:
                self._handle(*comm)

    def _comm_message(self, frames: list[Any]) -> tuple[list[Any], dict[str, Any]] | None:
        """``(idents, msg)`` for a comm message; None for anything else (left for the kernel, untouched)."""
        if len(frames) < 2:  # ipykernel's one-frame "stop aborting" marker
            return None
        try:
            idents, parts = self._session.feed_identities(frames, copy=self._copy)
            # A peek: content=False does not record the signature, so the kernel can still read the message later.
            header = self._session.deserialize(parts, content=False, copy=self._copy)["header"]
            if header.get("msg_type") not in COMM_TYPES:
                return None
            return idents, self._session.deserialize(parts, content=True, copy=self._copy)
        except Exception:  # malformed or badly signed: the kernel logs and drops it as it would have
            return None

    def _handle(self, idents: list[Any], msg: dict[str, Any]) -> None:
        """Run the kernel's own comm handler with the message as parent, then give the cell its parent back."""
        kernel = self._kernel
        parent = kernel.get_parent("shell")
        ident = kernel._parent_ident["shell"]
        handler = kernel.shell_handlers.get(msg["header"]["msg_type"])
        _flush_std()
        kernel.set_parent(idents, msg, channel="shell")
        try:
            outcome = handler(self._reply_socket, idents, msg) if handler is not None else None
            if inspect.isawaitable(outcome):  # not ipykernel's comm handlers: it finishes once the cell ends
                self._schedule(outcome)
        except Exception:
            _log.exception("a widget message failed while a cell waited")
        finally:
            _flush_std()
            kernel.set_parent(ident, parent, channel="shell")

    def release(self) -> None:
        """Give the held requests back to the kernel's loop in arrival order: they run once the cell ends, ahead of
        anything that arrives later (the kernel queues shell requests behind one FIFO lock)."""
        held, self._held = self._held, []
        for frames in held:
            try:
                outcome = self._deliver(frames)
                if inspect.isawaitable(outcome):
                    self._schedule(outcome)
            except Exception:
                _log.exception("a held shell request could not be handed back to the kernel")

    def _schedule(self, awaitable: Any) -> None:
        """Run ``awaitable`` on the kernel's loop once the cell ends; kept referenced until it is done."""
        future = asyncio.ensure_future(awaitable, loop=self._loop)
        _PENDING.add(future)
        future.add_done_callback(_PENDING.discard)


#: Held requests and comm coroutines handed to the kernel's loop and not finished yet (asyncio keeps weak references).
_PENDING: set[asyncio.Future[Any]] = set()


def _flush_std() -> None:
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()
