"""DreamBooth's automatic metrics: DINO and CLIP-I (subject fidelity) and CLIP-T (prompt fidelity).

The protocol is section 4.1 of Ruiz et al. 2023, "DreamBooth: Fine Tuning Text-to-Image Diffusion Models for
Subject-Driven Generation" (CVPR, arXiv:2208.12242):

- DINO: the cosine similarity between the self-supervised ViT-S/16 DINO embeddings (`facebook/dino-vits16`, the
  CLS token of the last layer) of a generated image and a real photo of its subject, averaged over every
  (generated, real) pair of the subject;
- CLIP-I: the same with CLIP image embeddings;
- CLIP-T: the cosine similarity between a generated image's CLIP image embedding and the CLIP text embedding of its
  prompt, averaged over the generated images.

The paper does not say how the unique identifier (`sks`) is treated in CLIP-T; a CLIP text encoder never saw it, so
we drop it and keep the class noun: `'a {0} {1} on the beach'` becomes "a dog on the beach". Textual Inversion (Gal
et al. 2023, ICLR) drops its placeholder word from the prompt in the same way for its text similarity, and public
DreamBench scripts do likewise (they remove `sks` before encoding). Custom Diffusion's `customconcept101/evaluate.py`
(adobe-research/custom-diffusion) computes DINO and CLIP-I as the mean of the full generated x real similarity
matrix, the pairing used here. Images go through each model's own image processor (a hub checkpoint's
`preprocessor_config.json`), which the report names; published numbers used their own resizing, so small
differences from them are expected.

A subject's score is the mean over its pairs; the overall score is the mean over every scored generated image (with
complete outputs, 25 prompts per subject, that is also the mean of the subject means). Outputs absent from the
results folder are counted and listed, never guessed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

from evaluation.benchmarks import DreamBoothSubject, load_dreambooth
from evaluation.generate import DREAMBOOTH_TOKEN, MANIFEST
from schemas.errors import ConfigError

SCORES_FILE = "dreambooth_scores.parquet"
REPORT_FILE = "dreambooth_report.md"
METRICS = ("dino", "clip_i", "clip_t")
PAPER = "Ruiz et al. 2023, DreamBooth (CVPR, arXiv:2208.12242), sec. 4.1"


def clip_t_prompt(template: str, class_name: str) -> str:
    """The text CLIP-T compares with: the prompt without the unique identifier, e.g. "a dog on the beach"."""
    return " ".join(template.format("", class_name).split())


def cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every row of `a` with every row of `b` (float64), shape (len(a), len(b))."""
    a = torch.nn.functional.normalize(a.double(), dim=-1)
    b = torch.nn.functional.normalize(b.double(), dim=-1)
    return a @ b.T


@dataclass(frozen=True)
class SubjectScores:
    """Per generated image: DINO and CLIP-I (mean over the subject's real photos) and CLIP-T; and their means."""

    dino: tuple[float, ...]
    clip_i: tuple[float, ...]
    clip_t: tuple[float, ...]

    def mean(self, metric: str) -> float:
        values = getattr(self, metric)
        return sum(values) / len(values)


def scores_from_embeddings(dino_generated: torch.Tensor, dino_real: torch.Tensor, clip_generated: torch.Tensor,
                           clip_real: torch.Tensor, clip_text: torch.Tensor) -> SubjectScores:
    """The metrics from embeddings (rows: generated images, real photos, and one prompt per generated image).

    Each generated image is compared with every real photo, so each row of the pair matrix has the same weight and
    the mean of the per-image scores is the mean over all pairs.
    """
    if not len(dino_generated) == len(clip_generated) == len(clip_text):
        raise ValueError(f"{len(dino_generated)} DINO, {len(clip_generated)} CLIP image and {len(clip_text)} text "
                         "embeddings for the generated images")
    if len(dino_real) == 0 or len(clip_real) == 0 or len(dino_generated) == 0:
        raise ValueError("no real or no generated images")
    dino = cosine_matrix(dino_generated, dino_real).mean(dim=1)
    clip_i = cosine_matrix(clip_generated, clip_real).mean(dim=1)
    clip_t = cosine_matrix(clip_generated, clip_text).diagonal()
    return SubjectScores(tuple(dino.tolist()), tuple(clip_i.tolist()), tuple(clip_t.tolist()))


