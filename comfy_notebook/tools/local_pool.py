"""Start, watch and stop N real ComfyUI servers on this machine, each with its own folders.

Used by the real-server tests (as a context manager), by the demo and by people with one server per GPU (via
the ``comfy-notebook local`` CLI). The pool is described by a JSON state file in a state folder, so another
process can ask for its status or take it down.

Safety rule: we only ever signal processes we started. Each server's pid is stored with its start time from
``/proc/<pid>/stat``; before any signal the pair is checked again, so a recycled pid that now belongs to
someone else is never touched. Each server runs in its own session (process group), which is what we signal.
Linux-only (``/proc``, ``fcntl``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from comfy_notebook.tools.comfyui_env import cache_root, ensure_env

log = logging.getLogger(__name__)

STATE_FILE = "pool.json"
LOCK_FILE = "pool.lock"
EXTRA_PATHS_FILE = "extra_model_paths.yaml"
EXTRA_PATHS_SECTION = "comfy_notebook_tests"
DEFAULT_BASE_PORT = 8188
DEFAULT_READY_TIMEOUT = 120.0
_STOP_TIMEOUT = 10.0
_KILL_TIMEOUT = 5.0
_POLL_INTERVAL = 0.2
_LOG_TAIL_LINES = 40
# Speed factor of the test node SlowSteps (tests/comfy_nodes): 0.5 = each sleep takes twice as long. Lets one pool
# mix fast and slow servers for pool-mode tests and benchmarks.
SPEED_ENV = "COMFY_NOTEBOOK_SPEED"
# Loopback only, and never through a proxy from the environment.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class LocalPoolError(RuntimeError):
    """A pool operation failed; the message is one line a person can act on (plus a log tail if relevant)."""


class PortInUseError(LocalPoolError):
    """A port the pool needs is taken by another process."""


class ServerStartError(LocalPoolError):
    """A server exited or did not answer ``GET /prompt`` in time."""


@dataclass(frozen=True)
class ServerStatus:
    """One server as seen now: ``alive`` = our process runs, ``answering`` = ``GET /prompt`` returned 200."""

    index: int
    url: str
    pid: int | None
    alive: bool
    answering: bool
    log: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_state_dir() -> Path:
    """``<cache>/local-pool``: one default pool per user, so ``local status``/``down`` need no arguments."""
    return cache_root() / "local-pool"


# ---------------------------------------------------------------- process identity (/proc)


def _proc_stat(pid: int) -> tuple[str, int, int, int] | None:
    """(state, pgid, start time in clock ticks, thread count) of ``pid``, or None if there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) is in parentheses and may contain spaces or ')': split after the last ')'.
    fields = raw[raw.rfind(")") + 2 :].split()
    # fields[0] is field 3 (state); pgid is field 5; num_threads is field 20; starttime is field 22.
    return fields[0], int(fields[2]), int(fields[19]), int(fields[17])


def process_start_time(pid: int) -> int | None:
    """Start time of ``pid`` (clock ticks since boot), the second half of a process identity."""
    stat = _proc_stat(pid)
    return None if stat is None else stat[2]


def _is_ours_and_running(pid: int | None, start_time: int | None) -> bool:
    """True while our process exists and is not fully dead.

    A SIGKILLed multi-threaded process (ComfyUI) shows its leader as a zombie while its other threads still exit;
    its files, the listening socket among them, close only with the last thread (tens of ms for a big process).
    Counting that as dead would let ``kill`` return while the port still accepts connections.
    """
    if pid is None or start_time is None:
        return False
    stat = _proc_stat(pid)
    if stat is None or stat[2] != start_time:
        return False
    state, _, _, threads = stat
    return state not in ("Z", "X") or threads > 1


# ---------------------------------------------------------------- ports and HTTP


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True if binding ``host:port`` fails. SO_REUSEADDR like aiohttp, so TIME_WAIT leftovers do not count."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return True
            raise
    return False


