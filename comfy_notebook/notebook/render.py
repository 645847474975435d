"""Text and HTML renderings of status dicts, tasks, results and errors: pure functions, no widgets, no I/O.

The widgets (panel, progress) display these strings live; terminal IPython, nbconvert and GitHub's viewer see the
same strings as static ``text/plain`` / ``text/html``. Everything shown goes through ``html.escape`` and URLs
through ``public_url`` so neither markup from a server nor credentials can reach the page.
"""

from __future__ import annotations

import html
import re
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from comfy_notebook.core.errors import ComfyError, ExecutionError, ValidationError, WorkflowError
from comfy_notebook.notebook import media, theme

if TYPE_CHECKING:
    from comfy_notebook.engine.task import Result, Task

#: ``scheme://user:pass@`` -> ``scheme://``: belt and braces, the engine never hands out credentials.
_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/\s@]*@")
#: ``?token=...`` and friends in any URL-looking text.
_SECRET_QUERY = re.compile(r"(?i)([?&](?:token|key|api_key|apikey|access_token|password|auth)=)[^&\s]*")

MAX_INLINE_IMAGES = 16


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def scrub(text: str) -> str:
    """Remove URL userinfo and secret-looking query values from free text (errors, server names)."""
    return _SECRET_QUERY.sub(r"\1***", _USERINFO.sub(r"\1", text))


def public_url(url: object) -> str:
    return "" if url is None else scrub(str(url))


def format_duration(seconds: float | None, *, precise: bool = False) -> str:
    """``4 s``, ``2 min 5 s``, ``1 h 3 min``; ``precise`` gives ``2.31 s`` under a minute."""
    if seconds is None:
        return "-"
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.2f} s" if precise else f"{int(seconds)} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def first_line(text: str, limit: int = 200) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


# -- status (the panel and `%comfy servers`) ---------------------------------------------------------------------------
def _health(entry: Mapping[str, Any]) -> str:
    cooldown = entry.get("cooldown_remaining") or 0
    if entry.get("healthy", True):
        return "ok"
    return f"down (retry in {cooldown:.0f} s)" if cooldown else "down"


def _affinity(entry: Mapping[str, Any]) -> str:
    """How our calls stay on one backend behind a balancer (and how often it moved us)."""
    mode = entry.get("affinity")
    if not mode:
        return ""
    text = "NONE: a balancer without affinity" if mode == "broken" else str(mode)
    changes = entry.get("backend_changes") or 0
    return f"{text}, moved {changes}x" if changes else text


def _error(entry: Mapping[str, Any]) -> str:
    return scrub(str(entry.get("affinity_error") or entry.get("last_error") or ""))


def _locked_line(status: Mapping[str, Any]) -> str:
    locked = status.get("locked_server")
    return f"locked: {public_url(locked)}" if locked else "locked: none"


def _lock_age(status: Mapping[str, Any]) -> str:
    return format_duration(status.get("lock_duration")) if status.get("locked_server") else "-"


MODE_HINTS = {
    "lock": "one server at a time: new prompts go to the locked server",
    "pool": "every server at once: prompts wait here for a server with room",
}


def mode_text(mode: str) -> str:
    """``%comfy mode``: the mode and what it means."""
    hint = MODE_HINTS.get(mode)
    return f"mode: {mode} ({hint})" if hint else f"mode: {mode}"


