"""The exceptions users see. Each one says what went wrong and on which server, never with credentials.

They carry structured fields (``server``, ``prompt_id``, per-node details) so the notebook layer can render them
as tables, and a short ``str()`` so scripts get a readable one-liner.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from comfy_notebook.engine.task import Result


class ComfyError(Exception):
    """Base class of every error comfy-notebook raises on purpose."""

    def __init__(self, message: str, *, server: str | None = None, prompt_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.server = server
        self.prompt_id = prompt_id
        #: The partial result (outputs of the nodes that did run) when the server got that far.
        self.result: Result | None = None

    def __str__(self) -> str:
        return self.message


class WorkflowError(ComfyError, ValueError):
    """The workflow could not be read: malformed JSON, UI format, unknown variable, wrong shape."""

    def __init__(self, message: str, *, line: int | None = None, column: int | None = None) -> None:
        super().__init__(message)
        self.line = line
        self.column = column


@dataclass(frozen=True)
class InputError:
    """One failing input of one node, as ComfyUI's validator reported it."""

    type: str
    message: str
    details: str = ""
    input_name: str | None = None


@dataclass(frozen=True)
class NodeError:
    """All validation errors ComfyUI reported for one node."""

    node_id: str
    class_type: str
    errors: tuple[InputError, ...] = field(default_factory=tuple)


class ValidationError(ComfyError):
    """ComfyUI refused the workflow (400), or accepted only part of it (200 with ``node_errors``)."""

    def __init__(
        self,
        message: str,
        nodes: tuple[NodeError, ...] = (),
        *,
        server: str | None = None,
        prompt_id: str | None = None,
        partially_queued: bool = False,
    ) -> None:
        super().__init__(message, server=server, prompt_id=prompt_id)
        self.nodes = nodes
        self.partially_queued = partially_queued


class ExecutionError(ComfyError):
    """A node raised while the server ran the prompt."""

    def __init__(
        self,
        message: str,
        *,
        server: str | None,
        prompt_id: str | None,
        node_id: str | None = None,
        node_type: str | None = None,
        exception_type: str | None = None,
        exception_message: str | None = None,
        traceback: tuple[str, ...] = (),
    ) -> None:
        super().__init__(message, server=server, prompt_id=prompt_id)
        self.node_id = node_id
        self.node_type = node_type
        self.exception_type = exception_type
        self.exception_message = exception_message
        self.traceback = traceback


class PromptInterrupted(ComfyError):
    """The prompt was interrupted on its server (by us, by another client, or by the server)."""


class Cancelled(ComfyError):
    """The prompt was cancelled from this client: ``reset()``, ``task.cancel()`` or a kernel interrupt."""


class ServerUnavailable(ComfyError, ConnectionError):
    """A server could not be reached, answered with a server error, or no server is configured."""

    #: The server refused the connection, or dropped it before any HTTP answer: nothing serves its port (the
    #: process is gone or restarting).
    refused: bool = False


class PromptLost(ComfyError):
    """The prompt's server died, hung or restarted and has neither a history entry nor a queue item for it.

    ``why`` is the short cause shown after a failover ("moved from A to B: A <why>")."""

    def __init__(
        self, message: str, *, server: str | None = None, prompt_id: str | None = None, why: str = "lost it"
    ) -> None:
        super().__init__(message, server=server, prompt_id=prompt_id)
        self.why = why


class NoAffinity(ComfyError):
    """The server URL is a load balancer that spreads our calls over several backends: the prompt's results
    cannot be followed through it. Never retried (every retry would meet the same balancer); the message says how
    to fix the balancer."""


class Moved(ComfyError):
    """Internal: a prompt was taken back from a server's queue before it started, to run on an idle server. The
    engine sends it on at once; users never see this error."""


class ConfigError(ComfyError, ValueError):
    """A configuration mistake (a malformed server URL, an unknown mode or option): fix the call, not the server."""


class NotFound(ComfyError, LookupError):
    """No server of the pool has this node type or model folder (the message names the servers asked)."""


class ProtocolError(ComfyError):
    """A server answered with something ComfyUI never sends (malformed or hostile data)."""


def describe(details: Any, limit: int = 300) -> str:
    """A short, single-line rendering of server-supplied text for error messages."""
    text = " ".join(str(details).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
