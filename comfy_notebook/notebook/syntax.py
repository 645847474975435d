"""What a user types: the ``%comfy`` help text and the ``%%comfy [NAME <<] [options]`` line, parsed into
``CellOptions``; anything malformed is a one-line ``UsageError``."""

from __future__ import annotations

import argparse
import keyword
import shlex
from dataclasses import dataclass
from typing import NoReturn

from IPython.core.error import UsageError

HELP = """\
%comfy servers [URL ...]   set the server pool (no URL: show it); also COMFY_SERVERS or
                           %config ComfyMagics.servers = ["http://host:8188", ...]
%comfy mode [lock|pool]    show or set how prompts are spread (also COMFY_MODE or
                           %config ComfyMagics.mode = "pool"):
                             lock  one server at a time: new prompts go to the locked server (default)
                             pool  every server at once: prompts wait here and go to whichever
                                   server has room; a prompt lost with its server moves to another
%comfy status              show the live status panel (mode, lock, servers, Reset button)
%comfy reset               clear the lock, close sockets, cancel pending prompts
%comfy lock URL            pin the lock to one server of the pool
%comfy nodes [FILTER]      the node types of every server (FILTER: part of a name or category);
                           those only some servers have are flagged (a prompt using one fails elsewhere)
%comfy node NAME           one node type: its inputs (type, default, range, choices) and outputs
%comfy models [FOLDER]     the model folders, or the files in FOLDER (checkpoints, loras, ...) per server
                           nodes, node and models take --server URL to ask one server; the answer is
                           the cell's value (x = %comfy nodes sampler), as cn.nodes() / node() / models()
%comfy help                this text

%%comfy [NAME <<] [-f FILE] [--server URL] [--timeout SECONDS] [--no-wait]
<API-format workflow JSON>          (or as a line: %comfy [NAME <<] -f FILE [options])
    Runs the workflow, shows its progress and waits for the images ("Run All" works).
    NAME <<       store the Result (with --no-wait: the running Task) in the variable NAME
    -f FILE       read the workflow from FILE instead of the cell
    --server URL  run on this server (this cell only)
    --timeout S   give up after S seconds (the prompt is cancelled)
    --no-wait     return the Task at once; its progress keeps updating in the cell
    A JSON string value that is exactly "$name" is replaced by the notebook variable name
    (a lookup, never evaluated); write "$$name" for a literal "$name".

%%comfy [NAME <<] --over KEY=V1,V2,... [--over ...] [--zip] [--sweep VAR] [options]
<API-format workflow JSON>
    A sweep: the workflow once per combination of the values (cn.sweep); a live grid shows
    every point (rows x columns for two axes) and the cell waits for all of them.
    --over KEY=VALUES  KEY is node.input: 3.seed, KSampler.seed (a title or class type naming
                  one node); VALUES are comma-separated JSON values or plain strings
                  (3.seed=1,2,3  6.text="a cat","a dog"  sampler=euler,dpmpp_2m), or integer
                  ranges: 0..7 (both ends) or range(0, 100, 25); quote the whole option
                  when a value has spaces: --over '6.text=a red fox,a blue bird'
    --sweep VAR   the axes from the notebook dict VAR ({"3.seed": range(8), ...})
    --zip         pair the i-th values of every axis instead of every combination
    NAME <<       store the Sweep (sweep.results, sweep.dataframe(), sweep.save(folder))
    One failing point never fails the cell; Cancel on the grid (or interrupting the kernel)
    cancels every point not finished yet."""


COMMANDS = "servers, mode, status, reset, lock, nodes, node, models or help"
CELL_USAGE = (
    "%%comfy [NAME <<] [-f FILE] [--server URL] [--timeout SECONDS] [--no-wait] "
    "[--over KEY=V1,V2 ...] [--sweep VAR] [--zip]"
)


