"""R-KF-RTRL: reverse Kronecker-factored RTRL (Marschall, Cho & Savin, JMLR 2020).

KF-RTRL factors the influence tensor M(t) = dr(t)/dW over the presynaptic index j; the
reverse factorisation splits off the postsynaptic index i instead:

    M~(t)[k, i, j] = A_i(t) B_kj(t)        A (n,) over postsynaptic units, B (n, m)

The immediate influence D[k, i, j] = delta_ki gain_i p_j is projected onto random signs
nu (n,) over the postsynaptic index, (nu . D)[k, j] = nu_k gain_k p_j, and

    A(t) = p_0 A(t-1) + p_1 nu
    B(t) = J(t) B(t-1) / p_0 + (nu . D(t)) / p_1
    p_0 = sqrt(||J B|| / ||A||),   p_1 = sqrt(||nu . D|| / ||nu||)

with J(t) = diag(gain) W_rec + (1 - alpha) I, gain = alpha tanh'(V), p = [r(t-1); x; 1].
Because E[nu_i nu_k] = delta_ik, E[M~(t)] = J M~(t-1) + D(t): unbiased, like UORO, but
the n x m factor B is carried through the Jacobian (n^3 per step) rather than the n-vector.
Gradient estimate: dL(t)/dW_ij ~ A_i (c^T B)_j with c = W_out^T e, a rank-one update.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from simulator.network import Network, vecmat
from simulator.rules.base import Rank1, RuleOutput, StepContext
from simulator.rules.family import (
    SIGNS,
    START,
    NoiseStream,
    StatefulRule,
    balance,
    jacobian_matmul,
    noise_numel,
    norm,
    start_factors,
)


class RKFRTRL(StatefulRule):
    name = "r-kf-rtrl"
    summary = "reverse Kronecker-factored RTRL: influence as A (x) B over (post, unit x pre)"
    settings = (SIGNS, START)
    diagnostic_names = ("influence_norm",)
    fixed_args = ("signs", "start")
    state_keys = ("A", "B")
    loadable = state_keys  # the starting factors (Run.load_arrays)

    def __init__(self, net: Network, n_out: int, args: dict, seeds: list[int]) -> None:
        super().__init__(net, n_out, args, seeds)
        n, m = net.n, net.W.shape[2]
        self.A, self.B = start_factors(args["start"], "r-kf-rtrl", seeds,
                        [(n,), (n, m)], net.W)
        self.nu = NoiseStream("r-kf-rtrl", seeds, n, args["signs"], net.W)

    @classmethod
    def state_numel(cls, n: int, n_in: int, n_out: int, args: Mapping[str, Any]) -> int:
        return n + n * (n + n_in + 1) + noise_numel(n)  # A, B, the signs

    @classmethod
    def temp_numel(cls, n: int, n_in: int, n_out: int, args: Mapping[str, Any]) -> int:
        return n * (n + n_in + 1) + 4 * n + (n + n_in + 1)  # J B (the new B), c^T B

    @classmethod
    def step_flops(cls, n: int, n_in: int, n_out: int, args: Mapping[str, Any]) -> int:
        m = n + n_in + 1
        return 2 * n * n * m + 10 * n * m  # J B, norms, rescale, rank-one add, c^T B, apply

    def influence(self) -> Tensor:
        """The dense estimate M~[s, k, i, j] = A_i B_kj (for tests and plots)."""
        return self.A[:, None, :, None] * self.B.unsqueeze(2)

    def step(self, ctx: StepContext) -> RuleOutput:
        nu = self.nu.next()
        JB = jacobian_matmul(ctx.net, ctx.gain, self.B)
        nu_gain = nu * ctx.gain  # nu . D = (nu * gain) p^T
        p0 = balance(norm(JB), norm(self.A))
        p1 = balance(norm(nu_gain) * norm(ctx.p), norm(nu))
        self.A = self.A.mul(p0[:, None]).add_(nu * p1[:, None])
        B = JB.div_(p0[:, None, None])
        B.addcmul_((nu_gain / p1[:, None]).unsqueeze(2), ctx.p.unsqueeze(1))
        self.B = B
        credit = ctx.credit
        return RuleOutput(updates={"basal": Rank1(self.A, vecmat(credit, B))}, signal=credit,
                          diagnostics={"influence_norm": norm(self.A) * norm(B)})
