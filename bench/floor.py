"""The floor: a minimal hand-written httpx + websockets client doing exactly the protocol steps ``run()`` does
(socket open before the POST, wait for ``executing``/null, history, images), with nothing else around it."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx
from websockets.asyncio.client import connect


class FloorClient:
    def __init__(self, url: str) -> None:
        self.url = url
        self.client_id = str(uuid.uuid4())

    async def __aenter__(self) -> FloorClient:
        self.http = httpx.AsyncClient(timeout=30)
        self.ws = await connect(
            self.url.replace("http", "ws", 1) + f"/ws?clientId={self.client_id}", max_size=None, max_queue=None
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.ws.close()
        await self.http.aclose()

    async def run(self, workflow: dict[str, Any]) -> list[bytes]:
        prompt_id = str(uuid.uuid4())
        body = {"prompt": workflow, "client_id": self.client_id, "prompt_id": prompt_id}
        (await self.http.post(self.url + "/prompt", json=body)).raise_for_status()
        async for message in self.ws:
            if isinstance(message, str):
                event = json.loads(message)
                data = event.get("data") or {}
                if event["type"] == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
                    break
        history = (await self.http.get(f"{self.url}/history/{prompt_id}")).json()[prompt_id]
        images = []
        for output in history["outputs"].values():
            for image in output.get("images", []):
                params = {k: image[k] for k in ("filename", "subfolder", "type")}
                images.append((await self.http.get(self.url + "/view", params=params)).content)
        return images


class Floor:
    """The floor client on a loop of its own in this thread (no threads, no hops), kept open across blocks like
    the engine it is compared with."""

    def __init__(self, url: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._client = FloorClient(url)
        self._loop.run_until_complete(self._client.__aenter__())

    def run(self, workflow: dict[str, Any]) -> list[bytes]:
        return self._loop.run_until_complete(self._client.run(workflow))

    def close(self) -> None:
        self._loop.run_until_complete(self._client.__aexit__())
        self._loop.close()


def run_sequential(url: str, workflows: list[dict[str, Any]]) -> list[float]:
    """Per-prompt latencies (seconds) of the floor client, one prompt at a time."""
    import time

    floor = Floor(url)
    try:
        times = []
        for workflow in workflows:
            start = time.perf_counter()
            floor.run(workflow)
            times.append(time.perf_counter() - start)
        return times
    finally:
        floor.close()
