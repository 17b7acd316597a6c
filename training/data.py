"""Training data from a corpus snapshot: valid edits with their reference image, bucketed by aspect ratio,
sharded deterministically per rank, resumable exactly (the iterator's state is two integers)."""

from __future__ import annotations

import bisect
import hashlib
import io
import itertools
import random
from collections import Counter, OrderedDict
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from PIL import Image

from datasets_builder.lake import (LakeConfig, open_data_file, read_data_file, read_table, resolve, table_columns,
                                   table_files)
from schemas.errors import Refused
from training.config import DataConfig
from training.customization import CUSTOMIZATION, customization_instruction, phrasing_for
from training.questions import removal_target


@dataclass(frozen=True)
class EditBatch:
    references: torch.Tensor  # (B,3,H,W) in [-1, 1]
    instructions: list[str]
    edit_types: list[str]
    edited_captions: list[str]
    proposal_ids: list[str]
    target_objects: list[str | None] | None = None  # what a remove/replace/recolour acts on (schema version >= 2)
    reference_captions: list[str | None] | None = None  # the source image's caption c^y (None: it has none)
    # edit_types[b] == "customization": instructions[b] places target_objects[b] in the scene edited_captions[b]


def bucket_sizes(resolution: int, aspect_ratios: tuple[float, ...], multiple: int = 16) -> list[tuple[int, int]]:
    """(height, width) per aspect ratio with about resolution^2 pixels, sides multiples of `multiple`."""
    sizes = []
    for ratio in aspect_ratios:
        height = round(resolution / ratio**0.5 / multiple) * multiple
        width = round(resolution * ratio**0.5 / multiple) * multiple
        sizes.append((max(multiple, height), max(multiple, width)))
    return sizes


def load_image(data: bytes, size: tuple[int, int]) -> torch.Tensor:
    """Decode, resize to cover (height, width), centre-crop; -> (3,H,W) in [-1, 1]."""
    height, width = size
    image = Image.open(io.BytesIO(data)).convert("RGB")
    scale = max(width / image.width, height / image.height)
    resized = image.resize((max(width, round(image.width * scale)), max(height, round(image.height * scale))),
                           Image.Resampling.BICUBIC)
    left, top = (resized.width - width) // 2, (resized.height - height) // 2
    array = np.asarray(resized.crop((left, top, left + width, top + height)), dtype=np.float32)
    return torch.from_numpy(array / 127.5 - 1).permute(2, 0, 1)


class ImageStore:
    """Random access to image bytes in a snapshot's immutable Parquet files, one row group per read."""

    def __init__(self, files: list[str], max_open: int = 64):
        self.files = files
        self.max_open = max_open  # least recently used files are closed beyond this (open-file limits)
        self._open: OrderedDict[int, tuple[pq.ParquetFile, list[int]]] = OrderedDict()

    def index(self) -> pa.Table:
        """(image_id, width, height, file, row) for every image; pixels are not read."""
        parts = []
        for number, path in enumerate(self.files):
            table = read_data_file(path, columns=["image_id", "width", "height"])
            parts.append(table.append_column("file", pa.array([number] * table.num_rows, pa.int32()))
                              .append_column("row", pa.array(range(table.num_rows), pa.int64())))
        return pa.concat_tables(parts) if parts else pa.table({"image_id": pa.array([], pa.string())})

    def read(self, file: int, row: int) -> bytes:
        if file not in self._open:
            handle = open_data_file(self.files[file])
            sizes = [handle.metadata.row_group(g).num_rows for g in range(handle.num_row_groups)]
            self._open[file] = (handle, [0, *itertools.accumulate(sizes)])
            if len(self._open) > self.max_open:
                self._open.popitem(last=False)[1][0].close()
        self._open.move_to_end(file)
        handle, starts = self._open[file]
        group = bisect.bisect_right(starts, row) - 1
        return handle.read_row_group(group, columns=["image"]).column(0)[row - starts[group]].as_py()


