"""Run by tests/test_distributed.py under `torchrun --nproc_per_node 2`: FSDP2 steps on CPU (gloo), resumable."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch.distributed as dist

from training.checkpoint import full_model_state
from training.config import load_config
from training.run import build_trainer, init_distributed

lake_dir, generator, critic, out_dir, until = sys.argv[1:6]
rank, world_size = init_distributed()
config = load_config("debug_tiny", overrides={
    "data.lake_dir": lake_dir, "model.generator": generator, "model.critic": critic, "schedule.total_steps": 4,
    "schedule.warmup_steps": 1, "schedule.single_step_steps": 1, "log.checkpoint_every": 2, "data.batch_size": 1})
trainer = build_trainer(config, Path(out_dir), rank=rank, world_size=world_size)
resumed = trainer.resume()
seen = [trainer.batches.dataset.row(i)["proposal_id"] for batch in trainer.batches.epoch_batches(0) for i in batch]
trainer.train(until=int(until), progress=False)
weights = full_model_state(trainer.generator.transformer)
digest = hashlib.sha256(b"".join(weights[k].numpy().tobytes() for k in sorted(weights))).hexdigest()
Path(out_dir, f"rank{rank}.json").write_text(json.dumps({
    "seen": seen, "digest": digest if rank == 0 else "", "step": trainer.step, "resumed": resumed,
    "class": type(trainer.generator.transformer).__name__, "world": dist.get_world_size()}))
dist.destroy_process_group()
