"""Late binding in pool mode: FIFO order, depth, cooldowns, model preference, avoidance, retries, a changing pool.

The scheduler only decides; the engine records each binding (the server's ``in_flight`` grows by one) before the
next ``assign()``. ``bind`` below plays that part, ``finish`` plays a prompt ending on its server.
"""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from comfy_notebook.core.pool import Pool
from comfy_notebook.core.scheduler import DEFAULT_DEPTH, Job, Queued, Scheduler
from comfy_notebook.core.servers import ServerSpec
from tests.core.clock import Clock

A = "http://127.0.0.1:8188"
B = "http://127.0.0.1:8189"
C = "http://127.0.0.1:8190"

SD15 = frozenset({"ckpt_name=sd15.safetensors"})
SDXL = frozenset({"ckpt_name=sdxl.safetensors"})
FLUX = frozenset({"unet_name=flux.safetensors"})


@pytest.fixture
def clock() -> Clock:
    return Clock(1000.0)


def make_pool(clock: Clock, *urls: str) -> Pool:
    return Pool([ServerSpec.parse(u) for u in urls], clock=clock, rng=random.Random(0))


def make(clock: Clock, *urls: str, depth: int = DEFAULT_DEPTH) -> tuple[Pool, Scheduler]:
    pool = make_pool(clock, *urls)
    return pool, Scheduler(pool, depth=depth)


def bind(scheduler: Scheduler) -> list[tuple[str, str]]:
    """One ``assign()`` plus the engine's bookkeeping: each bound prompt is in flight on its server."""
    bound = scheduler.assign()
    for _, url in bound:
        scheduler.pool.records[url].in_flight += 1
    return [(job.key, url) for job, url in bound]


def finish(pool: Pool, url: str, count: int = 1) -> None:
    record = pool.records[url]
    assert record.in_flight >= count
    record.in_flight -= count


def add(scheduler: Scheduler, *keys: str, models: frozenset[str] = frozenset()) -> list[Job]:
    return [scheduler.add(Job(key, models=models)) for key in keys]


# -- construction ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("depth", [0, -1, -100])
def test_depth_below_one_is_refused(clock: Clock, depth: int) -> None:
    with pytest.raises(ValueError, match="depth"):
        Scheduler(make_pool(clock, A), depth=depth)


def test_depth_one_is_allowed_and_two_is_the_default(clock: Clock) -> None:
    assert Scheduler(make_pool(clock, A), depth=1).depth == 1
    assert Scheduler(make_pool(clock, A)).depth == DEFAULT_DEPTH == 2


# -- FIFO across the pool --------------------------------------------------------------------------------------------
def test_jobs_bind_oldest_first_spread_over_the_pool(clock: Clock) -> None:
    pool, scheduler = make(clock, A, B, C)
    add(scheduler, *(f"j{i}" for i in range(10)))
    # every server has equal room: most room first, configuration order among equals
    assert bind(scheduler) == [(f"j{i}", url) for i, url in enumerate([A, B, C, A, B, C])]
    assert len(scheduler) == 4
    assert scheduler.positions() == {"j6": 0, "j7": 1, "j8": 2, "j9": 3}
    assert bind(scheduler) == []  # every server is at depth

    finish(pool, B)
    assert bind(scheduler) == [("j6", B)]
    finish(pool, A, 2)
    finish(pool, C)
    assert bind(scheduler) == [("j7", A), ("j8", A), ("j9", C)]
    assert len(scheduler) == 0
    assert bind(scheduler) == []


def test_bound_jobs_come_out_in_submission_order_whatever_server_frees_up(clock: Clock) -> None:
    pool, scheduler = make(clock, A, B, C, depth=1)
    keys = [f"j{i}" for i in range(30)]
    add(scheduler, *keys)
    order: list[str] = []
    rng = random.Random(5)
    while len(order) < len(keys):
        for key, url in bind(scheduler):
            order.append(key)
            assert pool.records[url].in_flight <= 1
        finish(pool, rng.choice([r.url for r in pool.records.values() if r.in_flight]))
    assert order == keys


