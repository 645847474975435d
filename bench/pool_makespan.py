"""Part 1 of ``bench/pool.py``: the makespan of N prompts under each strategy, against the ideal and the servers
alone (see ``bench/pool.py``'s docstring for the method)."""

from __future__ import annotations

import itertools
import random
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import comfy_notebook as cn
from comfy_notebook.engine.options import EngineOptions
from pool_alone import run_alone
from pool_common import (
    COLORS,
    MAX_MS,
    MIN_MS,
    clear_history,
    foreign_comfy_processes,
    wait_sockets_open,
    warm,
    workflow,
)

CONFIGS: dict[str, list[float]] = {"equal": [1.0, 1.0, 1.0, 1.0], "half": [1.0, 1.0, 1.0, 0.5]}
TARGETS = {"equal": 1.05, "half": 1.07}


# -- 1. makespan ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Strategy:
    name: str
    mode: str  # "pool" or "lock"
    #: "engine" (the engine routes), "round-robin" or "least-loaded" (``server=`` per prompt), or "alone" (no engine:
    #: the servers fed by a clairvoyant split, see ``pool_alone.py``)
    route: str = "engine"
    depth: int = 2


STRATEGIES = {
    "pool": Strategy("pool", "pool"),
    "lock": Strategy("lock", "lock"),
    "round-robin": Strategy("round-robin", "lock", "round-robin"),
    "least-loaded": Strategy("least-loaded", "lock", "least-loaded"),
    "pool-d1": Strategy("pool-d1", "pool", depth=1),
    "pool-d3": Strategy("pool-d3", "pool", depth=3),
    "alone": Strategy("alone", "none", "alone"),
    "pool-bulk": Strategy("pool-bulk", "pool", "bulk"),
    "alone-quiet": Strategy("alone-quiet", "none", "alone-quiet"),
}
CONFIG_STRATEGIES = {
    "equal": ["pool", "alone", "lock", "round-robin", "least-loaded", "pool-d1", "pool-d3"],
    "half": ["pool", "alone", "lock", "round-robin", "least-loaded"],
}


def assign_servers(strategy: Strategy, urls: Sequence[str], n: int, rng: random.Random) -> list[str | None]:
    """The ``server=`` of each prompt (None: the engine decides)."""
    if strategy.route == "round-robin":
        return [urls[i % len(urls)] for i in range(n)]
    if strategy.route == "least-loaded":
        # Fewest prompts assigned so far, ties at random: with every prompt submitted at once nothing has finished
        # yet, so this is the even split any submit-time balancer blind to speed ends up with.
        counts = dict.fromkeys(urls, 0)
        chosen: list[str | None] = []
        for _ in range(n):
            least = min(counts.values())
            url = rng.choice([u for u in urls if counts[u] == least])
            counts[url] += 1
            chosen.append(url)
        return chosen
    return [None] * n


def align_gc(urls: Sequence[str]) -> None:
    """Make every server run its garbage collection now, outside the clock.

    ComfyUI's worker runs ``gc.collect()`` at the first prompt boundary 10 s after its previous one, which stalls
    that server for 0.3-1.2 s (measured here: 1.2-2.8 s when four servers on two cores collect together, and their
    timers line up because every run starts on all of them at once). A run of ~10 s would then carry one stall per
    server wherever it happens to fall. ``POST /free {"unload_models": true}`` resets that timer (no models are
    loaded, so nothing else happens): the collection runs now, the next one not before 10 s from now; the warm-up
    prompts queued right after wait for it to finish."""
    for url in urls:
        httpx.post(url + "/free", json={"unload_models": True}, timeout=30).raise_for_status()


#: ComfyUI's worker collects garbage at the first prompt boundary this long after its previous collection.
GC_INTERVAL = 10.0
GC_MODES = ("stagger", "align", "none")


def stagger_gc(urls: Sequence[str], gap: float | None = None) -> None:
    """Make the servers collect garbage now, one after another ``GC_INTERVAL / n`` apart, so that their next
    collections fall at different moments of the run, as on a pool of separate machines.

    On separate machines each server's collection stalls that server alone, for about 0.3 s (``gc.collect()`` in a
    ComfyUI process measured 0.32 s of CPU here). Four servers on this one 2-core machine, started on the same
    prompts at the same moment, collect in lockstep: all four stall together, for 1.2-2.8 s, which a single machine
    per server would never see. Staggering keeps every collection in the run (each server still stalls once every
    10 s) and removes only the lockstep, which is an artefact of the bench machine."""
    gap = GC_INTERVAL / len(urls) if gap is None else gap
    for i, url in enumerate(urls):
        if i:
            time.sleep(gap)
        httpx.post(url + "/free", json={"unload_models": True}, timeout=30).raise_for_status()


