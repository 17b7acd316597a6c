"""`TableSpec`: one table's contract, derived from a typed row dataclass.

A row class declares columns as annotated fields; `column(...)` adds value checks and a description. The pyarrow
schema is derived from the annotations, so the row class is the single source of truth for names, types and
nullability (`X | None` is nullable, everything else is required).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from schemas.checks import Check

_SCALAR_TYPES: dict[Any, pa.DataType] = {
    str: pa.string(),
    int: pa.int64(),
    float: pa.float64(),
    bool: pa.bool_(),
    bytes: pa.binary(),
    dt.datetime: pa.timestamp("us", tz="UTC"),
}


class SchemaError(ValueError):
    """A table or row breaks its contract; the message names table, column, row and value."""

    def __init__(self, table: str, column: str, message: str, *, row: int | None = None, value: Any = None):
        self.table, self.column, self.row, self.value = table, column, row, value
        where = f"{table}.{column}" + (f" row {row}" if row is not None else "")
        shown = "" if value is None and row is None else f": {_show(value)}"
        super().__init__(f"{where}{shown} {message}")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def column(*checks: Check, doc: str = "", default: Any = dataclasses.MISSING) -> Any:
    """Declare a column with value checks and a one-line description."""
    return dataclasses.field(default=default, metadata={"checks": checks, "doc": doc})


def _arrow_type(annotation: Any) -> tuple[pa.DataType, bool]:
    """Map a row-class annotation to (arrow type, nullable)."""
    nullable = False
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        nullable = len(args) != len(typing.get_args(annotation))
        (annotation,) = args
    if annotation in _SCALAR_TYPES:
        return _SCALAR_TYPES[annotation], nullable
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is list:
        return pa.list_(_arrow_type(args[0])[0]), nullable
    if origin is dict:
        return pa.map_(_arrow_type(args[0])[0], _arrow_type(args[1])[0]), nullable
    raise TypeError(f"no arrow type for annotation {annotation!r}")


@dataclass(frozen=True)
class TableSpec:
    """The contract of one table: name, key, arrow schema, per-column checks, row class."""

    name: str
    row_type: type
    key: tuple[str, ...]
    description: str

    @property
    def schema(self) -> pa.Schema:
        hints = typing.get_type_hints(self.row_type)
        fields = []
        for f in dataclasses.fields(self.row_type):
            arrow_type, nullable = _arrow_type(hints[f.name])
            fields.append(pa.field(f.name, arrow_type, nullable=nullable, metadata={"doc": f.metadata.get("doc", "")}))
        return pa.schema(fields, metadata={"table": self.name})

    @property
    def checks(self) -> dict[str, tuple[Check, ...]]:
        return {f.name: f.metadata.get("checks", ()) for f in dataclasses.fields(self.row_type)}

    def to_arrow(self, rows: Iterable[Any]) -> pa.Table:
        """Build a validated arrow table from row objects or mappings."""
        dicts = [r if isinstance(r, Mapping) else dataclasses.asdict(r) for r in rows]
        schema = self.schema
        for i, row in enumerate(dicts):
            extra = set(row) - set(schema.names)
            if extra:
                name = sorted(extra)[0]
                raise SchemaError(self.name, name, "is not a column of this table", row=i, value=row[name])
            for field in schema:
                if field.name not in row and not field.nullable:
                    raise SchemaError(self.name, field.name, "is missing", row=i)
        columns = {}
        for field in schema:
            values = [row.get(field.name) for row in dicts]
            try:
                columns[field.name] = pa.array(values, type=field.type)
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError) as exc:
                i, value = _first_unconvertible(values, field.type)
                raise SchemaError(self.name, field.name, f"is not {field.type} ({exc})", row=i, value=value) from None
        return self.validate(pa.table(columns, schema=schema))

    def validate(self, table: pa.Table) -> pa.Table:
        """Check names, types, nulls and values; return the table cast to the exact schema."""
        schema = self.schema
        missing = [n for n in schema.names if n not in table.column_names]
        if missing:
            raise SchemaError(self.name, missing[0], "is missing")
        extra = [n for n in table.column_names if n not in schema.names]
        if extra:
            raise SchemaError(self.name, extra[0], "is not a column of this table")
        table = table.select(schema.names)
        for field in schema:
            col = table.column(field.name)
            if not col.type.equals(field.type):
                try:
                    col = col.cast(field.type)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                    raise SchemaError(self.name, field.name, f"has type {col.type}, expected {field.type} ({exc})") from None
            if not field.nullable and col.null_count:
                i = next(i for i, v in enumerate(col.is_null().to_pylist()) if v)
                raise SchemaError(self.name, field.name, "is null but the column is required", row=i, value=None)
            for check in self.checks[field.name]:
                chunk = col.combine_chunks()
                bad = check.bad_mask(chunk).fill_null(False)
                if pc.any(bad).as_py():
                    i = pc.index(bad, True).as_py()
                    raise SchemaError(self.name, field.name, check.description, row=i, value=chunk[i].as_py())
            table = table.set_column(schema.get_field_index(field.name), field, col)
        return table.replace_schema_metadata(schema.metadata)


def _first_unconvertible(values: list[Any], arrow_type: pa.DataType) -> tuple[int, Any]:
    for i, value in enumerate(values):
        try:
            pa.array([value], type=arrow_type)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
            return i, value
    return 0, None
