"""Fetch a URL list (or a local folder) into Parquet shards with img2dataset, original bytes untouched."""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
import re
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow as pa

from datasets_builder import storage
from schemas.errors import ConfigError

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
UNSUPPORTED_STATUS = "unsupported"  # a listed file the builder does not read; becomes an `unsupported` reject
SHUTDOWN_GRACE_S = 30.0  # once every shard is finished, how long img2dataset may take to exit


@dataclass(frozen=True)
class FetchConfig:
    """img2dataset settings; parallelism is per shard, so small shards spread work over processes."""

    shard_size: int = 1000
    processes: int = 2
    threads: int = 16
    timeout_s: int = 10
    retries: int = 0


def read_url_list(path: Path, url_col: str = "url", caption_col: str | None = "caption") -> pl.DataFrame:
    """Read a parquet/csv/jsonl URL list into (url, caption); a missing column is a clear error."""
    suffix = path.suffix.lower()
    readers = {".parquet": pl.read_parquet, ".csv": pl.read_csv, ".jsonl": pl.read_ndjson, ".ndjson": pl.read_ndjson}
    if suffix not in readers:
        raise ConfigError(f"{path}: URL lists must be .parquet, .csv or .jsonl, not {suffix!r}")
    frame = readers[suffix](path)
    if url_col not in frame.columns:
        raise ConfigError(f"{path}: no column {url_col!r} (columns: {', '.join(frame.columns)})")
    caption = pl.col(caption_col).cast(pl.Utf8) if caption_col in frame.columns else pl.lit(None, pl.Utf8)
    urls = frame.select(pl.col(url_col).cast(pl.Utf8).alias("url"), caption.alias("caption"))
    present = urls.filter(pl.col("url").is_not_null() & (pl.col("url").str.strip_chars() != ""))
    unique = present.unique("url", keep="first", maintain_order=True)
    if unique.height != frame.height:
        log.warning("%s: %d rows -> %d URLs (%d empty, %d repeated URLs kept once)", path, frame.height,
                    unique.height, frame.height - present.height, present.height - unique.height)
    return unique


@dataclass(frozen=True)
class FolderListing:
    """Every entry under a source folder: image files to fetch, and everything else as `unsupported` rejects.

    `images` is (url, caption) for img2dataset; `unsupported` is a fetched shard's columns (url, caption, status,
    error_message, jpg) with status `unsupported` and the reason in `error_message`, so that the files the builder
    does not read still end as `images_rejected` rows: images + rejects == every file under the folder.
    """

    images: pl.DataFrame
    unsupported: pl.DataFrame


def _unsupported_detail(path: Path, folder: Path) -> str | None:
    """Why the builder does not read `path` (None: an image file to fetch).

    Hidden entries (a name starting with '.': `.DS_Store`, macOS `._photo.jpg` resource forks, `.thumbnails/`
    caches, `.git/`) are never read, whatever their extension, but each file is still recorded, so nothing under the
    folder is lost silently. Links to folders are not followed (recorded as one entry); links to files are read.
    """
    relative = path.relative_to(folder)
    hidden = next((part for part in relative.parts if part.startswith(".")), None)
    if path.is_dir():
        return f"a link to a folder ({path.resolve()}), not followed" if path.is_symlink() else None
    if not path.is_file():
        return "not a regular file (a broken link, a socket or a device)"
    if hidden is not None:
        where = "a hidden file" if hidden == relative.parts[-1] else f"inside the hidden folder {hidden!r}"
        return f"{where}: names starting with '.' are not read"
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        what = f"extension {suffix!r}" if suffix else "no file extension"
        return f"{what}: not an image file the builder reads ({', '.join(IMAGE_SUFFIXES)})"
    return None


