"""DreamBooth's DINO / CLIP-I / CLIP-T: the cosine means on known vectors, tiny random ViT and CLIP loaded by path,
an end-to-end report on a DreamBooth fixture with missing outputs, and the CLI's one-line errors."""

from __future__ import annotations

import math
from pathlib import Path

import duckdb
import pytest
import torch
from PIL import Image
from test_eval_benchmarks import _write_dreambooth

from evaluation.benchmarks import load_dreambooth
from evaluation.dreambooth import (
    REPORT_FILE,
    SCORES_FILE,
    DreamBoothMetrics,
    clip_t_prompt,
    cosine_matrix,
    dreambooth_report,
    scores_from_embeddings,
)
from schemas.errors import ConfigError
from cli_run import run_cli

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def _clip_tokenizer():
    """A character-level CLIP tokenizer: every byte symbol, alone and word-final, and no merges."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    for symbol in alphabet + [symbol + "</w>" for symbol in alphabet]:
        vocab[symbol] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=64)


@pytest.fixture(scope="module")
def metric_models(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny random DINO-style ViT (32 px, patch 16) and CLIP, saved with processors; nothing is downloaded."""
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, ViTConfig, ViTImageProcessorPil, ViTModel

    root = tmp_path_factory.mktemp("metric-models")
    torch.manual_seed(0)
    vit = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
               patch_size=16)
    ViTModel(ViTConfig(**vit), add_pooling_layer=False).save_pretrained(root / "dino")
    ViTImageProcessorPil(size={"height": 32, "width": 32}, image_mean=IMAGENET_MEAN,
                         image_std=IMAGENET_STD).save_pretrained(root / "dino")
    tokenizer = _clip_tokenizer()
    text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=64, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vit, projection_dim=16)).save_pretrained(root / "clip")
    CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        root / "clip")
    tokenizer.save_pretrained(root / "clip")
    return root / "dino", root / "clip"


@pytest.fixture(scope="module")
def metrics(metric_models) -> DreamBoothMetrics:
    return DreamBoothMetrics(*metric_models, device="cpu")


def test_cosine_means_on_known_vectors():
    generated = torch.tensor([[2.0, 0.0], [0.0, 1.0]])  # lengths must not matter
    real = torch.tensor([[1.0, 0.0], [3.0, 3.0]])
    text = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert torch.allclose(cosine_matrix(generated, real), torch.tensor([[1.0, 0.5**0.5], [0.0, 0.5**0.5]],
                                                                       dtype=torch.float64))
    scores = scores_from_embeddings(generated, real, generated, real, text)
    half = 0.5**0.5
    assert scores.dino == pytest.approx(((1 + half) / 2, half / 2))  # each image against every real photo
    assert scores.mean("dino") == pytest.approx((1 + half + 0 + half) / 4)  # = the mean over all 4 pairs
    assert scores.clip_i == scores.dino
    assert scores.clip_t == pytest.approx((1.0, 0.0))  # each image against its own prompt only
    with pytest.raises(ValueError, match="2 DINO, 2 CLIP image and 1 text"):
        scores_from_embeddings(generated, real, generated, real, text[:1])


def test_clip_t_text_drops_the_identifier_and_keeps_the_class_noun():
    assert clip_t_prompt("a {0} {1} on the beach", "dog") == "a dog on the beach"
    assert clip_t_prompt("a {0} {1} with a city in the background", "stuffed animal") == (
        "a stuffed animal with a city in the background")


def test_identical_images_score_one_and_the_mean_is_over_all_pairs(metrics):
    red, blue = Image.new("RGB", (40, 30), (200, 20, 20)), Image.new("RGB", (24, 24), (20, 20, 200))
    same = metrics.score_subject([red, red.copy()], [(red.copy(), "a red square"), (red.convert("L").convert("RGB"),
                                                                                     "a grey square")])
    assert same.dino[0] == pytest.approx(1.0, abs=1e-6) and same.clip_i[0] == pytest.approx(1.0, abs=1e-6)
    assert same.dino[1] < 1 - 1e-4  # a different image is not scored as identical

    mixed = metrics.score_subject([red, blue], [(red, "a red square"), (blue, "a blue square")])
    dino = cosine_matrix(metrics.embed_dino([red, blue]), metrics.embed_dino([red, blue]))
    assert mixed.mean("dino") == pytest.approx(dino.mean().item(), abs=1e-9)  # all 4 (generated, real) pairs
    assert mixed.dino[0] == pytest.approx((1 + dino[0, 1].item()) / 2, abs=1e-6)
    images, texts = metrics.embed_clip_images([red, blue]), metrics.embed_clip_texts(["a red square", "a blue square"])
    assert mixed.clip_t == pytest.approx(cosine_matrix(images, texts).diagonal().tolist(), abs=1e-9)
    assert metrics.embed_dino([red]).shape == (1, 32) and texts.shape == (2, 16)


