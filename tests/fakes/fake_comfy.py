"""A protocol-faithful fake ComfyUI server for fault-injection tests.

The happy path is tested against real ComfyUI; this fake exists to make faults (dropped sockets, close codes,
freezes, restarts, HTTP errors, hostile payloads) deterministic. It follows
docs/protocol.md where a client can observe the difference: routes and their `/api` twins,
the 400/200 `node_errors` shapes, per-clientId event delivery, the order `execution_success` -> history write ->
`status` -> `executing {node: null}`, in-memory queue and history lost on restart, one serial publisher (a slow
reader stalls everybody) and the duplicate-clientId deregistration bug.

Fake node classes: `SaveImage` (output, type "output") and `PreviewImage` (output, type "temp") make PNGs;
`Raise` / `RaiseError` fail with `execution_error` (message from `inputs.message`); `Invalid` makes POST /prompt
answer 400; `PartlyInvalid` answers 200 with non-empty `node_errors` and drops the outputs depending on it. Any
other class_type runs as a plain node. A node's `inputs` may carry `steps` and `step_delay` (or `step_seconds`, as
the real-server `SlowSteps` test node) to override the fake-wide settings, so one workflow suits both servers.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import posixpath
import struct
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

from aiohttp import web
from PIL import Image

OUTPUT_CLASSES = frozenset({"SaveImage", "PreviewImage"})
RAISING_CLASSES = frozenset({"Raise", "RaiseError"})  # RaiseError: the real-server test node's name
KNOWN_CLASSES = ("EmptyImage", "ImageInvert", "SaveImage", "PreviewImage", "Raise", "RaiseError", "SlowSteps")
ALL_SOCKETS = "\x00all"  # publisher target: every open socket, registered or orphaned
_log = logging.getLogger(__name__)
_S = TypeVar("_S", bound="ThreadedAiohttpServer")
QueueItem = tuple[Any, str, dict[str, Any], dict[str, Any], list[str], dict[str, Any]]


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, interval: float = 0.005) -> None:
    """Poll `predicate` until true or raise TimeoutError: a deadline, never a bare sleep, for test sync."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout} s")
        time.sleep(interval)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _image_bytes(seed: int, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (seed * 37 % 256, seed * 91 % 256, 128)).save(buf, format=fmt)
    return buf.getvalue()


def _err(kind: str, message: str, details: str, extra_info: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"type": kind, "message": message, "details": details, "extra_info": extra_info or {}}


def _norm_sub(subfolder: str) -> str | None:
    """Normalised subfolder, or None when it escapes the root (the real server answers 403/400)."""
    full = posixpath.normpath(posixpath.join("/r", subfolder.replace("\\", "/")))
    if full != "/r" and not full.startswith("/r/"):
        return None
    return full[3:]


def _links(node: dict[str, Any]) -> list[str]:
    inputs = node.get("inputs")
    if not isinstance(inputs, dict):
        return []
    return [v[0] for v in inputs.values() if isinstance(v, list) and len(v) == 2 and isinstance(v[0], str)]


