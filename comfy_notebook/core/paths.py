"""Local file names for server-supplied names. A hostile server can send ``../`` in a filename or subfolder;
nothing it sends may choose where a file lands outside the folder the user gave."""

from __future__ import annotations

import re

_UNSAFE = re.compile(r"[^A-Za-z0-9._ ()\-]+")
_RESERVED = {"", ".", ".."}


def safe_name(name: str, *, fallback: str = "image") -> str:
    """One path component: no separators, no parent references, no hidden-file dot, bounded length."""
    last = name.replace("\\", "/").split("/")[-1]
    cleaned = _UNSAFE.sub("_", last).strip(" .")
    if cleaned in _RESERVED:
        cleaned = fallback
    return cleaned[:150]


def safe_relative(subfolder: str, filename: str) -> str:
    """``subfolder/filename`` reduced to safe components; parent references are dropped, never followed."""
    parts = [p for p in subfolder.replace("\\", "/").split("/") if p not in _RESERVED]
    folders = [safe_name(p, fallback="_") for p in parts]
    return "/".join([*folders, safe_name(filename)])
