"""Where do the target's tokens look? Per main layer: the attention mass from noisy-target queries onto the
caption's tokens (the instruction's words, its last word the colour asked, the segments' pad tokens, the chat
template), the reference's tokens and the target's own, mean over heads and 8 local colour edits at t = 0.95.
Usage: attention_mass.py EDITOR ... (T2I=1: the teacher drawing the targets' captions alone; section 24)."""
import random, sys
import numpy as np, torch
import diffusers.models.transformers.transformer_z_image as zi
from training.backbones import backbone_class
from training.backbones.base import noise_to
from world.edits import random_edit
from world.vae import renders

torch.set_num_threads(1)
record = {}
build = zi.ZImageTransformer2DModel._build_unified_sequence

def build_recorded(self, x, x_freqs, x_seqlens, x_noise_mask, cap, cap_freqs, cap_seqlens, *a, **k):
    out = build(self, x, x_freqs, x_seqlens, x_noise_mask, cap, cap_freqs, cap_seqlens, *a, **k)
    record["cap_len"], record["noise"] = list(cap_seqlens), out[3]
    return out
zi.ZImageTransformer2DModel._build_unified_sequence = build_recorded
call = zi.ZSingleStreamAttnProcessor.__call__

def call_recorded(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, freqs_cis=None):
    if getattr(attn, "_main", False):
        q = attn.norm_q(attn.to_q(hidden_states).unflatten(-1, (attn.heads, -1)))
        kk = attn.norm_k(attn.to_k(hidden_states).unflatten(-1, (attn.heads, -1)))
        def rot(x):
            xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
            return torch.view_as_real(xc * freqs_cis.unsqueeze(2)).flatten(3)
        q, kk = rot(q).transpose(1, 2), rot(kk).transpose(1, 2)
        w = torch.softmax(q @ kk.transpose(-1, -2) / q.shape[-1] ** 0.5, -1)  # B,H,L,L
        masses = []
        for i in range(w.shape[0]):
            cap = torch.zeros(w.shape[-1], dtype=torch.bool)
            if record.get("t2i"):  # basic mode: [x, cap]
                n_x = w.shape[-1] - record["cap_len"][i]
                cap[n_x:] = True
                wq = w[i][:, :256]
                prompt = torch.zeros_like(cap); prompt[n_x + 3: n_x + 3 + record["prompt_len"][i]] = True
                colour = torch.zeros_like(prompt); colour[n_x + 2 + record["prompt_len"][i]] = True
                pads = torch.zeros_like(cap); pads[n_x + record["seg_lens"][i][0]:] = True
                parts = (prompt, colour, pads, cap & ~prompt & ~pads, ~cap, ~cap)
                masses.append([wq[..., m].sum(-1).mean().item() for m in parts])
                continue
            cap[: record["cap_len"][i]] = True
            noise = record["noise"][i].bool() & ~cap
            ref = ~noise & ~cap
            lens = record["seg_lens"][i]
            padded = [l + (-l) % 32 for l in lens]
            prompt = torch.zeros_like(cap); start = padded[0] + 1; prompt[start: start + record["prompt_len"][i]] = True
            colour = torch.zeros_like(cap); colour[start + record["prompt_len"][i] - 1] = True
            pads = torch.zeros_like(cap); o = 0
            for l, pl in zip(lens, padded):
                pads[o + l: o + pl] = True; o += pl
            wq = w[i][:, noise]  # H, Nq, L
            parts = (prompt, colour, pads, cap & ~prompt & ~pads, ref, noise)
            masses.append([wq[..., m].sum(-1).mean().item() for m in parts])
        record.setdefault(attn._main, []).append(np.mean(masses, 0))
    return call(self, attn, hidden_states, encoder_hidden_states, attention_mask, freqs_cis)
zi.ZSingleStreamAttnProcessor.__call__ = call_recorded

import os
T2I = os.environ.get("T2I")
rng = random.Random(12345)
edits = [random_edit(rng, "local_color_change") for _ in range(8)]
for path in sys.argv[1:]:
    bb = backbone_class(path).from_pretrained(path)
    for i, layer in enumerate(bb.transformer.layers):
        layer.attention._main = f"layer{i}"
    for t in (0.95,):
        for key in [k for k in record if k.startswith("layer")]:
            del record[key]
        src = renders([e.source for e in edits])
        with torch.no_grad():
            ref = bb.encode_images(src)
            text = bb.encode_text([e.instruction for e in edits], num_references=1, reference_images=src)
            record["seg_lens"] = [[len(x) for x in segs] for segs in text.segments]
            record["prompt_len"] = [len(bb.tokenizer(e.instruction).input_ids) for e in edits]
            x0 = bb.encode_images(renders([e.target for e in edits]))
            tt = torch.full((len(edits),), t)
            if T2I:
                from world.scene import caption
                caps = [caption(e.target) for e in edits]
                text = bb.encode_text(caps)
                record["seg_lens"] = [[len(x) for x in segs] for segs in text.segments]
                record["prompt_len"] = [len(bb.tokenizer(c).input_ids) for c in caps]
                record["t2i"] = True
                bb.predict_velocity(noise_to(x0, torch.randn_like(x0), tt), tt, text)
            else:
                bb.predict_velocity(noise_to(x0, torch.randn_like(x0), tt), tt, text, reference=ref)
        print(path.split("world_runs/")[-1], f"t={t}",
              "  ".join(f"L{i}: prompt {m[0]:.3f} colour {m[1]:.3f} pads {m[2]:.3f} template {m[3]:.3f} "
                        f"ref {m[4]:.3f} self {m[5]:.3f}\n"
                        for i, m in enumerate(record[f"layer{j}"][0] for j in range(len(bb.transformer.layers)))))
