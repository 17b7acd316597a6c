"""Value checks a column must pass, evaluated vectorised with pyarrow.compute."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc


@dataclass(frozen=True)
class Check:
    """A predicate on a column; `bad_mask` is True where a (non-null) value breaks it."""

    description: str

    def bad_mask(self, values: pa.Array) -> pa.Array:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass(frozen=True)
class OneOf(Check):
    allowed: tuple[str, ...] = ()

    def bad_mask(self, values: pa.Array) -> pa.Array:
        return pc.invert(pc.is_in(values, value_set=pa.array(self.allowed, type=values.type)))


@dataclass(frozen=True)
class Matches(Check):
    pattern: str = ""

    def bad_mask(self, values: pa.Array) -> pa.Array:
        return pc.invert(pc.match_substring_regex(values, self.pattern))


@dataclass(frozen=True)
class AtLeast(Check):
    minimum: float = 0

    def bad_mask(self, values: pa.Array) -> pa.Array:
        return pc.less(values, self.minimum)


@dataclass(frozen=True)
class NonEmpty(Check):
    def bad_mask(self, values: pa.Array) -> pa.Array:
        return pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(values)), 0)


def one_of(allowed: Iterable[str]) -> OneOf:
    allowed = tuple(allowed)
    return OneOf(f"is not one of {', '.join(allowed)}", allowed)


def matches(pattern: str, what: str) -> Matches:
    return Matches(f"is not {what}", pattern)


def at_least(minimum: float) -> AtLeast:
    return AtLeast(f"is below {minimum}", minimum)


NON_EMPTY = NonEmpty("is empty")
SHA256_HEX = matches(r"^[0-9a-f]{64}$", "a sha256 hex digest (64 lowercase hex characters)")
