"""Typed dataclasses from plain dicts (TOML, JSON): unknown keys and wrong shapes are errors that name the key."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from schemas.errors import ConfigError


def from_dict(cls: type, values: dict[str, Any], where: str = "config") -> Any:
    """Build dataclass `cls` from `values`, recursing into dataclass-typed fields; tuples come from lists."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where} must be a table, not {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(names))})")
    kwargs = {}
    for name, value in values.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = from_dict(hint, value, f"{where}.{name}")
        elif typing.get_origin(hint) is tuple and isinstance(value, list):
            kwargs[name] = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        else:
            kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def replace_path(obj: Any, dotted: str, value: Any) -> Any:
    """A copy of a frozen dataclass tree with one field (`a.b.c`) replaced."""
    head, _, rest = dotted.partition(".")
    if not dataclasses.is_dataclass(obj) or head not in {f.name for f in dataclasses.fields(obj)}:
        raise ConfigError(f"no config field {dotted!r}")
    if rest:
        return dataclasses.replace(obj, **{head: replace_path(getattr(obj, head), rest, value)})
    return dataclasses.replace(obj, **{head: value})
