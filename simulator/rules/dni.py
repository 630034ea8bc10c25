"""DNI in the compartmental neuron (Marschall, Cho & Savin 2019; Jaderberg et al. 2016).

Each unit's apical compartment carries a synthetic gradient, its voltage

    U(t) = A r(t) + A_fb y*(t) + c        (apical weights [A | A_fb | c], pre a~ = [r; y*; 1])

estimating the credit dL_future/dr(t). Three local rules, one per sub-population:

  basal   dW_ij = -eta   U_i(t) gain_i(t) p_j(t)          gain = alpha tanh'(V), p = [r(t-1); x; 1]
  apical  dA    = -eta_A (A a~(t-1) - target) a~(t-1)^T,     target = B e(t-1) + J~^T g(U_frozen(t))
  J~      dJ~   = -eta_J (J~ r(t-1) - r(t)) r(t-1)^T      (only with jacobian=learned; J~(0) = W_rec)

U_frozen uses a copy of the apical weights refreshed every ``refresh`` steps. Order within a
step (``order=sequential``, the authors' code, omarschall/vanilla-rtrl): the J~ update, then
the apical target with the updated J~ and the apical update, then U(t) from the updated A
and the basal update, then the readout; at the first step the apical rule runs with
a~(-1) = [r(-1); y(0); 1] and q(-1) = 0, and q(t-1) = B e(t-1) uses the readout from before
step t-1's readout update. ``order=simultaneous`` computes every update from the state
before the step. The three
choices that make DNI local are separate settings: feedback B (symmetric W_out^T or a fixed
random N(0, 1/n_out) matrix), Jacobian (the exact J(t) or the learned J~), label squashing g
(identity or tanh). DNI-b, the paper's rule, is random / learned / tanh.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from simulator.network import Network, matvec, vecmat
from simulator.rules.base import Rank1, RuleOutput, StepContext
from simulator.rules.family import StatefulRule, feedback_credit, random_feedback
from simulator.seeding import seed_generator
from simulator.settings import Setting

SETTINGS = (
    Setting("feedback", "symmetric", "output-error feedback B onto the apical dendrite",
            str, choices=("symmetric", "random")),
    Setting("jacobian", "exact", "Jacobian that passes credit back one step",
            str, choices=("exact", "learned")),
    Setting("label", "identity", "squashing g of the bootstrapped apical label",
            str, choices=("identity", "tanh")),
    Setting("lr_apical", 0.05,
            "apical learning rate eta_A (docs/model.md section 3: 0.05 for alpha=1 on Add)",
            float, 0.0, 10.0),
    Setting("lr_jacobian", 0.01,
            "J~ learning rate eta_J (docs/model.md section 3: 0.01 for alpha=1 on Add)",
            float, 0.0, 10.0),
    Setting("refresh", 5, "steps between refreshes of the frozen apical copy", int, 1, 100_000),
    Setting("order", "sequential",
            "order of the updates within a step: sequential (the authors': J~ first, then the "
            "apical target and A, then the basal update from the updated A; the apical rule "
            "runs at the first step too) or simultaneous (every update from the state before "
            "the step)", str, choices=("sequential", "simultaneous")),
)


def with_defaults(settings: tuple[Setting, ...], **defaults: object) -> tuple[Setting, ...]:
    """The same settings with some defaults changed (for rule variants such as DNI-b)."""
    from dataclasses import replace

    return tuple(replace(s, default=defaults[s.name]) if s.name in defaults else s
                 for s in settings)


def basal_signal(U: Tensor, gain: Tensor) -> Tensor:
    """Postsynaptic factor of the basal three-factor rule: apical voltage x somatic gain."""
    return U * gain


def apical_target(q_prev: Tensor, back: Tensor) -> Tensor:
    """One-step bootstrapped credit for U(t-1): B e(t-1) + J^T g(U_frozen(t))."""
    return q_prev + back


class DNI(StatefulRule):
    name = "dni"
    per_slot_alpha = True  # the leak through Network's helpers only
    summary = "synthetic gradients in the apical compartment (exact J, symmetric feedback)"
    settings = SETTINGS
    diagnostic_names = ("apical_loss", "jacobian_loss")
    compilable = True
    fixed_args = ("feedback", "jacobian", "label")  # cannot change mid-run
    state_keys = ("A", "A_frozen", "J", "B", "a_prev", "q_prev")
    live_settings: ClassVar[dict[str, str]] = {"lr_apical": "apical", "lr_jacobian": "jacobian"}

    def __init__(self, net: Network, n_out: int, args: dict, seeds: list[int]) -> None:
        super().__init__(net, n_out, args, seeds)
        n = net.n
        m_out = n + n_out + 1
        As = [torch.randn(n, m_out, generator=seed_generator("apical", s), dtype=torch.float64)
              / m_out**0.5 for s in seeds]  # [A | A_fb | c] ~ N(0, 1/m_out), as the authors' code
        self.A = torch.stack(As).to(net.W)
        self.A_frozen = self.A.clone()
        self.learned = args["jacobian"] == "learned"
        self.J = net.W_rec.clone() if self.learned else None  # J~(0) = W_rec
        random = args["feedback"] == "random"
        self.B: Tensor | None = random_feedback(seeds, n, n_out, net.W) if random else None
        self.tanh_label = args["label"] == "tanh"
        self.a_prev: Tensor | None = None  # a~(t-1) = [r(t-1); y(t-1); 1]
        self.q_prev: Tensor | None = None  # q(t-1) = B e(t-1), B as it was at step t-1

    @classmethod
    def state_numel(cls, n: int, n_in: int, n_out: int, args: Mapping[str, Any]) -> int:
        a = n + n_out + 1  # the apical presynaptic vector [r; y*; 1]
        return (2 * n * a + (n * n if args["jacobian"] == "learned" else 0)  # A, A_frozen, J~
                + (n * n_out if args["feedback"] == "random" else 0) + a + n_out)  # B, a~, e

    @classmethod
    def population_numel(cls, n: int, n_in: int, n_out: int, args: Mapping[str, Any]) -> int:
        return n * (n + n_out + 1) + (n * n if args["jacobian"] == "learned" else 0)

    @classmethod
    def temp_numel(cls, n: int, n_in: int, n_out: int, args: Mapping[str, Any]) -> int:
        return 12 * (n + n_out + 1)  # vectors only: the updates are rank-one

    @classmethod
    def step_flops(cls, n: int, n_in: int, n_out: int, args: Mapping[str, Any]) -> int:
        a, m = n + n_out + 1, n + n_in + 1
        learned = args["jacobian"] == "learned"
        return (6 * n * a + 2 * n * n + 2 * n * n_out  # U, g, U(t-1), J^T g, B e
                + (2 * n * n + 3 * n * n if learned else 0)  # J~ residual, its update
                + 3 * n * m + 3 * n * a + n * a // int(args["refresh"]))  # apply, refresh

    def populations(self) -> dict[str, Tensor]:
        pops = {"apical": self.A}
        if self.J is not None:
            pops["jacobian"] = self.J
        return pops

    def arrays(self) -> dict[str, Tensor]:
        named = self.populations()
        if self.B is not None:
            named["feedback"] = self.B.mT  # (n_out, n), the authors' W_FB
        return named

    def arrays_loaded(self, names: set[str], net: Network) -> None:
        if "apical" in names:  # the frozen copy starts equal to A, as at construction
            self.A_frozen.copy_(self.A)
        if self.J is not None and self.a_prev is None and "W_rec" in names and \
                "jacobian" not in names:  # before the first step, J~ starts at the new W_rec
            self.J.copy_(net.W_rec)

    @classmethod
    def rate_settings(cls, args: Mapping[str, Any]) -> dict[str, str]:
        rates = {"apical": "lr_apical"}
        if args["jacobian"] == "learned":
            rates["jacobian"] = "lr_jacobian"
        return rates

    def feedback(self, e: Tensor, net: Network) -> Tensor:
        """q = B e: the output error as it arrives at the apical dendrites."""
        return feedback_credit(self.B, e, net)

    def step(self, ctx: StepContext) -> RuleOutput:
        net, out = ctx.net, RuleOutput()
        sequential = self.args["order"] == "sequential"
        ones = ctx.r.new_ones(ctx.r.shape[0], 1)
        a = torch.cat([ctx.r, ctx.y, ones], 1)  # a~(t)
        if self.a_prev is None:  # the first step: r(t-1) as it is, the label y(0), q(t-1) = 0
            a_prev = torch.cat([ctx.r_prev, ctx.y, ones], 1)
            q_prev = torch.zeros_like(ctx.r)
        else:
            a_prev, q_prev = self.a_prev, self.q_prev
        U_seen = None if sequential else matvec(self.A, a)  # simultaneous: A before the step
        if self.J is not None:  # (2) J~ delta rule: (J~ r(t-1) - r(t)) r(t-1)^T
            j_residual = matvec(self.J, ctx.r_prev).sub_(ctx.r)
            j_update = Rank1(j_residual, ctx.r_prev)
            if sequential:  # the target below reads the updated J~
                self.apply_now(ctx, out, "jacobian", j_update)
            else:
                out.updates["jacobian"] = j_update
            out.diagnostics["jacobian_loss"] = j_residual.square().mean(1)
        # (3) apical delta rule toward the bootstrapped target q(t-1) + J^T g(A_frozen a~(t))
        g = matvec(self.A_frozen, a)
        if self.tanh_label:
            g = torch.tanh(g)
        back = net.jacobian_t_times(g, ctx.gain) if self.J is None else vecmat(g, self.J)
        residual = matvec(self.A, a_prev) - apical_target(q_prev, back)  # U(t-1) - target
        if sequential:  # the basal signal below reads the updated A
            self.apply_now(ctx, out, "apical", Rank1(residual, a_prev))
        else:
            out.updates["apical"] = Rank1(residual, a_prev)
        out.diagnostics["apical_loss"] = residual.square().mean(1)
        # (4) the apical voltage U(t) and the basal three-factor update
        U = matvec(self.A, a) if U_seen is None else U_seen
        out.updates["basal"] = Rank1(basal_signal(U, ctx.gain), ctx.p)
        out.signal = U
        # q(t) = B e(t) with the readout before this step's readout update
        self.a_prev, self.q_prev = a, self.feedback(ctx.e, net)
        return out

    def after_update(self, t: int) -> None:
        if (t + 1) % self.args["refresh"] == 0:
            self.A_frozen.copy_(self.A)
