"""A job for the UI that builds every registered shard on an engine (`build.engine`: threads of the run's process, or
a Ray cluster) and records each shard as materializations of its assets, as `npedit corpus build` does: the UI's way
to put shard work on Ray instead of backfilling the partitioned assets step by step."""

import dataclasses

import dagster as dg

from dagster_project.assets import SHARD_ASSET_KEYS, shards
from dagster_project.resources import DecontaminationResource, LakeResource, SourceResource, VlmResource, corpus_from
from datasets_builder.config import BuildConfig
from datasets_builder.engines import Counts, make_engine


def shard_materializations(shard: str, counts: Counts) -> list[dg.AssetMaterialization]:
    """A shard an engine built, as a materialization of its partition of every shard asset, with its counts."""
    return [dg.AssetMaterialization(asset_key=asset, partition=shard, metadata=counts[asset])
            for asset in SHARD_ASSET_KEYS]


def shard_done(shard: str, position: int, total: int, counts: Counts) -> str:
    """The progress line of a finished shard."""
    rejects = sum(c.get("rejects", 0) for c in counts.values())
    return (f"shard {shard} done ({position}/{total}): {counts['images']['images']} images, "
            f"{counts['edit_instructions']['rows']} judged edits, {rejects} VLM answers rejected")


class EngineConfig(dg.Config):
    """`[build]` of the corpus TOML (see `datasets_builder.config.BuildConfig`), editable in the launchpad."""

    engine: str = "local"
    ray_address: str = "auto"
    shards_in_flight: int = 0
    max_retries: int = 3


@dg.op(description="Build every registered shard (images and VLM stages) on the configured engine; each finished "
                   "shard is recorded as a materialization of its partition of every shard asset.")
def build_shards(context: dg.OpExecutionContext, config: EngineConfig, source: SourceResource, vlm: VlmResource,
                 lake: LakeResource, decontamination: DecontaminationResource) -> None:
    corpus = corpus_from(source, vlm, lake, decontamination)
    corpus_config = dataclasses.replace(corpus.config, build=BuildConfig(**config.model_dump()))
    keys = context.instance.get_dynamic_partitions(shards.name)
    for i, (shard, counts) in enumerate(make_engine(corpus_config).run(corpus_config, keys), 1):
        for materialization in shard_materializations(shard, counts):
            context.log_event(materialization)
        context.log.info(shard_done(shard, i, len(keys), counts))


def shards_on_engine_job(build: BuildConfig) -> dg.JobDefinition:
    """The job, its launchpad config defaulting to `build`."""

    @dg.job(name="shards_on_engine", config={"ops": {"build_shards": {"config": dataclasses.asdict(build)}}},
            description="Every registered shard on the build's engine (local threads or a Ray cluster); materialize "
                        "fetched_shards before and snapshot after.")
    def shards_on_engine():
        build_shards()

    return shards_on_engine
