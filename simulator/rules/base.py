"""The learning-rule interface, in the spirit of torch.optim: one small class per rule.

Each step the engine runs the network forward and hands the rule a :class:`StepContext`.
The rule returns a :class:`RuleOutput`: for each synaptic sub-population it trains, an
estimate G of dL/dW (the engine applies W <- W - lr G, only where the current circuit
phase makes that population plastic), the per-unit learning signal it used (shown as the
apical voltage U), and scalar diagnostics. The readout always learns by the delta rule in
the engine; rules own the basal update and any sub-populations of their own (the apical
compartment A, the learned Jacobian J~).

A new rule is one module with a Rule subclass plus one line in ``simulator/rules/__init__.py``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from simulator.losses import loss_value
from simulator.network import Network
from simulator.settings import Setting


@dataclass
class Rank1:
    """G = post (x) pre per seed: the three-factor form, post (S, a), pre (S, b)."""

    post: Tensor
    pre: Tensor

    def dense(self) -> Tensor:
        return self.post.unsqueeze(2) * self.pre.unsqueeze(1)

    def norm(self) -> Tensor:
        return torch.linalg.vector_norm(self.post, dim=1) * torch.linalg.vector_norm(self.pre, dim=1)


@dataclass
class Dense:
    """A full estimate G (S, a, b)."""

    grad: Tensor

    def dense(self) -> Tensor:
        return self.grad

    def norm(self) -> Tensor:
        return torch.linalg.vector_norm(self.grad.flatten(1), dim=1)


Update = Rank1 | Dense


#: a learning rate: one number for every seed, or a tensor (S,) with one per ensemble member
#: (a batched sweep, simulator.sweep, holds members with different rates in one run)
Rate = float | Tensor


def rate_active(lr: Rate) -> bool:
    """Whether a rate changes anything (a zero rate skips the update entirely)."""
    return bool((lr != 0).any()) if isinstance(lr, Tensor) else bool(lr)


def apply_update(target: Tensor, update: Update, lr: Rate) -> None:
    """target <- target - lr G, in place (the plain-SGD step every population takes).

    A per-member rate (S,) scales each seed's G; it rounds exactly as the scalar form does
    (-(lr post) pre == (-lr post) pre), so a member of a batch equals its run alone."""
    if isinstance(lr, Tensor):
        if isinstance(update, Rank1):
            target.addcmul_((update.post * lr.unsqueeze(1)).unsqueeze(2), update.pre.unsqueeze(1),
                            value=-1.0)
        else:
            target.sub_(update.grad * lr.view(-1, *[1] * (update.grad.dim() - 1)))
    elif isinstance(update, Rank1):
        target.addcmul_(update.post.unsqueeze(2), update.pre.unsqueeze(1), value=-lr)
    else:
        target.add_(update.grad, alpha=-lr)


@dataclass
class StepContext:
    """Everything a rule may read at step t (shapes: S seeds, n units).

    p = [r(t-1); x(t); 1] (S, n + n_in + 1), V(t), h = tanh(V), gain = dr/dV = alpha tanh'(V),
    r(t) and r(t-1), target y(t), readout z(t), error e(t) = dL/dz, credit c(t) = W_out^T e(t)
    (the immediate dL(t)/dr(t)); ``plastic`` is the set of populations learning this step;
    ``lr`` the learning rates by population (set by the engine; None where a rule is stepped
    by hand: then :meth:`Rule.apply_now` applies nothing).
    ``loss_kind`` names the task's loss (simulator.losses), so a rule can read L(t) itself.
    """

    t: int
    net: Network
    p: Tensor
    V: Tensor
    gain: Tensor
    r_prev: Tensor
    r: Tensor
    x: Tensor
    y: Tensor
    z: Tensor
    e: Tensor
    plastic: frozenset[str]
    _credit: Tensor | None = None
    lr: Mapping[str, Rate] | None = None
    loss_kind: str | None = None

    @property
    def credit(self) -> Tensor:
        if self._credit is None:
            self._credit = torch.bmm(self.e.unsqueeze(1), self.net.readout).squeeze(1)
        return self._credit

    @property
    def loss(self) -> Tensor:
        """L(t) per seed (S,), from the readout z(t) and the target y(t)."""
        if self.loss_kind is None:
            raise ValueError("StepContext.loss needs loss_kind (the engine sets it)")
        return loss_value(self.loss_kind, self.z, self.y)


@dataclass
class RuleOutput:
    updates: dict[str, Update] = field(default_factory=dict)
    signal: Tensor | None = None  # per-unit learning signal (S, n), shown as U
    diagnostics: dict[str, Tensor] = field(default_factory=dict)  # name -> (S,)
    #: populations the rule already updated during its step (Rule.apply_now: the authors'
    #: sequential order); the engine does not apply them again
    applied: set[str] = field(default_factory=set)


class Rule(ABC):
    """Base class. ``settings`` declares the rule's knobs (validated before __init__)."""

    name: ClassVar[str]
    summary: ClassVar[str]
    settings: ClassVar[tuple[Setting, ...]] = ()
    #: reads the leak only through Network's helpers (leaky, add_leak_, leak_scale_,
    #: leak_step), so a batched sweep may give each slot its own alpha (a tensor (S, 1))
    per_slot_alpha: ClassVar[bool] = False
    #: sub-populations beyond basal/readout that the rule owns, with the setting holding
    #: each one's learning rate, e.g. {"apical": "lr_apical"}
    own_populations: ClassVar[dict[str, str]] = {}
    #: every rule setting that may change mid-run (the service's ``set`` action), with the
    #: population whose learning rate it is, e.g. {"lr_apical": "apical"}; empty: the
    #: inverse of ``own_populations``. Which of them apply to a run: :meth:`live_rates`
    live_settings: ClassVar[dict[str, str]] = {}
    #: diagnostics this rule reports every step (names), so telemetry can preallocate
    diagnostic_names: ClassVar[tuple[str, ...]] = ()
    trains_basal: ClassVar[bool] = True
    #: the step can be captured by torch.compile (Run(compile=True)): its state is tensors
    #: only, no Python counter that changes every step
    compilable: ClassVar[bool] = False
    #: the rule injects noise into the network's state in the forward pass (node
    #: perturbation): the engine passes r(t) through perturb_state before the readout
    perturbs_state: ClassVar[bool] = False

    def __init__(self, net: Network, n_out: int, args: dict[str, Any], seeds: list[int]) -> None:
        self.args = dict(args)
        self.seeds = seeds

    # ---- cost (simulator.cost adds the network, the engine and the seeds) ------------------
    # Sizes: n units, n_in inputs, n_out outputs; m = n + n_in + 1 is the basal block's width.
    @classmethod
    def state_numel(cls, n: int, n_in: int, n_out: int, args: Mapping[str, Any]) -> int:
        """Floats per seed the rule keeps between steps, beyond the network's own weights."""
        raise NotImplementedError(f"rule {cls.name!r} must declare state_numel (its memory)")

    @classmethod
    def step_flops(cls, n: int, n_in: int, n_out: int, args: Mapping[str, Any]) -> int:
        """Floating-point operations per seed per step for the rule's update."""
        raise NotImplementedError(f"rule {cls.name!r} must declare step_flops (its work)")

    @classmethod
    def population_numel(cls, n: int, n_in: int, n_out: int, args: Mapping[str, Any]) -> int:
        """Floats per seed in the rule's own populations (part of the state; the engine
        copies every population once per ``advance`` to report weight changes)."""
        return 0

    @classmethod
    def temp_numel(cls, n: int, n_in: int, n_out: int, args: Mapping[str, Any]) -> int:
        """Floats per seed of the temporaries alive at the peak of one step (default: one
        dense basal update, n x m)."""
        return n * (n + n_in + 1)

    @abstractmethod
    def step(self, ctx: StepContext) -> RuleOutput: ...

    def perturb_state(self, r: Tensor) -> Tensor:
        """r(t) as the network continues with it (only called where perturbs_state)."""
        return r

    def populations(self) -> dict[str, Tensor]:
        """The weight tensors of the populations this rule owns (updated in place)."""
        return {}

    def arrays(self) -> dict[str, Tensor]:
        """The rule's tensors a user may set (Run.load_arrays) and read (Run.state_arrays), by
        name, each (S, ...) in the conventional per-seed shape (views, written in place):
        the populations it owns, and state such as a fixed feedback matrix or the starting
        factors of an influence estimate."""
        return self.populations()

    def arrays_loaded(self, names: set[str], net: Network) -> None:  # noqa: B027 - optional hook
        """Called after Run.load_arrays set ``names`` (network and rule arrays alike), so a
        rule keeps derived copies in step."""

    def apply_now(self, ctx: StepContext, out: RuleOutput, name: str, update: Update) -> None:
        """Record ``update`` for population ``name`` and apply it at once, inside the step,
        with the engine's learning rate and phase gating (the authors' sequential order:
        later parts of the step read the updated weights). Stepped by hand (ctx.lr None),
        the update is only recorded and the engine-less caller applies it."""
        out.updates[name] = update
        if ctx.lr is None:
            return
        out.applied.add(name)
        lr = ctx.lr.get(name, 0.0)
        if name in ctx.plastic and rate_active(lr):
            apply_update(self.populations()[name], update, lr)

    @classmethod
    def rate_settings(cls, args: Mapping[str, Any]) -> dict[str, str]:
        """Population -> the setting that holds its learning rate, for these settings. A
        batched sweep may give each member its own value of these (simulator.sweep); every
        other setting shapes the computation and must be shared."""
        return dict(cls.own_populations)

    @classmethod
    def live_rates(cls, args: Mapping[str, Any] | None = None) -> dict[str, str]:
        """Setting -> population of the learning rates that can change mid-run: for these
        (resolved) settings, or with ``args`` None every one the rule may have."""
        declared = dict(cls.live_settings) or {key: pop for pop, key in cls.own_populations.items()}
        if args is None:
            return declared
        return {key: pop for pop, key in cls.rate_settings(args).items()}

    def learning_rates(self) -> dict[str, float]:
        return {pop: float(self.args[key]) for pop, key in self.rate_settings(self.args).items()}

    def set_args(self, **changes: Any) -> None:
        """Change settings mid-run (learning rates...); subclasses may refuse others."""
        self.args.update(changes)

    def after_update(self, t: int) -> None:  # noqa: B027 - optional hook
        """Called after the engine applied this step's updates (frozen copies...)."""

    def state_dict(self) -> dict[str, Any]:
        return {k: v.clone() for k, v in vars(self).items() if isinstance(v, Tensor)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            current = getattr(self, key)
            if isinstance(current, Tensor):
                current.copy_(value)
            else:
                setattr(self, key, value)
