"""Dagster resources: where images come from, which VLM answers, where the lake lives (switchable per environment)."""

import dagster as dg

from datasets_builder.config import CorpusConfig, DecontaminationConfig, SourceConfig, VlmConfig
from datasets_builder.corpus import Corpus
from datasets_builder.fetch import FetchConfig
from datasets_builder.images import ImageLimits


class SourceResource(dg.ConfigurableResource):
    """The URL list (parquet/csv/jsonl) or image folder, and how img2dataset fetches it."""

    url_list: str | None = None
    folder: str | None = None
    url_col: str = "url"
    caption_col: str = "caption"
    work_dir: str = "corpus_work"
    fetched_dir: str | None = None
    shard_size: int = 1000
    processes: int = 2
    threads: int = 16
    timeout_s: int = 10
    retries: int = 0
    min_side: int = 32
    max_pixels: int = 40_000_000
    max_stored_side: int = 1024
    jpeg_quality: int = 95


class VlmResource(dg.ConfigurableResource):
    """The VLM backend (transformers | vllm | openai), its model path or hub id, sampling and batching."""

    backend: str = "transformers"
    model: str = ""
    batch_size: int = 8
    device: str = "cpu"
    dtype: str = "float32"
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    base_url: str = "http://127.0.0.1:8000/v1"
    max_in_flight: int = 256
    max_image_side: int = 512


class LakeResource(dg.ConfigurableResource):
    """The DuckLake catalog and data path; defaults put both under `lake_dir`."""

    lake_dir: str = "corpus_lake"
    catalog: str | None = None
    data_path: str | None = None


class DecontaminationResource(dg.ConfigurableResource):
    """Benchmark copies (gedit | imgedit | dreambooth -> local path) whose images are kept out of the corpus."""

    benchmarks: dict[str, str] = {}
    max_distance: int = 10


def corpus_from(source: SourceResource, vlm: VlmResource, lake: LakeResource,
                decontamination: DecontaminationResource) -> Corpus:
    return Corpus(
        CorpusConfig(
            source=SourceConfig(source.url_list, source.folder, source.url_col, source.caption_col),
            work_dir=source.work_dir,
            fetched_dir=source.fetched_dir,
            lake_dir=lake.lake_dir,
            catalog=lake.catalog,
            data_path=lake.data_path,
            fetch=FetchConfig(source.shard_size, source.processes, source.threads, source.timeout_s, source.retries),
            limits=ImageLimits(source.min_side, source.max_pixels, source.max_stored_side, source.jpeg_quality),
            vlm=VlmConfig(backend=vlm.backend, model=vlm.model, batch_size=vlm.batch_size, device=vlm.device,
                          dtype=vlm.dtype, temperature=vlm.temperature, top_p=vlm.top_p, seed=vlm.seed,
                          base_url=vlm.base_url, max_in_flight=vlm.max_in_flight,
                          max_image_side=vlm.max_image_side),
            decontamination=DecontaminationConfig(dict(decontamination.benchmarks), decontamination.max_distance),
        )
    )


def resources_from(config: CorpusConfig) -> dict[str, dg.ConfigurableResource]:
    """Resources equivalent to a `CorpusConfig` (the CLI's TOML), so both entry points build the same corpus."""
    s, f, v, limits = config.source, config.fetch, config.vlm, config.limits
    return {
        "source": SourceResource(url_list=s.url_list, folder=s.folder, url_col=s.url_col, caption_col=s.caption_col,
                                 work_dir=config.work_dir, fetched_dir=config.fetched_dir, shard_size=f.shard_size, processes=f.processes,
                                 threads=f.threads, timeout_s=f.timeout_s, retries=f.retries,
                                 min_side=limits.min_side, max_pixels=limits.max_pixels,
                                 max_stored_side=limits.max_stored_side, jpeg_quality=limits.jpeg_quality),
        "vlm": VlmResource(backend=v.backend, model=v.model, batch_size=v.batch_size, device=v.device, dtype=v.dtype,
                           temperature=v.temperature, top_p=v.top_p, seed=v.seed, base_url=v.base_url,
                           max_in_flight=v.max_in_flight, max_image_side=v.max_image_side),
        "lake": LakeResource(lake_dir=config.lake_dir, catalog=config.catalog, data_path=config.data_path),
        "decontamination": DecontaminationResource(benchmarks=dict(config.decontamination.benchmarks),
                                                   max_distance=config.decontamination.max_distance),
    }
