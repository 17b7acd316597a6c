"""The world's text-to-image teacher: a Z-Image transformer and Qwen3 text encoder (the real path's architectures,
sized for 64 px scenes) trained jointly by flow matching on single world images and their captions, never on pairs.

Saved as a diffusers `ZImagePipeline` (fp16 safetensors) that `ZImageBackbone.from_pretrained` loads like a real one.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import nullcontext
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
from transformers import Qwen3Config, Qwen3Model

from model_zoo.tokenizer import build_qwen_tokenizer
from training.backbones import ZImageBackbone, noise_to
from training.losses import flow_matching_loss
from training.sampling import edit_images, generate_images
from world.budget import BudgetedRun
from world.edits import PHRASINGS
from world.scene import COLOURS, caption, object_coverage, parse_caption, random_scene, render
from world.vae import HELD_OUT_SEED, invocation, load_vae, renders
from world.verify import as_array, parse_image, shape_rates

TRANSFORMER = dict(in_channels=16, dim=128, n_layers=4, n_refiner_layers=1, n_heads=4, n_kv_heads=4, cap_feat_dim=64,
                   axes_dims=[8, 12, 12], axes_lens=[256, 64, 64])
TIME_SHIFT = 3.0  # sampling grid of the saved scheduler


def world_vocabulary(n: int = 400, seed: int = 0) -> list[str]:
    """World captions and instruction templates: trained into the tokenizer so world words are single tokens."""
    rng = random.Random(seed)
    lines = [caption(random_scene(rng), i) for i in range(n)]
    return lines + [p for phrasings in PHRASINGS.values() for p in phrasings]


def text_encoder_for(tokenizer) -> Qwen3Model:
    """4 Qwen3 layers of width 64 (the features are the second-to-last layer's, so 3 of them are used)."""
    return Qwen3Model(Qwen3Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                                  num_attention_heads=2, num_key_value_heads=1, head_dim=32,
                                  max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id))


def new_teacher(vae_dir: Path, seed: int, patch_size: int = 2) -> ZImageBackbone:
    """A randomly initialised teacher over the VAE in `vae_dir`; `patch_size` latent pixels per token side (2, as
    the released Z-Image: a token per 8x8 world pixels; 1: four times the tokens, a token per 4x4 pixels)."""
    if patch_size not in (1, 2):
        raise ValueError(f"a teacher patch is 1 or 2 latent pixels, not {patch_size}")
    tokenizer = build_qwen_tokenizer(extra_text=world_vocabulary())
    torch.manual_seed(seed)
    transformer = ZImageTransformer2DModel(**TRANSFORMER, all_patch_size=(patch_size,))
    torch.manual_seed(seed + 1)
    return ZImageBackbone(transformer, text_encoder_for(tokenizer), tokenizer, load_vae(vae_dir), shift=TIME_SHIFT)


def held_out_captions(n: int, seed: int) -> list[str]:
    """The captions of `n` held-out scenes (no pastel style), phrased in turn."""
    rng = random.Random(seed)
    return [caption(random_scene(rng, pastel_prob=0.0), i) for i in range(n)]


def _held_out_samples(backbone: ZImageBackbone, n: int, cfg_scale: float, steps: int, seed: int,
                      with_images: bool = False) -> list[tuple]:
    """(parse of the sample, the scene its caption names[, the sample, the caption]) for `n` held-out captions."""
    captions = held_out_captions(n, seed)
    size = parse_caption(captions[0]).size
    images = generate_images(backbone, captions, size=(size, size), num_steps=steps, cfg_scale=cfg_scale,
                             generator=torch.Generator().manual_seed(0))
    return [(parse_image(as_array(image)), parse_caption(text)) + ((image, text) if with_images else ())
            for image, text in zip(images, captions)]


def evaluate_teacher(backbone: ZImageBackbone, n: int = 64, cfg_scale: float = 3.0, steps: int = 20,
                     seed: int = HELD_OUT_SEED + 2) -> dict:
    """Samples for `n` held-out captions, parsed by the verifier: the share matching their caption in full, in
    layout (background, colours and cells, shape ignored) and in background colour; objects' shapes per size."""
    return _figures(_held_out_samples(backbone, n, cfg_scale, steps, seed)) | {"cfg_scale": cfg_scale, "steps": steps}