def list_folder(folder: Path) -> FolderListing:
    """Every entry under `folder`, sorted: image files as file:// URLs (img2dataset fetches those too), the rest
    with the reason it is not read."""
    folder, base = Path(folder), Path(folder).resolve()
    images, unsupported = [], []
    for path in folder.rglob("*"):
        detail = _unsupported_detail(path, folder)
        entry = base / path.relative_to(folder)  # the entry itself: a link is its own source, read through
        if detail is not None:
            unsupported.append((entry, detail))
        elif path.is_file():
            images.append(entry)
    if not images:
        others = f"; {len(unsupported)} other entries" if unsupported else ""
        raise ConfigError(f"{folder}: no image files ({', '.join(IMAGE_SUFFIXES)}){others}")
    images = [p.as_uri() for p in sorted(images)]  # sorted as paths: the order (and fingerprint) of earlier builds
    unsupported = [(p.as_uri(), detail) for p, detail in sorted(unsupported)]
    return FolderListing(
        images=pl.DataFrame({"url": images, "caption": [None] * len(images)}, schema_overrides={"caption": pl.Utf8}),
        unsupported=pl.DataFrame(
            {"url": [u for u, _ in unsupported], "caption": [None] * len(unsupported),
             "status": [UNSUPPORTED_STATUS] * len(unsupported), "error_message": [d for _, d in unsupported],
             "jpg": [None] * len(unsupported)},
            schema={"url": pl.Utf8, "caption": pl.Utf8, "status": pl.Utf8, "error_message": pl.Utf8,
                    "jpg": pl.Binary},
        ),
    )


def folder_url_list(folder: Path) -> pl.DataFrame:
    """Every image file under `folder` as a file:// URL, sorted (the files `list_folder` would fetch)."""
    return list_folder(folder).images


def write_listed_shard(rows: pl.DataFrame, target: str) -> str:
    """Write rows in a fetched shard's layout as `target/00000.parquet` plus its marker, like a shard img2dataset
    finished (`finished_shards` lists it); an existing shard is kept, never rewritten."""
    shard = storage.join(target, "00000.parquet")
    marker = storage.join(target, "00000_stats.json")
    if not storage.exists(marker):
        storage.write_bytes(shard, storage.parquet_bytes(rows.to_arrow()))
        storage.write_bytes(marker, json.dumps({"count": rows.height, "status_dict": {UNSUPPORTED_STATUS:
                                                                                        rows.height}}).encode())
    return shard


