"""A real HAProxy or nginx on a loopback port in front of ComfyUI servers, for the tests and benchmarks.

The promise "never lose a result" must hold behind the balancers people use, so the tests run Debian's packages
(``scripts/ensure-balancers.sh``), not a stand-in. Each :class:`Balancer` is our own foreground child process with
its config, pid file, logs and temp folders in a folder of ours (no root paths, no system service), stopped by the
pid we started. Every mode adds ``X-Backend: HOST:PORT`` to each answer, the 101 of a WebSocket included, so a test
sees spreading and stickiness without asking the servers (:func:`backend_of`). Modes, by the affinity they give:

- ``cookie``: HAProxy round robin + ``cookie SRV insert indirect nocache`` (sending the cookie back sticks; a dead
  backend is noticed by 1 s health checks, and ``option redispatch`` moves its clients, with a new cookie);
- ``url_param`` / ``header``: HAProxy consistent hashing on the ``clientId`` query parameter / ``X-Comfy-Affinity``;
- ``roundrobin``: HAProxy round robin per request, no affinity (the setup that loses results);
- ``hash``: nginx ``hash $arg_clientId consistent`` with WebSocket proxying.
"""

from __future__ import annotations

import grp
import os
import pwd
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

from comfy_notebook.tools.local_pool import find_free_base_port, port_in_use

Mode = Literal["cookie", "url_param", "header", "roundrobin", "hash"]
MODES: tuple[Mode, ...] = ("cookie", "url_param", "header", "roundrobin", "hash")
HAPROXY = "/usr/sbin/haproxy"  # where Debian's packages put them (scripts/ensure-balancers.sh)
NGINX = "/usr/sbin/nginx"
BACKEND_HEADER = "X-Backend"
AFFINITY_HEADER = "X-Comfy-Affinity"
AFFINITY_PARAM = "clientId"  # the query parameter ComfyUI's /ws already carries
COOKIE_NAME = "SRV"
_STOP_TIMEOUT = 5.0
_POLL_INTERVAL = 0.05
_PORT_ATTEMPTS = 5
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never an environment proxy

_HAPROXY_BALANCE: dict[str, str] = {
    "cookie": f"balance roundrobin\n    cookie {COOKIE_NAME} insert indirect nocache",
    "url_param": f"balance url_param {AFFINITY_PARAM}\n    hash-type consistent",
    "header": f"balance hdr({AFFINITY_HEADER})\n    hash-type consistent",
    "roundrobin": "balance roundrobin",
}

# Long client/server/tunnel timeouts: a ComfyUI socket is quiet between prompts and a prompt may run for minutes.
# Checks every second, down after 3 failures, each allowed 5 s: a killed backend refuses at once and is down in
# about 3 s (redispatch covers the requests meanwhile), while a busy one stalled by ComfyUI's garbage collection
# (a second or more on a loaded machine) is not taken out; 0.5 s checks with the default check timeout flapped.
_HAPROXY_TEMPLATE = """\
global
    maxconn 4096
    log stderr format raw local0 info

defaults
    mode http
    log global
    option httplog
    timeout connect 2s
    timeout client 10m
    timeout server 10m
    timeout tunnel 1h
    timeout http-request 30s
    timeout check 5s
    retries 2
    option redispatch

frontend comfy
    bind 127.0.0.1:{port}
    default_backend comfy

backend comfy
    {balance}
    option httpchk GET {check_path}
    http-response set-header {backend_header} %si:%sp
{servers}
"""

# Buffering off both ways and no body limit: uploads and images stream through. The Upgrade/Connection pair makes
# /ws a WebSocket; `always` puts X-Backend on every status, not only 2xx/3xx.
_NGINX_TEMPLATE = """\
user {user} {group};
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;

events {{ worker_connections 1024; }}

http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/tmp/client_body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;

    map $http_upgrade $connection_upgrade {{
        default upgrade;
        '' close;
    }}

    upstream comfy {{
        hash $arg_{param} consistent;
{servers}
    }}

    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 0;
        location / {{
            proxy_pass http://comfy;
            proxy_http_version 1.1;
            proxy_set_header Host $http_host;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;
            add_header {backend_header} $upstream_addr always;
        }}
    }}
}}
"""


class _Headers(Protocol):  # a Mapping, http.client's HTTPMessage, websockets' Headers, httpx's Headers
    def items(self) -> Iterable[tuple[str, Any]]: ...


class BalancerError(RuntimeError):
    """The balancer could not be started or did not answer; the message ends with its log tail."""


