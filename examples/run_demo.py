"""``make demo``: start a local pool of two real ComfyUI servers, run the quickstart against it, stop the pool.

Only the servers this script started are stopped, by the PIDs it recorded.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from comfy_notebook.tools.local_pool import LocalPool, find_free_base_port

ROOT = Path(__file__).resolve().parent.parent
DEMO_NODES = ROOT / "tests" / "comfy_nodes"  # SlowSteps: real progress events without model files


def main() -> int:
    with LocalPool(Path(tempfile.mkdtemp(prefix="comfy-demo-"))) as pool:
        urls = pool.start(2, base_port=find_free_base_port(2), custom_nodes=[DEMO_NODES])
        print(f"local pool up: {' '.join(urls)}", flush=True)
        env = {**os.environ, "COMFY_SERVERS": " ".join(urls)}
        quickstart = [sys.executable, str(ROOT / "examples" / "quickstart.py"), "--slow", "--out", "out/quickstart"]
        return subprocess.run(quickstart, env=env, cwd=ROOT, check=False).returncode


if __name__ == "__main__":
    raise SystemExit(main())
