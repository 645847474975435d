"""Failover decisions: what is retried and how often, the reasons shown, the final error, the watchdog limits."""

from __future__ import annotations

import pytest

from comfy_notebook.core.errors import (
    Cancelled,
    ComfyError,
    ConfigError,
    ExecutionError,
    InputError,
    NodeError,
    PromptInterrupted,
    PromptLost,
    ProtocolError,
    ServerUnavailable,
    ValidationError,
    WorkflowError,
)
from comfy_notebook.core.failover import (
    CANCELLED,
    DEFAULT_RETRIES,
    FAILED,
    LOST,
    MOVED,
    RUNNING,
    UNREACHABLE,
    Attempt,
    Limits,
    exhausted,
    overdue,
    reason_of,
    retryable,
    should_retry,
    tries,
)

A = "http://127.0.0.1:8188"
B = "http://127.0.0.1:8189"
C = "http://127.0.0.1:8190"

RETRIED = [
    pytest.param(PromptLost("gone", server=A, prompt_id="p", why="restarted"), id="PromptLost"),
    pytest.param(ServerUnavailable("refused", server=A), id="ServerUnavailable"),
]
NEVER_RETRIED = [
    pytest.param(
        ValidationError("bad", (NodeError("1", "KSampler", (InputError("t", "m"),)),), server=A), id="ValidationError"
    ),
    pytest.param(
        ExecutionError("node raised", server=A, prompt_id="p", node_id="3", exception_type="RuntimeError"),
        id="ExecutionError",
    ),
    pytest.param(PromptInterrupted("interrupted", server=A, prompt_id="p"), id="PromptInterrupted"),
    pytest.param(Cancelled("cancelled", server=A, prompt_id="p"), id="Cancelled"),
    pytest.param(ProtocolError("garbage", server=A), id="ProtocolError"),
    pytest.param(ComfyError("internal error", server=A), id="ComfyError"),
    pytest.param(WorkflowError("malformed", line=1, column=2), id="WorkflowError"),
    pytest.param(ConfigError("bad url"), id="ConfigError"),
    pytest.param(ValueError("not ours"), id="ValueError"),
]


def lost(server: str = A, reason: str | None = "stopped answering") -> Attempt:
    return Attempt(server, f"id-{server[-4:]}", LOST, reason)


def unreachable(server: str = A) -> Attempt:
    return Attempt(server, f"id-{server[-4:]}", UNREACHABLE, "could not be reached")


# -- what is retried -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("error", RETRIED)
def test_a_lost_or_unreachable_server_is_retryable(error: ComfyError) -> None:
    assert retryable(error)
    assert should_retry(error, [lost()], retries=2)


@pytest.mark.parametrize("error", NEVER_RETRIED)
def test_a_failure_of_the_prompt_itself_is_never_retried(error: Exception) -> None:
    assert not retryable(error)
    assert not should_retry(error, [], retries=100)
    assert not should_retry(error, [lost()], retries=100)


def test_subclasses_of_the_retried_errors_are_retried() -> None:
    class Refused(ServerUnavailable):
        refused = True

    assert retryable(Refused("nothing listens", server=A))


def test_the_default_is_two_retries() -> None:
    assert DEFAULT_RETRIES == 2


@pytest.mark.parametrize("retries", [0, 1, 2, 5])
def test_a_prompt_is_sent_again_retries_times_at_most(retries: int) -> None:
    error = PromptLost("gone", server=A)
    attempts: list[Attempt] = []
    sends = 0
    while True:
        attempts.append(lost([A, B, C][sends % 3]))
        sends += 1
        if not should_retry(error, attempts, retries):
            break
        assert sends <= retries
    assert sends == retries + 1  # the first send plus ``retries`` more


def test_unreachable_attempts_cost_no_retry() -> None:
    error = ServerUnavailable("refused", server=B)
    attempts = [unreachable(A), unreachable(B), unreachable(C), unreachable(A)]
    assert tries(attempts) == 0
    assert should_retry(error, attempts, retries=0)
    attempts.append(lost(B))
    assert tries(attempts) == 1
    assert should_retry(error, attempts, retries=1)
    assert not should_retry(error, attempts, retries=0)
    attempts += [unreachable(C)] * 10
    assert should_retry(error, attempts, retries=1)
    attempts.append(lost(C))
    assert not should_retry(error, attempts, retries=1)


def test_tries_counts_every_outcome_but_unreachable() -> None:
    outcomes = [LOST, UNREACHABLE, FAILED, RUNNING, CANCELLED, UNREACHABLE, "connecting", "success"]
    attempts = [Attempt(A, str(i), outcome) for i, outcome in enumerate(outcomes)]
    assert tries(attempts) == 6
    assert tries([]) == 0


# -- reasons ---------------------------------------------------------------------------------------------------------
def test_reason_of_a_lost_prompt_is_its_why() -> None:
    assert reason_of(PromptLost("gone", server=A, why="restarted and forgot it")) == "restarted and forgot it"
    assert reason_of(PromptLost("gone", server=A)) == "lost it"


def test_reason_of_an_unreachable_server() -> None:
    assert reason_of(ServerUnavailable("connection refused", server=A)) == "did not accept the prompt"


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (ExecutionError("x", server=A, prompt_id="p"), "failed (ExecutionError)"),
        (ProtocolError("x", server=A), "failed (ProtocolError)"),
        (ComfyError("x"), "failed (ComfyError)"),
        (KeyError("x"), "failed (KeyError)"),
    ],
)
def test_reason_of_any_other_error_names_its_type(error: BaseException, reason: str) -> None:
    assert reason_of(error) == reason


