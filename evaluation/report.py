"""The judge's report: every per-case score as Parquet, the protocol numbers in markdown, a gallery for a browser.

Files go to `<results>/judge/<judge slug>/`: `scores.parquet` (one row per case: ids, task, language, instruction,
image paths relative to the results folder, judge, generation settings, every sub-score and the protocol's case
scores, the failure reason; `duckdb -c "select ... from 'scores.parquet'"` reads it), `report.md` (settings, the
protocol numbers from `evaluation.protocols`, failure counts, and published numbers beside ours only when the judge
prompts are the official ones) and `gallery.html` (input | instruction | output | scores per case, images by relative
path, a task filter).
"""

from __future__ import annotations

import html
import json
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pyarrow as pa
import pyarrow.parquet as pq

from evaluation.judge import CaseJudgement, JudgeStats
from evaluation.prompts import JudgePromptSet
from evaluation.protocols import (
    GEditSubsetReport,
    gedit_case_score,
    gedit_report,
    imgedit_case_score,
    imgedit_report,
)


@dataclass(frozen=True)
class Published:
    """A number from a paper, with where it comes from."""

    method: str
    steps: int
    language: str
    overall: float
    source: str


BENCHMARK_NAMES = {"gedit": "GEdit-Bench", "imgedit": "ImgEdit-Bench Basic"}
NP_EDIT_PAPER = "Kumari et al. 2025, NP-Edit, arXiv:2510.14978 (GEdit-Bench, 4-step sampling for every method)"
PUBLISHED_GEDIT = (
    Published("NP-Edit", 4, "en", 6.10, NP_EDIT_PAPER),
    Published("Qwen-Image-Edit", 4, "en", 6.06, NP_EDIT_PAPER),
    Published("FLUX.1 Kontext", 4, "en", 5.04, NP_EDIT_PAPER),
)


@dataclass(frozen=True)
class JudgeInfo:
    """Who judged: the backend kind, the model as given, and the prompt set."""

    backend: str
    model: str
    prompts: JudgePromptSet

    @property
    def slug(self) -> str:
        """A folder name: the model's last path part and the prompt set, e.g. `gpt-4.1-ours-v1`."""
        name = self.model.rstrip("/").rsplit("/", 1)[-1] or "judge"
        return re.sub(r"[^\w.+-]+", "-", f"{name}-{self.prompts.name}")

    @property
    def label(self) -> str:
        kind = "official prompts" if self.prompts.official else "our prompts, not comparable to published numbers"
        return f"{self.model} ({self.backend}), {self.prompts.name}: {kind}"


@dataclass(frozen=True)
class ReportFiles:
    folder: Path
    scores: Path
    markdown: Path
    gallery: Path


def _relative(path: Path | None, start: Path) -> str | None:
    return None if path is None else os.path.relpath(path, start)


def _case_scores(benchmark: str, judged: CaseJudgement) -> dict[str, float | None]:
    if judged.failure is not None:
        keys = ("semantic_consistency", "perceptual_quality", "overall") if benchmark == "gedit" else ("score",)
        return dict.fromkeys(keys)
    if benchmark == "gedit":
        s = judged.scores
        case = gedit_case_score(s["success"], s["over_editing"], s["naturalness"], s["artifacts"])
        return {"semantic_consistency": case.semantic_consistency, "perceptual_quality": case.perceptual_quality,
                "overall": case.overall}
    return {"score": imgedit_case_score(tuple(judged.scores.values()))}


def score_rows(benchmark: str, judged: Sequence[CaseJudgement], results: Path, manifest: dict,
               judge: JudgeInfo) -> pa.Table:
    """One row per case, every sub-score and case score beside its ids, paths, judge and generation settings."""
    rows = []
    for item in judged:
        case = item.case
        rows.append({
            "benchmark": benchmark, "method": results.name, "case_id": case.case_id, "key": case.key,
            "task_type": case.task_type, "language": case.language, "intersection": case.intersection,
            "instruction": case.instruction, "input_path": _relative(item.input_path, results),
            "output_path": item.output, "judge_backend": judge.backend, "judge_model": judge.model,
            "judge_prompts": judge.prompts.name, "official_prompts": judge.prompts.official,
            "prompt_versions": " ".join(prompt.version for prompt in judge.prompts.prompts),
            "steps": manifest.get("num_steps"), "resolution": manifest.get("resolution"),
            "seed": manifest.get("seed"), "checkpoint": manifest.get("checkpoint"),
            **{name: value for name, value in item.scores.items()}, **_case_scores(benchmark, item),
            "failed": item.failure is not None, "failure_reason": item.failure, "attempts": item.attempts,
            "reasoning": json.dumps(item.reasoning, ensure_ascii=False),
        })
    score_type = {name: pa.int64() for name in judged[0].scores} if judged else {}
    case_type = {name: pa.float64() for name in _case_scores(benchmark, judged[0])} if judged else {}
    schema = pa.schema([
        ("benchmark", pa.string()), ("method", pa.string()), ("case_id", pa.string()), ("key", pa.string()),
        ("task_type", pa.string()), ("language", pa.string()), ("intersection", pa.bool_()),
        ("instruction", pa.string()), ("input_path", pa.string()), ("output_path", pa.string()),
        ("judge_backend", pa.string()), ("judge_model", pa.string()), ("judge_prompts", pa.string()),
        ("official_prompts", pa.bool_()), ("prompt_versions", pa.string()), ("steps", pa.int64()), ("resolution", pa.int64()), ("seed", pa.int64()),
        ("checkpoint", pa.string()), *score_type.items(), *case_type.items(), ("failed", pa.bool_()),
        ("failure_reason", pa.string()), ("attempts", pa.int64()), ("reasoning", pa.string()),
    ])
    return pa.Table.from_pylist(rows, schema=schema)


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(cell).replace("|", "\\|") for cell in row) + " |" for row in rows]


