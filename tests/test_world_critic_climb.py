"""`probe-critic --climb` (`world.critic_climb`): following the critic's gradient from held-out sources raises its
Yes, leaves its weights and their gradients alone, and is measured by the verifier."""

import numpy as np
import pytest
import torch

from schemas.errors import Refused
from training.critics import load_critic
from training.questions import OUTPUT
from world import PRETRAINED
from world.critic_climb import TeacherPrior, climb_critic, climb_questions, save_climb_grid
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


def test_presence_questions_ask_of_the_output_alone_for_the_object_as_left_and_as_it_was():
    recolour, removal, replace = (held_out_edits(1, edit_types=(t,))[0]
                                  for t in ("local_color_change", "remove", "replace"))
    before, after = recolour.source.object_at(recolour.cell), recolour.target.object_at(recolour.cell)
    assert before.name != after.name
    asked = climb_questions(recolour, presence=True)
    assert [(q.images, q.correct, q.kind) for q in asked] == [((OUTPUT,), "Yes", "edit"), ((OUTPUT,), "No", "edit"),
                                                               (asked[2].images, "Yes", "identity")]
    assert after.name in asked[0].text and before.name in asked[1].text and len(asked[2].images) == 2
    assert climb_questions(recolour) != asked and climb_questions(removal, presence=True) == climb_questions(removal)
    with pytest.raises(ValueError, match="local colour edits here, not 'replace'"):
        climb_questions(replace, presence=True)


def test_climbing_from_removal_sources_and_with_presence_questions():
    critic = load_critic(PRETRAINED / "critic")
    removals = held_out_edits(3, edit_types=("remove", "local_color_change"))
    points, outputs = climb_critic(critic, removals, steps=(2,), edit_type="remove")
    assert outputs.shape[0] == 3 and points[1].p_yes_edit > points[0].p_yes_edit  # "contains X?" driven toward No
    assert points[0].asked_colour is None and points[0].made == 0 and points[0].success == 0
    recolours = held_out_edits(3, edit_types=("local_color_change",))
    plain, plain_outputs = climb_critic(critic, recolours, steps=(2,))
    asked, asked_outputs = climb_critic(critic, recolours, steps=(2,), presence=True)
    assert asked[1].p_yes_edit > asked[0].p_yes_edit and asked[0].asked_colour == plain[0].asked_colour
    assert not torch.equal(asked_outputs, plain_outputs)
    with pytest.raises(ValueError, match="not 'replace'"):
        climb_critic(critic, removals, edit_type="replace")
    with pytest.raises(Refused, match="no remove edit"):
        climb_critic(critic, recolours, edit_type="remove")


def test_noisy_views_and_the_teachers_dmd_term_change_the_climb_as_they_say():
    from training.backbones import ZImageBackbone

    critic = load_critic(PRETRAINED / "critic")
    edits = held_out_edits(3, edit_types=("local_color_change",))
    plain, plain_outputs = climb_critic(critic, edits, steps=(2,))
    smoothed, smoothed_outputs = climb_critic(critic, edits, steps=(2,), views=2, noise=0.3)
    assert smoothed[1].p_yes_edit > smoothed[0].p_yes_edit  # the noisy views' mean gradient still climbs
    assert not torch.equal(smoothed_outputs, plain_outputs)
    assert torch.equal(climb_critic(critic, edits, steps=(2,), views=2, noise=0.3)[1], smoothed_outputs)  # seeded
    teacher = ZImageBackbone.from_pretrained(PRETRAINED / "teacher")
    _, through_vae = climb_critic(critic, edits, steps=(2,), vae=teacher.vae)
    _, faint_prior = climb_critic(critic, edits, steps=(2,), prior=TeacherPrior(teacher, 1e-12))
    assert torch.allclose(faint_prior, through_vae, atol=1e-4)  # the teacher's latent is the VAE's, the critic's term
    _, prior_alone = climb_critic(critic, edits, steps=(2,), prior=TeacherPrior(teacher, 0.5), follow_critic=False)
    other_critic = load_critic(PRETRAINED / "critic")
    torch.nn.init.normal_(next(other_critic.model.parameters()))
    _, alone_again = climb_critic(other_critic, edits, steps=(2,), prior=TeacherPrior(teacher, 0.5),
                                  follow_critic=False)
    assert torch.equal(prior_alone, alone_again) and not torch.allclose(prior_alone, through_vae, atol=1e-3)
    with pytest.raises(ValueError, match="more than one view needs noise"):
        climb_critic(critic, edits, views=2)
    with pytest.raises(ValueError, match="follows the critic, the teacher's DMD term or both"):
        climb_critic(critic, edits, follow_critic=False)


