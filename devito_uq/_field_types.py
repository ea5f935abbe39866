"""Field types of the config dataclasses, as the command line and TOML files give them.

``bool``, ``int``, ``float``, ``str``, fixed-length ``tuple`` and ``float | str`` (a number
or a word such as ``'auto'``): :func:`toml_value` checks and converts a TOML value,
:func:`type_name` names a type in an error message, :func:`number_or_word` reads a
command-line value of a ``float | str`` field (used by :mod:`devito_uq.cli`).
"""

from __future__ import annotations

import types
import typing
from typing import Any

__all__ = ["number_or_word", "toml_value", "type_name", "union_arms"]


def union_arms(kind: Any) -> tuple[Any, ...]:
    """The types of a ``float | str`` field (a number or a word such as ``'auto'``), else ()."""
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        return typing.get_args(kind)
    return ()


def number_or_word(text: str) -> float | str:
    """A command-line value of a ``float | str`` field: a float when it reads as one."""
    try:
        return float(text)
    except ValueError:
        return text


def toml_value(kind: Any, value: Any) -> tuple[bool, Any]:
    """``(ok, value)``: whether a TOML value fits a field of type ``kind``, converted."""
    for arm in union_arms(kind):  # the first type that fits
        ok, converted = toml_value(arm, value)
        if ok:
            return ok, converted
    if union_arms(kind):
        return False, value
    if kind is bool:
        return isinstance(value, bool), value
    if isinstance(value, bool):  # bool is an int subclass: never a number here
        return False, value
    if kind is int:
        return isinstance(value, int), value
    if kind is float:  # a TOML integer (1) is a fine float (1.0)
        ok = isinstance(value, (int, float))
        return ok, float(value) if ok else value
    if kind is str:
        return isinstance(value, str), value
    if typing.get_origin(kind) is tuple:
        items = typing.get_args(kind)
        if not isinstance(value, list) or len(value) != len(items):
            return False, value
        pairs = [toml_value(k, v) for k, v in zip(items, value)]
        return all(ok for ok, _ in pairs), tuple(v for _, v in pairs)
    return False, value


def type_name(kind: Any) -> str:
    if union_arms(kind):
        return " or ".join(type_name(arm) for arm in union_arms(kind))
    if typing.get_origin(kind) is tuple:
        items = typing.get_args(kind)
        return f"an array of {len(items)} {items[0].__name__}s"
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    return names.get(kind, str(kind))