def test_assign_with_nothing_waiting_binds_nothing(clock: Clock) -> None:
    _, scheduler = make(clock, A, B)
    assert scheduler.assign() == []


def test_assign_with_no_server_binds_nothing_and_keeps_the_queue(clock: Clock) -> None:
    _, scheduler = make(clock)
    add(scheduler, "a", "b")
    assert scheduler.assign() == []
    assert scheduler.positions() == {"a": 0, "b": 1}


# -- depth -----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("depth", [1, 2, 3, 5])
def test_at_most_depth_prompts_of_ours_per_server(clock: Clock, depth: int) -> None:
    pool, scheduler = make(clock, A, B, depth=depth)
    add(scheduler, *(f"j{i}" for i in range(20)))
    bound = bind(scheduler)
    assert Counter(url for _, url in bound) == {A: depth, B: depth}
    assert bind(scheduler) == []  # the caller's in_flight now fills every server
    assert pool.records[A].in_flight == pool.records[B].in_flight == depth


def test_in_flight_of_ours_takes_room(clock: Clock) -> None:
    pool, scheduler = make(clock, A, B, depth=2)
    pool.records[A].in_flight = 2
    pool.records[B].in_flight = 1
    add(scheduler, "a", "b", "c")
    assert bind(scheduler) == [("a", B)]
    assert scheduler.positions() == {"b": 0, "c": 1}


def test_queue_of_other_clients_takes_room(clock: Clock) -> None:
    pool, scheduler = make(clock, A, B, C, depth=2)
    pool.set_queue(A, 2)  # another client's two prompts: A is full
    pool.set_queue(B, 1)  # one: B has room for one
    pool.set_queue(C, 7)  # far beyond depth: still no room, never negative
    add(scheduler, "a", "b", "c")
    assert bind(scheduler) == [("a", B)]
    assert scheduler.room(pool.records[C]) == 0


def test_a_server_drains_its_reported_queue_then_takes_work(clock: Clock) -> None:
    pool, scheduler = make(clock, A, depth=2)
    pool.set_queue(A, 5)
    add(scheduler, "a", "b", "c")
    assert bind(scheduler) == []
    pool.set_queue(A, 1)  # a status broadcast: the other client's work is nearly done
    assert bind(scheduler) == [("a", A)]
    pool.set_queue(A, 0)
    assert bind(scheduler) == [("b", A)]  # in_flight 1 now holds the room
    assert bind(scheduler) == []


@pytest.mark.parametrize(
    ("in_flight", "queue", "room"),
    [
        (0, 0, 2),
        (1, 0, 1),  # ours, not broadcast yet
        (0, 1, 1),  # another client's
        (1, 1, 1),  # ours once the server has broadcast it: counted once, not twice
        (2, 2, 0),
        (2, 0, 0),
        (0, 2, 0),
        (1, 3, 0),
        (4, 0, 0),
    ],
)
def test_load_is_the_larger_of_our_in_flight_and_the_reported_queue(
    clock: Clock, in_flight: int, queue: int, room: int
) -> None:
    pool, scheduler = make(clock, A, depth=2)
    record = pool.records[A]
    record.in_flight = in_flight
    pool.set_queue(A, queue)
    assert scheduler.load(record) == max(in_flight, queue)
    assert scheduler.room(record) == room
    assert scheduler.free_servers() == ([record] if room else [])


# -- cooldown --------------------------------------------------------------------------------------------------------
def test_nothing_binds_to_a_cooling_server_until_the_injected_clock_passes(clock: Clock) -> None:
    pool, scheduler = make(clock, A, B, depth=2)
    pool.mark_failed(A, "connection refused")  # cools for 1 s
    add(scheduler, *(f"j{i}" for i in range(6)))
    assert bind(scheduler) == [("j0", B), ("j1", B)]
    assert [r.url for r in scheduler.free_servers()] == []

    clock.advance(0.5)
    assert bind(scheduler) == []
    clock.advance(0.5)  # the cooldown is over exactly now
    assert bind(scheduler) == [("j2", A), ("j3", A)]


