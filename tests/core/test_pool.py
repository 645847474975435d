"""The pool: least-loaded choice, random tie-break, exclusion and cooldowns, with an injected clock and rng."""

from __future__ import annotations

import base64
import json
import random
from collections import Counter

import pytest

from comfy_notebook.core.errors import ServerUnavailable
from comfy_notebook.core.pool import COOLDOWN_MAX, Pool, ServerRecord
from comfy_notebook.core.servers import ServerSpec
from tests.core.clock import Clock

A = "http://127.0.0.1:8188"
B = "http://127.0.0.1:8189"
C = "http://127.0.0.1:8190"


@pytest.fixture
def clock() -> Clock:
    return Clock(1000.0)


def make_pool(clock: Clock, *urls: str, seed: int = 1234) -> Pool:
    return Pool([ServerSpec.parse(u) for u in urls], clock=clock, rng=random.Random(seed))


def load(pool: Pool, url: str, queue: int = 0, in_flight: int = 0) -> None:
    pool.set_queue(url, queue)
    pool.records[url].in_flight = in_flight


# -- least-loaded choice -------------------------------------------------------------------------------------------
def test_choose_takes_the_least_queued_plus_in_flight(clock: Clock) -> None:
    pool = make_pool(clock, A, B, C)
    load(pool, A, queue=3)  # load 3
    load(pool, B, queue=0, in_flight=2)  # load 2
    load(pool, C, queue=1, in_flight=2)  # load 3
    for _ in range(20):
        assert pool.choose().url == B


def test_in_flight_counts_even_when_the_server_reports_an_empty_queue(clock: Clock) -> None:
    # prompts we sent but the server has not broadcast yet must count, or a burst all lands on one server
    pool = make_pool(clock, A, B)
    load(pool, A, queue=0, in_flight=1)
    load(pool, B, queue=0, in_flight=0)
    assert pool.choose().url == B


def test_record_load_is_queue_plus_in_flight() -> None:
    record = ServerRecord(ServerSpec.parse(A), queue_remaining=4, in_flight=3)
    assert record.load() == 7
    assert record.url == A


def test_ties_are_broken_at_random_and_both_tied_servers_get_picked(clock: Clock) -> None:
    pool = make_pool(clock, A, B, C, seed=42)
    load(pool, A, queue=1)
    load(pool, B, in_flight=1)
    load(pool, C, queue=5)
    picks = Counter(pool.choose().url for _ in range(400))
    assert set(picks) == {A, B}  # the busier server is never picked
    assert min(picks[A], picks[B]) > 100  # both tied servers get a fair share (binomial, p=0.5, n=400)


def test_tie_break_uses_the_injected_rng(clock: Clock) -> None:
    def draws(seed: int) -> list[str]:
        pool = make_pool(clock, A, B, C, seed=seed)
        return [pool.choose().url for _ in range(50)]

    assert draws(7) == draws(7)
    assert len(set(draws(7))) == 3


def test_set_queue_clamps_negative_values(clock: Clock) -> None:
    pool = make_pool(clock, A)
    pool.set_queue(A, -5)
    assert pool.records[A].queue_remaining == 0
    pool.set_queue(A, 9)
    assert pool.records[A].queue_remaining == 9


def test_updates_for_unknown_servers_are_ignored(clock: Clock) -> None:
    pool = make_pool(clock, A)
    before = pool.snapshot()
    pool.set_queue(B, 3)
    pool.mark_failed(B, "boom")
    pool.mark_ok(B)
    assert pool.snapshot() == before
    assert list(pool.records) == [A]


# -- exclusion -----------------------------------------------------------------------------------------------------
def test_exclude_skips_servers_even_when_they_are_least_loaded(clock: Clock) -> None:
    pool = make_pool(clock, A, B, C)
    load(pool, A, queue=0)
    load(pool, B, queue=5)
    load(pool, C, queue=9)
    assert pool.choose(exclude=[A]).url == B
    assert pool.choose(exclude=(u for u in (A, B))).url == C  # any iterable


def test_excluding_every_server_raises_a_clear_error(clock: Clock) -> None:
    pool = make_pool(clock, A, B)
    with pytest.raises(ServerUnavailable) as info:
        pool.choose(exclude={A, B})
    message = str(info.value)
    assert "excluded" in message
    assert A in message and B in message
    assert "is configured" not in message  # not the misleading "no server is configured"


