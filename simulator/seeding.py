"""Reproducible randomness shared by the network, the tasks and the rules.

Every random draw comes from a generator seeded by a stable hash of what it is for
(``("network", seed)``, ``(task, "stream", split, seed)``...), so seed s gives the same numbers
alone or inside an ensemble, in any process.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import Tensor


def seed_generator(*parts: Any) -> torch.Generator:
    """A CPU generator seeded from a stable hash of ``parts`` (seed, split, purpose...).

    Hashing (not ``hash()``) keeps streams identical across processes and machines.
    """
    digest = hashlib.sha256(repr(parts).encode()).digest()
    gen = torch.Generator()
    gen.manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return gen


def orthogonal(n: int, gen: torch.Generator, haar: bool = True) -> Tensor:
    """An orthogonal matrix from the QR of a Gaussian. haar: signs fixed by diag(R), which
    makes it uniformly (Haar) distributed; otherwise Q as LAPACK returns it (the authors'
    convention: not Haar-uniform; determinant (-1)^n in practice, fewer eigenvalues near +1)."""
    q, r = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r)).unsqueeze(0) if haar else q