def test_a_second_failure_cools_longer(clock: Clock) -> None:
    pool, scheduler = make(clock, A, depth=1)
    add(scheduler, "a")
    pool.mark_failed(A, "refused")
    clock.advance(1.0)
    pool.mark_failed(A, "refused again")  # 2 s now
    clock.advance(1.5)
    assert bind(scheduler) == []
    clock.advance(0.5)
    assert bind(scheduler) == [("a", A)]


def test_every_server_cooling_binds_nothing_and_keeps_the_order(clock: Clock) -> None:
    pool, scheduler = make(clock, A, B)
    pool.mark_failed(A, "down")
    pool.mark_failed(B, "down")
    add(scheduler, "a", "b")
    assert bind(scheduler) == []
    assert scheduler.positions() == {"a": 0, "b": 1}
    clock.advance(30)
    assert bind(scheduler) == [("a", A), ("b", B)]


def test_a_server_marked_ok_takes_work_at_once(clock: Clock) -> None:
    pool, scheduler = make(clock, A, depth=1)
    pool.mark_failed(A, "down")
    add(scheduler, "a")
    assert bind(scheduler) == []
    pool.mark_ok(A)
    assert bind(scheduler) == [("a", A)]


# -- model preference ------------------------------------------------------------------------------------------------
def test_a_job_goes_to_the_free_server_that_last_ran_its_models(clock: Clock) -> None:
    pool, scheduler = make(clock, A, B, C, depth=2)
    scheduler.add(Job("sd15", models=SD15))
    scheduler.add(Job("sdxl", models=SDXL))
    assert bind(scheduler) == [("sd15", A), ("sdxl", B)]
    assert scheduler.last_models == {A: SD15, B: SDXL}
    finish(pool, A)
    finish(pool, B)

    # A comes first in order and C has as much room: the model files decide
    scheduler.add(Job("sdxl-2", models=SDXL))
    scheduler.add(Job("sd15-2", models=SD15))
    assert bind(scheduler) == [("sdxl-2", B), ("sd15-2", A)]


def test_the_model_match_beats_more_room(clock: Clock) -> None:
    pool, scheduler = make(clock, A, B, depth=3)
    scheduler.last_models[B] = SDXL
    pool.records[B].in_flight = 2  # room 1 against A's 3
    scheduler.add(Job("x", models=SDXL))
    assert bind(scheduler) == [("x", B)]


def test_jobs_of_one_model_fill_its_server_before_spilling_over(clock: Clock) -> None:
    _, scheduler = make(clock, A, B, depth=2)
    scheduler.last_models[B] = FLUX
    for i in range(3):
        scheduler.add(Job(f"f{i}", models=FLUX))
    assert bind(scheduler) == [("f0", B), ("f1", B), ("f2", A)]
    assert scheduler.last_models == {A: FLUX, B: FLUX}


def test_more_shared_model_files_win(clock: Clock) -> None:
    _, scheduler = make(clock, A, B, depth=2)
    lora = frozenset({"lora_name=style.safetensors"})
    scheduler.last_models[A] = SD15
    scheduler.last_models[B] = SD15 | lora
    scheduler.add(Job("x", models=SD15 | lora))
    assert bind(scheduler) == [("x", B)]


def test_without_a_model_match_the_server_with_most_room_wins(clock: Clock) -> None:
    pool, scheduler = make(clock, A, B, C, depth=3)
    scheduler.last_models[A] = SD15
    pool.records[A].in_flight = 1
    pool.set_queue(B, 2)
    scheduler.add(Job("flux", models=FLUX))  # no server ran it: C has the most room
    scheduler.add(Job("plain"))  # no models at all: the most room again, now A (2) ties C (2), A comes first
    assert bind(scheduler) == [("flux", C), ("plain", A)]


