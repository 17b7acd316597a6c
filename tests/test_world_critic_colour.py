"""Whether the critic reads the colour word: the committed critic says Yes to the asked colour and No to the object's
other colours, ranking the asked one first; an untrained critic ranks at chance; the command refuses a wrong mix."""

from __future__ import annotations

import pytest
import torch

from training.critics.qwen import QwenVLCritic
from world import PRETRAINED
from world.critic import new_critic
from world.critic_colour import critic_reads_colour
from world.evaluate import held_out_edits


@pytest.fixture(scope="module")
def edits():
    return held_out_edits(4, edit_types=("local_color_change",))


def test_the_committed_critic_reads_the_colour_word_and_an_untrained_one_does_not(edits):
    critic = QwenVLCritic.from_pretrained(PRETRAINED / "critic", dtype=torch.float32)
    trained = critic_reads_colour(critic, edits)
    assert trained.n > len(edits)  # several asked colours per edit
    assert trained.asked > 0.8 and trained.other_colour < 0.2 and trained.unchanged < 0.1
    assert trained.ranked_first > 0.9 > 3 * trained.chance
    assert trained.identity_asked > 0.5 > trained.identity_other_object  # the rest kept, then not
    untrained = critic_reads_colour(new_critic(0), edits)
    assert abs(untrained.asked - untrained.other_colour) < 0.05 and untrained.ranked_first < 0.5


def test_probe_critic_takes_editors_or_the_colour_word_and_vae_only_with_the_word(tmp_path, capsys):
    from npedit.cli import main

    for argv, message in ((["world", "probe-critic"], "give --editors, --colour-word, --wrong-object or --climb"),
                          (["world", "probe-critic", "--colour-word", "--editors", str(tmp_path)],
                           "give --editors, --colour-word, --wrong-object or --climb"),
                          (["world", "probe-critic", "--colour-word", "--wrong-object"], "one of them"),
                          (["world", "probe-critic", "--editors", str(tmp_path), "--vae", str(tmp_path)],
                           "--vae goes with --colour-word"),
                          (["world", "probe-critic", "--colour-word", "--vae", str(tmp_path)], "holds no VAE")):
        with pytest.raises(SystemExit, match=message):
            main(argv)
    assert main(["world", "probe-critic", "--colour-word", "--per-type", "0"]) == 2  # one line, no traceback
    assert "no local colour edit with an object large enough" in capsys.readouterr().err
    assert main(["world", "probe-critic", "--colour-word", "--per-type", "2"]) == 0
    assert "The asked colour ranked first among the object's colours in" in capsys.readouterr().out
    assert main(["world", "probe-critic", "--wrong-object", "--per-type", "2"]) == 0
    printed = capsys.readouterr().out
    assert "refuses the asked change made to another object in" in printed and "local_color_change/edit" in printed
