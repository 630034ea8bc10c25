"""Shared machinery for trial-structured tasks: whole trials, generated in fixed blocks.

A trial task (delayed non-match, copy, digits, NeuroGym) is naturally described one
trial at a time, but the engine asks for chunks of arbitrary length. A
:class:`TrialStream` therefore generates, per seed, a *block* of whole trials at a
time (the same block size on every refill), keeps what it has not handed out yet, and
slices chunks from that buffer. Because every refill draws the same amount of
randomness from the seed's own generator, the data do not depend on how the steps are
requested: ``next(7)`` then ``next(13)`` equals ``next(20)``. (Drawing "just enough"
trials per call would not have this property: some of torch's samplers, e.g. ``randn``
and ``randperm``, produce different numbers for one draw of size 20 than for draws of 7
and 13.)
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.nn.functional import one_hot

from simulator.tasks.base import Task, TaskStream

F64 = torch.float64


def one_hot_f64(labels: Tensor, classes: int) -> Tensor:
    """Integer labels (...) -> float64 one-hot (..., classes)."""
    return one_hot(labels.long(), classes).to(F64)


def trials_per_block(trial_steps: int, target_steps: int = 512) -> int:
    """How many trials make a block of about ``target_steps`` steps (at least one)."""
    return max(1, target_steps // trial_steps)


class TrialStream(TaskStream):
    """A stream cut from whole trials; subclasses implement :meth:`block`.

    Per seed it keeps a buffer of generated steps (x, y) and a read position; a chunk
    that runs past the end of the buffer triggers refills of one block each.
    """

    def __init__(self, task: Task, seeds: Sequence[int], split: str) -> None:
        super().__init__(task, seeds, split)
        self.buf_x = [torch.empty(0, task.n_in, dtype=F64) for _ in self.seeds]
        self.buf_y = [torch.empty(0, task.n_out, dtype=F64) for _ in self.seeds]
        self.pos = [0 for _ in self.seeds]

    @abstractmethod
    def block(self, index: int) -> tuple[Tensor, Tensor]:
        """One block of whole trials for seed number ``index`` (its generator is
        ``self.generators[index]``): x (L, n_in), y (L, n_out), float64.

        Each call must consume the same randomness in the same way whatever the state
        of the buffer, so that the stream does not depend on chunk sizes.
        """

    def _take(self, index: int, steps: int) -> tuple[Tensor, Tensor]:
        x, y, pos = self.buf_x[index], self.buf_y[index], self.pos[index]
        if x.shape[0] - pos < steps:
            xs, ys = [x[pos:]], [y[pos:]]
            have = x.shape[0] - pos
            while have < steps:
                bx, by = self.block(index)
                xs.append(bx)
                ys.append(by)
                have += bx.shape[0]
            x, y, pos = torch.cat(xs), torch.cat(ys), 0
            self.buf_x[index], self.buf_y[index] = x, y
        self.pos[index] = pos + steps
        return x[pos:pos + steps], y[pos:pos + steps]

    def next(self, steps: int) -> tuple[Tensor, Tensor]:
        pairs = [self._take(i, steps) for i in range(len(self.seeds))]
        return torch.stack([p[0] for p in pairs], 1), torch.stack([p[1] for p in pairs], 1)

    def extra_state(self) -> dict[str, Any]:
        return {
            "pending_x": [x[p:].clone() for x, p in zip(self.buf_x, self.pos, strict=True)],
            "pending_y": [y[p:].clone() for y, p in zip(self.buf_y, self.pos, strict=True)],
        }

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.buf_x = [x.clone() for x in state["pending_x"]]
        self.buf_y = [y.clone() for y in state["pending_y"]]
        self.pos = [0 for _ in self.seeds]
