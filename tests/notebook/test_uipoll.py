"""``uipoll.ui_wait`` in a real ipykernel: widget (comm) messages are handled while a cell waits, everything else a
user sends meanwhile runs after the cell, in order, and the kernel's interrupt still reaches the waiting cell.

The kernel is a real ``ipykernel`` process driven over ZMQ by ``jupyter_client``, the way JupyterLab drives it; the
messages sent are the ones a frontend sends (a Button click is ipywidgets' ``custom`` ``click`` comm message).
"""

from __future__ import annotations

import contextlib
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager

from comfy_notebook.engine import task as task_module
from comfy_notebook.engine.task import Task, blocking_wait
from comfy_notebook.notebook.uipoll import plain_wait, ui_wait

START_TIMEOUT = 60.0
#: A ``ui_wait`` that nothing answers waits this long: far longer than any step of these tests.
LONG_WAIT = 30.0

SETUP = """
import threading, time
from comfy_notebook.notebook.uipoll import ui_wait
order = []
answered = threading.Event()

def _target(comm, open_msg):
    @comm.on_msg
    def _on_msg(msg):
        order.append("comm")
        print("comm handled", flush=True)
        answered.set()

get_ipython().kernel.comm_manager.register_target("uipoll-test", _target)
print("ready", flush=True)
"""


class Kernel:
    """A real ipykernel process (this interpreter) and a client; iopub messages are collected as they arrive."""

    def __init__(self, tmp: Path) -> None:
        env = {**os.environ, "IPYTHONDIR": str(tmp / "ipython"), "JUPYTER_RUNTIME_DIR": str(tmp / "runtime")}
        env.pop("COMFY_SERVERS", None)
        self.manager = KernelManager(kernel_name="python3", connection_file=str(tmp / "kernel.json"))
        self.manager.kernel_spec.argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
        self.manager.start_kernel(env=env)
        self.client: BlockingKernelClient = self.manager.client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=START_TIMEOUT)
        self.iopub: list[dict[str, Any]] = []

    def close(self) -> None:
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=True)

    def execute(self, code: str) -> str:
        return str(self.client.execute(code, stop_on_error=False))

    def send(self, msg_type: str, content: dict[str, Any]) -> str:
        msg = self.client.session.msg(msg_type, content)
        self.client.shell_channel.send(msg)
        return str(msg["header"]["msg_id"])

    def until(self, predicate: Callable[[], bool], timeout: float = 2 * LONG_WAIT) -> None:
        """Collect iopub messages until ``predicate()`` holds (failing after ``timeout`` s)."""
        deadline = time.monotonic() + timeout
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out; iopub so far: {[self.summary(m) for m in self.iopub]}")
            with contextlib.suppress(queue.Empty):
                self.iopub.append(self.client.get_iopub_msg(timeout=min(remaining, 1.0)))

    def texts(self, parent: str) -> str:
        """The stream text published with ``parent`` as its parent message."""
        return "".join(
            m["content"]["text"]
            for m in self.iopub
            if m["msg_type"] == "stream" and m["parent_header"].get("msg_id") == parent
        )

    def idle(self, parent: str) -> bool:
        return any(
            m["msg_type"] == "status"
            and m["content"]["execution_state"] == "idle"
            and m["parent_header"].get("msg_id") == parent
            for m in self.iopub
        )

    def run(self, code: str) -> str:
        """Execute ``code`` and wait until it finished; return its stdout."""
        parent = self.execute(code)
        self.until(lambda: self.idle(parent))
        errors = [m for m in self.iopub if m["msg_type"] == "error" and m["parent_header"].get("msg_id") == parent]
        assert not errors, errors[0]["content"]
        return self.texts(parent)

    @staticmethod
    def summary(m: dict[str, Any]) -> str:
        return f"{m['msg_type']}:{m['parent_header'].get('msg_type')}:{str(m['content'])[:80]}"


@pytest.fixture
def kernel(tmp_path: Path) -> Iterator[Kernel]:
    k = Kernel(tmp_path)
    try:
        assert k.run("import sys; print(sys.executable)").strip() == sys.executable  # this project's interpreter
        assert "ready" in k.run(SETUP)
        yield k
    finally:
        k.close()


def test_widget_messages_are_handled_during_the_wait_and_typed_cells_run_after_it(kernel: Kernel) -> None:
    wait = kernel.execute(
        "print('waiting', flush=True)\n"
        f"ok = ui_wait(answered, {LONG_WAIT})\n"
        "order.append('wait ended')\n"
        "print('waited', ok, flush=True)"
    )
    kernel.until(lambda: "waiting" in kernel.texts(wait))
    started = time.monotonic()
    # Two cells typed and queued (Shift+Enter) while the first one waits, then a widget message.
    typed = [kernel.execute("order.append('typed 1')"), kernel.execute("order.append('typed 2')")]
    kernel.send("comm_open", {"comm_id": "c-1", "target_name": "uipoll-test", "data": {}})
    click = kernel.send("comm_msg", {"comm_id": "c-1", "data": {"click": True}})
    kernel.until(lambda: kernel.idle(wait))
    assert time.monotonic() - started < 5.0, "the comm message did not end the wait at once"
    # The comm handler ran during the wait, its output attributed to the click; the cell got its own output back.
    assert kernel.texts(click) == "comm handled\n"
    assert kernel.texts(wait) == "waiting\nwaited True\n"
    for parent in typed:
        kernel.until(lambda parent=parent: kernel.idle(parent))
    assert kernel.run("print(order)").strip() == "['comm', 'wait ended', 'typed 1', 'typed 2']"
    # The typed cells were held, not dropped or run early: they got the next execution counts, in order.
    inputs = [m for m in kernel.iopub if m["msg_type"] == "execute_input"]
    counts = {m["parent_header"]["msg_id"]: m["content"]["execution_count"] for m in inputs}
    assert counts[typed[0]] == counts[wait] + 1 and counts[typed[1]] == counts[wait] + 2