def run_makespan(
    urls: Sequence[str],
    speeds: Sequence[float],
    strategy: Strategy,
    durations: Sequence[float],
    folder: str,
    *,
    gc: str = "stagger",
) -> dict[str, Any]:
    """Submit every prompt at once with ``engine.submit``, wait for all; makespan = first submit to last result."""
    clear_history(urls)
    if strategy.route.startswith("alone"):
        return _run_alone(urls, speeds, durations, folder, gc=gc, quiet=strategy.route == "alone-quiet")
    engine = cn.Engine(list(urls), EngineOptions(mode=strategy.mode, depth=strategy.depth))
    try:
        _prepare_gc(urls, gc)
        warm(engine, urls)
        if strategy.mode == "pool":
            wait_sockets_open(engine)
        servers = assign_servers(strategy, urls, len(durations), random.Random(folder))
        graphs = [workflow(COLORS.take(), d, folder) for d in durations]
        start = time.time()
        if strategy.route == "bulk":
            tasks = engine.submit_many(graphs)
        else:
            tasks = [engine.submit(g, server=s) for g, s in zip(graphs, servers, strict=True)]
        submitted = time.time() - start
        results = [t.result(timeout=900) for t in tasks]
        waited = time.time() - start
    finally:
        engine.close()
    bad = [r for r in results if r.status != "success"]
    if bad:
        raise RuntimeError(f"{len(bad)} prompts did not succeed, e.g. {bad[0]}")
    makespan = max(t.finished_at or 0.0 for t in tasks) - start
    speed_of = dict(zip(urls, speeds, strict=True))
    rows = [
        {
            "server": urls.index(r.server) if r.server in urls else -1,
            "seconds": round(d, 4),
            "started": round((t.started_at or start) - start, 4),
            "finished": round((t.finished_at or start) - start, 4),
        }
        for t, r, d in zip(tasks, results, durations, strict=True)
    ]
    return {
        "makespan_s": makespan,
        "submit_s": submitted,
        "waited_s": waited,
        "servers": server_summary(rows, [speed_of[u] for u in urls], makespan),
        "timeline": rows if strategy.mode == "pool" else None,
    }


def _prepare_gc(urls: Sequence[str], gc: str) -> None:
    if gc == "align":
        align_gc(urls)
    elif gc == "stagger":
        stagger_gc(urls)


def _run_alone(
    urls: Sequence[str], speeds: Sequence[float], durations: Sequence[float], folder: str, *, gc: str, quiet: bool
) -> dict[str, Any]:
    """The servers alone (``pool_alone.py``), with the garbage collection placed as for the engine's runs: there the
    last collection (stagger: the last server's; align: every server's) ends right before the clock starts; here it
    is triggered once every share is queued, so ComfyUI runs it at the gate's end, right before the first timed
    prompt (the earlier servers of a stagger collect ``GC_INTERVAL / n`` apart, as always). The gate shifts those
    earlier collections about a second closer to the clock's start than in the engine's runs: in the full 9-10 s runs
    every server but the last collects once either way, but a ``--quick`` run of 2 s can catch one more here."""
    last: Sequence[str] = []
    if gc == "stagger":
        stagger_gc(urls[:-1], GC_INTERVAL / len(urls))
        time.sleep(GC_INTERVAL / len(urls))
        last = urls[-1:]
    elif gc == "align":
        last = urls

    def collect_last() -> None:
        for url in last:
            httpx.post(url + "/free", json={"unload_models": True}, timeout=30).raise_for_status()

    start = time.time()
    got = run_alone(
        urls,
        speeds,
        durations,
        lambda seconds: workflow(COLORS.take(), seconds, folder),
        quiet=quiet,
        after_posting=collect_last,
    )
    makespan = got["makespan_s"]
    return {
        "makespan_s": makespan,
        "submit_s": None,
        "waited_s": time.time() - start,
        "servers": server_summary(got["rows"], speeds, makespan),
        "spans_s": got["spans_s"],
        "shares": got["shares"],
        "timeline": got["rows"],
    }


