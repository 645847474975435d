"""The server lock: every transition of the original fix, with an injected clock."""

from __future__ import annotations

import json

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from comfy_notebook.core.lock import ConnectionState, ServerLock
from tests.core.clock import Clock

A = "http://127.0.0.1:8188"
B = "http://127.0.0.1:8189"
C = "https://gpu.example.com/comfy"

T0 = 1_700_000_000.0


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
def lock(clock: Clock) -> ServerLock:
    return ServerLock(clock=clock)


def locked_open(lock: ServerLock, server: str = A) -> ServerLock:
    lock.connecting(server, chosen=True)
    lock.opened(server)
    return lock


#: The snapshot of a lock that holds nothing and watches no socket.
UNLOCKED = {
    "is_connected": False,
    "locked_server": None,
    "lock_timestamp": None,
    "lock_duration": None,
    "connection_state": "CLOSED",
}


# -- initial state -------------------------------------------------------------------------------------------------
def test_initial_state_is_unlocked_and_closed(lock: ServerLock) -> None:
    assert lock.route() is None
    assert lock.snapshot() == UNLOCKED
    assert not lock.watches(A)


# -- taking the lock -----------------------------------------------------------------------------------------------
def test_chosen_connect_makes_a_candidate_that_route_returns(lock: ServerLock) -> None:
    lock.connecting(A, chosen=True)
    assert lock.route() == A  # work submitted during the first connect goes to the server about to be locked
    assert lock.watches(A)
    assert not lock.watches(B)
    snap = lock.snapshot()
    assert snap["connection_state"] == "CONNECTING"
    assert snap["is_connected"] is False
    assert snap["locked_server"] is None  # not locked until the handshake succeeds
    assert snap["lock_timestamp"] is None
    assert snap["lock_duration"] is None


def test_unchosen_connect_while_unlocked_does_not_make_a_candidate(lock: ServerLock) -> None:
    lock.connecting(A, chosen=False)
    assert lock.route() is None
    assert lock.snapshot()["connection_state"] == "CLOSED"
    lock.opened(A)
    assert lock.locked_server is None
    assert lock.route() is None


def test_first_successful_connect_to_the_candidate_takes_the_lock(lock: ServerLock, clock: Clock) -> None:
    lock.connecting(A, chosen=True)
    clock.advance(2.5)  # the handshake takes time: the lock is taken when it completes
    lock.opened(A)
    assert lock.route() == A
    assert lock.snapshot() == {
        "is_connected": True,
        "locked_server": A,
        "lock_timestamp": T0 + 2.5,
        "lock_duration": 0.0,
        "connection_state": "OPEN",
    }


def test_lock_duration_follows_the_injected_clock(lock: ServerLock, clock: Clock) -> None:
    locked_open(lock)
    clock.advance(12.25)
    assert lock.snapshot()["lock_duration"] == pytest.approx(12.25)
    clock.advance(100)
    assert lock.snapshot()["lock_duration"] == pytest.approx(112.25)
    assert lock.snapshot()["lock_timestamp"] == T0


def test_lock_duration_is_never_negative_when_the_clock_steps_back(lock: ServerLock, clock: Clock) -> None:
    locked_open(lock)
    clock.advance(-30)  # wall clocks can jump backwards (NTP)
    assert lock.snapshot()["lock_duration"] == 0.0


def test_opening_a_socket_that_is_not_the_candidate_takes_no_lock(lock: ServerLock) -> None:
    lock.connecting(A, chosen=True)
    lock.opened(B)
    assert lock.locked_server is None
    assert lock.route() == A
    assert lock.snapshot()["connection_state"] == "CONNECTING"


def test_a_newer_chosen_connect_replaces_the_candidate(lock: ServerLock) -> None:
    lock.connecting(A, chosen=True)
    lock.connecting(B, chosen=True)
    assert lock.route() == B
    lock.opened(A)  # the stale attempt completing late must not lock A
    assert lock.locked_server is None
    lock.opened(B)
    assert lock.locked_server == B


def test_while_locked_a_chosen_connect_elsewhere_does_not_move_the_lock(lock: ServerLock) -> None:
    locked_open(lock, A)
    lock.connecting(B, chosen=True)
    lock.opened(B)
    assert lock.route() == A
    assert lock.locked_server == A
    assert lock.snapshot()["connection_state"] == "OPEN"


