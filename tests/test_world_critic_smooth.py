"""`world build --models critic_smooth` (`world.critic_smooth`): the critic continued with its images under Gaussian
noise, answering for the clean image, measured under the same noise before and after."""

import json
import shutil

import pytest
import torch

from world import PRETRAINED
from world.critic import evaluate_critic, yes_no_loss
from world.questions import question_set


def test_noise_changes_what_the_critic_sees_and_its_measure_is_the_same_every_time():
    from training.critics import load_critic

    critic = load_critic(PRETRAINED / "critic")
    questions = question_set(7, 2)
    clean, _ = yes_no_loss(critic, questions)
    noisy, _ = yes_no_loss(critic, questions, noise=0.5, generator=torch.Generator().manual_seed(0))
    assert noisy.item() != pytest.approx(clean.item(), abs=1e-4)
    assert evaluate_critic(critic, questions, noise=0.5) == evaluate_critic(critic, questions, noise=0.5)


def test_the_critic_continues_under_noise_and_records_it(tmp_path, capsys):
    from safetensors.torch import load_file

    from npedit.cli import main
    from world.critic_smooth import finetune_under_noise

    shutil.copytree(PRETRAINED / "critic", tmp_path / "critic")
    weights = lambda: load_file(next((tmp_path / "critic").glob("*.safetensors")))  # noqa: E731
    old = weights()
    manifest = finetune_under_noise(tmp_path, minutes=5, max_steps=2, batch_size=8, eval_per_kind=1, progress=False)
    phase = manifest["smooth"]
    assert phase["steps"] == 2 and phase["sigma"] == 0.25
    assert set(phase["before"]["per_kind"]) == set(manifest["quality"]["noisy_renders"]["per_kind"])
    assert manifest["anneal"] == json.loads((PRETRAINED / "critic" / "manifest.json").read_text())["anneal"]
    new = weights()
    assert any(not torch.equal(old[k], new[k]) for k in old)
    assert main(["world", "models", "--models", str(tmp_path)]) == 0
    assert "noisy_renders_balanced_accuracy" in capsys.readouterr().out
    with pytest.raises(ValueError, match="sigma 0 is not above 0"):
        finetune_under_noise(tmp_path, minutes=1, sigma=0)
    with pytest.raises(SystemExit, match="critic_smooth continues the critic in .*: build it first"):
        main(["world", "build", "--out", str(tmp_path / "empty"), "--models", "critic_smooth", "--minutes", "1"])
