"""Local inputs (``Upload``) put on the server a prompt is bound to, right before its POST: in pool mode that is
when a server has room, and after a failover it is the new server. An upload lives on one server's disk, so sending
it anywhere else is the lost-results bug again.

Each server (and, behind a balancer, each backend it sticks to) gets each file once: concurrent prompts that share
an input wait for the one upload in progress, later ones find it done.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from comfy_notebook.core.errors import ComfyError, ServerUnavailable
from comfy_notebook.core.uploads import Upload, mask_layer, refused, stored_value, too_large
from comfy_notebook.core.workflow import Workflow, uploads_of, with_inputs
from comfy_notebook.engine.connection import ServerConnection
from comfy_notebook.engine.http import ComfyHTTP

log = logging.getLogger(__name__)

_SERVER_DOWN = frozenset({502, 503, 504})


class Uploader:
    """The per-server record of what was uploaded, and the uploads themselves (on the loop thread)."""

    def __init__(self, api: ComfyHTTP) -> None:
        self.api = api
        #: (server, backend generation, upload key) -> the stored file's workflow value, or the upload under way.
        self._stored: dict[tuple[str, int, str], asyncio.Task[str]] = {}
        self._limits: dict[str, int] = {}  # /features max_upload_size per server (0: not declared)
        #: Files sent per server (a shared input counts once per server), for the status.
        self.sent: dict[str, int] = {}

    async def workflow_for(self, conn: ServerConnection, workflow: Workflow) -> Workflow:
        """``workflow`` with every ``Upload`` input replaced by the name of its file on ``conn``'s server."""
        uploads = uploads_of(workflow)
        if not uploads:
            return workflow
        names = await asyncio.gather(*(self.place(conn, upload) for upload in uploads.values()))
        return with_inputs(workflow, dict(zip(uploads, names, strict=True)))

    async def place(self, conn: ServerConnection, upload: Upload) -> str:
        """The workflow value naming ``upload`` on ``conn``'s server, uploading it unless it is there already."""
        key = (conn.server, conn.affinity.backend_changes, upload.key)
        stored = self._stored.get(key)
        if stored is None or (stored.done() and (stored.cancelled() or stored.exception() is not None)):
            stored = self._stored[key] = asyncio.get_running_loop().create_task(self._send(conn, upload))
            stored.add_done_callback(_retrieve)
        # A prompt cancelled while it waits must not cancel the upload other prompts share.
        return await asyncio.shield(stored)

    async def _send(self, conn: ServerConnection, upload: Upload) -> str:
        server = conn.server
        error = too_large(upload, server=server, limit=await self._limit(conn))
        if error is not None:
            raise error
        fields = {"type": "input", "subfolder": "", "overwrite": "false" if upload.named else "true"}
        data, path = upload.data, "/upload/image"
        if upload.kind == "mask" and upload.image is not None:
            # ComfyUI's mask upload: the server stores the image with our layer's alpha as its alpha.
            original = upload.image if isinstance(upload.image, str) else await self.place(conn, upload.image)
            subfolder, _, name = original.rpartition("/")
            fields["original_ref"] = json.dumps({"filename": name, "subfolder": subfolder, "type": "input"})
            fields["overwrite"] = "true"  # its name is made of both digests: a different file never has it
            data, path = mask_layer(upload.data), "/upload/mask"
        status, body = await self.api.upload(conn, path, filename=upload.filename, data=data, mime=upload.mime,
                                             fields=fields)  # fmt: skip
        if status in _SERVER_DOWN:  # a proxy with no live backend: the server's failure, another one may take it
            raise ServerUnavailable(f"{server} answered POST {path} with HTTP {status}", server=server)
        if status >= 400:
            raise refused(status, body, server=server, upload=upload, limit=self._limits.get(server))
        value = stored_value(body, server=server, upload=upload)
        self.sent[server] = self.sent.get(server, 0) + 1
        log.info("uploaded %s to %s as %s", upload.filename, server, value)
        return value

    async def _limit(self, conn: ServerConnection) -> int:
        """The server's declared upload limit (``GET /features``), asked once; 0 when it declares none."""
        limit = self._limits.get(conn.server)
        if limit is None:
            features: Any = None
            with contextlib.suppress(ComfyError):
                features = await self.api.get_json(conn, "/features", timeout=self.api.options.probe_timeout)
            value = features.get("max_upload_size") if isinstance(features, dict) else None
            limit = self._limits[conn.server] = value if isinstance(value, int) and value > 0 else 0
        return limit

    def forget(self, server: str | None = None) -> None:
        """Forget what one server (or every server) holds: removed from the pool, or a manual reset (someone may
        have cleared its input folder)."""
        for key in [k for k in self._stored if server is None or k[0] == server]:
            del self._stored[key]
        if server is None:
            self._limits.clear()
        else:
            self._limits.pop(server, None)


def _retrieve(task: asyncio.Task[str]) -> None:
    """Every prompt waiting for an upload gets its error; this keeps asyncio from logging it as never retrieved
    when all of them were cancelled."""
    if not task.cancelled():
        task.exception()
