"""KeRNL: kernel RNN learning (Roth, Kanitscheider & Fiete 2019), in the form of the JMLR
2020 review (Marschall, Cho & Savin).

The influence tensor is approximated by a learned sensitivity matrix beta (n, n) and
learned per-unit decay rates gamma (n,),

    dr_k(t) / dr_i(t')  ~  beta_ki (1 - gamma_i)^(t - t')        so   M~[k, i, j] = beta_ki e_ij(t)

with a local eligibility trace filtered by each unit's own kernel,

    e_ij(t) = (1 - gamma_i) e_ij(t-1) + gain_i(t) p_j(t)        gain = alpha tanh'(V), p = [r(t-1); x; 1]
    dL/dW_ij ~ (beta^T q)_i e_ij(t),   q = B e(t)  (B = W_out^T, or fixed random N(0, 1/n_out))

beta and gamma are learned online by predicting the effect of perturbations. A perturbed
copy of the network, driven by the same input and weights, receives noise xi = sigma zeta,
zeta ~ N(0, I), every step:

    r~(t)   = (1 - alpha) r~(t-1) + alpha tanh(W [r~(t-1); x(t); 1]) + sigma zeta(t)
    Omega(t) = (1 - gamma) * Omega(t-1) + zeta(t)              filtered noise (units of sigma)
    Gamma(t) = (1 - gamma) * Gamma(t-1) - Omega(t-1)           dOmega/dgamma
    eps(t)   = beta Omega(t) - (r~(t) - r(t)) / sigma           prediction error of the effect
    loss = 1/2 ||eps||^2:   dbeta = eps Omega^T,   dgamma = (beta^T eps) * Gamma

Measuring in units of sigma keeps the learning rate of (beta, gamma) independent of the
perturbation size (least squares is stable for lr_kernel < 2 / ||Omega||^2 ~ 2 / n). gamma
is kept in [0, 1]. Start: beta = I, gamma = alpha, so KeRNL begins as RFLO (the same trace
and update) and learns away from it. (beta | gamma) are the rule's own population, stored
as one (S, n, n + 1) matrix under the name "jacobian": it is the rule's learned model of
how credit travels through time, and the phase schedule gates it like DNI-b's J~.
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
        Setting("lr_kernel", 1e-3, "learning rate of the sensitivities beta and decay rates gamma",
                float, 0.0, 10.0),
    )
    own_populations: ClassVar[dict[str, str]] = {"jacobian": "lr_kernel"}
    diagnostic_names = ("perturbation_loss", "kernel_decay")
    fixed_args = ("feedback", "sigma")
    state_keys = ("K", "e", "Omega", "Gamma", "r_pert", "zeta", "B")

    def __init__(self, net: Network, n_out: int, args: dict, seeds: list[int]) -> None:
        super().__init__(net, n_out, args, seeds)
        S, n, m = net.seeds, net.n, net.W.shape[2]
        eye = torch.eye(n, dtype=net.W.dtype, device=net.W.device).expand(S, n, n)
        self.K = torch.cat([eye, net.W.new_full((S, n, 1), net.alpha)], 2)  # [beta | gamma]
        self.e = net.W.new_zeros(S, n, m)
        self.Omega = net.W.new_zeros(S, n)
        self.Gamma = net.W.new_zeros(S, n)
        self.r_pert: Tensor | None = None  # the perturbed copy's state, set at the first step
        self.zeta: Tensor | None = None  # the last noise draw
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

    def perturbed_step(self, ctx: StepContext, zeta: Tensor) -> Tensor:
        """r~(t) = (1 - alpha) r~(t-1) + alpha tanh(W [r~(t-1); x; 1]) + sigma zeta."""
        net = ctx.net
        r_prev = ctx.r_prev if self.r_pert is None else self.r_pert
        p = torch.cat([r_prev, ctx.x, ctx.x.new_ones(ctx.x.shape[0], 1)], 1)
        h = torch.tanh(matvec(net.W, p))
        r = h if net.alpha == 1.0 else torch.lerp(r_prev, h, net.alpha)
        return r.add_(zeta, alpha=self.args["sigma"])

    def step(self, ctx: StepContext) -> RuleOutput:
        beta, kappa = self.beta, 1.0 - self.gamma
        # learning beta, gamma: predict the perturbed copy's deviation from filtered noise
        zeta = self.noise.next()
        self.r_pert = self.perturbed_step(ctx, zeta)
        self.Gamma = self.Gamma.mul_(kappa).sub_(self.Omega)
        self.Omega = self.Omega.mul_(kappa).add_(zeta)
        eps = matvec(beta, self.Omega).sub_((self.r_pert - ctx.r).div_(self.args["sigma"]))
        d_beta = eps.unsqueeze(2) * self.Omega.unsqueeze(1)
        d_gamma = vecmat(eps, beta).mul_(self.Gamma)
        self.zeta = zeta
        # the eligibility trace with each unit's learned kernel, and the basal update
        self.e = self.e.mul_(kappa.unsqueeze(2)).addcmul_(ctx.gain.unsqueeze(2), ctx.p.unsqueeze(1))
        credit = vecmat(feedback_credit(self.B, ctx.e, ctx.net), beta)
        return RuleOutput(
            updates={"basal": Dense(self.e * credit.unsqueeze(2)),
                     "jacobian": Dense(torch.cat([d_beta, d_gamma.unsqueeze(2)], 2))},
            signal=credit,
            diagnostics={"perturbation_loss": eps.square().mean(1), "kernel_decay": kappa.mean(1)},
        )

    def after_update(self, t: int) -> None:
        self.K[:, :, -1].clamp_(0.0, 1.0)  # decay factors 1 - gamma stay in [0, 1]
