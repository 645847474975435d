"""Turn a finished prompt into a ``Result`` (or its error): history and output files from the prompt's own server,
never from another one."""

from __future__ import annotations

import asyncio
import functools
import logging
import time

from comfy_notebook.core import protocol as wire
from comfy_notebook.core.affinity import no_affinity_message
from comfy_notebook.core.errors import (
    ComfyError,
    NoAffinity,
    PromptInterrupted,
    PromptLost,
    ProtocolError,
    ServerUnavailable,
)
from comfy_notebook.engine.connection import Flight, ServerConnection
from comfy_notebook.engine.http import ComfyHTTP, HttpOptions, fetch_files
from comfy_notebook.engine.task import Result

log = logging.getLogger(__name__)


def is_plain_name(filename: str) -> bool:
    """A file name a server serves as it is (a hostile one with ``..`` or separators is refused, not missing)."""
    return bool(filename) and ".." not in filename and "/" not in filename and "\\" not in filename


async def collect(
    api: ComfyHTTP,
    flight: Flight,
    conn: ServerConnection,
    entry: wire.HistoryEntry | None,
    *,
    retry_delays: tuple[float, ...],
    http: HttpOptions,
) -> Result:
    """The result of ``flight`` on ``conn``; raises the prompt's error (execution, interrupt) with the partial
    result attached."""
    task, prompt_id = flight.task, flight.prompt_id
    if conn.affinity.broken:  # its history and files may come from any backend: nothing read through it is proof
        message = no_affinity_message(conn.server, conn.affinity.broken)
        raise NoAffinity(message, server=conn.server, prompt_id=prompt_id)
    for i, delay in enumerate(retry_delays):  # transient failures and the history-write race get a few tries
        if entry is not None:
            break
        await asyncio.sleep(delay)
        try:
            entry = await api.history(conn, prompt_id)
        except ServerUnavailable as exc:
            if exc.refused or not conn.is_open or i == len(retry_delays) - 1:
                # The server died after finishing the prompt: its result went with it, another server can run it.
                raise PromptLost(
                    f"prompt {prompt_id} is lost: {conn.server} finished it but cannot be asked for its result "
                    f"({exc.message})",
                    server=conn.server,
                    prompt_id=prompt_id,
                    why="became unreachable",
                ) from None
    if entry is None and conn.generation != flight.generation:
        # The socket was lost and reopened since the POST: the server restarted after finishing the prompt and
        # took its history along. The result is gone, not malformed: another server can run it again.
        raise PromptLost(
            f"prompt {prompt_id} is lost: {conn.server} finished it but restarted before its history was read",
            server=conn.server,
            prompt_id=prompt_id,
            why="restarted and forgot the prompt",
        )
    if entry is None and conn.affinity.broken:
        message = no_affinity_message(conn.server, conn.affinity.broken)
        raise NoAffinity(message, server=conn.server, prompt_id=prompt_id)
    if entry is None:
        raise ProtocolError(
            f"{conn.server} reported prompt {prompt_id} finished but has no history for it",
            server=conn.server,
            prompt_id=prompt_id,
        )
    # Every kind of file (images, animations, videos, audio, 3D, ...). A fully cached re-run lists the first run's
    # files again: ComfyUI records cached nodes' outputs for every prompt posted with a client id, as all of ours
    # are (docs/protocol.md). Temp files are wiped when a server restarts, so they come now; so does everything
    # for prompts someone watches. Bulk (quiet) results fetch files the server keeps on disk on first use.
    refs = entry.files()
    now = [ref for ref in refs if not flight.quiet or ref.type != "output"]
    data = await asyncio.gather(*(api.view(conn, ref) for ref in now))
    fetched = {ref: blob for ref, blob in zip(now, data, strict=True) if blob is not None}
    unserved = [ref.filename for ref in now if ref not in fetched and is_plain_name(ref.filename)]
    if unserved and conn.generation == flight.generation:
        # A file its own history lists, with a plain name, and the socket never dropped: a single ComfyUI serves
        # it, so this URL is several backends. A result with files missing is never a success.
        what = f"it did not serve {unserved[0]!r}, an output its history lists"
        if conn.affinity.vanished(what):
            log.warning("%s", no_affinity_message(conn.server, conn.affinity.broken or ""))
        message = no_affinity_message(conn.server, conn.affinity.suspicion(what))
        raise NoAffinity(message, server=conn.server, prompt_id=prompt_id)
    result = Result(
        prompt_id,
        conn.server,
        entry.status,
        outputs=entry.outputs,
        refs=refs,
        fetched=fetched,
        fetch=functools.partial(
            fetch_files, conn.spec, http, affinity=(conn.affinity.headers(), conn.affinity.params())
        ),
        elapsed=time.time() - task.submitted_at,
    )
    if entry.status == "success":
        return result
    if entry.status == "interrupted":
        error: ComfyError = PromptInterrupted(
            f"prompt {prompt_id} was interrupted on {conn.server}", server=conn.server, prompt_id=prompt_id
        )
    else:
        error = entry.error(conn.server) or ComfyError(
            f"prompt {prompt_id} failed on {conn.server}", server=conn.server, prompt_id=prompt_id
        )
    error.result = result
    raise error
