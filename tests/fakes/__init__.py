"""Test infrastructure: a fault-injecting fake ComfyUI, a round-robin proxy and the naive per-call client."""

from .fake_comfy import FakeComfy, ThreadedAiohttpServer, wait_until
from .naive_client import run_naive
from .rr_proxy import RoundRobinProxy

__all__ = ["FakeComfy", "RoundRobinProxy", "ThreadedAiohttpServer", "run_naive", "wait_until"]
