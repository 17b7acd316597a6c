"""Outputs pushed against the critic (`world.critic_adversarial`): the push stays in its ball and moves the
committed critic the way it is aimed, the questions keep the verifier's answer about the pushed image, and the
`critic_adversarial` stage continues the committed critic on them."""

import json
import random
import shutil

import numpy as np
import pytest
import torch

from training.critics import load_critic
from training.questions import questions_for
from world import PRETRAINED
from world.critic_adversarial import AttackBudget, AttackedQuestions, attack
from world.critic_outputs import output_questions
from world.edits import random_edit
from world.scene import render
from world.vae import renders


def _log_odds(critic, edits, images) -> np.ndarray:
    """The critic's log-odds of Yes to each edit's edit question about `images` (0-255 arrays) beside its source."""
    texts = [next(q.text for q in questions_for(e.edit_type, e.instruction, e.target_object) if q.kind == "edit")
             for e in edits]
    shown = torch.stack([torch.from_numpy(i / 127.5 - 1).permute(2, 0, 1).float() for i in images])
    with torch.no_grad():
        yes, no = critic.answer_logits([[s, x] for s, x in zip(renders([e.source for e in edits]), shown)], texts)
    return (yes - no).numpy()


def test_the_push_stays_in_its_ball_and_moves_the_critic_the_way_it_is_aimed():
    torch.manual_seed(0)
    critic = load_critic(PRETRAINED / "critic")
    rng = random.Random(4)
    edits = [random_edit(rng, "local_color_change") for _ in range(4)]
    sources = [np.asarray(render(e.source), np.float32) for e in edits]
    targets = [np.asarray(render(e.target), np.float32) for e in edits]
    budget = AttackBudget(eps=12, steps=5, step_size=4)
    critic.model.train()
    up = attack(critic, edits, sources, [True] * 4, budget, torch.Generator().manual_seed(0))
    assert critic.model.training  # the push runs in eval mode and gives the critic back as it was
    critic.model.eval()
    down = attack(critic, edits, targets, [False] * 4, budget, torch.Generator().manual_seed(0))
    for pushed, start in zip(up + down, sources + targets):
        assert np.abs(pushed - start).max() <= 12.5 and np.all(pushed == pushed.round())
    assert _log_odds(critic, edits, up).mean() > _log_odds(critic, edits, sources).mean() + 2
    assert _log_odds(critic, edits, down).mean() < _log_odds(critic, edits, targets).mean() - 2


def test_a_removal_is_pushed_toward_the_answers_of_a_made_removal():
    from world.critic_climb import made_log_odds

    critic = load_critic(PRETRAINED / "critic")
    edits = [random_edit(random.Random(seed), "remove") for seed in range(3)]
    sources = [np.asarray(render(e.source), np.float32) for e in edits]
    pushed = attack(critic, edits, sources, [True] * 3, AttackBudget(), torch.Generator().manual_seed(0))
    as_tensor = lambda images: torch.stack([torch.from_numpy(i / 127.5 - 1).permute(2, 0, 1).float()  # noqa: E731
                                            for i in images])
    with torch.no_grad():
        before = made_log_odds(critic, edits, as_tensor(sources), as_tensor(sources))
        after = made_log_odds(critic, edits, as_tensor(sources), as_tensor(pushed))
    assert after[0].mean() > before[0].mean() + 2  # "does it still contain it?" pushed toward No


def test_attacked_questions_keep_the_verifiers_answer_about_the_pushed_image():
    critic = load_critic(PRETRAINED / "critic")
    draw = AttackedQuestions(critic, None, budget=AttackBudget(steps=2), batch=4)
    rng = random.Random(1)
    questions = [draw(rng) for _ in range(8)]  # 4 edits, an edit and an identity question each
    assert {q.kind.split("/")[1] for q in questions} == {"edit", "identity"}
    for q in questions:
        again = {x.text: x.answer for x in output_questions(q.edit, np.asarray(q.images[-1], np.float32))}
        assert again[q.text] == q.answer


@pytest.mark.slow
def test_the_critic_continues_on_attacked_outputs_and_records_it(tmp_path, capsys):
    from safetensors.torch import load_file

    from npedit.cli import main
    from world.critic_adversarial import finetune_on_attacks

    shutil.copytree(PRETRAINED / "critic", tmp_path / "critic")
    weights = lambda: load_file(next((tmp_path / "critic").glob("*.safetensors")))  # noqa: E731
    old = weights()
    manifest = finetune_on_attacks(tmp_path, None, minutes=5, max_steps=2, batch_size=8, eval_per_kind=1,
                                   held_out_per_type=1, budget=AttackBudget(steps=2), progress=False)
    phase = manifest["adversarial"]
    assert phase["steps"] == 2 and phase["budget"] == {"eps": 12.0, "steps": 2, "step_size": 4.0}
    assert set(phase["before"]["per_kind"]) == set(manifest["quality"]["attacked_outputs"]["per_kind"])
    assert manifest["anneal"] == json.loads((PRETRAINED / "critic" / "manifest.json").read_text())["anneal"]
    new = weights()
    assert any(not torch.equal(old[k], new[k]) for k in old)
    assert main(["world", "models", "--models", str(tmp_path)]) == 0
    assert "attacked_outputs_balanced_accuracy" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="critic_adversarial continues the critic in .*: build it first"):
        main(["world", "build", "--out", str(tmp_path / "empty"), "--models", "critic_adversarial", "--minutes", "1"])
