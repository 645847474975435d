"""Fetching output files from the server that wrote them, with a size cap.

``/view`` is the one route whose cost a busy ComfyUI feels most (it serves files through executor threads), so
bulk results fetch their persisted ``output`` files on first use instead of during the burst. That fetch happens
in the caller's thread with a short-lived client, so it works whatever became of the engine in between.
"""

from __future__ import annotations

import logging
import threading

import httpx

from comfy_notebook.core.errors import ProtocolError, ServerUnavailable, describe
from comfy_notebook.core.protocol import ImageRef
from comfy_notebook.core.servers import ServerSpec
from comfy_notebook.engine.loop import THREAD_NAME

log = logging.getLogger(__name__)

#: 400/403: ComfyUI refuses the name (it does for ``..``); that loses this file, not the whole result.
MISSING = (400, 403, 404)


def view_params(ref: ImageRef) -> dict[str, str]:
    return {"filename": ref.filename, "subfolder": ref.subfolder, "type": ref.type}


def fetch_sync(
    spec: ServerSpec, refs: list[ImageRef], *, verify: bool, timeout: float, limit: int
) -> list[bytes | None]:
    """Fetch ``refs`` from ``spec``'s server now, in this thread (None for a file the server does not serve)."""
    if threading.current_thread().name == THREAD_NAME:
        raise RuntimeError("image bytes cannot be fetched on the engine's loop thread; read them from a cell")
    out: list[bytes | None] = []
    with httpx.Client(verify=verify, timeout=timeout, headers=dict(spec.headers)) as client:
        for ref in refs:
            try:
                with client.stream("GET", spec.http_url("/view"), params=view_params(ref)) as response:
                    if response.status_code in MISSING:
                        log.warning("%s did not serve file %r (type %s)", spec.url, ref.filename, ref.type)
                        out.append(None)
                        continue
                    body = b""
                    for chunk in response.iter_bytes():
                        body += chunk
                        if len(body) > limit:
                            raise ProtocolError(f"{spec.url} sent more than {limit} bytes for /view", server=spec.url)
            except httpx.HTTPError as exc:
                raise ServerUnavailable(
                    f"{spec.url} did not answer GET /view: {describe(exc)}", server=spec.url
                ) from None
            if response.status_code >= 400:
                raise ServerUnavailable(
                    f"{spec.url} answered GET /view with HTTP {response.status_code}", server=spec.url
                )
            out.append(body)
    return out
