"""The distributed path: torchrun with 2 CPU processes (gloo), FSDP2-sharded transformers, rank-sharded data,
sharded checkpoints that resume to the same weights as an uninterrupted run."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from snapshot_fixture import write_fixture_snapshot

pytestmark = pytest.mark.slow
WORKER = Path(__file__).with_name("distributed_worker.py")


def _torchrun(lake_dir, tiny_models, out: Path, until: int, port: int) -> list[dict]:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
               str(WORKER), str(lake_dir), str(tiny_models.generator), str(tiny_models.vlm), str(out), str(until)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(WORKER.parent), str(WORKER.parents[1])])}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


def test_two_process_fsdp2_run_shards_data_checkpoints_and_resumes_exactly(tmp_path, tiny_models):
    lake_dir = tmp_path / "lake"
    write_fixture_snapshot(lake_dir)
    straight = _torchrun(lake_dir, tiny_models, tmp_path / "straight", 4, 29533)
    assert all(r["world"] == 2 and r["step"] == 4 and r["class"].startswith("FSDP") for r in straight)
    assert not set(straight[0]["seen"]) & set(straight[1]["seen"])
    assert len(straight[0]["seen"]) + len(straight[1]["seen"]) == 6

    first = _torchrun(lake_dir, tiny_models, tmp_path / "interrupted", 2, 29534)
    assert first[0]["step"] == 2 and (tmp_path / "interrupted" / "checkpoints" / "step-0000002" / "sharded").exists()
    resumed = _torchrun(lake_dir, tiny_models, tmp_path / "interrupted", 4, 29535)
    assert all(r["resumed"] and r["step"] == 4 for r in resumed)
    assert resumed[0]["digest"] == straight[0]["digest"]

    from training.backbones import ZImageBackbone

    loaded = ZImageBackbone.from_pretrained(tmp_path / "straight" / "checkpoints" / "step-0000004" / "generator")
    state = loaded.transformer.state_dict()
    digest = hashlib.sha256(b"".join(state[k].numpy().tobytes() for k in sorted(state))).hexdigest()
    assert digest == straight[0]["digest"]
