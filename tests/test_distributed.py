"""The distributed path: torchrun with 2 CPU processes (gloo), FSDP2-sharded transformers, rank-sharded data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from snapshot_fixture import write_fixture_snapshot

pytestmark = pytest.mark.slow


def test_two_process_fsdp2_run_trains_shards_data_and_checkpoints(tmp_path, tiny_models):
    lake_dir = tmp_path / "lake"
    write_fixture_snapshot(lake_dir)
    out = tmp_path / "run"
    worker = Path(__file__).with_name("distributed_worker.py")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
               str(worker), str(lake_dir), str(tiny_models.generator), str(tiny_models.vlm), str(out)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(worker.parent), str(worker.parents[1])])}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world"] == 2 and r["step"] == 3 for r in ranks)
    assert all(r["class"].startswith("FSDP") for r in ranks)  # FSDP2 swaps in an FSDP subclass
    assert not set(ranks[0]["seen"]) & set(ranks[1]["seen"])
    assert len(ranks[0]["seen"]) + len(ranks[1]["seen"]) == 6
    from training.backbones import ZImageBackbone

    checkpoint = out / "checkpoints" / "step-0000003" / "generator"
    loaded = ZImageBackbone.from_pretrained(checkpoint)
    import hashlib

    state = loaded.transformer.state_dict()
    digest = hashlib.sha256(b"".join(state[k].numpy().tobytes() for k in sorted(state))).hexdigest()
    assert digest == ranks[0]["digest"]
