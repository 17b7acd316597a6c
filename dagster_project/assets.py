"""Thin assets over `datasets_builder.corpus.Corpus`: one per table, partitioned by ingest shard."""

import dagster as dg

from dagster_project.resources import DecontaminationResource, LakeResource, SourceResource, VlmResource, corpus_from
from datasets_builder import lake as lake_store
from datasets_builder import storage
from datasets_builder.corpus import STAGE_INPUTS, STAGE_OUTPUT
from datasets_builder.decontamination import hash_benchmark_images
from evaluation.benchmarks import benchmark_images
from schemas import VlmStage

shards = dg.DynamicPartitionsDefinition(name="shards")
GROUP = "corpus"
# Concurrency pools bound what a UI backfill of many shards runs at once (limits in DAGSTER_HOME, set by `npedit ui`):
# a VLM stage that loads the model (transformers, vLLM's engine) takes a slot of "vlm", which admits as many runs as
# models fit on the machine; one that only sends requests to a shared server (backend = "openai") takes a slot of
# "vlm_server", which admits several, so one stage's tail or another shard's start keeps the server's batch full;
# "lake_writer" keeps publishing the single writer of the catalog.
VLM_POOL, VLM_SERVER_POOL, IMAGES_POOL, LAKE_WRITER_POOL = "vlm", "vlm_server", "images", "lake_writer"


def vlm_pool(backend: str) -> str:
    """The pool a VLM stage of this backend takes a slot of."""
    return VLM_SERVER_POOL if backend == "openai" else VLM_POOL


@dg.asset(group_name=GROUP, description="Fetch the source with img2dataset into Parquet shards; registers shards.")
def fetched_shards(context: dg.AssetExecutionContext, source: SourceResource, vlm: VlmResource,
                   lake: LakeResource, decontamination: DecontaminationResource) -> dg.MaterializeResult:
    corpus = corpus_from(source, vlm, lake, decontamination)
    names = corpus.fetch()
    new = [n for n in names if not context.instance.has_dynamic_partition(shards.name, n)]
    context.instance.add_dynamic_partitions(shards.name, new)
    statuses = {}
    for name in names:
        for status in storage.read_parquet(corpus.fetched_path(name), columns=["status"]).column(0).to_pylist():
            statuses[status] = statuses.get(status, 0) + 1
    context.log.info(f"{len(names)} shards ({len(new)} new): {statuses}")
    return dg.MaterializeResult(metadata={"shards": len(names), "new_shards": len(new),
                                          **{f"urls_{k}": v for k, v in statuses.items()}})


@dg.asset(group_name=GROUP, description="Hashes (sha256 and pHash of light crops) of every image of the benchmark "
          "copies listed for decontamination; each shard's images step rejects corpus images that match them.")
def benchmark_hashes(context: dg.AssetExecutionContext, source: SourceResource, vlm: VlmResource, lake: LakeResource,
                     decontamination: DecontaminationResource) -> dg.MaterializeResult:
    corpus = corpus_from(source, vlm, lake, decontamination)
    listed = corpus.config.decontamination.benchmarks
    counts = {}
    if listed and not corpus.benchmark_hashes_path.exists():
        found = [image for name, path in listed.items() for image in benchmark_images(name, path)]
        counts = {name: sum(1 for b, _, _ in found if b == name) for name in listed}
        context.log.info(f"hashing {len(found)} benchmark images: {counts}")
        corpus.write_benchmark_hashes(hash_benchmark_images(found))
    if not listed:
        context.log.info("no benchmark copies listed (decontamination.benchmarks): nothing to keep out")
    return dg.MaterializeResult(metadata={"benchmarks": ", ".join(listed) or "none",
                                          **{f"images_{k}": v for k, v in counts.items()}})


@dg.asset(group_name=GROUP, partitions_def=shards, deps=[fetched_shards, benchmark_hashes], pool=IMAGES_POOL,
          description="Decoded, normalised, deduplicated images of one shard without benchmark images, and the "
                      "rejects with their reason.")
