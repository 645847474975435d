"""Every timing and limit of the engine in one place, with the reason for each default."""

from __future__ import annotations

from dataclasses import dataclass, field

from comfy_notebook.core.errors import ConfigError
from comfy_notebook.core.failover import DEFAULT_RETRIES, Limits
from comfy_notebook.core.scheduler import DEFAULT_DEPTH
from comfy_notebook.engine.connection import SocketOptions
from comfy_notebook.engine.http import HttpOptions

LOCK, POOL = "lock", "pool"
MODES = (LOCK, POOL)


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ConfigError(f"unknown mode {mode!r}: use 'lock' (one server at a time) or 'pool' (every server)")
    return mode


@dataclass(frozen=True)
class EngineOptions:
    """Timeouts and limits. Keep timeouts well above ComfyUI's 0.3-1.2 s GC stalls."""

    socket: SocketOptions = field(default_factory=SocketOptions)
    http: HttpOptions = field(default_factory=HttpOptions)
    #: ``lock``: the original fix, new work goes to the locked server; ``pool``: late binding over every server.
    mode: str = LOCK
    #: How many times a prompt whose server was lost is sent again (to another server where there is one).
    retries: int = DEFAULT_RETRIES
    #: Send each connection's client id as the ``clientId`` query parameter of every HTTP call and as the
    #: ``X-Comfy-Affinity`` header (a balancer that hashes on either keeps all our calls on one backend).
    affinity_key: bool = True
    #: Pool mode: prompts of ours queued or running per server (2: the next one waits on the server while one runs).
    depth: int = DEFAULT_DEPTH
    #: Watchdog limits per phase (connect and POST limits are ``socket.open_timeout`` and ``http.timeout``).
    limits: Limits = field(default_factory=Limits)
    #: After a lost socket, how long to keep trying to reach the server before its prompts are declared lost
    #: (a refused connection ends it at once when another server can take the work: the process is gone).
    reconnect_window: float = 6.0
    #: Back-off between reconnect attempts: first delay, doubled up to the maximum.
    reconnect_delay: float = 0.2
    reconnect_delay_max: float = 1.0
    #: A posted prompt with no event for this long is checked through ``/queue`` and ``/history``.
    silence_check: float = 10.0
    #: How often queue positions of waiting prompts are refreshed (only for short queues of ours).
    queue_poll: float = 2.0
    queue_poll_max: int = 32
    reset_timeout: float = 1.5
    #: ``Task.cancel()`` returns once the server confirmed the drop, or after this long (the drop goes on).
    cancel_wait: float = 0.5
    #: How often the monitor looks at silent prompts, queue positions, cooldowns and watchdog limits.
    monitor_interval: float = 0.5
    #: The bulk harvester's longest wait for a ``status`` broadcast, and how long finished prompts accumulate for
    #: one history read while the server is busy (their places are free already; a drained queue is read at once).
    harvest_idle: float = 1.0
    harvest_gap: float = 1.0
    #: Delays before re-reading a finished prompt's history (the history-write race, transient failures).
    collect_retry_delays: tuple[float, ...] = (0.0, 0.1, 0.3, 1.0)
    #: Prompts left on a lost server are watched this long (seconds between checks, then forgotten), so a
    #: server that comes back and finishes one anyway is counted as a duplicate, never returned twice.
    ghost_check: float = 2.0
    ghost_ttl: float = 600.0

    def __post_init__(self) -> None:
        check_mode(self.mode)
        if self.retries < 0:
            raise ConfigError(f"retries must be 0 or more, not {self.retries}")
        if self.depth < 1:
            raise ConfigError(f"depth must be 1 or more, not {self.depth}")
