"""Shared pieces of the JMLR family of online rules (Marschall, Cho & Savin 2020).

- :class:`NoiseStream`: per-seed random draws (the random signs nu of UORO / KF-RTRL /
  R-KF-RTRL, KeRNL's perturbations), prefetched in blocks. Seed s's draws depend only on
  s and the rule, never on which other seeds share the ensemble.
- :func:`random_feedback`: the fixed random feedback matrix B ~ N(0, 1/n_out) per seed,
  drawn exactly as :mod:`simulator.rules.dni` draws it, so rules compared on one seed
  share the same B.
- :func:`jacobian_matmul`: J(t) X for the network Jacobian J = diag(gain) W_rec + (1-alpha) I.
- :class:`StatefulRule`: checkpointing of rules that hold tensors (possibly None) and
  noise streams; settings fixed for the run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from simulator.network import Network, matvec, vecmat
from simulator.rules.base import Rule
from simulator.seeding import seed_generator
from simulator.settings import ConfigError, Setting

SIGN_KINDS = ("rademacher", "gaussian", "uniform")

SIGNS = Setting("signs", "rademacher",
                "distribution of the random signs (zero mean, unit variance)",
                str, choices=SIGN_KINDS)

FEEDBACK = Setting("feedback", "symmetric",
                   "output-error feedback onto the units: symmetric W_out^T, or a fixed "
                   "random N(0, 1/n_out) matrix (feedback alignment)",
                   str, choices=("symmetric", "random"))

START = Setting("start", "normal",
                "starting influence factors: normal (i.i.d. N(0, 1), the authors') or zeros",
                str, choices=("normal", "zeros"))


def start_factors(kind: str, purpose: str, seeds: Sequence[int], shapes: Sequence[tuple[int, ...]],
                  like: Tensor) -> list[Tensor]:
    """The starting factors of a stochastic influence estimate, (S, *shape) each: zeros, or
    N(0, 1) drawn per seed from its own generator (in float64, then cast)."""
    if kind == "zeros":
        return [like.new_zeros(len(seeds), *shape) for shape in shapes]
    gens = [seed_generator(purpose, "start", s) for s in seeds]
    return [torch.stack([torch.randn(shape, generator=g, dtype=torch.float64) for g in gens]).to(like)
            for shape in shapes]


#: keeps the norm ratios of the stochastic rules finite when a factor is exactly zero
#: (at the start); it enters only the rescalings rho, which never bias the estimate
EPS = 1e-12

#: random numbers prefetched per seed and block, whatever the ensemble size
_BLOCK_NUMBERS = 1 << 15


def draw(kind: str, shape: tuple[int, ...], gen: torch.Generator) -> Tensor:
    """Zero-mean, unit-variance i.i.d. samples (float64, CPU)."""
    if kind == "rademacher":
        return torch.randint(0, 2, shape, generator=gen, dtype=torch.float64).mul_(2).sub_(1)
    if kind == "gaussian":
        return torch.randn(shape, generator=gen, dtype=torch.float64)
    if kind == "uniform":
        return torch.rand(shape, generator=gen, dtype=torch.float64).mul_(2).sub_(1).mul_(math.sqrt(3))
    raise ValueError(f"unknown distribution {kind!r}")


def noise_numel(width: int) -> int:
    """Floats per seed a :class:`NoiseStream` of ``width`` holds (its prefetched block)."""
    return max(1, min(1024, _BLOCK_NUMBERS // max(width, 1))) * width


class NoiseStream:
    """Endless per-seed draws of ``width`` numbers per step, as (S, width) tensors.

    One generator per seed (``seed_generator(purpose, seed)``). Blocks of steps are drawn
    at once (a Python loop over seeds every few hundred steps, not every step); the block
    length depends only on ``width``, so a seed's numbers are the same in any ensemble.
    """

    def __init__(self, purpose: str, seeds: Sequence[int], width: int, kind: str,
                 like: Tensor) -> None:
        self.kind = kind
        self.width = width
        self.generators = [seed_generator(purpose, s) for s in seeds]
        self.block = noise_numel(width) // max(width, 1)
        self.dtype, self.device = like.dtype, like.device
        self.buffer = like.new_empty(0, len(self.generators), width)
        self.i = 0

    def feed(self, values: Tensor) -> None:
        """Use ``values`` (T, S, width) for the next T draws, then continue the random stream
        (a seam to replay another code's random numbers, e.g. in the golden tests)."""
        values = torch.as_tensor(values).to(dtype=self.dtype, device=self.device)
        expected = (len(self.generators), self.width)
        if values.dim() != 3 or tuple(values.shape[1:]) != expected:
            raise ValueError(f"noise values: got shape {tuple(values.shape)}; expected "
                             f"(T, {expected[0]}, {expected[1]})")
        self.buffer = torch.cat([values, self.buffer[self.i :]])
        self.i = 0

    def next(self) -> Tensor:
        if self.i >= self.buffer.shape[0]:
            draws = [draw(self.kind, (self.block, self.width), g) for g in self.generators]
            self.buffer = torch.stack(draws, 1).to(dtype=self.dtype, device=self.device)
            self.i = 0
        out = self.buffer[self.i]
        self.i += 1
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"generators": [g.get_state() for g in self.generators],
                "buffer": self.buffer[self.i :].cpu().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for gen, gen_state in zip(self.generators, state["generators"], strict=True):
            gen.set_state(gen_state)
        self.buffer = state["buffer"].to(dtype=self.dtype, device=self.device)
        self.i = 0


def random_feedback(seeds: Sequence[int], n: int, n_out: int, like: Tensor) -> Tensor:
    """B (S, n, n_out) ~ N(0, 1/n_out), one fixed draw per seed (the same B as dni's)."""
    Bs = [torch.randn(n, n_out, generator=seed_generator("feedback", s), dtype=torch.float64)
          / n_out**0.5 for s in seeds]
    return torch.stack(Bs).to(like)


def feedback_credit(B: Tensor | None, e: Tensor, net: Network) -> Tensor:
    """q = B e, the output error as each unit receives it; B = None means W_out^T."""
    return vecmat(e, net.readout) if B is None else matvec(B, e)


def jacobian_matmul(net: Network, gain: Tensor, X: Tensor) -> Tensor:
    """J(t) X for X (S, n, k), J = diag(gain) W_rec + (1 - alpha) I (a new tensor)."""
    return net.add_leak_(torch.bmm(net.W_rec, X).mul_(gain.unsqueeze(2)), X)


def jacobian_times(net: Network, gain: Tensor, v: Tensor) -> Tensor:
    """J(t) v for v (S, n)."""
    return net.add_leak_(matvec(net.W_rec, v).mul_(gain), v)


def norm(x: Tensor) -> Tensor:
    """Per-seed Frobenius norm of a (S, ...) tensor."""
    return torch.linalg.vector_norm(x.flatten(1), dim=1)


def balance(numerator: Tensor, denominator: Tensor) -> Tensor:
    """sqrt(numerator / denominator), the rescaling rho that balances two factors; guarded
    by EPS only where a factor is exactly zero (a zero start), exact elsewhere."""
    exact = (numerator > 0) & (denominator > 0)
    return torch.where(exact, numerator / denominator.clamp(min=EPS),
                       (numerator + EPS) / (denominator + EPS)).sqrt_()


class StatefulRule(Rule):
    """A rule whose state is tensors (listed in ``state_keys``, possibly None) and noise
    streams; checkpoints restore both, so a continued run is bit-identical."""

    state_keys: ClassVar[tuple[str, ...]] = ()
    #: state tensors (S, ...) a user may set with Run.load_arrays, beside the populations
    loadable: ClassVar[tuple[str, ...]] = ()
    #: settings that shape the rule's state and cannot change mid-run
    fixed_args: ClassVar[tuple[str, ...]] = ()

    def __init__(self, net: Network, n_out: int, args: dict[str, Any], seeds: list[int]) -> None:
        super().__init__(net, n_out, args, seeds)
        self.dtype, self.device = net.W.dtype, net.W.device

    def arrays(self) -> dict[str, Tensor]:
        return {**self.populations(), **{k: getattr(self, k) for k in self.loadable}}

    def feed_noise(self, values: Tensor) -> None:
        """Replay given random numbers (T, S, width) as the rule's next T draws (its signs
        nu, or KeRNL's perturbations zeta in units of sigma), then continue its own stream."""
        streams = [v for v in vars(self).values() if isinstance(v, NoiseStream)]
        if len(streams) != 1:
            raise ConfigError("noise", f"rule {self.name!r} draws no random numbers")
        streams[0].feed(values)

    def set_args(self, **changes: Any) -> None:
        for key in changes:
            if key in self.fixed_args:
                raise ConfigError(f"rule_args.{key}", "cannot change mid-run; start a branch")
        super().set_args(**changes)

    def state_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in self.state_keys:
            value = getattr(self, key)
            out[key] = None if value is None else value.clone()
        for key, value in vars(self).items():
            if isinstance(value, NoiseStream):
                out[key] = value.state_dict()
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            current = getattr(self, key, None)
            if isinstance(current, NoiseStream):
                current.load_state_dict(value)
            elif value is None:
                setattr(self, key, None)
            elif isinstance(current, Tensor) and current.shape == value.shape:
                current.copy_(value)  # in place: populations() hands these tensors out
            else:
                setattr(self, key, value.to(dtype=self.dtype, device=self.device).clone())
