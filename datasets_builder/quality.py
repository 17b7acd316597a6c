"""Corpus quality checks over a published snapshot; plain functions returning (passed, facts) for any runner."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pyarrow.compute as pc

from datasets_builder import lake, storage
from schemas import ALL_TABLES, EDIT_TYPES, SchemaError


@dataclass(frozen=True)
class CheckOutcome:
    passed: bool
    facts: dict[str, float | int | str] = field(default_factory=dict)


def schema_valid(config: lake.LakeConfig, snapshot=None) -> CheckOutcome:
    """Every table of the snapshot passes its contract."""
    for name in lake.CORPUS_TABLES:
        try:
            ALL_TABLES[name].validate(lake.read_table(config, name, snapshot))
        except SchemaError as exc:
            return CheckOutcome(False, {"error": str(exc)})
    return CheckOutcome(True, {"tables": len(lake.CORPUS_TABLES)})


def no_duplicate_keys(config: lake.LakeConfig, snapshot=None) -> CheckOutcome:
    """Each table's key is unique within the snapshot."""
    version = lake.resolve(config, snapshot).snapshot_id
    facts = {}
    with lake.session(config, read_only=True) as con:
        for name in lake.CORPUS_TABLES:
            key = ", ".join(ALL_TABLES[name].key)
            total, distinct = con.execute(
                f"SELECT count(*), count(DISTINCT ({key})) FROM {lake.LAKE}.{name} AT (VERSION => {version})"
            ).fetchone()
            facts[f"duplicates_{name}"] = total - distinct
    return CheckOutcome(all(v == 0 for v in facts.values()), facts)


def counts_add_up(config: lake.LakeConfig, fetched_path: Callable[[str], str], snapshot=None) -> CheckOutcome:
    """Every fetched URL of the published shards ends as an image or a reject (nothing lost silently)."""
    version = lake.resolve(config, snapshot).snapshot_id
    with lake.session(config, read_only=True) as con:
        per_shard = dict(con.execute(
            f"SELECT shard, sum(n) FROM (SELECT shard, count(*) n FROM {lake.LAKE}.images AT (VERSION => {version}) "
            f"GROUP BY shard UNION ALL SELECT shard, count(*) FROM {lake.LAKE}.images_rejected "
            f"AT (VERSION => {version}) GROUP BY shard) GROUP BY shard"
        ).fetchall())
    fetched = {s: storage.num_rows(fetched_path(s)) for s in per_shard}
    lost = {s: fetched[s] - per_shard[s] for s in per_shard if fetched[s] != per_shard[s]}
    return CheckOutcome(not lost, {"fetched": sum(fetched.values()), "accounted": int(sum(per_shard.values())),
                                   "shards_off": len(lost)})


def edit_type_balance(config: lake.LakeConfig, snapshot=None, max_ratio: float = 4.0) -> CheckOutcome:
    """The most common edit type is at most `max_ratio` times the least common (all 8 present)."""
    column = lake.read_table(config, "edit_proposals", snapshot, columns=["edit_type"]).column(0)
    counted = {row["values"]: row["counts"] for row in pc.value_counts(column).to_pylist()}  # vectorised, not per row
    counts = {t: counted.get(t, 0) for t in EDIT_TYPES}
    ratio = max(counts.values()) / max(1, min(counts.values()))
    return CheckOutcome(min(counts.values()) > 0 and ratio <= max_ratio, {"max_min_ratio": round(ratio, 2), **counts})


def validity_rate_in_band(config: lake.LakeConfig, snapshot=None, low: float = 0.2, high: float = 0.98) -> CheckOutcome:
    """The share of proposals judged valid lies in a sane band (too low: bad proposals; too high: a lax judge)."""
    valid = lake.read_table(config, "edit_instructions", snapshot, columns=["is_valid"]).column(0)
    rate = pc.sum(valid).as_py() / len(valid) if len(valid) else 0.0
    return CheckOutcome(low <= rate <= high, {"validity_rate": round(rate, 3), "judged": len(valid)})


CHECKS: dict[str, Callable[..., CheckOutcome]] = {
    "schema_valid": schema_valid,
    "no_duplicate_keys": no_duplicate_keys,
    "edit_type_balance": edit_type_balance,
    "validity_rate_in_band": validity_rate_in_band,
}
