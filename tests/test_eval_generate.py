"""Benchmark generation with the tiny Z-Image: official result layouts, exact resume, refused mixes, critic guard."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from test_eval_benchmarks import (
    GEDIT_SCHEMA,
    IMGEDIT_LISTING,
    _image_bytes,
    _write_dreambooth,
    _write_gedit_hub_snapshot,
    _write_imgedit_benchmark,
)

import evaluation.generate as generation
from evaluation.benchmarks import load_dreambooth, load_gedit, load_imgedit
from evaluation.critic_guard import refuse_critic_as_judge, training_critic
from evaluation.generate import MANIFEST, case_seed, generate
from schemas.errors import Refused
from training.sampling import edit_images
from cli_run import run_cli

RESOLUTION = 48  # tiny Z-Image's factor is 16: square inputs -> 48x48, 2:1 inputs -> 64x32


def _gedit_rows() -> list[dict]:
    """Five cases in two size groups; the raw image (what is edited) has the input image's aspect ratio."""
    def row(task, key, language, colour, size):
        raw = (size[0] * 2, size[1] * 2)
        return {"task_type": task, "key": key, "instruction": f"{task} {key} {language}",
                "instruction_language": language,
                "input_image": {"bytes": _image_bytes(colour, size), "path": f"{key}.png"},
                "input_image_raw": {"bytes": _image_bytes(colour, raw, "JPEG"), "path": None},
                "Intersection_exist": language == "en"}

    return [row("background_change", "a1f3", "en", (200, 10, 10), (24, 24)),
            row("background_change", "a1f3", "cn", (200, 10, 10), (24, 24)),
            row("color_alter", "b2e4", "en", (10, 200, 10), (40, 20)),
            row("text_change", "9c07", "en", (10, 10, 200), (24, 24)),
            row("subject-add", "77d0", "en", (90, 90, 20), (40, 20))]


@pytest.fixture(scope="module")
def gedit_cases(tmp_path_factory):
    root = _write_gedit_hub_snapshot(tmp_path_factory.mktemp("gedit") / "GEdit-Bench", _gedit_rows(), GEDIT_SCHEMA)
    return load_gedit(root, include_raw_image=True)


def _run(cases, backbone, out, **settings):
    return generate(cases, backbone, out, **{"method": "npedit", "num_steps": 2, "batch_size": 2,
                                             "resolution": RESOLUTION, "progress": False, **settings})


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


def test_gedit_outputs_land_in_the_official_layout(gedit_cases, zimage, tiny_models, tmp_path):
    result = _run(gedit_cases, zimage, tmp_path)
    assert (result.folder, result.generated, result.skipped) == (tmp_path / "npedit", 5, 0)
    expected = {f"fullset/{c.task_type}/{c.language}/{c.key}{suffix}.png" for c in gedit_cases
                for suffix in ("", "_SRCIMG")}
    files = _files(result.folder)
    assert set(files) == expected
    for case in gedit_cases:
        folder = f"fullset/{case.task_type}/{case.language}"
        assert files[f"{folder}/{case.key}_SRCIMG.png"] == case.image  # the judge's source: input_image as it is
        edited = Image.open(io.BytesIO(files[f"{folder}/{case.key}.png"]))
        square = Image.open(io.BytesIO(case.image)).size == (24, 24)
        assert edited.size == ((48, 48) if square else (64, 32))
    manifest = json.loads((result.folder / MANIFEST).read_text())
    assert {k: manifest[k] for k in ("benchmark", "backbone", "sampler", "num_steps", "seed", "resolution")} == {
        "benchmark": "gedit", "backbone": "ZImageBackbone", "sampler": "renoise", "num_steps": 2, "seed": 0,
        "resolution": RESOLUTION}
    assert manifest["checkpoint"] == str(Path(tiny_models.generator).resolve())
    assert manifest["training_critic"] is None  # the tiny zoo generator was never trained against a critic


