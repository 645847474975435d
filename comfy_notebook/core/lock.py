"""The WebSocket server lock: the original fix, as a state machine with no I/O.

Rules (from the original write-up, kept exactly):

* the lock is taken on the first successful socket connect to the server the pool chose;
* while it is held, every new prompt and API call goes to the locked server (when its socket is not open, the next
  use reconnects to that same server);
* a close with code 1000 keeps the lock; any other close code, or a socket error, clears it;
* ``reset()`` clears it (the engine then closes the socket with 1000).

The lock watches one socket: the locked server's, or while nothing is locked, the socket being opened to the server
the pool chose (the candidate). Events about other servers' sockets never touch it.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from typing import Any

NORMAL_CLOSURE = 1000


class ConnectionState(enum.StrEnum):
    """The lock socket's state, named like the browser's ``WebSocket.readyState``."""

    CONNECTING = "CONNECTING"
    OPEN = "OPEN"
    CLOSING = "CLOSING"
    CLOSED = "CLOSED"


class ServerLock:
    """Which server the client is locked to, and the state of the socket that holds the lock."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.locked_server: str | None = None
        self.lock_timestamp: float | None = None
        self.state = ConnectionState.CLOSED
        self._candidate: str | None = None

    # -- what the engine asks -------------------------------------------------------------------------------------
    def route(self) -> str | None:
        """The server new work must go to (the locked one, or the one a lock socket is opening to), or None when
        the pool may choose. Sending work to the candidate keeps prompts submitted during the first connect
        together on the server that is about to be locked."""
        return self.locked_server or self._candidate

    def watches(self, server: str) -> bool:
        """Whether socket events of ``server`` concern the lock."""
        return server in (self.locked_server, self._candidate)

    # -- socket events --------------------------------------------------------------------------------------------
    def connecting(self, server: str, *, chosen: bool) -> None:
        """A socket to ``server`` is being opened; ``chosen`` means the pool (or the lock) picked it."""
        if self.locked_server is None and chosen:
            self._candidate = server
        if self.watches(server):
            self.state = ConnectionState.CONNECTING

    def opened(self, server: str) -> None:
        """The socket to ``server`` completed its handshake: take the lock if this was the candidate."""
        if self.locked_server is None and server == self._candidate:
            self.locked_server = server
            self.lock_timestamp = self._clock()
        if server == self.locked_server:
            self._candidate = None
            self.state = ConnectionState.OPEN

    def closing(self, server: str) -> None:
        if self.watches(server):
            self.state = ConnectionState.CLOSING

    def closed(self, server: str, code: int | None) -> None:
        """The socket closed; ``code`` None means no close frame was received (an abnormal close, 1006)."""
        if not self.watches(server):
            return
        self.state = ConnectionState.CLOSED
        self._candidate = None
        if code != NORMAL_CLOSURE:
            self._clear()

    def error(self, server: str) -> None:
        """A socket error (connect refused, handshake failed, read error): the lock is cleared."""
        self.closed(server, None)

    # -- manual control -------------------------------------------------------------------------------------------
    def reset(self) -> None:
        """The manual reset: forget the lock (the engine closes the socket with code 1000)."""
        self._clear()
        self._candidate = None
        self.state = ConnectionState.CLOSED

    def pin(self, server: str, *, is_open: bool) -> None:
        """Lock to ``server`` by hand (``%comfy lock URL``), whatever was locked before."""
        self.locked_server = server
        self.lock_timestamp = self._clock()
        self._candidate = None
        self.state = ConnectionState.OPEN if is_open else ConnectionState.CLOSED

    def _clear(self) -> None:
        self.locked_server = None
        self.lock_timestamp = None

    # -- status ---------------------------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """The original fix's status fields, in snake_case."""
        now = self._clock()
        return {
            "is_connected": self.state is ConnectionState.OPEN,
            "locked_server": self.locked_server,
            "lock_timestamp": self.lock_timestamp,
            "lock_duration": None if self.lock_timestamp is None else max(0.0, now - self.lock_timestamp),
            "connection_state": self.state.value,
        }
