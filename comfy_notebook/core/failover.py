"""Failover decisions, with no I/O: which failures are worth another server, what each attempt left behind, and
when a watchdog limit has passed (time is passed in).

Only a lost server is retried: the prompt itself was fine, so another server (or the same one once it is back)
will run it. A deterministic failure (the server refused the workflow, a node raised, someone interrupted or
cancelled it) would fail the same way everywhere, so it is never retried.
"""

from __future__ import annotations

from dataclasses import dataclass

from comfy_notebook.core.errors import ComfyError, PromptLost, ServerUnavailable

DEFAULT_RETRIES = 2

# Attempt outcomes. An "unreachable" attempt never sent the prompt (the socket did not open) and a "moved" one was
# taken back before it started (for an idle server, see ``Scheduler.steals``): neither costs a retry.
CONNECTING, RUNNING, SUCCESS, FAILED = "connecting", "running", "success", "failed"
LOST, UNREACHABLE, CANCELLED, MOVED = "lost", "unreachable", "cancelled", "moved"
FREE = (UNREACHABLE, MOVED)


@dataclass
class Attempt:
    """One try of a prompt on one server: where, under which prompt id, and how it ended."""

    server: str
    prompt_id: str
    outcome: str = RUNNING
    reason: str | None = None

    def as_dict(self) -> dict[str, str | None]:
        return {"server": self.server, "prompt_id": self.prompt_id, "outcome": self.outcome, "reason": self.reason}


def retryable(error: BaseException) -> bool:
    """A failure of the server, not of the prompt: lost (died, restarted, hung) or unreachable before or during
    the POST."""
    return isinstance(error, (PromptLost, ServerUnavailable))


def tries(attempts: list[Attempt]) -> int:
    """Attempts that reached a server and ended there (the ones ``retries`` counts)."""
    return sum(1 for a in attempts if a.outcome not in FREE)


def should_retry(error: BaseException, attempts: list[Attempt], retries: int) -> bool:
    """Whether a prompt that failed with ``error`` after ``attempts`` gets another server."""
    return retryable(error) and tries(attempts) <= retries


def reason_of(error: BaseException) -> str:
    """A short why for "moved from A to B: A <why>"."""
    if isinstance(error, PromptLost):
        return error.why
    if isinstance(error, ServerUnavailable):
        return "did not accept the prompt"
    return f"failed ({type(error).__name__})"


def exhausted(error: ComfyError, attempts: list[Attempt]) -> ComfyError:
    """The error after the last try: every server tried, in order, with what happened there. A prompt that never
    reached any server is ``ServerUnavailable``; one that some server lost is ``PromptLost``."""
    tried = "; ".join(f"{a.server} {a.reason or a.outcome}" for a in attempts)
    servers = {a.server for a in attempts}
    plural = "attempts" if len(attempts) != 1 else "attempt"
    if tries(attempts) == 0:
        unreachable = ServerUnavailable(
            f"no server could be reached for prompt {error.prompt_id}: {tried}", server=error.server
        )
        unreachable.prompt_id = error.prompt_id
        return unreachable
    lost = PromptLost(
        f"{error.message} [{len(attempts)} {plural} on {len(servers)} server(s): {tried}]",
        server=error.server,
        prompt_id=error.prompt_id,
        why=reason_of(error),
    )
    lost.result = error.result
    return lost


@dataclass(frozen=True)
class Limits:
    """Watchdog limits per phase, in seconds (None: no limit). Generous by default: GC stalls of ComfyUI reach a
    second, models load for minutes on first use, and a long render on a server that answers pings is fine."""

    #: A posted prompt that has not started while its server said nothing at all for this long.
    start: float | None = 1800.0
    #: A running prompt is interrupted and fails after this long. Off unless the user sets it.
    execution: float | None = None


def overdue(phase: str, since: float, now: float, limits: Limits) -> bool:
    """Whether a prompt in ``phase`` ("queued" or "running") since ``since`` has passed its phase's limit."""
    limit = limits.start if phase == "queued" else limits.execution if phase == "running" else None
    return limit is not None and now - since > limit
