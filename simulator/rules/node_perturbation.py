"""Node perturbation: REINFORCE on the units (Williams 1992; Fiete & Seung 2006), in the
form of the authors' ``REINFORCE`` (omarschall/vanilla-rtrl).

Every step the rule injects Gaussian noise into the network's state, which the network
then carries forward and reads out (the noise is part of the run's dynamics):

    r(t) = (1 - alpha) r(t-1) + alpha tanh(V(t)) + xi(t),     xi ~ N(0, (sigma alpha)^2 I)

Each synapse keeps an eligibility that correlates the noise on its post-synaptic unit with
its own input, and a global scalar reward, the loss against a running-average baseline,
turns it into an update:

    E_ij(t)   = (1 - decay) E_ij(t-1) + decay * gain_i xi_i p_j / sigma^2
    Lbar(t)   = (1 - loss_decay) Lbar(t-1) + loss_decay * L(t-1)      (Lbar, L(-1) start at 0)
    dL/dW_ij ~ (L(t) - Lbar(t)) E_ij(t)

(gain = alpha tanh'(V), p = [r(t-1); x; 1]). No gradient travels anywhere: one scalar
reaches every synapse. As in the authors' code the noise std is sigma alpha while the
eligibility divides by sigma^2, and the baseline lags one step. Their REINFORCE also adds
N(0, sigma^2) noise to every gradient (its sigma doubles as Learning_Algorithm's gradient
noise); that side effect is left out here. With decay = 1 (the default) no trace is stored.
Memory n m (2 scalars with decay = 1), compute ~ 3 n m per step and seed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from simulator.network import Network
from simulator.rules.base import Dense, Rank1, RuleOutput, StepContext
from simulator.rules.family import NoiseStream, StatefulRule
from simulator.settings import Setting


class NodePerturbation(StatefulRule):
    name = "node-perturbation"
    summary = ("REINFORCE on the units: injected state noise, a running-average loss baseline, "
               "one global scalar reward")
    settings = (
        Setting("sigma", 0.1, "noise size: xi ~ N(0, (sigma alpha)^2) added to each unit's "
                              "rate every step", float, 1e-6, 10.0),
        Setting("loss_decay", 0.01, "rate of the running-average loss baseline", float, 0.0, 1.0),
        Setting("decay", 1.0, "eligibility trace rate (1: the immediate term only)",
                float, 1e-6, 1.0),
    )
    perturbs_state = True
    diagnostic_names = ("loss_baseline",)
    fixed_args = ("decay",)
    state_keys = ("trace", "xi", "loss", "loss_avg")

    def __init__(self, net: Network, n_out: int, args: dict, seeds: list[int]) -> None:
        super().__init__(net, n_out, args, seeds)
        S, n = net.seeds, net.n
        self.alpha = net.alpha
        self.trace: Tensor | None = None if args["decay"] == 1.0 else net.W.new_zeros(net.W.shape)
        self.xi = net.W.new_zeros(S, n)  # the noise injected at this step
        self.loss = net.W.new_zeros(S)  # L(t-1) until this step's step()
        self.loss_avg = net.W.new_zeros(S)
        self.noise = NoiseStream("node-perturbation", seeds, n, "gaussian", net.W)

    @classmethod
    def state_numel(cls, n: int, n_in: int, n_out: int, args: Mapping[str, Any]) -> int:
        trace = 0 if float(args.get("decay", 1.0)) == 1.0 else n * (n + n_in + 1)
        return trace + n + 2

    @classmethod
    def step_flops(cls, n: int, n_in: int, n_out: int, args: Mapping[str, Any]) -> int:
        return 3 * n * (n + n_in + 1) + 4 * n + 3 * n_out + 6

    def perturb_state(self, r: Tensor) -> Tensor:
        self.xi = self.noise.next() * (self.args["sigma"] * self.alpha)
        return r + self.xi

    def step(self, ctx: StepContext) -> RuleOutput:
        sigma, rate = self.args["sigma"], self.args["loss_decay"]
        post = ctx.gain * self.xi / sigma**2  # the immediate eligibility is post (x) p
        loss_prev = self.loss
        self.loss = ctx.loss
        self.loss_avg = self.loss_avg * (1.0 - rate) + loss_prev * rate
        reward = self.loss - self.loss_avg
        diagnostics = {"loss_baseline": self.loss_avg}
        if self.trace is None:
            return RuleOutput(updates={"basal": Rank1(post * reward[:, None], ctx.p)},
                              signal=post, diagnostics=diagnostics)
        decay = self.args["decay"]
        self.trace = self.trace.mul_(1.0 - decay).addcmul_(post.unsqueeze(2), ctx.p.unsqueeze(1),
                                                           value=decay)
        return RuleOutput(updates={"basal": Dense(self.trace * reward[:, None, None])},
                          signal=post, diagnostics=diagnostics)
