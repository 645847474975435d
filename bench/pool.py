"""Pool mode on real ComfyUI servers: makespan against the ideal and other routings, and failover timing.

Everything is measured side by side in one run, on real ComfyUI servers started here (``LocalPool`` with the test
nodes, so the ``SlowSteps`` node sleeps ``step_seconds / speed``: the 2 CPU cores are not the limit):

1. Makespan of N prompts of mixed durations (``SlowSteps``, one step of 50-300 ms from a seeded rng), all submitted
   at once with ``engine.submit`` (per-prompt events), against the ideal = total work / the pool's combined speed.
   Strategies: ``pool`` (ours, ``mode="pool"``, depth 2), ``lock`` (the original fix: everything to the locked
   server), ``round-robin`` (a lock-mode engine, prompt i gets ``server=urls[i % n]``) and ``least-loaded`` (prompt
   i goes, via ``server=``, to the server with the fewest prompts assigned so far: an even split blind to speed);
   in the equal configuration also ``pool-d1`` and ``pool-d3`` (``EngineOptions(depth=1|3)``); and ``alone``, no
   engine at all: every duration known in advance, each server's share (longest first) queued before its clock
   starts, so each server runs with a full queue from start to end (``pool_alone.py``): what the servers
   themselves deliver, beyond the reach of any client; ``pool / alone`` is the client's own share. On request
   (``--strategies``): ``pool-bulk`` (``submit_many``, quiet prompts) and ``alone-quiet``. Two configurations:
   speeds [1, 1, 1, 1] and [1, 1, 1, 0.5], each on its own pool. Rounds are interleaved (round r runs every
   strategy once, in an order rotated by r), every run on fresh prompts (distinct colors, the same durations for
   every strategy of a round), an empty history and ComfyUI's periodic garbage collection staggered over the
   servers just before, as on separate machines (see ``stagger_gc``; ``--gc align`` makes all four collect
   together, ``--gc none`` leaves the timers where they are); medians reported. Targets: pool <= 1.05x ideal
   (equal), <= 1.07x (half-speed). Each ratio is split into ``balance`` (the routing's share) x ``overhead``
   (server time beyond the sleeps), see ``decompose``.
2. Failover on the equal pool, pool mode, a steady stream of prompts: ``--kills`` SIGKILLs (one server at a time,
   restarted on the same port before the next kill), each timed from the kill to the moment every prompt that was
   on the killed server has been sent to another one (its last attempt names another server), task state polled
   every ~1 ms from this thread; also when the OS closed the dead server's sockets (the floor) and when the engine
   marked the prompts lost. Target p99 < 1 s. Then ``--hangs`` SIGSTOPs (the server's own pid, ours only), timed
   the same way (target < 3 s), each followed by SIGCONT, with the duplicates the engine counted; and the same
   again with shorter WebSocket pings (``TUNED_SOCKET``, an analysis variant, not the default).
3. The machine: Python and ComfyUI versions, nproc, load, and any ComfyUI processes not ours (contention).

The parts live in ``pool_makespan.py``, ``pool_alone.py``, ``pool_failover.py`` and ``pool_common.py``; this
module runs them and prints the summary.

    .venv/bin/python bench/pool.py --json out/bench-pool.json          # the full run (~25 minutes)
    .venv/bin/python bench/pool.py --quick --json /tmp/bench-pool.json  # smoke run: 1 round, 40 prompts, 3 kills
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pool_common import foreign_comfy_processes, machine, our_pids, start_pool
from pool_failover import TUNED_SOCKET, bench_hangs, bench_kills, print_failover
from pool_makespan import CONFIGS, GC_MODES, STRATEGIES, bench_makespan, print_makespan


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write every figure here")
    parser.add_argument("--rounds", type=int, help="default 5 (--quick: 1)")
    parser.add_argument("--prompts", type=int, help="default 200 (--quick: 40)")
    parser.add_argument("--kills", type=int, help="default 20 (--quick: 3)")
    parser.add_argument("--hangs", type=int, help="SIGSTOPs per series, default 5 (--quick: 2)")
    parser.add_argument(
        "--no-tuned-hangs",
        dest="tuned_hangs",
        action="store_false",
        help="skip the second SIGSTOP series with shorter pings (an analysis variant, not the default)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 1 round, 40 prompts, 3 kills, 2 hangs per series"
    )
    parser.add_argument("--configs", default="equal,half", help="comma-separated: equal, half (default both)")
    parser.add_argument(
        "--strategies", help=f"comma-separated subset of the makespan strategies (default all: {', '.join(STRATEGIES)})"
    )
    parser.add_argument("--no-makespan", action="store_true")
    parser.add_argument("--no-failover", action="store_true")
    parser.add_argument("--seed", type=int, default=20261127)
    parser.add_argument(
        "--gc",
        choices=GC_MODES,
        default="stagger",
        help="ComfyUI's 10-second garbage collection before each run: stagger the servers' timers as on separate "
        "machines (default, see stagger_gc), align them (all four collect together, see align_gc), or leave them",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="the engine's warnings too")
    args = parser.parse_args(argv)
    defaults = {"rounds": (5, 1), "prompts": (200, 40), "kills": (20, 3), "hangs": (5, 2)}
    for name, (full, quick) in defaults.items():  # an explicit value wins over --quick
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("comfy_notebook").setLevel(logging.WARNING if args.verbose else logging.CRITICAL)
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    for config in configs:
        if config not in CONFIGS:
            parser.error(f"unknown configuration {config!r}: use {', '.join(CONFIGS)}")

    out: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}, "makespan": {}}
    state_root = Path(tempfile.mkdtemp(prefix="comfy-bench-pool-"))
    print(f"servers' folders and logs: {state_root}", flush=True)
    started = time.time()
    kills = hangs = tuned = None
    for config in configs:
        speeds = CONFIGS[config]
        run_failover = config == "equal" and not args.no_failover
        if args.no_makespan and not run_failover:
            continue
        print(f"starting {len(speeds)} ComfyUI servers, speeds {speeds} ...", flush=True)
        with start_pool(state_root / config, speeds)[0] as pool:
            urls = pool.urls
            pids = our_pids(pool)
            if "machine" not in out:
                out["machine"] = machine(urls[0])
                m = out["machine"]
                out["machine"]["foreign_comfy_processes_at_start"] = foreign_comfy_processes(pids)
                print(
                    f"Python {m['python']} (client), ComfyUI {m['comfyui']} on Python {m['comfyui_python']}, "
                    f"torch {m['pytorch']}, comfy-notebook {m['comfy_notebook']}, nproc {m['nproc']}, "
                    f"{m['foreign_comfy_processes_at_start']} other ComfyUI processes running",
                    flush=True,
                )
            if not args.no_makespan:
                data = bench_makespan(
                    config,
                    urls,
                    speeds,
                    rounds=args.rounds,
                    prompts=args.prompts,
                    seed=args.seed,
                    pids=pids,
                    gc=args.gc,
                    only=set(args.strategies.split(",")) if args.strategies else None,
                )
                out["makespan"][config] = data
                print_makespan(config, data)
            if run_failover:
                print(f"\nfailover: {args.kills} SIGKILLs, pool mode, a steady stream of prompts", flush=True)
                kills = bench_kills(pool, urls, args.kills, args.seed)
                out["kills"] = kills
                print(f"\nhung server: {args.hangs} SIGSTOPs", flush=True)
                hangs = bench_hangs(pool, urls, args.hangs, args.seed)
                out["hangs"] = hangs
                if args.tuned_hangs:
                    print(f"\nhung server, tuned pings (analysis only): {args.hangs} SIGSTOPs", flush=True)
                    tuned = bench_hangs(pool, urls, args.hangs, args.seed + 7, TUNED_SOCKET)
                    out["hangs_tuned_pings"] = tuned
                print_failover(kills, hangs, tuned)
                out["foreign_comfy_processes_after_failover"] = foreign_comfy_processes(our_pids(pool))
        if args.json:  # after every configuration, so a long run that dies later keeps what it measured
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(out, indent=1))

    out["duration_s"] = round(time.time() - started, 1)
    print("\n== summary ==")
    m = out.get("machine", {})
    print(
        f"Python {m.get('python')}, ComfyUI {m.get('comfyui')}, nproc {m.get('nproc')}, "
        f"{out['duration_s']:.0f} s in all"
    )
    for config, data in out["makespan"].items():
        print_makespan(config, data)
    print_failover(kills, hangs, tuned)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
        print(f"\nfigures written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
