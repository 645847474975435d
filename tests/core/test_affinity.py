"""Session affinity through a balancer, pure: cookies kept and sent, backend changes, the signs of no affinity."""

from __future__ import annotations

from comfy_notebook.core.affinity import (
    AFFINITY_HEADER,
    BROKEN,
    COOKIE,
    KEY,
    OFF,
    REGRESSIONS,
    Affinity,
    no_affinity_message,
)


def test_the_key_goes_on_every_call_as_a_header_and_a_query_parameter() -> None:
    a = Affinity(key="abc")
    assert a.mode == KEY
    assert a.headers() == {AFFINITY_HEADER: "abc"}
    assert a.params() == {"clientId": "abc"}
    off = Affinity()
    assert off.mode == OFF and off.headers() == {} and off.params() == {}


def test_a_cookie_the_balancer_sets_is_sent_on_everything_after_it() -> None:
    a = Affinity(key="abc")
    assert a.absorb(["SRV=s2; path=/", "other=1; Path=/; HttpOnly"]) is False  # new cookies are no change
    assert a.mode == COOKIE
    assert a.headers()["Cookie"] == "SRV=s2; other=1"
    assert a.absorb(["SRV=s2; path=/"]) is False  # the same backend again
    assert a.backend_changes == 0


def test_a_changed_cookie_is_a_backend_change_and_restarts_the_number_check() -> None:
    a = Affinity()
    a.absorb(["SRV=s1"])
    a.posted(7, None)
    assert a.absorb(["SRV=s3; path=/"]) is True
    assert a.backend_changes == 1 and a.cookies == {"SRV": "s3"}
    assert a.highest is None  # the new backend counts from its own number
    assert not a.posted(0, a.highest)


def test_an_expired_cookie_is_dropped_and_garbage_ignored() -> None:
    a = Affinity()
    a.absorb(["SRV=s1"])
    a.absorb(["SRV=; Max-Age=0", "\x00garbage;;=="])
    assert a.cookies == {}


def test_queue_numbers_in_order_prove_nothing() -> None:
    a = Affinity(key="k")
    seen = None
    for number in (3, 4, 9, 10):
        assert not a.posted(number, seen)
        seen = a.highest
    assert a.mode == KEY and a.broken is None


def test_concurrent_posts_answered_out_of_order_are_not_a_regression() -> None:
    a = Affinity()
    a.posted(5, None)
    # two POSTs sent while 5 was the highest known: answered 7 then 6
    assert not a.posted(7, 5) and not a.posted(6, 5)
    assert a.regressions == 0


def test_numbers_going_back_twice_on_one_socket_mean_several_backends() -> None:
    a = Affinity()
    a.posted(10, None)
    assert not a.posted(2, 10)  # once: maybe a restart our socket has not noticed yet
    assert a.posted(3, 10) is True  # REGRESSIONS times: several backends
    assert REGRESSIONS == 2
    assert a.mode == BROKEN and "queue numbers went back" in (a.broken or "")


def test_a_restart_seen_by_the_socket_starts_the_numbers_over() -> None:
    a = Affinity()
    a.posted(10, None)
    a.reconnected()
    assert not a.posted(0, a.highest)
    assert a.regressions == 0


def test_one_vanished_prompt_is_a_hedged_suspicion_two_are_a_verdict() -> None:
    a = Affinity(key="k")
    assert a.vanished("prompt p1 vanished") is False  # maybe another client cleared the queue
    assert a.mode == KEY and "unless another client deleted it" in a.suspicion("prompt p1 vanished")
    assert a.vanished("prompt p2 vanished") is True
    assert a.vanished("prompt p3 vanished") is False  # said once: the first proof stays
    assert a.mode == BROKEN and a.broken == "prompt p2 vanished" and a.suspicion("x") == a.broken
    message = no_affinity_message("http://lb:8080", a.broken or "")
    assert "load balancer without session affinity" in message
    assert "cookie" in message and "clientId" in message and "individually" in message
    b = Affinity()
    b.posted(9, None)
    b.posted(3, 9)  # one number out of order, then one vanished prompt: proof enough
    assert b.vanished("gone") is True
    assert "restart" not in message


def test_forget_starts_over_but_keeps_the_key() -> None:
    a = Affinity(key="k")
    a.absorb(["SRV=s1"])
    a.vanished("p")
    a.vanished("q")
    a.forget()
    assert a.mode == KEY and a.cookies == {} and a.broken is None and a.highest is None
