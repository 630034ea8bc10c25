"""Output losses L(z, y) and their error signals e = dL/dz, batched over leading dims."""

from __future__ import annotations

import torch
from torch import Tensor

LOSSES = ("cross_entropy", "mse")


def loss_value(kind: str, z: Tensor, y: Tensor) -> Tensor:
    """Per-sample loss, reducing the last (output) dimension.

    cross_entropy: softmax cross-entropy with a (possibly soft) label y, in nats.
    mse: 0.5 * ||z - y||^2, so that e = z - y.
    """
    if kind == "cross_entropy":
        return torch.logsumexp(z, -1) - (y * z).sum(-1)
    return 0.5 * (z - y).square().sum(-1)


def error_signal(kind: str, z: Tensor, y: Tensor) -> Tensor:
    """e(t) = dL/dz(t): softmax(z) - y for cross-entropy, z - y for squared error."""
    if kind == "cross_entropy":
        return torch.softmax(z, -1).sub_(y)
    return z - y
