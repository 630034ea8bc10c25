"""SnAp-1: the sparse n-step approximation of RTRL at n = 1 (Menick, Elsen, Evci, Osindero,
Simonyan & Graves 2021, "Practical real-time recurrent learning with a sparse approximation").

RTRL's influence M(t)[k, i, j] = dr_k(t)/dW_ij is kept only where W_ij reaches r_k within one
step, which for a dense network is its own post-synaptic unit, k = i. After every RTRL step
the influence is projected back onto that pattern:

    M(t) = mask( J(t) M(t-1) + D(t) ),   J(t) = diag(gain) W_rec + (1 - alpha) I,
    D(t)[k, i, j] = delta_ki gain_i p_j      (gain = alpha tanh'(V), p = [r(t-1); x; 1])

With M(t-1) diagonal the kept entries are m_ij(t) = J_ii(t) m_ij(t-1) + gain_i p_j with
the exact diagonal Jacobian term J_ii = gain_i W_rec,ii + (1 - alpha): unlike RFLO (which
keeps only the leak, 1 - alpha), each unit's self-connection carries credit through time.
Gradient: dL/dW_ij ~ c_i(t) m_ij(t), c = W_out^T e. Memory n m, compute ~ 4 n m per step.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from simulator.network import Network
from simulator.rules.base import Dense, RuleOutput, StepContext
from simulator.rules.family import StatefulRule


class SnAp1(StatefulRule):
    name = "snap-1"
    summary = ("SnAp-1 (Menick et al. 2021): RTRL with each weight's influence kept on its own "
               "unit only, through the exact diagonal Jacobian gain_i W_ii + 1 - alpha")
    state_keys = ("M",)

    def __init__(self, net: Network, n_out: int, args: dict, seeds: list[int]) -> None:
        super().__init__(net, n_out, args, seeds)
        self.M = net.W.new_zeros(net.W.shape)  # M[s, i, j] = d r_i / d W_ij (kept part)

    @classmethod
    def state_numel(cls, n: int, n_in: int, n_out: int, args: Mapping[str, Any]) -> int:
        return n * (n + n_in + 1)

    @classmethod
    def step_flops(cls, n: int, n_in: int, n_out: int, args: Mapping[str, Any]) -> int:
        return 4 * n * (n + n_in + 1) + 3 * n

    def diagonal_jacobian(self, ctx: StepContext) -> Any:
        """J_ii(t) = gain_i W_rec,ii + (1 - alpha), (S, n)."""
        diag = ctx.net.W_rec.diagonal(dim1=1, dim2=2) * ctx.gain
        return diag if ctx.net.alpha == 1.0 else diag.add_(1.0 - ctx.net.alpha)

    def step(self, ctx: StepContext) -> RuleOutput:
        M = self.M.mul_(self.diagonal_jacobian(ctx).unsqueeze(2))
        M.addcmul_(ctx.gain.unsqueeze(2), ctx.p.unsqueeze(1))
        credit = ctx.credit
        return RuleOutput(updates={"basal": Dense(M * credit.unsqueeze(2))}, signal=credit)
