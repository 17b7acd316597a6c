"""`probe-critic --climb` (`world.critic_climb`): following the critic's gradient from held-out sources raises its
Yes, leaves its weights and their gradients alone, and is measured by the verifier."""

import numpy as np
import pytest
import torch

from schemas.errors import Refused
from training.critics import load_critic
from world import PRETRAINED
from world.critic_climb import climb_critic, save_climb_grid
from world.evaluate import held_out_edits
from world.vae import load_vae, renders


def test_climbing_raises_the_critics_yes_and_leaves_the_critic_alone(tmp_path):
    critic = load_critic(PRETRAINED / "critic")
    before = {k: v.clone() for k, v in critic.model.state_dict().items()}
    edits = held_out_edits(4, edit_types=("local_color_change", "background"))
    points, outputs = climb_critic(critic, edits, steps=(3,), lr=0.02)
    assert [p.steps for p in points] == [0, 3] and outputs.shape[0] <= 4
    assert points[1].p_yes_edit > points[0].p_yes_edit + 0.1  # the gradient moves the critic's answer
    assert points[0].change == 0 and 0 < points[1].change < 20
    assert points[0].made == 0  # the source is not the edit
    assert all(torch.equal(before[k], v) for k, v in critic.model.state_dict().items())
    assert all(p.grad is None for p in critic.model.parameters())
    masked, masked_outputs = climb_critic(critic, edits, steps=(3,), in_mask=True)
    assert masked[1].p_yes_edit > masked[0].p_yes_edit
    sources = renders([e.source for e in edits if e.edit_type == "local_color_change"])
    outside = torch.from_numpy(np.stack([~e.mask() for e in edits if e.edit_type == "local_color_change"]))
    assert torch.equal(masked_outputs.permute(1, 0, 2, 3)[:, outside], sources.permute(1, 0, 2, 3)[:, outside])
    with pytest.raises(ValueError, match="in_mask is for pixels"):
        climb_critic(critic, edits, vae=object(), in_mask=True)
    latent_points, _ = climb_critic(critic, edits, steps=(2,), vae=load_vae(PRETRAINED / "vae").eval())
    assert latent_points[0].change > 0  # the start is the source's round trip through the VAE
    assert save_climb_grid(edits, {"pixels": outputs}, tmp_path / "climb.png").exists()
    with pytest.raises(Refused, match="no local colour edit"):
        climb_critic(critic, held_out_edits(2, edit_types=("background",)))


def test_probe_critic_climb_prints_each_space_and_draws_the_grid(tmp_path, capsys):
    from npedit.cli import main

    assert main(["world", "probe-critic", "--climb", "--per-type", "3", "--climb-steps", "1", "--vae",
                 str(PRETRAINED / "vae"), "--grid", str(tmp_path / "climb.png"), "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "pixels in the mask" in out and "the VAE latent" in out and (tmp_path / "climb.png").exists()


def test_the_climb_flags_go_together(capsys):
    from npedit.cli import main

    with pytest.raises(SystemExit, match="--grid goes with --climb"):
        main(["world", "probe-critic", "--colour-word", "--grid", "x.png"])
    with pytest.raises(SystemExit, match="one of them"):
        main(["world", "probe-critic", "--climb", "--wrong-object"])
    with pytest.raises(SystemExit, match="positive step counts"):
        main(["world", "probe-critic", "--climb", "--climb-steps", "0"])
    assert main(["world", "probe-critic", "--climb", "--per-type", "0"]) == 2  # one line, no traceback
    assert "no local colour edit with an object large enough" in capsys.readouterr().err