def _figures(pairs: list[tuple]) -> dict:
    full = layout = background = 0
    for parsed, wanted in pairs:
        full += parsed.realistic and parsed.key() == wanted.key()
        background += parsed.background == wanted.background
        layout += parsed.background == wanted.background and sorted((o.colour, o.cell) for o in parsed.objects) \
            == sorted((o.colour, o.cell) for o in wanted.objects)
    n = len(pairs)
    return {"caption_match": full / n, "layout_match": layout / n, "background_match": background / n,
            **shape_rates(pairs), "n": n}


def _problem_kind(problem: str) -> str:
    """A verifier problem without its numbers and colour: "a red fragment of 13 px" -> "a <colour> fragment of N px"."""
    kind = re.sub(r"\d+(\.\d+)?", "N", problem)
    return re.sub(r"\b(" + "|".join(COLOURS) + r")\b", "<colour>", kind)


def probe_teacher(backbone: ZImageBackbone, *, n: int = 64, cfg_scale: float = 3.0, steps: int = 20,
                  seed: int = HELD_OUT_SEED + 2, grid: Path | None = None, grid_rows: int = 16) -> dict:
    """`evaluate_teacher`'s figures at these sampling settings, and where samples go wrong: what each small object's
    shape came out as (`small_shapes`: "wanted -> drawn" counts) and the verifier's first problem with each sample
    it rejects (`problems`, its kind without sizes or colours). With `grid`, a PNG of the first `grid_rows`
    captions: the caption's render | the caption and verdict | the sample."""
    samples = _held_out_samples(backbone, n, cfg_scale, steps, seed, with_images=True)
    pairs = [sample[:2] for sample in samples]
    if grid is not None:
        _save_sample_grid(samples[:grid_rows], grid)
    drawn, problems = Counter(), Counter()
    for parsed, wanted in pairs:
        for o in wanted.objects:
            found = parsed.object_at(o.cell)
            if o.size == "small":
                drawn[f"{o.shape} -> {found.shape if found else 'nothing'}"] += 1
        if parsed.problems:
            problems[_problem_kind(parsed.problems[0])] += 1
    return _figures(pairs) | {"cfg_scale": cfg_scale, "steps": steps, "small_shapes": dict(sorted(drawn.items())),
                              "problems": dict(problems.most_common())}


def _save_sample_grid(samples: list[tuple], path: Path) -> None:
    from PIL import Image

    from training.visualize import save_edit_grid

    def verdict(parsed, wanted) -> str:
        if parsed.realistic and parsed.key() == wanted.key():
            return "matches its caption"
        wrong = [f"{o.size} {o.shape} drawn as {found.shape if found else 'nothing'}" for o in wanted.objects
                 if (found := parsed.object_at(o.cell)) is None or found.shape != o.shape]
        return "; ".join(wrong) or (parsed.problems[0] if parsed.problems else "another scene")

    drawn = [Image.fromarray(as_array(image).round().astype(np.uint8)) for _, _, image, _ in samples]
    save_edit_grid([render(wanted) for _, wanted, _, _ in samples],
                   [f"{text}\n-> {verdict(parsed, wanted)}" for parsed, wanted, _, text in samples], drawn, path,
                   cell=128)


def save_teacher(backbone: ZImageBackbone, out: Path) -> None:
    """A diffusers ZImagePipeline folder, weights in fp16."""
    import copy

    pipeline = ZImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=backbone.shift,
                                                  use_dynamic_shifting=False),
        vae=copy.deepcopy(backbone.vae).to(torch.float16), text_encoder=copy.deepcopy(backbone.text_encoder).half(),
        tokenizer=backbone.tokenizer, transformer=copy.deepcopy(backbone.transformer).half())
    pipeline.save_pretrained(out, safe_serialization=True)