def _subset_cells(subset: GEditSubsetReport) -> list[str]:
    mean = subset.mean
    if mean is None:
        return ["–"] * 3
    return [_number(mean.semantic_consistency), _number(mean.perceptual_quality), _number(mean.overall)]


def _gedit_markdown(judged: Sequence[CaseJudgement], run: list[object], judge: JudgeInfo) -> list[str]:
    reports = gedit_report(item.gedit() for item in judged)
    header = ["method", "judge", "prompts", "steps", "resolution", "seed", "language", "SC", "PQ", "O",
              "SC (Intersection)", "PQ (Intersection)", "O (Intersection)", "scored", "failed", "source"]
    rows = [[*run, language, *_subset_cells(r.full), *_subset_cells(r.intersection), r.scored, r.failed, "this run"]
            for language, r in reports.items()]
    if judge.prompts.official:
        rows += [[p.method, "as published", "official", p.steps, "–", "–", p.language, "–", "–", _number(p.overall),
                  "–", "–", "–", "–", "–", p.source] for p in PUBLISHED_GEDIT]
    lines = ["## Scores", "", *_table(header, rows), ""]
    for language, r in reports.items():
        if r.full.missing_tasks:
            lines.append(f"- {language}: mean over {11 - len(r.full.missing_tasks)} of 11 task types (no scored case "
                         f"in {', '.join(r.full.missing_tasks)}), so it is not the benchmark's mean.")
        task_rows = [[task, m.cases, _number(m.semantic_consistency), _number(m.perceptual_quality),
                      _number(m.overall)] for task, m in r.full.per_task.items()]
        lines += ["", f"### Per task ({language})", "", *_table(["task", "cases", "SC", "PQ", "O"], task_rows), ""]
    return lines


def _imgedit_markdown(judged: Sequence[CaseJudgement], run: list[object]) -> list[str]:
    report = imgedit_report(item.imgedit() for item in judged)
    header = ["method", "judge", "prompts", "steps", "resolution", "seed", "overall", "scored", "failed", "source"]
    lines = ["## Scores", "",
             *_table(header, [[*run, _number(report.overall), report.scored, report.failed, "this run"]]), ""]
    if report.missing_types:
        lines.append(f"- mean over {9 - len(report.missing_types)} of 9 edit types (no scored case in "
                     f"{', '.join(report.missing_types)}), so it is not the benchmark's overall.")
    type_rows = [[kind, mean.cases, _number(mean.score)] for kind, mean in report.per_type.items()]
    return lines + ["", "### Per edit type", "", *_table(["edit type", "cases", "score"], type_rows), ""]