def test_among_equals_configuration_order_decides(clock: Clock) -> None:
    pool, scheduler = make(clock, C, B, A, depth=1)
    scheduler.add(Job("x", models=SD15))
    assert bind(scheduler) == [("x", C)]
    finish(pool, C)
    pool.set_servers([ServerSpec.parse(u) for u in (B, A, C)])  # a new order, the same records
    scheduler.last_models.clear()
    scheduler.add(Job("y"))
    assert bind(scheduler) == [("y", B)]


def test_a_job_without_models_keeps_what_the_server_ran_last(clock: Clock) -> None:
    pool, scheduler = make(clock, A, B, depth=1)
    scheduler.last_models[B] = SDXL
    pool.records[A].in_flight = 1
    scheduler.add(Job("plain"))
    assert bind(scheduler) == [("plain", B)]
    assert scheduler.last_models[B] == SDXL  # a workflow that loads nothing does not unload the checkpoint
    finish(pool, A)
    finish(pool, B)
    scheduler.add(Job("sdxl", models=SDXL))
    assert bind(scheduler) == [("sdxl", B)]  # both free, A first in order: B still has SDXL loaded


# -- avoid -----------------------------------------------------------------------------------------------------------
def test_a_retried_job_avoids_the_server_that_lost_it_while_another_has_room(clock: Clock) -> None:
    pool, scheduler = make(clock, A, B, depth=2)
    pool.records[B].in_flight = 1  # A has more room and comes first: it would win without ``avoid``
    scheduler.add(Job("x", avoid=frozenset({A})))
    assert bind(scheduler) == [("x", B)]


def test_avoid_beats_the_model_preference(clock: Clock) -> None:
    _, scheduler = make(clock, A, B, depth=2)
    scheduler.last_models[A] = SD15
    scheduler.add(Job("x", models=SD15, avoid=frozenset({A})))
    assert bind(scheduler) == [("x", B)]


def test_the_avoided_server_is_used_when_it_is_the_only_one_with_room(clock: Clock) -> None:
    pool, scheduler = make(clock, A, B, C, depth=2)
    pool.records[B].in_flight = 2
    pool.mark_failed(C, "down")
    scheduler.add(Job("x", avoid=frozenset({A})))
    assert bind(scheduler) == [("x", A)]


def test_the_avoided_server_is_used_in_a_one_server_pool(clock: Clock) -> None:
    _, scheduler = make(clock, A, depth=1)
    scheduler.add(Job("x", avoid=frozenset({A})))
    assert bind(scheduler) == [("x", A)]


def test_avoid_of_several_servers(clock: Clock) -> None:
    _, scheduler = make(clock, A, B, C, depth=1)
    scheduler.add(Job("x", avoid=frozenset({A, B})))
    assert bind(scheduler) == [("x", C)]


def test_avoid_applies_to_its_own_job_only(clock: Clock) -> None:
    _, scheduler = make(clock, A, B, depth=1)
    scheduler.add(Job("retry", avoid=frozenset({A})))
    scheduler.add(Job("fresh"))
    assert bind(scheduler) == [("retry", B), ("fresh", A)]


# -- retries keep their place ----------------------------------------------------------------------------------------
def test_a_retry_readded_with_its_old_seq_goes_ahead_of_later_jobs(clock: Clock) -> None:
    pool, scheduler = make(clock, A, B, depth=1)
    jobs = add(scheduler, "j0", "j1", "j2", "j3")
    assert [job.seq for job in jobs] == sorted(job.seq for job in jobs)
    assert bind(scheduler) == [("j0", A), ("j1", B)]

    finish(pool, B)  # B lost j1: the engine sends it again, keeping its place
    retry = scheduler.add(Job("j1", avoid=frozenset({B}), seq=jobs[1].seq))
    assert retry.seq == jobs[1].seq
    assert scheduler.positions() == {"j1": 0, "j2": 1, "j3": 2}
    # B is the only server with room: the retry takes it although it avoids B, ahead of j2
    assert bind(scheduler) == [("j1", B)]
    finish(pool, A)
    assert bind(scheduler) == [("j2", A)]