def _features(output: object) -> torch.Tensor:
    """`get_*_features` returns a tensor in older transformers and an output with the projection in pooler_output."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _rgb(images: Sequence[Image.Image]) -> list[Image.Image]:
    return [image if image.mode == "RGB" else image.convert("RGB") for image in images]


class DreamBoothMetrics:
    """A DINO ViT and a CLIP, each loaded by path or hub id with its own processor, frozen, in float32."""

    def __init__(self, dino: str | Path, clip: str | Path, device: str | None = None, batch_size: int = 32) -> None:
        from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoTokenizer, ViTModel

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.batch_size = batch_size
        self.dino_name, self.clip_name = str(dino), str(clip)
        try:
            dino_type = AutoConfig.from_pretrained(dino).model_type
            # A ViT checkpoint's pooler is not part of DINO and is never used: the CLS token is the embedding.
            dino_class, kwargs = (ViTModel, {"add_pooling_layer": False}) if dino_type == "vit" else (AutoModel, {})
            self.dino = dino_class.from_pretrained(dino, **kwargs).to(self.device).eval().requires_grad_(False)
            self.dino_processor = AutoImageProcessor.from_pretrained(dino, backend="pil")
        except (OSError, ValueError) as error:
            raise ConfigError(f"--dino {dino}: cannot load a ViT with its image processor "
                              f"({' '.join(str(error).split())[:300]})") from None
        try:
            self.clip = AutoModel.from_pretrained(clip).to(self.device).eval().requires_grad_(False)
            self.clip_processor = AutoImageProcessor.from_pretrained(clip, backend="pil")
            self.clip_tokenizer = AutoTokenizer.from_pretrained(clip)
        except (OSError, ValueError) as error:
            raise ConfigError(f"--clip {clip}: cannot load a CLIP with its image processor and tokenizer "
                              f"({' '.join(str(error).split())[:300]})") from None
        if not (hasattr(self.clip, "get_image_features") and hasattr(self.clip, "get_text_features")):
            raise ConfigError(f"--clip {clip}: {type(self.clip).__name__} has no image and text embeddings")

    def describe(self) -> dict[str, str]:
        """The models as the report names them: what was given, the architecture, and the input size."""
        def processor(p) -> str:
            size = getattr(p, "crop_size", None) if getattr(p, "do_center_crop", False) else getattr(p, "size", None)
            return f"{type(p).__name__}, input {dict(size) if size else '?'}"

        return {"dino": f"{self.dino_name} ({self.dino.config.model_type}, CLS token of the last layer; "
                        f"{processor(self.dino_processor)})",
                "clip": f"{self.clip_name} ({self.clip.config.model_type}, projected image and text embeddings; "
                        f"{processor(self.clip_processor)})"}

    def _batched(self, items: Sequence, embed) -> torch.Tensor:
        return torch.cat([embed(items[i : i + self.batch_size]).float().cpu()
                          for i in range(0, len(items), self.batch_size)])

    @torch.inference_mode()
    def embed_dino(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """The DINO CLS embedding of each image."""
        def embed(chunk):
            pixels = self.dino_processor(images=_rgb(chunk), return_tensors="pt")["pixel_values"].to(self.device)
            return self.dino(pixel_values=pixels).last_hidden_state[:, 0]

        return self._batched(images, embed)

    @torch.inference_mode()
    def embed_clip_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """The CLIP image embedding of each image."""
        def embed(chunk):
            pixels = self.clip_processor(images=_rgb(chunk), return_tensors="pt")["pixel_values"].to(self.device)
            return _features(self.clip.get_image_features(pixel_values=pixels))

        return self._batched(images, embed)

    @torch.inference_mode()
    def embed_clip_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """The CLIP text embedding of each text (truncated to the text encoder's length)."""
        def embed(chunk):
            tokens = self.clip_tokenizer(list(chunk), padding=True, truncation=True, return_tensors="pt")
            tokens = {name: value.to(self.device) for name, value in tokens.items() if name != "token_type_ids"}
            return _features(self.clip.get_text_features(**tokens))

        return self._batched(texts, embed)

    def score_subject(self, real_images: Sequence[Image.Image],
                      generated: Sequence[tuple[Image.Image, str]]) -> SubjectScores:
        """DINO, CLIP-I and CLIP-T of each generated (image, CLIP-T text) pair against the subject's real photos."""
        if not real_images or not generated:
            raise ValueError("score_subject needs at least one real and one generated image")
        images = [image for image, _ in generated]
        return scores_from_embeddings(self.embed_dino(images), self.embed_dino(real_images),
                                      self.embed_clip_images(images), self.embed_clip_images(real_images),
                                      self.embed_clip_texts([text for _, text in generated]))


@dataclass(frozen=True)
class GeneratedImage:
    """One output found in the results folder."""

    subject: DreamBoothSubject
    prompt_index: int
    sample: int  # 0 for `<index>.png`, k for `<index>_<k>.png`
    path: Path


@dataclass(frozen=True)
class DreamBoothReport:
    folder: Path
    scores: Path
    markdown: Path
    images: int
    missing: int
    means: dict[str, float | None]


def find_outputs(subjects: Sequence[DreamBoothSubject], folder: Path) -> tuple[list[GeneratedImage], list[str]]:
    """Every `<subject>/<prompt index>.png` (or `<index>_<k>.png`) in `folder`, and the prompts with none."""
    found, missing = [], []
    for subject in subjects:
        for index in range(len(subject.prompt_templates)):
            pattern = re.compile(rf"{index}(?:_(\d+))?\.png")
            paths = sorted((folder / subject.name).glob(f"{index}*.png")) if (folder / subject.name).is_dir() else []
            matches = [(m, p) for p in paths if (m := pattern.fullmatch(p.name))]
            if not matches:
                missing.append(f"{subject.name}/{index}.png")
            found += [GeneratedImage(subject, index, int(m[1] or 0), p)
                      for m, p in sorted(matches, key=lambda mp: int(mp[0][1] or 0))]
    return found, missing


def _open(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except OSError as error:
        raise ConfigError(f"{path}: not a readable image ({' '.join(str(error).split())})") from None


def _read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    if not path.is_file():
        return {}
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: not valid JSON ({' '.join(str(error).split())})") from None
    if isinstance(manifest, dict) and manifest.get("benchmark", "dreambooth") != "dreambooth":
        raise ConfigError(f"{folder} holds {manifest['benchmark']} outputs ({MANIFEST}), not DreamBooth ones")
    return manifest if isinstance(manifest, dict) else {}


SCHEMA = pa.schema([
    ("benchmark", pa.string()), ("method", pa.string()), ("subject", pa.string()), ("class_name", pa.string()),
    ("live", pa.bool_()), ("prompt_index", pa.int64()), ("sample", pa.int64()), ("prompt", pa.string()),
    ("clip_t_prompt", pa.string()), ("output_path", pa.string()), ("real_images", pa.int64()),
    ("dino", pa.float64()), ("clip_i", pa.float64()), ("clip_t", pa.float64()),
    ("dino_model", pa.string()), ("clip_model", pa.string()),
])


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(cell).replace("|", "\\|") for cell in row) + " |" for row in rows]


