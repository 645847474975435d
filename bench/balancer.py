"""Per-prompt latency through a load balancer with affinity against the same prompts sent to a server directly.

Measured side by side in one run, on three real ComfyUI servers started here (``LocalPool`` with the test nodes).
For each affinity balancer of ``comfy_notebook.tools.balancer`` (HAProxy ``cookie`` insert, HAProxy ``url_param``
clientId and ``header`` X-Comfy-Affinity hashing, nginx ``hash $arg_clientId consistent``) a fresh balancer in front
of all three servers and two engines: one on the balancer's URL, one directly on the backend that balancer's session
lands on (found from the warm-up prompt's history), so both paths end at the same ComfyUI process. Then N pairs of
prompts, one per path, one after another (``submit`` + ``result``, which is what ``engine.run`` does, so the task's
progress events can be counted too); the order within a pair alternates, so drift and ComfyUI's 10-second garbage
collection hit both paths alike. Each prompt is ``tests/workflows.slow_workflow`` with one step of
``--step-seconds`` (0.3 s by default), a distinct color (never served from cache) and a fresh output folder.

Reported per balancer: median and p90 per path in ms, the ratios balancer / direct (target: median within 10 %), how
many prompts showed progress events (the socket reached the backend that ran them), and the URL's affinity as the
engine's status reports it.

    .venv/bin/python bench/balancer.py --json out/bench-balancer.json   # 30 pairs per balancer (~2 minutes)
    .venv/bin/python bench/balancer.py --quick                         # 8 pairs, cookie and hash only
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import comfy_notebook as cn
from bench.pool_common import clear_history, machine, pct, start_pool
from comfy_notebook.tools.balancer import Balancer, Mode
from tests.workflows import slow_workflow

RUN = uuid.uuid4().hex[:8]
MODES: tuple[Mode, ...] = ("cookie", "url_param", "header", "hash")
PATHS = ("direct", "balancer")
TARGET = 1.10
TIMEOUT = 120.0


class Colors:
    def __init__(self) -> None:
        self._next = 0

    def take(self) -> int:
        self._next += 1
        return self._next


COLORS = Colors()


def workflow(seconds: float, folder: str) -> dict[str, Any]:
    graph = slow_workflow(COLORS.take(), steps=1, step_seconds=seconds)
    graph["3"]["inputs"]["filename_prefix"] = f"bench-balancer/{RUN}/{folder}/img"  # SaveImage lists its folder
    return graph


def home_of(backends: list[str], prompt_id: str) -> str:
    """The one backend whose history holds ``prompt_id`` (asked directly)."""
    found = [
        url
        for url in backends
        if prompt_id in httpx.get(f"{url}/history/{prompt_id}", timeout=10, trust_env=False).json()
    ]
    if len(found) != 1:
        raise RuntimeError(f"prompt {prompt_id} is in the history of {found}, expected exactly one backend")
    return found[0]


def timed(engine: cn.Engine, graph: dict[str, Any]) -> tuple[float, bool]:
    """One prompt, submit to result: (seconds, whether it showed a progress event)."""
    start = time.perf_counter()
    task = engine.submit(graph)
    result = task.result(TIMEOUT)
    seconds = time.perf_counter() - start
    if result.status != "success" or len(result.fetch()) != len(result.refs) or not result.refs:
        raise RuntimeError(f"{result} came back incomplete: {result.outputs}")
    return seconds, task.progress is not None


def summary(times: list[float], events: int) -> dict[str, Any]:
    return {
        "n": len(times),
        "p50_ms": round(1000 * statistics.median(times), 1),
        "p90_ms": round(1000 * pct(times, 0.9), 1),
        "min_ms": round(1000 * min(times), 1),
        "max_ms": round(1000 * max(times), 1),
        "progress_seen": events,
        "times_ms": [round(1000 * t, 1) for t in times],
    }


def bench_mode(mode: Mode, backends: list[str], pairs: int, seconds: float, state_dir: Path) -> dict[str, Any]:
    clear_history(backends)
    with Balancer(mode, backends, state_dir / mode) as lb:
        via = cn.Engine([lb.url])
        direct: cn.Engine | None = None
        try:
            warm = via.submit(workflow(seconds, f"{mode}-warm")).result(TIMEOUT)
            backend = home_of(backends, warm.prompt_id)
            direct = cn.Engine([backend])
            direct.submit(workflow(seconds, f"{mode}-warm")).result(TIMEOUT)
            engines = {"direct": direct, "balancer": via}
            times: dict[str, list[float]] = {p: [] for p in PATHS}
            events = dict.fromkeys(PATHS, 0)
            for i in range(pairs):
                for path in PATHS if i % 2 == 0 else PATHS[::-1]:
                    took, seen = timed(engines[path], workflow(seconds, f"{mode}-{path}"))
                    times[path].append(took)
                    events[path] += seen
            entry = next(s for s in via.get_status()["servers"] if s["url"] == lb.url)
        finally:
            via.close()
            if direct is not None:
                direct.close()
    out: dict[str, Any] = {path: summary(times[path], events[path]) for path in PATHS}
    out["backend"] = backends.index(backend)
    out["ratio_p50"] = round(statistics.median(times["balancer"]) / statistics.median(times["direct"]), 4)
    out["ratio_p90"] = round(pct(times["balancer"], 0.9) / pct(times["direct"], 0.9), 4)
    out["within_target"] = out["ratio_p50"] <= TARGET
    out["affinity"] = entry.get("affinity")
    out["backend_changes"] = entry.get("backend_changes")
    out["affinity_error"] = entry.get("affinity_error")
    return out


def print_mode(mode: str, data: dict[str, Any]) -> None:
    d, b = data["direct"], data["balancer"]
    verdict = "ok" if data["within_target"] else f"OVER {TARGET:.2f}"
    print(
        f"  {mode:<10} direct p50 {d['p50_ms']:7.1f} p90 {d['p90_ms']:7.1f} | balancer p50 {b['p50_ms']:7.1f} "
        f"p90 {b['p90_ms']:7.1f} ms | ratio p50 {data['ratio_p50']:.3f} ({verdict}) p90 {data['ratio_p90']:.3f} | "
        f"progress {b['progress_seen']}/{b['n']} vs {d['progress_seen']}/{d['n']} | affinity {data['affinity']}, "
        f"{data['backend_changes']} backend changes",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write every figure here")
    parser.add_argument("--pairs", type=int, help="prompts per path and balancer, default 30 (--quick: 8)")
    parser.add_argument("--step-seconds", type=float, default=0.3, help="the sleeping node's one step (0.3)")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, default {','.join(MODES)}")
    parser.add_argument("--quick", action="store_true", help="smoke run: 8 pairs, cookie and hash only")
    parser.add_argument("-v", "--verbose", action="store_true", help="the engine's warnings too")
    args = parser.parse_args(argv)
    pairs = args.pairs or (8 if args.quick else 30)
    modes = [m.strip() for m in ("cookie,hash" if args.quick else args.modes).split(",") if m.strip()]
    for mode in modes:
        if mode not in MODES:
            parser.error(f"unknown balancer {mode!r}: use {', '.join(MODES)}")
    logging.basicConfig(level=logging.WARNING if args.verbose else logging.CRITICAL)

    out: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}, "target": TARGET, "modes": {}}
    state_root = Path(tempfile.mkdtemp(prefix="comfy-bench-balancer-"))
    print(f"servers' and balancers' folders and logs: {state_root}", flush=True)
    started = time.time()
    print("starting 3 ComfyUI servers ...", flush=True)
    with start_pool(state_root / "servers", [1.0, 1.0, 1.0])[0] as pool:
        backends = pool.urls
        out["machine"] = m = machine(backends[0])
        print(f"Python {m['python']}, ComfyUI {m['comfyui']}, nproc {m['nproc']}", flush=True)
        print(f"{pairs} pairs per balancer, one step of {args.step_seconds} s, interleaved", flush=True)
        for mode in modes:
            data = bench_mode(mode, backends, pairs, args.step_seconds, state_root)  # type: ignore[arg-type]
            out["modes"][mode] = data
            print_mode(mode, data)
            if args.json:  # after every balancer, so a run that dies later keeps what it measured
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps(out, indent=1))
    out["duration_s"] = round(time.time() - started, 1)
    out["all_within_target"] = all(d["within_target"] for d in out["modes"].values())
    print(f"\n== summary ({out['duration_s']:.0f} s; target: balancer median <= {TARGET:.2f} x direct) ==")
    for mode, data in out["modes"].items():
        print_mode(mode, data)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
        print(f"\nfigures written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
