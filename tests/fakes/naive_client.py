"""The deliberately naive per-call client from the original bug report.

It treats `base_url` as one server: WebSocket, POST and history lookup each go through `base_url` separately.
Pointed at a single ComfyUI that works; behind a per-request balancer the three calls land on different servers,
the completion event goes to a socket on another server (or to nobody), and the result is lost. Tests use it to
show that failure; do NOT copy it into the engine.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import httpx
from websockets.sync.client import connect


def run_naive(base_url: str, workflow: dict[str, Any], timeout: float) -> dict[str, Any] | None:
    """Run `workflow` once; return its history entry, or None when the result was lost (timeout or `{}`).

    Waits for `executing` with `node: null` and this prompt id (the real "done" signal) for at most `timeout`
    seconds. Connection errors and HTTP errors propagate: only a *lost* result is reported as None.
    """
    base = base_url.rstrip("/")
    client_id = uuid.uuid4().hex
    ws_url = "ws" + base[len("http") :] + f"/ws?clientId={client_id}"
    with connect(ws_url, max_size=None, open_timeout=timeout, close_timeout=1) as ws:
        resp = httpx.post(f"{base}/prompt", json={"prompt": workflow, "client_id": client_id}, timeout=timeout)
        resp.raise_for_status()
        prompt_id = resp.json()["prompt_id"]
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            try:
                raw = ws.recv(timeout=remaining)
            except TimeoutError:
                return None
            if isinstance(raw, bytes):
                continue  # previews
            msg = json.loads(raw)
            data = msg.get("data") or {}
            if msg.get("type") == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
                break
    history = httpx.get(f"{base}/history/{prompt_id}", timeout=timeout).json()
    entry: dict[str, Any] | None = history.get(prompt_id)
    return entry
