"""One corpus build: fetch -> images per shard -> VLM stages per shard -> publish, as plain methods.

Each step writes immutable staged Parquet files into the lake's data path and skips work already on disk, so a killed
run resumes without losing or duplicating rows. Dagster assets (`dagster_project`) call exactly these methods.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from functools import cached_property
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from datasets_builder import lake, storage
from datasets_builder.claims import ImageClaims, PostgresClaims, SqliteClaims
from datasets_builder.config import CorpusConfig
from datasets_builder.decontamination import CROP_STEPS, reject_overlaps
from datasets_builder.fetch import (fetch_into, finished_shards, list_folder, read_fetched_shard, read_url_list,
                                    write_listed_shard)
from datasets_builder.images import normalise_fetched, vlm_view
from datasets_builder.stages import caption_images, judge_objects, propose_backgrounds, propose_edits, validate_edits
from datasets_builder.vlm import PROMPTS, ResponseCache, SamplingParams, VlmRunner, make_backend
from datasets_builder.vlm.prompts import EDITS_PER_IMAGE
from schemas import ALL_TABLES, IMAGES, IMAGES_REJECTED, VLM_REJECTS, SnapshotRow, VlmStage

STAGE_OUTPUT = {
    VlmStage.CAPTION: "captions",
    VlmStage.PROPOSE: "edit_proposals",
    VlmStage.VALIDATE: "edit_instructions",
    VlmStage.OBJECT: "objects",
    VlmStage.BACKGROUND: "background_prompts",
}
STAGE_INPUTS = {
    VlmStage.CAPTION: (),
    VlmStage.PROPOSE: (),
    VlmStage.VALIDATE: (VlmStage.PROPOSE, VlmStage.CAPTION),
    VlmStage.OBJECT: (),
    VlmStage.BACKGROUND: (VlmStage.OBJECT,),
}
_BACKENDS: dict[tuple, object] = {}  # one loaded model per process, shared by every stage and shard


class Corpus:
    """A corpus build described by a `CorpusConfig`."""

    def __init__(self, config: CorpusConfig):
        self.config = config
        self.work_dir = Path(config.work_dir).resolve()
        self.lake = lake.LakeConfig.of(config.lake_dir, config.catalog, config.data_path)

    @property
    def fetched_dir(self) -> str:
        """Where fetched shards live: `work_dir/fetched`, or a folder/URL every machine of the build can read."""
        if self.config.fetched_dir:
            return storage.normalise(self.config.fetched_dir).rstrip("/")
        return str(self.work_dir / "fetched")

    @cached_property
    def claims(self) -> ImageClaims:
        """Duplicate claims: in the catalog's PostgreSQL database for a team, else SQLite in the work dir."""
        if self.lake.postgres_dsn is not None:
            return PostgresClaims(self.lake.postgres_dsn)
        return SqliteClaims(self.work_dir / "state.sqlite")

    # -- 1. source images ------------------------------------------------------------------------------------------
    def fetch(self) -> list[str]:
        """Fetch the source with img2dataset; returns its shard names (finished shards are not fetched again).

        Shards are named `<source fingerprint>-<n>`: a new URL list adds new shards next to earlier sources' shards,
        so the corpus grows source by source and nothing already published is touched.
        A folder's files the builder does not read (another extension, hidden) form one more shard of the source,
        `<source fingerprint>-unsupported-00000`, whose rows all become `unsupported` rejects: every file of the
        folder ends as an image or a reject.
        """
        source = self.config.source
        unsupported = None
        if source.folder is not None:
            listing = list_folder(Path(source.folder))
            urls, unsupported = listing.images, listing.unsupported
        else:
            urls = read_url_list(Path(source.url_list), source.url_col, source.caption_col)
        listed = urls.write_csv()
        if unsupported is not None and unsupported.height:  # a folder of images only keeps its earlier fingerprint
            listed += unsupported.select("url").write_csv()
        fingerprint = hashlib.sha256(listed.encode()).hexdigest()[:12]
        staging = self.work_dir / "fetch_staging" / fingerprint
        fetched = fetch_into(urls, storage.join(self.fetched_dir, fingerprint), staging, self.config.fetch)
        names = [f"{fingerprint}-{storage.name(p).removesuffix('.parquet')}" for p in fetched]
        if unsupported is not None and unsupported.height:
            write_listed_shard(unsupported, storage.join(self.fetched_dir, f"{fingerprint}-unsupported"))
            names.append(f"{fingerprint}-unsupported-00000")
        return names

    def shards(self) -> list[str]:
        """Every finished shard of every source fetched into `fetched_dir`."""
        found = finished_shards(self.fetched_dir, recursive=True)
        return sorted(f"{storage.name(storage.parent(p))}-{storage.name(p).removesuffix('.parquet')}" for p in found)

    def fetched_path(self, shard: str) -> str:
        fingerprint, number = shard.rsplit("-", 1)
        return storage.join(self.fetched_dir, fingerprint, f"{number}.parquet")

    @cached_property
    def images_fingerprint(self) -> str:
        """What decides a shard's accepted images: the image limits and, when set, the decontamination."""
        parts = asdict(self.config.limits)  # alone without decontamination: earlier builds keep their file names
        if self.config.decontamination.benchmarks:
            parts = [parts, self.benchmark_hashes_name]
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:8]

    def images_name(self, shard: str) -> str:
        """Names a shard's image files: the shard and a fingerprint of what produced them."""
        return f"{shard}-{self.images_fingerprint}"

    @cached_property
    def benchmark_hashes_name(self) -> str:
        """Names the benchmark hash table: the copies listed, the crops hashed and the distance allowed."""
        settings = self.config.decontamination
        parts = [sorted(settings.benchmarks.items()), settings.max_distance, CROP_STEPS]
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:12]

    @property
    def benchmark_hashes_path(self) -> Path:
        return self.work_dir / "benchmark_hashes" / f"{self.benchmark_hashes_name}.parquet"

    def write_benchmark_hashes(self, hashes: pa.Table) -> Path:
        """Keep the benchmark hash table (`decontamination.hash_benchmark_images`) for every shard's images step."""
        path = self.benchmark_hashes_path
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        pq.write_table(hashes, partial)
        partial.replace(path)
        return path

    def _decontaminate(self, images: pa.Table, shard: str) -> tuple[pa.Table, pa.Table]:
        """The shard's images without those matching a listed benchmark's, and those as `benchmark_overlap` rejects."""
        settings = self.config.decontamination
        if not settings.benchmarks:
            return images, IMAGES_REJECTED.to_arrow([])
        if not self.benchmark_hashes_path.exists():
            raise FileNotFoundError(f"decontamination lists {', '.join(settings.benchmarks)} but their hashes are not "
                                    f"in {self.benchmark_hashes_path}: materialize the benchmark_hashes asset first")
        return reject_overlaps(images, shard, pq.read_table(self.benchmark_hashes_path), settings.max_distance)

    def build_images(self, shard: str) -> dict[str, int]:
        """Normalise one fetched shard; benchmark images (when listed) and duplicates across shards (against a
        persistent claim table) become rejects."""
        images_path = lake.staged_path(self.lake, "images", self.images_name(shard))
        rejects_path = lake.staged_path(self.lake, "images_rejected", self.images_name(shard))
        if not (storage.exists(images_path) and storage.exists(rejects_path)):
            fetched = read_fetched_shard(self.fetched_path(shard))
            images, rejected = normalise_fetched(fetched, shard, self.config.limits)
            images, overlaps = self._decontaminate(images, shard)  # before claiming: claims hold corpus images only
            images, duplicates = self._claim(images, shard)
            rejected = pa.concat_tables([rejected, overlaps, duplicates])
            lake.write_staged(self.lake, IMAGES, images, self.images_name(shard))
            lake.write_staged(self.lake, IMAGES_REJECTED, rejected, self.images_name(shard))
        rejected = storage.read_parquet(rejects_path, columns=["reason"]).column("reason").to_pylist()
        counts = {"images": storage.num_rows(images_path), "rejected": len(rejected)}
        counts.update({f"rejected_{r}": rejected.count(r) for r in sorted(set(rejected))})
        return counts

    def _claim(self, images: pa.Table, shard: str) -> tuple[pa.Table, pa.Table]:
        owners = self.claims.claim(shard, images.column("image_id").to_pylist(), images.column("source").to_pylist())
        keep = [image_id not in owners for image_id in images.column("image_id").to_pylist()]
        duplicates = [
            dict(source=row["source"], shard=shard, reason="duplicate", image_id=row["image_id"],
                 detail=f"same bytes as {owners[row['image_id']][1]} (shard {owners[row['image_id']][0]})")
            for row, kept in zip(images.select(["image_id", "source"]).to_pylist(), keep)
            if not kept
        ]
        return images.filter(pa.array(keep, pa.bool_())), IMAGES_REJECTED.to_arrow(duplicates)

    # -- 2-6. VLM stages ---------------------------------------------------------------------------------------------
    def runner(self) -> VlmRunner:
        vlm = self.config.vlm
        model = vlm.model or str(_tiny_vlm_path())
        key = (vlm.backend, model, vlm.base_url, vlm.max_in_flight)
        if key not in _BACKENDS:
            options = {"base_url": vlm.base_url, "max_in_flight": vlm.max_in_flight} if vlm.backend == "openai" else {}
            if vlm.backend == "transformers":
                options = {"device": vlm.device, "dtype": vlm.dtype}
            _BACKENDS[key] = make_backend(vlm.backend, model, **options)
        sampling = SamplingParams(temperature=vlm.temperature, top_p=vlm.top_p, seed=vlm.seed)
        cache = ResponseCache(self.work_dir / "vlm_cache.sqlite")
        batch_size = runner_batch_size(self.config)
        view = f"max_side={vlm.max_image_side}" if vlm.max_image_side else ""
        return VlmRunner(_BACKENDS[key], cache, sampling=sampling, batch_size=batch_size, image_view=view)

    def vlm_images(self, shard: str) -> pa.Table:
        """The shard's images as the VLM sees them (`vlm_view`), made once per shard and kept in the work dir, so
        every stage and every process sends the same bytes without re-encoding them."""
        images_path = lake.staged_path(self.lake, "images", self.images_name(shard))
        if not storage.exists(images_path):
            raise FileNotFoundError(f"shard {shard}: build its images before the VLM stages ({images_path})")
        side = self.config.vlm.max_image_side
        if not side:
            return storage.read_parquet(images_path, columns=["image_id", "image"])
        path = self.work_dir / "vlm_images" / f"{self.images_name(shard)}-{side}.parquet"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(f".{os.getpid()}.tmp")
            pq.write_table(vlm_view(storage.read_parquet(images_path, columns=["image_id", "image"]), side), partial)
            partial.replace(path)  # atomic: a killed run leaves no half-written view
        return pq.read_table(path)

    def stage_fingerprint(self, stage: VlmStage, runner: VlmRunner) -> str:
        """Names a stage's output files: model, prompt version, sampling, image view, and its inputs' fingerprints."""
        parts = [runner.provenance(PROMPTS[stage]), self.images_fingerprint,
                 [self.stage_fingerprint(s, runner) for s in STAGE_INPUTS[stage]]]
        if runner.image_view:
            parts.append(runner.image_view)
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]

    def stage_names(self, stage: VlmStage, shard: str, runner: VlmRunner) -> tuple[str, str]:
        """Names of a stage's files for one shard: its rows, and its `vlm_rejects`."""
        name = f"{shard}-{self.stage_fingerprint(stage, runner)}"
        return name, f"{name}-{stage.value}"

    def stage_paths(self, stage: VlmStage, shard: str, runner: VlmRunner) -> tuple[str, str]:
        rows_name, rejects_name = self.stage_names(stage, shard, runner)
        return (lake.staged_path(self.lake, STAGE_OUTPUT[stage], rows_name),
                lake.staged_path(self.lake, "vlm_rejects", rejects_name))

    def _read_stage(self, stage: VlmStage, shard: str, runner: VlmRunner) -> pa.Table:
        path = self.stage_paths(stage, shard, runner)[0]
        if not storage.exists(path):
            raise FileNotFoundError(f"shard {shard}: run the {stage.value} stage before its dependants ({path})")
        return storage.read_parquet(path)

    def run_stage(self, stage: VlmStage, shard: str, runner: VlmRunner | None = None) -> dict[str, int]:
        """Run one VLM stage on one shard (skipped when its files exist); returns row and reject counts."""
        runner = runner or self.runner()
        out_path, rejects_path = self.stage_paths(stage, shard, runner)
        if not (storage.exists(out_path) and storage.exists(rejects_path)):
            images = self.vlm_images(shard)
            if stage is VlmStage.CAPTION:
                rows, rejects = caption_images(images, runner)
            elif stage is VlmStage.PROPOSE:
                rows, rejects = propose_edits(images, runner)
            elif stage is VlmStage.VALIDATE:
                proposals = self._read_stage(VlmStage.PROPOSE, shard, runner)
                captions = self._read_stage(VlmStage.CAPTION, shard, runner)
                rows, rejects = validate_edits(proposals, images, captions, runner)
            elif stage is VlmStage.OBJECT:
                rows, rejects = judge_objects(images, runner)
            else:
                rows, rejects = propose_backgrounds(self._read_stage(VlmStage.OBJECT, shard, runner), images, runner)
            rows_name, rejects_name = self.stage_names(stage, shard, runner)
            lake.write_staged(self.lake, ALL_TABLES[STAGE_OUTPUT[stage]], rows, rows_name)
            lake.write_staged(self.lake, VLM_REJECTS, rejects, rejects_name)
        return {"rows": storage.num_rows(out_path), "rejects": storage.num_rows(rejects_path)}

    # -- 7. snapshot -------------------------------------------------------------------------------------------------
    def staged_files(self, runner: VlmRunner | None = None) -> dict[str, list[str]]:
        """Every finished file of the current configuration, per table (one listing per table folder)."""
        runner = runner or self.runner()
        on_disk = {name: set(storage.list_files(storage.parent(lake.staged_path(self.lake, name, "x"))))
                   for name in lake.CORPUS_TABLES}
        files: dict[str, list[str]] = {name: [] for name in lake.CORPUS_TABLES}
        for shard in self.shards():
            for table in ("images", "images_rejected"):
                path = lake.staged_path(self.lake, table, self.images_name(shard))
                if path in on_disk[table]:
                    files[table].append(path)
            for stage in STAGE_OUTPUT:
                out_path, rejects_path = self.stage_paths(stage, shard, runner)
                if out_path in on_disk[STAGE_OUTPUT[stage]] and rejects_path in on_disk["vlm_rejects"]:
                    files[STAGE_OUTPUT[stage]].append(out_path)
                    files["vlm_rejects"].append(rejects_path)
        return files

    def publish(self, *, message: str, tag: str | None = None, replace: bool = False,
                runner: VlmRunner | None = None) -> SnapshotRow:
        """Publish every finished file as one immutable snapshot (`replace`: retire other configurations' files)."""
        return self.publish_outcome(message=message, tag=tag, replace=replace, runner=runner).snapshot

    def publish_outcome(self, *, message: str, tag: str | None = None, replace: bool = False,
                        runner: VlmRunner | None = None) -> lake.PublishOutcome:
        """`publish`, saying whether a snapshot was created or an earlier one already held this content."""
        config = json.loads(json.dumps(asdict(self.config), default=str))
        runner = runner or self.runner()
        return lake.publish_outcome(self.lake, lambda: self.staged_files(runner), message=message, tag=tag,
                                    builder_config=config, replace=replace)


def runner_batch_size(config: CorpusConfig) -> int:
    """Requests handed to the backend per call: a server backend gets at least `max_in_flight` (it keeps them all
    open), vLLM's offline engine a whole shard's stage (it schedules its own batches and idles between calls; the
    validation stage asks up to `EDITS_PER_IMAGE` questions per image), transformers `batch_size`. The answer cache
    is committed after each call."""
    vlm = config.vlm
    if vlm.backend == "openai":
        return max(vlm.batch_size, vlm.max_in_flight)
    if vlm.backend == "vllm":
        return max(vlm.batch_size, config.fetch.shard_size * EDITS_PER_IMAGE)
    return vlm.batch_size


def _tiny_vlm_path() -> Path:
    from model_zoo import build_tiny_models

    return build_tiny_models().vlm
