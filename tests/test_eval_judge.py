"""Judging generated outputs: a loopback OpenAI-compatible judge, re-asks and counted failures, the report files,
the judge-is-the-critic refusal through the CLI."""

from __future__ import annotations

import http.server
import io
import json
import threading
from pathlib import Path

import duckdb
import pytest
import xgrammar
from PIL import Image
from test_eval_benchmarks import GEDIT_SCHEMA, _image_bytes, _write_gedit_hub_snapshot, _write_imgedit_benchmark
from test_eval_generate import _trained_run

import evaluation.judge as judging
from datasets_builder.loopback import serving
from datasets_builder.vlm.backends import OpenAICompatibleBackend
from datasets_builder.vlm.prompts import ParseError
from evaluation.benchmarks import BenchmarkCase, load_gedit, load_imgedit
from evaluation.generate import MANIFEST, generate
from evaluation.judge import BAR, CaseJudgement, JudgeStats, judge_outputs, read_manifest, refuse_judge, side_by_side
from evaluation.prompts import GEDIT_QUALITY, GEDIT_SEMANTICS, OURS, JudgePromptSet
from evaluation.report import JudgeInfo, markdown_report, write_report
from schemas.errors import ConfigError, Refused
from cli_run import run_cli

ONCE, ALWAYS = "MALFORMED-ONCE", "MALFORMED-ALWAYS"  # the loopback judge garbles its first or every answer


class JudgeServer:
    """Chat completions answering the request's schema with the second-highest score of every enum, reasoning
    first; an instruction holding ONCE gets a non-JSON answer at seed 0, one holding ALWAYS at every seed."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: list[tuple[str, int]] = []  # (text, seed) of every request served

    def answer(self, body: dict) -> str:
        text = body["messages"][0]["content"][1]["text"]
        with self.lock:
            self.requests.append((text, body["seed"]))
        if ALWAYS in text or (ONCE in text and body["seed"] == 0):
            return "I would give it a seven."
        schema = body["response_format"]["json_schema"]["schema"]["properties"]
        return json.dumps({"reasoning": "looks right"} | {key: value["enum"][-2] for key, value in schema.items()
                                                          if key != "reasoning"})

    def handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        server = self

        class ChatCompletions(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                payload = {"choices": [{"message": {"role": "assistant", "content": server.answer(body)}}]}
                data = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return ChatCompletions


@pytest.fixture
def judge_server():
    server = JudgeServer()
    with serving(server.handler()) as url:
        yield server, f"{url}/v1"


def _gedit_rows() -> list[dict]:
    def row(task, key, instruction, language, colour):
        return {"task_type": task, "key": key, "instruction": instruction, "instruction_language": language,
                "input_image": {"bytes": _image_bytes(colour, (24, 24)), "path": f"{key}.png"},
                "input_image_raw": {"bytes": _image_bytes(colour, (24, 24)), "path": None},
                "Intersection_exist": language == "en"}

    return [row("background_change", "a1f3", "Put the cup on a beach", "en", (200, 10, 10)),
            row("background_change", "a1f3", "把杯子放到海滩上", "cn", (200, 10, 10)),
            row("color_alter", "b2e4", f"Make the car blue {ONCE}", "en", (10, 200, 10)),
            row("text_change", "9c07", f"Make the sign say OPEN {ALWAYS}", "en", (10, 10, 200))]


IMGEDIT_LISTING = {
    "1082": {"id": "animal/000342021.jpg", "prompt": "Give the tortoise a smooth shell.", "edit_type": "adjust"},
    "361": {"id": "animal/000342021.jpg", "prompt": "Extract the tortoise.", "edit_type": "extract"},
    "628": {"id": "daily object/000276684.jpg", "prompt": "Replace the boot with a mug.", "edit_type": "replace"},
}


@pytest.fixture(scope="module")
def generated(tmp_path_factory, zimage):
    """GEdit and ImgEdit copies in their published layouts and the tiny Z-Image's outputs for them."""
    root = tmp_path_factory.mktemp("bench")
    gedit = _write_gedit_hub_snapshot(root / "GEdit-Bench", _gedit_rows(), GEDIT_SCHEMA)
    imgedit = _write_imgedit_benchmark(root / "ImgEdit", IMGEDIT_LISTING)
    settings = {"num_steps": 1, "batch_size": 4, "resolution": 32, "progress": False}
    gedit_results = generate(load_gedit(gedit, include_raw_image=True), zimage, root / "out", method="gedit-run",
                             **settings).folder
    imgedit_results = generate(load_imgedit(imgedit), zimage, root / "out", method="imgedit-run", **settings).folder
    return {"gedit": (gedit, gedit_results), "imgedit": (imgedit, imgedit_results)}


