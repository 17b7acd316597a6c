"""The benchmarks' score aggregation, as their official scripts compute it, over per-case judge scores.

GEdit-Bench (Step1X-Edit's VIEScore setup): per case SC = min(success, over-editing) and PQ = min(naturalness,
artifacts), judge scores 0-10, and O = sqrt(SC x PQ); SC, PQ and O are averaged per task type, and the benchmark's
numbers are the unweighted means of those over the 11 task types, per language, for all cases and for the
Intersection subset. ImgEdit-Bench Basic: per case the mean of the judge's three 1-5 sub-scores (rounded to 2
decimals, as the official step 1 does), averaged per edit type, and the overall the unweighted mean over the 9 types.

A judge answer that could not be parsed is a failure: its case is left out of every mean and counted, never guessed.
A protocol task with no scored case is listed in `missing_*`; the mean over the others is then not the published one.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from statistics import fmean

from evaluation.benchmarks import GEDIT_LANGUAGES, GEDIT_TASK_TYPES, IMGEDIT_EDIT_TYPES

GEDIT_SCORE_RANGE = (0.0, 10.0)
IMGEDIT_SCORE_RANGE = (1.0, 5.0)


@dataclass(frozen=True)
class GEditJudgement:
    """One GEdit case's judge scores; a score is None where the judge's answer could not be parsed."""

    task_type: str
    language: str
    intersection: bool  # the dataset's Intersection_exist
    success: float | None  # SC question 1: the instruction was carried out
    over_editing: float | None  # SC question 2: nothing beyond the instruction changed
    naturalness: float | None  # PQ question 1
    artifacts: float | None  # PQ question 2 (high = no artifacts)

    @property
    def failed(self) -> bool:
        """Whether any score is missing, so the case cannot be scored."""
        return None in (self.success, self.over_editing, self.naturalness, self.artifacts)


@dataclass(frozen=True)
class GEditCaseScore:
    """One case's semantic consistency, perceptual quality and overall score."""

    semantic_consistency: float
    perceptual_quality: float
    overall: float


@dataclass(frozen=True)
class GEditMeans:
    """SC, PQ and O averaged over some cases (`cases` of them) or over task means."""

    semantic_consistency: float
    perceptual_quality: float
    overall: float
    cases: int


@dataclass(frozen=True)
class GEditSubsetReport:
    """Per-task means and their unweighted mean over the task types that have a scored case."""

    per_task: dict[str, GEditMeans]
    mean: GEditMeans | None  # None when no case was scored
    missing_tasks: tuple[str, ...]  # protocol task types without a scored case


@dataclass(frozen=True)
class GEditLanguageReport:
    """A language's numbers on all cases and on the Intersection subset, and how many cases failed."""

    language: str
    full: GEditSubsetReport
    intersection: GEditSubsetReport
    scored: int
    failed: int


@dataclass(frozen=True)
class ImgEditJudgement:
    """One ImgEdit case's three judge sub-scores (1-5), or None where the judge's answer could not be parsed."""

    edit_type: str
    scores: tuple[float, float, float] | None


@dataclass(frozen=True)
class ImgEditTypeMean:
    """An edit type's mean case score over `cases` scored cases."""

    score: float
    cases: int


@dataclass(frozen=True)
class ImgEditReport:
    """Per-type means, their unweighted mean over the types with a scored case, and the failure count."""

    per_type: dict[str, ImgEditTypeMean]
    overall: float | None  # None when no case was scored
    missing_types: tuple[str, ...]  # protocol edit types without a scored case
    scored: int
    failed: int


def _check_range(name: str, score: float, bounds: tuple[float, float]) -> float:
    if not bounds[0] <= score <= bounds[1]:
        raise ValueError(f"{name} {score!r} is outside {bounds[0]:g}-{bounds[1]:g}")
    return float(score)


def gedit_case_score(success: float, over_editing: float, naturalness: float, artifacts: float) -> GEditCaseScore:
    """SC = min(success, over-editing), PQ = min(naturalness, artifacts), O = sqrt(SC x PQ)."""
    named = {"success": success, "over-editing": over_editing, "naturalness": naturalness, "artifacts": artifacts}
    for name, score in named.items():
        _check_range(f"GEdit {name} score", score, GEDIT_SCORE_RANGE)
    semantic, quality = float(min(success, over_editing)), float(min(naturalness, artifacts))
    return GEditCaseScore(semantic, quality, math.sqrt(semantic * quality))


