"""Can the editor learn the colour word on ONE fixed source? Each batch: every free colour of one large object,
under one noise and time. Usage: one_source_colours.py TEACHER STEPS LR
(section 24: world/pretrained_patch1/teacher 600 1e-4)."""
import random, sys, time
import torch
from dataclasses import replace
from training.backbones import ZImageBackbone, noise_to
from training.losses import flow_matching_loss
from training.sampling import edit_images
from world.edits import random_edit
from world.instruction_probe import asks, measure, _named_object
from world.scene import with_objects
from world.vae import renders

torch.set_num_threads(1); torch.manual_seed(0)
teacher, steps, lr = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
rng = random.Random(3)
while True:
    edit = random_edit(rng, "local_color_change")
    obj = _named_object(edit)
    if obj.size == "large":
        break
others = [o for o in edit.source.objects if o is not obj]
colours, instructions = zip(*asks(edit))
targets = renders([with_objects(edit.source, others + [replace(obj, colour=c)]) for c in colours])
bb = ZImageBackbone.from_pretrained(teacher)
src = renders([edit.source] * len(colours))
with torch.no_grad():
    ref = bb.encode_images(src); x0 = bb.encode_images(targets)
    text = bb.encode_text(list(instructions), num_references=1, reference_images=src)
opt = torch.optim.AdamW(bb.transformer.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
print(edit.source, colours, flush=True)
def probe(step):
    bb.transformer.eval()
    with torch.no_grad():
        out = edit_images(bb, src, list(instructions), num_steps=4,
                          generator=[torch.Generator().manual_seed(0) for _ in colours])
    hits, kept, spread, nearest = measure(edit, list(colours), out)
    print(f"step {step}: asked {hits}/{len(colours)} kept {kept} spread {spread:.1f} painted {nearest}", flush=True)
    bb.transformer.train()
probe(0); t0 = time.time()
for step in range(1, steps + 1):
    t = bb.shift_time(torch.rand(1)).repeat(len(colours))
    eps = torch.randn_like(x0[:1]).repeat(len(colours), 1, 1, 1)
    v = bb.predict_velocity(noise_to(x0, eps, t), t, text, reference=ref)
    loss = flow_matching_loss(v, x0, eps).mean()
    opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(bb.transformer.parameters(), 1.0); opt.step()
    if step % 100 == 0:
        print(f"loss {loss.item():.4f} ({time.time()-t0:.0f}s)"); probe(step)