def fetch_images(urls: pl.DataFrame, out_dir: Path, config: FetchConfig = FetchConfig()) -> list[Path]:
    """Download with img2dataset into `out_dir/<shard>.parquet`; finished shards are kept on rerun (resume)."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    out_dir.mkdir(parents=True, exist_ok=True)
    url_file = out_dir / "_urls.parquet"
    urls.write_parquet(url_file)
    settings = dict(
        url_list=str(url_file),
        input_format="parquet",
        url_col="url",
        caption_col="caption",
        output_format="parquet",
        output_folder=str(out_dir),
        processes_count=config.processes,
        thread_count=config.threads,
        number_sample_per_shard=config.shard_size,
        timeout=config.timeout_s,
        retries=config.retries,
        disable_all_reencoding=True,  # keep the original bytes: image_id is their sha256
        compute_hash=None,
        extract_exif=False,
        incremental_mode="incremental",
        enable_wandb=False,
    )
    if urls.height:
        shard_ids = range(math.ceil(urls.height / config.shard_size))
        run_until_shards_finish(_img2dataset_download, settings, out_dir, shard_ids, SHUTDOWN_GRACE_S)
    return sorted(p for p in out_dir.glob("[0-9]*.parquet"))


def _img2dataset_download(settings: dict) -> None:
    from img2dataset import download

    download(**settings)


def _in_own_process_group(work: Callable[[dict], None], settings: dict) -> None:
    os.setsid()  # its pool workers join this group, so one signal stops them all
    work(settings)


def run_until_shards_finish(work: Callable[[dict], None], settings: dict, out_dir: Path, shard_ids: range,
                            grace_s: float) -> None:
    """Run `work(settings)` (a module-level function) in a spawned process group until it exits, or until every shard
    in `shard_ids` is finished in `out_dir` and it has had `grace_s` more seconds to exit.

    img2dataset's shutdown can hang once the work is done (`pool.terminate()` joining a worker that never exits, seen
    on a loaded machine), and its workers then keep the caller alive too. Here the finished shards are kept and the
    whole group is stopped; it is stopped as well when the caller is interrupted. A run that exits on its own with an
    error raises.
    """
    process = multiprocessing.get_context("spawn").Process(target=_in_own_process_group, args=(work, settings))
    process.start()
    markers = [out_dir / f"{shard:05d}_stats.json" for shard in shard_ids]
    finished_at = None
    try:
        while process.is_alive():
            process.join(timeout=0.5)
            if finished_at is None and all(marker.exists() for marker in markers):
                finished_at = time.monotonic()
            if process.is_alive() and finished_at is not None and time.monotonic() - finished_at > grace_s:
                log.warning("img2dataset finished all %d shards but did not exit within %.0f s: stopping it",
                            len(markers), grace_s)
                shutil.rmtree(out_dir / "_tmp", ignore_errors=True)  # its scratch folder, removed when it exits
                return
    finally:
        process.kill()
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:  # the group has exited with it
            pass
        process.join()
    if process.exitcode:
        raise RuntimeError(f"img2dataset failed (exit code {process.exitcode}); its output above says why")


def finished_shards(folder: str, *, recursive: bool = False) -> list[str]:
    """Shard files img2dataset finished in `folder` (its `<n>_stats.json` is written when a shard is complete)."""
    files = storage.list_files(folder, recursive=recursive)
    markers = {f.removesuffix("_stats.json") for f in files if f.endswith("_stats.json")}
    return [f for f in files if re.fullmatch(r"\d+\.parquet", storage.name(f)) and f.removesuffix(".parquet") in markers]


def fetch_into(urls: pl.DataFrame, target: str, staging: Path, config: FetchConfig = FetchConfig()) -> list[str]:
    """Fetch into `target`, a local folder or an object-store URL every machine of a build reads.

    For object storage img2dataset works in the local `staging` folder; each finished shard is uploaded, then its
    marker, and its local copy dropped. Markers already in `target` are copied into `staging` first, so shards any
    machine finished are not fetched again. An upload checks for the shard's marker first; object stores offer no
    conditional write here, so two machines fetching the same source at the same moment could both upload a shard:
    fetch each source from one machine.
    """
    if not storage.is_remote(target):
        fetch_images(urls, Path(target), config)
        return finished_shards(target)
    staging.mkdir(parents=True, exist_ok=True)
    for marker in storage.list_files(target):
        if marker.endswith("_stats.json") and not (staging / storage.name(marker)).exists():
            (staging / storage.name(marker)).write_bytes(storage.read_bytes(marker))
    fetch_images(urls, staging, config)
    for marker in sorted(staging.glob("*_stats.json")):
        shard_file = staging / marker.name.replace("_stats.json", ".parquet")
        if shard_file.exists():
            if not storage.exists(storage.join(target, marker.name)):  # never over a shard another machine finished
                storage.write_bytes(storage.join(target, shard_file.name), shard_file.read_bytes())
                storage.write_bytes(storage.join(target, marker.name), marker.read_bytes())
            shard_file.unlink()
    return finished_shards(target)


def read_fetched_shard(path: str) -> pa.Table:
    """One img2dataset shard as (source, caption, status, error_message, data)."""
    table = storage.read_parquet(path)
    data_col = next(c for c in ("jpg", "png", "webp") if c in table.column_names)
    caption = table.column("caption") if "caption" in table.column_names else pa.nulls(table.num_rows, pa.string())
    return pa.table(
        {
            "source": table.column("url"),
            "caption": caption.cast(pa.string()),
            "status": table.column("status"),
            "error_message": table.column("error_message").cast(pa.string()),
            "data": table.column(data_col).cast(pa.binary()),
        }
    )
