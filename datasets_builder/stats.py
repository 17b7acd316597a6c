"""Users' questions about a snapshot, answered with plain DuckDB SQL (the same text runs in the `duckdb` CLI)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from datasets_builder import lake

# {v} is the snapshot version; every query reads one published snapshot and nothing else.
QUERIES: dict[str, str] = {
    "proposals_per_edit_type": """
SELECT edit_type, count(*) AS proposals
FROM lake.edit_proposals AT (VERSION => {v})
GROUP BY edit_type ORDER BY proposals DESC, edit_type""",
    "validity_per_edit_type": """
SELECT edit_type, count(*) AS judged, count(*) FILTER (WHERE is_valid) AS valid,
       round(avg(is_valid::INT), 3) AS validity_rate
FROM lake.edit_instructions AT (VERSION => {v})
GROUP BY edit_type ORDER BY valid DESC, edit_type""",
    "reject_reasons": """
SELECT 'image' AS kind, reason, count(*) AS n FROM lake.images_rejected AT (VERSION => {v}) GROUP BY reason
UNION ALL
SELECT 'vlm:' || stage, left(error, 40), count(*) FROM lake.vlm_rejects AT (VERSION => {v}) GROUP BY ALL
ORDER BY n DESC, kind, reason""",
    "top_object_names": """
SELECT lower(object_name) AS object_name, count(*) AS images
FROM lake.objects AT (VERSION => {v})
WHERE is_object_centric
GROUP BY 1 ORDER BY images DESC, object_name LIMIT 20""",
}

ROWS_PER_SNAPSHOT = """
SELECT snapshot_id, strftime(snapshot_time, '%Y-%m-%d %H:%M:%S') AS created,
       commit_extra_info::JSON->'npedit'->>'tag' AS tag, commit_message AS message,
       commit_extra_info::JSON->'npedit'->'row_counts' AS row_counts
FROM lake.snapshots() WHERE (commit_extra_info::JSON->'npedit') IS NOT NULL ORDER BY snapshot_id"""

DIFF = """
SELECT '{table}' AS table_name,
       (SELECT count(*) FROM lake.{table} AT (VERSION => {a})) AS rows_a,
       (SELECT count(*) FROM lake.{table} AT (VERSION => {b})) AS rows_b"""


@dataclass(frozen=True)
class QueryResult:
    name: str
    sql: str
    columns: list[str]
    rows: list[tuple]
    seconds: float


def _run(con, name: str, sql: str) -> QueryResult:
    started = time.perf_counter()
    cursor = con.execute(sql)
    rows = cursor.fetchall()
    return QueryResult(name, sql.strip(), [d[0] for d in cursor.description], rows, time.perf_counter() - started)


def snapshot_stats(config: lake.LakeConfig, snapshot: int | str | None = None) -> list[QueryResult]:
    """Every question in `QUERIES` at one snapshot, plus the rows per published snapshot."""
    version = lake.resolve(config, snapshot).snapshot_id
    with lake.session(config, read_only=True) as con:
        results = [_run(con, name, sql.format(v=version)) for name, sql in QUERIES.items()]
        results.append(_run(con, "rows_per_snapshot", ROWS_PER_SNAPSHOT))
    return results


def diff_sql(version_a: int, version_b: int) -> str:
    """Row counts of every corpus table at two snapshot versions, one row per table."""
    return "\nUNION ALL".join(DIFF.format(table=t, a=version_a, b=version_b) for t in lake.CORPUS_TABLES)


def snapshot_diff(config: lake.LakeConfig, a: int | str, b: int | str) -> QueryResult:
    """Row counts per table at two snapshots."""
    sql = diff_sql(lake.resolve(config, a).snapshot_id, lake.resolve(config, b).snapshot_id)
    with lake.session(config, read_only=True) as con:
        return _run(con, f"diff {a} -> {b}", sql)


def write_cli_init(config: lake.LakeConfig, path: Path) -> Path:
    """An init file for the `duckdb` CLI: offline extensions, the lake attached read-only and selected."""
    statements = [*lake.setup_statements(config, read_only=True), f"USE {lake.LAKE}"]
    path.write_text("".join(f"{statement};\n" for statement in statements))
    return path
