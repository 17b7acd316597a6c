"""Median time of every `npedit corpus stats` query on a synthetic paper-scale snapshot: 12M proposals and 12M
instructions (3M images x 4). Goal: < 0.1 s each on 2 cores.

Run: .venv/bin/python -m benchmarks.bench_stats [--rows 12000000]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import duckdb

from datasets_builder import lake
from datasets_builder.stats import QUERIES, ROWS_PER_SNAPSHOT, diff_sql
from schemas import EDIT_TYPES

PROVENANCE = "'tiny' AS model_id, 'p1' AS prompt_version, '{}' AS sampling, 'transformers' AS backend"
TYPES = "[" + ", ".join(f"'{t}'" for t in EDIT_TYPES) + "]"


def synthesize(store: lake.LakeConfig, rows: int, files: int) -> None:
    """Write `files` Parquet shards per table with DuckDB and publish them as one snapshot."""
    per_file = rows // files
    staged: dict[str, list[Path]] = {"edit_proposals": [], "edit_instructions": [], "objects": [],
                                     "images_rejected": [], "vlm_rejects": []}
    con = duckdb.connect()
    for f in range(files):
        start = f * per_file
        ids = "sha256((i // 4)::VARCHAR)"
        pid = "sha256(i::VARCHAR)"
        etype = f"{TYPES}[(hash(i) % 8)::BIGINT + 1]"
        specs = {
            "edit_proposals": f"SELECT {PROVENANCE}, {pid} AS proposal_id, {ids} AS image_id, {etype} AS edit_type, "
                              f"'Add a red kite in the sky number ' || i AS instruction",
            "edit_instructions": f"SELECT {PROVENANCE}, {pid} AS proposal_id, {ids} AS image_id, {etype} AS edit_type,"
                                 f" 'Add a kite ' || i AS instruction, hash(i) % 10 < 7 AS is_valid, "
                                 f"'because' AS reasoning, 'a kite over a lake ' || i AS edited_caption, "
                                 f"'a lake' AS reference_caption, NULL::VARCHAR AS target_object",
            "objects": f"SELECT {PROVENANCE}, sha256(i::VARCHAR) AS image_id, hash(i) % 5 = 0 AS is_object_centric,"
                       f" CASE WHEN hash(i) % 5 = 0 THEN ['mug','truck','vase','lamp','shoe'][(hash(i) % 5)::BIGINT + 1] END "
                       f"AS object_name, 'r' AS reasoning",
            "images_rejected": f"SELECT 'http://x/' || i AS source, '{f:05d}' AS shard, "
                               f"['http_error','decode_error','too_small'][(hash(i) % 3)::BIGINT + 1] AS reason, "
                               f"'detail' AS detail, NULL::VARCHAR AS image_id",
            "vlm_rejects": f"SELECT {PROVENANCE}, sha256(i::VARCHAR) AS request_hash, 'propose' AS stage, "
                           f"sha256(i::VARCHAR) AS image_id, '{{' AS raw_text, 'not JSON' AS error, "
                           f"NULL::VARCHAR AS proposal_id",
        }
        for table, select in specs.items():
            n = per_file if table in ("edit_proposals", "edit_instructions") else per_file // 40
            path = Path(lake.staged_path(store, table, f"bench-{f:05d}"))
            path.parent.mkdir(parents=True, exist_ok=True)
            con.execute(f"COPY ({select} FROM range({start}, {start + n}) t(i)) TO '{path}' "
                        "(FORMAT parquet, COMPRESSION zstd)")
            staged[table].append(path)
    cut = files * 9 // 10
    lake.publish(store, {t: p[:cut] for t, p in staged.items()}, message="synthetic, 90%", tag="before")
    lake.publish(store, staged, message="synthetic", tag="bench")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=12_000_000)
    parser.add_argument("--files", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = lake.LakeConfig.local(Path(tmp))
        started = time.perf_counter()
        synthesize(store, args.rows, args.files)
        print(f"synthetic snapshot: {args.rows:,} proposals + {args.rows:,} instructions "
              f"in {args.files} files each, written+published in {time.perf_counter() - started:.1f} s")
        version = lake.resolve(store, "bench").snapshot_id
        before = lake.resolve(store, "before").snapshot_id
        diff = diff_sql(before, version)
        with lake.session(store, read_only=True) as con:
            con.execute("SET threads = 2")
            queries = {**{k: q.format(v=version) for k, q in QUERIES.items()}, "rows_per_snapshot": ROWS_PER_SNAPSHOT,
                       "diff_two_snapshots": diff}
            print(f"{'query':28s} {'median':>9s} {'first':>9s}  (goal < 100 ms)")
            for name, sql in queries.items():
                times = []
                for _ in range(args.repeats):
                    t = time.perf_counter()
                    con.execute(sql).fetchall()
                    times.append(time.perf_counter() - t)
                median = statistics.median(times[1:])
                flag = "ok" if median < 0.1 else "SLOW"
                print(f"{name:28s} {median * 1000:7.1f}ms {times[0] * 1000:7.1f}ms  {flag}")


if __name__ == "__main__":
    main()