def test_empty_pool_raises_server_unavailable_with_a_helpful_message(clock: Clock) -> None:
    pool = Pool(clock=clock, rng=random.Random(0))
    with pytest.raises(ServerUnavailable) as info:
        pool.choose()
    assert isinstance(info.value, ConnectionError)
    message = str(info.value)
    assert "no ComfyUI server is configured" in message
    assert "set_servers" in message
    assert "COMFY_SERVERS" in message


def test_get_unknown_server_names_it(clock: Clock) -> None:
    pool = make_pool(clock, A)
    assert pool.get(A).url == A
    with pytest.raises(ServerUnavailable) as info:
        pool.get(B)
    assert B in str(info.value)
    assert info.value.server == B


# -- cooldown ------------------------------------------------------------------------------------------------------
def test_cooldown_doubles_from_one_second_up_to_thirty(clock: Clock) -> None:
    pool = make_pool(clock, A)
    delays = []
    for _ in range(9):
        pool.mark_failed(A, "connect refused")
        delays.append(pool.records[A].cooldown_until - clock.now)
    assert delays == [1, 2, 4, 8, 16, 30, 30, 30, 30]
    assert COOLDOWN_MAX == 30


def test_cooldown_is_measured_from_the_latest_failure(clock: Clock) -> None:
    pool = make_pool(clock, A)
    pool.mark_failed(A, "x")
    clock.advance(10)
    pool.mark_failed(A, "x")
    assert pool.records[A].cooldown_until == clock.now + 2


def test_a_long_outage_does_not_overflow_the_backoff(clock: Clock) -> None:
    pool = make_pool(clock, A)
    for _ in range(2000):  # 2 ** 1024 does not fit a float: this used to raise OverflowError
        pool.mark_failed(A, "connect refused")
    assert pool.records[A].failures == 2000
    assert pool.records[A].cooldown_until == clock.now + COOLDOWN_MAX


def test_mark_failed_records_the_error(clock: Clock) -> None:
    pool = make_pool(clock, A)
    pool.mark_failed(A, "WebSocket closed abnormally (1006)")
    record = pool.records[A]
    assert record.healthy is False
    assert record.failures == 1
    assert record.last_error == "WebSocket closed abnormally (1006)"


def test_cooling_ends_exactly_when_the_cooldown_is_over(clock: Clock) -> None:
    pool = make_pool(clock, A)
    pool.mark_failed(A, "x")
    record = pool.records[A]
    clock.advance(0.999)
    assert pool.cooling(record)
    clock.advance(0.001)
    assert not pool.cooling(record)


def test_cooling_servers_are_avoided_even_when_least_loaded(clock: Clock) -> None:
    pool = make_pool(clock, A, B)
    load(pool, B, queue=50)
    pool.mark_failed(A, "connect refused")
    for _ in range(20):
        assert pool.choose().url == B


def test_a_failed_server_is_retried_once_its_cooldown_is_over(clock: Clock) -> None:
    # nothing probes a failed server: if the pool skipped it until mark_ok, one blip would remove it for good
    pool = make_pool(clock, A, B)
    load(pool, B, queue=50)
    pool.mark_failed(A, "connect refused")
    assert pool.choose().url == B
    clock.advance(1.0)
    assert pool.choose().url == A
    pool.mark_failed(A, "connect refused again")  # the retry failed: the next wait is longer
    clock.advance(1.5)
    assert pool.choose().url == B
    clock.advance(0.5)
    assert pool.choose().url == A


def test_when_all_are_cooling_the_soonest_to_recover_is_chosen(clock: Clock) -> None:
    pool = make_pool(clock, A, B, C)
    for _ in range(3):
        pool.mark_failed(A, "x")  # 4 s
    pool.mark_failed(B, "x")  # 1 s
    for _ in range(2):
        pool.mark_failed(C, "x")  # 2 s
    assert pool.choose().url == B
    assert pool.choose(exclude=[B]).url == C


def test_a_single_cooling_server_is_still_returned(clock: Clock) -> None:
    # a user's own request gets a clear connection error rather than a refusal
    pool = make_pool(clock, A)
    pool.mark_failed(A, "x")
    assert pool.choose().url == A