def find_free_base_port(n: int, low: int = 20000, high: int = 32000) -> int:
    """A base port P with P..P+n-1 all free now (random start, so parallel test sessions rarely collide).

    Below Linux's ephemeral range (32768-60999): a port found free there can be taken by an outgoing connection
    before the server binds it (seen: "address already in use")."""
    start = random.randrange(low, high - n)
    for offset in range(0, high - low, n):
        base = low + (start - low + offset) % (high - low - n)
        if not any(port_in_use(base + k) for k in range(n)):
            return base
    raise PortInUseError(f"no {n} consecutive free ports between {low} and {high}")


def answers(url: str, timeout: float = 2.0) -> bool:
    """True if ``GET {url}/prompt`` returns 200: the server's cheap health probe."""
    try:
        with _HTTP.open(f"{url}/prompt", timeout=timeout) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _tail(path: Path, offset: int = 0, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except OSError:
        return "(no log)"
    text = data.decode("utf-8", errors="replace").splitlines()[-lines:]
    return "\n".join(text) if text else "(log is empty)"


def _check_model_paths(
    model_paths: Sequence[Mapping[str, Sequence[Path | str]]] | None, n: int
) -> list[dict[str, list[Path]]] | None:
    """``LocalPool.start``'s per-server model folders, resolved; a mistake is a ``LocalPoolError`` before any start."""
    if model_paths is None:
        return None
    if len(model_paths) != n:
        raise LocalPoolError(f"got {len(model_paths)} model_paths for {n} servers")
    out: list[dict[str, list[Path]]] = []
    for folders in model_paths:
        resolved: dict[str, list[Path]] = {}
        for name, dirs in folders.items():
            if not (isinstance(name, str) and name.isidentifier()):
                raise LocalPoolError(f"model folder names are like 'loras' or 'checkpoints', not {name!r}")
            if isinstance(dirs, str | Path):
                raise LocalPoolError(f"model_paths[...][{name!r}] must be a list of folders, not one")
            resolved[name] = [Path(d).expanduser().resolve() for d in dirs]
            missing = [str(d) for d in resolved[name] if not d.is_dir()]
            if missing:
                raise LocalPoolError(f"model folder {', '.join(missing)} ({name}) does not exist")
        out.append(resolved)
    return out


# ---------------------------------------------------------------- the pool


class LocalPool:
    """N real ComfyUI servers on 127.0.0.1, ports ``base_port + i``, folders ``<state_dir>/server-i``.

    Typical use from tests::

        with LocalPool(tmp_dir) as pool:
            urls = pool.start(3, base_port=find_free_base_port(3), custom_nodes=[nodes_dir], speeds=[1, 1, 0.5])
            pool.kill(1); pool.restart(1)                        # crash it, then bring it back on the same port
            pool.kill(urls[2]); pool.restart(urls[2], wait=False); pool.wait_ready([2])

    Every method re-reads the state file, so a second ``LocalPool`` on the same folder (another process, the
    CLI) sees and controls the same servers. Mutating calls hold an ``fcntl`` lock on the folder, and a thread
    lock, so one object may be shared by threads (a chaos thread killing servers while a test reads status).
    """

    def __init__(self, state_dir: Path | str | None = None) -> None:
        self.state_dir = Path(state_dir) if state_dir is not None else default_state_dir()
        self._procs: dict[int, subprocess.Popen[bytes]] = {}  # pid -> handle of children we started (reaping)
        self._lock_depth = 0
        self._lock_handle: Any = None
        self._thread_lock = threading.RLock()  # the depth counter below is per object, so threads must queue

    # -- context manager: always take the servers down, even when the body raised

    def __enter__(self) -> LocalPool:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.down()

    # -- state file

    @property
    def state_file(self) -> Path:
        return self.state_dir / STATE_FILE

    def _load(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.state_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"servers": []}
        except (OSError, json.JSONDecodeError) as exc:
            raise LocalPoolError(f"unreadable pool state file {self.state_file}: {exc}") from exc
        return data

    def _save(self, state: dict[str, Any]) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(state, indent=2), encoding="utf-8")
        os.replace(tmp, self.state_file)  # readers never see a half-written file

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Exclusive lock on the state folder; re-entrant within this object's thread (flock is not, per open file)."""
        with self._thread_lock:
            if self._lock_depth == 0:
                self.state_dir.mkdir(parents=True, exist_ok=True)
                handle = (self.state_dir / LOCK_FILE).open("a+")
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
                self._lock_handle = handle
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
                if self._lock_depth == 0:
                    handle = self._lock_handle
                    self._lock_handle = None
                    fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
                    handle.close()

    def _server(self, state: dict[str, Any], server: int | str) -> dict[str, Any]:
        """The record of ``server``: an index, or a URL as returned by :meth:`start` (a trailing ``/`` is fine)."""
        servers: list[dict[str, Any]] = state["servers"]
        if isinstance(server, str):
            for rec in servers:
                if rec["url"] == server.rstrip("/"):
                    return rec
            raise LocalPoolError(f"no server {server} in the pool at {self.state_dir}")
        if not 0 <= server < len(servers):
            raise LocalPoolError(f"no server {server} in the pool at {self.state_dir} ({len(servers)} servers)")
        return servers[server]

    # -- process handling

    def _alive(self, rec: dict[str, Any]) -> bool:
        # Reap every dead child of ours (else it stays a zombie), including one that another process sharing
        # the state file killed and replaced: then no record names its pid any more.
        for proc in list(self._procs.values()):  # a copy: another thread may be launching
            proc.poll()  # a no-op once reaped; the handle keeps the exit code for error messages
        return _is_ours_and_running(rec.get("pid"), rec.get("start_time"))

    def _signal(self, rec: dict[str, Any], sig: signal.Signals) -> bool:
        """Signal the server's process group, only if pid AND start time still match. True if sent."""
        pid = rec.get("pid")
        if not isinstance(pid, int) or not self._alive(rec):
            return False
        try:
            if os.getpgid(pid) == pid:
                os.killpg(pid, sig)
            else:  # someone moved it out of its own group: signal just the process we started
                os.kill(pid, sig)
        except ProcessLookupError:
            return False
        return True

    def _wait_dead(self, rec: dict[str, Any], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self._alive(rec):
            if time.monotonic() >= deadline:
                return False
            time.sleep(_POLL_INTERVAL)
        return True

    def _terminate(self, rec: dict[str, Any], timeout: float = _STOP_TIMEOUT) -> None:
        if not self._signal(rec, signal.SIGTERM):
            return
        if self._wait_dead(rec, timeout):
            return
        log.warning("server %s did not stop on SIGTERM within %.0f s; sending SIGKILL", rec["url"], timeout)
        self._signal(rec, signal.SIGKILL)
        if not self._wait_dead(rec, _KILL_TIMEOUT):
            raise LocalPoolError(f"server {rec['url']} (pid {rec['pid']}) survived SIGKILL")

    def _launch(self, rec: dict[str, Any]) -> None:
        """Start one server from its recorded command line; record pid, start time and log offset."""
        server_dir = Path(rec["dir"])
        for sub in ("out", "in", "tmp", "user"):
            (server_dir / sub).mkdir(parents=True, exist_ok=True)
        log_path = Path(rec["log"])
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"  # timely logs, so a failed start shows its real last words
        env.update(rec.get("env", {}))
        with log_path.open("ab") as fh:
            rec["log_offset"] = fh.tell()
            fh.write(f"\n=== comfy-notebook local pool: starting {' '.join(rec['argv'])}\n".encode())
            fh.flush()
            proc = subprocess.Popen(
                rec["argv"],
                cwd=rec["cwd"],
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # own process group: we can stop it whole, Ctrl-C elsewhere won't
            )
        self._procs[proc.pid] = proc
        rec["pid"] = proc.pid
        rec["start_time"] = process_start_time(proc.pid)
        log.info("server %d: pid %d, %s, log %s", rec["index"], proc.pid, rec["url"], log_path)

    def _wait_ready(self, recs: Sequence[dict[str, Any]], timeout: float) -> None:
        """Poll until every server answers ``GET /prompt``; fail fast if one exits, with its log tail."""
        deadline = time.monotonic() + timeout
        pending = list(recs)
        while pending:
            for rec in list(pending):
                if answers(rec["url"], timeout=1.0):
                    pending.remove(rec)
                    log.info("server %d ready: %s", rec["index"], rec["url"])
                elif not self._alive(rec):
                    proc = self._procs.get(rec["pid"])
                    code = "" if proc is None or proc.returncode is None else f" with code {proc.returncode}"
                    raise ServerStartError(
                        f"server {rec['index']} ({rec['url']}) exited{code} before answering; "
                        f"log {rec['log']}:\n{_tail(Path(rec['log']), rec.get('log_offset', 0))}"
                    )
            if pending and time.monotonic() >= deadline:
                rec = pending[0]
                raise ServerStartError(
                    f"server {rec['index']} ({rec['url']}) did not answer GET /prompt in {timeout:.0f} s; "
                    f"log {rec['log']}:\n{_tail(Path(rec['log']), rec.get('log_offset', 0))}"
                )
            if pending:
                time.sleep(_POLL_INTERVAL)

    # -- public API

    def start(
        self,
        n: int,
        base_port: int = DEFAULT_BASE_PORT,
        comfyui_dir: Path | str | None = None,
        python: Path | str | None = None,
        custom_nodes: Sequence[Path | str] = (),
        *,
        gpu_per_server: bool = False,
        ready_timeout: float = DEFAULT_READY_TIMEOUT,
        speeds: Sequence[float] | None = None,
        env_for: Callable[[int], Mapping[str, str]] | None = None,
        model_paths: Sequence[Mapping[str, Sequence[Path | str]]] | None = None,
    ) -> list[str]:
        """Start ``n`` servers in parallel and return their URLs once all answer ``GET /prompt``.

        Without ``comfyui_dir`` the pinned environment from :func:`ensure_env` is used (built on first use).
        With it, ``python`` defaults to the running interpreter (a user's own ComfyUI checkout and venv).
        ``custom_nodes`` are folders that *contain* custom node packages. ``gpu_per_server`` gives server i
        ``CUDA_VISIBLE_DEVICES=i`` and drops ``--cpu``. On any failure the servers started so far are stopped.

        ``speeds[i]`` sets server i's ``COMFY_NOTEBOOK_SPEED`` (the test node's speed factor: 0.5 = half speed) and
        ``env_for(i)`` adds any other variables (applied last, so it wins). Both are stored in the state file, so
        :meth:`restart` brings a server back with the same environment.

        ``model_paths[i]`` gives server i folders of its own, by ComfyUI folder name (``{"loras": [dir]}``; a new
        name is a new folder), searched after the shared ``ComfyUI/models``: a pool whose servers do not all have
        the same model files, without ever writing into the shared environment. Each server then gets its own
        extra paths YAML in its folder (the custom nodes included).
        """
        if n < 1:
            raise LocalPoolError(f"need at least one server, got {n}")
        if not 1 <= base_port <= 65535 - n + 1:
            raise LocalPoolError(f"ports {base_port}..{base_port + n - 1} are not valid TCP ports")
        if speeds is not None:
            if len(speeds) != n:
                raise LocalPoolError(f"got {len(speeds)} speeds for {n} servers")
            bad = [s for s in speeds if not (isinstance(s, int | float) and 0 < s < float("inf"))]
            if bad:
                raise LocalPoolError(f"speeds must be positive finite numbers (1.0 = full speed), got {bad}")
        own_paths = _check_model_paths(model_paths, n)
        extra_envs: list[dict[str, str]] = []
        for i in range(n):
            extra: dict[str, str] = {}
            if speeds is not None:
                extra[SPEED_ENV] = repr(float(speeds[i]))
            if env_for is not None:
                extra.update(env_for(i))
            extra_envs.append(extra)
        if comfyui_dir is None:
            env = ensure_env()
            comfy_dir = env.comfyui_dir
            py = Path(python) if python is not None else env.python
        else:
            comfy_dir = Path(comfyui_dir).expanduser().resolve()
            py = Path(python) if python is not None else Path(sys.executable)
        if not (comfy_dir / "main.py").is_file():
            raise LocalPoolError(f"{comfy_dir} is not a ComfyUI folder (no main.py)")
        node_dirs = [Path(d).expanduser().resolve() for d in custom_nodes]
        for d in node_dirs:
            if not d.is_dir():
                raise LocalPoolError(f"custom nodes folder {d} does not exist")

        with self._locked():
            old = self._load()
            running = [s["url"] for s in old["servers"] if self._alive(s)]
            if running:
                raise LocalPoolError(
                    f"a pool is already running from {self.state_dir} ({', '.join(running)}); "
                    "stop it first (`comfy-notebook local down`)"
                )
            busy = [p for p in range(base_port, base_port + n) if port_in_use(p)]
            if busy:
                raise PortInUseError(
                    f"port{'s' if len(busy) > 1 else ''} {', '.join(map(str, busy))} on 127.0.0.1 "
                    "already in use; choose another --base-port"
                )
            self.state_dir.mkdir(parents=True, exist_ok=True)
            extra_args: list[str] = []
            if node_dirs and own_paths is None:
                shared = self._write_extra_paths(self.state_dir / EXTRA_PATHS_FILE, {"custom_nodes": node_dirs})
                extra_args = ["--extra-model-paths-config", str(shared)]
            state: dict[str, Any] = {
                "version": 1,
                "comfyui_dir": str(comfy_dir),
                "python": str(py),
                "custom_nodes": [str(d) for d in node_dirs],
                "servers": [],
            }
            for i in range(n):
                args = extra_args
                if own_paths is not None:
                    own = (self.state_dir / f"server-{i}").resolve()
                    own.mkdir(parents=True, exist_ok=True)
                    folders = {"custom_nodes": node_dirs, **own_paths[i]}
                    if own_paths[i].get("custom_nodes"):
                        folders["custom_nodes"] = [*node_dirs, *own_paths[i]["custom_nodes"]]
                    yaml_path = self._write_extra_paths(own / EXTRA_PATHS_FILE, folders)
                    args = ["--extra-model-paths-config", str(yaml_path)]
                rec = self._record(i, base_port + i, comfy_dir, py, args, gpu_per_server=gpu_per_server)
                rec["env"].update(extra_envs[i])
                state["servers"].append(rec)
            try:
                for rec in state["servers"]:
                    self._launch(rec)
                    self._save(state)  # after each launch: a crash here still leaves every pid on record
                self._wait_ready(state["servers"], ready_timeout)
            except BaseException:
                for rec in state["servers"]:
                    self._terminate(rec)
                raise
            finally:
                self._save(state)
        return [s["url"] for s in state["servers"]]

    @staticmethod
    def _write_extra_paths(path: Path, folders: Mapping[str, Sequence[Path]]) -> Path:
        """ComfyUI's extra paths YAML: per folder name, absolute folders, one per line (utils/extra_config.py
        splits on it). Written as JSON strings, which YAML reads as double-quoted scalars: no YAML library needed.
        """
        lines = [f"{EXTRA_PATHS_SECTION}:"]
        for name, dirs in folders.items():
            if dirs:
                value = json.dumps("\n".join(str(d) for d in dirs))
                lines.append(f"  {name}: {value}")
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    def _record(
        self, i: int, port: int, comfy_dir: Path, py: Path, extra_args: list[str], *, gpu_per_server: bool
    ) -> dict[str, Any]:
        server_dir = (self.state_dir / f"server-{i}").resolve()
        argv = [str(py), str(comfy_dir / "main.py")]
        if not gpu_per_server:
            argv.append("--cpu")
        argv += [
            "--listen", "127.0.0.1",
            "--port", str(port),
            "--output-directory", str(server_dir / "out"),
            "--input-directory", str(server_dir / "in"),
            "--temp-directory", str(server_dir / "tmp"),
            "--user-directory", str(server_dir / "user"),
            "--database-url", f"sqlite:///{server_dir / 'db'}",
            "--disable-auto-launch",
            *extra_args,
        ]  # fmt: skip
        return {
            "index": i,
            "port": port,
            "url": f"http://127.0.0.1:{port}",
            "dir": str(server_dir),
            "log": str(server_dir / "server.log"),
            "cwd": str(comfy_dir),
            "argv": argv,
            "env": {"CUDA_VISIBLE_DEVICES": str(i)} if gpu_per_server else {},
            "pid": None,
            "start_time": None,
        }

    @property
    def urls(self) -> list[str]:
        """URLs of all servers on record, in index order (whether or not they run right now)."""
        return [s["url"] for s in self._load()["servers"]]

    def status(self, probe_timeout: float = 2.0) -> list[ServerStatus]:
        """Each server's URL, pid, whether our process runs and whether it answers ``GET /prompt``."""
        result = []
        for rec in self._load()["servers"]:
            alive = self._alive(rec)
            result.append(
                ServerStatus(
                    index=rec["index"],
                    url=rec["url"],
                    pid=rec.get("pid"),
                    alive=alive,
                    answering=alive and answers(rec["url"], timeout=probe_timeout),
                    log=rec["log"],
                )
            )
        return result

    def alive(self, server: int | str) -> bool:
        """True if our process for ``server`` (index or URL) runs; no HTTP probe, so cheap enough to poll."""
        return self._alive(self._server(self._load(), server))

    def kill(self, server: int | str) -> None:
        """SIGKILL ``server``'s (index or URL) process group, like a crash (no cleanup); returns once it is gone.

        A server that is not running (or a pid that is no longer ours) is left alone. The record stays, so
        :meth:`restart` brings it back on the same port with the same folders.
        """
        with self._locked():
            rec = self._server(self._load(), server)
            if self._signal(rec, signal.SIGKILL) and not self._wait_dead(rec, _KILL_TIMEOUT):
                raise LocalPoolError(f"server {server} (pid {rec['pid']}) survived SIGKILL")

    def stop(self, server: int | str, timeout: float = _STOP_TIMEOUT) -> None:
        """Stop ``server`` (SIGTERM, then SIGKILL after ``timeout``); its record and folders stay."""
        with self._locked():
            self._terminate(self._server(self._load(), server), timeout)

    def restart(self, server: int | str, ready_timeout: float = DEFAULT_READY_TIMEOUT, *, wait: bool = True) -> str:
        """(Re)start ``server`` with the same port, folders, flags and environment; returns its URL.

        With ``wait`` (the default) it returns once the server answers ``GET /prompt``. ``wait=False`` returns as
        soon as the process is started (a real ComfyUI needs 9-18 s more), so a caller such as a chaos thread is
        not blocked; :meth:`wait_ready` waits later. The state file names the new pid either way.
        """
        with self._locked():
            state = self._load()
            rec = self._server(state, server)
            self._terminate(rec)
            self._wait_port_free(rec)
            self._launch(rec)
            self._save(state)
            if wait:
                self._wait_ready([rec], ready_timeout)
            return str(rec["url"])

    def wait_ready(
        self, servers: Sequence[int | str] | None = None, timeout: float = DEFAULT_READY_TIMEOUT
    ) -> list[str]:
        """Wait until ``servers`` (default: all) answer ``GET /prompt``; returns their URLs.

        Raises :class:`ServerStartError` with the log tail if one is not running or exits, or on timeout.
        """
        with self._locked():
            state = self._load()
            chosen = state["servers"] if servers is None else [self._server(state, s) for s in servers]
            self._wait_ready(chosen, timeout)
            return [str(rec["url"]) for rec in chosen]

    def _wait_port_free(self, rec: dict[str, Any], timeout: float = _KILL_TIMEOUT) -> None:
        """Poll until the server's port can be bound: a killed group's last process may hold it for a moment."""
        deadline = time.monotonic() + timeout
        while port_in_use(rec["port"]):
            if time.monotonic() >= deadline:
                raise PortInUseError(f"port {rec['port']} for server {rec['index']} is now taken by another process")
            time.sleep(_POLL_INTERVAL)

    def down(self) -> None:
        """Stop every server of the pool (in parallel) and forget it; folders and logs are kept."""
        with self._locked():
            state = self._load()
            recs = [r for r in state["servers"] if self._signal(r, signal.SIGTERM)]
            deadline = time.monotonic() + _STOP_TIMEOUT
            for rec in recs:
                if not self._wait_dead(rec, max(0.0, deadline - time.monotonic())):
                    self._terminate(rec, timeout=0.0)  # escalates to SIGKILL
            self.state_file.unlink(missing_ok=True)