def test_a_retry_goes_ahead_of_jobs_added_after_it_was_bound(clock: Clock) -> None:
    pool, scheduler = make(clock, A, depth=1)
    (first,) = add(scheduler, "first")
    assert bind(scheduler) == [("first", A)]
    add(scheduler, "later-1", "later-2")
    finish(pool, A)
    scheduler.add(Job("first", seq=first.seq))
    assert scheduler.positions() == {"first": 0, "later-1": 1, "later-2": 2}
    assert bind(scheduler) == [("first", A)]


def test_new_jobs_get_increasing_seqs_after_a_retry(clock: Clock) -> None:
    _, scheduler = make(clock, A)
    a, b = add(scheduler, "a", "b")
    scheduler.remove("a")
    scheduler.add(Job("a", seq=a.seq))
    (c,) = add(scheduler, "c")
    assert a.seq < b.seq < c.seq
    assert scheduler.positions() == {"a": 0, "b": 1, "c": 2}


# -- a changing pool -------------------------------------------------------------------------------------------------
def test_a_server_joining_takes_waiting_work_at_the_next_assign(clock: Clock) -> None:
    pool, scheduler = make(clock, A, depth=1)
    add(scheduler, "a", "b", "c")
    assert bind(scheduler) == [("a", A)]
    assert bind(scheduler) == []
    pool.set_servers([ServerSpec.parse(A), ServerSpec.parse(B)])
    assert pool.records[A].in_flight == 1  # what we knew about A stays
    assert bind(scheduler) == [("b", B)]
    assert scheduler.positions() == {"c": 0}


def test_a_server_leaving_gets_nothing_more(clock: Clock) -> None:
    pool, scheduler = make(clock, A, B, depth=1)
    add(scheduler, *(f"j{i}" for i in range(5)))
    assert bind(scheduler) == [("j0", A), ("j1", B)]
    pool.set_servers([ServerSpec.parse(A)])
    finish(pool, A)
    scheduler.last_models[B] = SD15  # even a model match cannot draw work to a server that left
    scheduler.add(Job("sd15", models=SD15))
    seen: list[tuple[str, str]] = []
    for _ in range(6):
        bound = bind(scheduler)
        seen += bound
        if bound:
            finish(pool, A)
    assert seen == [("j2", A), ("j3", A), ("j4", A), ("sd15", A)]


def test_a_pool_emptied_binds_nothing(clock: Clock) -> None:
    pool, scheduler = make(clock, A)
    add(scheduler, "a")
    pool.set_servers([])
    assert bind(scheduler) == []
    assert "a" in scheduler


# -- the queue: remove, positions, keys ------------------------------------------------------------------------------
def test_remove_takes_a_waiting_job_out(clock: Clock) -> None:
    _, scheduler = make(clock, A, depth=5)
    add(scheduler, "a", "b", "c", "d")
    assert scheduler.remove("b") is True
    assert "b" not in scheduler
    assert len(scheduler) == 3
    assert scheduler.positions() == {"a": 0, "c": 1, "d": 2}
    assert scheduler.remove("a") is True
    assert scheduler.positions() == {"c": 0, "d": 1}
    assert bind(scheduler) == [("c", A), ("d", A)]


def test_remove_of_a_job_not_waiting_is_false(clock: Clock) -> None:
    _, scheduler = make(clock, A, depth=1)
    add(scheduler, "a", "b")
    assert scheduler.remove("nope") is False
    assert bind(scheduler) == [("a", A)]
    assert scheduler.remove("a") is False  # already bound
    assert scheduler.remove("b") is True
    assert scheduler.remove("b") is False  # already removed
    assert len(scheduler) == 0


