"""What the pool's servers can run, asked on the engine's loop: node types (``GET /object_info``) and model files
(``GET /models``, ``GET /models/{folder}``), per server, compared between servers.

``/object_info`` is big (about 540 kB, 60 ms on an idle server, 0.7 s under load): it is fetched once per server
and kept, one fetch shared by every caller that asks meanwhile. The copy is dropped when the server may have
restarted (installing a custom node pack means a restart): when the connection's socket generation changed since
the fetch, or its socket was open then and is not now; also when the server leaves the pool and on ``reset()``.
A server we hold no socket to (lock mode, not the locked one) keeps its copy until then. Model lists are never
kept: ComfyUI rescans a folder whose mtime changed, so a file copied onto a server is listed at once, and the
lists are small.

A server that does not answer costs at most its timeout and becomes a note in the answer; the others still answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote

from comfy_notebook.core.errors import ComfyError, ConfigError, NotFound, ProtocolError, ServerUnavailable
from comfy_notebook.core.listing import FOLDER, MODEL, NODE, Disagreement, ModelListing, NodeListing, compare
from comfy_notebook.core.nodes import (
    LEGACY_FOLDERS,
    Catalog,
    NodeInfo,
    join,
    matches,
    parse_names,
    parse_object_info,
    suggest,
)
from comfy_notebook.core.servers import ServerSpec
from comfy_notebook.engine.connection import ServerConnection
from comfy_notebook.engine.runtime import Runtime

T = TypeVar("T")

#: ``/object_info`` took 60-80 ms on an idle CPU server and up to 0.7 s under load; a busy one needs more.
OBJECT_INFO_TIMEOUT = 15.0
#: ``/models`` and ``/models/{folder}`` are a directory listing.
LIST_TIMEOUT = 5.0
_LIST_LIMIT = 16 * 1024 * 1024


@dataclass(eq=False)
class _Cached:
    """One server's ``/object_info`` (the fetch, shared while it runs) and the socket state it was fetched in."""

    fetch: asyncio.Task[tuple[dict[str, Any], Catalog]]
    generation: int
    was_open: bool


