"""Part 2 of ``bench/pool.py``: failover timing, SIGKILLs and SIGSTOPs under a steady stream of pool-mode prompts
(see ``bench/pool.py``'s docstring for the method)."""

from __future__ import annotations

import functools
import os
import random
import signal
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import comfy_notebook as cn
from comfy_notebook.core.failover import CONNECTING, RUNNING
from comfy_notebook.engine.connection import SocketOptions
from comfy_notebook.engine.options import EngineOptions
from comfy_notebook.engine.task import Task
from comfy_notebook.tools.local_pool import LocalPool
from pool_common import COLORS, MAX_MS, MIN_MS, SERVERS, pct, wait_sockets_open, warm, workflow

KILL_P99_TARGET = 1.0
HANG_TARGET = 3.0
#: Outstanding prompts kept by the failover stream: every server full (depth 2) plus a client-side backlog.
STREAM_BACKLOG = 6
POLL = 0.001


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
