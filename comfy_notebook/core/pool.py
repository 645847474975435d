"""The pool: one record per server and the choice of a server for new work. No I/O.

The engine feeds the records (``status`` broadcasts carry ``queue_remaining`` for free, in-flight counts come from
our own bookkeeping, failures from connects and requests); the pool only decides. A failing server is cooled down
with exponential back-off so nothing retries it in a tight loop.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from comfy_notebook.core.errors import ServerUnavailable
from comfy_notebook.core.servers import ServerSpec

COOLDOWN_FIRST = 1.0
COOLDOWN_MAX = 30.0
#: Weight of the newest prompt in a server's ``service`` average: prompts differ, so several are averaged.
SERVICE_WEIGHT = 0.2


@dataclass
class ServerRecord:
    """What the client knows about one server. ``spec`` holds the credentials; nothing else does."""

    spec: ServerSpec
    healthy: bool = True
    queue_remaining: int = 0
    in_flight: int = 0
    last_error: str | None = None
    failures: int = 0
    cooldown_until: float = 0.0
    # Counters for the status panel: prompts of ours that finished here, failed here, were moved away after
    # this server lost them, and that this server finished after they had been moved (duplicates, never returned).
    done: int = 0
    failed: int = 0
    retried: int = 0
    duplicates: int = 0
    #: Seconds per prompt, a moving average of the prompts seen start and finish here (None: none yet). Only
    #: the ratio between servers matters: it tells whether moving a queued prompt to an idle server pays.
    service: float | None = None

    @property
    def url(self) -> str:
        return self.spec.url

    def load(self) -> int:
        """Work ahead of a new prompt: the server's queue plus what we sent that it may not have counted yet."""
        return self.queue_remaining + self.in_flight


class Pool:
    """The configured servers, their health, and the least-loaded choice."""

    def __init__(
        self,
        specs: Iterable[ServerSpec] = (),
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._clock = clock
        self._rng = rng or random.Random()
        self.records: dict[str, ServerRecord] = {}
        self.set_servers(specs)

    def set_servers(self, specs: Iterable[ServerSpec]) -> None:
        """Replace the server list, keeping what we learned about servers that stay."""
        old = self.records
        self.records = {}
        for spec in specs:
            record = old.get(spec.url) or ServerRecord(spec)
            record.spec = spec
            self.records[spec.url] = record

    def get(self, url: str) -> ServerRecord:
        try:
            return self.records[url]
        except KeyError:
            raise ServerUnavailable(f"{url} is not in the server pool", server=url) from None

    def cooling(self, record: ServerRecord) -> bool:
        return record.cooldown_until > self._clock()

    def choose(self, exclude: Iterable[str] = ()) -> ServerRecord:
        """The server with the least queued + in-flight work that is not cooling down; ties broken at random.

        A failed server is retried once its cooldown is over (nothing else would ever mark it healthy again).
        Servers in cooldown are used only when every other server is cooling too (then the one that recovers
        first): a user's own request is not a tight loop, and a clear connection error beats a refusal.
        """
        skip = set(exclude)
        candidates = [r for r in self.records.values() if r.url not in skip]
        if not candidates:
            if self.records:
                tried = ", ".join(self.records)
                raise ServerUnavailable(f"no ComfyUI server left to try: all were excluded ({tried})")
            raise ServerUnavailable("no ComfyUI server is configured: call set_servers([...]) or set COMFY_SERVERS")
        ready = [r for r in candidates if not self.cooling(r)]
        if not ready:
            return min(candidates, key=lambda r: r.cooldown_until)
        least = min(r.load() for r in ready)
        return self._rng.choice([r for r in ready if r.load() == least])

    def mark_ok(self, url: str) -> None:
        record = self.records.get(url)
        if record is not None:
            record.healthy = True
            record.failures = 0
            record.cooldown_until = 0.0

    def mark_failed(self, url: str, error: str) -> None:
        """Record a failure and cool the server down: 1 s, 2 s, 4 s, ... up to 30 s."""
        record = self.records.get(url)
        if record is None:
            return
        record.healthy = False
        record.queue_remaining = 0  # unknown now; a restarted server has lost its queue anyway
        record.last_error = error
        record.failures += 1
        # cap the exponent: 2 ** 1024 overflows a float after a long outage
        delay = min(COOLDOWN_MAX, COOLDOWN_FIRST * 2 ** min(record.failures - 1, 32))
        record.cooldown_until = self._clock() + delay

    def observe(self, url: str, seconds: float, weight: float = SERVICE_WEIGHT) -> None:
        """A prompt ran ``seconds`` on ``url``: fold it into that server's ``service`` average."""
        record = self.records.get(url)
        if record is not None and seconds >= 0:
            old = record.service
            record.service = seconds if old is None else old + weight * (seconds - old)

    def set_queue(self, url: str, queue_remaining: int) -> None:
        record = self.records.get(url)
        if record is not None:
            record.queue_remaining = max(0, queue_remaining)

    def snapshot(self) -> list[dict[str, Any]]:
        """Per-server status entries: JSON-serialisable, no credentials."""
        now = self._clock()
        return [
            {
                "url": r.url,
                "healthy": r.healthy,
                "queue_remaining": r.queue_remaining,
                "in_flight": r.in_flight,
                "last_error": r.last_error,
                "cooldown_remaining": round(max(0.0, r.cooldown_until - now), 3),
                "done": r.done,
                "failed": r.failed,
                "retried": r.retried,
                "duplicates": r.duplicates,
            }
            for r in self.records.values()
        ]
