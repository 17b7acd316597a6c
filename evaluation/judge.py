"""Judging generated outputs through the builder's VLM backends, with the builder's caching runner.

Two images, one picture: GEdit's semantic question and ImgEdit's question compare the original with the edit. The
builder's `VlmRequest` carries one image, so the judge composes the two side by side (the edit resized to the
original's size, as GEdit's VIEScore script does before judging, a grey bar between them) and the prompt says which
is which. That keeps one code path on all three backends and the runner's one-image request hash unchanged; the cost
is that the judge sees each image at half the picture's width. The prompts are our own (`evaluation.prompts`), so
nothing is lost in comparability that was not already lost.

Answers are cached: every request goes through `VlmRunner` into a SQLite cache keyed by (judge model, prompt version,
sampling, image content, fields), so a rerun asks nothing already answered. An answer that does not parse is asked
again up to `parse_attempts` times, each with another sampling seed (and a temperature above zero, or a greedy judge
would repeat itself); after that the case is recorded as a failure with its reason, never guessed.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from PIL import Image

from datasets_builder.vlm.backends import SamplingParams, VlmBackend
from datasets_builder.vlm.runner import PromptInput, ResponseCache, VlmRunner
from evaluation.benchmarks import BenchmarkCase, _imgedit_folder
from evaluation.critic_guard import model_identities, refuse_critic_as_judge
from evaluation.generate import MANIFEST, benchmark_jobs
from evaluation.prompts import OURS, JudgePrompt, JudgePromptSet
from evaluation.protocols import GEditJudgement, ImgEditJudgement
from schemas.errors import ConfigError, Refused

JUDGED_BENCHMARKS = ("gedit", "imgedit")
PANEL_SIDE = 768  # the longer side of each half of a side-by-side picture, at most
BAR = 8  # the grey bar's width in pixels
RETRY_TEMPERATURE = 0.7
CHUNK_CASES = 256  # cases whose images are held in memory at once


@dataclass(frozen=True)
class CaseJudgement:
    """One case's judge scores (None where the answers failed), where its images are, and how it went."""

    case: BenchmarkCase
    output: str  # the edit's path, relative to the results folder (the benchmark's layout)
    input_path: Path | None  # the input image on disk: GEdit's _SRCIMG copy, ImgEdit's photo when the data is known
    scores: dict[str, int | None]
    failure: str | None  # why the case could not be scored; None when every answer parsed
    attempts: int  # questions asked for this case, re-asks included
    reasoning: dict[str, str] = field(default_factory=dict)  # prompt name -> the judge's reasoning
    failed_prompts: tuple[str, ...] = ()  # the prompts whose answers never parsed

    def gedit(self) -> GEditJudgement:
        """The case for `protocols.gedit_report`."""
        s = self.scores
        return GEditJudgement(self.case.task_type, self.case.language, bool(self.case.intersection), s["success"],
                              s["over_editing"], s["naturalness"], s["artifacts"])

    def imgedit(self) -> ImgEditJudgement:
        """The case for `protocols.imgedit_report`."""
        values = tuple(self.scores.values())
        return ImgEditJudgement(self.case.task_type, None if None in values else values)


@dataclass
class JudgeStats:
    """What the judge did: questions asked of the backend, answered from the cache, re-asked, failed."""

    requests: int = 0
    cached: int = 0
    generated: int = 0
    reasked: int = 0
    failed_cases: int = 0


def read_manifest(results: Path) -> dict:
    """`generation.json` of a results folder (`<out>/<method>` of `npedit eval generate`)."""
    path = results / MANIFEST
    if not path.is_file():
        raise ConfigError(f"{results}: no {MANIFEST}; expected the folder `npedit eval generate` wrote (OUT/METHOD)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: not valid JSON ({' '.join(str(error).split())})") from None
    if not isinstance(manifest, dict) or "benchmark" not in manifest:
        raise ConfigError(f"{path}: no benchmark recorded; not a generation manifest")
    return manifest


