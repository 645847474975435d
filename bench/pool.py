"""Pool mode on real ComfyUI servers: makespan against the ideal and other routings, and failover timing.

Everything is measured side by side in one run, on real ComfyUI servers started here (``LocalPool`` with the test
nodes, so the ``SlowSteps`` node sleeps ``step_seconds / speed``: the 2 CPU cores are not the limit):

1. Makespan of N prompts of mixed durations (``SlowSteps``, one step of 50-300 ms from a seeded rng), all submitted
   at once with ``engine.submit`` (per-prompt events), against the ideal = total work / the pool's combined speed.
   Strategies: ``pool`` (ours, ``mode="pool"``, depth 2), ``lock`` (the original fix: everything to the locked
   server), ``round-robin`` (a lock-mode engine, prompt i gets ``server=urls[i % n]``) and ``least-loaded`` (prompt
   i goes, via ``server=``, to the server with the fewest prompts assigned so far: an even split blind to speed);
   in the equal configuration also ``pool-d1`` and ``pool-d3`` (``EngineOptions(depth=1|3)``). Two configurations:
   speeds [1, 1, 1, 1] and [1, 1, 1, 0.5], each on its own pool. Rounds are interleaved (round r runs every
   strategy once, in an order rotated by r), every run on fresh prompts (distinct colors, the same durations for
   every strategy of a round), an empty history and ComfyUI's periodic garbage collection staggered over the
   servers just before, as on separate machines (see ``stagger_gc``; ``--gc align`` makes all four collect
   together, ``--gc none`` leaves the timers where they are); medians reported. Targets: pool <= 1.05x ideal
   (equal), <= 1.07x (half-speed). Each ratio is split into ``balance`` (the routing's share) x ``overhead``
   (server time beyond the sleeps), see ``decompose``.
2. Failover on the equal pool, pool mode, a steady stream of prompts: ``--kills`` SIGKILLs (one server at a time,
   restarted on the same port before the next kill), each timed from the kill to the moment every prompt that was
   on the killed server has been sent to another one (its last attempt names another server), task state polled
   every ~1 ms from this thread; also when the OS closed the dead server's sockets (the floor) and when the engine
   marked the prompts lost. Target p99 < 1 s. Then ``--hangs`` SIGSTOPs (the server's own pid, ours only), timed
   the same way (target < 3 s), each followed by SIGCONT, with the duplicates the engine counted; and the same
   again with shorter WebSocket pings (``TUNED_SOCKET``, an analysis variant, not the default).
3. The machine: Python and ComfyUI versions, nproc, load, and any ComfyUI processes not ours (contention).

    .venv/bin/python bench/pool.py --json out/bench-pool.json          # the full run (~25 minutes)
    .venv/bin/python bench/pool.py --quick --json /tmp/bench-pool.json  # smoke run: 1 round, 40 prompts, 3 kills
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import logging
import math
import os
import platform
import random
import signal
import socket
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import comfy_notebook as cn
from comfy_notebook.core.failover import CONNECTING, RUNNING
from comfy_notebook.engine.connection import SocketOptions
from comfy_notebook.engine.options import EngineOptions
from comfy_notebook.engine.task import Task
from comfy_notebook.tools.local_pool import LocalPool, PortInUseError, ServerStartError, find_free_base_port

ROOT = Path(__file__).resolve().parent.parent
TEST_NODES_DIR = ROOT / "tests" / "comfy_nodes"
RUN = uuid.uuid4().hex[:8]
SERVERS = 4
CONFIGS: dict[str, list[float]] = {"equal": [1.0, 1.0, 1.0, 1.0], "half": [1.0, 1.0, 1.0, 0.5]}
TARGETS = {"equal": 1.05, "half": 1.07}
KILL_P99_TARGET = 1.0
HANG_TARGET = 3.0
MIN_MS, MAX_MS = 50, 300
#: Outstanding prompts kept by the failover stream: every server full (depth 2) plus a client-side backlog.
STREAM_BACKLOG = 6
POLL = 0.001
_PORT_ATTEMPTS = 5


# -- helpers --------------------------------------------------------------------------------------------------------
def workflow(color: int, seconds: float, folder: str) -> dict[str, Any]:
    """``tests/workflows.slow_workflow`` with one step of ``seconds`` and a fresh output folder per run (SaveImage
    lists its folder on every save, so a shared folder would slow every later run). ``color`` keeps each graph
    distinct, so ComfyUI never serves it from its cache."""
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": color}},
        "2": {"class_type": "SlowSteps", "inputs": {"image": ["1", 0], "steps": 1, "step_seconds": seconds}},
        "3": {
            "class_type": "SaveImage",
            "inputs": {"images": ["2", 0], "filename_prefix": f"bench-pool/{RUN}/{folder}/img"},
        },
    }


class Colors:
    """Distinct EmptyImage colors for the whole run (the input's maximum is 0xFFFFFF)."""

    def __init__(self) -> None:
        self._next = 1
        self._lock = threading.Lock()

    def take(self) -> int:
        with self._lock:
            self._next += 1
            return self._next


COLORS = Colors()


def pct(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (p99 of 20 values is the maximum)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[min(len(ordered), rank) - 1]


def start_pool(state_dir: Path, speeds: list[float]) -> tuple[LocalPool, list[str]]:
    """Servers with the test nodes on ports below the kernel's ephemeral range (32768 and up here): a port there can
    be taken as the source port of any outgoing connection, ours included, between our check and the server's bind,
    or while a killed server is down before its restart on the same port."""
    pool = LocalPool(state_dir)
    for attempt in range(_PORT_ATTEMPTS):
        try:
            base = find_free_base_port(len(speeds), low=20000, high=32000)
            return pool, pool.start(len(speeds), base_port=base, custom_nodes=[TEST_NODES_DIR], speeds=speeds)
        except (PortInUseError, ServerStartError) as exc:
            taken = isinstance(exc, PortInUseError) or "address already in use" in str(exc).lower()
            if attempt == _PORT_ATTEMPTS - 1 or not taken:
                raise
            print(f"  a port was taken meanwhile, trying other ports: {str(exc).splitlines()[0]}", flush=True)
    raise AssertionError("unreachable")


def clear_history(urls: Sequence[str]) -> None:
    """Every run starts from an empty history (thousands of entries slow ComfyUI down, see bench/run.py)."""
    for url in urls:
        httpx.post(url + "/history", json={"clear": True}, timeout=30).raise_for_status()


def foreign_comfy_processes(ours: set[int]) -> int:
    """ComfyUI servers (``python .../main.py``) running on this machine that we did not start."""
    count = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in ours:
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(a.endswith(b"main.py") for a in argv[1:3]) and b"python" in argv[0]:
            count += 1
    return count


def our_pids(pool: LocalPool) -> set[int]:
    return {s.pid for s in pool.status(probe_timeout=0.5) if s.pid is not None}


def wait_sockets_open(engine: cn.Engine, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(s["connection_state"] == "OPEN" for s in engine.get_status()["servers"]):
            return
        time.sleep(0.02)
    raise RuntimeError("the engine did not open a socket to every server")


def warm(engine: cn.Engine, urls: Sequence[str]) -> None:
    """One zero-length prompt on every server: sockets open, ComfyUI's first-run costs paid outside the clock."""
    tasks = [engine.submit(workflow(COLORS.take(), 0.0, "warm"), server=url) for url in urls]
    for task in tasks:
        task.result(timeout=120)


# -- 1. makespan ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Strategy:
    name: str
    mode: str  # "pool" or "lock"
    route: str = "engine"  # "engine" (the engine routes), "round-robin" or "least-loaded" (``server=`` per prompt)
    depth: int = 2


STRATEGIES = {
    "pool": Strategy("pool", "pool"),
    "lock": Strategy("lock", "lock"),
    "round-robin": Strategy("round-robin", "lock", "round-robin"),
    "least-loaded": Strategy("least-loaded", "lock", "least-loaded"),
    "pool-d1": Strategy("pool-d1", "pool", depth=1),
    "pool-d3": Strategy("pool-d3", "pool", depth=3),
}
CONFIG_STRATEGIES = {
    "equal": ["pool", "lock", "round-robin", "least-loaded", "pool-d1", "pool-d3"],
    "half": ["pool", "lock", "round-robin", "least-loaded"],
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


def stagger_gc(urls: Sequence[str]) -> None:
    """Make the servers collect garbage now, one after another ``GC_INTERVAL / n`` apart, so that their next
    collections fall at different moments of the run, as on a pool of separate machines.

    On separate machines each server's collection stalls that server alone, for about 0.3 s (``gc.collect()`` in a
    ComfyUI process measured 0.32 s of CPU here). Four servers on this one 2-core machine, started on the same
    prompts at the same moment, collect in lockstep: all four stall together, for 1.2-2.8 s, which a single machine
    per server would never see. Staggering keeps every collection in the run (each server still stalls once every
    10 s) and removes only the lockstep, which is an artefact of the bench machine."""
    gap = GC_INTERVAL / len(urls)
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
    engine = cn.Engine(list(urls), EngineOptions(mode=strategy.mode, depth=strategy.depth))
    try:
        if gc == "align":
            align_gc(urls)
        elif gc == "stagger":
            stagger_gc(urls)
        warm(engine, urls)
        if strategy.mode == "pool":
            wait_sockets_open(engine)
        servers = assign_servers(strategy, urls, len(durations), random.Random(folder))
        graphs = [workflow(COLORS.take(), d, folder) for d in durations]
        start = time.time()
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
) -> dict[str, Any]:
    names = CONFIG_STRATEGIES[config]
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
    return {
        "speeds": speeds,
        "prompts": prompts,
        "gc": gc,
        "rounds": rounds,
        "ideal_s": [round(i, 4) for i in ideals],
        "median_ideal_s": statistics.median(ideals),
        "target": TARGETS[config],
        "pool_meets_target": summary["pool"]["median_ratio"] <= TARGETS[config],
        "foreign_comfy_processes_per_round": contention,
        "summary": summary,
        "runs": runs,
    }


# -- 2. failover ------------------------------------------------------------------------------------------------------
@dataclass
class Stream:
    """A steady stream of pool-mode prompts: a feeder thread keeps ``target`` of them unfinished."""

    engine: cn.Engine
    target: int
    rng: random.Random
    tasks: list[Task] = field(default_factory=list)
    submitted: int = 0
    failed: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._feed, name="bench-feeder", daemon=True)
        self._thread.start()

    def _feed(self) -> None:
        while not self._stop.is_set():
            live = [t for t in self.tasks if not t.done()]
            for task in self.tasks:
                if task.done() and task.status != "success":
                    self.failed.append(f"{task.status}: {task.error}")
            self.tasks = live  # replaced whole: the bench thread reads a consistent list
            for _ in range(self.target - len(live)):
                seconds = self.rng.randint(MIN_MS, MAX_MS) / 1000
                try:
                    live.append(self.engine.submit(workflow(COLORS.take(), seconds, "failover")))
                except Exception as exc:  # the engine was closed under us: stop feeding
                    self.failed.append(f"submit: {exc}")
                    return
                self.submitted += 1
            self._stop.wait(0.01)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def on(self, url: str) -> list[Task]:
        """Unfinished prompts whose current attempt is on ``url`` (bound, posted, queued or running there)."""
        return [t for t in self.tasks if not t.done() and t.attempts and t.attempts[-1].server == url]

    def holding(self, url: str) -> int:
        """Prompts of ours queued or running on ``url``."""
        return sum(1 for t in self.on(url) if t.status in ("queued", "running"))


def wait_all_hold(stream: Stream, urls: Sequence[str], timeout: float = 90.0) -> bool:
    """Until every server holds at least one prompt of ours (a restarted server is back in rotation)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(stream.holding(u) > 0 for u in urls):
            return True
        time.sleep(0.02)
    return False


def time_resubmission(
    stream: Stream, urls: Sequence[str], url: str, act: Callable[[], None], timeout: float
) -> dict[str, Any]:
    """Run ``act`` (kill or stop ``url``'s server) in a helper thread while this thread polls task state every ~1 ms.

    The helper thread notes the prompts on the server (unfinished, current attempt there) right before ``act``, so
    none is bound between that note and the fault. Returns seconds from the call of ``act`` and from its return to:
    ``detected`` (each of those prompts has its attempt there ended), ``resubmitted`` (each one's last attempt
    names another server) and ``clear`` (no unfinished prompt's current attempt is on the server: also counts
    prompts bound to it after the fault, before the engine noticed); and ``socket_closed``, when an idle TCP
    connection of our own to the server saw EOF (the OS floor: a SIGKILLed process's sockets close only once the
    kernel has torn it down, memory first, which takes a while for a ~1 GB ComfyUI). ``trace``: every change of a
    stream prompt's state while polling, as (ms since the call, prompt, status, server index of its current
    attempt, that attempt's outcome, attempts); ``poll_gap_max_ms``: the longest pause between two polls."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    probe = socket.create_connection((host, int(port)), timeout=5)
    probe.setblocking(False)
    socket_closed: float | None = None
    snapshot: list[Task] = []
    times: dict[str, float] = {}

    def run_act() -> None:
        snapshot.extend(stream.on(url))
        times["call"] = time.perf_counter()
        act()
        times["returned"] = time.perf_counter()

    thread = threading.Thread(target=run_act, name="bench-fault")
    thread.start()
    while "call" not in times:
        time.sleep(0.0001)
    t_call = times["call"]
    posted = sum(1 for t in snapshot if t.status in ("queued", "running"))
    detected = resubmitted = clear = None
    deadline = t_call + timeout
    late_bound: set[str] = set()
    versions: dict[str, int] = {}
    trace: list[tuple[float, str, str, int, str, int]] = []
    previous = t_call
    poll_gap = 0.0
    while True:
        now = time.perf_counter()
        poll_gap, previous = max(poll_gap, now - previous), now
        if socket_closed is None:
            try:
                if probe.recv(1) == b"":
                    socket_closed = now
            except BlockingIOError:
                pass
            except OSError:  # reset
                socket_closed = now
        for t in [*snapshot, *stream.tasks]:
            if versions.get(t.key) != t.version and t.attempts:
                versions[t.key] = t.version
                last = t.attempts[-1]
                where = urls.index(last.server) if last.server in urls else -1
                trace.append(
                    (round(1000 * (now - t_call), 1), t.key[:8], t.status, where, last.outcome, len(t.attempts))
                )
        if detected is None and all(
            t.done() or t.attempts[-1].server != url or t.attempts[-1].outcome not in (CONNECTING, RUNNING)
            for t in snapshot
        ):
            detected = now
        if resubmitted is None and all(t.done() or t.attempts[-1].server != url for t in snapshot):
            resubmitted = now
        if resubmitted is not None:
            on = stream.on(url)
            late_bound.update(t.key for t in on if t not in snapshot)
            if not on:
                clear = now
        if (clear is not None and "returned" in times) or now > deadline:
            break
        time.sleep(POLL)
    thread.join(30)
    probe.close()
    t_ret = times.get("returned", t_call)

    def since(t: float | None, origin: float) -> float | None:
        return None if t is None else round(max(0.0, t - origin), 4)

    return {
        "prompts_on_server": len(snapshot),
        "posted_on_server": posted,
        "act_s": round(t_ret - t_call, 4),
        "detected_s": since(detected, t_ret),
        "resubmitted_s": since(resubmitted, t_ret),
        "clear_s": since(clear, t_ret),
        "socket_closed_from_call_s": since(socket_closed, t_call),
        "detected_from_call_s": since(detected, t_call),
        "resubmitted_from_call_s": since(resubmitted, t_call),
        "clear_from_call_s": since(clear, t_call),
        "bound_after_fault": len(late_bound),
        "moved": sum(1 for t in snapshot if t.attempts[-1].server != url),
        "finished_before_move": sum(1 for t in snapshot if t.done() and t.attempts[-1].server == url),
        "timed_out": resubmitted is None,
        "poll_gap_max_ms": round(1000 * poll_gap, 1),
        "trace": trace,
    }


def stats(values: Sequence[float | None]) -> dict[str, Any]:
    got = [v for v in values if v is not None]
    if not got:
        return {"n": 0, "missing": len(values)}
    return {
        "n": len(got),
        "missing": len(values) - len(got),
        "p50_s": statistics.median(got),
        "p99_s": pct(got, 0.99),
        "max_s": max(got),
        "values_s": got,
    }


def bench_kills(pool: LocalPool, urls: list[str], kills: int, seed: int) -> dict[str, Any]:
    engine = cn.Engine(urls, EngineOptions(mode="pool"))
    rng = random.Random(seed)
    stream = Stream(engine, SERVERS * 2 + STREAM_BACKLOG, random.Random(seed + 1))
    events: list[dict[str, Any]] = []
    try:
        warm(engine, urls)
        wait_sockets_open(engine)
        stream.start()
        for k in range(kills):
            i = k % len(urls)
            steady = wait_all_hold(stream, urls)
            time.sleep(rng.uniform(0.0, 0.3))  # land at a random phase of the running prompt
            event = time_resubmission(stream, urls, urls[i], functools.partial(pool.kill, i), timeout=30)
            event.update(kill=k, server=i, steady=steady)
            events.append(event)
            print(
                f"  kill {k + 1}/{kills}: server {i}, {event['prompts_on_server']} prompts on it "
                f"({event['posted_on_server']} posted), resubmitted {_ms(event['resubmitted_s'])} after kill() "
                f"returned (kill() took {_ms(event['act_s'])}; {_ms(event['resubmitted_from_call_s'])} from the "
                f"call), clear {_ms(event['clear_s'])}",
                flush=True,
            )
            t0 = time.perf_counter()
            pool.restart(i, wait=True)
            event["restart_s"] = round(time.perf_counter() - t0, 2)
        wait_all_hold(stream, urls)
        stream.stop()
        status = engine.get_status()
    finally:
        stream.stop()
        engine.close()
    return {
        "kills": kills,
        "resubmitted_after_return": stats([e["resubmitted_s"] for e in events]),
        "resubmitted_from_call": stats([e["resubmitted_from_call_s"] for e in events]),
        "detected_after_return": stats([e["detected_s"] for e in events]),
        "detected_from_call": stats([e["detected_from_call_s"] for e in events]),
        "socket_closed_from_call": stats([e["socket_closed_from_call_s"] for e in events]),
        "clear_after_return": stats([e["clear_s"] for e in events]),
        "clear_from_call": stats([e["clear_from_call_s"] for e in events]),
        "poll_gap_max_ms": max((e["poll_gap_max_ms"] for e in events), default=None),
        "kill_call_s": stats([e["act_s"] for e in events]),
        "target_p99_s": KILL_P99_TARGET,
        "duplicates": status["duplicates"],
        "retries": status["retries"],
        "stream_prompts": stream.submitted,
        "stream_failures": stream.failed[:10],
        "stream_failure_count": len(stream.failed),
        "events": events,
    }


#: A variant for the analysis, not the default: pings every 1 s, 1.5 s to answer (still above ComfyUI's GC stalls of
#: up to 1.2 s), 0.25 s for the closing handshake a hung server never answers.
TUNED_SOCKET = SocketOptions(ping_interval=1.0, ping_timeout=1.5, close_timeout=0.25)


def bench_hangs(
    pool: LocalPool, urls: list[str], hangs: int, seed: int, socket_options: SocketOptions | None = None
) -> dict[str, Any]:
    options = (
        EngineOptions(mode="pool") if socket_options is None else EngineOptions(mode="pool", socket=socket_options)
    )
    engine = cn.Engine(urls, options)
    rng = random.Random(seed)
    stream = Stream(engine, SERVERS * 2 + STREAM_BACKLOG, random.Random(seed + 1))
    events: list[dict[str, Any]] = []
    try:
        warm(engine, urls)
        wait_sockets_open(engine)
        stream.start()
        for k in range(hangs):
            i = k % len(urls)
            server = pool.status(probe_timeout=1.0)[i]
            if not server.alive or server.pid is None:
                raise RuntimeError(f"server {i} is not running: cannot stop it")
            pid = server.pid
            steady = wait_all_hold(stream, urls)
            time.sleep(rng.uniform(0.0, 0.3))
            before = engine.get_status()["duplicates"]
            try:
                event = time_resubmission(
                    stream, urls, urls[i], functools.partial(os.kill, pid, signal.SIGSTOP), timeout=20
                )
            finally:
                os.kill(pid, signal.SIGCONT)  # never leave a server of ours stopped
            event.update(hang=k, server=i, steady=steady)
            # The stopped server runs what it held once continued: the engine counts those as duplicates.
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                event["duplicates"] = engine.get_status()["duplicates"] - before
                if event["duplicates"] >= event["posted_on_server"]:
                    break
                time.sleep(0.1)
            events.append(event)
            print(
                f"  hang {k + 1}/{hangs}: server {i}, {event['prompts_on_server']} prompts on it "
                f"({event['posted_on_server']} posted), detected {_ms(event['detected_s'])}, resubmitted "
                f"{_ms(event['resubmitted_s'])} after SIGSTOP, clear {_ms(event['clear_s'])}, "
                f"{event['duplicates']} duplicates counted",
                flush=True,
            )
        wait_all_hold(stream, urls)
        stream.stop()
        status = engine.get_status()
    finally:
        stream.stop()
        engine.close()
    resubmitted = stats([e["resubmitted_s"] for e in events])
    return {
        "hangs": hangs,
        "socket": {
            "ping_interval": options.socket.ping_interval,
            "ping_timeout": options.socket.ping_timeout,
            "close_timeout": options.socket.close_timeout,
        },
        "resubmitted": resubmitted,
        "detected": stats([e["detected_s"] for e in events]),
        "clear": stats([e["clear_s"] for e in events]),
        "target_s": HANG_TARGET,
        "meets_target": resubmitted.get("n", 0) == hangs and resubmitted.get("max_s", 1e9) < HANG_TARGET,
        "duplicates": status["duplicates"],
        "retries": status["retries"],
        "stream_prompts": stream.submitted,
        "stream_failures": stream.failed[:10],
        "stream_failure_count": len(stream.failed),
        "events": events,
    }


def _ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{1000 * seconds:.0f} ms"


# -- 3. the machine ---------------------------------------------------------------------------------------------------
def machine(url: str) -> dict[str, Any]:
    system = httpx.get(url + "/system_stats", timeout=10).json().get("system", {})
    return {
        "python": platform.python_version(),
        "comfyui": system.get("comfyui_version"),
        "comfyui_python": str(system.get("python_version", "")).split()[0],
        "pytorch": system.get("pytorch_version"),
        "comfy_notebook": getattr(cn, "__version__", None),
        "nproc": os.cpu_count(),
        "platform": platform.platform(),
        "loadavg_at_start": os.getloadavg(),
    }


# -- summary ----------------------------------------------------------------------------------------------------------
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
    print(
        "  (x ideal = balance x overhead; balance: makespan / the servers' speed-weighted mean last result, the\n"
        "   routing's share; overhead: server time beyond the sleeps; stalls: its part in gaps over 0.3 s, in % of\n"
        "   ideal, mostly ComfyUI's garbage collection every 10 s; w/o: x ideal with the stall time taken out, an\n"
        "   estimate)"
    )


def print_failover(
    kills: dict[str, Any] | None, hangs: dict[str, Any] | None, tuned: dict[str, Any] | None = None
) -> None:
    if kills is not None:
        r, c = kills["resubmitted_after_return"], kills["resubmitted_from_call"]
        if r.get("n"):
            verdict = "met" if r["p99_s"] < KILL_P99_TARGET and not r["missing"] else "MISSED"
            print(
                f"\nfailover, {kills['kills']} SIGKILLs: every prompt of the killed server resubmitted "
                f"p50 {_ms(r['p50_s'])}, p99 {_ms(r['p99_s'])}, max {_ms(r['max_s'])} after kill() returned "
                f"(from the kill() call: p50 {_ms(c['p50_s'])}, p99 {_ms(c['p99_s'])}, max {_ms(c['max_s'])}); "
                f"target p99 < 1 s: {verdict}; duplicates {kills['duplicates']}, stream failures "
                f"{kills['stream_failure_count']}"
            )
            cl = kills["clear_after_return"]
            if cl.get("n"):
                print(
                    f"  counting prompts bound to the dead server after the kill too: p50 {_ms(cl['p50_s'])}, "
                    f"p99 {_ms(cl['p99_s'])}, max {_ms(cl['max_s'])} after kill() returned; longest pause between "
                    f"two polls {kills['poll_gap_max_ms']} ms"
                )
            o, e = kills["socket_closed_from_call"], kills["detected_from_call"]
            if o.get("n") and e.get("n"):
                print(
                    f"  from the kill() call: the OS closed the server's sockets after p50 {_ms(o['p50_s'])} "
                    f"(max {_ms(o['max_s'])}), the engine marked every prompt lost after p50 {_ms(e['p50_s'])} "
                    f"(max {_ms(e['max_s'])}); the rest is the wait for a free place on another server"
                )
    for label, data in (("default pings", hangs), ("tuned pings, NOT the default", tuned)):
        if data is None:
            continue
        h, d, sock = data["resubmitted"], data["detected"], data["socket"]
        if h.get("n"):
            verdict = "met" if data["meets_target"] else "MISSED"
            print(
                f"hung server ({label}: ping every {sock['ping_interval']} s, timeout {sock['ping_timeout']} s, "
                f"close {sock['close_timeout']} s), {data['hangs']} SIGSTOPs: resubmitted p50 {_ms(h['p50_s'])}, "
                f"max {_ms(h['max_s'])} (detected p50 {_ms(d.get('p50_s'))}, max {_ms(d.get('max_s'))}); "
                f"target < 3 s: {verdict}; "
                f"duplicates counted {data['duplicates']} (per stop {[e['duplicates'] for e in data['events']]}), "
                f"retries {data['retries']}"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write every figure here")
    parser.add_argument("--rounds", type=int, help="default 5 (--quick: 1)")
    parser.add_argument("--prompts", type=int, help="default 200 (--quick: 40)")
    parser.add_argument("--kills", type=int, help="default 20 (--quick: 3)")
    parser.add_argument("--hangs", type=int, help="SIGSTOPs per series, default 5 (--quick: 2)")
    parser.add_argument(
        "--no-tuned-hangs",
        dest="tuned_hangs",
        action="store_false",
        help="skip the second SIGSTOP series with shorter pings (an analysis variant, not the default)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 1 round, 40 prompts, 3 kills, 2 hangs per series"
    )
    parser.add_argument("--configs", default="equal,half", help="comma-separated: equal, half (default both)")
    parser.add_argument("--no-makespan", action="store_true")
    parser.add_argument("--no-failover", action="store_true")
    parser.add_argument("--seed", type=int, default=20261127)
    parser.add_argument(
        "--gc",
        choices=GC_MODES,
        default="stagger",
        help="ComfyUI's 10-second garbage collection before each run: stagger the servers' timers as on separate "
        "machines (default, see stagger_gc), align them (all four collect together, see align_gc), or leave them",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="the engine's warnings too")
    args = parser.parse_args(argv)
    defaults = {"rounds": (5, 1), "prompts": (200, 40), "kills": (20, 3), "hangs": (5, 2)}
    for name, (full, quick) in defaults.items():  # an explicit value wins over --quick
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("comfy_notebook").setLevel(logging.WARNING if args.verbose else logging.CRITICAL)
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    for config in configs:
        if config not in CONFIGS:
            parser.error(f"unknown configuration {config!r}: use {', '.join(CONFIGS)}")

    out: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}, "makespan": {}}
    state_root = Path(tempfile.mkdtemp(prefix="comfy-bench-pool-"))
    print(f"servers' folders and logs: {state_root}", flush=True)
    started = time.time()
    kills = hangs = tuned = None
    for config in configs:
        speeds = CONFIGS[config]
        run_failover = config == "equal" and not args.no_failover
        if args.no_makespan and not run_failover:
            continue
        print(f"starting {len(speeds)} ComfyUI servers, speeds {speeds} ...", flush=True)
        with start_pool(state_root / config, speeds)[0] as pool:
            urls = pool.urls
            pids = our_pids(pool)
            if "machine" not in out:
                out["machine"] = machine(urls[0])
                m = out["machine"]
                out["machine"]["foreign_comfy_processes_at_start"] = foreign_comfy_processes(pids)
                print(
                    f"Python {m['python']} (client), ComfyUI {m['comfyui']} on Python {m['comfyui_python']}, "
                    f"torch {m['pytorch']}, comfy-notebook {m['comfy_notebook']}, nproc {m['nproc']}, "
                    f"{m['foreign_comfy_processes_at_start']} other ComfyUI processes running",
                    flush=True,
                )
            if not args.no_makespan:
                data = bench_makespan(
                    config,
                    urls,
                    speeds,
                    rounds=args.rounds,
                    prompts=args.prompts,
                    seed=args.seed,
                    pids=pids,
                    gc=args.gc,
                )
                out["makespan"][config] = data
                print_makespan(config, data)
            if run_failover:
                print(f"\nfailover: {args.kills} SIGKILLs, pool mode, a steady stream of prompts", flush=True)
                kills = bench_kills(pool, urls, args.kills, args.seed)
                out["kills"] = kills
                print(f"\nhung server: {args.hangs} SIGSTOPs", flush=True)
                hangs = bench_hangs(pool, urls, args.hangs, args.seed)
                out["hangs"] = hangs
                if args.tuned_hangs:
                    print(f"\nhung server, tuned pings (analysis only): {args.hangs} SIGSTOPs", flush=True)
                    tuned = bench_hangs(pool, urls, args.hangs, args.seed + 7, TUNED_SOCKET)
                    out["hangs_tuned_pings"] = tuned
                print_failover(kills, hangs, tuned)
                out["foreign_comfy_processes_after_failover"] = foreign_comfy_processes(our_pids(pool))
        if args.json:  # after every configuration, so a long run that dies later keeps what it measured
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(out, indent=1))

    out["duration_s"] = round(time.time() - started, 1)
    print("\n== summary ==")
    m = out.get("machine", {})
    print(
        f"Python {m.get('python')}, ComfyUI {m.get('comfyui')}, nproc {m.get('nproc')}, "
        f"{out['duration_s']:.0f} s in all"
    )
    for config, data in out["makespan"].items():
        print_makespan(config, data)
    print_failover(kills, hangs, tuned)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
        print(f"\nfigures written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
