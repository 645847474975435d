"""Scale past this machine, by simulation: one client (the engine in pool mode) driving a fleet of fake ComfyUI
servers with thousands of prompts.

The fleet (``bench/fake_fleet.py``: protocol-faithful ``FakeComfy`` servers, all on one loop) runs in ONE separate
process; each client path runs in a fresh process of its own, so its CPU time and peak memory are its own:

* ``bulk``: ``engine.submit_many(workflows)``, quiet prompts harvested from ``/history``;
* ``each``: ``engine.submit(w)`` for each workflow, with per-prompt events (and the image fetched at completion).

Every prompt costs a fake ``--service`` seconds (one step of the ``SlowSteps`` node). Reported per path:

* client CPU per prompt: ``time.process_time()`` of the client process over the run / prompts (target < 1 ms);
* client peak memory (``ru_maxrss``) and RSS growth over the run;
* makespan (first submit to last result) vs the ideal ``prompts * service / servers`` (target within 5 %), and vs
  what the fakes actually delivered (their own busy time, summed, / servers: timer lateness included);
* honesty checks: the fleet's CPU (one loop, so one core is its ceiling: if it saturates, the makespan reflects the
  fakes, not the client), the client's (likewise one loop thread), and what other processes on the machine used;
* the requests per prompt the servers answered, by route, and the engine's log records (failovers, failed reads).

A run in which nothing finishes for ``--stall-after`` seconds is abandoned and reported as stalled, with where the
unfinished prompts are, what the engine says about the servers and (with ``--sample``) what its loop thread does.
``--sample`` is a light stack sampler of the engine's loop thread; ``--profile`` is cProfile on both client threads
(CPU-time based, but heavy: at 64 servers it slows the loop until pings time out, so use it on small runs).

    .venv/bin/python bench/pool_sim.py --servers 8 --prompts 400                       # quick, about 30 s
    .venv/bin/python bench/pool_sim.py --servers 64 --prompts 10000 --json /tmp/pool_sim.json
    .venv/bin/python bench/pool_sim.py --servers 64 --prompts 4000 --paths bulk --sample
    .venv/bin/python bench/pool_sim.py --servers 16 --prompts 2000 --profile --profile-dump /tmp/prof
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import logging
import os
import pstats
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
import types
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PATHS = ("bulk", "each")
CPU_TARGET_MS = 1.0
MAKESPAN_TARGET = 1.05
#: The fleet runs on one event loop, so one core is its ceiling: above this share of a core it is the bottleneck.
FLEET_SATURATED = 0.9
#: The engine does its work on one loop thread (the GIL allows one core anyway): the same ceiling applies.
CLIENT_SATURATED = 0.9


# -- the fleet ------------------------------------------------------------------------------------------------------
class Fleet:
    """The fake servers' process: started with ``subprocess``, stopped by its PID."""

    def __init__(self, servers: int, history_delay: float) -> None:
        cmd = [sys.executable, str(ROOT / "bench" / "fake_fleet.py"), "--servers", str(servers)]
        cmd += ["--history-delay", str(history_delay)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(10)
            raise RuntimeError(f"the fake fleet did not start (exit code {self.proc.returncode})")
        hello = json.loads(line)
        self.pid: int = hello["pid"]
        self.urls: list[str] = hello["urls"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


# -- one client path, in its own process ---------------------------------------------------------------------------
class Completion:
    """Counts finished tasks (a done callback each) and when the count last moved, so a stalled run is noticed."""

    def __init__(self, total: int) -> None:
        self.total, self.done = total, 0
        self.all_done = threading.Event()
        self.last_change = time.monotonic()
        self._lock = threading.Lock()

    def one_done(self, _task: Any) -> None:
        with self._lock:
            self.done += 1
            self.last_change = time.monotonic()
            if self.done >= self.total:
                self.all_done.set()


class Sampler(threading.Thread):
    """Once a second: the client's and the fleet's CPU use (share of one core) over the last interval."""

    def __init__(self, fleet: psutil.Process, completion: Completion, interval: float = 1.0) -> None:
        super().__init__(daemon=True, name="pool-sim-sampler")
        self.fleet, self.completion, self.interval = fleet, completion, interval
        self.samples: list[tuple[float, float, float]] = []  # (elapsed, client cores, fleet cores)
        self.halt = threading.Event()

    def run(self) -> None:
        start = last = time.perf_counter()
        client_last, fleet_last = time.process_time(), _cpu(self.fleet)
        next_report = start + 10.0
        while not self.halt.wait(self.interval):
            now, client, fleet = time.perf_counter(), time.process_time(), _cpu(self.fleet)
            span = now - last
            self.samples.append((now - start, (client - client_last) / span, (fleet - fleet_last) / span))
            last, client_last, fleet_last = now, client, fleet
            if now >= next_report:
                next_report += 10.0
                _, c, f = self.samples[-1]
                done = f"{self.completion.done}/{self.completion.total} done"
                print(f"  ... {now - start:6.1f} s: {done}, client {c:.2f} core, fleet {f:.2f} core", file=sys.stderr)


def _cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def _machine_busy() -> float:
    """CPU seconds every process of the machine used so far (all cores)."""
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


def _rss() -> int:
    return int(psutil.Process().memory_info().rss)


def _maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _on_loop(engine: Any, fn: Callable[[], object]) -> None:
    """Run ``fn`` on the engine's loop thread and wait for it (cProfile profiles only the thread it is enabled in)."""
    done = threading.Event()

    def call() -> None:
        try:
            fn()
        finally:
            done.set()

    engine.thread.call_soon(call)
    done.wait(10)


def _top(profiler: cProfile.Profile, sort: str, n: int = 25) -> str:
    buf = io.StringIO()
    pstats.Stats(profiler, stream=buf).strip_dirs().sort_stats(sort).print_stats(n)
    return buf.getvalue()


class StackSampler(threading.Thread):
    """A low-overhead sampling profiler of one thread (cProfile slows a saturated loop so much that pings time out
    and the run turns into a failover storm at 64 servers). Every ``interval`` it reads the thread's Python stack:
    "self" counts the innermost frame, "cumulative" every function on the stack; samples whose innermost frame is the
    selector's wait are the loop's idle time. A sample lands where the thread lets go of the GIL: at a blocking call,
    or when the switch interval forces it, which ``run_client`` lowers to 0.5 ms while sampling so that Python code
    is not under-counted next to system calls. The shares are approximate, which is all "where does the time go"
    needs."""

    def __init__(self, ident: int, interval: float = 0.005) -> None:
        super().__init__(daemon=True, name="pool-sim-stacks")
        self.target, self.interval = ident, interval
        self.halt = threading.Event()
        self.total = self.idle = 0
        self.own: Counter[str] = Counter()
        self.cumulative: Counter[str] = Counter()
        self.packages: Counter[str] = Counter()
        self._labels: dict[Any, tuple[str, str]] = {}

    def reset(self) -> None:
        self.total = self.idle = 0
        self.own.clear()
        self.cumulative.clear()
        self.packages.clear()

    def _label(self, code: Any) -> tuple[str, str]:
        label = self._labels.get(code)
        if label is None:
            name = code.co_filename
            if "site-packages/" in name:
                name = name.split("site-packages/", 1)[1]
            elif "/comfy_notebook/" in name:
                name = "comfy_notebook/" + name.split("/comfy_notebook/", 1)[1]
            else:
                name = re.sub(r"^.*/lib/python3\.\d+/", "", name)
            package = name.split("/", 1)[0] if "/" in name else f"stdlib {name}" if name.endswith(".py") else name
            label = self._labels[code] = (f"{name}:{code.co_firstlineno}({code.co_name})", package)
        return label

    def run(self) -> None:
        while not self.halt.wait(self.interval):
            frame = sys._current_frames().get(self.target)
            if frame is not None:
                with contextlib.suppress(AttributeError):  # a frame chain read while it changes: skip the sample
                    self._sample(frame)

    def _sample(self, frame: types.FrameType) -> None:
        self.total += 1
        top, package = self._label(frame.f_code)
        if "selectors.py" in top and "(select)" in top:
            self.idle += 1
            return
        labels: set[str] = set()
        current: types.FrameType | None = frame
        while isinstance(current, types.FrameType):
            labels.add(self._label(current.f_code)[0])
            current = current.f_back
        self.own[top] += 1
        self.packages[package] += 1
        self.cumulative.update(labels)

    def report(self, n: int = 25) -> str:
        busy = max(1, self.total - self.idle)
        lines = [
            f"{self.total} samples every {1000 * self.interval:.0f} ms: loop idle (waiting in select) in "
            f"{100 * self.idle / max(1, self.total):.1f} %, busy in {100 * busy / max(1, self.total):.1f} %; "
            "shares below are of the busy samples",
            f"top {n} cumulative (on the stack):",
            *(f"  {100 * c / busy:5.1f} %  {label}" for label, c in self.cumulative.most_common(n)),
            f"top {n} self (innermost Python frame):",
            *(f"  {100 * c / busy:5.1f} %  {label}" for label, c in self.own.most_common(n)),
            "self by package:",
            *(f"  {100 * c / busy:5.1f} %  {package}" for package, c in self.packages.most_common(12)),
        ]
        return "\n".join(lines)


class LogCounter(logging.Handler):
    """The engine's log records of INFO and above during the run, counted by message template (failed history
    reads, failovers, sockets closed abnormally...): a healthy run has next to none."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.templates: Counter[str] = Counter()
        self.warnings = 0
        self.first: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.templates[f"{record.levelname} {record.msg}"] += 1
        if record.levelno >= logging.WARNING:
            self.warnings += 1
            if len(self.first) < 5:
                self.first.append(record.getMessage()[:200])


@dataclass(frozen=True)
class Probes:
    """How the client is watched: ``profile`` (cProfile, both threads, CPU-time based; heavy), ``sample`` (the stack
    sampler on the loop thread; light), ``profile_dump`` (a prefix for the raw .prof files)."""

    profile: bool = False
    sample: bool = False
    profile_dump: str | None = None


def diagnose_stall(engine: Any, tasks: list[Any], stacks: StackSampler | None, after: float) -> dict[str, Any]:
    """What a stalled client looks like: where its unfinished prompts are, what the engine says about each server,
    and (with ``--sample``) what its loop thread does meanwhile."""
    unfinished = Counter(t.status for t in tasks if not t.done())
    report: dict[str, Any] = {"no_progress_for_s": after, "unfinished_by_status": dict(unfinished)}
    try:
        status = engine.get_status()
        servers = status["servers"]
        report["servers"] = {
            "count": len(servers),
            "in_flight_total": sum(s.get("in_flight", 0) for s in servers),
            "with_in_flight": sum(1 for s in servers if s.get("in_flight")),
            "queue_remaining_total": sum(s.get("queue_remaining", 0) for s in servers),
            "unhealthy": sum(1 for s in servers if not s.get("healthy", True)),
            "cooling": sum(1 for s in servers if s.get("cooldown_remaining", 0) > 0),
            "connection_states": dict(Counter(str(s.get("connection_state")) for s in servers)),
        }
        report["pending_tasks_count"] = status.get("pending_tasks_count")
    except Exception as exc:  # a loop too busy to answer is a finding too
        report["servers"] = f"get_status() failed: {exc!r}"
    if stacks is not None:
        stacks.reset()
        time.sleep(5)
        report["loop_stacks_during_stall"] = stacks.report(12)
    return report


def run_client(
    path: str,
    urls: list[str],
    prompts: int,
    service: float,
    *,
    fleet_pid: int,
    probes: Probes,
    stall_after: float = 60.0,
) -> dict[str, Any]:
    import comfy_notebook as cn
    from tests.workflows import slow_workflow

    logs = LogCounter()
    engine_log = logging.getLogger("comfy_notebook")
    engine_log.addHandler(logs)
    engine_log.setLevel(logging.INFO)
    engine_log.propagate = False  # counted here; warnings are still printed, below, without flooding the output
    console = logging.StreamHandler()
    console.setLevel(logging.WARNING)
    engine_log.addHandler(console)

    with httpx.Client(timeout=30) as http:  # a clean slate on every fake: history, files, busy figures
        for url in urls:
            http.post(url + "/bench/reset").raise_for_status()
    workflows = [slow_workflow(i, steps=1, step_seconds=service, output="SaveImage") for i in range(prompts)]
    fleet = psutil.Process(fleet_pid)

    started = time.perf_counter()
    engine = cn.Engine(urls, cn.EngineOptions(mode="pool"))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # every socket open: the run starts from a warm pool, as a notebook would
        if all(s.get("connection_state") == "OPEN" for s in engine.get_status()["servers"]):
            break
        time.sleep(0.05)
    engine_start = time.perf_counter() - started

    profilers: dict[str, cProfile.Profile] = {}
    if probes.profile:
        # CPU time of the profiled thread, not wall time: other processes on the machine do not inflate the figures.
        profilers = {name: cProfile.Profile(time.thread_time) for name in ("loop thread", "main thread")}
        _on_loop(engine, profilers["loop thread"].enable)
        profilers["main thread"].enable()

    stacks: StackSampler | None = None
    if probes.sample:
        sys.setswitchinterval(0.0005)  # see StackSampler: fewer samples biased towards system calls
        loop_thread = next(t for t in threading.enumerate() if t.name == "comfy-notebook-io")
        stacks = StackSampler(loop_thread.ident or 0)
        stacks.start()

    tasks: list[Any] = []
    completion = Completion(prompts)
    sampler = Sampler(fleet, completion)
    rss0, maxrss0 = _rss(), _maxrss()
    machine0, load0 = _machine_busy(), os.getloadavg()[0]
    cpu0, fleet0 = time.process_time(), _cpu(fleet)
    t0, p0 = time.time(), time.perf_counter()
    sampler.start()
    if path == "bulk":
        tasks.extend(engine.submit_many(workflows))
        for task in tasks:
            task.add_done_callback(completion.one_done)
    else:
        for workflow in workflows:
            task = engine.submit(workflow)
            task.add_done_callback(completion.one_done)
            tasks.append(task)
    submitted = time.perf_counter() - p0
    stall: dict[str, Any] | None = None
    while not completion.all_done.wait(1.0):
        if time.monotonic() - completion.last_change > stall_after:
            stall = diagnose_stall(engine, tasks, stacks, stall_after)
            print(f"STALLED: {json.dumps(stall, indent=1)}", file=sys.stderr, flush=True)
            break
    statuses: Counter[str] = Counter()
    retried = 0
    for task in tasks:
        retried += len(task.attempts) > 1
        if not task.done():
            statuses[f"unfinished ({task.status})"] += 1
            continue
        try:
            statuses[task.result(timeout=0).status] += 1
        except Exception as exc:
            statuses[type(exc).__name__] += 1
    wall = time.perf_counter() - p0
    cpu, fleet_cpu = time.process_time() - cpu0, _cpu(fleet) - fleet0
    machine, load1 = _machine_busy() - machine0, os.getloadavg()[0]
    sampler.halt.set()
    sampler.join()
    rss1, maxrss1 = _rss(), _maxrss()

    profiles: dict[str, dict[str, str]] = {}
    if probes.profile:
        profilers["main thread"].disable()
        _on_loop(engine, profilers["loop thread"].disable)
        for name, prof in profilers.items():
            profiles[name] = {
                "cProfile, cumulative": _top(prof, "cumulative"),
                "cProfile, tottime": _top(prof, "tottime"),
            }
            if probes.profile_dump is not None:  # for pstats / snakeviz: <prefix>-<path>-<thread>.prof
                prof.dump_stats(f"{probes.profile_dump}-{path}-{name.split()[0]}.prof")
    if stacks is not None:
        stacks.halt.set()
        stacks.join()
        profiles.setdefault("loop thread", {})["stack samples"] = stacks.report()

    makespan = max((t.finished_at or t0) for t in tasks if t.done()) - t0 if completion.done else 0.0
    with httpx.Client(timeout=30) as http:
        stats = [http.get(url + "/bench/stats").json() for url in urls]
    engine.close()

    servers, ideal = len(urls), prompts * service / len(urls)
    requests: Counter[str] = Counter()
    for s in stats:
        requests.update(s["requests"])
    requests["GET /bench/stats"] = 0
    requests["POST /bench/reset"] = 0
    busy = sum(s["busy"] for s in stats)
    served = sum(s["prompts"] for s in stats)
    utilisation = [s["busy"] / makespan for s in stats] if makespan > 0 else [0.0]
    samples = sampler.samples
    return {
        "path": path,
        "servers": servers,
        "prompts": prompts,
        "service_s": service,
        "statuses": dict(statuses),
        "engine_start_s": engine_start,
        "submit_call_s": submitted,
        "wall_s": wall,
        "makespan_s": makespan,
        "ideal_s": ideal,
        "ratio": makespan / ideal,
        "ideal_rounds_s": -(-prompts // servers) * service,  # whole rounds: the last one may be partly empty
        "fakes_busy_ideal_s": busy / servers,  # what the fakes really spent per prompt (timer lateness included)
        "ratio_vs_fakes_busy": makespan / (busy / servers) if busy else None,
        "fake_service_mean_s": busy / served if served else None,
        "fake_prompts": served,
        "server_requests_per_prompt": {k: v / prompts for k, v in requests.most_common() if v},
        "ws_connects": sum(s["ws_connects"] for s in stats),
        "server_utilisation_mean": sum(utilisation) / len(utilisation),
        "server_utilisation_min": min(utilisation),
        "client_cpu_s": cpu,
        "client_cpu_ms_per_prompt": 1000 * cpu / prompts,
        "client_cores_mean": cpu / wall,
        "client_cores_max_1s": max((c for _, c, _ in samples), default=0.0),
        "client_rss_start_mib": rss0 / 2**20,
        "client_rss_end_mib": rss1 / 2**20,
        "client_rss_growth_mib": (rss1 - rss0) / 2**20,
        "client_rss_growth_kib_per_prompt": (rss1 - rss0) / 1024 / prompts,
        "client_peak_rss_mib": maxrss1 / 2**20,
        "client_peak_rss_growth_mib": (maxrss1 - maxrss0) / 2**20,
        "fleet_cpu_s": fleet_cpu,
        "fleet_cores_mean": fleet_cpu / wall,
        "fleet_cores_max_1s": max((f for _, _, f in samples), default=0.0),
        "fleet_saturated_share": sum(1 for _, _, f in samples if f >= FLEET_SATURATED) / max(1, len(samples)),
        "fleet_saturated": fleet_cpu / wall >= FLEET_SATURATED,
        "machine_cores": os.cpu_count(),
        "machine_load_avg_1min": [load0, load1],
        # Other processes on this machine (tests, servers...) compete for the same cores and skew the makespan.
        "other_processes_cores_mean": max(0.0, machine - cpu - fleet_cpu) / wall,
        "retried_prompts": retried,
        "stalled": stall,
        "engine_warnings": logs.warnings,
        "engine_warnings_first": logs.first,
        "engine_log_counts": dict(logs.templates.most_common(10)),
        "client_saturated": cpu / wall >= CLIENT_SATURATED,
        "profiled": probes.profile,
        "sampled": probes.sample,
        "profiles": profiles,
        "samples": samples,
    }


# -- the report -----------------------------------------------------------------------------------------------------
def verdicts(r: dict[str, Any]) -> dict[str, bool]:
    return {
        "cpu_per_prompt": r["client_cpu_ms_per_prompt"] < CPU_TARGET_MS,
        "makespan": r["ratio"] <= MAKESPAN_TARGET and not r.get("stalled"),
        "all_succeeded": r["statuses"] == {"success": r["prompts"]},
        "no_stall": not r.get("stalled"),
    }


def summary(r: dict[str, Any]) -> str:
    met = verdicts(r)
    yes = {True: "met", False: "NOT met"}
    how = "submit_many, quiet, harvested from /history" if r["path"] == "bulk" else "submit() each, with events"
    stalled = r.get("stalled")
    lines = [
        f"{r['path']} ({how}): {r['servers']} servers x {r['prompts']} prompts, {r['service_s']} s each"
        + (" [PROFILED: figures inflated by cProfile]" if r["profiled"] else "")
        + (" [stack-sampled: about 1 % overhead]" if r["sampled"] else ""),
        *(
            [f"  STALLED: no prompt finished for {stalled['no_progress_for_s']:.0f} s, the run was abandoned"]
            if stalled
            else []
        ),
        f"  makespan {r['makespan_s']:.2f} s vs ideal {r['ideal_s']:.2f} s -> ratio {r['ratio']:.3f} "
        f"(target <= {MAKESPAN_TARGET}: {yes[met['makespan']]}); whole rounds {r['ideal_rounds_s']:.2f} s; "
        f"vs the fakes' own busy time {r['fakes_busy_ideal_s']:.2f} s -> {r['ratio_vs_fakes_busy'] or 0:.3f}",
        f"  servers busy {100 * r['server_utilisation_mean']:.1f} % of the makespan on average "
        f"(least busy {100 * r['server_utilisation_min']:.1f} %); a fake's prompt took "
        f"{r['fake_service_mean_s'] or 0:.4f} s on average (nominal {r['service_s']})",
        f"  client CPU {r['client_cpu_ms_per_prompt']:.3f} ms per prompt "
        f"(target < {CPU_TARGET_MS} ms: {yes[met['cpu_per_prompt']]}); {r['client_cpu_s']:.1f} s in all, "
        f"{r['client_cores_mean']:.2f} core on average (max {r['client_cores_max_1s']:.2f} over 1 s); "
        f"submit call {r['submit_call_s']:.2f} s"
        + ("; SATURATED - the client is the bottleneck" if r["client_saturated"] else ""),
        f"  client memory: peak RSS {r['client_peak_rss_mib']:.0f} MiB (+{r['client_peak_rss_growth_mib']:.0f} MiB "
        f"during the run), RSS {r['client_rss_start_mib']:.0f} -> {r['client_rss_end_mib']:.0f} MiB "
        f"(+{r['client_rss_growth_kib_per_prompt']:.1f} KiB per prompt, results held)",
        f"  fleet CPU {r['fleet_cores_mean']:.2f} core on average (max {r['fleet_cores_max_1s']:.2f} over 1 s; "
        f"one loop, so 1 core is its ceiling): "
        + (
            "SATURATED - the makespan reflects the fakes, not the client"
            if r["fleet_saturated"]
            else f"not saturated ({100 * r['fleet_saturated_share']:.0f} % of seconds at >= {FLEET_SATURATED} core)"
        ),
        f"  machine: {r['machine_cores']} cores; other processes used {r['other_processes_cores_mean']:.2f} core on "
        "average during the run (1-min load {:.1f} -> {:.1f})".format(*r["machine_load_avg_1min"]),
        f"  results: {', '.join(f'{n} {s}' for s, n in r['statuses'].items())}; {r['retried_prompts']} sent more "
        f"than once; {r['engine_warnings']} engine warnings"
        + (f" (first: {r['engine_warnings_first'][0]})" if r["engine_warnings_first"] else ""),
        *(f"  engine log: {n} x {template}" for template, n in r["engine_log_counts"].items()),
        "  requests per prompt the servers answered: "
        + ", ".join(f"{k} {v:.2f}" for k, v in r["server_requests_per_prompt"].items())
        + f"; {r['ws_connects']} WebSocket connects",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=" ".join((__doc__ or "").split("\n\n")[0].split()))
    parser.add_argument("--servers", type=int, default=64)
    parser.add_argument("--prompts", type=int, default=10_000)
    parser.add_argument("--service", type=float, default=0.2, help="seconds a fake spends on each prompt")
    parser.add_argument("--paths", default="bulk,each", help="comma-separated: bulk, each")
    parser.add_argument("--history-delay", type=float, default=0.0, help="the fakes' execution -> history gap")
    parser.add_argument("--profile", action="store_true", help="cProfile the client (top 25; inflates the figures)")
    parser.add_argument("--sample", action="store_true", help="sample the client loop's stacks (top 25; light)")
    parser.add_argument(
        "--profile-dump", metavar="PREFIX", help="with --profile: also dump PREFIX-<path>-<thread>.prof"
    )
    parser.add_argument("--stall-after", type=float, default=60.0, help="give up when nothing finishes this long")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--client", choices=PATHS, help=argparse.SUPPRESS)  # internal: run one path, here
    parser.add_argument("--urls", help=argparse.SUPPRESS)
    parser.add_argument("--fleet-pid", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.client:  # the child: one client path, figures to --out
        urls = args.urls.split(",")
        report = run_client(
            args.client,
            urls,
            args.prompts,
            args.service,
            fleet_pid=args.fleet_pid,
            probes=Probes(profile=args.profile, sample=args.sample, profile_dump=args.profile_dump),
            stall_after=args.stall_after,
        )
        args.out.write_text(json.dumps(report))
        return 0

    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    unknown = set(paths) - set(PATHS)
    if unknown:
        parser.error(f"unknown paths {sorted(unknown)}: use {', '.join(PATHS)}")
    fleet = Fleet(args.servers, args.history_delay)
    print(f"fleet: {len(fleet.urls)} fake servers in process {fleet.pid}", flush=True)
    reports: dict[str, Any] = {}
    try:
        for path in paths:
            with tempfile.NamedTemporaryFile(suffix=".json") as out:
                cmd = [sys.executable, __file__, "--client", path, "--urls", ",".join(fleet.urls)]
                cmd += ["--fleet-pid", str(fleet.pid), "--out", out.name]
                cmd += ["--prompts", str(args.prompts), "--service", str(args.service)]
                cmd += ["--stall-after", str(args.stall_after)]
                cmd += ["--profile"] if args.profile else []
                cmd += ["--sample"] if args.sample else []
                cmd += ["--profile-dump", args.profile_dump] if args.profile_dump else []
                subprocess.run(cmd, check=True, cwd=ROOT)
                report = json.loads(Path(out.name).read_text())
            reports[path] = report
            print(summary(report), flush=True)
            for thread, tops in report["profiles"].items():
                for kind, text in tops.items():
                    print(f"\n--- client {thread}: {kind} ---\n{text}", flush=True)
    finally:
        fleet.stop()
    targets = {path: verdicts(r) for path, r in reports.items()}
    for path, met in targets.items():
        print(f"targets, {path}: " + ", ".join(f"{name} {'met' if ok else 'NOT met'}" for name, ok in met.items()))
    if args.json:
        config = {"servers": args.servers, "prompts": args.prompts, "service_s": args.service, "paths": paths}
        args.json.write_text(json.dumps({"config": config, "paths": reports, "targets": targets}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
