"""Browser-tier fixtures: two real ComfyUI servers, a fresh JupyterLab on loopback, headless Debian chromium.

Everything here is marked ``browser`` and ``real`` (it needs both the browser and real servers). JupyterLab is
started as notebook-mechanics.md records (fresh config/runtime/workspaces/settings folders, a token, a fixed port,
the news toast off) and stopped by its PID; kernels are shut down through its REST API first, and any kernel still
running from our private runtime folder is killed by PID. The browser is never downloaded: Playwright drives
``/usr/bin/chromium`` (CI installs it with scripts/ensure-chromium.sh).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from comfy_notebook.tools.local_pool import LocalPool, PortInUseError, find_free_base_port

ROOT = Path(__file__).resolve().parents[2]
TEST_NODES_DIR = ROOT / "tests" / "comfy_nodes"
SCREENSHOTS = ROOT / "out" / "screenshots"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LAB_START_TIMEOUT = 90.0
LAB_STOP_TIMEOUT = 20.0
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only, never via a proxy


# -- real servers -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def lab_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPool]:
    """Two real ComfyUI servers with the test nodes (SlowSteps), stopped by PID at the end."""
    pool = LocalPool(tmp_path_factory.mktemp("lab-pool"))
    try:
        for attempt in range(5):
            try:
                pool.start(2, base_port=find_free_base_port(2), custom_nodes=[TEST_NODES_DIR])
                break
            except PortInUseError:
                if attempt == 4:
                    raise
        yield pool
    finally:
        pool.down()


# -- JupyterLab ---------------------------------------------------------------------------------------------------
@dataclass
class Lab:
    """A running JupyterLab: ``url`` (no trailing slash), ``token``, ``root`` (its notebook folder)."""

    proc: subprocess.Popen[bytes]
    url: str
    token: str
    root: Path
    runtime_dir: Path
    log: Path

    def api(self, method: str, path: str, timeout: float = 5.0) -> Any:
        request = urllib.request.Request(f"{self.url}{path}?token={self.token}", method=method)
        with _HTTP.open(request, timeout=timeout) as resp:
            body = resp.read()
        return json.loads(body) if body else None

    def open_url(self, notebook: str) -> str:
        return f"{self.url}/lab/tree/{notebook}?token={self.token}"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def start_lab(base: Path) -> Lab:
    """Start jupyter-lab with private folders and a token; return once ``/api/status`` answers 200."""
    return _start_jupyter(base, "jupyter-lab", "LabApp")


def _start_jupyter(base: Path, program: str, app: str) -> Lab:
    """Start a Jupyter server (``jupyter-lab``, or ``jupyter-notebook`` for Notebook 7, whose settings class is
    ``app``) on loopback with private folders, a token and news off; return once ``/api/status`` answers 200."""
    dirs = {name: base / name for name in ("root", "config", "runtime", "workspaces", "settings", "ipython")}
    for path in dirs.values():
        path.mkdir(parents=True, exist_ok=True)
    notification = dirs["settings"] / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    notification.parent.mkdir(parents=True, exist_ok=True)
    notification.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}), encoding="utf-8")
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(dirs["config"]),
        "JUPYTER_RUNTIME_DIR": str(dirs["runtime"]),
        "IPYTHONDIR": str(dirs["ipython"]),
    }
    env.pop("COMFY_SERVERS", None)  # the test notebook names its servers itself
    token = secrets.token_hex(16)
    log = base / f"{program}.log"
    executable = Path(sys.executable).with_name(program)
    for _attempt in range(3):
        port = _free_port()
        command = [
            str(executable), "--no-browser", "--allow-root",
            "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={dirs['root']}",
            f"--{app}.workspaces_dir={dirs['workspaces']}", f"--{app}.user_settings_dir={dirs['settings']}",
        ]  # fmt: skip
        with log.open("ab") as fh:
            proc = subprocess.Popen(
                command, env=env, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
            )
        lab = Lab(proc, f"http://127.0.0.1:{port}", token, dirs["root"], dirs["runtime"], log)
        deadline = time.monotonic() + LAB_START_TIMEOUT
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                lab.api("GET", "/api/status", timeout=1.0)
                return lab
            except (urllib.error.URLError, OSError):
                time.sleep(0.2)  # polling the server's readiness, bounded by the deadline
        if proc.poll() is None:
            stop_lab(lab)
            raise RuntimeError(f"{program} did not answer in {LAB_START_TIMEOUT:.0f} s:\n{_log_tail(log)}")
        if "already in use" not in _log_tail(log):  # lost a port race: try another port, else give up
            raise RuntimeError(f"{program} exited with code {proc.returncode}:\n{_log_tail(log)}")
    raise RuntimeError(f"{program} found no free port:\n{_log_tail(log)}")


def _kernels_of(runtime_dir: Path) -> list[int]:
    """PIDs of kernels started with a connection file in our private runtime folder (so: ours)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(arg.startswith(str(runtime_dir).encode()) for arg in argv):
            pids.append(int(proc.name))
    return pids


def stop_lab(lab: Lab) -> list[int]:
    """Shut kernels down through the API, SIGTERM the server by PID (SIGKILL if stuck), then SIGKILL any kernel
    still running from our runtime folder; return those strays' PIDs (there should be none)."""
    if lab.proc.poll() is None:
        try:
            for kernel in lab.api("GET", "/api/kernels"):
                lab.api("DELETE", f"/api/kernels/{kernel['id']}", timeout=10.0)
        except (urllib.error.URLError, OSError):
            pass  # the server is going away anyway; its own shutdown stops its kernels too
        lab.proc.send_signal(signal.SIGTERM)
        try:
            lab.proc.wait(LAB_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            lab.proc.kill()
            lab.proc.wait()
    strays = _kernels_of(lab.runtime_dir)
    for pid in strays:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return strays


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    server = start_lab(tmp_path / "lab")
    try:
        yield server
    finally:
        strays = stop_lab(server)
    assert not strays, f"kernels outlived JupyterLab (killed now): {strays}"


# -- the browser --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Debian chromium through Playwright (no `playwright install`: browsers cannot be downloaded here).

    Module scope, not session: Playwright's sync API keeps an asyncio loop running in the main thread while it is
    open, and every later test that starts a loop there (``asyncio.run``) would fail."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/ensure-chromium.sh (as root) first")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 1300})  # the whole test notebook fits
    try:
        yield context.new_page()
    finally:
        context.close()


@pytest.fixture(scope="session")
def screenshots() -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS


# -- Jupyter Notebook 7 -------------------------------------------------------------------------------------------
def start_notebook7(base: Path) -> Lab:
    """Start ``jupyter notebook`` (Notebook 7) like ``start_lab``: private folders, a token, loopback, news off.

    The returned ``Lab`` has the same fields; open a notebook at ``notebook7_url(server, name)``."""
    return _start_jupyter(base, "jupyter-notebook", "JupyterNotebookApp")


def notebook7_url(server: Lab, notebook: str) -> str:
    return f"{server.url}/notebooks/{notebook}?token={server.token}"


@pytest.fixture
def notebook7(tmp_path: Path) -> Iterator[Lab]:
    """A fresh Jupyter Notebook 7 server on loopback, stopped by PID (its kernels first) at the end."""
    server = start_notebook7(tmp_path / "notebook7")
    try:
        yield server
    finally:
        strays = stop_lab(server)
    assert not strays, f"kernels outlived Jupyter Notebook (killed now): {strays}"