def refuse_judge(manifest: dict, judge_model: str, allow: bool = False) -> None:
    """Refuse a judge that is the outputs' training critic (recorded at generation, or in the checkpoint's config)."""
    if allow:
        return
    checkpoint = manifest.get("checkpoint")
    if checkpoint and Path(checkpoint).exists():
        refuse_critic_as_judge(checkpoint, judge_model)
    critic = manifest.get("training_critic")
    if critic and model_identities(critic) & model_identities(judge_model):
        raise Refused(f"the judge {judge_model} is the critic the outputs' checkpoint was trained with "
                      f"(training_critic in {MANIFEST}): its scores would reward hacking, not editing; use another "
                      "judge, or pass --allow-critic-judge to score with it anyway")


def side_by_side(original: Image.Image, edit: Image.Image, panel_side: int = PANEL_SIDE) -> bytes:
    """The original (left) and the edit resized to it (right), a grey bar between, halves <= panel_side.

    Encoded as JPEG at quality 95 without chroma subsampling: near-lossless to the eye, several times smaller than
    PNG for photos (a GPT-4.1 judge is sent every byte), and what the backends' data URLs declare.
    """
    scale = min(1.0, panel_side / max(original.size))
    size = (max(1, round(original.width * scale)), max(1, round(original.height * scale)))
    picture = Image.new("RGB", (2 * size[0] + BAR, size[1]), (128, 128, 128))
    picture.paste(original.convert("RGB").resize(size, Image.Resampling.LANCZOS), (0, 0))
    picture.paste(edit.convert("RGB").resize(size, Image.Resampling.LANCZOS), (size[0] + BAR, 0))
    out = io.BytesIO()
    picture.save(out, format="JPEG", quality=95, subsampling=0)
    return out.getvalue()


def _open(data: bytes, where: str) -> Image.Image:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.convert("RGB")
    except OSError as error:
        raise ConfigError(f"{where}: not a readable image ({' '.join(str(error).split())})") from None


def _content_id(case_id: str, picture: bytes) -> str:
    return f"{case_id}@{hashlib.sha256(picture).hexdigest()[:16]}"


@dataclass(frozen=True)
class _Case:
    case: BenchmarkCase
    output: str
    input_path: Path | None
    source_copy: Path | None  # GEdit's _SRCIMG file, which the official script compares the edit with

    def original(self) -> bytes:
        return self.source_copy.read_bytes() if self.source_copy is not None else self.case.image


def _located(benchmark: str, cases: Sequence[BenchmarkCase], results: Path, data_dir: Path | None) -> list[_Case]:
    """Each case's output (all must exist) and input image, as the benchmark's evaluation script finds them."""
    _, jobs = benchmark_jobs(cases)
    photos = _imgedit_folder(data_dir) if benchmark == "imgedit" and data_dir is not None else None
    missing = [job.output for job in jobs if not (results / job.output).is_file()]
    if missing:
        raise ConfigError(f"{results}: {len(missing)} of {len(jobs)} outputs missing (first: {missing[0]}); finish "
                          "`npedit eval generate`, or judge only the languages that were generated")
    located = []
    for case, job in zip(cases, jobs):
        source = results / job.source_copy if job.source_copy else None
        if source is not None and source.is_file():
            located.append(_Case(case, job.output, source, source))
        else:
            photo = photos / case.image_name if photos is not None and case.image_name else None
            located.append(_Case(case, job.output, photo, None))
    return located


def _ask(backend: VlmBackend, cache: ResponseCache, prompt: JudgePrompt, items: list[PromptInput], *,
         sampling: SamplingParams, batch_size: int, parse_attempts: int,
         stats: JudgeStats) -> dict[str, tuple[dict | None, str | None, int]]:
    """key -> (parsed answer or None, the last parse error, attempts) for every item, re-asking failures."""
    answers: dict[str, tuple[dict | None, str | None, int]] = {}
    pending = items
    for attempt in range(parse_attempts):
        if not pending:
            break
        asked = sampling if attempt == 0 else replace(
            sampling, temperature=max(sampling.temperature, RETRY_TEMPERATURE), seed=sampling.seed + attempt)
        runner = VlmRunner(backend, cache, sampling=asked, batch_size=batch_size)
        results = runner.run(prompt, pending)
        stats.requests += runner.stats.requests
        stats.cached += runner.stats.cached
        stats.generated += runner.stats.generated
        stats.reasked += len(pending) if attempt else 0
        for result in results:
            answers[result.item.key] = (result.parsed, result.error, attempt + 1)
        pending = [result.item for result in results if result.error is not None]
    return answers


