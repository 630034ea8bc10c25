"""N-bit flip-flop (Sussillo & Barak 2013): a memory that flips.

Each of the N input channels carries, at each step independently, a pulse with
probability ``pulse_prob``, of sign +1 or -1 with equal probability (0 otherwise). The
target on output channel i is the sign of the last pulse seen on input channel i,
including the current step, and 0 before channel i's first pulse (nothing is stored
yet). Squared error, 0.5 ||z - y||^2.

A network solves it with 2^N stable fixed points, one per stored bit pattern, and input
pulses that kick the state between them; the task is the classic showcase for reading
out the learned attractor landscape.

Reference levels (stationary, after every channel's first pulse, so y_i = +/-1):

* zero output, the best prediction without information (E y_i = 0): 0.5 N;
* no memory: echo the input's pulse when there is one and output 0 otherwise
  (the best memoryless predictor, since E[y_i | no pulse now] = 0): 0.5 N (1 - p);
* optimum (remember every bit): 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from simulator.settings import Setting
from simulator.tasks.base import Task, TaskStream

F64 = torch.float64


def pulses(u: Tensor, prob: float) -> Tensor:
    """Pulses from uniforms u (..., 2): +/-1 where u[..., 0] < prob (sign from u[..., 1])."""
    sign = torch.where(u[..., 1] < 0.5, 1.0, -1.0).to(F64)
    return torch.where(u[..., 0] < prob, sign, torch.zeros((), dtype=F64))


def hold_last(x: Tensor, state: Tensor) -> Tensor:
    """Sign of the last nonzero entry of x (T, N) along time; ``state`` (N,) before any.

    Vectorised forward fill: the index of the latest pulse is a running maximum.
    """
    steps = torch.arange(x.shape[0]).unsqueeze(1).expand_as(x)
    last = torch.where(x != 0, steps, -1).cummax(0).values  # (T, N)
    held = x.gather(0, last.clamp(min=0))
    return torch.where(last >= 0, held, state.expand_as(x))


class FlipFlopStream(TaskStream):
    """Keeps the currently stored bits (S, N) so chunks join seamlessly.

    All randomness is one ``torch.rand(steps, N, 2)`` per seed per chunk; uniforms are
    drawn sequentially, so chunks of any size give the same stream.
    """

    def __init__(self, task: FlipFlopTask, seeds: Sequence[int], split: str) -> None:
        super().__init__(task, seeds, split)
        self.bits = task.args["bits"]
        self.prob = task.args["pulse_prob"]
        self.state = torch.zeros(len(self.seeds), self.bits, dtype=F64)

    def next(self, steps: int) -> tuple[Tensor, Tensor]:
        xs, ys = [], []
        for i, gen in enumerate(self.generators):
            u = torch.rand(steps, self.bits, 2, generator=gen, dtype=F64)
            x = pulses(u, self.prob)
            y = hold_last(x, self.state[i])
            if steps:
                self.state[i] = y[-1]
            xs.append(x)
            ys.append(y)
        return torch.stack(xs, 1), torch.stack(ys, 1)

    def extra_state(self) -> dict[str, Any]:
        return {"state": self.state.clone()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.state = state["state"].clone()


class FlipFlopTask(Task):
    name = "flip-flop"
    summary = "N-bit flip-flop (Sussillo & Barak 2013): hold the sign of each channel's last pulse"
    settings = (
        Setting("bits", 3, "number of independent bits (input and output channels)", int, 1, 64),
        Setting("pulse_prob", 0.05, "probability of a pulse per channel per step", float,
                0.001, 1.0),
    )
    loss = "mse"

    n_in = property(lambda self: self.args["bits"])  # type: ignore[assignment]
    n_out = property(lambda self: self.args["bits"])  # type: ignore[assignment]

    def stream(self, seeds: Sequence[int], split: str = "train") -> FlipFlopStream:
        return FlipFlopStream(self, seeds, split)

    def reference_levels(self) -> dict[str, float]:
        n, p = self.args["bits"], self.args["pulse_prob"]
        return {
            "zero output (nothing learned)": 0.5 * n,
            "no memory (echo pulses)": 0.5 * n * (1 - p),
            "optimum": 0.0,
        }

    def view(self) -> dict[str, Any]:
        n = self.args["bits"]
        return {
            "kind": "lines" if n <= 8 else "heatmap",
            "inputs": [f"pulse {i}" for i in range(n)],
            "outputs": [f"bit {i}" for i in range(n)],
            "y_range": [-1.2, 1.2],
        }
