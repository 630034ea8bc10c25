"""Copy: reproduce a short random sequence after a delay (Hochreiter & Schmidhuber 1997;
Graves et al. 2014; Arjovsky et al. 2016).

One trial, back to back with the next (inputs: one channel per symbol plus a "go"
cue; targets: the symbols plus a ``blank`` class, the last index):

    | present, length | delay, delay_steps | recall, length |
      symbol s_j on     all inputs 0         go cue on; target s_j in order

Symbols are i.i.d. uniform over ``symbols``. Memory load grows with ``length`` (how
much to hold) and ``delay`` (for how long).

Steps with no answer due: the target is the explicit ``blank`` class, as in the
classic copy task, so the loss is a proper cross-entropy at every step with optimum 0
and the network must learn when to answer as well as what. (A uniform target there
would add a constant floor; masking would need the engine to know about trials.)

Reference levels, with f = length / trial_steps the recall fraction and K symbols:

* nothing learned, predict the label marginal (blank 1 - f, each symbol f / K):
  H = -(1 - f) log(1 - f) - f log(f / K);
* timing only, blank outside recall and uniform over symbols during it: f log K;
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


def build_trials(seq: Tensor, symbols: int, delay: int) -> tuple[Tensor, Tensor]:
    """Inputs (B*L, symbols + 1) and one-hot targets (B*L, symbols + 1) of B trials
    from their sequences seq (B, length)."""
    b, length = seq.shape
    trial = 2 * length + delay
    x = torch.zeros(b, trial, symbols + 1, dtype=F64)
    x[:, :length, :symbols] = one_hot_f64(seq, symbols)
    x[:, trial - length:, symbols] = 1.0
    label = torch.full((b, trial), symbols, dtype=torch.long)  # blank
    label[:, trial - length:] = seq
    return x.reshape(b * trial, symbols + 1), one_hot_f64(label, symbols + 1).reshape(b * trial, -1)


class CopyStream(TrialStream):
    def __init__(self, task: CopyTask, seeds: Sequence[int], split: str) -> None:
        super().__init__(task, seeds, split)
        self.per_block = trials_per_block(task.trial_steps)

    def block(self, index: int) -> tuple[Tensor, Tensor]:
        a = self.task.args
        seq = torch.randint(a["symbols"], (self.per_block, a["length"]),
                            generator=self.generators[index])
        return build_trials(seq, a["symbols"], a["delay"])


class CopyTask(Task):
    name = "copy"
    summary = "Copy: reproduce a short random symbol sequence after a delay"
    settings = (
        Setting("length", 3, "symbols to remember per trial (memory length)", int, 1, 100),
        Setting("delay", 5, "blank steps between presentation and recall", int, 0, 10_000),
        Setting("symbols", 4, "alphabet size", int, 2, 64),
    )
    loss = "cross_entropy"

    n_in = property(lambda self: self.args["symbols"] + 1)  # type: ignore[assignment]
    n_out = property(lambda self: self.args["symbols"] + 1)  # type: ignore[assignment]

    @property
    def trial_steps(self) -> int:
        return 2 * self.args["length"] + self.args["delay"]

    def stream(self, seeds: Sequence[int], split: str = "train") -> CopyStream:
        return CopyStream(self, seeds, split)

    def reference_levels(self) -> dict[str, float]:
        k = self.args["symbols"]
        f = self.args["length"] / self.trial_steps
        blank = -(1 - f) * math.log(1 - f) if f < 1 else 0.0
        return {
            "nothing learned (label marginal)": blank - f * math.log(f / k),
            "timing only (guess symbols)": f * math.log(k),
            "optimum": 0.0,
        }

    def view(self) -> dict[str, Any]:
        k = self.args["symbols"]
        return {
            "kind": "heatmap",
            "inputs": [f"symbol {i}" for i in range(k)] + ["go"],
            "outputs": [f"symbol {i}" for i in range(k)] + ["blank"],
            "trial_steps": self.trial_steps,
        }
