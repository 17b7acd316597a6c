"""Findings section 22's diagnostic: the supervised local-colour editor from the patch-1 teacher, 500 steps, with the
text encoder trained too (`--train-text-encoder`), or on instructions in a caption's order ("Make the red circle a
blue circle", `--caption-order`), or naming the object by its place too ("the red circle at the top left",
`--with-place`); it prints the verifier's held-out scores and saves the editor to OUT, which
`npedit world probe-instruction OUT [--phrasing "Make {target} {where} a {colour} {shape}"]` then measures.

    .venv/bin/python docs/world_experiment/colour_word_diagnostic.py OUT [--train-text-encoder] [--caption-order]
                                                                      [--with-place]
    .venv/bin/python docs/world_experiment/colour_word_diagnostic.py --text-spread   # the text features only
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
from pathlib import Path

import torch

from training.backbones import ZImageBackbone, noise_to
from training.losses import flow_matching_loss
from world import PRETRAINED_PATCH1
from world.edits import random_edit, where_phrase
from world.evaluate import held_out_edits, score_editor
from world.vae import renders


def phrased(caption_order: bool, with_place: bool):
    """The local colour edit re-phrased: the new colour in a caption's order ("a blue circle"), the object named by
    its place too ("the red circle at the top left"), or as the world phrases it."""
    if not (caption_order or with_place):
        return lambda edit: edit

    def rephrase(edit):
        obj = next(o for o in edit.target.objects if o.cell == edit.cell)
        target = f"{edit.target_object} {where_phrase(obj.cell)}" if with_place else edit.target_object
        new = f"a {obj.colour} {obj.shape}" if caption_order else obj.colour
        return dataclasses.replace(edit, instruction=f"Make {target} {new}")
    return rephrase


def text_spread() -> None:
    """Per token, how much the teacher's frozen text features vary across the 7 colours put in one place of a
    phrase (their standard deviation over the colours, relative to the features' norm)."""
    teacher = ZImageBackbone.from_pretrained(PRETRAINED_PATCH1 / "teacher")
    colours = ["blue", "green", "yellow", "white", "black", "orange", "purple"]
    for phrase, references, segment in (("Make the red circle {}", 1, 1), ("a {} circle at the top left", 0, 0)):
        with torch.no_grad():
            text = teacher.encode_text([phrase.format(c) for c in colours], num_references=references)
        features = torch.stack([s[segment] for s in text.segments])
        spread = features.std(0).norm(dim=-1) / features.norm(dim=-1).mean(0)
        ids = teacher.tokenizer(text=[phrase.format("blue")])["input_ids"][0]
        tokens = teacher.tokenizer.convert_ids_to_tokens(ids)
        print(f"{phrase!r} (the prompt segment; {', '.join(tokens)}):", " ".join(f"{x:.2f}" for x in spread.tolist()))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path, nargs="?")
    parser.add_argument("--text-spread", action="store_true")
    parser.add_argument("--train-text-encoder", action="store_true")
    parser.add_argument("--caption-order", action="store_true")
    parser.add_argument("--with-place", action="store_true")
    parser.add_argument("--steps", type=int, default=500)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.text_spread or args.out is None:
        return text_spread()
    torch.manual_seed(0)
    rng = random.Random(0)
    phrase = phrased(args.caption_order, args.with_place)
    editor = ZImageBackbone.from_pretrained(PRETRAINED_PATCH1 / "teacher")
    editor.transformer.requires_grad_(True).train()
    params = list(editor.transformer.parameters())
    if args.train_text_encoder:
        editor.text_encoder.requires_grad_(True).train()
        params += list(editor.text_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0)
    for step in range(args.steps):
        edits = [phrase(random_edit(rng, "local_color_change")) for _ in range(8)]
        with torch.no_grad():
            sources = renders([e.source for e in edits])
            reference = editor.encode_images(sources)
            x0 = editor.encode_images(renders([e.target for e in edits]))
        with torch.set_grad_enabled(args.train_text_encoder):
            text = editor.text_features([e.instruction for e in edits], num_references=1, reference_images=sources)
        t = editor.shift_time(torch.rand(8))
        eps = torch.randn_like(x0)
        loss = flow_matching_loss(editor.predict_velocity(noise_to(x0, eps, t), t, text, reference=reference),
                                  x0, eps).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if (step + 1) % 50 == 0:
            print(f"step {step + 1}: loss {loss.item():.4f}", flush=True)
    editor.transformer.eval()
    editor.text_encoder.eval()
    if args.train_text_encoder:
        editor.text_encoder.save_pretrained(args.out / "text_encoder")  # written, so not linked to the teacher's
    editor.save_pretrained(args.out)
    held_out = [phrase(e) for e in held_out_edits(24, edit_types=("local_color_change",))]
    with torch.no_grad():
        scores = score_editor(editor, held_out, seed=0)["local_color_change"]
    print(json.dumps({k: scores[k] for k in ("success", "applied", "preservation_db", "realism", "n")}))


if __name__ == "__main__":
    main()
