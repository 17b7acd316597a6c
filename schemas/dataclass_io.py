"""Typed dataclasses from plain dicts (TOML, JSON): unknown keys and wrong shapes are errors that name the key."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from schemas.errors import ConfigError

_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "none"}


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is tuple:
        return f"a list of {_describe(args[0])}" if len(args) == 2 and args[1] is Ellipsis else f"a list of {len(args)}"
    if origin is dict:
        return f"a table of {_describe(args[1])}"
    return _TYPE_NAMES.get(hint, getattr(hint, "__name__", str(hint)))


def _matches(value: Any, hint: Any) -> bool:
    """Whether `value` is of type `hint` (bool is not a number; an int is a float); unknown hints match."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if origin is tuple:
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(v, args[0]) for v in value)
        return len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args))
    if origin is dict:
        return isinstance(value, dict) and all(_matches(k, args[0]) and _matches(v, args[1]) for k, v in value.items())
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint in (bool, str, type(None)):
        return isinstance(value, hint)
    return True


def check_value(value: Any, hint: Any, where: str) -> None:
    """A one-line `ConfigError` when `value` is not of type `hint`."""
    if not _matches(value, hint):
        raise ConfigError(f"{where} must be {_describe(hint)}, not {value!r}")


def check_types(obj: Any, where: str = "") -> None:
    """Check every field of a dataclass tree against its type hint."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value, name = getattr(obj, f.name), f"{where}{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            check_types(value, f"{name}.")
        else:
            check_value(value, hints[f.name], name)


def from_dict(cls: type, values: dict[str, Any], where: str = "config") -> Any:
    """Build dataclass `cls` from `values`, recursing into dataclass-typed fields; tuples come from lists.

    Every value must have its field's type; errors name the field as `where.name` ("" for a bare name)."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where or 'config'} must be a table, not {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"{where or 'config'}: unknown key {unknown[0]!r} (known: {', '.join(sorted(names))})")
    kwargs = {}
    for name, value in values.items():
        hint, path = hints[name], f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(hint):
            kwargs[name] = from_dict(hint, value, path)
            continue
        if typing.get_origin(hint) is tuple and isinstance(value, list):
            value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        check_value(value, hint, path)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{where or 'config'}: {exc}") from None


def replace_path(obj: Any, dotted: str, value: Any, _where: str = "") -> Any:
    """A copy of a frozen dataclass tree with one field (`a.b.c`) replaced; the value must have the field's type."""
    head, _, rest = dotted.partition(".")
    if not dataclasses.is_dataclass(obj) or head not in {f.name for f in dataclasses.fields(obj)}:
        raise ConfigError(f"no config field {_where + dotted!r}")
    if rest:
        return dataclasses.replace(obj, **{head: replace_path(getattr(obj, head), rest, value, f"{_where}{head}.")})
    hint = typing.get_type_hints(type(obj))[head]
    if typing.get_origin(hint) is tuple and isinstance(value, list):
        value = tuple(value)
    check_value(value, hint, _where + head)
    return dataclasses.replace(obj, **{head: value})