#: A gap this long between one prompt's end of sleep and the next start on the same server is a stall, not overhead.
STALL_S = 0.3


def server_summary(rows: list[dict[str, Any]], speeds: Sequence[float], makespan: float) -> dict[str, Any]:
    """Per server, from the client-side timeline (``started`` = the ``executing`` event received): its prompts, its
    work (sleep / speed), its last result, and where the rest went: ``gaps_s`` sums, over consecutive prompts, the
    next start minus this start minus this sleep (per-prompt overhead, plus idle time when nothing was queued);
    ``stalls`` lists single gaps over ``STALL_S`` as (start time, length), the last prompt's own excess (result
    minus start minus sleep) included; ``idle_at_end_s`` = makespan - last result."""
    summary: dict[str, Any] = {}
    for index, speed in enumerate(speeds):
        mine = sorted((r for r in rows if r["server"] == index), key=lambda r: r["started"])
        if not mine:
            summary[str(index)] = {"prompts": 0, "work_s": 0.0, "last_finish_s": 0.0, "stall_s": 0.0}
            continue
        gaps = [(b["started"] - a["started"] - a["seconds"] / speed, a["started"]) for a, b in itertools.pairwise(mine)]
        last = max(r["finished"] for r in mine)
        tail = mine[-1]
        stalls = [(at, g) for g, at in gaps if g > STALL_S]
        excess = tail["finished"] - tail["started"] - tail["seconds"] / speed
        if excess > STALL_S:
            stalls.append((tail["started"], excess))
        summary[str(index)] = {
            "prompts": len(mine),
            "work_s": round(sum(r["seconds"] for r in mine) / speed, 4),
            "first_start_s": mine[0]["started"],
            "last_finish_s": round(last, 4),
            "gaps_s": round(sum(g for g, _ in gaps), 4),
            "median_gap_ms": round(1000 * statistics.median(g for g, _ in gaps), 1) if gaps else None,
            "stalls": [(round(at, 2), round(g, 3)) for at, g in stalls],
            "stall_s": round(sum(g for _, g in stalls), 3),
            "idle_at_end_s": round(makespan - last, 4),
        }
    return summary


def decompose(run: dict[str, Any], speeds: Sequence[float], ideal: float) -> dict[str, float]:
    """makespan / ideal = ``balance`` x ``overhead``, with L = the servers' last results averaged with their speeds as
    weights: ``balance`` = makespan / L (1.0: every server delivered its last result at the same moment: the
    routing's share) and ``overhead`` = L / ideal (the servers' time beyond their sleeps: per-prompt costs, idle
    gaps between prompts, stalls). ``stall_share`` is the speed-weighted stall time (gaps over 0.3 s, mostly
    ComfyUI's periodic garbage collection) over the ideal: the part of ``overhead`` no routing can avoid."""
    servers = [run["servers"][str(i)] for i in range(len(speeds))]
    weight = sum(speeds)
    last = sum(s * v["last_finish_s"] for s, v in zip(speeds, servers, strict=True)) / weight
    stall = sum(s * v["stall_s"] for s, v in zip(speeds, servers, strict=True)) / weight
    return {
        "balance": round(run["makespan_s"] / last, 4) if last else float("inf"),
        "overhead": round(last / ideal, 4),
        "stall_share": round(stall / ideal, 4),
        # An estimate: the stalls seen here hit every server at about the same moment (their 10 s timers line up),
        # so the makespan grows by about their length.
        "ratio_without_stalls": round((run["makespan_s"] - stall) / ideal, 4),
    }


