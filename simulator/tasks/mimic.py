"""Mimic task (Marschall, Cho & Savin 2020): imitate a fixed random teacher RNN.

Inputs are Bernoulli(0.5) per dimension; the label is the readout of a fixed random
RNN of the same kind (orthogonal W_rec, W_in ~ N(0, 1/n_in), W_out ~ N(0, 1/n), biases
N(0, 0.1^2)) driven by the same inputs; squared error. The teacher depends only on
``teacher_seed``, so every seed of an ensemble imitates the same teacher.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import Any

import torch
from torch import Tensor

from simulator.seeding import orthogonal, seed_generator
from simulator.settings import Setting
from simulator.tasks.base import Task, TaskStream


class MimicStream(TaskStream):
    def __init__(self, task: MimicTask, seeds: Sequence[int], split: str) -> None:
        super().__init__(task, seeds, split)
        self.teacher = task.teacher
        n = self.teacher["W_rec"].shape[0]
        self.r = torch.stack(
            [torch.tanh(torch.randn(n, generator=g, dtype=torch.float64)) for g in self.generators]
        )  # (S, n) teacher state, one per seed

    def next(self, steps: int) -> tuple[Tensor, Tensor]:
        n_in = self.task.n_in
        x = torch.stack(
            [torch.bernoulli(torch.full((steps, n_in), 0.5, dtype=torch.float64), generator=g)
             for g in self.generators], 1
        )  # (steps, S, n_in)
        w = self.teacher
        alpha = self.task.args["teacher_alpha"]
        drive = x @ w["W_in"].T + w["b"]  # all steps at once; only the recurrence loops
        r = self.r
        rs = torch.empty(steps, *r.shape, dtype=torch.float64)
        for t in range(steps):
            r = (1 - alpha) * r + alpha * torch.tanh(r @ w["W_rec"].T + drive[t])
            rs[t] = r
        self.r = r
        return x, rs @ w["W_out"].T + w["b_out"]

    def extra_state(self) -> dict[str, Any]:
        return {"r": self.r.clone()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.r = state["r"].clone()


class MimicTask(Task):
    name = "mimic"
    summary = "Mimic a fixed random teacher RNN driven by Bernoulli inputs (squared error)"
    settings = (
        Setting("n_in", 32, "input dimensions", int, 1, 1024),
        Setting("n_out", 32, "output dimensions", int, 1, 1024),
        Setting("n_teacher", 32, "teacher units", int, 1, 4096),
        Setting("teacher_alpha", 1.0, "teacher leak alpha", float, 1e-3, 1.0),
        Setting("teacher_seed", 0, "seed of the teacher's weights", int, 0, 2**31 - 1),
    )
    loss = "mse"

    n_in = property(lambda self: self.args["n_in"])  # type: ignore[assignment]
    n_out = property(lambda self: self.args["n_out"])  # type: ignore[assignment]

    @cached_property
    def teacher(self) -> dict[str, Tensor]:
        a = self.args
        gen = seed_generator("mimic", "teacher", a["teacher_seed"])
        n = a["n_teacher"]
        return {
            "W_rec": orthogonal(n, gen),
            "W_in": torch.randn(n, a["n_in"], generator=gen, dtype=torch.float64) / a["n_in"] ** 0.5,
            "b": 0.1 * torch.randn(n, generator=gen, dtype=torch.float64),
            "W_out": torch.randn(a["n_out"], n, generator=gen, dtype=torch.float64) / n**0.5,
            "b_out": 0.1 * torch.randn(a["n_out"], generator=gen, dtype=torch.float64),
        }

    def stream(self, seeds: Sequence[int], split: str = "train") -> MimicStream:
        return MimicStream(self, seeds, split)

    @cached_property
    def _levels(self) -> dict[str, float]:
        # Estimated once on a long reference stream (fixed seed): the loss of the zero
        # output and of the best constant output (the per-dimension mean).
        _, y = self.stream([0], "reference").next(20_000)
        y = y[2_000:, 0]  # drop the teacher's transient
        return {
            "zero output": float(0.5 * y.square().sum(-1).mean()),
            "predict the mean": float(0.5 * y.var(0, unbiased=False).sum()),
        }

    def reference_levels(self) -> dict[str, float]:
        return dict(self._levels)

    def view(self) -> dict[str, Any]:
        kind = "heatmap" if self.n_out > 8 else "lines"
        return {"kind": kind, "inputs": self.n_in, "outputs": self.n_out}
