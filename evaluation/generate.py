"""Benchmark outputs from a checkpoint: batched few-step edits of every case, in the benchmark's own result layout.

Layouts (what each official evaluation script reads):
- GEdit-Bench: `<out>/<method>/fullset/<task_type>/<language>/<key>.png`, with the dataset's `input_image` beside it
  as `<key>_SRCIMG.png` (Step1X-Edit's `GEdit-Bench/generate_image_example.py` writes both; the VIEScore script
  opens both and resizes the edit to the source's size before judging). The edit's input is `input_image_raw` when
  the cases carry it (`load_gedit(..., include_raw_image=True)`, as that example does), else `input_image`.
- ImgEdit-Bench Basic: `<out>/<method>/<key>.png`; `<out>/<method>` is the `--result_img_folder` of
  `Benchmark/Basic/basic_bench.py` (PKU-YuanGroup/ImgEdit), which opens `<key>.png` there for every case key.
- DreamBooth: `<out>/<method>/<subject>/<prompt index>.png` (see `dreambooth_jobs`).

Sizing: each input keeps its aspect ratio at about `resolution`^2 pixels, sides multiples of the backbone's spatial
factor (the trainer's `bucket_sizes` rule with the image's own ratio, and its `load_image`: resize to cover, centre
crop of what rounding the sides leaves over, about one factor per axis). Outputs are saved at that generation size;
cases are batched by generation size.

Determinism and resume: each case's noise comes from its own generator seeded by sha256(seed, case id), so a case's
image does not depend on which other cases are generated. Batches are fixed slices of the size groups in case order,
whatever is already done, so a resumed run batches exactly as an uninterrupted one and writes the same bytes (only a
run killed between the files of one batch regenerates that batch's rest in a smaller batch: the same noise, equal up
to the floating-point effect of batch size). An output that exists is never generated again; files are written to
a temporary name and renamed. `generation.json` in `<out>/<method>/` records the settings (and the checkpoint's
training critic, for the judge's check); a run with other settings into the same folder is refused.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from PIL import Image

from evaluation.benchmarks import BenchmarkCase, DreamBoothSubject
from evaluation.critic_guard import training_critic
from schemas.errors import ConfigError, Refused
from training.backbones.base import Backbone
from training.customization import customization_instruction
from training.sampling import SAMPLERS, edit_images

MANIFEST = "generation.json"
DREAMBOOTH_TOKEN = "sks"
COMPARED_SETTINGS = ("benchmark", "checkpoint", "backbone", "dtype", "sampler", "num_steps", "seed", "resolution",
                     "sizing")
SIZING = "aspect kept, ~resolution^2 pixels, sides multiples of the spatial factor, cover + centre crop"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class GenerationJob:
    """One output to write: where (relative to the method folder), from which image and prompt, under which id."""

    case_id: str
    output: str  # relative path of the edited image
    image: bytes = field(repr=False)  # the encoded input image
    prompt: str
    source_copy: str | None = None  # relative path where the judge's source image is written (GEdit's _SRCIMG)
    source_image: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class GenerationResult:
    """Where the outputs are and what this call did."""

    folder: Path
    generated: int
    skipped: int


def case_seed(seed: int, case_id: str) -> int:
    """A 63-bit seed for one case: sha256 of (run seed, case id), independent of batching and resume."""
    digest = hashlib.sha256(f"{seed}\0{case_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def generation_size(width: int, height: int, resolution: int, factor: int) -> tuple[int, int]:
    """(height, width) with about resolution^2 pixels and the image's aspect ratio, sides multiples of `factor`."""
    from training.data import bucket_sizes

    return bucket_sizes(resolution, (width / height,), factor)[0]


def benchmark_jobs(cases: Sequence[BenchmarkCase]) -> tuple[str, list[GenerationJob]]:
    """GEdit or ImgEdit cases as jobs in the benchmark's result layout; all cases must come from one benchmark."""
    kinds = {case.benchmark for case in cases}
    if len(kinds) != 1:
        raise ConfigError(f"cases from {len(kinds)} benchmarks ({', '.join(sorted(kinds))}); generate one at a time")
    benchmark = kinds.pop()
    jobs = []
    for case in cases:
        if benchmark == "gedit":
            folder = f"fullset/{case.task_type}/{case.language}"
            jobs.append(GenerationJob(case.case_id, f"{folder}/{case.key}.png", case.raw_image or case.image,
                                      case.instruction, f"{folder}/{case.key}_SRCIMG.png", case.image))
        else:
            jobs.append(GenerationJob(case.case_id, f"{case.key}.png", case.image, case.instruction))
    return benchmark, jobs