def test_positions_are_zero_based_in_seq_order(clock: Clock) -> None:
    _, scheduler = make(clock, A)
    assert scheduler.positions() == {}
    add(scheduler, "x", "y", "z")
    assert scheduler.positions() == {"x": 0, "y": 1, "z": 2}
    assert "y" in scheduler
    assert "w" not in scheduler


def test_a_key_added_twice_is_refused(clock: Clock) -> None:
    _, scheduler = make(clock, A)
    scheduler.add(Job("a"))
    with pytest.raises(ValueError, match="a is already waiting"):
        scheduler.add(Job("a"))
    assert len(scheduler) == 1
    assert scheduler.positions() == {"a": 0}


def test_a_key_can_wait_again_once_it_is_bound_or_removed(clock: Clock) -> None:
    _, scheduler = make(clock, A, depth=5)
    add(scheduler, "a", "b")
    assert bind(scheduler) == [("a", A), ("b", A)]
    add(scheduler, "a")
    scheduler.remove("a")
    add(scheduler, "a")
    assert bind(scheduler) == [("a", A)]


def test_a_removed_job_readded_with_its_old_seq_binds_once_in_its_place(clock: Clock) -> None:
    # A retry whose wait was cancelled and that is queued again keeps its seq: the old, removed heap entry has the
    # same seq as the new one and must neither break the heap's ordering nor bind a second time.
    _, scheduler = make(clock, A, depth=10)
    jobs = add(scheduler, "a", "b", "c")
    scheduler.remove("b")
    scheduler.add(Job("b", seq=jobs[1].seq))
    add(scheduler, "d")
    assert scheduler.positions() == {"a": 0, "b": 1, "c": 2, "d": 3}
    assert bind(scheduler) == [("a", A), ("b", A), ("c", A), ("d", A)]


def test_the_same_job_object_removed_and_added_again_binds_once(clock: Clock) -> None:
    _, scheduler = make(clock, A, depth=10)
    (job,) = add(scheduler, "a")
    add(scheduler, "b")
    scheduler.remove("a")
    scheduler.add(job)
    assert bind(scheduler) == [("a", A), ("b", A)]
    assert len(scheduler) == 0
    assert bind(scheduler) == []


def test_removed_jobs_do_not_hold_up_the_queue(clock: Clock) -> None:
    _, scheduler = make(clock, A, depth=1)
    keys = [f"j{i}" for i in range(10_000)]
    add(scheduler, *keys)
    for key in keys[:-1]:
        assert scheduler.remove(key)
    assert bind(scheduler) == [(keys[-1], A)]
    assert len(scheduler) == 0


# -- scale -----------------------------------------------------------------------------------------------------------
def test_ten_thousand_jobs_on_sixty_four_servers_bind_in_few_rounds(clock: Clock) -> None:
    urls = [f"http://10.0.0.{i}:8188" for i in range(64)]
    pool, scheduler = make(clock, *urls, depth=2)
    keys = [f"j{i}" for i in range(10_000)]
    models = [frozenset({f"ckpt_name=m{i % 7}.safetensors"}) for i in range(len(keys))]
    for key, model in zip(keys, models, strict=True):
        scheduler.add(Job(key, models=model))

    order: list[str] = []
    rounds = 0
    while len(scheduler):
        rounds += 1
        assert rounds <= 1000, "assign stopped making progress"
        bound = bind(scheduler)
        order += [key for key, _ in bound]
        assert all(r.in_flight <= 2 for r in pool.records.values())
        for record in pool.records.values():  # every prompt of the round finishes
            record.in_flight = 0
    assert order == keys  # each job bound exactly once, in submission order
    assert rounds == math.ceil(len(keys) / (64 * 2))


