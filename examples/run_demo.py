"""``make demo``: start a local pool of two real ComfyUI servers, run the quickstart script and the quickstart
notebook against it, stop the pool.

The notebook runs headlessly (nbclient) as "Run All" would; the executed copy and an HTML rendering go to
``out/quickstart.ipynb`` and ``out/quickstart.html``. Only the servers this script started are stopped, by the PIDs
it recorded.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from comfy_notebook.tools.local_pool import LocalPool, find_free_base_port
from comfy_notebook.tools.notebooks import NotebookExecutionError, execute_notebook

ROOT = Path(__file__).resolve().parent.parent
DEMO_NODES = ROOT / "tests" / "comfy_nodes"  # SlowSteps: real progress events without model files
OUT = ROOT / "out"


def main() -> int:
    with LocalPool(Path(tempfile.mkdtemp(prefix="comfy-demo-"))) as pool:
        urls = pool.start(2, base_port=find_free_base_port(2), custom_nodes=[DEMO_NODES])
        print(f"local pool up: {' '.join(urls)}", flush=True)
        env = {"COMFY_SERVERS": " ".join(urls)}
        quickstart = [sys.executable, str(ROOT / "examples" / "quickstart.py"), "--slow", "--out", "out/quickstart"]
        script_rc = subprocess.run(quickstart, env={**os.environ, **env}, cwd=ROOT, check=False).returncode

        print("\nexecuting notebooks/quickstart.ipynb ...", flush=True)
        started = time.monotonic()
        try:
            notebook = execute_notebook(ROOT / "notebooks" / "quickstart.ipynb", OUT, env)
        except NotebookExecutionError as exc:
            print(f"notebook failed: {exc}\n  HTML copy: {exc.html}", file=sys.stderr)
            return 1
        elapsed = time.monotonic() - started
        shown = [p.relative_to(ROOT) for p in (notebook, notebook.with_suffix(".html"))]
        print(f"notebook executed in {elapsed:.1f} s: {shown[0]}, {shown[1]}")
        return script_rc


if __name__ == "__main__":
    raise SystemExit(main())
