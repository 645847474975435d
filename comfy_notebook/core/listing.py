"""Comparing the catalogues of a pool's servers, and the listings the engine returns. Pure: no I/O.

Servers of one pool drift apart: a custom node pack installed on one, a LoRA copied to another. A prompt that uses a
node type a server lacks is refused there (``invalid_prompt``); one that names a model file the server lacks fails
validation (``value_not_in_list``). Each difference is a ``Disagreement``; ``summarize`` turns them into one
sentence per split of servers, so a node pack missing on one server is one line, not two hundred.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from comfy_notebook.core.nodes import NodeInfo, join, shorten

NODE, MODEL, FOLDER = "node", "model", "folder"  # what a ``Disagreement`` is about


@dataclass(frozen=True)
class Disagreement:
    """A node type, model file or model folder that some servers of the pool have and others lack."""

    kind: str  # NODE, MODEL or FOLDER
    name: str
    present: tuple[str, ...]
    missing: tuple[str, ...]
    folder: str | None = None  # of a model file

    def __str__(self) -> str:
        return describe_group([self])


def describe_group(group: Sequence[Disagreement]) -> str:
    """One sentence for disagreements of one kind with the same servers on each side."""
    first = group[0]
    on, off = join(first.present), join(first.missing)
    names = shorten([d.name for d in group])
    one = len(group) == 1
    if first.kind == NODE:
        what = f"node type {names} is" if one else f"{len(group)} node types ({names}) are"
        return f"{what} on {on} only: a prompt that uses {'it' if one else 'one'} is refused by {off}"
    if first.kind == FOLDER:
        what = f"model folder {names!r} is" if one else f"{len(group)} model folders ({names}) are"
        return f"{what} on {on} only: {off} {'has' if len(first.missing) == 1 else 'have'} no such folder"
    if one:
        what = f"{names} ({first.folder}) is" if first.folder else f"{names} is"
    else:
        what = f"{len(group)} files{f' of {first.folder}' if first.folder else ''} ({names}) are"
    return f"{what} on {on} only: a prompt that uses {'it' if one else 'one'} fails validation on {off}"


def compare(
    kind: str, per_server: Mapping[str, Iterable[str]], *, folder: str | None = None
) -> tuple[Disagreement, ...]:
    """Every name some servers have and others lack, sorted by name; servers in ``per_server``'s order."""
    held = {server: set(names) for server, names in per_server.items()}
    out = []
    for name in sorted(set().union(*held.values()) if held else (), key=str.casefold):
        present = tuple(s for s, names in held.items() if name in names)
        if len(present) < len(held):
            missing = tuple(s for s in held if s not in present)
            out.append(Disagreement(kind, name, present, missing, folder))
    return tuple(out)


def summarize(disagreements: Iterable[Disagreement]) -> list[str]:
    """One line per kind and split of servers (a node pack missing on one server is one line, not two hundred)."""
    groups: dict[tuple[str, str | None, tuple[str, ...], tuple[str, ...]], list[Disagreement]] = {}
    for d in disagreements:
        groups.setdefault((d.kind, d.folder, d.present, d.missing), []).append(d)
    return [describe_group(group) for group in groups.values()]


# -- what the engine returns ------------------------------------------------------------------------------------------
def count(n: int, thing: str) -> str:
    """``1 node type``, ``3 servers``."""
    return f"{n} {thing}" if n == 1 else f"{n} {thing}s"


def _notes(
    disagreements: Sequence[Disagreement], unreachable: Mapping[str, str], malformed: Mapping[str, Sequence[str]]
) -> tuple[str, ...]:
    """The disagreements in words, why each silent server gave no answer (its message names it), and entries a
    server described in a form that could not be read (a broken custom node)."""
    unreadable = [
        f"{server} described {count(len(names), 'node type')} in a form that could not be read: {shorten(names)}"
        for server, names in malformed.items()
        if names
    ]
    return (*summarize(disagreements), *unreachable.values(), *unreadable)


@dataclass(frozen=True, repr=False)
class NodeListing:
    """The node types of the servers asked (``cn.nodes()``), those matching ``filter``, sorted by name; a node type
    some servers lack is listed with ``where`` it is, and a note says what that means for a prompt."""

    nodes: tuple[NodeInfo, ...]
    servers: tuple[str, ...]  # the servers that answered
    where: Mapping[str, tuple[str, ...]]  # node type -> servers that have it
    disagreements: tuple[Disagreement, ...] = ()
    unreachable: Mapping[str, str] = field(default_factory=dict)  # server -> why it gave no answer (names it)
    filter: str | None = None
    malformed: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # server -> entries it could not read

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n.name for n in self.nodes)

    @property
    def notes(self) -> tuple[str, ...]:
        return _notes(self.disagreements, self.unreachable, self.malformed)

    def __len__(self) -> int:
        return len(self.nodes)

    def __iter__(self) -> Iterator[NodeInfo]:
        return iter(self.nodes)

    def __contains__(self, name: object) -> bool:
        return name in self.where

    def __getitem__(self, name: str) -> NodeInfo:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def __repr__(self) -> str:
        what = count(len(self.nodes), "node type") + (f" matching {self.filter!r}" if self.filter else "")
        notes = f", {count(len(self.notes), 'note')}" if self.notes else ""
        return f"NodeListing({what} on {count(len(self.servers), 'server')}{notes})"


@dataclass(frozen=True, repr=False)
class ModelListing:
    """``cn.models()``: the model folders; ``cn.models(folder)``: the files in that folder. ``names`` is what any
    server has, ``per_server`` what each one has."""

    folder: str | None  # None: the listing of folder names
    names: tuple[str, ...]
    per_server: Mapping[str, tuple[str, ...]]  # the servers that answered
    disagreements: tuple[Disagreement, ...] = ()
    unreachable: Mapping[str, str] = field(default_factory=dict)

    @property
    def servers(self) -> tuple[str, ...]:
        return tuple(self.per_server)

    @property
    def notes(self) -> tuple[str, ...]:
        return _notes(self.disagreements, self.unreachable, {})

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __contains__(self, name: object) -> bool:
        return name in self.names

    def __repr__(self) -> str:
        what = count(len(self.names), "model folder" if self.folder is None else "file")
        where = "" if self.folder is None else f" in {self.folder!r}"
        notes = f", {count(len(self.notes), 'note')}" if self.notes else ""
        return f"ModelListing({what}{where} on {count(len(self.per_server), 'server')}{notes})"
