"""A chaos driver for pool-mode tests and benchmarks: SIGKILL random servers of a LocalPool and bring them back.

Pool mode must survive servers dying under load (late binding, failover that resubmits a dead server's prompts),
so its tests need servers that really die: the process is SIGKILLed (no cleanup, sockets reset, queue and history
lost) and started again on the same port with the same folders, as a crashed and supervised ComfyUI would be.

One background thread, paced by a seeded RNG so a failing run can be replayed::

    with ChaosDriver(pool, seed=1, max_kills=3, max_seconds=60) as chaos:
        ...  # the workload; chaos.kills says what died when
    # here: no more kills, and every server of the pool answers GET /prompt again

It waits ``gap`` seconds (2-5 s), picks a random server that answers ``GET /prompt``, SIGKILLs it, starts it again
``restart_delay`` seconds later (1-2 s), waits ``gap`` again, and so on, until ``max_kills`` kills or
``max_seconds`` have passed (or :meth:`ChaosDriver.stop`). A real ComfyUI needs 9-18 s after its process starts
before it answers, so a restarted server is "ready" much later than it is "restarted"; both times are recorded.
Killing stops by itself; the thread then waits until every server it restarted answers and exits.
"""

from __future__ import annotations

import logging
import math
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from types import TracebackType

from comfy_notebook.tools.local_pool import DEFAULT_READY_TIMEOUT, LocalPool, ServerStartError, answers

log = logging.getLogger(__name__)

_TICK = 0.05  # how often the thread looks at its clock and probes restarted servers
_PROBE_TIMEOUT = 0.5


@dataclass(frozen=True)
class Kill:
    """One kill. Times are ``time.monotonic()``; ``None`` means "not yet"."""

    index: int
    url: str
    killed_at: float  # the process group was SIGKILLed and the process is gone
    port_refused: bool  # a TCP connect to the server's port was refused right after the kill
    restarted_at: float | None = None  # a new process was started on the same port with the same folders
    ready_at: float | None = None  # the new process answered GET /prompt


def port_refused(url: str) -> bool:
    """True if nothing listens on the URL's port any more: a connect is actively refused."""
    port = int(url.rsplit(":", 1)[1])
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False