def train_teacher(out_dir: Path, vae_dir: Path, *, minutes: float, max_steps: int | None = None, seed: int = 0,
                  batch_size: int = 32, lr: float = 8e-4, caption_dropout: float = 0.1, eval_every_s: float = 600,
                  eval_samples: int = 64, patch_size: int = 2, device: str = "cpu", render_workers: int = 0,
                  progress: bool = True) -> dict:
    """Train (or continue) the teacher under `out_dir`, `patch_size` as in `new_teacher`, on `device` with scenes
    drawn by `render_workers` processes (0: in this one); writes `out_dir/teacher/` and its `manifest.json`."""
    out_dir = Path(out_dir)
    backbone = new_teacher(vae_dir, seed, patch_size)
    facts, quality = _fit(backbone, out_dir / "teacher_train_state.pt", minutes=minutes, max_steps=max_steps,
                          seed=seed, batch_size=batch_size, lr=lr, anneal=False, caption_dropout=caption_dropout,
                          eval_every_s=eval_every_s, eval_samples=eval_samples, desc="world teacher",
                          device=device, render_workers=render_workers, progress=progress)
    save_teacher(backbone, out_dir / "teacher")
    manifest = {"model": "teacher", "architecture": "diffusers ZImageTransformer2DModel + transformers Qwen3Model",
                "transformer": TRANSFORMER | {"all_patch_size": [patch_size]}, "seed": seed, "batch_size": batch_size,
                "lr": lr, "device": str(device), **facts,
                "command": invocation(), "quality": quality}
    (out_dir / "teacher" / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def anneal_teacher(out_dir: Path, *, minutes: float, max_steps: int | None = None, seed: int = 0,
                   batch_size: int = 32, lr: float = 4e-4, caption_dropout: float = 0.1, eval_every_s: float = 600,
                   eval_samples: int = 64, device: str = "cpu", render_workers: int = 0, progress: bool = True) -> dict:
    """Continue the teacher in `out_dir/teacher/` (on `device`, as `train_teacher`) with its learning rate annealed
    from `lr` to zero over the budget (a constant rate leaves the weights noisy); rewrites it and adds this phase to
    its manifest. A killed run resumes from `teacher_anneal_state.pt`."""
    return _continue_teacher(out_dir, "anneal", {"seed": seed, "batch_size": batch_size, "lr": lr, "device": device},
                             minutes=minutes, max_steps=max_steps, seed=seed + 1, batch_size=batch_size, lr=lr,
                             caption_dropout=caption_dropout, eval_every_s=eval_every_s, eval_samples=eval_samples,
                             desc="world teacher anneal", device=device, render_workers=render_workers,
                             progress=progress)


def _continue_teacher(out_dir: Path, phase: str, record: dict, **fit) -> dict:
    """Fit the teacher in `out_dir/teacher/` further with its rate annealed to zero (resuming from
    `teacher_<phase>_state.pt`), rewrite it, and record the phase under `phase` in its manifest."""
    out_dir = Path(out_dir)
    backbone = ZImageBackbone.from_pretrained(out_dir / "teacher")
    manifest = json.loads((out_dir / "teacher" / "manifest.json").read_text())
    facts, quality = _fit(backbone, out_dir / f"teacher_{phase}_state.pt", anneal=True, **fit)
    save_teacher(backbone, out_dir / "teacher")
    manifest.update({"quality": quality, phase: record | facts | {"command": invocation()}})
    (out_dir / "teacher" / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def small_object_weights(scenes, latent_size: int, weight: float) -> torch.Tensor:
    """(B,1,h,w) loss weights over the latent grid: 1, plus `weight` on latent pixels a small object touches (grown
    by one latent pixel), where the shape that the teacher gets wrong is drawn in a few latent pixels."""
    size = scenes[0].size
    masks = np.zeros((len(scenes), 1, size, size), np.float32)
    for i, scene in enumerate(scenes):
        for obj in scene.objects:
            if obj.size == "small":
                masks[i, 0] = np.maximum(masks[i, 0], object_coverage(obj, size) > 0)
    touched = torch.nn.functional.adaptive_max_pool2d(torch.from_numpy(masks), latent_size)
    return 1 + weight * torch.nn.functional.max_pool2d(touched, 3, stride=1, padding=1)


def weighted_flow_matching_loss(v_pred: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor,
                                weights: torch.Tensor) -> torch.Tensor:
    """Rectified flow ||v_pred - (eps - x0)||^2 averaged over the latent with per-pixel `weights`; per sample."""
    error = ((v_pred - (eps - x0)) ** 2).mean(1, keepdim=True)
    return (weights * error).flatten(1).sum(1) / weights.flatten(1).sum(1)


def focus_small_objects(out_dir: Path, *, minutes: float, max_steps: int | None = None, seed: int = 0,
                        batch_size: int = 32, lr: float = 2e-4, weight: float = 8.0, caption_dropout: float = 0.1,
                        eval_every_s: float = 600, eval_samples: int = 64, device: str = "cpu",
                        render_workers: int = 0, progress: bool = True) -> dict:
    """Continue the teacher in `out_dir/teacher/` (on `device`, as `train_teacher`) with its flow-matching loss
    weighted `1 + weight` on small objects (`small_object_weights`), the rate annealed to zero; rewrites it and adds
    this phase to its manifest. A killed run resumes from `teacher_small_objects_state.pt`."""
    return _continue_teacher(out_dir, "small_objects",
                             {"seed": seed, "batch_size": batch_size, "lr": lr, "weight": weight, "device": device},
                             minutes=minutes, max_steps=max_steps, seed=seed + 2, batch_size=batch_size, lr=lr,
                             caption_dropout=caption_dropout, eval_every_s=eval_every_s, eval_samples=eval_samples,
                             desc="world teacher small objects", device=device, render_workers=render_workers,
                             progress=progress, small_object_weight=weight)


def draw_beside_references(out_dir: Path, *, minutes: float, max_steps: int | None = None, seed: int = 0,
                           batch_size: int = 32, lr: float = 2e-4, share: float = 0.5, caption_dropout: float = 0.1,
                           eval_every_s: float = 600, eval_samples: int = 64, device: str = "cpu",
                           render_workers: int = 0, progress: bool = True) -> dict:
    """Continue the teacher in `out_dir/teacher/` (on `device`, as `train_teacher`) with a `share` of its batches
    drawn in the omni layout beside an unrelated world scene as reference, still from single scenes and their
    captions, the rate annealed to zero: a teacher that reads its caption's words with a reference in its sequence,
    as a real base model's pretraining on many images brings. Rewrites it; adds this phase, with its caption match
    beside a reference before and after, to its manifest. A killed run resumes from `teacher_beside_state.pt`, the
    figures before from `teacher_beside_before.json`."""
    if not 0 < share <= 1:
        raise ValueError(f"the share of batches drawn beside a reference is in (0, 1], not {share}")
    before_path = Path(out_dir) / "teacher_beside_before.json"
    before = json.loads(before_path.read_text()) if before_path.exists() else None
    if before is None or before["n"] != eval_samples:
        before = evaluate_beside_reference(ZImageBackbone.from_pretrained(Path(out_dir) / "teacher").to(device),
                                           eval_samples)
        before_path.write_text(json.dumps(before))
    record = {"seed": seed, "batch_size": batch_size, "lr": lr, "share": share, "device": device,
              "beside_reference_before": before}
    manifest = _continue_teacher(out_dir, "beside", record, minutes=minutes, max_steps=max_steps, seed=seed + 3,
                                 batch_size=batch_size, lr=lr, caption_dropout=caption_dropout,
                                 eval_every_s=eval_every_s, eval_samples=eval_samples,
                                 desc="world teacher beside references", device=device,
                                 render_workers=render_workers, progress=progress, beside_share=share)
    after = ZImageBackbone.from_pretrained(Path(out_dir) / "teacher").to(device)
    manifest["beside"]["beside_reference"] = evaluate_beside_reference(after, eval_samples)
    (Path(out_dir) / "teacher" / "manifest.json").write_text(json.dumps(manifest, indent=2))
    before_path.unlink()
    return manifest


def evaluate_beside_reference(backbone: ZImageBackbone, n: int = 64, steps: int = 20,
                              seed: int = HELD_OUT_SEED + 2) -> dict:
    """`evaluate_teacher`'s figures for the same held-out captions drawn in the omni layout beside an unrelated
    scene (Euler, no guidance: the editor's layout and sampler): does the caption, not the reference, decide?"""
    captions = held_out_captions(n, seed)
    others = random.Random(seed + 1)
    references = renders([random_scene(others, pastel_prob=0.0) for _ in range(n)]).to(backbone.device)
    images = edit_images(backbone, references, captions, num_steps=steps, sampler="euler",
                         generator=torch.Generator().manual_seed(0))
    return _figures([(parse_image(as_array(image)), parse_caption(text)) for image, text in zip(images, captions)])


def flow_matching_batch_loss(backbone: ZImageBackbone, scenes: list, captions: list[str],
                             small_object_weight: float = 0.0, pool: Executor | None = None,
                             beside: list | None = None) -> torch.Tensor:
    """The teacher's training loss on rendered `scenes` (drawn by `pool` when given) and their `captions`: rectified
    flow at a random time per scene, weighted 1 + `small_object_weight` on small objects when it is > 0. With
    `beside` (one scene per scene, unrelated to it), each is drawn in the omni layout beside that scene as its
    reference, from its caption alone. The noise is drawn on the CPU, so a run's draws are the same on every device."""
    with torch.no_grad():
        x0 = backbone.encode_images(renders(scenes, pool))
        if beside is not None:
            reference_images = renders(beside, pool).to(x0.device)
            reference = backbone.encode_images(reference_images)
    # logit-normal(0, 1) through the sampler's time shift: without the shift, t > 0.95 (where the sampler starts
    # and a scene's layout is decided) is 0.2 % of training and samples ignored their caption's background
    t = backbone.shift_time(torch.sigmoid(torch.randn(len(scenes)))).to(x0.device)
    eps = torch.randn(x0.shape).to(x0)
    if beside is None:
        v = backbone.predict_velocity(noise_to(x0, eps, t), t, backbone.text_features(captions))
    else:
        text = backbone.text_features(captions, num_references=1, reference_images=reference_images)
        v = backbone.predict_velocity(noise_to(x0, eps, t), t, text, reference=reference)
    if small_object_weight > 0:
        weights = small_object_weights(scenes, x0.shape[-1], small_object_weight).to(x0.device)
        return weighted_flow_matching_loss(v, x0, eps, weights).mean()
    return flow_matching_loss(v, x0, eps).mean()


def _fit(backbone: ZImageBackbone, state_path: Path, *, minutes: float, max_steps: int | None, seed: int,
         batch_size: int, lr: float, anneal: bool, caption_dropout: float, eval_every_s: float, eval_samples: int,
         desc: str, progress: bool, small_object_weight: float = 0.0, device: str = "cpu",
         render_workers: int = 0, beside_share: float = 0.0) -> tuple[dict, dict]:
    """Flow matching on world images and their captions under a resumable time budget (the rate warmed up over 100
    steps, then constant or, with `anneal`, cosine to zero at the budget's end), the loss weighted toward small
    objects when `small_object_weight` > 0, a `beside_share` of the batches drawn beside unrelated scenes (the omni
    layout), on `device`, scenes drawn by `render_workers` spawned processes when > 0 (a GPU outruns one process
    drawing them); the run's facts and final quality."""
    backbone.to(device)
    backbone.text_encoder.requires_grad_(True).train()
    backbone.transformer.requires_grad_(True).train()
    params = list(backbone.transformer.parameters()) + list(backbone.text_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
    rng = random.Random(seed)
    run = BudgetedRun(state_path, {"transformer": backbone.transformer, "text_encoder": backbone.text_encoder},
                      optimizer, rng, minutes=minutes, max_steps=max_steps, eval_every_s=eval_every_s, desc=desc,
                      progress=progress)

    def evaluate() -> dict:
        backbone.eval()
        result = evaluate_teacher(backbone, eval_samples)
        backbone.transformer.train()
        backbone.text_encoder.train()
        return result

    spawned = get_context("spawn")
    with ProcessPoolExecutor(render_workers, mp_context=spawned) if render_workers else nullcontext() as pool:
        while run.running():
            for group in optimizer.param_groups:
                group["lr"] = run.rate(lr, anneal=anneal)
            scenes = [random_scene(rng) for _ in range(batch_size)]
            captions = ["" if rng.random() < caption_dropout else caption(s, rng.randrange(3)) for s in scenes]
            beside = ([random_scene(rng) for _ in scenes] if beside_share and rng.random() < beside_share
                      else None)
            loss = flow_matching_batch_loss(backbone, scenes, captions, small_object_weight, pool, beside)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            run.after_step(loss.item(), evaluate)
    facts = run.finish()
    return facts, evaluate()