def test_fast_servers_take_more_work_without_configuration(clock: Clock) -> None:
    # A finishes a prompt every tick, B every fourth tick, C every tenth: the work follows the speed.
    pool, scheduler = make(clock, A, B, C, depth=2)
    period = {A: 1, B: 4, C: 10}
    running: dict[str, list[int]] = {url: [] for url in period}  # start ticks of the prompts on each server
    add(scheduler, *(f"j{i}" for i in range(300)))
    counts: Counter[str] = Counter()
    tick = 0
    while len(scheduler):
        tick += 1
        assert tick < 10_000
        for url, every in period.items():
            if running[url] and tick - running[url][0] >= every:
                running[url].pop(0)
                finish(pool, url)
        for _, url in bind(scheduler):
            counts[url] += 1
            running[url].append(tick if not running[url] else running[url][-1] + period[url])
    assert counts[A] > counts[B] > counts[C] > 0
    assert sum(counts.values()) == 300


# -- taking queued work back for an idle server ----------------------------------------------------------------------
def test_steals_nothing_while_prompts_wait(clock: Clock) -> None:
    _, s = make(clock, A, B)
    add(s, "p1")
    assert s.steals([Queued("q", A, ahead=1)]) == []


def test_an_idle_server_takes_a_prompt_queued_behind_a_running_one(clock: Clock) -> None:
    pool, s = make(clock, A, B)
    pool.records[A].in_flight = 2
    taken = s.steals([Queued("running", A, ahead=0), Queued("next", A, ahead=1)])
    assert [(q.key, thief) for q, thief in taken] == [("next", B)]


def test_no_steal_without_an_idle_server(clock: Clock) -> None:
    pool, s = make(clock, A, B)
    pool.records[A].in_flight = 2
    pool.records[B].in_flight = 1  # running one: not idle
    assert s.steals([Queued("next", A, ahead=1)]) == []
    pool.records[B].in_flight = 0
    pool.records[B].queue_remaining = 1  # another client's prompt runs there
    assert s.steals([Queued("next", A, ahead=1)]) == []


def test_a_cooling_or_busy_server_does_not_steal(clock: Clock) -> None:
    pool, s = make(clock, A, B)
    pool.records[A].in_flight = 2
    pool.mark_failed(B, "down")
    assert s.steals([Queued("next", A, ahead=1)]) == []
    clock.advance(60)
    assert s.steals([Queued("next", A, ahead=1)], busy=[B]) == []
    assert len(s.steals([Queued("next", A, ahead=1)])) == 1


def test_a_slow_idle_server_leaves_a_prompt_that_starts_soon_on_a_fast_one(clock: Clock) -> None:
    pool, s = make(clock, A, B)
    pool.records[A].in_flight = 2
    pool.observe(A, 1.0)
    pool.observe(B, 2.0)  # B takes twice as long: 2 s there vs about 1.5 s on A
    assert s.steals([Queued("next", A, ahead=1)]) == []
    # two ahead on A (2.5 s) is worth moving to B (2 s)
    assert [q.key for q, _ in s.steals([Queued("later", A, ahead=2)])] == ["later"]


def test_a_fast_idle_server_takes_from_the_slow_one_first(clock: Clock) -> None:
    pool, s = make(clock, A, B, C)
    for url, seconds in ((A, 1.0), (B, 2.0), (C, 1.0)):
        pool.observe(url, seconds)
    pool.records[A].in_flight = pool.records[B].in_flight = 2
    taken = s.steals([Queued("on-a", A, ahead=1), Queued("on-b", B, ahead=1)])
    assert [(q.key, thief) for q, thief in taken] == [("on-b", C)]


def test_each_queued_prompt_is_taken_once_and_never_by_its_own_server(clock: Clock) -> None:
    pool, s = make(clock, A, B, C)
    pool.records[A].in_flight = 3
    taken = s.steals([Queued("second", A, ahead=1), Queued("third", A, ahead=2)])
    assert sorted(q.key for q, _ in taken) == ["second", "third"]
    assert {thief for _, thief in taken} == {B, C}
    pool.records[B].in_flight = pool.records[C].in_flight = 0
    pool.records[A].in_flight = 0
    assert s.steals([Queued("mine", A, ahead=1)], busy=[B, C]) == []


