"""RTRL: real-time recurrent learning (Williams & Zipser 1989), exact and online.

Keeps the influence tensor M(t) = dr(t)/dW for the basal block W = [W_rec | W_in | b]:

    M(t) = J(t) M(t-1) + D(t),   J(t) = diag(gain) W_rec + (1 - alpha) I,
    D(t)[k, i, j] = delta_ki gain_i p_j     (gain = alpha tanh'(V), p = [r(t-1); x(t); 1])

and the gradient of the current loss dL(t)/dW = c(t)^T M(t), with c(t) = W_out^T e(t).
Memory n^2 (n + n_in + 1), compute n^3 (n + n_in + 1) per step and seed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from simulator.network import Network
from simulator.rules.base import Dense, Rule, RuleOutput, StepContext


class RTRL(Rule):
    name = "rtrl"
    per_slot_alpha = True  # the leak through Network's helpers only
    summary = "real-time recurrent learning: the exact online gradient (n^4 per step)"

    def __init__(self, net: Network, n_out: int, args: dict, seeds: list[int]) -> None:
        super().__init__(net, n_out, args, seeds)
        S, n, m = net.seeds, net.n, net.W.shape[2]
        self.M = net.W.new_zeros(S, n, n, m)  # M[s, k, i, j] = d r_k / d W_ij

    @classmethod
    def state_numel(cls, n: int, n_in: int, n_out: int, args: Mapping[str, Any]) -> int:
        return n * n * (n + n_in + 1)  # M

    @classmethod
    def temp_numel(cls, n: int, n_in: int, n_out: int, args: Mapping[str, Any]) -> int:
        m = n + n_in + 1
        return n * n * m + n * m  # the new M beside the old one, the dense gradient

    @classmethod
    def step_flops(cls, n: int, n_in: int, n_out: int, args: Mapping[str, Any]) -> int:
        m = n + n_in + 1
        return 2 * n**3 * m + 4 * n * n * m + 2 * n * m  # W_rec M, gain/leak, c^T M, apply

    def step(self, ctx: StepContext) -> RuleOutput:
        net, M = ctx.net, self.M
        S, n, _, m = M.shape
        flat = M.view(S, n, n * m)
        # diag(gain) W_rec M as (diag(gain) W_rec) M: the gain scales the small (n, n) matrix
        # instead of the product (S, n, n m), one pass over the influence tensor fewer
        new = torch.bmm(net.W_rec * ctx.gain.unsqueeze(2), flat)
        net.add_leak_(new, flat)
        new = new.view(S, n, n, m)
        new.diagonal(dim1=1, dim2=2).add_(ctx.gain.unsqueeze(1) * ctx.p.unsqueeze(2))
        self.M = new
        credit = ctx.credit
        grad = torch.bmm(credit.unsqueeze(1), new.view(S, n, n * m)).view(S, n, m)
        return RuleOutput(updates={"basal": Dense(grad)}, signal=credit)
