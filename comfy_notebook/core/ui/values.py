"""How ComfyUI's page turns a widget's value into the value it sends: JavaScript numbers and strings, dynamic
prompts (``{a|b}``), and the ``%date:...%`` / ``%Node.widget%`` replacements of save nodes' file name prefixes.

The page is JavaScript, so a value that went through it is a JavaScript value: integers beyond 2**53 lose digits,
``1.0`` is sent as ``1``, and a text box turns ``None`` into ``""``. :func:`js_value` applies that to what we send,
so the prompt we build is the one the page's Queue button would send, byte for byte where it matters.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any


class Undefined:
    """JavaScript's ``undefined``: a widget value that ``JSON.stringify`` leaves out of the prompt."""

    _instance: Undefined | None = None

    def __new__(cls) -> Undefined:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "undefined"

    def __bool__(self) -> bool:
        return False


UNDEFINED = Undefined()
_SAFE_INTEGER = 2**53


def js_number(value: int | float) -> int | float:
    """A number as JavaScript holds and prints it: one double, integral values printed without a fraction."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and abs(value) < _SAFE_INTEGER:
        return value
    number = float(value)
    if not math.isfinite(number):
        return number  # JSON.stringify sends null: js_value turns it into None
    if number.is_integer() and abs(number) < 1e21:
        return int(Decimal(repr(number)))  # 18446744073709551615 -> 18446744073709552000, as JS prints it
    return number


def js_value(value: Any) -> Any:
    """``value`` after a round trip through JavaScript (``JSON.parse`` then ``JSON.stringify``)."""
    if isinstance(value, bool) or value is None or isinstance(value, str | Undefined):
        return value
    if isinstance(value, int | float):
        number = js_number(value)
        return None if isinstance(number, float) and not math.isfinite(number) else number
    if isinstance(value, list | tuple):
        return [None if isinstance(item, Undefined) else js_value(item) for item in value]
    if isinstance(value, dict):
        return {str(k): js_value(v) for k, v in value.items() if not isinstance(v, Undefined)}
    return value


def js_string(value: Any) -> str:
    """JavaScript's ``String(value)`` for JSON values (``${value}`` in the page's code)."""
    if value is None:
        return "null"
    if isinstance(value, Undefined):
        return "undefined"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        number = js_number(value)
        if isinstance(number, int):
            return str(number)
        if math.isnan(number):
            return "NaN"
        if math.isinf(number):
            return "Infinity" if number > 0 else "-Infinity"
        return _js_float(number)
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple):
        return ",".join("" if item is None or isinstance(item, Undefined) else js_string(item) for item in value)
    return "[object Object]"


def _js_float(number: float) -> str:
    """Number.prototype.toString for a non-integral finite double."""
    text = repr(number)
    if "e" not in text:
        return text
    mantissa, exponent = text.split("e")
    power = int(exponent)
    if -7 < power < 21:
        return format(Decimal(text), "f")
    digits = mantissa.rstrip("0").rstrip(".") if "." in mantissa else mantissa
    return f"{digits}e{'+' if power > 0 else '-'}{abs(power)}"


def textarea_value(value: Any) -> str:
    """What a ``<textarea>`` holds after the page sets its value: a string, ``None`` as ``""``, line breaks
    normalised to ``\\n``."""
    text = "" if value is None else js_string(value)
    return text.replace("\r\n", "\n").replace("\r", "\n")


def is_js_truthy(value: Any) -> bool:
    """JavaScript truthiness (``[]`` and ``{}`` are true; ``0``, ``""``, ``NaN``, ``null`` are false)."""
    if isinstance(value, list | dict):
        return True
    if isinstance(value, float) and math.isnan(value):
        return False
    return bool(value)


# -- dynamic prompts ----------------------------------------------------------------------------------------------
_COMMENTS = re.compile(r"/\*[\s\S]*?\*/|//[^\n\r\u2028\u2029]*")
_ESCAPED_SYNTAX = re.compile(r"\\([{}|])")


def dynamic_prompt(text: str, choose: Callable[[list[str]], str] = random.choice) -> str:
    """The page's dynamic prompt syntax on a text widget marked ``dynamicPrompts``: comments (``//``, ``/* */``)
    removed, ``{a|b|c}`` replaced by one option chosen at random (nested braces allowed), ``\\{`` escapes a
    brace. Text without ``{...|...}`` choices comes out the same every time."""
    source = _COMMENTS.sub("", text)
    position = 0

    def escape() -> str:
        nonlocal position
        following = source[position] if position < len(source) else "undefined"  # JS reads past the end
        position += 1
        return "\\" + following

    def choice_block() -> str:
        nonlocal position
        options: list[str] = []
        current = ""
        depth = 0
        while position < len(source):
            char = source[position]
            position += 1
            if char == "\\":
                current += escape()
                continue
            if char == "{":
                depth += 1
            elif char == "}":
                if not depth:
                    break
                depth -= 1
            elif char == "|" and not depth:
                options.append(current)
                current = ""
                continue
            current += char
        options.append(current)
        return dynamic_prompt(choose(options), choose)

    result = ""
    while position < len(source):
        char = source[position]
        position += 1
        if char == "\\":
            result += escape()
        elif char == "{":
            result += choice_block()
        else:
            result += char
    return _ESCAPED_SYNTAX.sub(r"\1", result)


# -- save nodes' file name prefixes -------------------------------------------------------------------------------
_REPLACEMENT = re.compile(r"%([^%]+)%")
_DATE_PART = re.compile(r"dd?|MM?|hh?|mm?|ss?|yyy?y?")
_UNSAFE_IN_NAME = re.compile(r'[/?<>\\:*|"\x00-\x1f\x7f]')


def format_date(pattern: str, now: datetime) -> str:
    """The page's ``%date:FORMAT%``: ``yyyy``/``yy``, ``MM``/``M``, ``dd``/``d``, ``hh``/``h`` (24 h), ``mm``/``m``,
    ``ss``/``s``; local time."""
    parts = {"d": now.day, "M": now.month, "h": now.hour, "m": now.minute, "s": now.second}

    def part(match: re.Match[str]) -> str:
        text = match.group(0)
        if text == "yy":
            return str(now.year)[2:]
        if text == "yyyy":
            return str(now.year)
        if text[0] in parts:
            return str(parts[text[0]]).rjust(len(text), "0")
        return text

    return _DATE_PART.sub(part, pattern)


def replace_in_prefix(value: str, lookup: Callable[[str, str], Any], now: datetime) -> str:
    """``%date:FORMAT%`` and ``%Node.widget%`` in a save node's ``filename_prefix``, as the page replaces them
    when it queues. ``lookup(node, widget)`` gives that widget's value, or :data:`UNDEFINED` (the text stays)."""

    def replace(match: re.Match[str]) -> str:
        text = match.group(1)
        split = text.split(".")
        if len(split) != 2:
            if split[0].startswith("date:"):
                return format_date(split[0][5:], now)
            return match.group(0)
        found = lookup(split[0], split[1])
        if isinstance(found, Undefined):
            return match.group(0)
        return _UNSAFE_IN_NAME.sub("_", js_string("" if found is None else found))

    return _REPLACEMENT.sub(replace, value)
