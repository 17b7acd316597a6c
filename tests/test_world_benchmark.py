"""The world verifier as a judge of the evaluation harness: export -> npedit eval generate -> npedit world judge."""

from __future__ import annotations

import shutil

import pyarrow.parquet as pq

from cli_run import run_cli
from schemas.edit_types import EDIT_TYPES
from world import PRETRAINED
from world.benchmark import case_key, export_benchmark, judge_results
from world.evaluate import held_out_edits
from world.scene import render


def test_world_edits_go_through_eval_generate_and_the_verifier_judges_them(tmp_path, capsys):
    data = tmp_path / "world_bench"
    code, printed, _ = run_cli(capsys, "world", "benchmark", "--out", str(data), "--per-type", "1")
    assert code == 0 and "npedit eval generate --benchmark imgedit" in printed
    code, _, error = run_cli(capsys, "eval", "generate", "--benchmark", "imgedit", "--data", str(data),
                             "--checkpoint", str(PRETRAINED / "teacher"), "--out", str(tmp_path / "eval"),
                             "--resolution", "64", "--method", "teacher")
    assert code == 0, error
    results = tmp_path / "eval" / "teacher"
    code, printed, _ = run_cli(capsys, "world", "judge", "--benchmark", str(data), "--results", str(results))
    assert code == 0 and "scored 8 cases (0 outputs missing)" in printed
    scores = pq.read_table(results / "world_judge" / "scores.parquet").to_pylist()
    assert sorted(r["edit_type"] for r in scores) == sorted(EDIT_TYPES)
    assert "| remove | 1 |" in (results / "world_judge" / "report.md").read_text()


def test_the_judge_knows_the_truth_rendered_targets_pass_and_missing_outputs_are_counted(tmp_path):
    data = tmp_path / "world_bench"
    export_benchmark(data, 2)
    results = tmp_path / "perfect"
    results.mkdir()
    for i, edit in enumerate(held_out_edits(2)):
        render(edit.target).save(results / f"{case_key(edit.edit_type, i % 2)}.png")
    judged = judge_results(data, results)
    assert judged["summary"]["mean"]["success"] == 1.0 and not judged["missing"]
    sources = tmp_path / "unchanged"
    shutil.copytree(data / "Benchmark" / "singleturn" / "world", sources)
    (sources / f"{case_key('style', 0)}.png").unlink()
    judged = judge_results(data, sources)
    assert judged["summary"]["mean"]["success"] <= 0.01 and judged["missing"] == [case_key("style", 0)]