# -- closing -------------------------------------------------------------------------------------------------------
def test_closing_is_reported_for_the_watched_socket(lock: ServerLock) -> None:
    locked_open(lock)
    lock.closing(A)
    snap = lock.snapshot()
    assert snap["connection_state"] == "CLOSING"
    assert snap["is_connected"] is False
    assert snap["locked_server"] == A


def test_normal_close_1000_keeps_the_lock(lock: ServerLock, clock: Clock) -> None:
    locked_open(lock)
    clock.advance(5)
    lock.closing(A)
    lock.closed(A, 1000)
    assert lock.route() == A  # the next use reconnects to the same server
    snap = lock.snapshot()
    assert snap["connection_state"] == "CLOSED"
    assert snap["is_connected"] is False
    assert snap["locked_server"] == A
    assert snap["lock_timestamp"] == T0
    assert snap["lock_duration"] == pytest.approx(5)


def test_reconnect_after_normal_close_keeps_the_original_lock_time(lock: ServerLock, clock: Clock) -> None:
    locked_open(lock)
    lock.closed(A, 1000)
    clock.advance(60)
    lock.connecting(A, chosen=True)
    assert lock.snapshot()["connection_state"] == "CONNECTING"
    assert lock.route() == A
    lock.opened(A)
    snap = lock.snapshot()
    assert snap["connection_state"] == "OPEN"
    assert snap["locked_server"] == A
    assert snap["lock_timestamp"] == T0  # the lock was never released
    assert snap["lock_duration"] == pytest.approx(60)


@pytest.mark.parametrize("code", [1001, 1006, None, 1009, 1011, 1012, 4000])
def test_any_other_close_code_clears_the_lock(lock: ServerLock, code: int | None) -> None:
    locked_open(lock)
    lock.closed(A, code)
    assert lock.route() is None
    assert lock.snapshot() == UNLOCKED


@pytest.mark.parametrize("code", [1001, 1006, None, 1011])
def test_abnormal_close_after_a_normal_close_and_reconnect_clears_the_lock(lock: ServerLock, code: int | None) -> None:
    locked_open(lock)
    lock.closed(A, 1000)
    lock.connecting(A, chosen=True)
    lock.closed(A, code)  # the reconnect failed
    assert lock.locked_server is None
    assert lock.route() is None


def test_candidate_socket_closing_before_the_handshake_leaves_nothing_locked(lock: ServerLock) -> None:
    lock.connecting(A, chosen=True)
    lock.closed(A, 1000)
    assert lock.route() is None
    assert lock.locked_server is None
    lock.opened(A)  # a late "open" of the dropped attempt does not lock either
    assert lock.locked_server is None


def test_error_clears_the_lock(lock: ServerLock) -> None:
    locked_open(lock)
    lock.error(A)
    assert lock.route() is None
    assert lock.snapshot()["locked_server"] is None
    assert lock.snapshot()["lock_timestamp"] is None
    assert lock.snapshot()["connection_state"] == "CLOSED"


def test_error_while_connecting_to_the_candidate_drops_it(lock: ServerLock) -> None:
    lock.connecting(A, chosen=True)
    lock.error(A)  # connect refused
    assert lock.route() is None
    assert lock.snapshot()["connection_state"] == "CLOSED"
    lock.opened(A)
    assert lock.locked_server is None


def test_error_while_reconnecting_to_the_locked_server_clears_the_lock(lock: ServerLock) -> None:
    locked_open(lock)
    lock.closed(A, 1000)
    lock.connecting(A, chosen=True)
    lock.error(A)
    assert lock.locked_server is None
    assert lock.route() is None


# -- manual control ------------------------------------------------------------------------------------------------
def test_reset_clears_an_open_lock(lock: ServerLock) -> None:
    locked_open(lock)
    lock.reset()
    assert lock.route() is None
    assert lock.snapshot() == UNLOCKED


def test_reset_drops_a_candidate_being_connected(lock: ServerLock) -> None:
    lock.connecting(A, chosen=True)
    lock.reset()
    assert lock.route() is None
    lock.opened(A)  # the connect that was in progress completes after the reset
    assert lock.locked_server is None


def test_after_reset_the_next_chosen_server_is_locked(lock: ServerLock, clock: Clock) -> None:
    locked_open(lock, A)
    lock.reset()
    lock.closed(A, 1000)  # the engine closes the old socket after the reset
    clock.advance(3)
    locked_open(lock, B)
    assert lock.locked_server == B
    assert lock.lock_timestamp == T0 + 3


