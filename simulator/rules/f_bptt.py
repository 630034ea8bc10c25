"""F-BPTT: future-facing truncated backprop through time (Marschall, Cho & Savin 2020,
section 4.1.2; the authors' ``Future_BPTT``).

Each step's immediate credit q(t) = W_out^T e(t) is pushed into a list of credits and
propagated back through the last T - 1 steps, adding to each stored credit:

    c(t) = q(t);   c(s-1) += q(t) J(t) J(t-1) ... J(s)     for t - T + 1 < s <= t
    J(s) = diag(gain(s)) W_rec + (1 - alpha) I             (gain = alpha tanh'(V))

Once T credits are stored, the oldest, c(t - T + 1) = sum over the T losses
L(t - T + 1) .. L(t) of dL/dr(t - T + 1) (the credit of step t - T + 1 computed from the
losses that followed it, its own included), makes the update applied at step t:

    dL/dW_ij ~ c_i(t - T + 1) gain_i(t - T + 1) p_j(t - T + 1),     p = [r(t-1); x; 1]

The first T - 1 steps give no update (zero). The backward products use the current W_rec
(as the authors' code does). Memory T (2 n + m), compute ~ 2 n^2 T per step and seed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from simulator.network import Network, vecmat
from simulator.rules.base import Rank1, Rule, RuleOutput, StepContext
from simulator.settings import Setting

WINDOW = Setting("T", 10, "truncation horizon in steps", int, 1, 10_000)


class FutureBPTT(Rule):
    name = "f-bptt"
    summary = ("future-facing truncated BPTT: the update at step t is the credit of step "
               "t - T + 1 from the T losses since (zero for the first T - 1 steps)")
    settings = (WINDOW,)

    def __init__(self, net: Network, n_out: int, args: dict, seeds: list[int]) -> None:
        super().__init__(net, n_out, args, seeds)
        T, S, n, m = args["T"], net.seeds, net.n, net.W.shape[2]
        self.C = net.W.new_zeros(T, S, n)  # ring buffers: credit, gain and p of each step
        self.G = net.W.new_zeros(T, S, n)
        self.P = net.W.new_zeros(T, S, m)
        self.filled = 0
        self.head = 0

    @classmethod
    def state_numel(cls, n: int, n_in: int, n_out: int, args: Mapping[str, Any]) -> int:
        return int(args["T"]) * (2 * n + n + n_in + 1)

    @classmethod
    def step_flops(cls, n: int, n_in: int, n_out: int, args: Mapping[str, Any]) -> int:
        m = n + n_in + 1
        return (int(args["T"]) - 1) * (2 * n * n + 3 * n) + 2 * n * m

    def step(self, ctx: StepContext) -> RuleOutput:
        T = self.C.shape[0]
        self.head = (self.head + 1) % T
        head = self.head
        credit = ctx.credit
        self.C[head] = credit
        self.G[head] = ctx.gain
        self.P[head] = ctx.p
        self.filled = min(self.filled + 1, T)
        W_rec, leak = ctx.net.W_rec, 1.0 - ctx.net.alpha
        q, later = credit, head
        for j in range(1, self.filled):  # back through J(t), J(t-1), ...
            slot = (head - j) % T
            back = vecmat(q * self.G[later], W_rec)
            q = back if leak == 0.0 else back.add_(q, alpha=leak)
            self.C[slot] += q
            later = slot
        if self.filled < T:
            return RuleOutput(updates={"basal": Rank1(torch.zeros_like(credit), ctx.p)},
                              signal=torch.zeros_like(credit))
        oldest = (head + 1) % T  # the slot the next step overwrites
        c = self.C[oldest].clone()
        return RuleOutput(updates={"basal": Rank1(c * self.G[oldest], self.P[oldest].clone())},
                          signal=c)

    def state_dict(self) -> dict[str, Any]:
        return {"C": self.C.clone(), "G": self.G.clone(), "P": self.P.clone(),
                "filled": self.filled, "head": self.head}