def _closure(prompt: dict[str, Any], start: str) -> set[str]:
    """`start` and every node it (transitively) takes input from."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        nid = todo.pop()
        if nid in seen or nid not in prompt:
            continue
        seen.add(nid)
        todo.extend(_links(prompt[nid]))
    return seen


class ThreadedAiohttpServer:
    """An aiohttp app on 127.0.0.1 in its own daemon thread and event loop, driven by a sync API.

    Sync tests can then start, stop and poke servers without an event loop of their own. `freeze()` blocks the
    loop thread itself, which is what SIGSTOP looks like from outside: the kernel still accepts TCP connections
    into the listen backlog, but nothing answers.
    """

    host = "127.0.0.1"

    def __init__(self, port: int = 0) -> None:
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._thaw: threading.Event | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def frozen(self) -> bool:
        return self._thaw is not None

    def start(self) -> str:
        """Serve on `port` (0 picks a free one, kept afterwards so a restart keeps the URL); return the URL."""
        if self._thread is not None:
            raise RuntimeError("already started")
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, daemon=True, name=type(self).__name__)
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._astart(), loop).result(10)
        except BaseException:
            self._shutdown_loop()
            raise
        return self.url

    def stop(self) -> None:
        """Stop like a killed process: open sockets are dropped (1006). Works while frozen (thaws first)."""
        self.thaw()
        if self._loop is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._astop(), self._loop).result(10)
        finally:
            self._shutdown_loop()

    def freeze(self) -> None:
        """Simulate SIGSTOP: block the loop thread until `thaw()`; no HTTP replies, pongs or events."""
        if self._loop is None or self._thaw is not None:
            return
        thaw, entered = threading.Event(), threading.Event()
        self._thaw = thaw

        def block() -> None:
            entered.set()
            thaw.wait()

        self._loop.call_soon_threadsafe(block)
        entered.wait(5)

    def thaw(self) -> None:
        thaw, self._thaw = self._thaw, None
        if thaw is not None:
            thaw.set()

    def __enter__(self: _S) -> _S:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _submit(self, coro: Coroutine[Any, Any, Any], timeout: float = 10) -> None:
        """Run `coro` on the loop; wait for it unless frozen (then it runs at thaw)."""
        if self._loop is None:
            coro.close()
            raise RuntimeError("not started")
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        if not self.frozen:
            fut.result(timeout)

    def _call_soon(self, fn: Callable[[], Any]) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(fn)

    async def _astart(self) -> None:
        self._runner = web.AppRunner(self._build_app(), access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        self.port = self._runner.addresses[0][1]
        await self._on_start()

    async def _astop(self) -> None:
        await self._on_stop()
        if self._runner is not None:
            await self._runner.cleanup()
        me = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not me]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _shutdown_loop(self) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = self._runner = None
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(5)
            loop.close()

    def _build_app(self) -> web.Application:
        raise NotImplementedError

    async def _on_start(self) -> None:
        """Hook: start background tasks."""

    async def _on_stop(self) -> None:
        """Hook: drop connections before the runner cleans up."""


class _Interrupted(Exception):
    pass


class _NodeRaised(Exception):
    pass


class FakeComfy(ThreadedAiohttpServer):
    """Fake ComfyUI 0.3.75. Settings and knobs are plain attributes / thread-safe methods; see module doc."""

    def __init__(self, port: int = 0, *, steps: int = 2, step_delay: float = 0.0, preview: bool = False) -> None:
        super().__init__(port)
        self.steps = steps
        self.step_delay = step_delay
        self.preview = preview
        self.evil_filenames = False  # hostile server: output names/subfolders with `../`, and /view serves them
        self.history_delay = 0.01  # gap execution_success -> history write: fact 1's race, made reliable
        self.require_outputs = True  # real: a prompt without output node is a 400 prompt_no_outputs
        self.max_history = 10_000
        # Introspection for assertions (appended on the loop thread; read them from tests).
        self.posted_prompt_ids: list[str] = []
        self.interrupt_requests: list[str | None] = []  # prompt_id sent, None for a global interrupt
        self.deleted_from_queue: list[str] = []  # ids asked for in POST /queue {"delete"}
        self.uploads: list[tuple[str, str, str]] = []  # (type, subfolder, name)
        self.http_log: list[tuple[str, str]] = []  # (method, path_qs) of every HTTP request
        self.ws_connect_count = 0
        self._lock = threading.Lock()
        self._http_faults: list[list[Any]] = []  # [prefix, status, times_left, method or None]
        self._freeze_faults: list[tuple[str, str | None]] = []  # (prefix, method or None), each used once
        self._held = False
        self._files: dict[tuple[str, str, str], bytes] = {}  # (type, subfolder, filename); survives restarts
        self._save_counter = 0
        self._reset_process_state()

    def _reset_process_state(self, lose_history: bool = True) -> None:
        """What a ComfyUI process keeps only in memory (fact 3)."""
        self._number = 0
        self._queue: list[QueueItem] = []
        self._running: QueueItem | None = None
        self._last_node: str | None = None
        self._interrupt = False
        if lose_history:
            self._history: dict[str, dict[str, Any]] = {}
        self._sockets: dict[str, web.WebSocketResponse] = {}  # by clientId, as the real server keeps them
        self._open: dict[web.WebSocketResponse, Any] = {}  # every open socket -> its transport
        self._flags: dict[str, dict[str, Any]] = {}
        self._files = {k: v for k, v in self._files.items() if k[0] != "temp"}  # temp is wiped at start-up

    # ---- knobs -------------------------------------------------------------------------------------------
    def restart(self, lose_history: bool = True) -> str:
        """Kill and start again on the same port: queue gone, `number` back to 0, history gone by default."""
        self.stop()
        self._reset_process_state(lose_history)
        return self._start_keeping_state()

    def start(self) -> str:
        """A fresh process: empty queue and history (output files on 'disk' survive)."""
        if self._thread is None:
            self._reset_process_state()
        return self._start_keeping_state()

    def _start_keeping_state(self) -> str:
        return super().start()

    def hold(self) -> None:
        """Keep queued prompts pending (the running one finishes)."""
        self._held = True

    def release(self) -> None:
        self._held = False
        self._call_soon(self._wake_worker)

    def fail_http(self, path_prefix: str, status: int = 500, times: int = 1, *, method: str | None = None) -> None:
        """The next `times` requests whose path (without `/api`) starts with `path_prefix` (and whose method is
        `method`, when given) get `status`."""
        prefix = path_prefix[4:] if path_prefix.startswith("/api/") else path_prefix
        with self._lock:
            self._http_faults.append([prefix, status, times, method])

    def freeze_on(self, path_prefix: str, *, method: str | None = None) -> None:
        """SIGSTOP at the worst moment: the next request whose path (without `/api`) starts with `path_prefix` (and
        whose method is `method`, when given) freezes the server as it arrives, as `freeze()` does, until `thaw()`;
        then it is answered."""
        prefix = path_prefix[4:] if path_prefix.startswith("/api/") else path_prefix
        with self._lock:
            self._freeze_faults.append((prefix, method))

    def disarm(self) -> None:
        """Forget every fault injected with `fail_http` and `freeze_on` that has not happened yet."""
        with self._lock:
            self._http_faults.clear()
            self._freeze_faults.clear()

    def close_sockets(self, code: int, reason: str = "") -> None:
        """Send a close frame with `code` on every open WebSocket."""

        async def close_all() -> None:
            tasks = [asyncio.create_task(ws.close(code=code, message=reason.encode())) for ws in list(self._open)]
            if tasks:
                await asyncio.wait(tasks, timeout=1.0)  # the close frames are out; the handshake may finish later

        self._submit(close_all())

    def abort_sockets(self) -> None:
        """Drop every WebSocket's TCP connection without a close frame (the client sees 1006)."""

        async def abort_all() -> None:
            for transport in list(self._open.values()):
                if transport is not None:
                    transport.abort()

        self._submit(abort_all())

    def send_text(self, raw: str) -> None:
        """Inject a raw text frame to every open socket, in order with the regular events."""
        self._call_soon(lambda: self._outbox.put_nowait((raw, ALL_SOCKETS)))

    def send_binary(self, raw: bytes) -> None:
        self._call_soon(lambda: self._outbox.put_nowait((raw, ALL_SOCKETS)))

    # ---- introspection -----------------------------------------------------------------------------------
    @property
    def history_ids(self) -> list[str]:
        return list(self._history)

    def history(self, prompt_id: str) -> dict[str, Any] | None:
        return self._history.get(prompt_id)

    @property
    def pending_prompt_ids(self) -> list[str]:
        return [item[1] for item in list(self._queue)]

    @property
    def running_prompt_id(self) -> str | None:
        running = self._running
        return running[1] if running else None

    @property
    def queue_remaining(self) -> int:
        return len(self._queue) + (self._running is not None)

    # ---- server ------------------------------------------------------------------------------------------
    def _build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._faults], client_max_size=100 * 1024 * 1024)
        routes: list[tuple[str, str, Any]] = [
            ("POST", "/prompt", self._post_prompt),
            ("GET", "/prompt", self._get_prompt),
            ("GET", "/queue", self._get_queue),
            ("POST", "/queue", self._post_queue),
            ("POST", "/interrupt", self._post_interrupt),
            ("GET", "/history", self._get_history),
            ("POST", "/history", self._post_history),
            ("GET", "/history/{prompt_id}", self._get_history_item),
            ("GET", "/view", self._view),
            ("POST", "/upload/image", self._upload),
            ("GET", "/object_info", self._object_info),
            ("GET", "/object_info/{node_class}", self._object_info),
            ("GET", "/system_stats", self._system_stats),
            ("GET", "/features", self._features),
            ("POST", "/free", self._ok),
            ("GET", "/ws", self._ws),
        ]
        for method, path, handler in routes:
            app.router.add_route(method, path, handler)
            app.router.add_route(method, "/api" + path, handler)
        return app

    async def _on_start(self) -> None:
        self._wake = asyncio.Event()
        self._outbox: asyncio.Queue[tuple[str | bytes, str | None]] = asyncio.Queue()
        self._tasks = [asyncio.create_task(self._worker()), asyncio.create_task(self._publisher())]

    async def _on_stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for transport in list(self._open.values()):
            if transport is not None:
                transport.abort()

    @web.middleware
    async def _faults(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.http_log.append((request.method, request.path_qs))
        path = request.path[4:] if request.path.startswith("/api/") else request.path
        status = None
        with self._lock:
            armed = [r for r in self._freeze_faults if path.startswith(r[0]) and r[1] in (None, request.method)]
            freeze = armed[0] if armed else None
            if freeze is not None:
                self._freeze_faults.remove(freeze)
        if freeze is not None and self._thaw is None:  # block this loop thread right here, like a stopped process
            self._thaw = thaw = threading.Event()
            thaw.wait()
        with self._lock:
            for rule in self._http_faults:
                if rule[2] > 0 and path.startswith(rule[0]) and rule[3] in (None, request.method):
                    rule[2] -= 1
                    status = rule[1]
                    break
        if status is not None:
            return web.Response(status=status, text=f"{status}: injected fault")
        resp: web.StreamResponse = await handler(request)
        return resp

    def _queue_info(self) -> dict[str, Any]:
        return {"exec_info": {"queue_remaining": self.queue_remaining}}

    def _emit(self, event: str, data: dict[str, Any], sid: str | None) -> None:
        """Queue a JSON message: to `sid` only, or to every registered socket when `sid` is None."""
        self._outbox.put_nowait((json.dumps({"type": event, "data": data}), sid))

    def _queue_updated(self) -> None:
        self._emit("status", {"status": self._queue_info()}, None)

    def _wake_worker(self) -> None:
        self._wake.set()

    async def _publisher(self) -> None:
        """One serial sender, awaiting each socket in turn: a slow reader stalls everyone (fact 4)."""
        while True:
            payload, sid = await self._outbox.get()
            if sid == ALL_SOCKETS:
                targets = list(self._open)
            elif sid is None:
                targets = list(self._sockets.values())
            else:
                targets = [self._sockets[sid]] if sid in self._sockets else []
            for ws in targets:
                try:
                    if isinstance(payload, bytes):
                        await ws.send_bytes(payload)
                    else:
                        await ws.send_str(payload)
                except (ConnectionError, RuntimeError):
                    pass  # the real server logs and carries on

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()  # real defaults: autoping on, no server pings
        await ws.prepare(request)
        sid = request.query.get("clientId", "")
        if sid:
            self._sockets.pop(sid, None)  # the old socket stays open but orphaned
        else:
            sid = uuid.uuid4().hex
        self._sockets[sid] = ws
        self._open[ws] = request.transport
        self.ws_connect_count += 1
        try:
            await ws.send_str(json.dumps({"type": "status", "data": {"status": self._queue_info(), "sid": sid}}))
            running = self._running
            if running is not None and running[3].get("client_id") == sid and self._last_node is not None:
                await ws.send_str(json.dumps({"type": "executing", "data": {"node": self._last_node}}))
            first = True
            async for msg in ws:
                if msg.type is not web.WSMsgType.TEXT:
                    continue
                try:
                    data = json.loads(msg.data)
                except ValueError:
                    data = None
                if first and isinstance(data, dict) and data.get("type") == "feature_flags":
                    self._flags[sid] = data.get("data") or {}
                    await ws.send_str(json.dumps({"type": "feature_flags", "data": self._server_features()}))
                first = False
        except (ConnectionError, RuntimeError):
            pass
        finally:
            self._sockets.pop(sid, None)  # real bug: also deregisters a newer socket with the same clientId
            self._flags.pop(sid, None)
            self._open.pop(ws, None)
        return ws

    async def _post_prompt(self, request: web.Request) -> web.Response:
        data = await request.json()  # not JSON -> aiohttp's plain-text 500, like the real server
        if "number" in data:
            number: float | int = float(data["number"])
        else:
            number = -self._number if data.get("front") else self._number
            self._number += 1  # counted even when validation fails, as in the real server
        if "prompt" not in data:
            no_prompt = _err("no_prompt", "No prompt provided", "No prompt provided")
            return web.json_response({"error": no_prompt, "node_errors": {}}, status=400)
        prompt = data["prompt"]
        prompt_id = str(data.get("prompt_id", uuid.uuid4()))
        if not isinstance(prompt, dict):
            raise TypeError("prompt must be a dict")  # -> plain-text 500
        ok, error, outputs, node_errors = self._validate(prompt)
        extra: dict[str, Any] = data.get("extra_data", {})
        if "client_id" in data:
            extra["client_id"] = data["client_id"]
        if not ok:
            return web.json_response({"error": error, "node_errors": node_errors}, status=400)
        extra["create_time"] = _now_ms()
        duplicate = any(item[0] == number and item[1] == prompt_id for item in self._queue)
        self._queue.append((number, prompt_id, prompt, extra, outputs, {}))
        self.posted_prompt_ids.append(prompt_id)
        self._queue_updated()
        self._wake_worker()
        if duplicate:  # the real heap compares the prompt dicts next: 500 after the item was queued
            raise TypeError("'<' not supported between instances of 'dict' and 'dict'")
        return web.json_response({"prompt_id": prompt_id, "number": number, "node_errors": node_errors})

    def _validate(self, prompt: dict[str, Any]) -> tuple[bool, dict[str, Any] | None, list[str], dict[str, Any]]:
        for nid, node in prompt.items():
            if not isinstance(node, dict) or "class_type" not in node:
                msg = "Cannot execute because a node is missing the class_type property."
                return False, _err("invalid_prompt", msg, f"Node ID '#{nid}'"), [], {}
        outputs = [nid for nid, node in prompt.items() if node["class_type"] in OUTPUT_CLASSES]
        if not outputs and self.require_outputs:
            return False, _err("prompt_no_outputs", "Prompt has no outputs", ""), [], {}
        node_errors: dict[str, Any] = {}
        dropped: set[str] = set()
        for nid, node in prompt.items():
            if node["class_type"] not in ("Invalid", "PartlyInvalid"):
                continue
            if node["class_type"] == "Invalid":
                deps = list(outputs)
            else:
                deps = [o for o in outputs if nid in _closure(prompt, o)]
            dropped.update(deps)
            value = (node.get("inputs") or {}).get("value")
            reason = _err(
                "value_not_in_list",
                "Value not in list",
                f"value: '{value}' not in ['a', 'b']",
                {"input_name": "value", "input_config": None, "received_value": value},
            )
            node_errors[nid] = {"errors": [reason], "dependent_outputs": deps, "class_type": node["class_type"]}
        good = [o for o in outputs if o not in dropped]
        if node_errors and not good:
            details = "\n".join(f"{e['message']}: {e['details']}" for ne in node_errors.values() for e in ne["errors"])
            error = _err("prompt_outputs_failed_validation", "Prompt outputs failed validation", details)
            return False, error, [], node_errors
        return True, None, good, node_errors

    async def _get_prompt(self, request: web.Request) -> web.Response:
        return web.json_response(self._queue_info())

    async def _get_queue(self, request: web.Request) -> web.Response:
        running = [list(self._running[:5])] if self._running else []
        pending = [list(item[:5]) for item in self._queue]
        return web.json_response({"queue_running": running, "queue_pending": pending})

    async def _post_queue(self, request: web.Request) -> web.Response:
        data = await request.json()
        if data.get("clear"):
            self._queue.clear()
            self._queue_updated()
        for prompt_id in data.get("delete", []):
            self.deleted_from_queue.append(prompt_id)
            for i, item in enumerate(self._queue):
                if item[1] == prompt_id:
                    del self._queue[i]
                    self._queue_updated()
                    break
        return web.Response(status=200)

    async def _post_interrupt(self, request: web.Request) -> web.Response:
        try:
            data = await request.json()
        except ValueError:
            data = {}
        prompt_id = data.get("prompt_id") if isinstance(data, dict) else None
        self.interrupt_requests.append(prompt_id or None)
        if not prompt_id or self.running_prompt_id == prompt_id:
            self._interrupt = True
        return web.Response(status=200)

    async def _get_history(self, request: web.Request) -> web.Response:
        items = list(self._history.items())
        if "max_items" in request.query:
            keep = max(int(request.query["max_items"]), 0)  # the newest `keep`, all of them if there are fewer
            items = items[max(0, len(items) - keep) :] if keep else []
        return web.json_response(dict(items))

    async def _post_history(self, request: web.Request) -> web.Response:
        data = await request.json()
        if data.get("clear"):
            self._history.clear()
        for prompt_id in data.get("delete", []):
            self._history.pop(prompt_id, None)
        return web.Response(status=200)

    async def _get_history_item(self, request: web.Request) -> web.Response:
        prompt_id = request.match_info["prompt_id"]
        entry = self._history.get(prompt_id)
        return web.json_response({prompt_id: entry} if entry is not None else {})

    async def _view(self, request: web.Request) -> web.Response:
        query = request.query
        if "filename" not in query:
            return web.Response(status=404)
        raw = (query.get("type", "output"), query.get("subfolder", ""), query["filename"])
        if self.evil_filenames and raw in self._files:  # a hostile server skips ComfyUI's path checks
            return web.Response(body=self._files[raw], content_type="image/png")
        filename = query["filename"]
        if not filename or filename[0] == "/" or ".." in filename:
            return web.Response(status=400)
        kind = query.get("type", "output")
        if kind not in ("output", "input", "temp"):
            return web.Response(status=400)
        sub = _norm_sub(query.get("subfolder", ""))
        if sub is None:
            return web.Response(status=403)
        body = self._files.get((kind, sub, posixpath.basename(filename)))
        if body is None:
            return web.Response(status=404)
        disposition = f'filename="{posixpath.basename(filename)}"'
        return web.Response(body=body, content_type="image/png", headers={"Content-Disposition": disposition})

    async def _upload(self, request: web.Request) -> web.Response:
        form = await request.post()
        image = form.get("image")
        if not isinstance(image, web.FileField):
            return web.Response(status=400)
        kind = str(form.get("type", "input"))
        if kind not in ("input", "temp", "output"):
            raise ValueError(f"bad upload type {kind!r}")  # real: plain-text 500
        subfolder = str(form.get("subfolder", ""))
        sub = _norm_sub(subfolder)
        name = image.filename
        if sub is None or not name or ".." in name or "/" in name:
            return web.Response(status=400)
        body = image.file.read()
        if str(form.get("overwrite", "")) not in ("true", "1"):
            stem, dot, ext = name.rpartition(".") if "." in name else (name, "", "")
            i = 1
            while (kind, sub, name) in self._files and self._files[(kind, sub, name)] != body:
                name = f"{stem} ({i}){dot}{ext}"
                i += 1
        self._files[(kind, sub, name)] = body
        self.uploads.append((kind, sub, name))
        return web.json_response({"name": name, "subfolder": subfolder, "type": kind})

    async def _object_info(self, request: web.Request) -> web.Response:
        def info(ct: str) -> dict[str, Any]:
            out = ct in OUTPUT_CLASSES
            return {"input": {"required": {}}, "output": [] if out else ["IMAGE"], "name": ct, "display_name": ct,
                    "category": "fake", "output_node": out, "description": ""}  # fmt: skip

        wanted = request.match_info.get("node_class")
        if wanted is None:
            return web.json_response({ct: info(ct) for ct in KNOWN_CLASSES})
        return web.json_response({wanted: info(wanted)} if wanted in KNOWN_CLASSES else {})

    async def _system_stats(self, request: web.Request) -> web.Response:
        system = {"os": "posix", "comfyui_version": "0.3.75", "python_version": "3.11", "pytorch_version": "fake",
                  "embedded_python": False, "argv": ["main.py", "--cpu"], "ram_total": 0, "ram_free": 0}  # fmt: skip
        device = {"name": "cpu", "type": "cpu", "index": None, "vram_total": 0, "vram_free": 0}
        return web.json_response({"system": system, "devices": [device]})

    def _server_features(self) -> dict[str, Any]:
        return {"supports_preview_metadata": True, "max_upload_size": 100 * 1024 * 1024}

    async def _features(self, request: web.Request) -> web.Response:
        return web.json_response(self._server_features())

    async def _ok(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    # ---- execution ---------------------------------------------------------------------------------------
    async def _worker(self) -> None:
        """Run queued prompts one at a time, lowest `number` first (negative = `front`)."""
        while True:
            while self._held or not self._queue:
                self._wake.clear()
                await self._wake.wait()
            index = min(range(len(self._queue)), key=lambda i: self._queue[i][0])
            item = self._queue.pop(index)
            self._running = item
            self._queue_updated()
            try:
                await self._run_item(item)
            except Exception:  # a fake bug must not silently stop the worker for the rest of the test
                _log.exception("fake ComfyUI worker failed on %s", item[1])
            self._running = None
            self._last_node = None

    async def _run_item(self, item: QueueItem) -> None:
        """Execute, then the real tail: history write, `status` broadcast, `executing {node: null}`."""
        status_str, completed, outputs, meta, messages = await self._execute(item)
        await asyncio.sleep(self.history_delay)
        number, prompt_id, prompt, extra, to_execute, _ = item
        self._history[prompt_id] = {
            "prompt": [number, prompt_id, prompt, extra, to_execute],
            "outputs": outputs,
            "status": {"status_str": status_str, "completed": completed, "messages": messages},
            "meta": meta,
        }
        while len(self._history) > self.max_history:
            self._history.pop(next(iter(self._history)))
        self._running = None
        self._queue_updated()
        if extra.get("client_id") is not None:
            self._emit("executing", {"node": None, "prompt_id": prompt_id}, extra["client_id"])

    async def _execute(self, item: QueueItem) -> tuple[str, bool, dict[str, Any], dict[str, Any], list[Any]]:
        _, prompt_id, prompt, extra, to_execute, _ = item
        cid: str | None = extra.get("client_id")
        self._interrupt = False  # a stale interrupt is cleared when a prompt starts, as in the real server
        messages: list[Any] = []
        outputs: dict[str, Any] = {}
        meta: dict[str, Any] = {}
        executed: list[str] = []
        states: dict[str, Any] = {}

        def lifecycle(event: str, data: dict[str, Any], broadcast: bool = False) -> None:
            data = {**data, "timestamp": _now_ms()}
            messages.append([event, data])
            if cid is not None or broadcast:
                self._emit(event, data, cid)

        def progress_state(nid: str, state: str, value: int, maximum: int) -> None:
            states[nid] = {"value": value, "max": maximum, "state": state, "node_id": nid,
                           "prompt_id": prompt_id, "display_node_id": nid, "parent_node_id": None,
                           "real_node_id": nid}  # fmt: skip
            self._emit("progress_state", {"prompt_id": prompt_id, "nodes": dict(states)}, cid)

        bad = {nid for nid, n in prompt.items() if n["class_type"] in ("Invalid", "PartlyInvalid")}
        skip = {nid for nid in prompt if _closure(prompt, nid) & bad}
        skip |= {nid for nid, n in prompt.items() if n["class_type"] in OUTPUT_CLASSES and nid not in to_execute}
        lifecycle("execution_start", {"prompt_id": prompt_id})
        lifecycle("execution_cached", {"nodes": [], "prompt_id": prompt_id})
        nid = ""
        try:
            for nid in self._order(prompt, skip):
                node = prompt[nid]
                inputs = node.get("inputs") if isinstance(node.get("inputs"), dict) else {}
                steps = inputs.get("steps", self.steps)
                steps = steps if isinstance(steps, int) else self.steps
                delay = inputs.get("step_delay", inputs.get("step_seconds", self.step_delay))
                delay = float(delay) if isinstance(delay, (int, float)) else self.step_delay
                if self._interrupt:
                    raise _Interrupted
                progress_state(nid, "running", 0, steps)
                if cid is not None:  # executing/executed go nowhere for a prompt without client_id
                    self._last_node = nid
                    self._emit("executing", {"node": nid, "display_node": nid, "prompt_id": prompt_id}, cid)
                if node["class_type"] in RAISING_CLASSES:
                    raise _NodeRaised(str(inputs.get("message", "Raise node failed on purpose")))
                for step in range(1, steps + 1):
                    await self._step_wait(delay)
                    if self._interrupt:
                        raise _Interrupted
                    progress_state(nid, "running", step, steps)  # real order: state, preview 4, progress, preview 1
                    with_meta = cid is not None and self._flags.get(cid, {}).get("supports_preview_metadata")
                    if self.preview and with_meta:
                        self._emit_preview(prompt_id, nid, cid)
                    self._emit("progress", {"value": step, "max": steps, "prompt_id": prompt_id, "node": nid}, cid)
                    if self.preview and not with_meta:
                        self._emit_preview(prompt_id, nid, cid)
                progress_state(nid, "finished", steps, steps)
                if node["class_type"] in OUTPUT_CLASSES:
                    ui = {"images": [self._make_image(node["class_type"])]}
                    outputs[nid] = ui
                    meta[nid] = {"node_id": nid, "display_node": nid, "parent_node": None, "real_node_id": nid}
                    if cid is not None:
                        data = {"node": nid, "display_node": nid, "output": ui, "prompt_id": prompt_id}
                        self._emit("executed", data, cid)
                executed.append(nid)
        except _Interrupted:
            info = {"prompt_id": prompt_id, "node_id": nid, "node_type": prompt[nid]["class_type"]}
            lifecycle("execution_interrupted", {**info, "executed": executed}, broadcast=True)
            return "error", False, outputs, meta, messages
        except _NodeRaised as exc:
            lifecycle(
                "execution_error",
                {"prompt_id": prompt_id, "node_id": nid, "node_type": prompt[nid]["class_type"],
                 "executed": executed, "exception_message": str(exc), "exception_type": "RuntimeError",
                 "traceback": ['  File "fake_comfy.py", in execute\n', f"RuntimeError: {exc}\n"],
                 "current_inputs": {}, "current_outputs": list(outputs)},
            )  # fmt: skip
            return "error", False, outputs, meta, messages
        lifecycle("execution_success", {"prompt_id": prompt_id})
        return "success", True, outputs, meta, messages

    async def _step_wait(self, delay: float) -> None:
        """One step's work (a subclass may model the device differently, see ``bench/fake_fleet.py``)."""
        await asyncio.sleep(delay)

    @staticmethod
    def _order(prompt: dict[str, Any], skip: set[str]) -> list[str]:
        """Dependencies first, otherwise in the prompt's order."""
        seen: set[str] = set()
        order: list[str] = []

        def visit(nid: str) -> None:
            if nid in seen or nid not in prompt:
                return
            seen.add(nid)
            for dep in _links(prompt[nid]):
                visit(dep)
            if nid not in skip:
                order.append(nid)

        for nid in prompt:
            visit(nid)
        return order

    def _make_image(self, class_type: str) -> dict[str, str]:
        self._save_counter += 1
        n = self._save_counter
        if self.evil_filenames:  # a hostile server: it also serves these names (see _view)
            evil = {"filename": f"../../etc/passwd_{n:05}.png", "subfolder": "../..", "type": "output"}
            self._files[(evil["type"], evil["subfolder"], evil["filename"])] = _image_bytes(n)
            return evil
        kind = "output" if class_type == "SaveImage" else "temp"
        name = f"ComfyUI_{n:05}_.png" if kind == "output" else f"ComfyUI_temp_fake_{n:05}_.png"
        self._files[(kind, "", name)] = _image_bytes(n)
        return {"filename": name, "subfolder": "", "type": kind}

    def _emit_preview(self, prompt_id: str, nid: str, cid: str | None) -> None:
        jpeg = _image_bytes(len(self._history), "JPEG")
        if cid is not None and self._flags.get(cid, {}).get("supports_preview_metadata"):
            info = {"node_id": nid, "prompt_id": prompt_id, "display_node_id": nid, "parent_node_id": None}
            meta = json.dumps({**info, "real_node_id": nid, "image_type": "image/jpeg"}).encode()
            frame = struct.pack(">II", 4, len(meta)) + meta + jpeg
        else:
            frame = struct.pack(">II", 1, 1) + jpeg
        self._outbox.put_nowait((frame, cid))


def running_fake(**settings: Any) -> Iterator[FakeComfy]:
    """Body of a pytest fixture: a started fake that is always stopped, thawed and released first."""
    server = FakeComfy(**settings)
    server.start()
    yield server
    if server.frozen:
        server.thaw()
    server.release()
    server.stop()
