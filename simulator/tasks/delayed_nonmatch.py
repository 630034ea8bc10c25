"""Delayed non-match: two stimuli separated by a delay; report whether they differ.

One trial, back to back with the next (inputs: one channel per stimulus plus a "go"
cue; targets: three classes [blank, match, non-match]):

    | sample, stim_steps | delay, delay_steps | test, stim_steps | response, response_steps |
      stimulus a on        all inputs 0         stimulus b on      go cue on; answer

The sample a is uniform over ``stimuli`` one-hot patterns; the test b equals a with
probability 1/2 and is otherwise uniform over the other stimuli. With two stimuli this
is a delayed XOR, the classic working-memory task of monkey prefrontal studies
(Miller, Erickson & Desimone 1996) and of NeuroGym's DelayMatchSample.

Steps with no answer due: the target is an explicit ``blank`` class (NeuroGym's
fixation action, the blank symbol of copy tasks). Cross-entropy then stays a proper,
well-defined loss at every step, with optimum 0, and the network must learn *when* to
answer as well as *what*; the "timing only" level below tells the two apart. (A
uniform target at those steps would add a constant log 3 floor that hides learning,
and masking the loss would need the engine to know about trials.)

Reference levels, with f = response_steps / trial_steps the answer fraction:

* nothing learned, predict the label marginal [1 - f, f/2, f/2] at every step:
  H = -(1 - f) log(1 - f) - f log(f / 2);
* timing only, blank when nothing is due and 50/50 during the response: f log 2;
* optimum: 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from simulator.settings import Setting
from simulator.tasks.base import Task
from simulator.tasks.trials import F64, TrialStream, one_hot_f64, trials_per_block

BLANK, MATCH, NON_MATCH = 0, 1, 2


def trial_layout(args: dict[str, Any]) -> tuple[int, int, int, int]:
    """Step counts (sample, delay, test, response) of one trial."""
    return args["stim_steps"], args["delay_steps"], args["stim_steps"], args["response_steps"]


def draw_pairs(count: int, stimuli: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Sample and test stimulus indices (count,): match with probability 1/2.

    One ``randint`` of shape (count, 3) per call: [sample, match coin, offset]; a
    non-matching test is sample + 1 + offset (mod stimuli) with offset uniform over the
    other stimuli.
    """
    r = torch.randint(0, 2**62, (count, 3), generator=gen)
    sample = r[:, 0] % stimuli
    match = r[:, 1] % 2 == 0
    other = (sample + 1 + r[:, 2] % (stimuli - 1)) % stimuli
    return sample, torch.where(match, sample, other)


def build_trials(sample: Tensor, test: Tensor, args: dict[str, Any]) -> tuple[Tensor, Tensor]:
    """Inputs (B*L, stimuli + 1) and one-hot targets (B*L, 3) of B trials."""
    k = args["stimuli"]
    s1, d, s2, r = trial_layout(args)
    b = sample.shape[0]
    length = s1 + d + s2 + r
    x = torch.zeros(b, length, k + 1, dtype=F64)
    x[:, :s1, :k] = one_hot_f64(sample, k).unsqueeze(1)
    x[:, s1 + d:s1 + d + s2, :k] = one_hot_f64(test, k).unsqueeze(1)
    x[:, length - r:, k] = 1.0
    label = torch.full((b, length), BLANK, dtype=torch.long)
    label[:, length - r:] = torch.where(sample == test, MATCH, NON_MATCH).unsqueeze(1)
    return x.reshape(b * length, k + 1), one_hot_f64(label, 3).reshape(b * length, 3)


class DelayedNonMatchStream(TrialStream):
    def __init__(self, task: DelayedNonMatchTask, seeds: Sequence[int], split: str) -> None:
        super().__init__(task, seeds, split)
        self.per_block = trials_per_block(task.trial_steps)

    def block(self, index: int) -> tuple[Tensor, Tensor]:
        args = self.task.args
        sample, test = draw_pairs(self.per_block, args["stimuli"], self.generators[index])
        return build_trials(sample, test, args)


class DelayedNonMatchTask(Task):
    name = "delayed-non-match"
    summary = "Delayed non-match: two stimuli across a delay; answer match or non-match"
    settings = (
        Setting("stimuli", 2, "number of distinct stimuli (2 makes it a delayed XOR)", int, 2, 64),
        Setting("stim_steps", 2, "steps each stimulus is shown", int, 1, 1000),
        Setting("delay_steps", 5, "steps of delay between the two stimuli", int, 0, 10_000),
        Setting("response_steps", 2, "steps of the response period (go cue on)", int, 1, 1000),
    )
    loss = "cross_entropy"

    n_in = property(lambda self: self.args["stimuli"] + 1)  # type: ignore[assignment]
    n_out = property(lambda self: 3)  # type: ignore[assignment]

    @property
    def trial_steps(self) -> int:
        return sum(trial_layout(self.args))

    def stream(self, seeds: Sequence[int], split: str = "train") -> DelayedNonMatchStream:
        return DelayedNonMatchStream(self, seeds, split)

    def reference_levels(self) -> dict[str, float]:
        f = self.args["response_steps"] / self.trial_steps
        blank = -(1 - f) * math.log(1 - f) if f < 1 else 0.0
        return {
            "nothing learned (label marginal)": blank - f * math.log(f / 2),
            "timing only (guess match)": f * math.log(2),
            "optimum": 0.0,
        }

    def view(self) -> dict[str, Any]:
        k = self.args["stimuli"]
        return {
            "kind": "lines" if k <= 4 else "heatmap",
            "inputs": [f"stimulus {i}" for i in range(k)] + ["go"],
            "outputs": ["blank", "match", "non-match"],
            "trial_steps": self.trial_steps,
        }
