"""UORO: unbiased online recurrent optimization (Tallec & Ollivier 2017).

Keeps a rank-one estimate of the RTRL influence tensor M(t) = dr(t)/dW,

    M~(t)[k, i, j] = s~_k(t) theta~_ij(t)        s~ (n,) over units, theta~ (n, m) over weights

and updates it with fresh random signs nu (n,), E[nu] = 0, E[nu nu^T] = I:

    s~(t)     = rho_0 J(t) s~(t-1) + rho_1 nu
    theta~(t) = theta~(t-1) / rho_0 + (nu^T D(t)) / rho_1,    (nu^T D)_ij = nu_i gain_i p_j

with J(t) = diag(gain) W_rec + (1 - alpha) I the one-step Jacobian, D(t) the immediate
influence (D[k, i, j] = delta_ki gain_i p_j, gain = alpha tanh'(V), p = [r(t-1); x; 1])
and the variance-reducing rescalings

    rho_0 = sqrt(||theta~|| / ||J s~||),   rho_1 = sqrt(||nu^T D|| / ||nu||).

Given the past, E[M~(t)] = J(t) M~(t-1) + D(t): the RTRL recursion, so M~ is unbiased.
Gradient estimate: dL(t)/dW ~ (c(t) . s~(t)) theta~(t), c = W_out^T e. Memory n m, compute
n^2 + n m per step and seed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from simulator.network import Network
from simulator.rules.base import Dense, RuleOutput, StepContext
from simulator.rules.family import (
    SIGNS,
    START,
    NoiseStream,
    StatefulRule,
    balance,
    jacobian_times,
    noise_numel,
    norm,
    start_factors,
)


class UORO(StatefulRule):
    name = "uoro"
    per_slot_alpha = True  # the leak through Network's helpers only
    summary = "unbiased online recurrent optimization: rank-one influence with random signs"
    settings = (SIGNS, START)
    diagnostic_names = ("influence_norm",)
    fixed_args = ("signs", "start")
    state_keys = ("s_tilde", "theta_tilde")
    loadable = state_keys  # the starting factors (Run.load_arrays)

    def __init__(self, net: Network, n_out: int, args: dict, seeds: list[int]) -> None:
        super().__init__(net, n_out, args, seeds)
        n, m = net.n, net.W.shape[2]
        self.s_tilde, self.theta_tilde = start_factors(args["start"], "uoro", seeds,
                        [(n,), (n, m)], net.W)
        self.nu = NoiseStream("uoro", seeds, n, args["signs"], net.W)

    @classmethod
    def state_numel(cls, n: int, n_in: int, n_out: int, args: Mapping[str, Any]) -> int:
        return n + n * (n + n_in + 1) + noise_numel(n)  # s~, theta~, the signs

    @classmethod
    def temp_numel(cls, n: int, n_in: int, n_out: int, args: Mapping[str, Any]) -> int:
        return n * (n + n_in + 1) + 4 * n  # the dense gradient

    @classmethod
    def step_flops(cls, n: int, n_in: int, n_out: int, args: Mapping[str, Any]) -> int:
        m = n + n_in + 1
        return 2 * n * n + 9 * n * m  # J s~, theta~ rescale and rank-one add, norm, grad, apply

    def influence(self) -> Tensor:
        """The dense estimate M~[s, k, i, j] = s~_k theta~_ij (for tests and plots)."""
        return self.s_tilde[:, :, None, None] * self.theta_tilde[:, None]

    def step(self, ctx: StepContext) -> RuleOutput:
        nu = self.nu.next()
        Js = jacobian_times(ctx.net, ctx.gain, self.s_tilde)
        nu_gain = nu * ctx.gain  # nu^T D = (nu * gain) p^T
        # both rescalings in one balance call (one op per step instead of two): columns
        # rho0 = sqrt(|theta~| / |J s~|) and rho1 = sqrt(|nu^T D| / |nu|), |nu^T D| =
        # |nu gain| |p|; vectors' norms straight along dim 1
        vectors = torch.stack([Js, nu_gain, nu], 1)  # (S, 3, n)
        vnorm = torch.linalg.vector_norm(vectors, dim=2)
        numerators = torch.stack([norm(self.theta_tilde),
                                  vnorm[:, 1] * torch.linalg.vector_norm(ctx.p, dim=1)], 1)
        rho = balance(numerators, vnorm[:, 0::2])  # (S, 2): rho0, rho1
        rho0, rho1 = rho[:, 0:1], rho[:, 1:2]
        self.s_tilde = Js.mul_(rho0).add_(nu * rho1)
        theta = self.theta_tilde.div_(rho0.unsqueeze(2))
        theta.addcmul_((nu_gain / rho1).unsqueeze(2), ctx.p.unsqueeze(1))
        credit = ctx.credit
        scale = (credit * self.s_tilde).sum(1)
        grad = theta * scale[:, None, None]
        return RuleOutput(updates={"basal": Dense(grad)}, signal=credit,
                          diagnostics={"influence_norm": torch.linalg.vector_norm(
                              self.s_tilde, dim=1) * norm(theta)})