def test_side_by_side_picture_and_strict_answers():
    original, edit = Image.new("RGB", (40, 20), (255, 0, 0)), Image.new("RGB", (10, 10), (0, 0, 255))
    picture = Image.open(io.BytesIO(side_by_side(original, edit)))
    assert picture.size == (2 * 40 + BAR, 20) and picture.format == "JPEG"

    def near(pixel, colour):
        return max(abs(a - b) for a, b in zip(picture.getpixel(pixel), colour)) <= 3

    assert near((5, 5), (255, 0, 0)) and near((40 + BAR + 5, 5), (0, 0, 255)) and near((40 + BAR // 2, 5), (128,) * 3)
    assert Image.open(io.BytesIO(side_by_side(original, edit, panel_side=10))).size == (2 * 10 + BAR, 5)

    assert GEDIT_QUALITY.parse('{"reasoning": "", "naturalness": 0, "artifacts": 10}')["artifacts"] == 10
    for answer in ("seven", "[]", '{"reasoning": "", "naturalness": 3}', '{"reasoning": "", "naturalness": 3, '
                   '"artifacts": 11}', '{"reasoning": "", "naturalness": true, "artifacts": 2}',
                   '{"reasoning": "", "naturalness": 3.5, "artifacts": 2}',
                   '{"reasoning": "", "naturalness": 3, "artifacts": 2, "note": "x"}'):
        with pytest.raises(ParseError):
            GEDIT_QUALITY.parse(answer)
    assert "{instruction}" not in GEDIT_SEMANTICS.render(instruction="Add a hat", edit_type="subject-add")
    assert GEDIT_SEMANTICS.version != GEDIT_QUALITY.version and not OURS["gedit"].official
    for prompt in (*OURS["gedit"].prompts, *OURS["imgedit"].prompts):  # the transformers backend's grammar
        xgrammar.Grammar.from_json_schema(json.dumps(prompt.schema), any_whitespace=False, strict_mode=True)


def test_gedit_judged_end_to_end_retries_then_counts_failures_and_reruns_from_the_cache(generated, judge_server,
                                                                                        tmp_path, monkeypatch):
    server, url = judge_server
    data, results = generated["gedit"]
    cases = load_gedit(data)
    backend = OpenAICompatibleBackend("judge-model", url)
    stats = JudgeStats()
    judged = judge_outputs("gedit", cases, results, backend, cache_path=tmp_path / "cache.sqlite", stats=stats)
    by_key = {(j.case.key, j.case.language): j for j in judged}
    assert [j.case.case_id for j in judged] == [c.case_id for c in cases]
    assert by_key["a1f3", "en"].scores == {"success": 9, "over_editing": 9, "naturalness": 9, "artifacts": 9}
    assert by_key["a1f3", "en"].failure is None and by_key["a1f3", "en"].attempts == 2
    assert by_key["b2e4", "en"].failure is None and by_key["b2e4", "en"].attempts == 3  # re-asked once, then parsed
    failed = by_key["9c07", "en"]
    assert failed.scores["success"] is None and failed.scores["naturalness"] == 9
    assert failed.failed_prompts == ("gedit-semantics",) and "not JSON" in failed.failure
    assert "after 3 attempts" in failed.failure and failed.attempts == 4
    # 4 semantic questions, 2 re-asked at seed 1, 1 at seed 2; 4 quality questions
    assert len(server.requests) == 11 and (stats.generated, stats.cached, stats.reasked) == (11, 0, 3)
    assert sorted(seed for text, seed in server.requests if ALWAYS in text) == [0, 1, 2]

    again = JudgeStats()
    monkeypatch.setattr(judging, "CHUNK_CASES", 1)  # one case at a time: the same questions, all cached
    assert judge_outputs("gedit", cases, results, backend, cache_path=tmp_path / "cache.sqlite", stats=again,
                         batch_size=1) == judged
    assert len(server.requests) == 11 and again.generated == 0 and again.cached == 11

    manifest = read_manifest(results)
    judge = JudgeInfo("openai", "judge-model", OURS["gedit"])
    files = write_report("gedit", judged, results, manifest, judge, stats)
    assert files.folder == results / "judge" / "judge-model-ours-v1"
    rows = duckdb.sql(f"select case_id, task_type, language, overall, failed, failure_reason, steps, resolution, "
                      f"judge_model from read_parquet('{files.scores}') order by case_id").fetchall()
    assert len(rows) == 4 and {r[6:] for r in rows} == {(1, 32, "judge-model")}
    assert [(r[1], r[3], r[4]) for r in rows if r[2] == "en"] == [
        ("background_change", 9.0, False), ("color_alter", 9.0, False), ("text_change", None, True)]
    assert "gedit-semantics" in rows[-1][5]
    text = files.markdown.read_text()
    assert "| method | judge | prompts | steps | resolution | seed | language | SC | PQ | O |" in text
    assert "| gedit-run | judge-model (openai) | ours-v1 | 1 | 32 | 0 | en | 9.00 | 9.00 | 9.00 |" in text
    assert "not comparable to published numbers" in text and "6.10" not in text
    assert "1 of 4 cases could not be scored" in text and "1 with no usable answer to gedit-semantics" in text
    assert "mean over 2 of 11 task types" in text and "11 (0 from the cache, 11 asked, 3 re-asked" in text
    page = files.gallery.read_text()
    assert '<select id="task">' in page and page.count("<tr data-task=") == 4
    sources = [src for src in page.split('src="')[1:]]
    assert len(sources) == 8
    assert all((files.folder / src.split('"')[0]).is_file() for src in sources)  # relative paths to the images
    assert "_SRCIMG.png" in page and "fullset/text_change/en/9c07.png" in page


def _cli(capsys, *args: str) -> tuple[int | str, str, str]:
    return run_cli(capsys, "eval", "judge", *args)


def test_cli_judges_imgedit_and_writes_the_report(generated, judge_server, capsys):
    server, url = judge_server
    data, results = generated["imgedit"]
    args = ["--benchmark", "imgedit", "--data", str(data), "--results", str(results), "--judge-backend", "openai",
            "--judge-model", "Qwen/Qwen2.5-VL-72B-Instruct", "--base-url", url]
    code, out, _ = _cli(capsys, *args)
    assert code == 0 and "judged 3 cases (0 failed; 3 questions asked, 0 from the cache)" in out
    folder = results / "judge" / "Qwen2.5-VL-72B-Instruct-ours-v1"
    overall = duckdb.sql(f"select avg(score), count(*), sum(attempts) from read_parquet('{folder}/scores.parquet')")
    assert overall.fetchone() == (4.0, 3, 3)
    text = (folder / "report.md").read_text()
    assert "| imgedit-run | Qwen/Qwen2.5-VL-72B-Instruct (openai) | ours-v1 | 1 | 32 | 0 | 4.00 | 3 | 0 |" in text
    assert "mean over 3 of 9 edit types" in text
    page = (folder / "gallery.html").read_text()
    assert "daily%20object/000276684.jpg" in page and page.count("<img ") == 6
    code, out, _ = _cli(capsys, *args)
    assert code == 0 and "0 questions asked, 3 from the cache" in out and len(server.requests) == 3


def test_cli_refuses_the_training_critic_as_judge_and_bad_input_in_one_line(generated, tiny_models, tmp_path,
                                                                             capsys):
    data, results = generated["imgedit"]
    trained = tmp_path / "trained" / "npedit"
    trained.mkdir(parents=True)
    run = _trained_run(tmp_path / "run", str(tiny_models.vlm))
    manifest = read_manifest(results) | {"checkpoint": str(run), "training_critic": str(tiny_models.vlm)}
    (trained / MANIFEST).write_text(json.dumps(manifest))
    common = ["--data", str(data), "--judge-backend", "transformers", "--judge-model", str(tiny_models.vlm)]
    code, _, err = _cli(capsys, "--benchmark", "imgedit", "--results", str(trained), *common)
    assert code == 2 and err.count("\n") == 1 and "--allow-critic-judge" in err and "critic" in err
    manifest["checkpoint"] = str(tmp_path / "gone")  # the recorded critic still counts without the checkpoint
    with pytest.raises(Refused):
        refuse_judge(manifest, str(tiny_models.vlm))
    refuse_judge(manifest, str(tiny_models.vlm), allow=True)
    refuse_judge(manifest, "gpt-4.1")

    no_manifest = tmp_path / "empty"
    no_manifest.mkdir()
    partial = tmp_path / "partial" / "npedit"
    partial.mkdir(parents=True)
    (partial / MANIFEST).write_text(json.dumps(read_manifest(results)))
    openai = ["--judge-backend", "openai", "--judge-model", "gpt-4.1", "--base-url", "http://127.0.0.1:9/v1"]
    for args, fragment in (
        (["--benchmark", "imgedit", "--data", str(tmp_path / "absent"), "--results", str(results), *openai], "--data"),
        (["--benchmark", "imgedit", "--data", str(data), "--results", str(tmp_path / "absent"), *openai],
         "--results"),
        (["--benchmark", "imgedit", "--data", str(data), "--results", str(results), "--judge-backend", "openai",
          "--judge-model", "gpt-4.1"], "--base-url"),
        (["--benchmark", "gedit", "--data", str(data), "--results", str(results), *openai], "imgedit outputs"),
        (["--benchmark", "imgedit", "--data", str(data), "--results", str(results), "--languages", "en", *openai],
         "--languages"),
    ):
        code, _, _ = _cli(capsys, *args)
        assert isinstance(code, str) and code.startswith("npedit: error: ") and "\n" not in code and fragment in code
    for folder, fragment in ((no_manifest, "no generation.json"), (partial, "3 of 3 outputs missing")):
        code, _, err = _cli(capsys, "--benchmark", "imgedit", "--data", str(data), "--results", str(folder), *openai)
        assert code == 2 and err.count("\n") == 1 and fragment in err


def _judged(case_id: str, task: str, scores: dict[str, int | None]) -> CaseJudgement:
    case = BenchmarkCase("gedit", case_id, task, "Add a hat", "en", b"", intersection=True)
    failure = None if None not in scores.values() else "gedit-semantics: not JSON (after 3 attempts)"
    return CaseJudgement(case, f"{case_id}.png", None, scores, failure, 2)


def test_published_numbers_stand_beside_official_prompts_only():
    judged = [_judged("k1", "subject-add", dict.fromkeys(("success", "over_editing", "naturalness", "artifacts"), 4)),
              _judged("k2", "subject-add", {"success": None, "over_editing": None, "naturalness": 8,
                                            "artifacts": 8})]
    manifest = {"num_steps": 4, "resolution": 512, "seed": 0}
    official = JudgeInfo("openai", "gpt-4.1", JudgePromptSet("official", True, OURS["gedit"].prompts))
    text = markdown_report("gedit", judged, Path("out/npedit"), manifest, official)
    assert "| NP-Edit | as published | official | 4 |" in text and "| 6.10 |" in text and "arXiv:2510.14978" in text
    assert "| Qwen-Image-Edit |" in text and "| 5.04 |" in text and "not comparable" not in text
    assert "| npedit | gpt-4.1 (openai) | official | 4 | 512 | 0 | en | 4.00 | 4.00 | 4.00 |" in text
    ours = markdown_report("gedit", judged, Path("out/npedit"), manifest, JudgeInfo("openai", "gpt-4.1", OURS["gedit"]))
    assert "6.10" not in ours and "NP-Edit |" not in ours and "not comparable to published numbers" in ours
    with pytest.raises(ConfigError, match="not dreambooth"):
        judge_outputs("dreambooth", [], Path("."), None, cache_path=Path("unused"))
