"""The unroll schedule: phases, 1 vs 2 steps with the right odds, t values through the time shift."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from training.config import ScheduleConfig
from training.unroll import phase, plan_unroll


class Shift3:
    def shift_time(self, t):
        return 3 * t / (1 + 2 * t)


def test_phases_follow_the_schedule():
    schedule = ScheduleConfig(warmup_steps=5, single_step_steps=10)
    assert [phase(s, schedule) for s in (0, 4, 5, 14, 15, 999)] == [
        "warmup", "warmup", "single_step", "single_step", "two_step", "two_step"]
    for step in range(15):
        assert plan_unroll(step, schedule, Shift3(), seed=0).times == (1.0,)


def test_two_step_odds_and_times():
    schedule = ScheduleConfig(warmup_steps=0, single_step_steps=0, two_step_prob=0.75)
    plans = [plan_unroll(step, schedule, Shift3(), seed=0) for step in range(6000)]
    two = [p for p in plans if p.num_steps == 2]
    assert abs(len(two) / len(plans) - 0.75) < 0.02
    allowed = {round(float(Shift3().shift_time(torch.tensor(t))), 6) for t in (0.75, 0.5, 0.25)}
    counts = Counter(round(p.times[1], 6) for p in two)
    assert set(counts) == allowed  # {0.9, 0.75, 0.5} for shift 3
    for count in counts.values():
        assert abs(count / len(two) - 1 / 3) < 0.03
    assert all(p.times[0] == 1.0 for p in plans)


def test_plan_is_a_function_of_seed_and_step():
    schedule = ScheduleConfig(warmup_steps=0, single_step_steps=0)
    assert plan_unroll(7, schedule, Shift3(), seed=1) == plan_unroll(7, schedule, Shift3(), seed=1)
    assert len({plan_unroll(s, schedule, Shift3(), seed=1).times for s in range(50)}) > 1


@pytest.mark.parametrize("prob", [0.0, 1.0])
def test_extreme_probabilities(prob):
    schedule = ScheduleConfig(warmup_steps=0, single_step_steps=0, two_step_prob=prob)
    steps = {plan_unroll(s, schedule, Shift3(), seed=0).num_steps for s in range(200)}
    assert steps == {2 if prob == 1.0 else 1}