def judge_outputs(
    benchmark: str,
    cases: Sequence[BenchmarkCase],
    outputs_dir: str | Path,
    backend: VlmBackend,
    *,
    cache_path: str | Path,
    prompts: JudgePromptSet | None = None,
    data_dir: str | Path | None = None,
    sampling: SamplingParams = SamplingParams(),
    batch_size: int = 16,
    parse_attempts: int = 3,
    panel_side: int = PANEL_SIDE,
    stats: JudgeStats | None = None,
    progress: bool = False,
) -> list[CaseJudgement]:
    """Judge every case's output in `outputs_dir` (the results folder with generation.json), in case order.

    `data_dir` (the benchmark's copy) only tells where ImgEdit's input photos are, for the gallery. `stats`, when
    given, is filled with what was asked and what came from the cache. Cases go in chunks of at least
    `CHUNK_CASES` (and of `batch_size`), so only a chunk's pictures are in memory.
    """
    if benchmark not in JUDGED_BENCHMARKS:
        raise ConfigError(f"judging is for {' and '.join(JUDGED_BENCHMARKS)}, not {benchmark}")
    if parse_attempts < 1 or batch_size < 1:
        raise ConfigError(f"parse attempts and batch size must be at least 1, not {parse_attempts} and {batch_size}")
    if not cases or {case.benchmark for case in cases} != {benchmark}:
        raise ConfigError(f"expected a non-empty list of {benchmark} cases")
    prompts = prompts or OURS[benchmark]
    results = Path(outputs_dir).expanduser()
    located = _located(benchmark, cases, results, Path(data_dir).expanduser() if data_dir else None)
    cache = ResponseCache(Path(cache_path).expanduser())
    stats = stats if stats is not None else JudgeStats()
    answers: dict[str, dict[str, tuple[dict | None, str | None, int]]] = {p.name: {} for p in prompts.prompts}
    chunk = max(CHUNK_CASES, batch_size)

    from tqdm import tqdm

    bar = tqdm(total=len(located), desc=f"judging {benchmark}", unit="case", disable=not progress)
    for start in range(0, len(located), chunk):
        pictures: dict[bool, list[PromptInput]] = {True: [], False: []}
        for item in located[start : start + chunk]:
            where = f"case {item.case.case_id}"
            edit_bytes = (results / item.output).read_bytes()
            edit = _open(edit_bytes, f"{where}: {item.output}")
            fields = {"instruction": item.case.instruction, "edit_type": item.case.task_type}
            for two in {prompt.two_images for prompt in prompts.prompts}:
                picture = (side_by_side(_open(item.original(), f"{where}: input"), edit, panel_side) if two
                           else edit_bytes)
                pictures[two].append(PromptInput(_content_id(item.case.case_id, picture), picture, fields,
                                                 key=item.case.case_id))
        for prompt in prompts.prompts:
            answers[prompt.name] |= _ask(backend, cache, prompt, pictures[prompt.two_images], sampling=sampling,
                                         batch_size=batch_size, parse_attempts=parse_attempts, stats=stats)
        bar.update(len(pictures[True] or pictures[False]))
    bar.close()
    judged = []
    for item in located:
        scores: dict[str, int | None] = {}
        failures, reasoning, attempts = [], {}, 0
        for prompt in prompts.prompts:
            parsed, error, tries = answers[prompt.name][item.case.case_id]
            attempts += tries
            scores |= {score: parsed[score] if parsed else None for score in prompt.scores}
            if parsed:
                reasoning[prompt.name] = parsed["reasoning"]
            else:
                failures.append(f"{prompt.name}: {error} (after {tries} attempts)")
        stats.failed_cases += bool(failures)
        failed = tuple(prompt.name for prompt in prompts.prompts if prompt.name not in reasoning)
        judged.append(CaseJudgement(item.case, item.output, item.input_path, scores, "; ".join(failures) or None,
                                    attempts, reasoning, failed))
    return judged