def markdown_report(method: str, rows: list[dict], subjects: Sequence[DreamBoothSubject], missing: list[str],
                    models: dict[str, str], manifest: dict, data: Path) -> str:
    """Settings, the overall means, a row per subject, and the missing outputs."""
    expected = sum(len(s.prompt_templates) for s in subjects)
    settings = [["data", data], ["method", method], ["DINO model", models["dino"]], ["CLIP model", models["clip"]],
                ["protocol", f"{PAPER}: DINO and CLIP-I averaged over all (generated, real) pairs of a subject; "
                             "CLIP-T over generated images"],
                ["CLIP-T text", "the prompt without the unique identifier, e.g. 'a dog on the beach'"],
                ["overall", "mean over every scored generated image"]]
    settings += [[key, manifest[key]] for key in ("checkpoint", "num_steps", "resolution", "seed") if key in manifest]
    means = {metric: _mean([row[metric] for row in rows]) for metric in METRICS}
    scored = sorted({row["subject"] for row in rows})
    overall = [[method, *(_number(means[m]) for m in METRICS), f"{len(scored)} of {len(subjects)}", len(rows),
                f"{expected - len(missing)} of {expected}"]]
    lines = [f"# DreamBooth: {method}", "", *_table(["", ""], settings), "", "## Scores", "",
             *_table(["method", "DINO", "CLIP-I", "CLIP-T", "subjects", "images", "prompts with output"], overall),
             ""]
    if missing:
        lines += [f"- {len(missing)} of {expected} prompts have no output: these means are over what exists, so they "
                  "are not the benchmark's numbers.", ""]
    per_subject = []
    for subject in subjects:
        own = [row for row in rows if row["subject"] == subject.name]
        lacking = sum(1 for name in missing if name.split("/", 1)[0] == subject.name)
        per_subject.append([subject.name, subject.class_name, len(subject.images), len(own), lacking,
                            *(_number(_mean([row[m] for row in own])) for m in METRICS)])
    lines += ["## Per subject", "",
              *_table(["subject", "class", "real images", "generated", "prompts missing", "DINO", "CLIP-I", "CLIP-T"],
                      per_subject), "", "## Missing outputs", "",
              f"{len(missing)} of {expected} prompts have no `<subject>/<prompt index>.png` in the results folder; "
              "they are counted here and left out of every mean.", ""]
    lines += [f"- {name}" for name in missing[:50]]
    if len(missing) > 50:
        lines.append(f"- ... and {len(missing) - 50} more")
    return "\n".join(lines).rstrip() + "\n"


