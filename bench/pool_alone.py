"""The servers alone: the makespan a pool of real ComfyUI servers delivers when a clairvoyant client feeds it.

``bench/pool.py`` compares pool mode with an ideal made of the sleeps alone (total work / combined speed). Real
servers spend time beyond their sleeps (per-prompt work, garbage collection every 10 s), which no client can remove.
This run measures that floor side by side: every prompt's duration and every server's speed are known in advance,
the prompts are split over the servers longest first (each to the server that would finish it soonest: LPT, within
a few percent of the best split), and each server's whole share is queued behind a short gate prompt before its
clock starts, straight over HTTP: no scheduling, no waiting for room, no POST competing with the run. Each server
then runs with a full queue from its first to its last prompt.

A server's clock runs from its first prompt's ``execution_start`` to its last prompt's ``execution_success``
(ComfyUI's own timestamps); the makespan is the longest. That leaves out the first POST's and the last result's
delivery, a few milliseconds the engine's makespan includes, so the floor is if anything a little low. The same
events flow as for the engine (a ``client_id`` per server, its WebSocket read on a thread), or none (``quiet``, as
for ``submit_many``). No online client can beat this on the same servers (it would need to know every duration in
advance), so ``pool / alone`` is the client's own share of the gap to the ideal.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import httpx
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect


def lpt_split(durations: Sequence[float], speeds: Sequence[float]) -> list[list[int]]:
    """Prompt indices per server: longest first, each to the server whose share would end soonest with it."""
    loads = [0.0] * len(speeds)
    shares: list[list[int]] = [[] for _ in speeds]
    for i in sorted(range(len(durations)), key=lambda i: -durations[i]):
        best = min(range(len(speeds)), key=lambda s: (loads[s] + durations[i]) / speeds[s])
        loads[best] += durations[i]
        shares[best].append(i)
    return shares


class _Listener(threading.Thread):
    """Reads one server's WebSocket for our client id and notes when the ``executing`` null of each of ``awaited``
    arrives. With ``queue_end`` it also waits, once ``armed``, for a ``status`` broadcast with an empty queue and
    notes it as ``"queue-end"``: the end of quiet prompts (a client id with no socket: the server sends them no
    events, as for the engine's ``submit_many``)."""

    def __init__(self, url: str, client_id: str, awaited: set[str], *, queue_end: bool = False) -> None:
        super().__init__(daemon=True, name="bench-alone-ws")
        self.awaited, self.queue_end = awaited, queue_end
        self.done: dict[str, float] = {}
        self.finished = threading.Event()
        self.armed = threading.Event()
        self.ws = connect(url.replace("http", "ws", 1) + f"/ws?clientId={client_id}", max_size=None)

    def complete(self) -> bool:
        return self.awaited <= self.done.keys() and (not self.queue_end or "queue-end" in self.done)

    def run(self) -> None:
        try:
            self._read()
        except ConnectionClosed:  # closed by ``run_alone`` after a failure elsewhere
            pass
        finally:
            self.finished.set()
            self.ws.close()

    def _read(self) -> None:
        for message in self.ws:
            if not isinstance(message, str):
                continue
            event = json.loads(message)
            kind, data = event.get("type"), event.get("data") or {}
            if kind == "executing" and data.get("node") is None and data.get("prompt_id") in self.awaited:
                self.done[data["prompt_id"]] = time.time()
            elif kind == "status" and self.queue_end and self.armed.is_set() and _queue_empty(data):
                self.done["queue-end"] = time.time()
            if self.complete():
                return


def _queue_empty(data: dict[str, Any]) -> bool:
    return ((data.get("status") or {}).get("exec_info") or {}).get("queue_remaining") == 0


#: The gate prompt each server runs while its share is posted behind it (posting 50 prompts takes a few hundred
#: milliseconds here; a gate that ends before the last POST fails the run rather than measure the posting).
GATE_S = 1.0


def run_alone(
    urls: Sequence[str],
    speeds: Sequence[float],
    durations: Sequence[float],
    make_workflow: Callable[[float], dict[str, Any]],
    *,
    quiet: bool = False,
    after_posting: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Run the prompts as the servers alone would (``quiet``: with no per-prompt events, as ``submit_many``).

    ``after_posting`` runs once every share is queued, while the gates still run (``bench/pool.py`` triggers the
    garbage collection there that would otherwise fall right before the clock starts: ComfyUI runs it at the gate's
    end, before the first timed prompt). Returns the makespan, each server's span and a timeline in
    ``bench/pool.py``'s row format (ComfyUI's timestamps, relative to that server's clock start)."""
    shares = lpt_split(durations, speeds)
    ids = [str(uuid.uuid4()) for _ in durations]
    gates = [str(uuid.uuid4()) for _ in urls]
    listen_ids = [str(uuid.uuid4()) for _ in urls]
    # Quiet: the share goes under a client id no socket uses, so the server sends its events nowhere.
    share_ids = [str(uuid.uuid4()) for _ in urls] if quiet else listen_ids
    graphs = [make_workflow(d) for d in durations]
    listeners = [
        _Listener(url, cid, {gate} | (set() if quiet else {ids[i] for i in share}), queue_end=quiet)
        for url, cid, gate, share in zip(urls, listen_ids, gates, shares, strict=True)
    ]
    for listener in listeners:
        listener.start()
    errors: list[str] = []

    def post_share(server: int) -> None:
        try:
            with httpx.Client(timeout=60) as http:
                url, listener = urls[server], listeners[server]
                gate = {"prompt": make_workflow(GATE_S), "client_id": listen_ids[server], "prompt_id": gates[server]}
                http.post(url + "/prompt", json=gate).raise_for_status()
                for i in shares[server]:
                    body = {"prompt": graphs[i], "client_id": share_ids[server], "prompt_id": ids[i]}
                    http.post(url + "/prompt", json=body).raise_for_status()
                if gates[server] in listener.done:
                    raise RuntimeError(f"the {GATE_S} s gate ended before the share was posted")
                listener.armed.set()
        except Exception as exc:  # reported, never swallowed: a failed POST invalidates the run
            errors.append(f"{urls[server]}: {exc}")

    posters = [threading.Thread(target=post_share, args=(s,), name="bench-alone-post") for s in range(len(urls))]
    try:
        for poster in posters:
            poster.start()
        for poster in posters:
            poster.join()
        if errors:
            raise RuntimeError(f"posting failed: {errors}")
        if after_posting is not None:
            after_posting()
        for listener in listeners:
            if not listener.finished.wait(900) or not listener.complete():
                raise RuntimeError("the servers did not finish every prompt")
    finally:
        for listener in listeners:  # a failed run leaves no socket or reader thread behind
            listener.ws.close()
    rows, spans = [], []
    with httpx.Client(timeout=60) as http:
        for server, (url, share) in enumerate(zip(urls, shares, strict=True)):
            history = http.get(url + "/history", params={"max_items": len(share) + 10}).json()
            stamps = {i: _stamps(history[ids[i]], url) for i in share}
            origin = min(s["execution_start"] for s in stamps.values())
            spans.append(max(s["execution_success"] for s in stamps.values()) - origin)
            for i in share:
                rows.append(
                    {
                        "server": server,
                        "seconds": round(durations[i], 4),
                        "started": round(stamps[i]["execution_start"] - origin, 4),
                        "finished": round(stamps[i]["execution_success"] - origin, 4),
                    }
                )
    return {"makespan_s": max(spans), "spans_s": [round(x, 4) for x in spans], "rows": rows,
            "shares": [len(s) for s in shares]}  # fmt: skip


def _stamps(entry: dict[str, Any], url: str) -> dict[str, float]:
    """ComfyUI's execution timestamps of one history entry, in seconds."""
    if entry["status"]["status_str"] != "success":
        raise RuntimeError(f"a prompt failed on {url}: {entry['status']}")
    return {name: data["timestamp"] / 1000 for name, data in entry["status"]["messages"]}
