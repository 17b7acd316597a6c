"""The only `Definitions` of the project: `dagster dev -m dagster_project.definitions` (or `make ui`).

Resources come from the TOML named by `$NPEDIT_CORPUS_CONFIG`, else the embedded demo corpus (the sample images).
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from dagster_project.assets import benchmark_hashes, fetched_shards, images, snapshot, stage_assets, vlm_pool
from dagster_project.checks import SNAPSHOT_CHECKS
from dagster_project.engine_job import shards_on_engine_job
from dagster_project.resources import resources_from
from datasets_builder.config import CorpusConfig, SourceConfig, load_corpus_config


def default_config() -> CorpusConfig:
    path = os.environ.get("NPEDIT_CORPUS_CONFIG")
    if path:
        return load_corpus_config(Path(path))
    folder = Path(__file__).resolve().parents[1] / "datasets_builder" / "sample_images"
    return CorpusConfig(source=SourceConfig(folder=str(folder)), work_dir="corpus_work", lake_dir="corpus_lake")


CONFIG = default_config()
ALL_ASSETS = [fetched_shards, benchmark_hashes, images, *stage_assets(vlm_pool(CONFIG.vlm.backend)), snapshot]
defs = dg.Definitions(assets=ALL_ASSETS, asset_checks=SNAPSHOT_CHECKS, jobs=[shards_on_engine_job(CONFIG.build)],
                      resources=resources_from(CONFIG))