def bench_makespan(
    config: str,
    urls: list[str],
    speeds: list[float],
    *,
    rounds: int,
    prompts: int,
    seed: int,
    pids: set[int],
    gc: str = "stagger",
    only: set[str] | None = None,
) -> dict[str, Any]:
    names = CONFIG_STRATEGIES[config] if only is None else [n for n in STRATEGIES if n in only]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    ideals: list[float] = []
    contention: list[int] = []
    for r in range(rounds):
        rng = random.Random(seed * 1000 + r)
        durations = [rng.randint(MIN_MS, MAX_MS) / 1000 for _ in range(prompts)]
        ideal = sum(durations) / sum(speeds)
        ideals.append(ideal)
        order = names[r % len(names) :] + names[: r % len(names)]
        contention.append(foreign_comfy_processes(pids))
        print(f"  round {r + 1}/{rounds} ({config}, ideal {ideal:.2f} s): ", end="", flush=True)
        for name in order:
            run = run_makespan(urls, speeds, STRATEGIES[name], durations, f"{config}-{name}-{r}", gc=gc)
            run["round"] = r
            run["ideal_s"] = ideal
            run["ratio"] = run["makespan_s"] / ideal
            run.update(decompose(run, speeds, ideal))
            runs[name].append(run)
            print(f"{name} {run['makespan_s']:.2f} s ({run['ratio']:.3f}x)  ", end="", flush=True)
        print()
    summary: dict[str, Any] = {}
    for name in names:
        ratios = [run["ratio"] for run in runs[name]]
        makespans = [run["makespan_s"] for run in runs[name]]
        summary[name] = {
            "median_makespan_s": statistics.median(makespans),
            "median_ratio": statistics.median(ratios),
            "median_balance": statistics.median(run["balance"] for run in runs[name]),
            "median_overhead": statistics.median(run["overhead"] for run in runs[name]),
            "median_stall_share": statistics.median(run["stall_share"] for run in runs[name]),
            "median_ratio_without_stalls": statistics.median(run["ratio_without_stalls"] for run in runs[name]),
            "makespans_s": [round(m, 3) for m in makespans],
            "ratios": [round(x, 4) for x in ratios],
        }
    extra: dict[str, Any] = {}
    if "pool" in runs and "alone" in runs:
        paired = [p["makespan_s"] / a["makespan_s"] for p, a in zip(runs["pool"], runs["alone"], strict=True)]
        extra["pool_vs_alone"] = {"median": statistics.median(paired), "rounds": [round(x, 4) for x in paired]}
    return {
        **extra,
        "speeds": speeds,
        "prompts": prompts,
        "gc": gc,
        "rounds": rounds,
        "ideal_s": [round(i, 4) for i in ideals],
        "median_ideal_s": statistics.median(ideals),
        "target": TARGETS[config],
        "pool_meets_target": "pool" in summary and summary["pool"]["median_ratio"] <= TARGETS[config],
        "foreign_comfy_processes_per_round": contention,
        "summary": summary,
        "runs": runs,
    }


def print_makespan(config: str, data: dict[str, Any]) -> None:
    print(
        f"\nmakespan, {data['prompts']} prompts, speeds {data['speeds']}, median of {data['rounds']} rounds "
        f"(ideal {data['median_ideal_s']:.2f} s = work / {sum(data['speeds'])}):"
    )
    print(
        f"  {'strategy':<14}{'makespan':>10}{'x ideal':>9}{'balance':>9}{'overhead':>10}{'stalls':>8}{'w/o':>7}"
        "   per round (x ideal)"
    )
    for name, s in data["summary"].items():
        rounds = ", ".join(f"{x:.3f}" for x in s["ratios"])
        print(
            f"  {name:<14}{s['median_makespan_s']:>9.2f}s{s['median_ratio']:>9.3f}{s['median_balance']:>9.3f}"
            f"{s['median_overhead']:>10.3f}{100 * s['median_stall_share']:>7.1f}%"
            f"{s['median_ratio_without_stalls']:>7.3f}   [{rounds}]"
        )
    verdict = "met" if data["pool_meets_target"] else "MISSED"
    print(f"  pool mode target <= {data['target']:.2f}x ideal: {verdict}")
    if "pool_vs_alone" in data:
        rounds = ", ".join(f"{x:.3f}" for x in data["pool_vs_alone"]["rounds"])
        print(
            f"  pool / alone (the servers fed by a clairvoyant split, same round): median "
            f"{data['pool_vs_alone']['median']:.3f} [{rounds}]; alone / ideal: median "
            f"{data['summary']['alone']['median_ratio']:.3f} (what the servers deliver beyond their sleeps)"
        )
    print(
        "  (x ideal = balance x overhead; balance: makespan / the servers' speed-weighted mean last result, the\n"
        "   routing's share; overhead: server time beyond the sleeps; stalls: its part in gaps over 0.3 s, in % of\n"
        "   ideal, mostly ComfyUI's garbage collection every 10 s; w/o: x ideal with the stall time taken out, an\n"
        "   estimate)"
    )
