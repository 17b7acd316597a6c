"""Builder configuration: typed, frozen dataclasses loaded from TOML; every field has a working default."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datasets_builder.fetch import FetchConfig
from datasets_builder.images import ImageLimits
from schemas.dataclass_io import from_dict
from schemas.errors import ConfigError


@dataclass(frozen=True)
class SourceConfig:
    """Exactly one of `url_list` (parquet/csv/jsonl) or `folder` (local images)."""

    url_list: str | None = None
    folder: str | None = None
    url_col: str = "url"
    caption_col: str = "caption"

    def __post_init__(self):
        if (self.url_list is None) == (self.folder is None):
            raise ConfigError("source: set exactly one of url_list or folder")


@dataclass(frozen=True)
class VlmConfig:
    """Which VLM answers, how it samples, how requests are batched."""

    backend: str = "transformers"
    model: str = ""  # path or hub id; empty means the tiny model from the zoo
    batch_size: int = 8
    device: str = "cpu"  # transformers backend: "cuda" on a GPU machine
    dtype: str = "float32"  # transformers backend: "bfloat16" for real models on a GPU
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    base_url: str = "http://127.0.0.1:8000/v1"  # for backend = "openai" (a `vllm serve` endpoint)
    # backend = "openai": requests kept open at once; the runner hands the backend at least this many per call, so a
    # server that batches 256 sequences stays full (the old thread pool held 16 at most).
    max_in_flight: int = 256
    # Images are sent to the VLM at most this many pixels on a side (encoded once per shard, reused by every stage):
    # a 1024 px stored photo costs the builder ~4 ms of CPU per request to ship, 512 px a quarter of that, and VLMs
    # tile larger inputs into more tokens. 0 sends images as stored.
    max_image_side: int = 512

    def __post_init__(self):
        if self.backend not in ("transformers", "vllm", "openai"):
            raise ConfigError(f"vlm.backend must be transformers, vllm or openai, not {self.backend!r}")
        if self.batch_size < 1:
            raise ConfigError("vlm.batch_size must be at least 1")
        if self.max_in_flight < 1:
            raise ConfigError("vlm.max_in_flight must be at least 1")
        if self.max_image_side < 0:
            raise ConfigError("vlm.max_image_side must be 0 (as stored) or a side in pixels")


ENGINES = ("local", "ray")


@dataclass(frozen=True)
class BuildConfig:
    """Where shard work runs (`datasets_builder.engines`): in this process, or as tasks on a Ray cluster.

    Shards' images are normalised one after another in shard order (cross-shard duplicate claims then go to the same
    shard on every run); their VLM stages overlap. `shards_in_flight` 0 means 3 when the VLM is a server (one
    shard's tail and the next ones' starts keep it full) and 1 when the model is loaded in this process."""

    engine: str = "local"
    ray_address: str = "auto"  # engine = "ray": the head's address (host:port), or "auto" (RAY_ADDRESS, a local head)
    shards_in_flight: int = 0
    max_retries: int = 3  # engine = "ray": a task whose worker or machine died is run again elsewhere

    def __post_init__(self):
        if self.engine not in ENGINES:
            raise ConfigError(f"build.engine must be local or ray, not {self.engine!r}")
        if self.shards_in_flight < 0:
            raise ConfigError("build.shards_in_flight must be 0 (automatic) or a number of shards")
        if self.max_retries < 0:
            raise ConfigError("build.max_retries must be 0 or more")


BENCHMARKS = ("gedit", "imgedit", "dreambooth")  # the copies decontamination can read (evaluation.benchmarks)


@dataclass(frozen=True)
class DecontaminationConfig:
    """Benchmark copies to keep out of the corpus (name -> local path, e.g. `gedit = "/data/GEdit-Bench"`): a corpus
    image equal to one of their images, or within `max_distance` pHash bits of it, is rejected as `benchmark_overlap`.
    """

    benchmarks: dict[str, str] = field(default_factory=dict)
    max_distance: int = 10  # of 64 bits; see datasets_builder.decontamination

    def __post_init__(self):
        unknown = sorted(set(self.benchmarks) - set(BENCHMARKS))
        if unknown:
            raise ConfigError(f"decontamination.benchmarks: unknown benchmark {unknown[0]!r} (known: "
                              f"{', '.join(BENCHMARKS)})")
        if not 0 <= self.max_distance < 32:
            raise ConfigError("decontamination.max_distance must be between 0 (exact pHash) and 31 bits")


@dataclass(frozen=True)
class CorpusConfig:
    """Everything one corpus build needs. `work_dir` holds fetched shards and the VLM cache; `lake_dir` the lake."""

    source: SourceConfig
    work_dir: str = "corpus_work"
    lake_dir: str = "corpus_lake"
    catalog: str | None = None  # e.g. "postgres:dbname=npedit host=db" for a team; default: a file in lake_dir
    data_path: str | None = None  # e.g. an object-store URL; default: lake_dir/data/
    fetched_dir: str | None = None  # fetched shards; default: work_dir/fetched; a shared URL lets machines split a build
    fetch: FetchConfig = field(default_factory=FetchConfig)
    limits: ImageLimits = field(default_factory=ImageLimits)
    vlm: VlmConfig = field(default_factory=VlmConfig)
    decontamination: DecontaminationConfig = field(default_factory=DecontaminationConfig)
    build: BuildConfig = field(default_factory=BuildConfig)


def load_corpus_config(path: Path, overrides: dict[str, Any] | None = None) -> CorpusConfig:
    """Read a TOML file into a `CorpusConfig`; unknown keys and missing sections are clear errors."""
    try:
        values = tomllib.loads(Path(path).read_text())
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None
    for key, value in (overrides or {}).items():
        values[key] = value
    if "source" not in values:
        raise ConfigError(f"{path}: a [source] table with url_list or folder is required")
    return from_dict(CorpusConfig, values, str(path))
