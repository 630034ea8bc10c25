"""The Add task (Pitis 2016), the benchmark of Marschall, Cho & Savin (2019).

x(t) ~ Bernoulli(0.5); p(t) = 0.5 + 0.5 x(t - t1) - 0.25 x(t - t2); input [x, 1 - x],
label [p, 1 - p] (deterministic) or a one-hot sample of it; softmax cross-entropy.
With tau_task > 1 each input sample is held for tau_task steps and the lags count
samples, not steps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from simulator.settings import ConfigError, Setting
from simulator.tasks.base import Task, TaskStream


def _entropy(p: float) -> float:
    return -sum(q * math.log(q) for q in (p, 1 - p) if q > 0)


def _cross_entropy(p: float, q: float) -> float:
    return -(p * math.log(q) + (1 - p) * math.log(1 - q))


class AddStream(TaskStream):
    """Keeps the last t2 + 1 samples (the newest is the one on screen) and how many
    steps the newest has been held, so chunks of any size join seamlessly."""

    def __init__(self, task: AddTask, seeds: Sequence[int], split: str) -> None:
        super().__init__(task, seeds, split)
        self.t1, self.t2, self.tau = task.args["t1"], task.args["t2"], task.args["tau_task"]
        self.sampled = task.args["labels"] == "sampled"
        self.history = self._coins(self.t2 + 1)  # (t2 + 1, S)
        self.hold = self.tau  # the next step shows a fresh sample

    def _coins(self, count: int) -> Tensor:
        half = torch.full((count,), 0.5, dtype=torch.float64)
        return torch.stack([torch.bernoulli(half, generator=g) for g in self.generators], 1)

    def next(self, steps: int) -> tuple[Tensor, Tensor]:
        fresh = self._coins((self.hold + steps - 1) // self.tau)
        samples = torch.cat([self.history, fresh], 0)
        idx = self.t2 + (self.hold + torch.arange(steps)) // self.tau
        x = samples[idx]
        p = 0.5 + 0.5 * samples[idx - self.t1] - 0.25 * samples[idx - self.t2]
        self.history = samples[-(self.t2 + 1):].clone()
        self.hold = (self.hold + steps - 1) % self.tau + 1
        if self.sampled:
            u = torch.stack([torch.rand(steps, generator=g, dtype=torch.float64)
                             for g in self.generators], 1)
            p = (u < p).to(torch.float64)
        return torch.stack([x, 1 - x], -1), torch.stack([p, 1 - p], -1)

    def extra_state(self) -> dict[str, Any]:
        return {"history": self.history.clone(), "hold": self.hold}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.history = state["history"].clone()
        self.hold = state["hold"]


class AddTask(Task):
    name = "add"
    summary = "Add task (Pitis 2016): label prob 0.5 + 0.5 x(t-t1) - 0.25 x(t-t2)"
    settings = (
        Setting("t1", 5, "first lag (the strong dependency)", int, 1, 1000),
        Setting("t2", 9, "second lag (the weak dependency); must exceed t1", int, 1, 1000),
        Setting("tau_task", 1, "steps each input sample is held", int, 1, 1000),
        Setting("labels", "deterministic", "soft label [p, 1-p] or a one-hot sample of it",
                str, choices=("deterministic", "sampled")),
    )
    loss = "cross_entropy"

    def __init__(self, **args: Any) -> None:
        super().__init__(**args)
        if args["t1"] >= args["t2"]:
            raise ConfigError("task_args.t1", f"must be less than t2 (got t1={args['t1']}, "
                              f"t2={args['t2']})")

    n_in = property(lambda self: 2)  # type: ignore[assignment]
    n_out = property(lambda self: 2)  # type: ignore[assignment]

    def stream(self, seeds: Sequence[int], split: str = "train") -> AddStream:
        return AddStream(self, seeds, split)

    def reference_levels(self) -> dict[str, float]:
        """Expected cross-entropy of four predictors, from the label distribution.

        x(t-t1), x(t-t2) are independent fair coins, so p is 1, 0.75, 0.5 or 0.25 with
        probability 1/4 each: 0.6616 / 0.6277 / 0.5192 / 0.4544 nats.
        """
        cases = [(a, b, 0.5 + 0.5 * a - 0.25 * b) for a in (0, 1) for b in (0, 1)]
        mean = sum(p for *_, p in cases) / 4
        by_b = {b: sum(p for _, bb, p in cases if bb == b) / 2 for b in (0, 1)}
        by_a = {a: sum(p for aa, _, p in cases if aa == a) / 2 for a in (0, 1)}
        return {
            "nothing learned": sum(_cross_entropy(p, mean) for *_, p in cases) / 4,
            "t2 dependency only": sum(_cross_entropy(p, by_b[b]) for _, b, p in cases) / 4,
            "t1 dependency only": sum(_cross_entropy(p, by_a[a]) for a, _, p in cases) / 4,
            "both (optimum)": sum(_entropy(p) for *_, p in cases) / 4,
        }

    def view(self) -> dict[str, Any]:
        return {"kind": "lines", "inputs": ["x"], "outputs": ["p(label 0)"], "input_index": [0],
                "output_index": [0]}
