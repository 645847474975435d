"""``make lab``: JupyterLab on ``notebooks/`` with a local pool of real ComfyUI servers; Ctrl-C stops both.

The servers (CPU, no models, with the project's test nodes such as ``SlowSteps``) are started first, then
JupyterLab with ``COMFY_SERVERS`` naming them, so ``%load_ext comfy_notebook`` finds the pool by itself.
``COMFY_DEMO_POOL_STATE`` names this throw-away pool, which lets ``recovering.ipynb`` kill (and restart) one of
its servers. JupyterLab runs in its own session, so Ctrl-C reaches only this script, which then stops JupyterLab
(SIGTERM: it shuts its kernels down) and the servers, each by the PID it recorded. SIGTERM to this script does
the same.

    python examples/lab.py [--servers N] [--port P] [extra jupyter-lab options, e.g. --no-browser]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from comfy_notebook.tools.local_pool import LocalPool, find_free_base_port

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
DEMO_NODES = ROOT / "tests" / "comfy_nodes"
STOP_TIMEOUT = 20.0


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM JupyterLab (it shuts its kernels down), SIGKILL if it does not exit in time or on a second Ctrl-C."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(STOP_TIMEOUT)
    except (subprocess.TimeoutExpired, KeyboardInterrupt):
        proc.kill()
        proc.wait()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM (e.g. `kill`) cleans up like Ctrl-C instead of orphaning lab and servers


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=2, help="how many local ComfyUI servers (default 2)")
    parser.add_argument("--port", type=int, default=8888, help="JupyterLab's port (the next free one if taken)")
    args, lab_args = parser.parse_known_args(argv)

    with LocalPool(Path(tempfile.mkdtemp(prefix="comfy-lab-"))) as pool:
        urls = pool.start(args.servers, base_port=find_free_base_port(args.servers), custom_nodes=[DEMO_NODES])
        print(f"local pool up: {' '.join(urls)}", flush=True)
        env = {**os.environ, "COMFY_SERVERS": " ".join(urls), "COMFY_DEMO_POOL_STATE": str(pool.state_dir)}
        command = [
            sys.executable, "-m", "jupyterlab",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={args.port}",
            f"--ServerApp.root_dir={NOTEBOOKS}",
            *(["--allow-root"] if os.geteuid() == 0 else []),  # containers and CI often run as root
            *lab_args,
        ]  # fmt: skip
        proc = subprocess.Popen(command, env=env, start_new_session=True)
        print(f"JupyterLab pid {proc.pid} on notebooks/; press Ctrl-C here to stop it and the servers", flush=True)
        try:
            return proc.wait()
        except KeyboardInterrupt:
            print("\nstopping JupyterLab and the local pool ...", flush=True)
            return 0
        finally:
            stop(proc)


if __name__ == "__main__":
    raise SystemExit(main())