def test_a_button_click_reaches_a_blocking_task_result(kernel: Kernel) -> None:
    """With the extension loaded, ``task.result()`` waits through the hook: an ipywidgets Button's click (the message
    JupyterLab sends) runs its handler, which cancels the task, and that ends the blocked cell."""
    kernel.run(
        "%load_ext comfy_notebook\n"
        "import ipywidgets\n"
        "from comfy_notebook.core.errors import Cancelled\n"
        "from comfy_notebook.engine.task import Task\n"
        "task = Task('p-1', {}, cancel=lambda t: t._finish(error=Cancelled('cancelled by the button'), "
        "status='cancelled'))\n"
        "button = ipywidgets.Button(description='Cancel')\n"
        "button.on_click(lambda _b: task.cancel())\n"
    )
    model_id = kernel.run("print(button.model_id)").strip()
    wait = kernel.execute(f"print('waiting', flush=True)\ntask.result({LONG_WAIT})")
    kernel.until(lambda: "waiting" in kernel.texts(wait))
    started = time.monotonic()
    kernel.send("comm_msg", {"comm_id": model_id, "data": {"method": "custom", "content": {"event": "click"}}})
    kernel.until(lambda: kernel.idle(wait))
    assert time.monotonic() - started < 5.0
    errors = [m["content"] for m in kernel.iopub if m["msg_type"] == "error" and m["parent_header"]["msg_id"] == wait]
    assert [(e["ename"], e["evalue"]) for e in errors] == [("Cancelled", "cancelled by the button")]
    # Unloading removes the hook: a plain wait no longer answers clicks (the click is handled after the wait).
    kernel.run("%unload_ext comfy_notebook\ntask = Task('p-2', {}, cancel=task._cancel)")
    late = kernel.execute(
        "print('waiting', flush=True)\ntry:\n    task.result(1.5)\nexcept TimeoutError:\n    print('timed out')"
    )
    kernel.until(lambda: "waiting" in kernel.texts(late))
    kernel.send("comm_msg", {"comm_id": model_id, "data": {"method": "custom", "content": {"event": "click"}}})
    kernel.until(lambda: kernel.idle(late))
    assert "timed out" in kernel.texts(late)
    assert kernel.run("print(task.status)").strip() == "cancelled"  # the click ran once the cell had ended


def test_the_kernel_interrupt_reaches_the_waiting_cell(kernel: Kernel) -> None:
    wait = kernel.execute(f"print('waiting', flush=True)\nui_wait(threading.Event(), {LONG_WAIT})")
    kernel.until(lambda: "waiting" in kernel.texts(wait))
    started = time.monotonic()
    kernel.manager.interrupt_kernel()
    kernel.until(lambda: kernel.idle(wait))
    assert time.monotonic() - started < 5.0
    errors = [m["content"]["ename"] for m in kernel.iopub if m["msg_type"] == "error"]
    assert errors == ["KeyboardInterrupt"]
    assert kernel.run("print('alive')").strip() == "alive"


def test_off_the_main_thread_a_kernel_waits_plainly(kernel: Kernel) -> None:
    """A wait in another thread of the kernel must not read the shell socket (it belongs to the main thread)."""
    out = kernel.run(
        "from comfy_notebook.notebook.uipoll import _MainShell\n"
        "found = []\n"
        "t = threading.Thread(target=lambda: found.append(_MainShell.find()))\n"
        "t.start(); t.join()\n"
        "print(found[0] is None, _MainShell.find() is not None)"
    )
    assert out.strip() == "True True"


def test_outside_a_kernel_it_is_a_plain_wait() -> None:
    event = threading.Event()
    started = time.monotonic()
    assert ui_wait(event, 0.3) is False
    assert 0.3 <= time.monotonic() - started < 2.0
    threading.Timer(0.2, event.set).start()
    assert ui_wait(event, LONG_WAIT) is True
    assert plain_wait(event, 0) is True


def test_the_engine_hook_is_plain_until_a_waiter_is_installed() -> None:
    calls: list[float | None] = []

    def waiter(event: threading.Event, timeout: float | None) -> bool:
        calls.append(timeout)
        return event.wait(timeout)

    task = Task("p-hook", {}, cancel=lambda t: None)
    with pytest.raises(TimeoutError, match=r"did not finish within 0\.05 s"):
        task.result(0.05)
    previous = task_module.set_waiter(waiter)
    try:
        with pytest.raises(TimeoutError):
            task.result(0.05)
        assert blocking_wait(threading.Event(), 0.01) is False
    finally:
        assert task_module.set_waiter(previous) is waiter
    assert calls == [0.05, 0.01]
