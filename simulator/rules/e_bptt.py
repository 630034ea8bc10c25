"""E-BPTT: truncated backprop through time over non-overlapping windows of T steps
(Marschall, Cho & Savin 2020; the authors' ``Efficient_BPTT``).

The rule stores the immediate credits q(s) = W_out^T e(s), gains and presynaptic vectors
p(s) = [r(s-1); x(s); 1] of a window; at the window's last step t it backpropagates the
window's summed loss L(t - T + 1) + ... + L(t) to every step of the window,

    c(t) = q(t);   c(s-1) = q(s-1) + c(s) J(s),   J(s) = diag(gain(s)) W_rec + (1 - alpha) I
    dL/dW = sum_{s in window} (c(s) * gain(s)) p(s)^T

and makes that one update; the other T - 1 steps of a window make none (zero). Credit does
not cross window borders. Memory T (2 n + m), compute ~ 2 n (n + m) per step and seed
(amortised over the window).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from simulator.network import Network, vecmat
from simulator.rules.base import Dense, Rank1, Rule, RuleOutput, StepContext
from simulator.rules.f_bptt import WINDOW


class EpochBPTT(Rule):
    name = "e-bptt"
    summary = ("truncated BPTT over non-overlapping windows of T steps: one update per window "
               "(the window's summed loss), none in between")
    settings = (WINDOW,)

    def __init__(self, net: Network, n_out: int, args: dict, seeds: list[int]) -> None:
        super().__init__(net, n_out, args, seeds)
        T, S, n, m = args["T"], net.seeds, net.n, net.W.shape[2]
        self.Q = net.W.new_zeros(T, S, n)  # credit, gain and p of the window's steps, in order
        self.G = net.W.new_zeros(T, S, n)
        self.P = net.W.new_zeros(T, S, m)
        self.filled = 0

    @classmethod
    def state_numel(cls, n: int, n_in: int, n_out: int, args: Mapping[str, Any]) -> int:
        return int(args["T"]) * (2 * n + n + n_in + 1)

    @classmethod
    def step_flops(cls, n: int, n_in: int, n_out: int, args: Mapping[str, Any]) -> int:
        m = n + n_in + 1
        return 2 * n * n + 4 * n + 2 * n * m

    def step(self, ctx: StepContext) -> RuleOutput:
        T, i = self.Q.shape[0], self.filled
        credit = ctx.credit
        self.Q[i] = credit
        self.G[i] = ctx.gain
        self.P[i] = ctx.p
        self.filled += 1
        if self.filled < T:
            return RuleOutput(updates={"basal": Rank1(torch.zeros_like(credit), ctx.p)},
                              signal=torch.zeros_like(credit))
        self.filled = 0
        W_rec, leak = ctx.net.W_rec, 1.0 - ctx.net.alpha
        deltas = torch.empty_like(self.Q)
        c = credit
        for s in range(T - 1, -1, -1):  # newest first
            torch.mul(c, self.G[s], out=deltas[s])
            if s:
                back = vecmat(deltas[s], W_rec)
                c = (back if leak == 0.0 else back.add_(c, alpha=leak)).add_(self.Q[s - 1])
        grad = torch.einsum("tsn,tsm->snm", deltas, self.P)
        return RuleOutput(updates={"basal": Dense(grad)}, signal=c)

    def state_dict(self) -> dict[str, Any]:
        return {"Q": self.Q.clone(), "G": self.G.clone(), "P": self.P.clone(),
                "filled": self.filled}