class SnapshotEdits:
    """Every (valid) edit instruction of a snapshot with where its image lives, in a fixed order (by proposal_id).

    Only text and an image index are held in memory; pixels are read per sample from the snapshot's files.
    """

    def __init__(self, lake: LakeConfig, config: DataConfig):
        snapshot = resolve(lake, config.snapshot)
        self.snapshot_id = snapshot.snapshot_id
        columns = ["proposal_id", "image_id", "edit_type", "instruction", "edited_caption", "is_valid"]
        if "target_object" in table_columns(lake, "edit_instructions", snapshot.snapshot_id):
            columns.append("target_object")
        edits = read_table(lake, "edit_instructions", snapshot.snapshot_id, columns)
        if "target_object" not in edits.column_names:  # snapshots before schema version 2
            edits = edits.append_column("target_object", pa.nulls(edits.num_rows, pa.string()))
        if not config.include_invalid:
            edits = edits.filter(pc.field("is_valid"))
        if edits.num_rows == 0:
            raise Refused(f"snapshot {snapshot.snapshot_id} has no valid edit instructions to train on")
        self.customizations = 0
        if config.customization_fraction > 0:
            samples = customization_samples(lake, snapshot.snapshot_id)
            self.customizations = samples.num_rows
            edits = pa.concat_tables([edits, samples.select(edits.column_names).cast(edits.schema)])
        captions = read_table(lake, "captions", snapshot.snapshot_id, ["image_id", "caption"])
        edits = edits.join(captions.rename_columns(["image_id", "reference_caption"]), "image_id",
                           join_type="left outer")
        self.store = ImageStore(table_files(lake, "images", snapshot.snapshot_id))
        joined = edits.join(self.store.index(), "image_id", join_type="left outer")
        missing = joined.filter(pc.is_null(pc.field("file")))
        if missing.num_rows:
            raise Refused(f"snapshot {snapshot.snapshot_id}: {missing.num_rows} edits reference missing images")
        self.table = joined.sort_by("proposal_id")
        self.sizes = bucket_sizes(config.resolution, config.aspect_ratios)
        aspect = pc.divide(pc.cast(self.table["width"], pa.float64()), pc.cast(self.table["height"], pa.float64()))
        self.bucket = [self._nearest_bucket(a) for a in aspect.to_pylist()]
        self.edit_types = self.table["edit_type"].to_pylist()
        self.members: dict[str, list[int]] = {}  # row indices per edit type
        for i, edit_type in enumerate(self.edit_types):
            self.members.setdefault(edit_type, []).append(i)
        counts = Counter(self.edit_types)
        self.shares = edit_type_shares(Counter({t: n for t, n in counts.items() if t != CUSTOMIZATION}),
                                       config.edit_type_weights)
        if self.customizations:
            self.shares = {**{t: share * (1 - config.customization_fraction) for t, share in self.shares.items()},
                           CUSTOMIZATION: config.customization_fraction}

    def removal_targets(self) -> Counter:
        """How many removal edits take their object from the `target_object` column, from the instruction's
        phrasing, or find none (those are asked the general edit questions)."""
        rows = self.table.filter(pc.field("edit_type") == "remove").select(["instruction", "target_object"])
        return Counter(removal_target(i, t)[1] for i, t in zip(*(rows[c].to_pylist() for c in rows.column_names)))

    def _nearest_bucket(self, aspect: float) -> int:
        """The bucket whose width/height is closest to `aspect` in log space."""
        return min(range(len(self.sizes)), key=lambda b: abs(np.log(aspect * self.sizes[b][0] / self.sizes[b][1])))

    def __len__(self) -> int:
        return self.table.num_rows

    def row(self, i: int) -> dict:
        return self.table.slice(i, 1).to_pylist()[0]

    def image_bytes(self, row: dict) -> bytes:
        return self.store.read(row["file"], row["row"])


def customization_samples(lake: LakeConfig, snapshot_id: int) -> pa.Table:
    """One customization sample per background prompt of an object-centric image, in the edit table's columns:
    the instruction names the object and the scene, `edited_caption` is the scene (the DMD teacher's caption) and
    `target_object` the object."""
    objects = read_table(lake, "objects", snapshot_id, ["image_id", "is_object_centric"])
    prompts = read_table(lake, "background_prompts", snapshot_id,
                         ["image_id", "index", "object_name", "background_caption"])
    centric = objects.filter(pc.field("is_object_centric")).select(["image_id"])
    rows = prompts.join(centric, "image_id", join_type="inner").to_pylist()
    keys = [hashlib.sha256(f"{CUSTOMIZATION}/{r['image_id']}/{r['index']}".encode()).hexdigest() for r in rows]
    return pa.table({
        "proposal_id": keys,
        "image_id": [r["image_id"] for r in rows],
        "edit_type": [CUSTOMIZATION] * len(rows),
        "instruction": [customization_instruction(r["object_name"], r["background_caption"], phrasing_for(k))
                        for r, k in zip(rows, keys)],
        "edited_caption": [r["background_caption"] for r in rows],
        "is_valid": [True] * len(rows),
        "target_object": [r["object_name"] for r in rows],
    })


