"""Late binding for pool mode: which waiting prompt goes to which server, and when. No I/O.

Prompts wait here, client-side, in submission order. A server takes the next one only when it has room: fewer
than ``depth`` prompts of its queue (ours, plus other clients' as its ``status`` broadcasts report them). So a fast
server simply comes back for more sooner, and a slow one never sits on a backlog another server could have run:
servers of different speeds need no configuration. ``depth`` 2 keeps the next prompt already queued on the server
while one runs, so its GPU never idles waiting for our next POST.

When several servers have room, the prompt goes to one that last ran the same model files (loading a checkpoint
costs seconds on a GPU), then to the least loaded. A prompt that was lost on a server avoids it while another
server has room. Servers cooling down after a failure (see ``Pool``) take no work.

At the end of a run (no more prompts waiting than there are servers) the place a slow server frees is not always
worth taking: the prompt at the head may finish sooner on a faster server that frees a place a moment later. Then
it waits for that server (``_at_the_end``), judged by the servers' measured seconds per prompt; with equal
servers a free place always wins, so nothing changes there.

Late binding leaves one gap: when nothing waits any more, the last prompts sit in servers' queues behind a running
one while another server goes idle (with a slow server, the last prompt may wait there for a whole slow run).
``steals`` picks such a prompt to take back and send to the idle server, when that is expected to finish it
sooner; the engine then confirms the prompt had not started before moving it.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from statistics import fmean

from comfy_notebook.core.pool import Pool, ServerRecord

DEFAULT_DEPTH = 2
#: At the end of a run the head prompt waits for a busy server only if it is expected to finish there at least this
#: much sooner (a server's measured pace varies by about a seventh from prompt to prompt).
TAIL_MARGIN = 0.1


@dataclass(eq=False)
class Job:
    """A prompt waiting for a server. ``seq`` orders the queue: a retried prompt keeps its place at the front."""

    key: str
    models: frozenset[str] = frozenset()
    avoid: frozenset[str] = frozenset()
    seq: int = -1


@dataclass(frozen=True)
class Queued:
    """A prompt of ours posted to ``server`` and not started there, with ``ahead`` prompts to run before it."""

    key: str
    server: str
    ahead: int


class Scheduler:
    """The client-side queue of pool mode and the binding decision."""

    def __init__(self, pool: Pool, *, depth: int = DEFAULT_DEPTH) -> None:
        if depth < 1:
            raise ValueError(f"depth must be at least 1, not {depth}")
        self.pool = pool
        self.depth = depth
        # (seq, push order, job): a job re-added with its old seq may meet its own removed entry, and Jobs do not
        # compare, so the push order breaks the tie.
        self._heap: list[tuple[int, int, Job]] = []
        self._pushes = itertools.count()
        self._jobs: dict[str, Job] = {}
        self._seq = itertools.count()
        #: The model files each server ran last, for the model preference.
        self.last_models: dict[str, frozenset[str]] = {}
        #: The last ``assign`` left servers with room while jobs wait (see ``_at_the_end``): the next one
        #: scans every server, not just the one whose room changed.
        self._holding = False

    # -- the queue ----------------------------------------------------------------------------------------------------
    def add(self, job: Job) -> Job:
        """Queue ``job`` at the back, or at its old place when it already had one (a retry)."""
        if job.key in self._jobs:
            raise ValueError(f"{job.key} is already waiting")
        if job.seq < 0:
            job.seq = next(self._seq)
        self._jobs[job.key] = job
        heapq.heappush(self._heap, (job.seq, next(self._pushes), job))
        return job

    def remove(self, key: str) -> bool:
        """Take a waiting job out (cancelled); False if it was not waiting. Its heap entry is dropped lazily."""
        return self._jobs.pop(key, None) is not None

    def __len__(self) -> int:
        return len(self._jobs)

    def __contains__(self, key: str) -> bool:
        return key in self._jobs

    def positions(self) -> dict[str, int]:
        """Each waiting job's place in the client-side queue (0 = next to be bound)."""
        ordered = sorted(self._jobs.values(), key=lambda j: j.seq)
        return {job.key: i for i, job in enumerate(ordered)}

    # -- room ---------------------------------------------------------------------------------------------------------
    def load(self, record: ServerRecord) -> int:
        """Prompts ahead of a new one on this server: ours outstanding there, or its reported queue if larger
        (other clients' work; ours is counted in it once the server has broadcast it)."""
        return max(record.in_flight, record.queue_remaining)

    def room(self, record: ServerRecord) -> int:
        if self.pool.cooling(record):
            return 0
        return max(0, self.depth - self.load(record))

    def free_servers(self) -> list[ServerRecord]:
        return [r for r in self.pool.records.values() if self.room(r) > 0]

    # -- binding ------------------------------------------------------------------------------------------------------
    def assign(self, only: str | None = None) -> list[tuple[Job, str]]:
        """Bind waiting jobs, oldest first, while some server has room. The caller records each binding (the
        server's ``in_flight`` grows by one per job) before the next call.

        ``only``: just that server's room changed. After every ``assign`` either nothing waits or no server has
        room (unless the end of a run held the head back), so then only that one can take work, and the
        O(servers) scan is skipped (at 64 servers it was a tenth of the client's CPU)."""
        bound: list[tuple[Job, str]] = []
        holding, self._holding = self._holding, False
        if only is not None and not holding:
            record = self.pool.records.get(only)
            candidates = [record] if record is not None and self.room(record) > 0 else []
        else:
            candidates = self.free_servers()
        free = {r.url: r for r in candidates}
        room = {url: self.room(r) for url, r in free.items()}
        added: dict[str, int] = {}  # bound in this call, not yet in the records' in_flight
        while free and self._heap:
            _, _, job = self._heap[0]
            if self._jobs.get(job.key) is not job:  # removed, or a stale entry of a job added again
                heapq.heappop(self._heap)
                continue
            chosen = self.choose(job, free.values(), room)
            url = self._at_the_end(job, chosen, free, added) if len(self._jobs) <= len(self.pool.records) else chosen
            if url is None:
                self._holding = True  # the head waits for a faster server, and (first come) so do the rest
                break
            added[url] = added.get(url, 0) + 1
            heapq.heappop(self._heap)
            del self._jobs[job.key]
            bound.append((job, url))
            self.last_models[url] = job.models or self.last_models.get(url, frozenset())
            room[url] -= 1
            if room[url] <= 0:
                del free[url]
        return bound

    def choose(self, job: Job, free: Iterable[ServerRecord], room: dict[str, int]) -> str:
        """Among servers with room: not one that lost this job if another will do, then the most model files in
        common with what the server ran last, then the most room (least loaded), then configuration order."""
        candidates = list(free)
        fresh = [r for r in candidates if r.url not in job.avoid]
        candidates = fresh or candidates

        def score(record: ServerRecord) -> tuple[int, int]:
            shared = len(job.models & self.last_models.get(record.url, frozenset())) if job.models else 0
            return (shared, room[record.url])

        return max(candidates, key=score).url  # max keeps the first of equals: configuration order

    def _at_the_end(self, job: Job, url: str, free: dict[str, ServerRecord], added: dict[str, int]) -> str | None:
        """At the end of a run: the server with room where ``job`` is expected to finish first (``url``, the usual
        choice, unless another is clearly sooner), or None when a server without room now is clearly sooner still.

        A prompt appended to a server with ``n`` prompts ahead, at ``s`` seconds per prompt, ends in about
        ``(n + 1/2) * s`` (the running one is half done), or ``s`` on an idle one. Needs two measured servers (an
        unmeasured one counts as their average); never waits for a server the job avoids or one cooling down."""
        records = self.pool.records
        known = [r.service for r in records.values() if r.service]
        if len(known) < 2:
            return url
        default = fmean(known)

        def finish(record: ServerRecord) -> float:
            pace = record.service or default
            ahead = self.load(record) + added.get(record.url, 0)
            return (ahead + 0.5) * pace if ahead else pace

        usable = [r for r in records.values() if r.url not in job.avoid and not self.pool.cooling(r)]
        best = min(usable, key=finish, default=None)
        if best is None or finish(best) >= (1 - TAIL_MARGIN) * finish(records[url]):
            return url
        return best.url if best.url in free else None

    # -- taking queued work back for an idle server -------------------------------------------------------------------
    def idle(self, record: ServerRecord) -> bool:
        """Nothing queued or running there (ours or anyone's) and able to take work."""
        return self.load(record) == 0 and not self.pool.cooling(record)

    def steals(self, queued: Iterable[Queued], busy: Iterable[str] = ()) -> list[tuple[Queued, str]]:
        """When nothing waits client-side: for each idle server (``busy`` ones excepted: a steal to them is under
        way), the queued prompt elsewhere it would finish soonest compared with where it is, if that is sooner.

        A prompt with ``ahead`` prompts before it on a server of ``s`` seconds per prompt starts in about
        ``(ahead - 1/2) * s`` (the running one is half done on average) and ends ``s`` later; on an idle server of
        ``t`` seconds per prompt it ends in ``t``. Servers not yet measured count as the measured average (all
        equal when none is measured), so with equal servers any prompt behind a running one is worth moving.
        """
        if self._jobs:
            return []
        records = self.pool.records
        busy = set(busy)
        thieves = [r for r in records.values() if r.url not in busy and self.idle(r)]
        candidates = [q for q in queued if q.ahead >= 1 and q.server in records]
        if not thieves or not candidates:
            return []
        known = [r.service for r in records.values() if r.service]
        default = fmean(known) if known else 1.0

        def speed(url: str) -> float:
            return records[url].service or default

        taken: list[tuple[Queued, str]] = []
        for thief in thieves:
            t = speed(thief.url)
            best, gain = None, 0.0
            for q in candidates:
                g = (q.ahead + 0.5) * speed(q.server) - t
                if q.server != thief.url and g > gain:
                    best, gain = q, g
            if best is None:
                continue
            candidates.remove(best)
            taken.append((best, thief.url))
        return taken