def _queue_facts(status: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(css class, text) of the summary's work counters: pending always; the client-side queue in pool mode (or
    while anything waits there); failover totals once there are any."""
    facts = [("comfy-pending", f"pending tasks: {status.get('pending_tasks_count', 0)}")]
    waiting = status.get("waiting") or 0
    if status.get("mode") == "pool" or waiting:
        facts.append(("comfy-waiting", f"waiting: {waiting}"))
    for key in ("retries", "duplicates"):
        if status.get(key):
            facts.append((f"comfy-{key}", f"{key}: {status[key]}"))
    return facts


#: Per-server counters of our prompts: (status key, column title, tooltip). ``queue`` is the server's own queue
#: (every client's prompts); the others count only ours.
_COUNTERS = (
    ("queue_remaining", "queue", "the server's queue: every client's prompts, running or waiting"),
    ("running", "running", "our prompts running there now"),
    ("queued", "queued", "our prompts in its queue"),
    ("done", "done", "our prompts it finished"),
    ("failed", "failed", "our prompts that failed there"),
    ("retried", "retried", "our prompts moved to another server after this one lost them"),
)
_DUPLICATES = ("duplicates", "duplicates", "prompts it finished after they had been moved away (ignored)")


def _counters(servers: Sequence[Mapping[str, Any]]) -> tuple[tuple[str, str, str], ...]:
    """The counter columns; duplicates only when a server has any (they are rare and otherwise noise)."""
    return (*_COUNTERS, _DUPLICATES) if any(entry.get("duplicates") for entry in servers) else _COUNTERS


def status_text(status: Mapping[str, Any]) -> str:
    """The status as plain text: summary lines, then one line per server."""
    mode = f"mode: {status['mode']}  " if status.get("mode") else ""
    lines = [
        f"comfy-notebook  {mode}{_locked_line(status)}  (lock age {_lock_age(status)})",
        f"  connected: {'yes' if status.get('is_connected') else 'no'}  "
        f"connection: {status.get('connection_state', '?')}  " + "  ".join(text for _, text in _queue_facts(status)),
    ]
    servers: Sequence[Mapping[str, Any]] = status.get("servers") or ()
    if not servers:
        lines.append("  no servers: %comfy servers URL ... (or COMFY_SERVERS)")
    columns = _counters(servers)
    for entry in servers:
        mark = "*" if entry.get("locked") else " "
        counts = "  ".join(f"{title} {entry.get(key) or 0}" for key, title, _ in columns)
        error = f"  last error: {_error(entry)}" if _error(entry) else ""
        affinity = f"  affinity: {_affinity(entry)}" if _affinity(entry) else ""
        lines.append(
            f" {mark}{public_url(entry.get('url'))}  {_health(entry)}  {counts}  "
            f"{entry.get('connection_state', '?')}{affinity}{error}"
        )
    return "\n".join(lines)


def status_html(status: Mapping[str, Any]) -> str:
    """The status as HTML for the panel: the mode, the lock and the connection as badges, then one table row per
    server; stable for equal input so the panel can skip unchanged writes."""
    mode = status.get("mode")
    locked = status.get("locked_server")
    connected = bool(status.get("is_connected"))
    pieces = (
        [theme.wrap_badge(f'<b class="comfy-mode comfy-mode-{esc(mode)}">mode: {esc(mode)}</b>', "busy",
                          title=MODE_HINTS.get(str(mode), ""))]
        if mode
        else []
    )  # fmt: skip
    pieces += [
        theme.wrap_badge(f'<b class="comfy-locked">{esc(_locked_line(status))}</b>', "info" if locked else "neutral"),
        f'<span class="comfy-lock-age">lock age: {esc(_lock_age(status))}</span>',
        theme.badge(f"connected: {'yes' if connected else 'no'}", "ok" if connected else "neutral", "comfy-connected"),
        f'<span class="comfy-connection">connection: {esc(status.get("connection_state", "?"))}</span>',
    ]
    pieces += [f'<span class="{css}">{esc(text)}</span>' for css, text in _queue_facts(status)]
    flex = "display:flex;flex-wrap:wrap;align-items:center;gap:4px 12px"
    summary = f'<div class="comfy-status-summary" style="{flex}">{"".join(pieces)}</div>'
    servers: Sequence[Mapping[str, Any]] = status.get("servers") or ()
    if not servers:
        body = '<div class="comfy-no-servers">no servers: <code>%comfy servers URL ...</code></div>'
        return f'<div class="comfy-status" style="{theme.box_style()}">{summary}{body}</div>'
    columns = _counters(servers)
    titles = [
        ("server", ""),
        ("health", ""),
        *((t, tip) for _, t, tip in columns),
        ("connection", ""),
        ("affinity", "behind a balancer: how our calls reach one backend (cookie or key), and backend moves"),
        ("last error", ""),
    ]
    head = "".join(f'<th title="{esc(tip)}">{esc(t)}</th>' if tip else f"<th>{esc(t)}</th>" for t, tip in titles)
    rows = []
    for entry in servers:
        locked_here = entry.get("locked")
        cells = (
            public_url(entry.get("url")) + (" (locked)" if locked_here else ""),
            _health(entry),
            *(entry.get(key) or 0 for key, _, _ in columns),
            entry.get("connection_state", "?"),
            _affinity(entry),
            _error(entry),
        )
        css = "comfy-server-row" + (" comfy-server-locked" if locked_here else "")
        css += "" if entry.get("healthy", True) else " comfy-server-down"  # the health dot's colour (theme.py)
        rows.append(f'<tr class="{css}">' + "".join(f"<td>{esc(c)}</td>" for c in cells) + "</tr>")
    table = f'<table class="comfy-status-servers"><tr>{head}</tr>{"".join(rows)}</table>'
    style = theme.table_css("comfy-status-servers")
    return f'<div class="comfy-status" style="{theme.box_style()}">{style}{summary}{table}</div>'


def servers_text(status: Mapping[str, Any]) -> str:
    servers: Sequence[Mapping[str, Any]] = status.get("servers") or ()
    if not servers:
        return "no servers configured: %comfy servers URL ... (or set COMFY_SERVERS)"
    lines = [f"servers ({len(servers)}):"]
    for entry in servers:
        lines.append(f"  {public_url(entry.get('url'))}{'  (locked)' if entry.get('locked') else ''}")
    return "\n".join(lines)


def reset_outcome(before: Mapping[str, Any], after: Mapping[str, Any], *, now: float | None = None) -> str:
    """``reset: lock cleared (was URL), 2 tasks cancelled (12:03:04)``: what the manual reset changed."""
    locked = before.get("locked_server")
    lock = f"lock cleared (was {public_url(locked)})" if locked else "no lock was held"
    if after.get("locked_server"):  # cannot happen with the engine's reset, but never claim what is not true
        lock = f"lock still held by {public_url(after['locked_server'])}"
    count = int(before.get("pending_tasks_count") or 0)
    stamp = time.strftime("%H:%M:%S", time.localtime(now))
    return f"reset: {lock}, {count} task{'s' if count != 1 else ''} cancelled ({stamp})"


# -- tasks ------------------------------------------------------------------------------------------------------------
def task_where(task: Task) -> str:
    """``on URL``, or ``(waiting for a server)`` while a pool-mode prompt has none yet."""
    return f"on {public_url(task.server)}" if task.server else "(waiting for a server)"


def _task_state(task: Task) -> str:
    """Where the prompt is: ``running on URL``, ``waiting for a server (position 2)`` (1 = next to go), ..."""
    if task.status == "waiting":
        position = task.queue_position
        return "waiting for a server" + (f" (position {position + 1})" if position is not None else "")
    if task.status == "pending" and task.server:
        return f"sending to {public_url(task.server)}"
    if task.status in ("queued", "running") and task.server:
        return f"{task.status} on {public_url(task.server)}"
    return task.status


def _task_parts(task: Task, *, precise: bool) -> list[tuple[str, str]]:
    """(css class, text) pieces of a one-line task summary."""
    parts = [(f"comfy-state comfy-state-{task.status}", _task_state(task))]
    if task.server and task.status not in ("pending", "queued", "running"):
        parts.append(("comfy-server", f"server: {public_url(task.server)}"))
    if task.status in ("pending", "queued") and task.queue_position is not None:
        parts.append(("comfy-queue", f"queue: {task.queue_position} ahead"))
    if task.status == "running" and task.node is not None:
        parts.append(("comfy-node", f"node: {task.node_class or '?'} (#{task.node})"))
        if task.progress is not None and task.progress.max > 0:
            parts.append(("comfy-steps", f"step {task.progress.value}/{task.progress.max}"))
    if task.moved:  # after a failover: "moved from A to B: A stopped answering"
        parts.append(("comfy-moved", scrub(task.moved)))
    if task.done() and len(task.attempts) > 1:
        parts.append(("comfy-attempts", f"{len(task.attempts)} attempts"))
    if task.error is not None and task.status not in ("success", "cancelled"):  # the badge says "cancelled"
        parts.append(("comfy-error", first_line(scrub(str(task.error)))))
    parts.append(("comfy-elapsed", f"elapsed: {format_duration(task.elapsed, precise=precise)}"))
    return parts


def task_text(task: Task) -> str:
    done = task.done()
    return f"comfy prompt {task.prompt_id}: " + " | ".join(text for _, text in _task_parts(task, precise=done))


_DOT = " &middot; "


def task_html(task: Task) -> str:
    """The progress widget's text line (and a Task's static HTML): the state as a coloured badge, then the facts."""
    (state_css, state), *facts = _task_parts(task, precise=task.done())
    spans = [theme.badge(state, theme.state_tone(task.status), state_css)]
    for css, text in facts:
        color = f' style="color:{theme.TONES["error"][0]}"' if css == "comfy-error" else ""
        spans.append(f'<span class="{css}"{color}>{esc(text)}</span>')
    return f'<div class="comfy-task" style="{theme.box_style(padding="2px 0")}">{_DOT.join(spans)}</div>'


def bar_style(status: str) -> str:
    return {"success": "success", "error": "danger", "interrupted": "warning", "cancelled": "warning"}.get(status, "")


# -- results ----------------------------------------------------------------------------------------------------------
def result_text(result: Result) -> str:
    """The summary line, one line per file (stills by name, other media with what they are) and per text."""
    lines = [
        f"comfy prompt {result.prompt_id}: {result.status} on {public_url(result.server)} "
        f"in {format_duration(result.elapsed, precise=True)}, {media.counts(result)}"
    ]
    for file in result.files:
        what = "" if file.is_still_image else f"  ({media.noun(file)})"
        lines.append(f"  {media.where(file)}{what}")
    for node_id, strings in result.texts.items():
        lines += [f"  text (node {node_id}): {first_line(text, 100)}" for text in strings]
    return "\n".join(lines)


def result_html(result: Result, *, max_images: int = MAX_INLINE_IMAGES) -> str:
    """Summary, then every file inline (images and animations as ``<img>``, ``<video>``, ``<audio>``; others as a
    line) and the texts, so a saved notebook shows the outcome without a kernel. At most ``max_images`` media are
    embedded, within ``media.MAX_INLINE_*`` bytes; what is left out is said."""
    here, problem = media.available(result)
    budget = media.Budget(items=max_images)
    pieces = []
    for file in result.files:
        if file in here:
            pieces.append(media.file_html(file, budget))
        elif problem:
            pieces.append(media.file_line(file, f"not fetched: {first_line(scrub(problem))}"))
        else:
            pieces.append(media.file_line(file, f"not served by {public_url(result.server)}"))
    state = theme.badge(result.status, theme.state_tone(result.status), f"comfy-state comfy-state-{result.status}")
    summary = (
        f'<div class="comfy-result-summary">{state} &middot; server: {esc(public_url(result.server))} &middot; '
        f"prompt: <code>{esc(result.prompt_id)}</code> &middot; {esc(media.counts(result))} &middot; "
        f"{esc(format_duration(result.elapsed, precise=True))}</div>"
    )
    skipped = len(budget.skipped)
    more = (
        f'<div class="comfy-result-more">{skipped} more: <code>result.files</code>, <code>result.images</code></div>'
        if skipped
        else ""
    )
    body = f'<div class="comfy-result-images">{"".join(pieces)}</div>{media.texts_html(result)}'
    return f'<div class="comfy-result" style="{theme.box_style()}">{summary}{body}{more}</div>'


def result_bundle(result: Result) -> dict[str, str] | None:
    """The ``image/png`` kept next to the HTML: a strip of the stills and first frames, for viewers of a saved
    notebook that show no HTML (IPython's HTML and text formatters add the rest of the bundle)."""
    media.available(result)
    png = media.preview_png(result)
    return {"image/png": png} if png else None


# -- errors -----------------------------------------------------------------------------------------------------------
def _table(rows: Sequence[Sequence[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [indent + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]


def validation_table(exc: ValidationError) -> list[str]:
    rows = [("node", "class", "input", "error")]
    for node in exc.nodes:
        if not node.errors:
            rows.append((node.node_id, node.class_type, "", "invalid"))
        for err in node.errors:
            detail = f": {err.details}" if err.details and err.details not in err.message else ""
            rows.append((node.node_id, node.class_type, err.input_name or "", f"{err.message}{detail}"))
    return _table(rows) if len(rows) > 1 else []


def error_lines(exc: BaseException) -> list[str]:
    """A user error as a few lines: a ``Name: message`` header, then its details (tables, node, server)."""
    name = type(exc).__name__
    message = scrub(str(exc))
    if isinstance(exc, ValidationError):
        table = validation_table(exc)
        header = message.split("\n", 1)[0] if table else message
        lines = [f"{name}: {header}", *table]
        if exc.partially_queued:
            lines.append("  (the server queued the valid part of the workflow)")
        return lines
    if isinstance(exc, ExecutionError):
        node = f"{exc.node_id} ({exc.node_type or '?'})" if exc.node_id is not None else "?"
        lines = [
            f"{name}: a node failed on {public_url(exc.server)}",
            f"  node:      {node}",
            f"  exception: {exc.exception_type or 'Exception'}: {scrub(exc.exception_message or '')}",
        ]
        trace = [scrub(line.strip()) for chunk in exc.traceback for line in chunk.splitlines() if line.strip()]
        if trace:
            lines.append("  server traceback (last lines):")
            lines += [f"    {line}" for line in trace[-3:]]
        lines.append(f"  prompt:    {exc.prompt_id}")
        return lines
    lines = [f"{name}: {message}"]
    if isinstance(exc, WorkflowError):
        return lines
    server = getattr(exc, "server", None) if isinstance(exc, ComfyError) else None
    if server and public_url(server) not in message:
        lines.append(f"  server: {public_url(server)}")
    return lines


def error_text(exc: BaseException) -> str:
    return "\n".join(error_lines(exc))
