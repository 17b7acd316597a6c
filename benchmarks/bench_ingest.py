"""Ingest throughput on loopback: img2dataset fetch, and decode+normalise, in images/s per core.

Anchor: img2dataset reports ~100 images/s/core on real networks. Run: .venv/bin/python -m benchmarks.bench_ingest
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import polars as pl

from datasets_builder.fetch import FetchConfig, fetch_images, read_fetched_shard
from datasets_builder.images import normalise_fetched
from datasets_builder.loopback import serve_directory
from npedit.demo import sample_image_paths


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--urls", type=int, default=2000)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    photos = sample_image_paths()
    with tempfile.TemporaryDirectory() as tmp, serve_directory(photos[0].parent) as base:
        # distinct URLs (query strings) over the same files: img2dataset fetches each one
        urls = pl.DataFrame({"url": [f"{base}/{photos[i % len(photos)].name}?r={i}" for i in range(args.urls)],
                             "caption": [None] * args.urls}, schema_overrides={"caption": pl.Utf8})
        config = FetchConfig(shard_size=max(1, args.urls // (4 * args.processes)), processes=args.processes,
                             threads=32)
        started = time.perf_counter()
        shards = fetch_images(urls, Path(tmp) / "out", config)
        fetch_s = time.perf_counter() - started
        tables = [read_fetched_shard(p) for p in shards]
        fetched = sum(t.num_rows for t in tables)
        started = time.perf_counter()
        for i, table in enumerate(tables):
            normalise_fetched(table, f"{i:05d}")
        normalise_s = time.perf_counter() - started
    print(f"fetch (img2dataset, {args.processes} processes, incl. ~5 s start-up): {fetched} images in {fetch_s:.1f} s"
          f" = {fetched / fetch_s / args.processes:.0f} images/s/core")
    print(f"decode + normalise (1 process): {fetched / normalise_s:.0f} images/s/core")


if __name__ == "__main__":
    main()
