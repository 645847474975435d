"""Text and HTML renderings of what the servers can run (``cn.nodes()``, ``cn.node()``, ``cn.models()`` and the
``%comfy nodes / node / models`` commands): pure functions, no I/O.

Every name here comes from a server (node types, categories, descriptions, file names, a custom node's own text)
and goes through ``html.escape``; server URLs go through ``public_url`` so credentials never reach the page. What
the servers disagree about, or a server that did not answer, is a warning line above the table: that is what
makes a prompt fail on one server of the pool and not on another.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from comfy_notebook.core.listing import ModelListing, NodeListing
from comfy_notebook.core.nodes import InputSpec, NodeInfo, join, number_text, shorten
from comfy_notebook.notebook.render import esc, public_url, scrub

#: A table taller than this scrolls inside the cell output instead of pushing the notebook down.
_SCROLL = "max-height: 32em; overflow: auto"
_CHOICES_SHOWN = 12
_YES, _NO = "\u2713", "-"


def _servers(urls: Sequence[str]) -> str:
    return join([public_url(u) for u in urls]) if urls else "no server"


def _table(rows: Sequence[Sequence[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [indent + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]


def _warnings_text(notes: Sequence[str]) -> list[str]:
    return [f"warning: {scrub(note)}" for note in notes]


def _warnings_html(notes: Sequence[str]) -> str:
    return "".join(f'<div class="comfy-catalog-warning">&#9888; {esc(scrub(note))}</div>' for note in notes)


def _html_table(css: str, head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A table of plain text cells, every one escaped here."""
    top = "".join(f"<th>{esc(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<div style="{_SCROLL}"><table class="comfy-catalog-table {css}"><tr>{top}</tr>{body}</table></div>'


# -- node listings ----------------------------------------------------------------------------------------------------
def _nodes_summary(listing: NodeListing) -> str:
    what = f"{len(listing)} node type{'s' * (len(listing) != 1)}"
    matching = f" matching {listing.filter!r}" if listing.filter else ""
    return f"{what}{matching} on {_servers(listing.servers)}"


def _node_rows(listing: NodeListing) -> tuple[list[str], list[list[str]]]:
    head = ["node type", "display name", "category", "inputs", "outputs"]
    rows = [
        [n.name, n.display_name if n.display_name != n.name else "", n.category,
         ", ".join(i.name for i in n.inputs), ", ".join(o.type for o in n.outputs)]
        for n in listing
    ]  # fmt: skip
    if listing.disagreements:
        head.append("missing on")
        for row, node in zip(rows, listing, strict=True):
            row.append(", ".join(public_url(s) for s in node.missing_on))
    return head, rows


def nodes_text(listing: NodeListing) -> str:
    lines = [_nodes_summary(listing), *_warnings_text(listing.notes)]
    head, rows = _node_rows(listing)
    if rows:
        lines += _table([head[:3] + head[5:], *(row[:3] + row[5:] for row in rows)])
    elif listing.filter:
        lines.append("  (no node type matches; the filter looks in names, display names and categories)")
    return "\n".join(lines)


def nodes_html(listing: NodeListing) -> str:
    head, rows = _node_rows(listing)
    table = _html_table("comfy-nodes-table", head, rows) if rows else ""
    summary = f'<div class="comfy-catalog-summary">{esc(_nodes_summary(listing))}</div>'
    return f'<div class="comfy-catalog comfy-nodes">{summary}{_warnings_html(listing.notes)}{table}</div>'


# -- one node type ----------------------------------------------------------------------------------------------------
def _choices(spec: InputSpec) -> str:
    if spec.choices is None:
        return "(filled by the page)" if spec.type == "COMBO" else ""
    return shorten([str(c) for c in spec.choices], _CHOICES_SHOWN) or "(none on this server)"


def _range(spec: InputSpec) -> str:
    if spec.min is None and spec.max is None:
        return ""
    text = f"{number_text(spec.min)}..{number_text(spec.max)}"
    return f"{text} step {number_text(spec.step)}" if spec.step is not None else text


def _input_rows(node: NodeInfo) -> list[list[str]]:
    return [
        [i.name, i.type, "required" if i.required else "optional", "widget" if i.widget else "link",
         "" if i.default is None else repr(i.default), _range(i), _choices(i)]
        for i in node.inputs
    ]  # fmt: skip


_INPUT_HEAD = ["input", "type", "use", "set as", "default", "range", "choices"]
_OUTPUT_HEAD = ["slot", "output", "type", "list"]


def _node_title(node: NodeInfo) -> str:
    title = node.name if node.display_name in ("", node.name) else f"{node.name} ({node.display_name})"
    facts = [node.category or "no category", *node.flags()]
    if node.server:
        facts.append(f"from {public_url(node.server)}")
    return f"{title}  [{', '.join(facts)}]"


def node_text(node: NodeInfo) -> str:
    lines = [_node_title(node), *_warnings_text(node.notes)]
    if node.description:
        lines.append(f"  {node.description}")
    rows = _input_rows(node)
    lines += _table([_INPUT_HEAD, *rows]) if rows else ["  inputs: none"]
    outputs = [[str(slot), o.name, o.type, "yes" if o.is_list else ""] for slot, o in enumerate(node.outputs)]
    lines += _table([_OUTPUT_HEAD, *outputs]) if outputs else ["  outputs: none"]
    return "\n".join(lines)


def node_html(node: NodeInfo) -> str:
    parts = [f'<div class="comfy-catalog-summary"><b>{esc(_node_title(node))}</b></div>', _warnings_html(node.notes)]
    if node.description:
        parts.append(f'<div class="comfy-node-description">{esc(node.description)}</div>')
    rows = _input_rows(node)
    parts.append(_html_table("comfy-inputs-table", _INPUT_HEAD, rows) if rows else "<div>inputs: none</div>")
    outputs = [[str(slot), o.name, o.type, "yes" if o.is_list else ""] for slot, o in enumerate(node.outputs)]
    parts.append(_html_table("comfy-outputs-table", _OUTPUT_HEAD, outputs) if outputs else "<div>outputs: none</div>")
    return f'<div class="comfy-catalog comfy-node">{"".join(parts)}</div>'


# -- model folders and files ------------------------------------------------------------------------------------------
def _models_summary(listing: ModelListing) -> str:
    n = len(listing)
    if listing.folder is None:
        return f"{n} model folder{'s' * (n != 1)} on {_servers(listing.servers)}"
    return f"{n} file{'s' * (n != 1)} in {listing.folder!r} on {_servers(listing.servers)}"


def _model_rows(listing: ModelListing) -> tuple[list[str], list[list[str]]]:
    """One row per name; with several servers, a column per server saying which has it."""
    first = "folder" if listing.folder is None else "file"
    if len(listing.servers) < 2:
        return [first], [[name] for name in listing]
    held = {server: set(names) for server, names in listing.per_server.items()}
    head = [first, *(public_url(s) for s in listing.servers)]
    return head, [[name, *(_YES if name in held[s] else _NO for s in listing.servers)] for name in listing]


def models_text(listing: ModelListing) -> str:
    lines = [_models_summary(listing), *_warnings_text(listing.notes)]
    head, rows = _model_rows(listing)
    if rows:
        lines += _table([head, *rows])
    return "\n".join(lines)


def models_html(listing: ModelListing) -> str:
    head, rows = _model_rows(listing)
    table = _html_table("comfy-models-table", head, rows) if rows else ""
    summary = f'<div class="comfy-catalog-summary">{esc(_models_summary(listing))}</div>'
    return f'<div class="comfy-catalog comfy-models">{summary}{_warnings_html(listing.notes)}{table}</div>'


# -- display ----------------------------------------------------------------------------------------------------------
RENDERERS: dict[type, tuple[Callable[[Any], str], Callable[[Any], str]]] = {
    NodeListing: (nodes_text, nodes_html),
    NodeInfo: (node_text, node_html),
    ModelListing: (models_text, models_html),
}


def register(
    shell: Any, plain_printer: Callable[[Callable[[Any], str]], Callable[..., None]]
) -> list[tuple[Any, type]]:
    """Show the listings as tables when a cell's value is one (``cn.nodes("sampler")``); returns what was
    registered, for unloading. ``plain_printer`` turns a text renderer into an IPython pretty printer."""
    display_formatter = getattr(shell, "display_formatter", None)
    if display_formatter is None:
        return []
    plain = display_formatter.formatters["text/plain"]
    html = display_formatter.formatters["text/html"]
    done: list[tuple[Any, type]] = []
    for cls, (text, markup) in RENDERERS.items():
        plain.for_type(cls, plain_printer(text))
        html.for_type(cls, markup)
        done += [(plain, cls), (html, cls)]
    return done
