"""The benchmarks' score aggregation on hand-computed cases: min inside SC and PQ, macro means, failures left out."""

from __future__ import annotations

import math

import pytest

from evaluation.benchmarks import GEDIT_TASK_TYPES, IMGEDIT_EDIT_TYPES
from evaluation.protocols import (
    GEditJudgement,
    ImgEditJudgement,
    gedit_case_score,
    gedit_report,
    imgedit_case_score,
    imgedit_report,
)


def _gedit(task, success, over_editing, naturalness, artifacts, intersection=False, language="en"):
    return GEditJudgement(task, language, intersection, success, over_editing, naturalness, artifacts)


def test_gedit_case_takes_the_minimum_inside_sc_and_pq():
    score = gedit_case_score(success=8, over_editing=6, naturalness=9, artifacts=4)
    assert (score.semantic_consistency, score.perceptual_quality) == (6, 4)  # not the means 7 and 6.5
    assert score.overall == pytest.approx(math.sqrt(24))


def test_gedit_case_rejects_scores_off_the_0_to_10_scale():
    with pytest.raises(ValueError, match="over-editing"):
        gedit_case_score(success=8, over_editing=11, naturalness=9, artifacts=4)


def test_gedit_report_macro_averages_task_means_and_leaves_failures_out():
    judgements = [
        _gedit("background_change", 8, 6, 9, 4, intersection=True),  # SC 6, PQ 4, O sqrt(24)
        _gedit("background_change", 2, 9, 8, 8),  # SC 2, PQ 8, O 4
        _gedit("color_alter", 10, 10, 1, 3, intersection=True),  # SC 10, PQ 1, O sqrt(10)
        _gedit("color_alter", None, 10, 9, 9),  # unparseable: counted, in no mean
        _gedit("color_alter", 5, 5, 5, 5, language="cn"),
    ]
    report = gedit_report(judgements)
    assert sorted(report) == ["cn", "en"]
    english = report["en"]
    assert (english.scored, english.failed) == (3, 1)

    background = english.full.per_task["background_change"]
    assert (background.semantic_consistency, background.perceptual_quality, background.cases) == (4, 6, 2)
    assert background.overall == pytest.approx((math.sqrt(24) + 4) / 2)
    color = english.full.per_task["color_alter"]
    assert (color.semantic_consistency, color.perceptual_quality, color.cases) == (10, 1, 1)

    mean = english.full.mean
    assert (mean.semantic_consistency, mean.perceptual_quality, mean.cases) == (7, 3.5, 3)
    expected_overall = ((math.sqrt(24) + 4) / 2 + math.sqrt(10)) / 2
    assert mean.overall == pytest.approx(expected_overall)
    assert mean.overall != pytest.approx(math.sqrt(mean.semantic_consistency * mean.perceptual_quality))
    assert mean.overall != pytest.approx((math.sqrt(24) + 4 + math.sqrt(10)) / 3)  # not the mean over cases either
    assert english.full.missing_tasks == tuple(t for t in GEDIT_TASK_TYPES if t not in ("background_change",
                                                                                         "color_alter"))

    subset = english.intersection
    assert subset.per_task["background_change"].cases == 1
    assert subset.mean.overall == pytest.approx((math.sqrt(24) + math.sqrt(10)) / 2)
    assert subset.mean.semantic_consistency == 8

    chinese = report["cn"]
    assert (chinese.scored, chinese.failed, chinese.full.mean.overall) == (1, 0, 5)
    assert chinese.intersection.mean is None and len(chinese.intersection.missing_tasks) == 11


def test_gedit_report_of_a_language_whose_every_answer_failed():
    report = gedit_report([_gedit("ps_human", 3, None, 4, 4)])["en"]
    assert (report.scored, report.failed, report.full.mean) == (0, 1, None)


def test_gedit_report_refuses_unknown_task_types():
    with pytest.raises(ValueError, match="subject_add"):
        gedit_report([_gedit("subject_add", 1, 1, 1, 1)])  # the dataset spells it subject-add


def test_imgedit_case_is_the_rounded_mean_of_its_three_sub_scores():
    assert imgedit_case_score((5, 4, 4)) == 4.33
    assert imgedit_case_score((1, 2, 2)) == 1.67
    with pytest.raises(ValueError):
        imgedit_case_score((0, 3, 3))


def test_imgedit_report_macro_averages_edit_types_and_counts_failures():
    report = imgedit_report([
        ImgEditJudgement("add", (5, 4, 4)),  # 4.33
        ImgEditJudgement("add", (3, 3, 3)),  # 3
        ImgEditJudgement("remove", (1, 2, 2)),  # 1.67
        ImgEditJudgement("remove", None),  # unparseable
    ])
    assert report.per_type["add"].score == pytest.approx(3.665)
    assert report.per_type["remove"].score == pytest.approx(1.67)
    assert report.overall == pytest.approx((3.665 + 1.67) / 2)
    assert report.overall != pytest.approx((4.33 + 3 + 1.67) / 3)  # not the mean over cases
    assert (report.scored, report.failed) == (3, 1)
    assert report.missing_types == tuple(t for t in IMGEDIT_EDIT_TYPES if t not in ("add", "remove"))
    assert imgedit_report([ImgEditJudgement("style", None)]).overall is None