# -- the error after the last try ------------------------------------------------------------------------------------
def test_exhausted_names_every_server_tried_with_its_reason_in_order() -> None:
    attempts = [
        Attempt(A, "p1", LOST, "stopped answering"),
        Attempt(B, "p2", UNREACHABLE, "could not be reached"),
        Attempt(C, "p3", LOST, "restarted"),
        Attempt(A, "p4", LOST, "lost it"),
    ]
    error = PromptLost("prompt p4 was lost on " + A, server=A, prompt_id="p4", why="lost it")
    final = exhausted(error, attempts)
    assert isinstance(final, PromptLost)
    assert isinstance(final, ComfyError)
    message = str(final)
    assert message.startswith("prompt p4 was lost on " + A)
    assert "4 attempts on 3 server(s)" in message
    tried = f"{A} stopped answering; {B} could not be reached; {C} restarted; {A} lost it"
    assert message.endswith(f"[4 attempts on 3 server(s): {tried}]")
    assert final.server == A
    assert final.prompt_id == "p4"
    assert final.why == "lost it"


def test_exhausted_keeps_the_partial_result() -> None:
    partial = object()
    error = PromptLost("gone", server=B, prompt_id="p2", why="restarted")
    error.result = partial  # type: ignore[assignment]
    final = exhausted(error, [lost(A), lost(B, "restarted")])
    assert final.result is partial
    assert final is not error


def test_exhausted_without_a_partial_result_has_none() -> None:
    assert exhausted(PromptLost("gone", server=A), [lost(A)]).result is None


def test_exhausted_after_a_refusal_is_a_prompt_lost_with_the_refusal_as_why() -> None:
    error = ServerUnavailable("http://127.0.0.1:8189 refused the connection", server=B, prompt_id="p2")
    final = exhausted(error, [lost(A, "restarted"), Attempt(B, "p2", LOST, reason_of(error))])
    assert isinstance(final, PromptLost)
    assert final.why == "did not accept the prompt"
    assert final.server == B
    assert final.prompt_id == "p2"
    assert str(final).endswith(f"[2 attempts on 2 server(s): {A} restarted; {B} did not accept the prompt]")


def test_exhausted_with_one_attempt_says_attempt_and_falls_back_to_the_outcome() -> None:
    final = exhausted(PromptLost("gone", server=A), [Attempt(A, "p1", LOST)])
    assert str(final) == f"gone [1 attempt on 1 server(s): {A} lost]"


# -- attempts --------------------------------------------------------------------------------------------------------
def test_an_attempt_starts_running_and_renders_as_a_dict() -> None:
    attempt = Attempt(A, "p1")
    assert attempt.outcome == RUNNING
    assert attempt.reason is None
    attempt.outcome, attempt.reason = LOST, "restarted"
    assert attempt.as_dict() == {"server": A, "prompt_id": "p1", "outcome": LOST, "reason": "restarted"}


# -- watchdog limits -------------------------------------------------------------------------------------------------
def test_default_limits_start_at_half_an_hour_and_execution_is_off() -> None:
    limits = Limits()
    assert limits.start == 1800.0
    assert limits.execution is None


def test_a_queued_prompt_is_overdue_only_past_the_start_limit() -> None:
    limits = Limits()
    assert not overdue("queued", 100.0, 100.0, limits)
    assert not overdue("queued", 100.0, 1900.0, limits)  # exactly at the limit: not yet
    assert overdue("queued", 100.0, 1900.001, limits)
    assert overdue("queued", 100.0, 1e9, limits)


def test_a_running_prompt_is_never_overdue_by_default() -> None:
    assert not overdue("running", 0.0, 1e12, Limits())


def test_an_execution_limit_applies_to_running_prompts_only() -> None:
    limits = Limits(start=None, execution=60.0)
    assert not overdue("running", 10.0, 70.0, limits)
    assert overdue("running", 10.0, 70.5, limits)
    assert not overdue("queued", 10.0, 1e12, limits)  # no start limit now


def test_each_phase_has_its_own_limit() -> None:
    limits = Limits(start=5.0, execution=50.0)
    assert overdue("queued", 0.0, 6.0, limits)
    assert not overdue("running", 0.0, 6.0, limits)
    assert overdue("running", 0.0, 51.0, limits)


@pytest.mark.parametrize("phase", ["waiting", "done", "connecting", ""])
def test_other_phases_are_never_overdue(phase: str) -> None:
    assert not overdue(phase, 0.0, 1e12, Limits(start=1.0, execution=1.0))


def test_a_zero_limit_fires_as_soon_as_any_time_passes() -> None:
    limits = Limits(start=0.0, execution=0.0)
    assert not overdue("queued", 5.0, 5.0, limits)
    assert overdue("queued", 5.0, 5.01, limits)
    assert overdue("running", 5.0, 5.01, limits)


def test_limits_are_immutable() -> None:
    limits = Limits()
    with pytest.raises(AttributeError):
        limits.start = 1.0  # type: ignore[misc]


def test_a_prompt_taken_back_before_it_started_costs_no_retry() -> None:
    attempts = [Attempt("http://a:1", "p1", MOVED), Attempt("http://b:1", "p2", LOST)]
    assert tries(attempts) == 1
    assert should_retry(PromptLost("gone"), attempts, retries=1)