def test_imgedit_and_dreambooth_layouts(zimage, tmp_path):
    imgedit = load_imgedit(_write_imgedit_benchmark(tmp_path / "ImgEdit", IMGEDIT_LISTING))
    folder = _run(imgedit, zimage, tmp_path / "out", resolution=32).folder
    assert set(_files(folder)) == {f"{key}.png" for key in IMGEDIT_LISTING}  # basic_bench.py's result_img_folder

    subjects = load_dreambooth(_write_dreambooth(tmp_path / "dreambooth"))
    folder = _run(subjects, zimage, tmp_path / "out", method="npedit-db", resolution=32).folder
    assert set(_files(folder)) == {f"{s.name}/{i}.png" for s in subjects for i in range(len(s.prompt_templates))}


def test_per_case_noise_matches_edit_images_and_ignores_the_batch(zimage):
    references = torch.rand(2, 3, 32, 32) * 2 - 1
    prompts = ["make it red", "add a hat"]

    def seeded(case_id: str) -> torch.Generator:
        return torch.Generator().manual_seed(case_seed(7, case_id))

    alone = edit_images(zimage, references[1:], prompts[1:], num_steps=3, generator=[seeded("b")])
    reference = edit_images(zimage, references[1:], prompts[1:], num_steps=3, generator=seeded("b"))
    assert torch.equal(alone, reference)
    together = edit_images(zimage, references, prompts, num_steps=3, generator=[seeded("a"), seeded("b")])
    torch.testing.assert_close(together[1:], alone, atol=1e-5, rtol=0)
    assert case_seed(7, "a") != case_seed(7, "b") and case_seed(7, "a") != case_seed(8, "a")


def test_a_killed_run_resumes_to_the_same_bytes_and_generates_nothing_twice(gedit_cases, zimage, tmp_path,
                                                                            monkeypatch):
    uninterrupted = _files(_run(gedit_cases, zimage, tmp_path / "whole").folder)

    generated: list[str] = []

    def counting(backbone, references, prompts, **kwargs):
        generated.extend(prompts)
        return edit_images(backbone, references, prompts, **kwargs)

    monkeypatch.setattr(generation, "edit_images", counting)

    class Killed(Exception):
        pass

    def kill_after_first_batch(case_ids: list[str]) -> None:
        raise Killed(case_ids)

    with pytest.raises(Killed):
        _run(gedit_cases, zimage, tmp_path / "resumed", on_batch=kill_after_first_batch)
    folder = tmp_path / "resumed" / "npedit"
    assert len(generated) == 2 and len([p for p in _files(folder) if not p.endswith("_SRCIMG.png")]) == 2
    stray = folder / "fullset" / "text_change" / "en" / "9c07.png.tmp"  # a write the kill cut short
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"half a png")

    result = _run(gedit_cases, zimage, tmp_path / "resumed")
    assert (result.generated, result.skipped) == (3, 2)
    assert sorted(generated) == sorted(case.instruction for case in gedit_cases)  # each case exactly once
    assert _files(folder) == uninterrupted and not stray.exists()

    again = _run(gedit_cases, zimage, tmp_path / "resumed")
    assert (again.generated, again.skipped, len(generated)) == (0, 5, 5)


def test_other_settings_into_the_same_folder_are_refused(gedit_cases, zimage, tmp_path):
    _run(gedit_cases[:1], zimage, tmp_path)
    with pytest.raises(Refused) as refused:
        _run(gedit_cases[:1], zimage, tmp_path, num_steps=1, seed=3)
    message = str(refused.value)
    assert "\n" not in message and "num_steps 2 -> 1" in message and "seed 0 -> 3" in message
    assert "another --out or --method" in message
    imgedit = load_imgedit(_write_imgedit_benchmark(tmp_path / "ImgEdit", IMGEDIT_LISTING))
    with pytest.raises(Refused, match="benchmark 'gedit' -> 'imgedit'"):
        _run(imgedit, zimage, tmp_path)
    assert _run(gedit_cases[:1], zimage, tmp_path, batch_size=1).generated == 0  # batch size is no setting


def _trained_run(root: Path, critic: str) -> Path:
    """A run dir as the trainer lays it out: config.json, checkpoints/step-N/{generator, state.pt, config.json}."""
    config = json.dumps({"model": {"generator": "Tongyi-MAI/Z-Image", "critic": critic}})
    step = root / "checkpoints" / "step-0000004"
    (step / "generator").mkdir(parents=True)
    (step / "generator" / "model_index.json").write_text('{"_class_name": "ZImagePipeline"}')
    (step / "state.pt").write_bytes(b"")
    (step / "config.json").write_text(config)
    (root / "config.json").write_text(config)
    (root / "checkpoints" / "latest").write_text(step.name)
    return root


