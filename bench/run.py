"""``make bench``: comfy-notebook against the floor and against the server's own rate, side by side in one run.

1. Sequential latency: ``run()`` vs a minimal httpx + websockets loop doing the same protocol steps, on one real
   server, in alternating blocks so drift hits both alike. Target: median ratio <= 1.15.
2. Throughput: N trivial prompts submitted at once through ``submit()`` (results and images collected) vs the same
   N POSTed raw with the server left alone to drain its queue. Target: rate ratio >= 0.9.

Starts its own real server with the local-pool launcher unless ``--server URL`` is given.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

import comfy_notebook as cn
from floor import Floor

PREFIX = f"run-{uuid.uuid4().hex[:8]}"


def workflow(i: int, folder: str = "latency", size: int = 64) -> dict[str, Any]:
    """A trivial, never-cached workflow (the color changes the graph) with one saved image.

    Each phase saves into its own fresh subfolder: SaveImage lists its folder on every save, so a shared folder
    would make every later phase slower than the one before it."""
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": size, "height": size, "batch_size": 1, "color": i}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {
            "class_type": "SaveImage",
            "inputs": {"images": ["2", 0], "filename_prefix": f"bench/{PREFIX}/{folder}/img"},
        },
    }


def pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


def bench_latency(url: str, n: int, block: int = 10) -> dict[str, float]:
    """``run()`` against the floor, in alternating blocks of ``block`` prompts so drift hits both alike."""
    engine = cn.Engine([url])
    floor = Floor(url)
    ours: list[float] = []
    floors: list[float] = []
    counter = iter(range(10_000_000))
    try:
        engine.run(workflow(next(counter)), timeout=60)  # warm both paths
        floor.run(workflow(next(counter)))
        for _ in range(n // block):
            for client, times in ((lambda wf: engine.run(wf, timeout=60), ours), (floor.run, floors)):
                for _ in range(block):
                    start = time.perf_counter()
                    client(workflow(next(counter)))
                    times.append(time.perf_counter() - start)
    finally:
        engine.close()
        floor.close()
    return {
        "n": n,
        "ours_p50_ms": 1000 * statistics.median(ours),
        "ours_p90_ms": 1000 * pct(ours, 0.9),
        "floor_p50_ms": 1000 * statistics.median(floors),
        "floor_p90_ms": 1000 * pct(floors, 0.9),
        "ratio_p50": statistics.median(ours) / statistics.median(floors),
    }


async def _server_rate(url: str, workflows: list[dict[str, Any]], with_socket: bool) -> float:
    """The server's own completion rate: POST everything, then wait until its queue is empty.

    ``with_socket`` attaches a WebSocket for the prompts' client id that only drains events (no history, no
    images): the cost the server itself pays to send ~14 events per prompt to any event-driven client."""
    client_id = str(uuid.uuid4())
    drain: asyncio.Task[None] | None = None
    if with_socket:
        from websockets.asyncio.client import connect

        ws = await connect(url.replace("http", "ws", 1) + f"/ws?clientId={client_id}", max_size=None)

        async def read() -> None:
            async for _ in ws:
                pass

        drain = asyncio.create_task(read())
    async with httpx.AsyncClient(timeout=60) as http:
        start = time.perf_counter()
        for wf in workflows:
            body = {"prompt": wf, "client_id": client_id, "prompt_id": str(uuid.uuid4())}
            (await http.post(url + "/prompt", json=body)).raise_for_status()
        while True:
            remaining = (await http.get(url + "/prompt")).json()["exec_info"]["queue_remaining"]
            if remaining == 0:
                rate = len(workflows) / (time.perf_counter() - start)
                break
            await asyncio.sleep(0.005)
    if drain is not None:
        await ws.close()
        await drain
    return rate


def clear_history(url: str) -> None:
    """Every phase starts from an empty history: thousands of entries left by earlier phases slow ComfyUI down
    (measured: a later phase ran at a third of its fresh-server rate)."""
    httpx.post(url + "/history", json={"clear": True}, timeout=30).raise_for_status()


def bench_throughput(url: str, n: int, offset: int, rounds: int = 5) -> dict[str, float]:
    """Four phases side by side, each on fresh prompts in a fresh folder with an empty history: the server alone,
    the server with a bare event socket, ours on the bulk path and ours with per-prompt events. ``rounds``
    interleaved rounds, medians reported: one phase lasts about a second and ComfyUI stalls for up to a second
    in garbage collection now and then."""
    rates: dict[str, list[float]] = {"alone": [], "socket": [], "bulk": [], "bulk_files": [], "each": []}
    for r in range(rounds):
        base = offset + 4 * n * r

        def fresh(i: int, phase: str, base: int = base, r: int = r) -> dict[str, Any]:
            return workflow(base + i, f"{phase}-{r}")

        clear_history(url)
        rates["alone"].append(asyncio.run(_server_rate(url, [fresh(i, "alone") for i in range(n)], False)))
        clear_history(url)
        rates["socket"].append(asyncio.run(_server_rate(url, [fresh(n + i, "socket") for i in range(n)], True)))
        clear_history(url)
        bulk, bulk_files = _our_rate(url, [fresh(2 * n + i, "bulk") for i in range(n + 1)], bulk=True)
        rates["bulk"].append(bulk)
        rates["bulk_files"].append(bulk_files)
        clear_history(url)
        rates["each"].append(_our_rate(url, [fresh(3 * n + i, "each") for i in range(n + 1)], bulk=False)[0])
    med = {phase: statistics.median(values) for phase, values in rates.items()}
    return {
        "n": n,
        "rounds": rounds,
        "ours_per_s": med["bulk"],
        "ours_with_files_per_s": med["bulk_files"],
        "ours_with_events_per_s": med["each"],
        "server_per_s": med["alone"],
        "server_with_socket_per_s": med["socket"],
        "ratio": med["bulk"] / med["alone"],
        "ratio_with_events_vs_socket": med["each"] / med["socket"],
        "all_rates": rates,  # type: ignore[dict-item]
    }


def _our_rate(url: str, workflows: list[dict[str, Any]], *, bulk: bool) -> tuple[float, float]:
    """Ours: (results complete, results complete and every image's bytes in hand) per second. ``submit()`` each
    fetches images at completion, so both are equal; ``submit_many`` fetches files the server keeps on disk on
    first use, here right after the last result, with the server idle."""
    engine = cn.Engine([url])
    try:
        engine.run(workflows[0], timeout=60)
        start = time.perf_counter()
        tasks = engine.submit_many(workflows[1:]) if bulk else [engine.submit(wf) for wf in workflows[1:]]
        results = [t.result(timeout=600) for t in tasks]
        complete = time.perf_counter() - start
        assert all(r.status == "success" and len(r.fetch()) == 1 for r in results)
        with_files = time.perf_counter() - start
    finally:
        engine.close()
    return len(tasks) / complete, len(tasks) / with_files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", help="an existing ComfyUI server (default: start one)")
    parser.add_argument("--latency-n", type=int, default=400)
    parser.add_argument("--throughput-n", type=int, default=500)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)

    pool = None
    url = args.server
    if url is None:
        from comfy_notebook.tools.local_pool import LocalPool, find_free_base_port

        pool = LocalPool(state_dir=Path(tempfile.mkdtemp(prefix="comfy-bench-")))
        url = pool.start(1, base_port=find_free_base_port(1))[0]
    try:
        clear_history(url)
        latency = bench_latency(url, args.latency_n)
        print(
            f"sequential latency, {latency['n']} prompts: ours p50 {latency['ours_p50_ms']:.1f} ms "
            f"(p90 {latency['ours_p90_ms']:.1f}), floor p50 {latency['floor_p50_ms']:.1f} ms "
            f"(p90 {latency['floor_p90_ms']:.1f}) -> ratio {latency['ratio_p50']:.3f} (target <= 1.15)"
        )
        throughput = bench_throughput(url, args.throughput_n, offset=100_000)
        print(
            f"throughput, {throughput['n']} prompts at once (median of {throughput['rounds']} rounds): "
            f"ours {throughput['ours_per_s']:.0f}/s (submit_many), "
            f"server alone {throughput['server_per_s']:.0f}/s -> ratio {throughput['ratio']:.3f} (target >= 0.9); "
            f"{throughput['ours_with_files_per_s']:.0f}/s counting every image fetched afterwards"
        )
        print(
            f"  with per-prompt events: ours {throughput['ours_with_events_per_s']:.0f}/s (submit() each), "
            f"a bare event socket {throughput['server_with_socket_per_s']:.0f}/s -> ratio "
            f"{throughput['ratio_with_events_vs_socket']:.3f}"
        )
        if args.json:
            args.json.write_text(json.dumps({"latency": latency, "throughput": throughput}, indent=2))
    finally:
        if pool is not None:
            pool.down()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