def _gedit_subset(scores_by_task: dict[str, list[GEditCaseScore]]) -> GEditSubsetReport:
    per_task = {
        task: GEditMeans(fmean(s.semantic_consistency for s in scores), fmean(s.perceptual_quality for s in scores),
                         fmean(s.overall for s in scores), len(scores))
        for task in GEDIT_TASK_TYPES if (scores := scores_by_task.get(task))
    }
    means = list(per_task.values())
    mean = GEditMeans(fmean(m.semantic_consistency for m in means), fmean(m.perceptual_quality for m in means),
                      fmean(m.overall for m in means), sum(m.cases for m in means)) if means else None
    return GEditSubsetReport(per_task, mean, tuple(task for task in GEDIT_TASK_TYPES if task not in per_task))


def gedit_report(judgements: Iterable[GEditJudgement]) -> dict[str, GEditLanguageReport]:
    """GEdit-Bench's numbers per language present: task means, their macro mean, the Intersection subset, failures."""
    full: dict[str, dict[str, list[GEditCaseScore]]] = defaultdict(lambda: defaultdict(list))
    intersection: dict[str, dict[str, list[GEditCaseScore]]] = defaultdict(lambda: defaultdict(list))
    failed: dict[str, int] = defaultdict(int)
    languages: set[str] = set()
    for judgement in judgements:
        if judgement.task_type not in GEDIT_TASK_TYPES:
            raise ValueError(f"GEdit task type {judgement.task_type!r} is not one of {', '.join(GEDIT_TASK_TYPES)}")
        if judgement.language not in GEDIT_LANGUAGES:
            raise ValueError(f"GEdit language {judgement.language!r} is not one of {', '.join(GEDIT_LANGUAGES)}")
        languages.add(judgement.language)
        if judgement.failed:
            failed[judgement.language] += 1
            continue
        score = gedit_case_score(judgement.success, judgement.over_editing, judgement.naturalness,
                                 judgement.artifacts)
        full[judgement.language][judgement.task_type].append(score)
        if judgement.intersection:
            intersection[judgement.language][judgement.task_type].append(score)
    return {
        language: GEditLanguageReport(language, _gedit_subset(full[language]), _gedit_subset(intersection[language]),
                                      sum(map(len, full[language].values())), failed[language])
        for language in GEDIT_LANGUAGES if language in languages
    }


def imgedit_case_score(scores: tuple[float, float, float]) -> float:
    """The mean of the three sub-scores, rounded to 2 decimals as the official step 1 stores it."""
    if len(scores) != 3:
        raise ValueError(f"ImgEdit takes 3 sub-scores per case, not {len(scores)}")
    return round(fmean(_check_range("ImgEdit sub-score", score, IMGEDIT_SCORE_RANGE) for score in scores), 2)


def imgedit_report(judgements: Iterable[ImgEditJudgement]) -> ImgEditReport:
    """ImgEdit-Bench Basic's numbers: per edit type means, their unweighted mean, and the failure count."""
    by_type: dict[str, list[float]] = defaultdict(list)
    failed = 0
    for judgement in judgements:
        if judgement.edit_type not in IMGEDIT_EDIT_TYPES:
            raise ValueError(f"ImgEdit edit type {judgement.edit_type!r} is not one of {', '.join(IMGEDIT_EDIT_TYPES)}")
        if judgement.scores is None:
            failed += 1
            continue
        by_type[judgement.edit_type].append(imgedit_case_score(judgement.scores))
    per_type = {kind: ImgEditTypeMean(fmean(by_type[kind]), len(by_type[kind]))
                for kind in IMGEDIT_EDIT_TYPES if by_type.get(kind)}
    overall = fmean(mean.score for mean in per_type.values()) if per_type else None
    return ImgEditReport(per_type, overall, tuple(kind for kind in IMGEDIT_EDIT_TYPES if kind not in per_type),
                         sum(mean.cases for mean in per_type.values()), failed)
