"""Real-server fixtures: three real ComfyUI processes (CPU, no models) with the test custom nodes.

Everything under tests/integration is marked ``real``, so ``pytest -m "not real"`` skips it on a machine
without the time (or disk) for the pinned ComfyUI environment. The first run builds that environment
(minutes); later runs reuse it from the cache.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from comfy_notebook.tools.local_pool import LocalPool, PortInUseError, find_free_base_port

TEST_NODES_DIR = Path(__file__).resolve().parent.parent / "comfy_nodes"
REAL_POOL_SIZE = 3
_PORT_ATTEMPTS = 5


def start_pool(pool: LocalPool, n: int) -> list[str]:
    """Start ``n`` servers with the test nodes on a free port range, retrying if another process grabs it."""
    for attempt in range(_PORT_ATTEMPTS):
        try:
            return pool.start(n, base_port=find_free_base_port(n), custom_nodes=[TEST_NODES_DIR])
        except PortInUseError:
            if attempt == _PORT_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def own_pool(tmp_path_factory: pytest.TempPathFactory, name: str, n: int) -> Iterator[LocalPool]:
    """Body of a module fixture: ``n`` real servers of a module's own, for tests that kill servers (chaos must not
    disturb the session's shared pool)."""
    with LocalPool(tmp_path_factory.mktemp(name)) as pool:
        start_pool(pool, n)
        yield pool


def all_up(pool: LocalPool) -> list[str]:
    """The pool's URLs, after restarting any server a test that failed halfway left down."""
    for server in pool.status():
        if not server.answering:
            pool.restart(server.index)
    return pool.urls


@pytest.fixture(scope="session")
def real_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPool]:
    """Three real ComfyUI servers shared by the session; tests use ``.urls``, ``.kill(i)``, ``.restart(i)``.

    A test that kills a server should restart it before it ends, so the next test finds all three up.
    """
    pool = LocalPool(tmp_path_factory.mktemp("real-pool"))
    try:
        start_pool(pool, REAL_POOL_SIZE)
        yield pool
    finally:
        pool.down()