def images(context: dg.AssetExecutionContext, source: SourceResource, vlm: VlmResource, lake: LakeResource,
           decontamination: DecontaminationResource) -> dg.MaterializeResult:
    counts = corpus_from(source, vlm, lake, decontamination).build_images(context.partition_key)
    context.log.info(f"shard {context.partition_key}: {counts}")
    return dg.MaterializeResult(metadata=counts)


def _vlm_stage_asset(stage: VlmStage, deps: list[str], pool: str) -> dg.AssetsDefinition:
    @dg.asset(name=STAGE_OUTPUT[stage], group_name=GROUP, partitions_def=shards, deps=deps, pool=pool,
              description=f"VLM stage '{stage.value}' over one shard (rows + vlm_rejects).")
    def _stage(context: dg.AssetExecutionContext, source: SourceResource, vlm: VlmResource, lake: LakeResource,
               decontamination: DecontaminationResource) -> dg.MaterializeResult:
        corpus = corpus_from(source, vlm, lake, decontamination)
        runner = corpus.runner()
        runner.progress = lambda done, total: context.log.info(f"{stage.value}: {done}/{total} requests")
        counts = corpus.run_stage(stage, context.partition_key, runner)
        stats = runner.stats
        return dg.MaterializeResult(metadata={**counts, "requests": stats.requests, "cached": stats.cached,
                                              "seconds": round(stats.seconds, 2)})

    return _stage


def stage_assets(pool: str = VLM_POOL) -> list[dg.AssetsDefinition]:
    """One asset per VLM stage, each in `pool` (see `vlm_pool`)."""
    return [_vlm_stage_asset(stage, ["images", *(STAGE_OUTPUT[s] for s in STAGE_INPUTS[stage])], pool)
            for stage in STAGE_OUTPUT]


SHARD_ASSET_KEYS = ["images", *STAGE_OUTPUT.values()]


class SnapshotConfig(dg.Config):
    message: str = "corpus build"
    tag: str | None = None
    replace: bool = False  # the snapshot holds only this configuration's outputs; earlier snapshots keep theirs


@dg.asset(group_name=GROUP, pool=LAKE_WRITER_POOL,
          deps=[dg.AssetDep(k, partition_mapping=dg.AllPartitionMapping()) for k in SHARD_ASSET_KEYS],
          description="Publish every finished shard file as one immutable DuckLake snapshot.")
def snapshot(context: dg.AssetExecutionContext, config: SnapshotConfig, source: SourceResource, vlm: VlmResource,
             lake: LakeResource, decontamination: DecontaminationResource) -> dg.MaterializeResult:
    corpus = corpus_from(source, vlm, lake, decontamination)
    files = corpus.staged_files()
    missing = [s for s in corpus.shards() if not all(
        any(storage.name(p).startswith(s) for p in files[t]) for t in ("images", *STAGE_OUTPUT.values()))]
    if missing:
        context.log.warning(f"shards not finished, left out of this snapshot: {missing}")
    outcome = corpus.publish_outcome(message=config.message, tag=config.tag, replace=config.replace)
    published = outcome.snapshot
    if not outcome.created:
        context.log.info(f"snapshot {published.snapshot_id} already holds this content; nothing to publish")
    sample = lake_store.read_table(
        corpus.lake, "edit_instructions", published.snapshot_id,
        columns=["edit_type", "instruction", "is_valid", "edited_caption"],
    ).slice(0, 10).to_pylist()
    preview = "| edit_type | instruction | valid | edited caption |\n|---|---|---|---|\n" + "\n".join(
        f"| {r['edit_type']} | {r['instruction'][:60]} | {r['is_valid']} | {(r['edited_caption'] or '')[:60]} |"
        for r in sample
    )
    return dg.MaterializeResult(
        metadata={
            "snapshot_id": published.snapshot_id,
            "tag": published.tag or "",
            "new_snapshot": outcome.created,  # False: an earlier snapshot already held exactly this content
            "content_hash": published.content_hash,
            "unfinished_shards": len(missing),
            **{f"rows_{t}": n for t, n in published.row_counts.items()},
            "preview": dg.MetadataValue.md(preview),
        }
    )
