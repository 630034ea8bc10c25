"""Truncated BPTT, online: every step, the gradient of the current loss L(t) is
backpropagated through the last T steps (Williams & Peng 1990 style, window T).

    a(t) = c(t) = W_out^T e(t);  delta(s) = a(s) * gain(s);
    a(s-1) = W_rec^T delta(s) + (1 - alpha) a(s);   G = sum_{s > t-T} delta(s) p(s)^T

It keeps the last T presynaptic vectors p(s) and gains (memory n T), and uses the current
W_rec for the backward pass (exact when the weights did not change inside the window,
as with lr = 0; a close approximation with small online learning rates).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from simulator.network import Network, vecmat
from simulator.rules.base import Dense, Rule, RuleOutput, StepContext
from simulator.settings import Setting


class BPTT(Rule):
    name = "bptt"
    summary = "truncated backprop through time, online: each step's loss through the last T steps"
    settings = (Setting("T", 10, "truncation window in steps", int, 1, 10_000),)

    def __init__(self, net: Network, n_out: int, args: dict, seeds: list[int]) -> None:
        super().__init__(net, n_out, args, seeds)
        T, S, n, m = args["T"], net.seeds, net.n, net.W.shape[2]
        self.P = net.W.new_zeros(T, S, m)  # ring buffers of p(s) and gain(s)
        self.G = net.W.new_zeros(T, S, n)
        self.filled = 0
        self.head = 0

    @classmethod
    def state_numel(cls, n: int, n_in: int, n_out: int, args: Mapping[str, Any]) -> int:
        return int(args["T"]) * (2 * n + n_in + 1)  # the ring buffers of p and gain

    @classmethod
    def temp_numel(cls, n: int, n_in: int, n_out: int, args: Mapping[str, Any]) -> int:
        T, m = int(args["T"]), n + n_in + 1
        return n * m + 2 * T * (n + m)  # the dense gradient, deltas, the gathered p's

    @classmethod
    def step_flops(cls, n: int, n_in: int, n_out: int, args: Mapping[str, Any]) -> int:
        T, m = int(args["T"]), n + n_in + 1
        return T * (2 * n * n + 2 * n) + 2 * T * n * m + 2 * n * m

    def step(self, ctx: StepContext) -> RuleOutput:
        T = self.P.shape[0]
        self.head = (self.head + 1) % T
        self.P[self.head] = ctx.p
        self.G[self.head] = ctx.gain
        self.filled = min(self.filled + 1, T)
        net = ctx.net
        W_rec, leak = net.W_rec, 1.0 - net.alpha
        order = [(self.head - j) % T for j in range(self.filled)]  # newest first
        deltas = torch.empty(self.filled, *ctx.gain.shape, dtype=ctx.gain.dtype,
                             device=ctx.gain.device)
        a = ctx.credit
        for j, slot in enumerate(order):
            if j:
                a = vecmat(deltas[j - 1], W_rec) if leak == 0 else vecmat(
                    deltas[j - 1], W_rec).add_(a, alpha=leak)
            torch.mul(a, self.G[slot], out=deltas[j])
        pres = self.P[order]  # (filled, S, m)
        grad = torch.einsum("tsn,tsm->snm", deltas, pres)
        return RuleOutput(updates={"basal": Dense(grad)}, signal=ctx.credit)

    def state_dict(self) -> dict:
        return {"P": self.P.clone(), "G": self.G.clone(), "filled": self.filled,
                "head": self.head}
