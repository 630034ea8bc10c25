"""The task interface: a task makes per-seed (input, target) streams and knows its loss.

A new task is one module with a :class:`Task` subclass plus one line in
``simulator/tasks/__init__.py``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from simulator.seeding import seed_generator
from simulator.settings import Setting


class TaskStream(ABC):
    """An endless stream of (x, y) for S seeds; each seed has its own generator.

    ``next(k)`` returns x of shape (k, S, n_in) and y of shape (k, S, n_out), float64 on
    the CPU; the engine casts and moves them. Seed s's stream depends only on s and the
    split, so a seed run alone and the same seed inside an ensemble see the same data.
    """

    def __init__(self, task: Task, seeds: Sequence[int], split: str) -> None:
        self.task = task
        self.seeds = list(seeds)
        self.split = split
        self.generators = [seed_generator(task.name, "stream", split, s) for s in self.seeds]

    @abstractmethod
    def next(self, steps: int) -> tuple[Tensor, Tensor]: ...

    def extra_state(self) -> dict[str, Any]:
        """Task-specific stream state (history buffers...) for checkpoints."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:  # noqa: B027 - optional hook
        """Restore what extra_state returned."""

    def state_dict(self) -> dict[str, Any]:
        return {"generators": [g.get_state() for g in self.generators], **self.extra_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for gen, gen_state in zip(self.generators, state["generators"], strict=True):
            gen.set_state(gen_state)
        self.load_extra_state(state)


class Task(ABC):
    """A supervised stream task. Subclasses set the class attributes below."""

    name: ClassVar[str]
    summary: ClassVar[str]
    settings: ClassVar[tuple[Setting, ...]] = ()
    loss: ClassVar[str] = "cross_entropy"  # or "mse"; see simulator.losses

    def __init__(self, **args: Any) -> None:
        self.args = args

    @property
    @abstractmethod
    def n_in(self) -> int: ...

    @property
    @abstractmethod
    def n_out(self) -> int: ...

    @abstractmethod
    def stream(self, seeds: Sequence[int], split: str = "train") -> TaskStream:
        """A fresh stream; split "train" or "test" (held out: different random draws)."""

    def reference_levels(self) -> dict[str, float]:
        """Labelled loss levels (nats or squared error) to draw on loss plots."""
        return {}

    def view(self) -> dict[str, Any]:
        """How a dashboard shows input, target and prediction: {"kind": "lines"|...}."""
        return {"kind": "lines", "inputs": self.n_in, "outputs": self.n_out}

    def prediction(self, z: Tensor) -> Tensor:
        """What to plot as the network's prediction from readout z (probabilities for CE)."""
        return torch.softmax(z, -1) if self.loss == "cross_entropy" else z