def dreambooth_report(data_path: str | Path, results_dir: str | Path, method: str, dino: str | Path | None = None,
                      clip: str | Path | None = None, device: str | None = None,
                      metrics: DreamBoothMetrics | None = None) -> DreamBoothReport:
    """Score `<results_dir>/<method>/<subject>/<prompt index>.png` against DreamBooth's photos; write the Parquet
    (one row per generated image) and the markdown report beside the outputs. `metrics` reuses loaded models."""
    if not re.fullmatch(r"[\w.+-]+", method) or method in {".", ".."}:
        raise ConfigError(f"method {method!r} must be one folder name (letters, digits, . _ + -)")
    folder = Path(results_dir).expanduser().absolute() / method
    if not folder.is_dir():
        raise ConfigError(f"{folder}: no such folder (RESULTS/METHOD holding <subject>/<prompt index>.png)")
    subjects = load_dreambooth(data_path)
    manifest = _read_manifest(folder)
    found, missing = find_outputs(subjects, folder)
    if not found:
        raise ConfigError(f"{folder}: no DreamBooth outputs (<subject>/<prompt index>.png) for any of the "
                          f"{len(subjects)} subjects")
    if metrics is None:
        if dino is None or clip is None:
            raise ConfigError("both a DINO model and a CLIP model are needed (path or hub id)")
        metrics = DreamBoothMetrics(dino, clip, device)
    models = metrics.describe()
    rows: list[dict] = []
    for subject in subjects:
        own = [item for item in found if item.subject is subject]
        if not own:
            continue
        texts = [clip_t_prompt(subject.prompt_templates[item.prompt_index], subject.class_name) for item in own]
        real = [_open(path) for path in subject.images]
        scores = metrics.score_subject(real, [(_open(item.path), text) for item, text in zip(own, texts)])
        prompts = subject.prompts(DREAMBOOTH_TOKEN)
        for i, (item, text) in enumerate(zip(own, texts)):
            rows.append({
                "benchmark": "dreambooth", "method": method, "subject": subject.name,
                "class_name": subject.class_name, "live": subject.live, "prompt_index": item.prompt_index,
                "sample": item.sample, "prompt": prompts[item.prompt_index], "clip_t_prompt": text,
                "output_path": item.path.relative_to(folder).as_posix(), "real_images": len(real),
                "dino": scores.dino[i], "clip_i": scores.clip_i[i], "clip_t": scores.clip_t[i],
                "dino_model": metrics.dino_name, "clip_model": metrics.clip_name,
            })
    report = DreamBoothReport(folder, folder / SCORES_FILE, folder / REPORT_FILE, len(rows), len(missing),
                              {m: _mean([row[m] for row in rows]) for m in METRICS})
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), report.scores)
    text = markdown_report(method, rows, subjects, missing, models, manifest, Path(data_path).expanduser())
    report.markdown.write_text(text, encoding="utf-8")
    return report