def dreambooth_jobs(subjects: Sequence[DreamBoothSubject]) -> list[GenerationJob]:
    """Customization of each subject's first photo into each of its prompts' scenes: the instruction is the trainer's
    (`training.customization`), with the object named by its class noun and the scene the prompt without its unique
    token ("a {0} {1} in the jungle" -> "a backpack in the jungle"); outputs go to `<subject>/<prompt index>.png`.
    """
    jobs = []
    for subject in subjects:
        reference = subject.images[0].read_bytes()
        for index, scene in enumerate(subject.prompts("")):
            scene = " ".join(scene.split())
            instruction = customization_instruction(f"the {subject.class_name}", scene)
            jobs.append(GenerationJob(f"dreambooth/{subject.name}/{index}", f"{subject.name}/{index}.png",
                                      reference, instruction))
    return jobs


def resolve_generator(path: str | Path) -> Path:
    """A run dir (its latest checkpoint), a checkpoint dir or a generator dir -> the diffusers-layout generator."""
    from training.checkpoint import latest_checkpoint

    given = Path(path).expanduser()
    if not given.exists():
        raise ConfigError(f"{given}: no such checkpoint (a run dir, a checkpoint dir or a generator dir)")
    found = given
    if (found / "checkpoints").is_dir():
        found = latest_checkpoint(found) or found
    if (found / "generator").is_dir():
        found = found / "generator"
    if not (found / "model_index.json").is_file():
        raise ConfigError(f"{given}: not a generator checkpoint (no model_index.json in it or in a checkpoint of it)")
    return found.resolve()


def _device_and_dtype(device: str | None) -> tuple[str, torch.dtype]:
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return device, torch.bfloat16 if device.startswith("cuda") else torch.float32


def load_backbone(path: str | Path, device: str | None = None) -> Backbone:
    """The checkpoint's generator behind whatever backbone adapter its pipeline class names (bf16 on a GPU)."""
    from training.backbones import backbone_class

    generator = resolve_generator(path)
    device, dtype = _device_and_dtype(device)
    return backbone_class(generator).from_pretrained(generator, dtype=dtype).to(device)


def _write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def _write_source_copy(path: Path, image: bytes) -> None:
    """The source image as PNG: PNG bytes as they are, anything else decoded and re-encoded."""
    if image.startswith(_PNG_SIGNATURE):
        _write_atomically(path, lambda tmp: tmp.write_bytes(image))
    else:
        with Image.open(io.BytesIO(image)) as decoded:
            rgb = decoded.convert("RGB")
        _write_atomically(path, lambda tmp: rgb.save(tmp, format="PNG"))


