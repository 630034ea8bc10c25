"""Sequential digits: read an 8x8 handwritten digit one row per step, then name it.

The images are scikit-learn's ``load_digits`` (1797 8x8 digits from the UCI
optical-recognition set, pixel values 0..16, scaled here to [0, 1]); the data ship
inside scikit-learn, so nothing downloads at run time. This is the small cousin of
sequential MNIST (Le, Jaitly & Hinton 2015), the standard test of whether a recurrent
network can integrate evidence over a sequence.

One trial per image, back to back, images drawn uniformly with replacement:

    | rows, 8 steps                  | answer, answer_steps |
      inputs: the row's 8 pixels       inputs: pixels 0, answer cue on
      target: blank                    target: the digit's class

Inputs are 8 pixels plus an "answer now" cue; outputs are the ten digits (index =
digit) plus a ``blank`` class (index 10). While the image is still being read there
is no answer yet; the target there is the explicit blank class, so the loss is a proper
cross-entropy at every step (optimum 0 when the digit is recognised) and the network
must learn when to answer as well as what. A uniform target there would add a constant
floor that hides learning, and masking would need the engine to know about trials.

Splits: the images are split once, stratified by class with a fixed permutation, into
a training part and a held-out ``test`` part (``test_fraction`` of each class). The
split ``"test"`` draws only held-out images; every other split (``"train"``, reference
streams) draws only training images, so held-out loss is measured on unseen digits.

Reference levels, with f = answer_steps / (8 + answer_steps) and class frequencies pi
of the training images (near uniform):

* nothing learned, predict the label marginal (blank 1 - f, class c f pi_c):
  -(1 - f) log(1 - f) - f sum_c pi_c log(f pi_c);
* timing only, blank while reading and the class prior when answering: f H(pi);
* optimum: 0 (a perfect classifier; the Bayes error of these digits is near 0).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor

from simulator.seeding import seed_generator
from simulator.settings import ConfigError, Setting
from simulator.tasks.base import Task
from simulator.tasks.trials import F64, TrialStream, one_hot_f64, trials_per_block

ROWS = COLS = 8
CLASSES = 10
BLANK = CLASSES


@lru_cache(maxsize=1)
def load_images() -> tuple[Tensor, Tensor]:
    """All 1797 digits: images (N, 8, 8) float64 in [0, 1] and labels (N,) int64."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # pragma: no cover - scikit-learn is a core dependency
        raise ConfigError("task", "the digits task needs scikit-learn; install with "
                          "pip install scikit-learn") from err
    data = load_digits()
    images = torch.as_tensor(data.images, dtype=F64) / 16.0
    return images, torch.as_tensor(data.target, dtype=torch.long)


def split_indices(labels: Tensor, test_fraction: float) -> tuple[Tensor, Tensor]:
    """Disjoint (train, test) index sets, stratified by class, from a fixed permutation."""
    gen = seed_generator("digits", "split")
    perm = torch.randperm(labels.shape[0], generator=gen)
    train, test = [], []
    for c in range(CLASSES):
        members = perm[labels[perm] == c]
        cut = round(test_fraction * members.shape[0])
        test.append(members[:cut])
        train.append(members[cut:])
    return torch.cat(train).sort().values, torch.cat(test).sort().values


def build_trials(images: Tensor, labels: Tensor, answer_steps: int) -> tuple[Tensor, Tensor]:
    """Inputs (B*L, 9) and one-hot targets (B*L, 11) of B images (B, 8, 8)."""
    b = images.shape[0]
    trial = ROWS + answer_steps
    x = torch.zeros(b, trial, COLS + 1, dtype=F64)
    x[:, :ROWS, :COLS] = images
    x[:, ROWS:, COLS] = 1.0
    label = torch.full((b, trial), BLANK, dtype=torch.long)
    label[:, ROWS:] = labels.unsqueeze(1)
    return x.reshape(b * trial, COLS + 1), one_hot_f64(label, CLASSES + 1).reshape(b * trial, -1)


class DigitsStream(TrialStream):
    def __init__(self, task: DigitsTask, seeds: Sequence[int], split: str) -> None:
        super().__init__(task, seeds, split)
        self.pool = task.subset("test" if split == "test" else "train")
        self.per_block = trials_per_block(ROWS + task.args["answer_steps"])

    def block(self, index: int) -> tuple[Tensor, Tensor]:
        images, labels = load_images()
        pick = self.pool[torch.randint(self.pool.shape[0], (self.per_block,),
                                       generator=self.generators[index])]
        return build_trials(images[pick], labels[pick], self.task.args["answer_steps"])


class DigitsTask(Task):
    name = "digits"
    summary = "Sequential 8x8 digits (scikit-learn load_digits): one row per step, then the class"
    settings = (
        Setting("answer_steps", 1, "steps after the image during which the class is the target",
                int, 1, 100),
        Setting("test_fraction", 0.2, "fraction of each class held out for the test split",
                float, 0.05, 0.5),
    )
    loss = "cross_entropy"

    n_in = property(lambda self: COLS + 1)  # type: ignore[assignment]
    n_out = property(lambda self: CLASSES + 1)  # type: ignore[assignment]

    def subset(self, part: str) -> Tensor:
        """Indices of the "train" or "test" images."""
        train, test = split_indices(load_images()[1], self.args["test_fraction"])
        return test if part == "test" else train

    def class_prior(self) -> Tensor:
        """Class frequencies pi (10,) of the training images."""
        labels = load_images()[1][self.subset("train")]
        return torch.bincount(labels, minlength=CLASSES).to(F64) / labels.shape[0]

    def stream(self, seeds: Sequence[int], split: str = "train") -> DigitsStream:
        return DigitsStream(self, seeds, split)

    def reference_levels(self) -> dict[str, float]:
        a = self.args["answer_steps"]
        f = a / (ROWS + a)
        pi = self.class_prior()
        prior_entropy = float(-(pi * pi.log()).sum())
        return {
            "nothing learned (label marginal)": -(1 - f) * math.log(1 - f)
            + f * (prior_entropy - math.log(f)),
            "timing only (class prior)": f * prior_entropy,
            "optimum": 0.0,
        }

    def view(self) -> dict[str, Any]:
        return {
            "kind": "image",
            "image_shape": [ROWS, COLS],
            "pixels_per_step": COLS,
            "steps_per_image": ROWS + self.args["answer_steps"],
            "pixel_index": list(range(COLS)),
            "cue_index": COLS,
            "inputs": [f"pixel {i}" for i in range(COLS)] + ["answer cue"],
            "outputs": [str(c) for c in range(CLASSES)] + ["blank"],
        }