# -- parsing ----------------------------------------------------------------------------------------------------------
class _ArgumentParser(argparse.ArgumentParser):
    """argparse that reports one-line ``UsageError``s instead of printing and exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"%%comfy: {message} (usage: {CELL_USAGE})")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        raise UsageError(f"%%comfy: {message or 'bad arguments'} (usage: {CELL_USAGE})")


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


_CELL_PARSER = _ArgumentParser(prog="%%comfy", add_help=False)
_CELL_PARSER.add_argument("-f", "--file", dest="file")
_CELL_PARSER.add_argument("--server")
_CELL_PARSER.add_argument("--timeout", type=_positive)
_CELL_PARSER.add_argument("--no-wait", dest="no_wait", action="store_true")
_CELL_PARSER.add_argument("--over", action="append", default=[])
_CELL_PARSER.add_argument("--sweep", dest="sweep_var")
_CELL_PARSER.add_argument("--zip", action="store_true")


@dataclass(frozen=True)
class CellOptions:
    target: str | None = None
    file: str | None = None
    server: str | None = None
    timeout: float | None = None
    no_wait: bool = False
    #: ``--over KEY=V1,V2`` as written, in order (parsed by ``core.sweep.parse_over`` when the cell runs).
    over: tuple[str, ...] = ()
    #: ``--sweep VAR``: a notebook variable holding ``{key: values}``.
    sweep_var: str | None = None
    zip: bool = False

    @property
    def is_sweep(self) -> bool:
        return bool(self.over) or self.sweep_var is not None


def split_words(line: str, who: str) -> list[str]:
    try:
        return shlex.split(line)
    except ValueError as exc:
        raise UsageError(f"{who}: {exc}") from None


def parse_cell_line(line: str) -> CellOptions:
    """``[NAME <<] [options]`` -> ``CellOptions``; anything else is a one-line ``UsageError``."""
    tokens = split_words(line, "%%comfy")
    target = None
    if len(tokens) >= 2 and tokens[1] == "<<":
        target, tokens = tokens[0], tokens[2:]
    elif tokens and tokens[0].endswith("<<") and tokens[0] != "<<":
        target, tokens = tokens[0][:-2], tokens[1:]
    if target is not None and (not target.isidentifier() or keyword.iskeyword(target)):
        raise UsageError(f"%%comfy: {target!r} is not a valid variable name to store the result in")
    if any("<<" in token for token in tokens):
        raise UsageError(f"%%comfy: the target goes first, as in '%%comfy result <<' (usage: {CELL_USAGE})")
    args = _CELL_PARSER.parse_args(tokens)
    options = CellOptions(
        target, args.file, args.server, args.timeout, args.no_wait, tuple(args.over), args.sweep_var, args.zip
    )
    if options.sweep_var is not None and not options.sweep_var.isidentifier():
        raise UsageError(f"%%comfy: --sweep takes the name of a notebook variable, not {options.sweep_var!r}")
    if options.zip and not options.is_sweep:
        raise UsageError("%%comfy: --zip pairs the values of a sweep: give the axes with --over or --sweep")
    for over in options.over:
        if "=" not in over or not over.partition("=")[0].strip():
            raise UsageError(f"%%comfy: --over takes KEY=V1,V2,... (e.g. --over 3.seed=1,2,3), not {over!r}")
    return options


def parse_catalog_args(command: str, args: list[str]) -> tuple[str | None, str | None]:
    """``%comfy nodes|node|models [WORDS] [--server URL]`` -> (the words as one name or filter, the server)."""
    server = None
    words = []
    rest = iter(args)
    for word in rest:
        if word == "--server":
            server = next(rest, None)
            if server is None:
                raise UsageError(f"%comfy {command}: --server needs a URL")
        elif word.startswith("--server="):
            server = word.split("=", 1)[1]
        else:
            words.append(word)
    text = " ".join(words) or None
    if command == "node" and text is None:
        raise UsageError("usage: %comfy node NAME [--server URL] (NAME as in %comfy nodes, e.g. KSampler)")
    return text, server