@pytest.mark.parametrize("is_open", [True, False])
def test_pin_locks_by_hand_over_an_existing_lock(lock: ServerLock, clock: Clock, is_open: bool) -> None:
    locked_open(lock, A)
    clock.advance(7)
    lock.pin(B, is_open=is_open)
    assert lock.route() == B
    snap = lock.snapshot()
    assert snap["locked_server"] == B
    assert snap["lock_timestamp"] == T0 + 7
    assert snap["lock_duration"] == 0.0
    assert snap["is_connected"] is is_open
    assert snap["connection_state"] == ("OPEN" if is_open else "CLOSED")
    # the old server's socket no longer concerns the lock
    lock.closed(A, 1006)
    assert lock.locked_server == B


def test_pin_replaces_a_candidate(lock: ServerLock) -> None:
    lock.connecting(A, chosen=True)
    lock.pin(B, is_open=False)
    lock.opened(A)
    assert lock.locked_server == B
    assert lock.route() == B
    assert not lock.watches(A)


def test_pinned_lock_follows_the_same_close_rules(lock: ServerLock) -> None:
    lock.pin(B, is_open=True)
    lock.closed(B, 1000)
    assert lock.locked_server == B
    lock.connecting(B, chosen=False)  # reconnect to the pinned server
    lock.opened(B)
    assert lock.snapshot()["connection_state"] == "OPEN"
    lock.closed(B, 1011)
    assert lock.locked_server is None


# -- other servers' sockets ----------------------------------------------------------------------------------------
def _other_server_events(lock: ServerLock, server: str) -> None:
    lock.connecting(server, chosen=False)
    lock.opened(server)
    lock.closing(server)
    lock.closed(server, 1006)
    lock.closed(server, 1000)
    lock.error(server)
    lock.closed(server, None)


def test_other_servers_events_never_touch_an_open_lock(lock: ServerLock, clock: Clock) -> None:
    locked_open(lock, A)
    clock.advance(1)
    before = lock.snapshot()
    _other_server_events(lock, B)
    lock.connecting(C, chosen=True)  # chosen while locked: still not watched
    lock.error(C)
    assert lock.snapshot() == before
    assert lock.route() == A


def test_other_servers_events_never_touch_a_closed_kept_lock(lock: ServerLock) -> None:
    locked_open(lock, A)
    lock.closed(A, 1000)
    before = lock.snapshot()
    _other_server_events(lock, B)
    assert lock.snapshot() == before
    assert lock.route() == A


def test_other_servers_events_never_touch_a_candidate(lock: ServerLock) -> None:
    lock.connecting(A, chosen=True)
    before = lock.snapshot()
    _other_server_events(lock, B)
    assert lock.snapshot() == before
    assert lock.route() == A


def test_unchosen_socket_to_the_locked_server_is_watched(lock: ServerLock) -> None:
    # a prompt's own reconnect to the locked server (not a pool choice) still updates the lock's socket state
    locked_open(lock, A)
    lock.closed(A, 1000)
    lock.connecting(A, chosen=False)
    assert lock.snapshot()["connection_state"] == "CONNECTING"
    lock.opened(A)
    assert lock.snapshot()["connection_state"] == "OPEN"


# -- snapshot ------------------------------------------------------------------------------------------------------
def test_snapshot_is_json_serialisable_in_every_state(lock: ServerLock, clock: Clock) -> None:
    snaps = [lock.snapshot()]
    lock.connecting(A, chosen=True)
    snaps.append(lock.snapshot())
    lock.opened(A)
    clock.advance(1.5)
    snaps.append(lock.snapshot())
    lock.closing(A)
    snaps.append(lock.snapshot())
    lock.closed(A, 1000)
    snaps.append(lock.snapshot())
    states = set()
    for snap in snaps:
        text = json.dumps(snap)
        assert json.loads(text) == snap
        assert set(snap) == {"is_connected", "locked_server", "lock_timestamp", "lock_duration", "connection_state"}
        assert type(snap["connection_state"]) is str  # the plain value, not the enum
        states.add(snap["connection_state"])
    assert states == {"CONNECTING", "OPEN", "CLOSING", "CLOSED"}


def test_connection_state_values_match_the_browser_names() -> None:
    assert [s.value for s in ConnectionState] == ["CONNECTING", "OPEN", "CLOSING", "CLOSED"]


# -- random event sequences ----------------------------------------------------------------------------------------
SERVERS = (A, B, C)
CODES = (1000, 1001, 1006, None, 1009, 1011)