def edit_type_shares(counts: Counter, weights: dict[str, float]) -> dict[str, float]:
    """Each present edit type's share of an epoch: a named type gets its weight, the unnamed present types split
    what is left equally, and the shares are renormalised over the types the snapshot holds."""
    present = sorted(t for t, n in counts.items() if n)
    unnamed = [t for t in present if t not in weights]
    left = max(0.0, 1.0 - sum(weights.values()))
    raw = {t: weights[t] if t in weights else left / len(unnamed) for t in present}
    total = sum(raw.values())
    if total <= 0:
        raise Refused(f"data.edit_type_weights {weights} give no weight to the types in the snapshot "
                      f"({', '.join(present)})")
    return {t: w / total for t, w in raw.items()}


def epoch_quota(shares: dict[str, float], size: int) -> dict[str, int]:
    """Samples per type in an epoch of `size`: the shares rounded by largest remainder (they sum to `size`)."""
    exact = {t: share * size for t, share in shares.items()}
    quota = {t: int(x) for t, x in exact.items()}
    for t in sorted(exact, key=lambda t: quota[t] - exact[t])[: size - sum(quota.values())]:
        quota[t] += 1
    return quota


class EditBatches:
    """Infinite, deterministic batches for one rank: each edit type at its share of an epoch, epoch-seeded shuffle,
    round-robin rank split, same-bucket batches.

    State = (epoch, batches already yielded in the epoch): `state_dict`/`load_state_dict` resume exactly.
    """

    def __init__(self, dataset: SnapshotEdits, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1):
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.position = 0, 0
        self._cached_epoch: tuple[int, list[list[int]]] = (-1, [])

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """The batches of one epoch for this rank (computed once per epoch, not per batch)."""
        if self._cached_epoch[0] != epoch:
            self._cached_epoch = (epoch, self._compute_epoch_batches(epoch))
        return self._cached_epoch[1]

    def epoch_order(self, epoch: int) -> list[int]:
        """The epoch's samples (all ranks), each type at its share: a type's members are drawn from an endless
        stream that reshuffles them on every pass, so an oversampled type repeats and an undersampled one rotates."""
        order = []
        for edit_type, quota in epoch_quota(self.dataset.shares, len(self.dataset)).items():
            members, cycle, pool = self.dataset.members[edit_type], -1, []
            for k in range(epoch * quota, (epoch + 1) * quota):
                if k // len(members) != cycle:
                    cycle, pool = k // len(members), list(members)
                    random.Random(f"{self.seed}-{edit_type}-{cycle}").shuffle(pool)
                order.append(pool[k % len(members)])
        random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        return order

    def realised_mix(self) -> dict[str, float]:
        """The share of each edit type among this rank's samples of the current epoch (logged when a run starts)."""
        counts = Counter(self.dataset.edit_types[i] for batch in self.epoch_batches(self.epoch) for i in batch)
        total = sum(counts.values())
        return {t: counts[t] / total for t in sorted(counts)}

    def _compute_epoch_batches(self, epoch: int) -> list[list[int]]:
        order = self.epoch_order(epoch)
        mine = order[self.rank :: self.world_size]
        by_bucket: dict[int, list[int]] = {}
        for i in mine:
            by_bucket.setdefault(self.dataset.bucket[i], []).append(i)
        batches = []
        for members in by_bucket.values():
            members = members + members[: (-len(members)) % self.batch_size]  # wrap to full batches
            batches += [members[k : k + self.batch_size] for k in range(0, len(members), self.batch_size)]
        random.Random(self.seed * 7 + epoch).shuffle(batches)
        return batches

    def __iter__(self):
        return self

    def __next__(self) -> EditBatch:
        batches = self.epoch_batches(self.epoch)
        if self.position >= len(batches):
            self.epoch, self.position = self.epoch + 1, 0
            batches = self.epoch_batches(self.epoch)
        indices = batches[self.position]
        self.position += 1
        size = self.dataset.sizes[self.dataset.bucket[indices[0]]]
        rows = [self.dataset.row(i) for i in indices]
        return EditBatch(
            references=torch.stack([load_image(self.dataset.image_bytes(r), size) for r in rows]),
            instructions=[r["instruction"] for r in rows],
            edit_types=[r["edit_type"] for r in rows],
            edited_captions=[r["edited_caption"] or r["instruction"] for r in rows],
            proposal_ids=[r["proposal_id"] for r in rows],
            target_objects=[r["target_object"] for r in rows],
            reference_captions=[r["reference_caption"] for r in rows],
        )

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = state["epoch"], state["position"]


def snapshot_batches(config: DataConfig, *, seed: int, rank: int = 0, world_size: int = 1) -> EditBatches:
    """This rank's batches of the snapshot `config` names, in the lake it names."""
    lake = LakeConfig.of(config.lake_dir, config.catalog, config.data_path)
    return EditBatches(SnapshotEdits(lake, config), config.batch_size, seed=seed, rank=rank, world_size=world_size)
