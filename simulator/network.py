"""The leaky rate RNN of docs/model.md section 1, batched over an ensemble of S seeds.

All matrices keep the paper's (post, pre) convention with a leading seed axis and the
bias folded in as the last presynaptic column:

    W      (S, n, n + n_in + 1)   basal block [W_rec | W_in | b], presynaptic p(t) = [r(t-1); x(t); 1]
    W_out  (S, n_out, n + 1)      readout [W_out | b_out],          presynaptic [r(t); 1]

One step:  V = W p;  r = (1 - alpha) r(t-1) + alpha tanh(V);  z = W_out [r; 1].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from simulator.seeding import orthogonal, seed_generator


def matvec(M: Tensor, v: Tensor) -> Tensor:
    """Batched M v for M (S, a, b), v (S, b) -> (S, a).

    Written as the row vector v^T M^T: on the CPU that bmm is ~5x faster than M @ v[..., None].
    """
    return torch.bmm(v.unsqueeze(1), M.mT).squeeze(1)


def vecmat(v: Tensor, M: Tensor) -> Tensor:
    """Batched M^T v for M (S, a, b), v (S, a) -> (S, b)."""
    return torch.bmm(v.unsqueeze(1), M).squeeze(1)


def with_one(v: Tensor) -> Tensor:
    """[v; 1] along the last axis: the presynaptic vector of a bias column."""
    return torch.cat([v, v.new_ones(*v.shape[:-1], 1)], -1)


#: the leak: one number for every slot, or a tensor (S, 1) with one per slot (a batched sweep
#: whose members differ in alpha, simulator.sweep; only rules with ``per_slot_alpha``)
Alpha = float | Tensor


@dataclass
class Network:
    W: Tensor
    W_out: Tensor
    alpha: Alpha

    @property
    def leaky(self) -> bool:
        """Whether r(t) keeps part of r(t-1) (alpha < 1 for some slot)."""
        return isinstance(self.alpha, Tensor) or self.alpha != 1.0

    def add_leak_(self, out: Tensor, X: Tensor) -> Tensor:
        """out += (1 - alpha) X in place, X (S, ...): the leak's term of J(t) X."""
        if isinstance(self.alpha, Tensor):
            return out.add_(X * (1.0 - self.alpha).view(-1, *[1] * (X.dim() - 1)))
        return out if self.alpha == 1.0 else out.add_(X, alpha=1.0 - self.alpha)

    def leak_scale_(self, X: Tensor) -> Tensor:
        """X *= (1 - alpha) in place, X (S, ...)."""
        if isinstance(self.alpha, Tensor):
            return X.mul_((1.0 - self.alpha).view(-1, *[1] * (X.dim() - 1)))
        return X.mul_(1.0 - self.alpha)

    def leak_step(self, r: Tensor, h: Tensor) -> Tensor:
        """r(t) = (1 - alpha) r(t-1) + alpha h."""
        if isinstance(self.alpha, Tensor):
            return torch.lerp(r, h, self.alpha)
        return h if self.alpha == 1.0 else torch.lerp(r, h, self.alpha)

    @property
    def n(self) -> int:
        return self.W.shape[1]

    @property
    def n_in(self) -> int:
        return self.W.shape[2] - self.n - 1

    @property
    def n_out(self) -> int:
        return self.W_out.shape[1]

    @property
    def seeds(self) -> int:
        return self.W.shape[0]

    @property
    def W_rec(self) -> Tensor:
        return self.W[:, :, : self.n]

    @property
    def W_in(self) -> Tensor:
        return self.W[:, :, self.n : self.n + self.n_in]

    @property
    def b(self) -> Tensor:
        return self.W[:, :, -1]

    @property
    def readout(self) -> Tensor:
        """W_out without the bias column, (S, n_out, n)."""
        return self.W_out[:, :, : self.n]

    def jacobian_t_times(self, g: Tensor, gain: Tensor) -> Tensor:
        """J(t)^T g with J(t) = dr(t)/dr(t-1) = diag(gain) W_rec + (1 - alpha) I.

        ``gain`` is dr/dV = alpha tanh'(V(t)).
        """
        return self.add_leak_(vecmat(g * gain, self.W_rec), g)

    @staticmethod
    def init(n: int, n_in: int, n_out: int, alpha: Alpha, seeds: Sequence[int],
             dtype: torch.dtype, device: str | torch.device, w_rec_init: str = "qr",
             init_state: str = "zeros") -> tuple[Network, Tensor]:
        """docs/model.md section 1 defaults, one generator per seed (drawn in float64, then cast, so a
        float32 and a float64 run start from the same weights). Returns (net, r(0)).

        w_rec_init: "qr" (the authors': Q of a Gaussian's QR as it comes) or "haar" (signs
        fixed); init_state: "zeros" or "tanh-normal" (tanh of N(0, 1)). Both choices use the
        same draws, so they change only what they name."""
        Ws, W_outs, r0s = [], [], []
        for seed in seeds:
            gen = seed_generator("network", seed)
            W_rec = orthogonal(n, gen, haar=w_rec_init == "haar")
            W_in = torch.randn(n, n_in, generator=gen, dtype=torch.float64) / n_in**0.5
            W_out = torch.randn(n_out, n, generator=gen, dtype=torch.float64) / n**0.5
            Ws.append(torch.cat([W_rec, W_in, torch.zeros(n, 1, dtype=torch.float64)], 1))
            W_outs.append(torch.cat([W_out, torch.zeros(n_out, 1, dtype=torch.float64)], 1))
            r0 = torch.tanh(torch.randn(n, generator=gen, dtype=torch.float64))
            r0s.append(r0 if init_state == "tanh-normal" else torch.zeros_like(r0))
        to = {"dtype": dtype, "device": device}
        net = Network(torch.stack(Ws).to(**to), torch.stack(W_outs).to(**to), alpha)
        return net, torch.stack(r0s).to(**to)