class LockMachine(RuleBasedStateMachine):
    """Random socket events; invariants of the original fix hold after every step."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock(T0)
        self.lock = ServerLock(clock=self.clock)

    def _check_unchanged_if_unwatched(self, watched_before: bool, before: tuple[object, ...]) -> None:
        if not watched_before:
            assert self._state() == before

    def _state(self) -> tuple[object, ...]:
        return (self.lock.snapshot(), self.lock.route())

    @rule(seconds=st.floats(min_value=0, max_value=1e4, allow_nan=False))
    def tick(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule(server=st.sampled_from(SERVERS), chosen=st.booleans())
    def connecting(self, server: str, chosen: bool) -> None:
        before, locked = self._state(), self.lock.locked_server
        watched = self.lock.watches(server) or (chosen and locked is None)
        self.lock.connecting(server, chosen=chosen)
        assert self.lock.locked_server == locked  # connecting never takes or drops a lock
        if chosen and locked is None:
            assert self.lock.route() == server
        self._check_unchanged_if_unwatched(watched, before)

    @rule(server=st.sampled_from(SERVERS))
    def opened(self, server: str) -> None:
        before, route, locked = self._state(), self.lock.route(), self.lock.locked_server
        watched = self.lock.watches(server)
        self.lock.opened(server)
        if locked is None and route == server:
            assert self.lock.locked_server == server
            assert self.lock.lock_timestamp == self.clock.now
        else:
            assert self.lock.locked_server == locked
        if self.lock.locked_server == server:
            assert self.lock.state is ConnectionState.OPEN
        self._check_unchanged_if_unwatched(watched, before)

    @rule(server=st.sampled_from(SERVERS))
    def closing(self, server: str) -> None:
        before, locked = self._state(), self.lock.locked_server
        watched = self.lock.watches(server)
        self.lock.closing(server)
        assert self.lock.locked_server == locked
        self._check_unchanged_if_unwatched(watched, before)

    @rule(server=st.sampled_from(SERVERS), code=st.sampled_from(CODES))
    def closed(self, server: str, code: int | None) -> None:
        before, locked, stamp = self._state(), self.lock.locked_server, self.lock.lock_timestamp
        watched = self.lock.watches(server)
        self.lock.closed(server, code)
        if watched:
            assert self.lock.state is ConnectionState.CLOSED
            if code == 1000:
                assert (self.lock.locked_server, self.lock.lock_timestamp) == (locked, stamp)
            else:
                assert self.lock.locked_server is None
                assert self.lock.route() is None
        self._check_unchanged_if_unwatched(watched, before)

    @rule(server=st.sampled_from(SERVERS))
    def error(self, server: str) -> None:
        before = self._state()
        watched = self.lock.watches(server)
        self.lock.error(server)
        if watched:
            assert self.lock.locked_server is None
            assert self.lock.route() is None
        self._check_unchanged_if_unwatched(watched, before)

    @rule()
    def reset(self) -> None:
        self.lock.reset()
        assert self.lock.route() is None
        assert self.lock.snapshot()["connection_state"] == "CLOSED"

    @rule(server=st.sampled_from(SERVERS), is_open=st.booleans())
    def pin(self, server: str, is_open: bool) -> None:
        self.lock.pin(server, is_open=is_open)
        assert self.lock.route() == server
        assert self.lock.lock_timestamp == self.clock.now

    @invariant()
    def timestamp_iff_locked(self) -> None:
        assert (self.lock.lock_timestamp is None) == (self.lock.locked_server is None)

    @invariant()
    def snapshot_is_consistent(self) -> None:
        snap = self.lock.snapshot()
        assert json.loads(json.dumps(snap)) == snap
        assert snap["is_connected"] == (snap["connection_state"] == "OPEN")
        assert (snap["lock_duration"] is None) == (snap["locked_server"] is None)
        if snap["lock_duration"] is not None:
            assert snap["lock_duration"] >= 0
        assert snap["connection_state"] in {"CONNECTING", "OPEN", "CLOSING", "CLOSED"}

    @invariant()
    def route_prefers_the_lock(self) -> None:
        if self.lock.locked_server is not None:
            assert self.lock.route() == self.lock.locked_server
        route = self.lock.route()
        assert route is None or self.lock.watches(route)


LockMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=30, deadline=None)
TestLockMachine = LockMachine.TestCase