class ChaosDriver:
    """Kills random live servers of ``pool`` from a background thread until stopped or out of budget.

    ``max_kills`` and ``max_seconds`` bound the killing (both required to be finite: chaos that forgets to stop
    would outlive the test). ``min_up`` keeps at least that many servers answering (a kill only happens if more
    are up). ``on_kill(kill)`` runs on the chaos thread right after each kill, before the restart is scheduled
    (for a test's own probes or bookkeeping). An exception on the thread ends the chaos and is raised again by
    :meth:`wait` and :meth:`stop`.
    """

    def __init__(
        self,
        pool: LocalPool,
        *,
        seed: int = 0,
        max_kills: int = 3,
        max_seconds: float = 60.0,
        gap: tuple[float, float] = (2.0, 5.0),
        restart_delay: tuple[float, float] = (1.0, 2.0),
        min_up: int = 0,
        ready_timeout: float = DEFAULT_READY_TIMEOUT,
        on_kill: Callable[[Kill], None] | None = None,
    ) -> None:
        if max_kills < 1:
            raise ValueError(f"max_kills must be at least 1, got {max_kills}")
        if not (math.isfinite(max_seconds) and max_seconds > 0):
            raise ValueError(f"max_seconds must be a positive finite number, got {max_seconds}")
        for name, (low, high) in (("gap", gap), ("restart_delay", restart_delay)):
            if not 0 <= low <= high:
                raise ValueError(f"{name} must be (low, high) with 0 <= low <= high, got {(low, high)}")
        self.pool = pool
        self.max_kills = max_kills
        self.max_seconds = max_seconds
        self.gap = gap
        self.restart_delay = restart_delay
        self.min_up = min_up
        self.ready_timeout = ready_timeout
        self.on_kill = on_kill
        self._rng = random.Random(seed)
        self._kills: list[Kill] = []
        self._lock = threading.Lock()  # guards _kills: the thread writes, callers read
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="chaos-driver", daemon=True)

    # -- public API

    def start(self) -> ChaosDriver:
        """Start the chaos thread (once)."""
        self._thread.start()
        return self

    @property
    def kills(self) -> list[Kill]:
        """Every kill so far, oldest first (a snapshot)."""
        with self._lock:
            return list(self._kills)

    @property
    def done(self) -> bool:
        """True once the thread has ended: out of budget (or stopped) and every server it restarted answers."""
        return self._thread.ident is not None and not self._thread.is_alive()

    def wait(self, timeout: float) -> bool:
        """Wait until the chaos ends by itself; False on timeout. Raises what the thread raised, if anything."""
        self._thread.join(timeout)
        if self._error is not None:
            raise self._error
        return not self._thread.is_alive()

    def stop(self, timeout: float | None = None) -> list[Kill]:
        """Stop killing, restart what is down at once, and return when every server of the pool answers.

        Servers the driver killed are restarted without waiting out their delay; any other server of the pool
        that is not running is restarted too. Returns the kills; raises what the thread raised, if anything,
        and :class:`ServerStartError` if a server does not come back within ``timeout`` (default
        ``ready_timeout`` plus slack).
        """
        deadline = time.monotonic() + (self.ready_timeout + 10.0 if timeout is None else timeout)
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(max(0.0, deadline - time.monotonic()))
            if self._thread.is_alive():
                raise ServerStartError("the chaos thread did not finish in time (a restarted server is still starting)")
        for status in self.pool.status(probe_timeout=_PROBE_TIMEOUT):
            if not status.alive:
                log.info("chaos stop: %s is not running; restarting it", status.url)
                self.pool.restart(status.index, wait=False)
        self.pool.wait_ready(timeout=max(0.0, deadline - time.monotonic()))
        if self._error is not None:
            raise self._error
        return self.kills

    def __enter__(self) -> ChaosDriver:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- the thread

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # kept for wait()/stop(): an exception on a thread is otherwise lost
            log.exception("chaos driver failed")
            self._error = exc
            self._stop.set()
            self._restart_pending()

    def _update(self, i: int, *, restarted_at: float | None = None, ready_at: float | None = None) -> Kill:
        with self._lock:
            kill = self._kills[i]
            self._kills[i] = replace(
                kill,
                restarted_at=kill.restarted_at if restarted_at is None else restarted_at,
                ready_at=kill.ready_at if ready_at is None else ready_at,
            )
            return self._kills[i]

    def _restart_pending(self) -> None:
        """Best effort after a failure: restart every server we killed and did not restart yet."""
        for i, kill in enumerate(self.kills):
            if kill.restarted_at is None:
                try:
                    self.pool.restart(kill.index, wait=False)
                    self._update(i, restarted_at=time.monotonic())
                except Exception:
                    log.exception("chaos driver: could not restart %s", kill.url)

    def _loop(self) -> None:
        rng = self._rng
        end_of_killing = time.monotonic() + self.max_seconds
        next_kill_at: float | None = time.monotonic() + rng.uniform(*self.gap)
        restart_at: float | None = None  # at most one server waits for its restart at a time
        while True:
            now = time.monotonic()
            stopping = self._stop.is_set()
            kills = self.kills
            last = len(kills) - 1

            if restart_at is not None and (stopping or now >= restart_at):
                self.pool.restart(kills[last].index, wait=False)
                restarted_at = time.monotonic()
                kills[last] = self._update(last, restarted_at=restarted_at)
                restart_at = None
                next_kill_at = restarted_at + rng.uniform(*self.gap)
                log.info("chaos: restarted %s", kills[last].url)

            for i, kill in enumerate(kills):
                if kill.restarted_at is not None and kill.ready_at is None:
                    self._check_ready(i, kill)

            budget_left = len(kills) < self.max_kills and now < end_of_killing and not stopping
            if budget_left and restart_at is None and next_kill_at is not None and now >= next_kill_at:
                up = [s for s in self.pool.status(probe_timeout=_PROBE_TIMEOUT) if s.answering]
                if len(up) > self.min_up:
                    victim = rng.choice(up)
                    self.pool.kill(victim.index)
                    kill = Kill(victim.index, victim.url, time.monotonic(), port_refused(victim.url))
                    with self._lock:
                        self._kills.append(kill)
                    log.info("chaos: killed %s (pid %s)", victim.url, victim.pid)
                    restart_at = kill.killed_at + rng.uniform(*self.restart_delay)
                    next_kill_at = None  # set once the restart happened
                    if self.on_kill is not None:
                        self.on_kill(kill)
                    continue
                next_kill_at = now + 0.5  # too few servers up: look again soon, without probing every tick

            if not budget_left and restart_at is None and all(k.ready_at is not None for k in self.kills):
                return
            self._stop.wait(_TICK)

    def _check_ready(self, i: int, kill: Kill) -> None:
        """Record when a restarted server first answers; fail if it died or took longer than ``ready_timeout``."""
        if answers(kill.url, timeout=_PROBE_TIMEOUT):
            self._update(i, ready_at=time.monotonic())
            log.info("chaos: %s ready again", kill.url)
        elif not self.pool.alive(kill.index):
            self.pool.wait_ready([kill.index], timeout=0)  # raises ServerStartError with the server's log tail
        elif kill.restarted_at is not None and time.monotonic() - kill.restarted_at > self.ready_timeout:
            raise ServerStartError(f"{kill.url} did not answer GET /prompt {self.ready_timeout:.0f} s after restart")