def _checked_manifest(folder: Path, settings: dict) -> None:
    """Write the settings on the first run; refuse a run whose settings differ from those recorded."""
    path = folder / MANIFEST
    if path.exists():
        try:
            recorded = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ConfigError(f"{path}: not valid JSON ({' '.join(str(error).split())}); it records the settings "
                              "of the outputs beside it") from None
        changed = [f"{key} {recorded.get(key)!r} -> {settings[key]!r}" for key in COMPARED_SETTINGS
                   if recorded.get(key) != settings[key]]
        if changed:
            raise Refused(f"{folder} holds outputs generated with other settings ({'; '.join(changed)}); "
                          "choose another --out or --method instead of mixing them")
        return
    _write_atomically(path, lambda tmp: tmp.write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8"))


def _batches(jobs: list[GenerationJob], sizes: list[tuple[int, int]], batch_size: int) -> list[list[int]]:
    """Job indices grouped by generation size (groups in order of first appearance), cut into fixed slices."""
    groups: dict[tuple[int, int], list[int]] = {}
    for index, size in enumerate(sizes):
        groups.setdefault(size, []).append(index)
    return [members[i : i + batch_size] for members in groups.values() for i in range(0, len(members), batch_size)]


def _image_size(job: GenerationJob) -> tuple[int, int]:
    with Image.open(io.BytesIO(job.image)) as image:
        return image.size


def generate(
    cases: Sequence[BenchmarkCase] | Sequence[DreamBoothSubject],
    backbone_or_checkpoint: Backbone | str | Path,
    out_dir: str | Path,
    *,
    method: str,
    num_steps: int = 4,
    seed: int = 0,
    batch_size: int = 8,
    resolution: int = 512,
    sampler: str = "renoise",
    device: str | None = None,
    progress: bool = True,
    on_batch: Callable[[list[str]], None] | None = None,
) -> GenerationResult:
    """Edit every case into `<out_dir>/<method>/` in the benchmark's result layout, resuming what exists.

    `backbone_or_checkpoint` is a loaded backbone or a run/checkpoint/generator dir (loaded with `load_backbone`).
    `on_batch` is called with the case ids of each batch once its files are written.
    """
    if not re.fullmatch(r"[\w.+-]+", method) or method in {".", ".."}:
        raise ConfigError(f"method {method!r} must be one folder name (letters, digits, . _ + -)")
    if num_steps < 1 or batch_size < 1 or resolution < 1:
        raise ConfigError(f"steps, batch size and resolution must be positive (got {num_steps}, {batch_size}, "
                          f"{resolution})")
    if sampler not in SAMPLERS:
        raise ConfigError(f"unknown sampler {sampler!r}; known: {', '.join(SAMPLERS)}")
    if cases and all(isinstance(case, DreamBoothSubject) for case in cases):
        benchmark, jobs = "dreambooth", dreambooth_jobs(cases)
    elif cases and all(isinstance(case, BenchmarkCase) for case in cases):
        benchmark, jobs = benchmark_jobs(cases)
    else:
        raise ConfigError("expected a non-empty list of benchmark cases or of DreamBooth subjects")

    if isinstance(backbone_or_checkpoint, (str, Path)):  # settings first: a refused run loads no weights
        from training.backbones import backbone_class

        checkpoint = str(resolve_generator(backbone_or_checkpoint))
        backbone_name = backbone_class(checkpoint).__name__
        dtype = str(_device_and_dtype(device)[1])
    else:
        backbone = backbone_or_checkpoint
        source = getattr(backbone, "source", None)
        checkpoint = str(Path(source).resolve()) if source is not None and Path(source).exists() else str(source)
        backbone_name, dtype = type(backbone).__name__, str(getattr(backbone, "compute_dtype", ""))
    settings = {
        "benchmark": benchmark, "checkpoint": checkpoint, "backbone": backbone_name,
        "dtype": dtype.removeprefix("torch."), "sampler": sampler, "num_steps": num_steps, "seed": seed,
        "resolution": resolution, "sizing": SIZING, "seeds": "per case: sha256(seed, case id), first 8 bytes",
        "batch_size": batch_size,
        "training_critic": training_critic(checkpoint) if Path(checkpoint).exists() else None,
    }
    folder = Path(out_dir).expanduser() / method
    folder.mkdir(parents=True, exist_ok=True)
    _checked_manifest(folder, settings)
    if isinstance(backbone_or_checkpoint, (str, Path)):
        backbone = load_backbone(checkpoint, device)
    factor = backbone.spatial_factor

    from tqdm import tqdm

    from training.data import load_image
    from training.visualize import to_pil

    sizes = [generation_size(*_image_size(job), resolution, factor) for job in jobs]
    done = [(folder / job.output).exists() for job in jobs]
    for job, finished in zip(jobs, done):
        if finished and job.source_copy and not (folder / job.source_copy).exists():
            _write_source_copy(folder / job.source_copy, job.source_image)
    generated = 0
    with tqdm(total=len(jobs), initial=sum(done), desc=f"{benchmark} {method}", unit="edit",
              disable=not progress) as bar:
        for batch in _batches(jobs, sizes, batch_size):
            pending = [i for i in batch if not done[i]]
            if not pending:
                continue
            references = torch.stack([load_image(jobs[i].image, sizes[i]) for i in pending])
            generators = [torch.Generator().manual_seed(case_seed(seed, jobs[i].case_id)) for i in pending]
            edited = edit_images(backbone, references, [jobs[i].prompt for i in pending], num_steps=num_steps,
                                 sampler=sampler, generator=generators)
            for i, image in zip(pending, edited):
                job = jobs[i]
                if job.source_copy and not (folder / job.source_copy).exists():
                    _write_source_copy(folder / job.source_copy, job.source_image)
                _write_atomically(folder / job.output, partial(to_pil(image).save, format="PNG"))
            generated += len(pending)
            bar.update(len(pending))
            if on_batch is not None:
                on_batch([jobs[i].case_id for i in pending])
    return GenerationResult(folder, generated, len(jobs) - generated)