def test_probe_critic_climb_prints_each_space_and_draws_the_grid(tmp_path, capsys):
    from npedit.cli import main

    assert main(["world", "probe-critic", "--climb", "--per-type", "3", "--climb-steps", "1", "--vae",
                 str(PRETRAINED / "vae"), "--grid", str(tmp_path / "climb.png"), "--threads", "1", "--climb-views",
                 "2", "--climb-noise", "0.1", "--climb-dmd", "0.1", "0.5", "--teacher", str(PRETRAINED / "teacher")]) == 0
    out = capsys.readouterr().out
    assert "pixels in the mask" in out and "the VAE latent" in out and (tmp_path / "climb.png").exists()
    assert "latent, DMD 0.1" in out and "latent, DMD 0.5" in out and "DMD alone" in out
    assert "the mean over 2 views of noise 0.1" in out
    assert main(["world", "probe-critic", "--climb", "--per-type", "2", "--climb-steps", "1", "--climb-edit-type",
                 "remove", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "held-out removal sources" in out and " n/a " in out
    assert main(["world", "probe-critic", "--climb", "--per-type", "2", "--climb-steps", "1", "--climb-presence",
                 "--threads", "1"]) == 0
    assert "edit questions of the output alone" in capsys.readouterr().out


def test_the_climb_flags_go_together(capsys):
    from npedit.cli import main

    with pytest.raises(SystemExit, match="--grid goes with --climb"):
        main(["world", "probe-critic", "--colour-word", "--grid", "x.png"])
    with pytest.raises(SystemExit, match="one of them"):
        main(["world", "probe-critic", "--climb", "--wrong-object"])
    with pytest.raises(SystemExit, match="positive step counts"):
        main(["world", "probe-critic", "--climb", "--climb-steps", "0"])
    with pytest.raises(SystemExit, match="--climb-noise goes with --climb"):
        main(["world", "probe-critic", "--colour-word", "--climb-noise", "0.2"])
    with pytest.raises(SystemExit, match="--climb-presence goes with --climb"):
        main(["world", "probe-critic", "--colour-word", "--climb-presence"])
    with pytest.raises(SystemExit, match="--climb-presence is for local colour edits"):
        main(["world", "probe-critic", "--climb", "--climb-presence", "--climb-edit-type", "remove"])
    with pytest.raises(SystemExit, match="more than one view needs noise"):
        main(["world", "probe-critic", "--climb", "--climb-views", "4"])
    with pytest.raises(SystemExit, match="--climb-dmd W .W > 0. and --teacher DIR go together"):
        main(["world", "probe-critic", "--climb", "--climb-dmd", "0.5"])
    with pytest.raises(SystemExit, match="holds no teacher"):
        main(["world", "probe-critic", "--climb", "--climb-dmd", "0.5", "--teacher", str(PRETRAINED / "critic")])
    assert main(["world", "probe-critic", "--climb", "--per-type", "0"]) == 2  # one line, no traceback
    assert "no local colour edit with an object large enough" in capsys.readouterr().err


def test_the_render_check_asks_each_object_edit_about_its_object_as_it_was_and_as_left():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parent.parent / "docs" / "world_experiment" / "presence_renders.py"
    spec = importlib.util.spec_from_file_location("presence_renders", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    asked = script.render_questions(2)
    kinds = {q.kind for q in asked}
    assert len(asked) == 2 * (2 + 6 + 6 + 6 + 3) and len(kinds) == 2 + 6 + 6 + 6 + 3
    for q in asked:
        before = q.edit.source.object_at(q.edit.cell)
        if q.kind.startswith("local_color_change/as left"):
            assert before.name not in q.text and q.answer == ("Yes" if "target" in q.kind else "No")
        if q.kind == "remove/as it was, in the target (No)":
            assert before.name in q.text and q.edit.target.object_at(q.edit.cell) is None
        if q.kind.startswith("local_texture/textured"):
            assert q.edit.target.object_at(q.edit.cell).texture in q.text