def markdown_report(benchmark: str, judged: Sequence[CaseJudgement], results: Path, manifest: dict,
                    judge: JudgeInfo, stats: JudgeStats | None = None) -> str:
    """The report's text: settings, protocol numbers, published references (official prompts only), failures."""
    run = [results.name, f"{judge.model} ({judge.backend})", judge.prompts.name, manifest.get("num_steps"),
           manifest.get("resolution"), manifest.get("seed")]
    settings = [["checkpoint", manifest.get("checkpoint")], ["sampler", manifest.get("sampler")],
                ["steps", manifest.get("num_steps")], ["resolution", manifest.get("resolution")],
                ["seed", manifest.get("seed")], ["judge", judge.label],
                ["judge prompts", ", ".join(prompt.version for prompt in judge.prompts.prompts)],
                ["pictures", "a question about the edit against its input sees both side by side in one picture "
                             "(input left, edit resized to it right)"], ["cases", len(judged)]]
    if stats is not None:
        settings.append(["judge questions", f"{stats.requests} ({stats.cached} from the cache, {stats.generated} "
                                            f"asked, {stats.reasked} re-asked after an unparseable answer)"])
    title = f"# {BENCHMARK_NAMES[benchmark]}: {results.name}, judged by {judge.model}"
    lines = [title, "", *_table(["", ""], settings), ""]
    if judge.prompts.official:
        lines += ["Judged with the benchmark's official prompts; published numbers are listed beside ours.", ""]
    else:
        lines += [f"**Judged with npedit's own prompts ({judge.prompts.name}), not the official ones: these scores "
                  "are ours and are not comparable to published numbers, which are therefore not listed beside "
                  "them.**", ""]
    body = _gedit_markdown(judged, run, judge) if benchmark == "gedit" else _imgedit_markdown(judged, run)
    failures = [item for item in judged if item.failure is not None]
    lines += [*body, "## Judge failures", "",
              f"{len(failures)} of {len(judged)} cases could not be scored: every answer for them was asked again "
              "and still did not parse. They are left out of every mean above, never guessed.", ""]
    per_prompt = Counter(name for item in failures for name in item.failed_prompts)
    lines += [f"- {count} with no usable answer to {name}" for name, count in per_prompt.most_common()]
    lines += [f"- {item.case.case_id}: {item.failure}" for item in failures[:20]]
    return "\n".join(lines).rstrip() + "\n"


_GALLERY_SCRIPT = """
const select = document.getElementById('task');
select.addEventListener('change', () => {
  for (const row of document.querySelectorAll('tbody tr')) {
    row.hidden = select.value !== '' && row.dataset.task !== select.value;
  }
});
"""


def gallery_html(benchmark: str, judged: Sequence[CaseJudgement], results: Path, folder: Path,
                 judge: JudgeInfo) -> str:
    """A static page: input | instruction | output | scores per case, images by path relative to `folder`."""
    def image(path: Path | None) -> str:
        if path is None:
            return "(not on disk)"
        return f'<img src="{html.escape(quote(os.path.relpath(path, folder)))}" loading="lazy">'

    tasks = sorted({item.case.task_type for item in judged})
    options = "".join(f'<option value="{html.escape(t)}">{html.escape(t)}</option>' for t in tasks)
    rows = []
    for item in judged:
        parts = [", ".join(f"{k} {v}" for k, v in item.scores.items() if v is not None)]
        parts.append(item.failure or ", ".join(f"{k} {_number(v)}" for k, v in _case_scores(benchmark, item).items()))
        summary = html.escape("; ".join(part for part in parts if part))
        rows.append(
            f'<tr data-task="{html.escape(item.case.task_type)}"><td>{image(item.input_path)}</td>'
            f"<td><b>{html.escape(item.case.task_type)}</b> ({html.escape(item.case.language)})<br>"
            f"{html.escape(item.case.instruction)}<br><small>{html.escape(item.case.case_id)}</small></td>"
            f"<td>{image(results / item.output)}</td>"
            f'<td class="{"failed" if item.failure else "scored"}">{summary}</td></tr>')
    title = html.escape(f"{BENCHMARK_NAMES[benchmark]}: {results.name}, judged by {judge.label}")
    return (f'<!doctype html>\n<html><head><meta charset="utf-8"><title>{title}</title><style>'
            "body{font-family:sans-serif} img{max-width:320px;max-height:320px} td{vertical-align:top;padding:4px}"
            " .failed{color:#b00}</style></head><body>"
            f"<h1>{title}</h1><label>task <select id=\"task\"><option value=\"\">all</option>{options}</select>"
            "</label><table><thead><tr><th>input</th><th>instruction</th><th>output</th><th>scores</th></tr></thead>"
            f"<tbody>\n{chr(10).join(rows)}\n</tbody></table><script>{_GALLERY_SCRIPT}</script></body></html>\n")


def write_report(benchmark: str, judged: Sequence[CaseJudgement], results: str | Path, manifest: dict,
                 judge: JudgeInfo, stats: JudgeStats | None = None) -> ReportFiles:
    """Write scores.parquet, report.md and gallery.html into `<results>/judge/<judge slug>/`."""
    results = Path(results).expanduser().absolute()  # its name is the method, even when given as "."
    folder = results / "judge" / judge.slug
    folder.mkdir(parents=True, exist_ok=True)
    files = ReportFiles(folder, folder / "scores.parquet", folder / "report.md", folder / "gallery.html")
    pq.write_table(score_rows(benchmark, judged, results, manifest, judge), files.scores)
    files.markdown.write_text(markdown_report(benchmark, judged, results, manifest, judge, stats), encoding="utf-8")
    files.gallery.write_text(gallery_html(benchmark, judged, results, folder, judge), encoding="utf-8")
    return files