class Discovery:
    """Node and model listings of the pool's servers. Create it on the loop thread; every method runs there."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._cache: dict[str, _Cached] = {}
        #: ``GET /object_info`` requests sent, per server: what the cache saved is counted, not assumed.
        self.fetches: Counter[str] = Counter()

    # -- the cache ----------------------------------------------------------------------------------------------------
    def forget(self, server: str | None = None) -> None:
        """Drop the kept ``/object_info`` of ``server`` (of every server when None); a fetch running now still
        answers those already waiting for it."""
        if server is None:
            self._cache.clear()
        else:
            self._cache.pop(server, None)

    def prune(self) -> None:
        """Forget servers that left the pool."""
        for server in [s for s in self._cache if s not in self.rt.pool.records]:
            del self._cache[server]

    def _fresh(self, cached: _Cached, conn: ServerConnection) -> bool:
        fetch = cached.fetch
        if fetch.done() and (fetch.cancelled() or fetch.exception() is not None):
            return False
        return conn.generation == cached.generation and (conn.is_open or not cached.was_open)

    async def catalog(self, spec: ServerSpec) -> tuple[dict[str, Any], Catalog]:
        """The server's ``/object_info`` body and its parsed catalogue, fetched at most once while it is fresh."""
        conn = self.rt.connection(spec)
        cached = self._cache.get(spec.url)
        if cached is None or not self._fresh(cached, conn):
            fetch = asyncio.get_running_loop().create_task(self._fetch(conn))
            fetch.add_done_callback(_retrieve)
            cached = self._cache[spec.url] = _Cached(fetch, conn.generation, conn.is_open)
        try:
            return await asyncio.shield(cached.fetch)
        except ComfyError:
            if self._cache.get(spec.url) is cached:
                del self._cache[spec.url]  # never keep a failure: the next call asks again
            raise

    async def _fetch(self, conn: ServerConnection) -> tuple[dict[str, Any], Catalog]:
        self.fetches[conn.server] += 1
        body = await _within(
            OBJECT_INFO_TIMEOUT, conn, "/object_info", self.rt.api.get_json(conn, "/object_info", OBJECT_INFO_TIMEOUT)
        )
        if not isinstance(body, dict):
            raise ProtocolError(
                f"{conn.server} did not serve /object_info: is it a ComfyUI server?", server=conn.server
            )
        return body, parse_object_info(body, server=conn.server)

    # -- which servers ------------------------------------------------------------------------------------------------
    def _specs(self, server: ServerSpec | None) -> list[ServerSpec]:
        """``server`` (it must be in the pool), else every server of the pool: the locked one first, then the
        others in pool order, those cooling down (known to be failing) last."""
        pool = self.rt.pool
        if server is not None:
            return [pool.get(server.url).spec]
        if not pool.records:
            raise ServerUnavailable("no ComfyUI server is configured: call set_servers([...]) or set COMFY_SERVERS")
        locked = self.rt.lock.route()
        records = sorted(pool.records.values(), key=lambda r: (r.url != locked, pool.cooling(r)))
        return [r.spec for r in records]

    async def _each(
        self, specs: list[ServerSpec], ask: Callable[[ServerSpec], Awaitable[T]]
    ) -> tuple[dict[str, T], dict[str, str]]:
        """``ask`` every server at once: the answers, and why each silent server gave none."""
        outcomes = await asyncio.gather(*(ask(spec) for spec in specs), return_exceptions=True)
        answers: dict[str, T] = {}
        silent: dict[str, str] = {}
        for spec, outcome in zip(specs, outcomes, strict=True):
            if isinstance(outcome, ComfyError):
                silent[spec.url] = str(outcome)
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                answers[spec.url] = outcome
        if not answers:
            raise ServerUnavailable("no server answered: " + "; ".join(silent.values()))
        return answers, silent

    # -- node types ---------------------------------------------------------------------------------------------------
    async def object_info(self, server: ServerSpec | None) -> dict[str, Any]:
        """The raw ``/object_info`` of ``server``, else of the locked server, else of the first server that
        answers (in pool order)."""
        return (await self.defining(server))[1]

    async def defining(self, server: ServerSpec | None) -> tuple[str, dict[str, Any]]:
        """``object_info`` with the URL of the server it came from (errors that use it name that server)."""
        failures = []
        for spec in self._specs(server):
            try:
                return spec.url, (await self.catalog(spec))[0]
            except ComfyError as exc:
                if server is not None:
                    raise
                failures.append(str(exc))
        raise ServerUnavailable("no server answered /object_info: " + "; ".join(failures))

    async def nodes(self, text: str | None, server: ServerSpec | None) -> NodeListing:
        specs = self._specs(server)
        answers, silent = await self._each(specs, self.catalog)
        catalogs = {url: catalog for url, (_, catalog) in answers.items()}
        where: dict[str, tuple[str, ...]] = {}
        chosen: dict[str, NodeInfo] = {}
        for url, catalog in catalogs.items():  # the locked server's description first
            for name, info in catalog.nodes.items():
                where[name] = (*where.get(name, ()), url)
                chosen.setdefault(name, info)
        found = sorted((info for info in chosen.values() if matches(info, text)), key=lambda i: i.name.casefold())
        wanted = {info.name for info in found}
        where = {name: servers for name, servers in where.items() if name in wanted}
        every = compare(NODE, {url: catalog.nodes for url, catalog in catalogs.items()})
        differences = tuple(d for d in every if d.name in wanted)
        missing = {d.name: d for d in differences}
        found = [
            dataclasses.replace(info, missing_on=missing[info.name].missing, notes=(str(missing[info.name]),))
            if info.name in missing
            else info
            for info in found
        ]
        malformed = {url: catalog.malformed for url, catalog in catalogs.items() if catalog.malformed}
        return NodeListing(tuple(found), tuple(catalogs), where, differences, silent, text or None, malformed)

    async def node(self, name: str, server: ServerSpec | None) -> NodeInfo:
        listing = await self.nodes(None, server)
        if name not in listing.where:
            hint = suggest(name, listing.where)
            message = f"no node type {name!r} on {join(listing.servers)}"
            if hint:
                message += f" (did you mean {join(hint)}?)"
            if listing.unreachable:
                message += "; " + "; ".join(listing.unreachable.values())
            raise NotFound(message, server=listing.servers[0] if len(listing.servers) == 1 else None)
        info = listing[name]
        return dataclasses.replace(info, notes=(*info.notes, *listing.unreachable.values()))

    # -- model files --------------------------------------------------------------------------------------------------
    async def _names(self, spec: ServerSpec, path: str, what: str) -> tuple[str, ...] | None:
        """A list of names from ``path``; None for a 404 (ComfyUI's answer for a folder it does not know)."""
        conn = self.rt.connection(spec)
        body = await _within(
            LIST_TIMEOUT, conn, path, self.rt.api.get(conn, path, limit=_LIST_LIMIT, timeout=LIST_TIMEOUT)
        )
        if body is None:
            return None
        try:
            return parse_names(json.loads(body), server=conn.server, what=what)
        except ValueError:
            raise ProtocolError(f"{conn.server} sent malformed JSON for {path}", server=conn.server) from None

    async def models(self, folder: str | None, server: ServerSpec | None) -> ModelListing:
        if folder is not None and (not isinstance(folder, str) or not folder.strip() or "/" in folder):
            raise ConfigError(f"not a model folder name: {folder!r} (try cn.models() for the list)")
        specs = self._specs(server)
        path = "/models" if folder is None else f"/models/{quote(folder, safe='')}"
        what = "list of model folders" if folder is None else f"list of the files in model folder {folder!r}"
        answers, silent = await self._each(specs, lambda spec: self._names(spec, path, what))
        if folder is None:
            listed = {url: names for url, names in answers.items() if names is not None}
            silent.update({url: f"{url} does not serve /models" for url in answers if url not in listed})
            if not listed:
                raise ServerUnavailable("no server lists its model folders: " + "; ".join(silent.values()))
            return ModelListing(None, _union(listed), listed, compare(FOLDER, listed), silent)
        having = {url: names for url, names in answers.items() if names is not None}
        if not having:
            raise NotFound(await self._no_folder(folder, specs, answers, silent))
        lacking = tuple(url for url in answers if url not in having)
        differences: tuple[Disagreement, ...] = compare(MODEL, having, folder=folder)
        if lacking:  # a folder only some servers have (an extra model path of theirs)
            differences = (Disagreement(FOLDER, folder, tuple(having), lacking), *differences)
        listed = {url: names or () for url, names in answers.items()}
        return ModelListing(folder, _union(having), listed, differences, silent)

    async def _no_folder(
        self, folder: str, specs: list[ServerSpec], answers: dict[str, Any], silent: dict[str, str]
    ) -> str:
        """Why ``folder`` was not found, with the folders a server does have (and ComfyUI's legacy names)."""
        message = f"no model folder {folder!r} on {join(list(answers))}"
        folders: tuple[str, ...] = ()
        with contextlib.suppress(ComfyError):
            first = next(s for s in specs if s.url in answers)
            folders = await self._names(first, "/models", "list of model folders") or ()
        hint = [LEGACY_FOLDERS[folder]] if folder in LEGACY_FOLDERS else suggest(folder, folders)
        if hint:
            message += f" (did you mean {join(hint)}?)"
        elif folders:
            message += f" (folders: {', '.join(folders)})"
        return message + "".join(f"; {why}" for why in silent.values())


def _union(per_server: dict[str, tuple[str, ...]]) -> tuple[str, ...]:
    """Every name any server has, in the order the servers list them."""
    return tuple(dict.fromkeys(name for names in per_server.values() for name in names))


async def _within(seconds: float, conn: ServerConnection, path: str, call: Awaitable[T]) -> T:
    """``call`` within ``seconds`` (waiting for a request slot included); a server that takes longer gets a
    ``ServerUnavailable`` naming it, never a hang."""
    try:
        return await asyncio.wait_for(call, seconds)
    except TimeoutError:
        raise ServerUnavailable(
            f"{conn.server} did not answer GET {path} within {seconds:g} s", server=conn.server
        ) from None


def _retrieve(fetch: asyncio.Task[Any]) -> None:
    """A shared fetch whose waiters all left must not log "exception was never retrieved"."""
    if not fetch.cancelled():
        fetch.exception()
