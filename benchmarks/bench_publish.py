"""Publishing at scale: one commit registering the files of many shards, then an incremental publish, then a no-op.

At the paper's 3M images with 1000-image shards a lake holds ~3000 shards x 7 tables of files; publishing must stay
a matter of seconds and a rerun that adds nothing must cost little.
Run: .venv/bin/python -m benchmarks.bench_publish [--shards 1000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from datasets_builder import lake
from schemas import CAPTIONS, IMAGES_REJECTED, VLM_REJECTS

TABLES = (("images_rejected", IMAGES_REJECTED), ("captions", CAPTIONS), ("vlm_rejects", VLM_REJECTS))
PROVENANCE = dict(model_id="tiny", prompt_version="p1", sampling="{}", backend="transformers")


def _rows(spec, shard: int) -> list[dict]:
    if spec is IMAGES_REJECTED:
        return [dict(source=f"http://x/{shard}/{i}.jpg", shard=str(shard), reason="http_error", detail="404")
                for i in range(3)]
    if spec is CAPTIONS:
        return [dict(**PROVENANCE, image_id=f"{shard:08d}{i:056d}", caption="a photo") for i in range(3)]
    return [dict(**PROVENANCE, request_hash=f"{shard:08d}{i:056d}", stage="caption", image_id=f"{shard:08d}{i:056d}",
                 raw_text="{", error="not JSON") for i in range(3)]


def stage(store: lake.LakeConfig, shards: range) -> dict[str, list[str]]:
    files: dict[str, list[str]] = {name: [] for name, _ in TABLES}
    for shard in shards:
        for name, spec in TABLES:
            files[name].append(lake.write_staged(store, spec, spec.to_arrow(_rows(spec, shard)), f"s{shard:06d}"))
    return files


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shards", type=int, default=1000)
    args = parser.parse_args()
    first, more = args.shards, max(1, args.shards // 10)
    with tempfile.TemporaryDirectory() as tmp:
        store = lake.LakeConfig.local(Path(tmp))
        files = stage(store, range(first))
        n_files = sum(len(v) for v in files.values())
        t = time.perf_counter()
        lake.publish(store, files, message="initial")
        initial = time.perf_counter() - t
        added = stage(store, range(first, first + more))
        everything = {k: files[k] + added[k] for k in files}
        t = time.perf_counter()
        lake.publish(store, everything, message="incremental")
        incremental = time.perf_counter() - t
        t = time.perf_counter()
        lake.publish(store, everything, message="no-op")
        noop = time.perf_counter() - t
    print(f"initial publish of {n_files} files: {initial:.2f} s ({initial / n_files * 1000:.2f} ms/file)")
    print(f"incremental publish of {sum(len(v) for v in added.values())} new files onto {n_files}: {incremental:.2f} s")
    print(f"publish with nothing new over {n_files + sum(len(v) for v in added.values())} files: {noop:.2f} s")


if __name__ == "__main__":
    main()
