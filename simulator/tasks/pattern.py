"""Pattern generation: draw a periodic waveform from a clock (the e-prop / RFLO demo).

The target on each output channel o is a fixed sum of sines with period P steps,

    y_o(t) = c_o * sum_{k=1..H} a_ok sin(2 pi k t / P + phi_ok),

with amplitudes a_ok ~ U(0.5, 1) / k (a gently decaying spectrum), phases
phi_ok ~ U(0, 2 pi), and c_o scaling the peak |y_o| over a period to 1. The waveform
depends only on ``pattern_seed``, so every seed of an ensemble learns the same drawing;
each seed's stream starts at its own random phase. Squared error.

The clock input comes in two flavours:

* ``phase``: [cos(2 pi t / P), sin(2 pi t / P)], the phase of the period on a circle.
  The map from phase to target is fixed but nonlinear (the harmonics sin(k theta) must
  be built from cos theta and sin theta), so it needs hidden units but little memory.
* ``pulse``: a single 1 at the first step of each period. Between pulses the network
  must keep time itself, which makes it a memory task, closer in spirit to the
  pattern-generation demos of RFLO (Murray 2019) and e-prop (Bellec et al. 2020), where
  the timing has to be carried by the recurrent dynamics.

Reference levels, exact for H < P / 2 (discrete orthogonality of the harmonics):

* zero output, the best constant (each sine averages to 0 over a period):
  0.5 sum_o c_o^2 sum_k a_ok^2 / 2;
* fundamental only, the best output using just the k = 1 harmonic:
  0.5 sum_o c_o^2 sum_{k>=2} a_ok^2 / 2;
* optimum: 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import cached_property
from typing import Any

import torch
from torch import Tensor

from simulator.seeding import seed_generator
from simulator.settings import ConfigError, Setting
from simulator.tasks.base import Task, TaskStream

F64 = torch.float64


def waveform(t: Tensor, period: int, amps: Tensor, phases: Tensor) -> Tensor:
    """Sum of sines at integer times t (T,): amps, phases (O, H) -> (T, O)."""
    k = torch.arange(1, amps.shape[1] + 1, dtype=F64)
    angle = 2 * math.pi * (t.to(F64) % period)[:, None, None] * k / period + phases  # (T, O, H)
    return (amps * torch.sin(angle)).sum(-1)


def clock(t: Tensor, period: int, kind: str) -> Tensor:
    """The clock input at integer times t (T,): (T, 2) phase or (T, 1) pulse."""
    phase = t % period
    if kind == "pulse":
        return (phase == 0).to(F64).unsqueeze(1)
    angle = 2 * math.pi * phase.to(F64) / period
    return torch.stack([torch.cos(angle), torch.sin(angle)], 1)


class PatternStream(TaskStream):
    """Deterministic given the per-seed start time; keeps each seed's clock t."""

    def __init__(self, task: PatternTask, seeds: Sequence[int], split: str) -> None:
        super().__init__(task, seeds, split)
        period = task.args["period"]
        self.t = torch.stack(
            [torch.randint(period, (), generator=g) for g in self.generators]
        )  # (S,) int64

    def next(self, steps: int) -> tuple[Tensor, Tensor]:
        a = self.task.args
        amps, phases = self.task.spectrum  # type: ignore[attr-defined]
        xs, ys = [], []
        for t0 in self.t:
            t = t0 + torch.arange(steps)
            xs.append(clock(t, a["period"], a["clock"]))
            ys.append(waveform(t, a["period"], amps, phases))
        self.t = (self.t + steps) % a["period"]
        return torch.stack(xs, 1), torch.stack(ys, 1)

    def extra_state(self) -> dict[str, Any]:
        return {"t": self.t.clone()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.t = state["t"].clone()


class PatternTask(Task):
    name = "pattern"
    summary = "Generate a periodic sum of sines from a clock input (e-prop/RFLO demo; MSE)"
    settings = (
        Setting("period", 25, "period of the waveform in steps", int, 2, 10_000),
        Setting("harmonics", 3, "number of harmonics H (must be below period / 2)", int, 1, 64),
        Setting("outputs", 1, "number of output channels, each its own waveform", int, 1, 16),
        Setting("clock", "phase", "clock input: phase [cos, sin] or one pulse per period", str,
                choices=("phase", "pulse")),
        Setting("pattern_seed", 0, "seed of the waveform's amplitudes and phases", int, 0,
                2**31 - 1),
    )
    loss = "mse"

    def __init__(self, **args: Any) -> None:
        super().__init__(**args)
        if 2 * args["harmonics"] >= args["period"]:
            raise ConfigError(
                "task_args.harmonics",
                f"must be below period / 2 (got harmonics={args['harmonics']}, "
                f"period={args['period']}); higher ones alias on a {args['period']}-step grid",
            )

    n_in = property(lambda self: 1 if self.args["clock"] == "pulse" else 2)  # type: ignore[assignment]
    n_out = property(lambda self: self.args["outputs"])  # type: ignore[assignment]

    @cached_property
    def spectrum(self) -> tuple[Tensor, Tensor]:
        """Amplitudes (peak-normalised) and phases, each (outputs, harmonics)."""
        a = self.args
        gen = seed_generator("pattern", "waveform", a["pattern_seed"])
        shape = (a["outputs"], a["harmonics"])
        k = torch.arange(1, a["harmonics"] + 1, dtype=F64)
        amps = (0.5 + 0.5 * torch.rand(shape, generator=gen, dtype=F64)) / k
        phases = 2 * math.pi * torch.rand(shape, generator=gen, dtype=F64)
        peak = waveform(torch.arange(a["period"]), a["period"], amps, phases).abs().amax(0)
        return amps / peak.unsqueeze(1), phases

    def stream(self, seeds: Sequence[int], split: str = "train") -> PatternStream:
        return PatternStream(self, seeds, split)

    def reference_levels(self) -> dict[str, float]:
        power = self.spectrum[0].square() / 2  # mean square of each sine over a period
        return {
            "zero output (nothing learned)": float(0.5 * power.sum()),
            "fundamental only": float(0.5 * power[:, 1:].sum()),
            "optimum": 0.0,
        }

    def view(self) -> dict[str, Any]:
        inputs = ["clock pulse"] if self.args["clock"] == "pulse" else ["cos phase", "sin phase"]
        return {
            "kind": "lines",
            "inputs": inputs,
            "outputs": [f"waveform {o}" for o in range(self.args["outputs"])],
            "period": self.args["period"],
            "y_range": [-1.2, 1.2],
        }
