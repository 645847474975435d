"""Execute a notebook headlessly (nbclient) and keep an HTML copy (nbconvert): ``make demo`` and the tests use it.

The kernel must come from the environment that has ``comfy_notebook`` installed. The stock ``python3`` kernelspec
is not enough: a user-level ``python3`` spec can point at another interpreter. So we run a dedicated
``comfy-notebook`` kernelspec whose argv is *this* interpreter, installed into ``sys.prefix`` on first use (the
same as ``python -m ipykernel install --sys-prefix --name comfy-notebook``), which also works from a fresh venv.
"""

from __future__ import annotations

import copy
import fcntl
import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nbformat import NotebookNode

KERNEL_NAME = "comfy-notebook"
KERNEL_DISPLAY_NAME = "Python (comfy-notebook)"
DEFAULT_CELL_TIMEOUT = 300.0


class NotebookExecutionError(RuntimeError):
    """A cell failed; the partly executed notebook and its HTML copy were still written (``notebook``, ``html``),
    because they are what a person needs to see why."""

    def __init__(self, message: str, notebook: Path, html: Path) -> None:
        super().__init__(message)
        self.notebook = notebook
        self.html = html


def _spec_python(name: str) -> str | None:
    """The interpreter the kernelspec ``name`` starts, or None if there is no such spec."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel  # noqa: PLC0415 - optional extra

    try:
        spec = KernelSpecManager().get_kernel_spec(name)
    except NoSuchKernel:
        return None
    return spec.argv[0] if spec.argv else None


def ensure_kernelspec(name: str = KERNEL_NAME) -> str:
    """Install (once) a kernelspec that starts this interpreter; return its name.

    Inside a venv it goes to ``sys.prefix`` (the venv's own data dir, which Jupyter prefers there); outside one,
    to the user's data dir, never system-wide.
    """
    from ipykernel.kernelspec import install  # noqa: PLC0415 - optional extra

    if _spec_python(name) == sys.executable:
        return name
    in_venv = sys.prefix != sys.base_prefix
    # install() replaces the spec folder (rmtree + copy): parallel test workers must not do that at the same time.
    lock_path = Path(tempfile.gettempdir()) / f"comfy-notebook-kernelspec-{os.getuid()}.lock"
    with lock_path.open("a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        if _spec_python(name) != sys.executable:
            install(
                kernel_name=name,
                display_name=KERNEL_DISPLAY_NAME,
                prefix=sys.prefix if in_venv else None,
                user=not in_venv,
            )
    found = _spec_python(name)
    if found != sys.executable:
        raise RuntimeError(
            f"kernelspec {name!r} starts {found}, not {sys.executable}: another spec of that name shadows the one "
            f"just installed (see `jupyter kernelspec list`)"
        )
    return name


def execute_notebook(
    path: Path | str,
    out_dir: Path | str,
    env: Mapping[str, str] | None = None,
    *,
    timeout: float = DEFAULT_CELL_TIMEOUT,
) -> Path:
    """Run every cell of ``path`` in a fresh kernel; write ``out_dir/<name>.ipynb`` and ``.html``; return the first.

    ``env`` is added to this process's environment for the kernel (e.g. ``COMFY_SERVERS``). The kernel's working
    directory is the notebook's folder, as in Jupyter. ``timeout`` bounds each cell. On a failing cell the
    outputs so far are still written, then :class:`NotebookExecutionError` says what failed (an error, a cell
    timeout, a dead kernel).
    """
    import nbformat  # noqa: PLC0415 - optional extras (test/browser), kept out of plain imports
    from nbclient import NotebookClient  # noqa: PLC0415
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError  # noqa: PLC0415
    from traitlets.config import Config  # noqa: PLC0415

    source = Path(path).resolve()
    target_dir = Path(out_dir).resolve()
    target_dir.mkdir(parents=True, exist_ok=True)
    nb = nbformat.read(source, as_version=4)  # type: ignore[no-untyped-call]
    failure: Exception | None = None
    with tempfile.TemporaryDirectory(prefix="comfy-nb-") as sockets:
        config = Config()
        # Unix sockets in a private folder instead of plaintext TCP (ipykernel warns about TCP without encryption).
        config.KernelManager.transport = "ipc"
        config.KernelManager.ip = str(Path(sockets) / "kernel")
        client = NotebookClient(
            nb,
            config=config,
            timeout=int(timeout),
            kernel_name=ensure_kernelspec(),
            resources={"metadata": {"path": str(source.parent)}},
            record_timing=False,  # keeps the executed notebook free of volatile timestamps
        )
        try:
            client.execute(env={**os.environ, **(env or {})})
        except (CellExecutionError, CellTimeoutError, DeadKernelError) as exc:
            failure = exc
    notebook_out = target_dir / source.name
    html_out = notebook_out.with_suffix(".html")
    nbformat.write(nb, notebook_out)  # type: ignore[no-untyped-call]
    html_out.write_text(to_html(nb), encoding="utf-8")
    if failure is not None:
        first = str(failure).strip().splitlines()
        raise NotebookExecutionError(
            f"{source.name}: a cell failed ({first[-1] if first else 'no message'}); see {notebook_out}",
            notebook_out,
            html_out,
        ) from failure
    return notebook_out


WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def to_html(nb: NotebookNode) -> str:
    """The executed notebook as one HTML page that reads offline.

    Widget views (the status panel, progress bars) need a widget manager loaded from a CDN, and even then show only
    their *final* state; each of our widgets also carries a static text/HTML snapshot of the moment it was shown.
    The page uses those snapshots, so it tells the story cell by cell without a network or a kernel.
    """
    from nbconvert import HTMLExporter  # noqa: PLC0415

    static = copy.deepcopy(nb)
    static.metadata.pop("widgets", None)
    for cell in static.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if WIDGET_VIEW in data and ({"text/html", "text/plain"} & set(data)):
                del data[WIDGET_VIEW]
    body, _resources = HTMLExporter().from_notebook_node(static)  # type: ignore[no-untyped-call]
    return str(body)
