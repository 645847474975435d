"""A fleet of protocol-faithful fake ComfyUI servers in one process, for ``bench/pool_sim.py``.

Every fake is ``tests.fakes.fake_comfy.FakeComfy`` (same routes, events, queue and history behaviour), with four
benchmark-only changes made here by subclassing, never in the test fake itself:

* all fakes share ONE asyncio loop on the main thread instead of a thread and a loop each (64 threads fighting
  over one GIL would measure the GIL, not the client);
* the output PNG is made once and reused (the test fake draws a fresh one with PIL for every prompt);
* each fake's steps run on a device clock of its own: a step starts when the device is free and the prompt is
  queued (the later of the previous step's end and the prompt's ``create_time``) and ends exactly ``step_delay``
  later, however late the shared loop wakes up for it. Sixty-four machines each have their own GPU; on one loop,
  a late timer would otherwise stretch every prompt and carry over into the next one, and the client would be
  measured against the simulation's lag (3 % of every prompt here at 64 servers). Lateness still delays when the
  client hears of a result, and a prompt the client queues late still starts late;
* each fake keeps busy-time figures (``GET /bench/stats``, ``POST /bench/reset``): how long it actually spent on
  each prompt, so the client's makespan can be compared with what the fakes really delivered, and the requests it
  answered, by route.

Two defaults differ from the test fake's so that a prompt costs what its workflow says and nothing more: nodes run
no steps unless their inputs ask for some (``--steps 0``: only the workflow's ``SlowSteps`` node waits), and the
gap between ``execution_success`` and the history write is 0 (``--history-delay``; the test fake's 10 ms makes a
race reliable, here it would only add to every prompt). The protocol order is unchanged.

Run as a script it starts ``--servers`` fakes, prints ``{"pid": ..., "urls": [...]}`` as one JSON line on stdout
and serves until SIGTERM / SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fakes.fake_comfy import FakeComfy, QueueItem, _image_bytes

_PNG = _image_bytes(7)


def _route(path_qs: str) -> str:
    """``/history/<id>?x`` -> ``/history/{id}``: requests counted per route, not per URL."""
    path = path_qs.split("?", maxsplit=1)[0].removeprefix("/api")
    return "/history/{id}" if path.startswith("/history/") else path


class BenchFake(FakeComfy):
    """``FakeComfy`` that runs on a shared loop, reuses one PNG and measures its own busy time."""

    def __init__(self, *, steps: int = 0, step_delay: float = 0.0, history_delay: float = 0.0) -> None:
        super().__init__(0, steps=steps, step_delay=step_delay)
        self.history_delay = history_delay
        self._free_at = 0.0  # when the device finished its last step (time.time())
        self._queued_at = 0.0  # when the prompt it runs was queued
        self.reset_stats()

    async def _execute(self, item: QueueItem) -> tuple[str, bool, dict[str, Any], dict[str, Any], list[Any]]:
        self._queued_at = item[3].get("create_time", 0) / 1000  # when the POST queued it (time.time(), in ms)
        return await super()._execute(item)

    async def _step_wait(self, delay: float) -> None:
        """The device clock: this step ends ``delay`` after the device was free and had the prompt."""
        end = max(self._free_at, self._queued_at) + delay
        self._free_at = end
        await asyncio.sleep(max(0.0, end - time.time()))

    def reset_stats(self) -> None:
        self.prompts = 0
        self.busy = 0.0  # seconds spent in _run_item (execution + history write), summed
        self.first_start: float | None = None  # time.time() of the first prompt's start
        self.last_end: float | None = None

    async def start_on_loop(self) -> str:
        """Start serving on the running loop (instead of a thread of its own)."""
        self._loop = asyncio.get_running_loop()
        await self._astart()
        return self.url

    async def stop_on_loop(self) -> None:
        """Stop this fake without cancelling the other fakes' tasks on the shared loop (``_astop`` cancels all)."""
        await self._on_stop()
        if self._runner is not None:
            await self._runner.cleanup()

    def _build_app(self) -> web.Application:
        app = super()._build_app()
        app.router.add_route("GET", "/bench/stats", self._stats)
        app.router.add_route("POST", "/bench/reset", self._reset)
        return app

    async def _stats(self, request: web.Request) -> web.Response:
        requests = Counter(f"{method} {_route(path_qs)}" for method, path_qs in self.http_log)
        requests -= Counter({"GET /bench/stats": requests["GET /bench/stats"]})
        stats = {"prompts": self.prompts, "busy": self.busy, "first_start": self.first_start, "last_end": self.last_end}
        return web.json_response({**stats, "requests": dict(requests), "ws_connects": self.ws_connect_count})

    async def _reset(self, request: web.Request) -> web.Response:
        self.reset_stats()
        self._history.clear()
        self.http_log.clear()
        self.posted_prompt_ids.clear()
        self._files.clear()
        self.ws_connect_count = 0
        return web.Response(status=200)

    async def _run_item(self, item: QueueItem) -> None:
        start = time.time()
        try:
            await super()._run_item(item)
        finally:
            end = time.time()
            self.prompts += 1
            self.busy += end - start
            if self.first_start is None:
                self.first_start = start
            self.last_end = end

    def _make_image(self, class_type: str) -> dict[str, str]:
        self._save_counter += 1
        n = self._save_counter
        kind = "output" if class_type == "SaveImage" else "temp"
        name = f"ComfyUI_{n:05}_.png" if kind == "output" else f"ComfyUI_temp_fake_{n:05}_.png"
        self._files[(kind, "", name)] = _PNG
        return {"filename": name, "subfolder": "", "type": kind}


async def serve(servers: int, steps: int, step_delay: float, history_delay: float) -> None:
    fakes = [BenchFake(steps=steps, step_delay=step_delay, history_delay=history_delay) for _ in range(servers)]
    urls = [await fake.start_on_loop() for fake in fakes]
    print(json.dumps({"pid": os.getpid(), "urls": urls}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for fake in fakes:
        await fake.stop_on_loop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--servers", type=int, default=8)
    parser.add_argument("--steps", type=int, default=0, help="fake-wide steps per node (workflows override)")
    parser.add_argument("--step-delay", type=float, default=0.0, help="fake-wide seconds per step")
    parser.add_argument("--history-delay", type=float, default=0.0, help="gap execution_success -> history write")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.servers, args.steps, args.step_delay, args.history_delay))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
