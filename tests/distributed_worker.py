"""Run by tests/test_distributed.py under `torchrun --nproc_per_node 2`: a few FSDP2 steps on CPU (gloo)."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch.distributed as dist

from training.config import load_config
from training.run import build_trainer, init_distributed

lake_dir, generator, critic, out_dir = sys.argv[1:5]
rank, world_size = init_distributed()
config = load_config("debug_tiny", overrides={
    "data.lake_dir": lake_dir, "model.generator": generator, "model.critic": critic, "schedule.total_steps": 3,
    "log.checkpoint_every": 3, "data.batch_size": 1})
trainer = build_trainer(config, Path(out_dir), rank=rank, world_size=world_size)
seen = [pid for batch in trainer.batches.epoch_batches(0) for i in batch
        for pid in [trainer.batches.dataset.row(i)["proposal_id"]]]
trainer.train(progress=False)
state = trainer.state_dict()["generator"]
digest = hashlib.sha256(b"".join(state[k].numpy().tobytes() for k in sorted(state))).hexdigest() if rank == 0 else ""
sharded = type(trainer.generator.transformer).__name__
Path(out_dir, f"rank{rank}.json").write_text(json.dumps(
    {"seen": seen, "digest": digest, "step": trainer.step, "class": sharded, "world": dist.get_world_size()}))
dist.destroy_process_group()