def test_the_judge_is_never_the_training_critic(tiny_models, tmp_path, monkeypatch):
    run = _trained_run(tmp_path / "run", str(tiny_models.vlm))
    generator = run / "checkpoints" / "step-0000004" / "generator"
    linked = tmp_path / "judge"
    linked.symlink_to(tiny_models.vlm)
    for checkpoint in (run, generator.parent, generator):
        for judge in (tiny_models.vlm, linked):
            with pytest.raises(Refused) as refused:
                refuse_critic_as_judge(checkpoint, judge)
            assert "\n" not in str(refused.value) and "--allow-critic-judge" in str(refused.value)
    assert refuse_critic_as_judge(run, linked, allow=True) == str(tiny_models.vlm)
    assert refuse_critic_as_judge(run, "Qwen/Qwen2.5-VL-72B-Instruct") == str(tiny_models.vlm)
    assert refuse_critic_as_judge(tiny_models.generator, tiny_models.vlm) is None  # no run config: no critic

    hub = _trained_run(tmp_path / "hub-run", "Qwen/Qwen2.5-VL-7B-Instruct")
    snapshot = tmp_path / "hf" / "models--Qwen--Qwen2.5-VL-7B-Instruct" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    for judge in ("qwen/qwen2.5-vl-7b-instruct/", snapshot):
        with pytest.raises(Refused):
            refuse_critic_as_judge(hub, judge)

    monkeypatch.setenv("NPEDIT_HOME", str(tmp_path / "home"))
    zoo = _trained_run(tmp_path / "zoo-run", "")  # "" trains against the tiny zoo's VLM
    assert training_critic(zoo) == str(tmp_path / "home" / "tiny-models" / "seed-0" / "qwen2_5_vl")
    with pytest.raises(Refused):
        refuse_critic_as_judge(zoo, tmp_path / "home" / "tiny-models" / "seed-0" / "qwen2_5_vl")


def _cli(capsys, *args: str) -> tuple[int | str, str, str]:
    return run_cli(capsys, "eval", "generate", *args)


def test_cli_generates_and_rejects_bad_input_in_one_line(tiny_models, tmp_path, capsys):
    data = _write_imgedit_benchmark(tmp_path / "ImgEdit", IMGEDIT_LISTING)
    common = ["--out", str(tmp_path / "out"), "--resolution", "32", "--steps", "1", "--device", "cpu"]
    code, out, _ = _cli(capsys, "--benchmark", "imgedit", "--data", str(data), "--checkpoint",
                        str(tiny_models.generator), *common)
    assert code == 0 and "generated 3, kept 0 already there" in out
    assert set(_files(tmp_path / "out" / "npedit")) == {f"{key}.png" for key in IMGEDIT_LISTING}
    code, _, err = _cli(capsys, "--benchmark", "imgedit", "--data", str(data), "--checkpoint",
                        str(tiny_models.generator), *common, "--seed", "1")
    assert code == 2 and err.count("\n") == 1 and "seed 0 -> 1" in err

    not_a_generator = tmp_path / "empty"
    not_a_generator.mkdir()
    for args, fragment in (
        (["--data", str(tmp_path / "absent"), "--checkpoint", str(tiny_models.generator)], "--data"),
        (["--data", str(data), "--checkpoint", str(tmp_path / "no-run")], "--checkpoint"),
        (["--data", str(data), "--checkpoint", str(not_a_generator)], "not a generator checkpoint"),
        (["--data", str(data), "--checkpoint", str(tiny_models.generator), "--languages", "en"], "--languages"),
    ):
        code, _, _ = _cli(capsys, "--benchmark", "imgedit", *args, *common)
        assert isinstance(code, str) and code.startswith("npedit: error: ") and "\n" not in code and fragment in code

    code, _, err = _cli(capsys, "--benchmark", "gedit", "--data", str(data), "--checkpoint",
                        str(tiny_models.generator), *common)
    assert code == 2 and err.startswith("npedit: error: ") and err.count("\n") == 1 and "GEdit-Bench" in err
