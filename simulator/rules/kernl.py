"""KeRNL: kernel RNN learning (Roth, Kanitscheider & Fiete 2019), in the form of the JMLR
2020 review (Marschall, Cho & Savin) and its code (omarschall/vanilla-rtrl).

The influence tensor is approximated by a learned sensitivity matrix beta (n, n) and
learned per-unit decay rates gamma (n,), with kernels kappa = max(0, 1 - gamma):

    dr_k(t) / dr_i(t')  ~  beta_ki kappa_i^(t - t')        so   M~[k, i, j] = beta_ki e_ij(t)

with a local eligibility trace filtered by each unit's own kernel,

    e_ij(t) = kappa_i e_ij(t-1) + gain_i(t) p_j(t)        gain = alpha tanh'(V), p = [r(t-1); x; 1]
    dL/dW_ij ~ (beta^T q)_i e_ij(t),   q = B e(t)  (B = W_out^T, or fixed random N(0, 1/n_out))

beta and gamma are learned online by predicting the effect of perturbations. A perturbed
copy of the network, driven by the same input and weights, receives noise sigma zeta,
zeta ~ N(0, I). As in the authors' code (perturb=before), the noise drawn at step t - 1 is
added to the copy's state before step t (the first noise is drawn before the first step):

    r~(t)    = (1 - alpha) s + alpha tanh(W [s; x(t); 1]),   s = r~(t-1) + sigma zeta(t-1)
    Gamma(t) = kappa * Gamma(t-1) - Omega(t-1)                dOmega/dgamma
    Omega(t) = kappa * Omega(t-1) + zeta(t)                   filtered noise (units of sigma)
    eps(t)   = beta Omega(t) - (r~(t) - r(t)) / sigma          prediction error of the effect
    loss = 1/2 ||eps||^2:   dbeta = eps Omega^T,   dgamma = (beta^T eps) * Gamma

Then Omega(t) holds a draw whose effect r~(t) does not show yet, so even where an exact
model exists (W_rec = 0: beta = I, gamma = alpha) it is not a zero-loss fixed point and the
fit is biased. perturb=after adds sigma zeta(t) after the step instead, and the exact model
is then a zero-loss fixed point (tests/test_rules_family.py learns it).

Measuring in units of sigma keeps the learning rate of (beta, gamma) independent of the
perturbation size: the authors' rate eta on raw quantities is eta sigma^2 here (their 5 at
sigma = 1e-3 is 5e-6). Start: beta = I, gamma = gamma0 (0.8, the authors'; gamma0 = alpha
makes KeRNL begin as RFLO). With order=sequential (the authors') the basal update reads
beta after this step's kernel update; simultaneous reads it from before the step.
(beta | gamma) are the rule's own population, stored as one (S, n, n + 1) matrix under the
name "jacobian": the rule's learned model of how credit travels through time, gated by the
phase schedule like DNI-b's J~.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from simulator.network import Network, matvec, vecmat
from simulator.rules.base import Dense, RuleOutput, StepContext
from simulator.rules.family import (
    FEEDBACK,
    NoiseStream,
    StatefulRule,
    feedback_credit,
    noise_numel,
    random_feedback,
)
from simulator.settings import Setting


class KeRNL(StatefulRule):
    name = "kernl"
    summary = "kernel RNN learning: eligibility traces with learned sensitivities and timescales"
    settings = (
        FEEDBACK,
        Setting("sigma", 1e-3, "perturbation size sigma (std of the noise on the perturbed copy)",
                float, 1e-8, 1.0),
        Setting("lr_kernel", 5e-6, "learning rate of the sensitivities beta and decay rates "
                "gamma, on quantities in units of sigma (the authors' 5 on raw quantities at "
                "sigma = 1e-3)", float, 0.0, 10.0),
        Setting("gamma0", 0.8, "starting decay rate gamma of every unit's kernel (kernel "
                "1 - gamma; 0.8, the authors'; set it to alpha to start as RFLO)", float, 0.0, 1.0),
        Setting("order", "sequential", "sequential (the authors': the basal update reads beta "
                "after this step's kernel update) or simultaneous (from before the step)",
                str, choices=("sequential", "simultaneous")),
        Setting("perturb", "before", "when the perturbed copy gets each noise draw: before (the "
                "authors': step t-1's draw is added to its state before step t, while Omega(t) "
                "already holds step t's) or after (added after the step, the draw Omega(t) "
                "holds: the exact model where one exists)", str, choices=("before", "after")),
    )
    own_populations: ClassVar[dict[str, str]] = {"jacobian": "lr_kernel"}
    diagnostic_names = ("perturbation_loss", "kernel_decay")
    fixed_args = ("feedback", "sigma", "gamma0", "perturb")
    state_keys = ("K", "e", "Omega", "Gamma", "r_pert", "zeta", "B")

    def __init__(self, net: Network, n_out: int, args: dict, seeds: list[int]) -> None:
        super().__init__(net, n_out, args, seeds)
        S, n, m = net.seeds, net.n, net.W.shape[2]
        eye = torch.eye(n, dtype=net.W.dtype, device=net.W.device).expand(S, n, n)
        self.K = torch.cat([eye, net.W.new_full((S, n, 1), args["gamma0"])], 2)  # [beta | gamma]
        self.e = net.W.new_zeros(S, n, m)
        self.Omega = net.W.new_zeros(S, n)
        self.Gamma = net.W.new_zeros(S, n)
        self.r_pert: Tensor | None = None  # the perturbed copy's state, set at the first step
        self.zeta: Tensor | None = None  # the noise to add before the next step
        self.noise = NoiseStream("kernl", seeds, n, "gaussian", net.W)
        random = args["feedback"] == "random"
        self.B: Tensor | None = random_feedback(seeds, n, n_out, net.W) if random else None

    @classmethod
    def state_numel(cls, n: int, n_in: int, n_out: int, args: Mapping[str, Any]) -> int:
        random = args.get("feedback") == "random"  # K = [beta | gamma], e, Omega, Gamma, r~, zeta
        return (n * (n + 1) + n * (n + n_in + 1) + 4 * n + (n * n_out if random else 0)
                + noise_numel(n))

    @classmethod
    def population_numel(cls, n: int, n_in: int, n_out: int, args: Mapping[str, Any]) -> int:
        return n * (n + 1)

    @classmethod
    def temp_numel(cls, n: int, n_in: int, n_out: int, args: Mapping[str, Any]) -> int:
        m = n + n_in + 1
        return n * m + 2 * n * (n + 1) + 2 * m  # e * credit, d_beta and [d_beta | d_gamma], p~

    @classmethod
    def step_flops(cls, n: int, n_in: int, n_out: int, args: Mapping[str, Any]) -> int:
        m = n + n_in + 1
        # perturbed copy, beta Omega, d_beta, beta^T eps, trace, credit, update, apply both
        return 2 * n * m + 7 * n * n + 3 * n * m + 2 * n * n_out + 3 * n * m + 2 * n * (n + 1)

    @property
    def beta(self) -> Tensor:
        return self.K[:, :, :-1]

    @property
    def gamma(self) -> Tensor:
        return self.K[:, :, -1]

    def populations(self) -> dict[str, Tensor]:
        return {"jacobian": self.K}

    def arrays(self) -> dict[str, Tensor]:
        named = self.populations()
        if self.B is not None:
            named["feedback"] = self.B.mT  # (n_out, n)
        return named

    def perturbed_step(self, ctx: StepContext, zeta: Tensor | None) -> Tensor:
        """r~(t) = (1 - alpha) s + alpha tanh(W [s; x; 1]) with s = r~(t-1) + sigma zeta."""
        net = ctx.net
        r_prev = ctx.r_prev if self.r_pert is None else self.r_pert
        s = r_prev if zeta is None else r_prev + self.args["sigma"] * zeta
        p = torch.cat([s, ctx.x, ctx.x.new_ones(ctx.x.shape[0], 1)], 1)
        h = torch.tanh(matvec(net.W, p))
        return h if net.alpha == 1.0 else torch.lerp(s, h, net.alpha)

    def step(self, ctx: StepContext) -> RuleOutput:
        beta, kappa = self.beta, (1.0 - self.gamma).clamp_(min=0.0)
        # learning beta, gamma: predict the perturbed copy's deviation from filtered noise
        if self.args["perturb"] == "before":
            if self.zeta is None:  # the noise added before the first step
                self.zeta = self.noise.next()
            self.r_pert = self.perturbed_step(ctx, self.zeta)
            zeta = self.noise.next()
        else:
            zeta = self.noise.next()
            self.r_pert = self.perturbed_step(ctx, None).add_(zeta, alpha=self.args["sigma"])
        self.Gamma = self.Gamma.mul_(kappa).sub_(self.Omega)
        self.Omega = self.Omega.mul_(kappa).add_(zeta)
        eps = matvec(beta, self.Omega).sub_((self.r_pert - ctx.r).div_(self.args["sigma"]))
        d_beta = eps.unsqueeze(2) * self.Omega.unsqueeze(1)
        d_gamma = vecmat(eps, beta).mul_(self.Gamma)
        self.zeta = zeta
        out = RuleOutput(diagnostics={"perturbation_loss": eps.square().mean(1),
                                      "kernel_decay": kappa.mean(1)})
        kernel_update = Dense(torch.cat([d_beta, d_gamma.unsqueeze(2)], 2))
        if self.args["order"] == "sequential":  # beta below is the updated one
            self.apply_now(ctx, out, "jacobian", kernel_update)
        else:
            out.updates["jacobian"] = kernel_update
        # the eligibility trace with each unit's learned kernel, and the basal update
        self.e = self.e.mul_(kappa.unsqueeze(2)).addcmul_(ctx.gain.unsqueeze(2), ctx.p.unsqueeze(1))
        credit = vecmat(feedback_credit(self.B, ctx.e, ctx.net), self.beta)
        out.updates["basal"] = Dense(self.e * credit.unsqueeze(2))
        out.signal = credit
        return out
