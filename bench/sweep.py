"""A 12-point sweep (3 x 4) over two real ComfyUI servers in pool mode, against the pool's ideal time.

Two local servers with the test nodes (``SlowSteps`` sleeps ``step_seconds``; the 2 CPU cores are not the limit).
Each point is one ``SlowSteps`` step of ``--step`` seconds. Per round, on fresh prompts (distinct colours, so the
server's cache never answers) and with ComfyUI's periodic garbage collection reset first:

* ``sweep``: ``engine.sweep(workflow, {"EmptyImage.color": 3 values, "1.width": 4 values})`` in pool mode with
  per-prompt events (``progress=True``, what a live grid uses), timed from the call to the last point's end
  (``Sweep.elapsed``);
* ``one server``: the same 12 prompts through ``submit_many`` to ONE server, timed the same way: the server's real
  cost of the 12 points, sleeps plus its own per-prompt overhead.

Ideal = total work / 2 servers, given two ways: the sleeps alone (12 x step / 2) and the measured cost on one server
/ 2 (what no routing can beat). Medians over ``--rounds``.

    .venv/bin/python bench/sweep.py                       # 5 rounds, 0.5 s per point (~2 minutes)
    .venv/bin/python bench/sweep.py --rounds 1 --json /tmp/bench-sweep.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from comfy_notebook.engine.engine import Engine, EngineOptions
from comfy_notebook.tools.local_pool import LocalPool, find_free_base_port

NODES = Path(__file__).resolve().parent.parent / "tests" / "comfy_nodes"
WIDTHS = [8, 9, 10, 11]
_colours = itertools.count(1)


def workflow(step: float) -> dict[str, Any]:
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "SlowSteps", "inputs": {"image": ["1", 0], "steps": 1, "step_seconds": step}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "bench-sweep"}},
    }


def fresh_colours() -> list[int]:
    return [next(_colours) * 97 % 0xFFFFFF for _ in range(3)]


def reset_servers(urls: list[str]) -> None:
    """Empty history, and make each server collect garbage now (``POST /free`` resets the timer of ComfyUI's
    periodic ``gc.collect()``, a 0.3-1.2 s stall that would otherwise land somewhere in a run)."""
    for url in urls:
        httpx.post(url + "/history", json={"clear": True}, timeout=30).raise_for_status()
        httpx.post(url + "/free", json={"unload_models": True}, timeout=30).raise_for_status()


def warm(engine: Engine, urls: list[str]) -> None:
    """One prompt per server first: sockets open, node types loaded, nothing cold inside the clock."""
    tasks = [engine.submit(workflow(0.0), server=url) for url in urls]
    for task in tasks:
        task.result(60)


def sweep_round(urls: list[str], step: float) -> dict[str, Any]:
    reset_servers(urls)
    engine = Engine(urls, EngineOptions(mode="pool"))
    try:
        warm(engine, urls)
        sweep = engine.sweep(workflow(step), {"EmptyImage.color": fresh_colours(), "1.width": WIDTHS}).wait(300)
        assert sweep.counts() == {"success": 12}, sweep
        return {"elapsed": sweep.elapsed, "servers": sweep.servers}
    finally:
        engine.close()


def one_server_round(urls: list[str], step: float) -> float:
    reset_servers(urls[:1])
    engine = Engine(urls[:1])
    try:
        warm(engine, urls[:1])
        graphs = []
        for colour in fresh_colours():
            for width in WIDTHS:
                graph = workflow(step)
                graph["1"]["inputs"].update(color=colour, width=width)
                graphs.append(graph)
        started = time.time()
        tasks = engine.submit_many(graphs, progress=True)
        for task in tasks:
            task.result(300)
        return max(task.finished_at or 0.0 for task in tasks) - started
    finally:
        engine.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--step", type=float, default=0.5, help="seconds of work per point")
    parser.add_argument("--json", type=Path, help="write the numbers here")
    args = parser.parse_args()
    with LocalPool(Path(tempfile.mkdtemp(prefix="bench-sweep-"))) as pool:
        urls = pool.start(2, base_port=find_free_base_port(2), custom_nodes=[NODES])
        sweeps, singles = [], []
        for r in range(args.rounds):
            sweeps.append(sweep_round(urls, args.step))
            singles.append(one_server_round(urls, args.step))
            done = sweeps[-1]
            print(f"round {r + 1}: sweep {done['elapsed']:.2f} s {done['servers']}, one server {singles[-1]:.2f} s")
    sweep_time = statistics.median(s["elapsed"] for s in sweeps)
    one = statistics.median(singles)
    sleeps_ideal = 12 * args.step / 2
    measured_ideal = one / 2
    report = {
        "step_seconds": args.step,
        "rounds": args.rounds,
        "sweep_seconds_median": round(sweep_time, 3),
        "one_server_seconds_median": round(one, 3),
        "ideal_sleeps_seconds": sleeps_ideal,
        "ideal_measured_seconds": round(measured_ideal, 3),
        "x_ideal_sleeps": round(sweep_time / sleeps_ideal, 3),
        "x_ideal_measured": round(sweep_time / measured_ideal, 3),
        "points_per_server": [s["servers"] for s in sweeps],
        "machine": {"python": platform.python_version(), "nproc": os.cpu_count(), "load": os.getloadavg()},
    }
    print(
        f"12-point sweep over 2 servers: {sweep_time:.2f} s (median of {args.rounds}); ideal {sleeps_ideal:.2f} s "
        f"from the sleeps ({report['x_ideal_sleeps']}x), {measured_ideal:.2f} s from one server's measured cost "
        f"({report['x_ideal_measured']}x)"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