def test_service_average_follows_the_prompts_seen(clock: Clock) -> None:
    pool, _ = make(clock, A)
    assert pool.records[A].service is None
    pool.observe(A, 2.0)
    assert pool.records[A].service == 2.0
    pool.observe(A, 1.0, weight=0.5)
    assert pool.records[A].service == 1.5
    pool.observe("http://elsewhere:1", 1.0)  # not in the pool: ignored


# -- the end of a run: a slow server's free place is not always worth taking -----------------------------------------
def paced(clock: Clock, **seconds: float) -> tuple[Pool, Scheduler]:
    """A and B full (2 of ours each), each at its measured seconds per prompt."""
    pool, scheduler = make(clock, A, B)
    for url, value in zip((A, B), seconds.values(), strict=True):
        pool.observe(url, value)
        pool.records[url].in_flight = 2
    return pool, scheduler


def test_at_the_end_the_head_waits_for_a_fast_server_rather_than_a_slow_free_place(clock: Clock) -> None:
    pool, scheduler = paced(clock, a=1.0, b=2.0)
    add(scheduler, "j1", "j2")
    finish(pool, B)  # the slow server frees a place: j1 would end there in 0.5*2 + 2 = 3 s, on A in 1.5 + 1 = 2.5 s
    assert bind(scheduler) == []
    finish(pool, A)
    assert bind(scheduler) == [("j1", A)]  # and j2: A in 2.5 s again, B still 3 s
    finish(pool, B)  # B idle now: j2 ends there in 2 s, on A in 2.5 s
    assert bind(scheduler) == [("j2", B)]


def test_while_more_prompts_wait_than_there_are_servers_a_free_place_is_always_taken(clock: Clock) -> None:
    pool, scheduler = paced(clock, a=1.0, b=2.0)
    add(scheduler, "j1", "j2", "j3")
    finish(pool, B)
    assert bind(scheduler) == [("j1", B)]


def test_equal_servers_never_hold_work_back(clock: Clock) -> None:
    pool, scheduler = paced(clock, a=1.0, b=1.15)  # a seventh apart, as measured paces vary
    add(scheduler, "j1")
    finish(pool, B)
    assert bind(scheduler) == [("j1", B)]


def test_no_hold_without_two_measured_servers(clock: Clock) -> None:
    pool, scheduler = make(clock, A, B)
    pool.observe(B, 2.0)
    pool.records[A].in_flight = pool.records[B].in_flight = 2
    add(scheduler, "j1")
    finish(pool, B)
    assert bind(scheduler) == [("j1", B)]


def test_no_hold_for_a_server_the_job_avoids_or_one_cooling_down(clock: Clock) -> None:
    pool, scheduler = paced(clock, a=1.0, b=2.0)
    scheduler.add(Job("j1", avoid=frozenset({A})))
    finish(pool, B)
    assert bind(scheduler) == [("j1", B)]
    pool.records[B].in_flight = 2
    add(scheduler, "j2")
    pool.mark_failed(A, "test")
    finish(pool, B)
    assert bind(scheduler) == [("j2", B)]


def test_a_hold_makes_the_next_assign_look_at_every_server(clock: Clock) -> None:
    pool, scheduler = make(clock, A, B, C)
    for url, seconds in ((A, 1.0), (B, 2.0), (C, 1.0)):
        pool.observe(url, seconds)
        pool.records[url].in_flight = 2
    add(scheduler, "j1")
    finish(pool, B)  # 3 s on B, 2.5 s on A or C
    assert scheduler.assign(only=B) == []
    finish(pool, B)  # B idle: 2 s there; only C's (unchanged) room reaches the next assign
    assert [(job.key, url) for job, url in scheduler.assign(only=C)] == [("j1", B)]
