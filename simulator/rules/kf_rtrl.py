"""KF-RTRL: Kronecker-factored RTRL (Mujika, Meier & Steger 2018).

The immediate influence of the basal weights is a Kronecker product,
D(t)[k, i, j] = delta_ki gain_i p_j = (p^T (x) diag(gain))[k, i, j]. KF-RTRL keeps the
influence tensor M(t) = dr(t)/dW in that form,

    M~(t)[k, i, j] = u_j(t) A_ki(t)        u (m,) over presynaptic inputs, A (n, n) over units

and folds the two terms of the RTRL recursion M = H M + D back into one product with two
random signs c_1, c_2 (zero mean, unit variance, independent):

    u(t) = c_1 p_1 u(t-1) + c_2 p_2 p(t)
    A(t) = c_1 H(t) A(t-1) / p_1 + c_2 diag(gain) / p_2
    p_1 = sqrt(||H A|| / ||u||),   p_2 = sqrt(||diag(gain)|| / ||p||)

with H(t) = J(t) = diag(gain) W_rec + (1 - alpha) I, gain = alpha tanh'(V), p = [r(t-1); x; 1].
E[c_1 c_2] = 0 makes E[M~(t)] = H M~(t-1) + D(t): unbiased. Gradient estimate:
dL(t)/dW_ij ~ (c^T A)_i u_j with c = W_out^T e, a rank-one update. Memory n^2 + m,
compute n^3 per step and seed.
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


class KFRTRL(StatefulRule):
    name = "kf-rtrl"
    per_slot_alpha = True  # the leak through Network's helpers only
    summary = "Kronecker-factored RTRL: influence as u (x) A with two random signs (n^3)"
    settings = (SIGNS, START)
    diagnostic_names = ("influence_norm",)
    fixed_args = ("signs", "start")
    state_keys = ("u", "A")
    loadable = state_keys  # the starting factors (Run.load_arrays)

    def __init__(self, net: Network, n_out: int, args: dict, seeds: list[int]) -> None:
        super().__init__(net, n_out, args, seeds)
        n, m = net.n, net.W.shape[2]
        self.u, self.A = start_factors(args["start"], "kf-rtrl", seeds,
                        [(m,), (n, n)], net.W)
        self.c = NoiseStream("kf-rtrl", seeds, 2, args["signs"], net.W)

    @classmethod
    def state_numel(cls, n: int, n_in: int, n_out: int, args: Mapping[str, Any]) -> int:
        return (n + n_in + 1) + n * n + noise_numel(2)  # u, A, the signs

    @classmethod
    def temp_numel(cls, n: int, n_in: int, n_out: int, args: Mapping[str, Any]) -> int:
        return n * n + 3 * n + (n + n_in + 1)  # H A (becomes the new A), c^T A, u

    @classmethod
    def step_flops(cls, n: int, n_in: int, n_out: int, args: Mapping[str, Any]) -> int:
        m = n + n_in + 1
        return 2 * n**3 + 8 * n * n + 4 * m + 3 * n * m  # H A, norms and scales, c^T A, apply

    def influence(self) -> Tensor:
        """The dense estimate M~[s, k, i, j] = A_ki u_j (for tests and plots)."""
        return self.A.unsqueeze(3) * self.u[:, None, None, :]

    def step(self, ctx: StepContext) -> RuleOutput:
        c = self.c.next()
        c1, c2 = c[:, 0:1], c[:, 1:2]
        HA = jacobian_matmul(ctx.net, ctx.gain, self.A)
        p1 = balance(norm(HA), norm(self.u))[:, None]
        p2 = balance(norm(ctx.gain), norm(ctx.p))[:, None]
        self.u = self.u.mul(c1 * p1).add_(ctx.p * (c2 * p2))
        A = HA.mul_((c1 / p1).unsqueeze(2))
        A.diagonal(dim1=1, dim2=2).add_(ctx.gain * (c2 / p2))
        self.A = A
        credit = ctx.credit
        return RuleOutput(updates={"basal": Rank1(vecmat(credit, A), self.u)}, signal=credit,
                          diagnostics={"influence_norm": norm(self.u) * norm(A)})