def _write_outputs(data: Path, results: Path, method: str, skip: set[str]) -> int:
    """Each subject's prompts as outputs: prompt i is the subject's photo i % 2, a few prompts left missing."""
    written = 0
    for subject in load_dreambooth(data):
        for index in range(len(subject.prompt_templates)):
            if f"{subject.name}/{index}" in skip:
                continue
            out = results / method / subject.name / f"{index}.png"
            out.parent.mkdir(parents=True, exist_ok=True)
            with Image.open(subject.images[index % len(subject.images)]) as photo:
                photo.convert("RGB").save(out)
            written += 1
    return written


def _cli(capsys, *args: str) -> tuple[int | str, str, str]:
    return run_cli(capsys, "eval", "dreambooth", *args)


def test_cli_scores_a_fixture_and_writes_parquet_and_report(metric_models, metrics, tmp_path, capsys):
    data = _write_dreambooth(tmp_path / "dreambooth")
    results = tmp_path / "results"
    written = _write_outputs(data, results, "npedit", skip={"dog/1", "bear_plushie/0", "bear_plushie/1",
                                                            "bear_plushie/2"})
    (results / "npedit" / "dog" / "notes.png").write_bytes(b"not an output")  # other files are ignored
    dino, clip = map(str, metric_models)
    code, out, err = _cli(capsys, "--data", str(data), "--results", str(results), "--method", "npedit",
                          "--dino", dino, "--clip", clip, "--device", "cpu")
    assert code == 0, err
    assert f"scored {written} images (4 prompts without output)" in out and written == 4

    table = f"read_parquet('{results / 'npedit' / SCORES_FILE}')"
    rows = duckdb.sql(f"select subject, prompt_index, prompt, clip_t_prompt, output_path, real_images, dino, clip_i, "
                      f"clip_t from {table} order by subject, prompt_index").fetchall()
    assert [(r[0], r[1]) for r in rows] == [("backpack", 0), ("backpack", 1), ("backpack", 2), ("dog", 0)]
    assert rows[3][2:6] == ("a sks dog on a kitchen table", "a dog on a kitchen table", "dog/0.png", 2)
    assert all(-1 <= value <= 1 for row in rows for value in row[6:])
    # backpack/0 is photo 00 itself: its DINO is the mean of 1 (itself) and its similarity to photo 01
    photos = [Image.open(p).convert("RGB") for p in load_dreambooth(data)[0].images]
    pair = cosine_matrix(metrics.embed_dino(photos[:1]), metrics.embed_dino(photos[1:]))[0, 0].item()
    assert rows[0][6] == pytest.approx((1 + pair) / 2, abs=1e-6)
    text = cosine_matrix(metrics.embed_clip_images(photos[:1]), metrics.embed_clip_texts([rows[0][3]]))
    assert rows[0][8] == pytest.approx(text.item(), abs=1e-6)
    means = duckdb.sql(f"select avg(dino), avg(clip_i), avg(clip_t), count(*) from {table}").fetchone()

    report = (results / "npedit" / REPORT_FILE).read_text()
    assert "| npedit | " + " | ".join(f"{m:.4f}" for m in means[:3]) + " | 2 of 3 | 4 | 4 of 8 |" in report
    assert "| bear_plushie | stuffed animal | 2 | 0 | 3 | – | – | – |" in report
    assert "| dog | dog | 2 | 1 | 1 |" in report
    assert "- dog/1.png" in report and "- bear_plushie/2.png" in report and "4 of 8 prompts have no output" in report
    assert f"{dino} (vit, CLS token" in report and f"{clip} (clip" in report
    assert "a dog on the beach" in report and "arXiv:2208.12242" in report


def test_bad_inputs_give_one_line_errors(metric_models, metrics, tmp_path, capsys):
    data = _write_dreambooth(tmp_path / "dreambooth")
    results = tmp_path / "results"
    (results / "empty").mkdir(parents=True)
    dino, clip = map(str, metric_models)
    models = ["--dino", dino, "--clip", clip]
    for args, fragment in (
        (["--data", str(tmp_path / "absent"), "--results", str(results), "--method", "empty", *models], "--data"),
        (["--data", str(data), "--results", str(tmp_path / "absent"), "--method", "empty", *models], "--results"),
        (["--data", str(data), "--results", str(results), "--method", "other", *models], "--method other"),
        (["--data", str(data), "--results", str(results), "--method", "empty", "--dino", str(tmp_path / "none"),
          "--clip", clip], "--dino"),
    ):
        code, _, _ = _cli(capsys, *args)
        assert isinstance(code, str) and code.startswith("npedit: error: ") and "\n" not in code and fragment in code
    code, _, err = _cli(capsys, "--data", str(data), "--results", str(results), "--method", "empty", *models)
    assert code == 2 and err.count("\n") == 1 and "no DreamBooth outputs" in err

    (results / "gedit-run").mkdir()
    (results / "gedit-run" / "generation.json").write_text('{"benchmark": "gedit"}')
    with pytest.raises(ConfigError, match="holds gedit outputs"):
        dreambooth_report(data, results, "gedit-run", metrics=metrics)
    with pytest.raises(ConfigError, match="--clip .*cannot load"):
        DreamBoothMetrics(dino, dino)  # a ViT folder has no tokenizer
    assert not math.isnan(metrics.embed_clip_texts(["a " * 200]).sum().item())  # long prompts are truncated
