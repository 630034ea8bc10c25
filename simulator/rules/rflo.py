"""RFLO: random-feedback local online learning (Murray 2019).

RTRL with the Jacobian replaced by the leak alone, J(t) ~ (1 - alpha) I, which keeps only
the diagonal k = i of the influence tensor: a local eligibility trace per synapse,

    P_ij(t) = (1 - alpha) P_ij(t-1) + alpha tanh'(V_i(t)) p_j(t)      (Murray's p_ij; p = [r(t-1); x; 1])
    dL/dW_ij ~ q_i(t) P_ij(t),   q = B e(t)

with B = W_out^T (feedback=symmetric) or a fixed random N(0, 1/n_out) matrix
(feedback=random, Murray's original choice). With alpha = 1 the trace is just the
immediate term and RFLO is the one-step-truncated gradient (bptt with T = 1); then the
trace is not stored and the update is the rank-one q * gain (x) p. Memory n m, compute
n m per step and seed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from simulator.network import Network
from simulator.rules.base import Dense, Rank1, RuleOutput, StepContext
from simulator.rules.family import FEEDBACK, StatefulRule, feedback_credit, random_feedback


class RFLO(StatefulRule):
    name = "rflo"
    per_slot_alpha = True  # the leak through Network's helpers only
    summary = "random-feedback local online (Murray 2019): eligibility trace with J ~ (1-alpha) I"
    settings = (FEEDBACK,)
    state_keys = ("trace", "B")
    fixed_args = ("feedback",)

    def __init__(self, net: Network, n_out: int, args: dict, seeds: list[int]) -> None:
        super().__init__(net, n_out, args, seeds)
        random = args["feedback"] == "random"
        self.B: Tensor | None = random_feedback(seeds, net.n, n_out, net.W) if random else None
        self.trace: Tensor | None = None if not net.leaky else net.W.new_zeros(net.W.shape)

    def arrays(self) -> dict[str, Tensor]:
        return {} if self.B is None else {"feedback": self.B.mT}  # (n_out, n)
    @classmethod
    def state_numel(cls, n: int, n_in: int, n_out: int, args: Mapping[str, Any]) -> int:
        # the trace (kept when alpha < 1: counted always, alpha is not a rule setting), B
        random = args.get("feedback") == "random"
        return n * (n + n_in + 1) + (n * n_out if random else 0)

    @classmethod
    def step_flops(cls, n: int, n_in: int, n_out: int, args: Mapping[str, Any]) -> int:
        return 2 * n * n_out + 7 * n * (n + n_in + 1)  # B e, trace, q * trace, apply

    def step(self, ctx: StepContext) -> RuleOutput:
        q = feedback_credit(self.B, ctx.e, ctx.net)
        if self.trace is None:  # alpha = 1: P(t) = gain (x) p
            return RuleOutput(updates={"basal": Rank1(q * ctx.gain, ctx.p)}, signal=q)
        trace = ctx.net.leak_scale_(self.trace)  # (1 - alpha) P(t-1)
        trace.addcmul_(ctx.gain.unsqueeze(2), ctx.p.unsqueeze(1))
        return RuleOutput(updates={"basal": Dense(trace * q.unsqueeze(2))}, signal=q)