def _host_port(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname or parts.port is None:
        raise ValueError(f"backend {url!r} is not http://HOST:PORT")
    return f"{parts.hostname}:{parts.port}"


def render_config(
    mode: Mode, backends: Sequence[str], port: int, state_dir: Path, *, check_path: str = "/prompt", checks: bool = True
) -> str:
    """The config file text for ``mode``: readable, and pure, so tests can look at it without a balancer.
    ``checks=False`` leaves HAProxy blind to a dead backend until a connect fails, so redispatch alone must cope
    (nginx has no active checks: it marks a backend failed after one error, ``max_fails=1``)."""
    addrs = [_host_port(b) for b in backends]
    if not addrs:
        raise ValueError("a balancer needs at least one backend")
    if mode == "hash":
        servers = "\n".join(f"        server {a} max_fails=1 fail_timeout=2s;" for a in addrs)
        return _NGINX_TEMPLATE.format(
            user=pwd.getpwuid(os.geteuid()).pw_name,  # nginx started as root would switch workers to nobody,
            group=grp.getgrgid(os.getegid()).gr_name,  # who cannot read our private folders
            dir=state_dir, param=AFFINITY_PARAM, servers=servers, port=port, backend_header=BACKEND_HEADER,
        )  # fmt: skip
    if mode not in _HAPROXY_BALANCE:
        raise ValueError(f"unknown balancer mode {mode!r}; one of {', '.join(MODES)}")
    check = " check inter 1s fall 3 rise 2" if checks else ""
    cookie = " cookie s{}" if mode == "cookie" else ""
    servers = "\n".join(f"    server s{i} {a}{check}{cookie.format(i)}" for i, a in enumerate(addrs))
    return _HAPROXY_TEMPLATE.format(
        port=port, balance=_HAPROXY_BALANCE[mode], check_path=check_path, backend_header=BACKEND_HEADER,
        servers=servers,
    )  # fmt: skip


def backend_of(headers: _Headers) -> str:
    """The backend URL that served a response, from its ``X-Backend`` header (nginx lists every upstream it
    tried; the last one answered). ``KeyError`` if there is none: the answer did not come through a backend."""
    for key, value in headers.items():
        if key.lower() == BACKEND_HEADER.lower():
            return "http://" + str(value).split(",")[-1].strip()
    raise KeyError(BACKEND_HEADER)


class Balancer:
    """One HAProxy or nginx process in front of ``backends`` on a free loopback port; a context manager::

    with Balancer("cookie", pool.urls, tmp_path / "lb") as lb:
        urllib.request.urlopen(f"{lb.url}/queue")
    """

    def __init__(
        self, mode: Mode, backends: Sequence[str], state_dir: Path | str, *, port: int | None = None,
        check_path: str = "/prompt", checks: bool = True,
    ) -> None:  # fmt: skip
        if mode not in MODES:
            raise ValueError(f"unknown balancer mode {mode!r}; one of {', '.join(MODES)}")
        self.mode: Mode = mode
        self.backends = [b.rstrip("/") for b in backends]
        self.state_dir = Path(state_dir).resolve()
        self.port = self._fixed_port = port
        self.check_path = check_path
        self.checks = checks
        self.log = self.state_dir / "balancer.log"  # stdout and stderr; nginx also writes error.log beside it
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Balancer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self.port is None:
            raise BalancerError("the balancer has not been started")
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> str:
        """Write the config, launch, wait until it answers; returns the URL. Without a fixed ``port`` a free one is
        chosen, and chosen again if another process takes it before the balancer binds it."""
        if self.alive():
            raise BalancerError(f"the balancer is already running (pid {self.pid})")
        attempts = 1 if self._fixed_port else _PORT_ATTEMPTS
        for attempt in range(attempts):
            self.port = port = self._fixed_port or find_free_base_port(1)
            self._launch(port)
            try:
                self.wait_ready(timeout)
                return self.url
            except BalancerError:
                self.stop()
                if attempt == attempts - 1 or not port_in_use(port):
                    raise
        raise AssertionError("unreachable: the last attempt returned or raised")

    def _launch(self, port: int) -> None:
        (self.state_dir / "tmp").mkdir(parents=True, exist_ok=True)
        config = self.state_dir / ("nginx.conf" if self.mode == "hash" else "haproxy.cfg")
        text = render_config(
            self.mode, self.backends, port, self.state_dir, check_path=self.check_path, checks=self.checks
        )
        config.write_text(text, encoding="utf-8")
        if self.mode == "hash":  # -e: where errors go before the config is read (else /var/log/nginx)
            argv = [NGINX, "-p", str(self.state_dir), "-e", str(self.state_dir / "error.log"), "-c", str(config)]
            argv += ["-g", "daemon off;"]
        else:
            argv = [HAPROXY, "-db", "-f", str(config)]
        if not Path(argv[0]).is_file():
            raise BalancerError(f"{argv[0]} is missing: run scripts/ensure-balancers.sh (make balancers)")
        with self.log.open("ab") as fh:  # own session: stopped as a group, and a Ctrl-C elsewhere does not reach it
            self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fh, stderr=fh, start_new_session=True)

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Poll until ``GET {check_path}`` through the balancer returns 200; fail fast if the process exits."""
        deadline = time.monotonic() + timeout
        while True:
            if self._proc is None or self._proc.poll() is not None:
                code = None if self._proc is None else self._proc.returncode
                raise BalancerError(f"{self.mode} balancer exited with code {code} before answering{self._tail()}")
            try:
                with _HTTP.open(f"{self.url}{self.check_path}", timeout=1.0) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() >= deadline:
                raise BalancerError(f"{self.mode} balancer {self.url} did not answer in {timeout:.0f} s{self._tail()}")
            time.sleep(_POLL_INTERVAL)

    def stop(self) -> None:
        """SIGTERM our process group, SIGKILL if it lingers; only while our child is unreaped, so its pid (and
        group id) cannot have been recycled for someone else."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            os.killpg(proc.pid, sig)
            try:
                proc.wait(_STOP_TIMEOUT)
                return
            except subprocess.TimeoutExpired:
                pass
        raise BalancerError(f"{self.mode} balancer (pid {proc.pid}) survived SIGKILL")

    def _tail(self, lines: int = 30) -> str:
        paths = [p for p in (self.log, self.state_dir / "error.log") if p.is_file()]
        tail = "\n".join(p.read_text(encoding="utf-8", errors="replace") for p in paths).splitlines()[-lines:]
        return ":\n" + "\n".join(tail) if tail else " (no log)"