def test_mark_ok_resets_health_and_backoff(clock: Clock) -> None:
    pool = make_pool(clock, A, B)
    load(pool, B, queue=50)
    for _ in range(4):
        pool.mark_failed(A, "x")
    pool.mark_ok(A)
    record = pool.records[A]
    assert record.healthy is True
    assert record.failures == 0
    assert not pool.cooling(record)
    assert pool.choose().url == A
    pool.mark_failed(A, "x")
    assert record.cooldown_until == clock.now + 1  # back-off starts again at 1 s


# -- set_servers ---------------------------------------------------------------------------------------------------
def test_a_failed_server_forgets_its_stale_queue_length(clock: Clock) -> None:
    pool = make_pool(clock, A, B)
    load(pool, A, queue=4, in_flight=2)
    pool.mark_failed(A, "boom")
    assert pool.records[A].queue_remaining == 0  # a dead server's last broadcast says nothing any more
    assert pool.records[A].in_flight == 2  # our own bookkeeping stays until those prompts end


def test_set_servers_keeps_records_of_servers_that_stay(clock: Clock) -> None:
    pool = make_pool(clock, A, B)
    load(pool, A, queue=4, in_flight=2)
    pool.mark_failed(A, "boom")
    kept = pool.records[A]
    pool.set_servers([ServerSpec.parse("http://user:newpass@127.0.0.1:8188"), ServerSpec.parse(C)])
    assert list(pool.records) == [A, C]
    record = pool.records[A]
    assert record is kept
    assert (record.in_flight, record.failures, record.last_error) == (2, 1, "boom")
    assert record.healthy is False
    assert record.spec.headers["Authorization"].startswith("Basic ")  # the new credentials replace the old
    assert pool.records[C].load() == 0
    assert pool.records[C].healthy is True
    assert B not in pool.records


def test_set_servers_to_nothing_empties_the_pool(clock: Clock) -> None:
    pool = make_pool(clock, A)
    pool.set_servers([])
    assert pool.records == {}
    with pytest.raises(ServerUnavailable):
        pool.choose()


def test_duplicate_urls_collapse_to_one_record(clock: Clock) -> None:
    pool = make_pool(clock, A, A + "/", B)
    assert list(pool.records) == [A, B]


# -- snapshot ------------------------------------------------------------------------------------------------------
def test_snapshot_is_json_serialisable_and_has_no_credentials(clock: Clock) -> None:
    specs = [
        ServerSpec.parse("http://alice:s3cret-pass@gpu1.example.com:8188"),
        ServerSpec.parse("https://gpu2.example.com/comfy", token="tok-abcdef-123"),
        ServerSpec.parse("http://gpu3.example.com", headers={"X-Api-Key": "key-987654"}),
    ]
    pool = Pool(specs, clock=clock, rng=random.Random(0))
    pool.mark_failed("http://gpu1.example.com:8188", "connect refused")
    pool.set_queue("https://gpu2.example.com/comfy", 3)
    snap = pool.snapshot()
    text = json.dumps(snap)
    assert json.loads(text) == snap
    for secret in ("alice", "s3cret", "tok-abcdef", "key-987654", "Authorization", "Bearer", "Basic"):
        assert secret not in text
    assert base64.b64encode(b"alice:s3cret-pass").decode() not in text
    assert [e["url"] for e in snap] == [
        "http://gpu1.example.com:8188",
        "https://gpu2.example.com/comfy",
        "http://gpu3.example.com",
    ]
    assert snap[0] == {
        "url": "http://gpu1.example.com:8188",
        "healthy": False,
        "queue_remaining": 0,
        "in_flight": 0,
        "last_error": "connect refused",
        "cooldown_remaining": 1.0,
        "done": 0,
        "failed": 0,
        "retried": 0,
        "duplicates": 0,
    }
    assert snap[1]["queue_remaining"] == 3
    assert snap[1]["cooldown_remaining"] == 0.0


def test_snapshot_cooldown_remaining_counts_down_with_the_clock(clock: Clock) -> None:
    pool = make_pool(clock, A)
    for _ in range(3):
        pool.mark_failed(A, "x")
    clock.advance(1.25)
    assert pool.snapshot()[0]["cooldown_remaining"] == pytest.approx(2.75)
    clock.advance(10)
    assert pool.snapshot()[0]["cooldown_remaining"] == 0.0
