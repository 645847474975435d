"""The ``comfy-notebook`` console script: build the ComfyUI environment and run a local pool of servers.

Exit codes: 0 success; 1 a clear one-line error (or, for ``local status``, not every server answers);
2 bad usage (argparse).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from comfy_notebook.tools.comfyui_env import EnvBuildError, ensure_env, env_path
from comfy_notebook.tools.local_pool import DEFAULT_BASE_PORT, LocalPool, LocalPoolError, default_state_dir


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="comfy-notebook", description="Tools for comfy-notebook: a pinned ComfyUI env and local servers."
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="only print results and errors")
    sub = parser.add_subparsers(dest="group", required=True)

    env = sub.add_parser("env", help="the pinned ComfyUI environment (cached outside the repo)")
    env_sub = env.add_subparsers(dest="command", required=True)
    env_sub.add_parser("build", help="build it if needed (minutes the first time) and print its folder")
    env_sub.add_parser("path", help="print where it is (or would be) without building")

    local = sub.add_parser("local", help="a pool of real ComfyUI servers on 127.0.0.1")
    local_sub = local.add_subparsers(dest="command", required=True)
    state_help = f"pool state folder (default {default_state_dir()})"

    up = local_sub.add_parser("up", help="start N servers and return once all answer; prints their URLs")
    up.add_argument("--servers", "-n", type=int, required=True, metavar="N", help="number of servers")
    up.add_argument("--base-port", type=int, default=DEFAULT_BASE_PORT, metavar="P", help="first port (8188)")
    up.add_argument("--comfyui", type=Path, metavar="DIR", help="your own ComfyUI checkout (default: pinned env)")
    up.add_argument("--python", type=Path, metavar="PY", help="python for --comfyui (default: this one)")
    up.add_argument(
        "--custom-nodes",
        type=Path,
        nargs="+",
        action="extend",
        default=[],
        metavar="DIR",
        help="folders holding custom nodes",
    )
    up.add_argument(
        "--gpu-per-server", action="store_true", help="server i gets CUDA_VISIBLE_DEVICES=i instead of --cpu"
    )
    up.add_argument("--timeout", type=float, default=120.0, metavar="S", help="start-up timeout per pool (120)")
    up.add_argument("--state-dir", type=Path, help=state_help)

    status = local_sub.add_parser("status", help="show each server: url, pid, alive, answering")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument("--state-dir", type=Path, help=state_help)

    down = local_sub.add_parser("down", help="stop every server of the pool")
    down.add_argument("--state-dir", type=Path, help=state_help)
    return parser


def _local(args: argparse.Namespace) -> int:
    pool = LocalPool(args.state_dir)
    if args.command == "up":
        urls = pool.start(
            args.servers,
            base_port=args.base_port,
            comfyui_dir=args.comfyui,
            python=args.python,
            custom_nodes=args.custom_nodes,
            gpu_per_server=args.gpu_per_server,
            ready_timeout=args.timeout,
        )
        for url in urls:
            print(url)
        return 0
    if args.command == "status":
        servers = pool.status()
        if args.json:
            print(json.dumps([s.to_dict() for s in servers], indent=2))
        elif not servers:
            print(f"no local pool in {pool.state_dir}")
        else:
            for s in servers:
                state = "answering" if s.answering else ("running, not answering" if s.alive else "down")
                print(f"{s.index}  {s.url}  pid {s.pid}  {state}")
        return 0 if servers and all(s.answering for s in servers) else 1
    # down
    count = len(pool.urls)
    pool.down()
    print(f"stopped {count} server(s) from {pool.state_dir}" if count else f"no local pool in {pool.state_dir}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (the console script passes it to ``sys.exit``)."""
    args = _build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    try:
        if args.group == "env":
            print(ensure_env().root if args.command == "build" else env_path())
            return 0
        return _local(args)
    except (LocalPoolError, EnvBuildError) as exc:
        print(f"comfy-notebook: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("comfy-notebook: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
