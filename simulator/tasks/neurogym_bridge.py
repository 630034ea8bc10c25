"""NeuroGym bridge: any NeuroGym environment as a supervised (input, target) stream.

NeuroGym (Molano-Mazon et al. 2022) packages some two dozen cognitive tasks from the
systems-neuroscience literature (perceptual decisions, working memory, timing...)
behind one interface. Each trial of an environment defines its observations ``ob``
(T, n_obs) and its ground-truth actions ``gt`` (T,) up front, which is what the
supervised training of NeuroGym's own ``Dataset`` uses; we do the same: trials are
generated one after another with ``new_trial()``, observations are the input and the
ground-truth action, one-hot over the action space, is the target of a softmax
cross-entropy. The fixation action (usually 0) plays the role of the blank class of the
other trial tasks: it is the target whenever no decision is due.

Name it as ``neurogym:ENV_ID``, e.g. ``neurogym:PerceptualDecisionMaking-v0``. NeuroGym
is an optional extra (it pins older numpy and gymnasium): ``pip install -e .[neurogym]``.

Each seed drives its own copy of the environment, seeded from the seed's generator, so
seed s's stream depends only on s and the split. Trials are generated one at a time,
so the stream does not depend on chunk sizes. Checkpoints store the pending steps and
the pickled environment (or, failing that, its random state).

Reference level: nothing learned, the entropy of the marginal of the ground-truth
action, estimated once from a long reference stream (the optimum depends on the
environment's noise and is not computed).
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Sequence
from functools import cached_property
from typing import Any

import torch
from torch import Tensor

from simulator.settings import ConfigError, Setting
from simulator.tasks.base import Task
from simulator.tasks.trials import F64, TrialStream, one_hot_f64

INSTALL_HINT = "install with pip install -e .[neurogym]"


def import_neurogym() -> Any:
    """The neurogym module, or a ConfigError that says how to get it."""
    try:
        import neurogym
    except ImportError as err:
        raise ConfigError(
            "task", f"NeuroGym tasks need the optional neurogym package; {INSTALL_HINT}"
        ) from err
    return neurogym


def make_env(env_id: str, dt: int) -> Any:
    """The unwrapped NeuroGym environment ``env_id``, checked for supervised use."""
    ngym = import_neurogym()
    try:
        env = ngym.make(env_id, dt=dt)
    except Exception as err:  # gymnasium raises its own error family for unknown ids
        raise ConfigError("task", f"cannot make NeuroGym environment {env_id!r}: {err}") from err
    env = env.unwrapped
    if not hasattr(env, "new_trial"):
        raise ConfigError("task", f"{env_id!r} is not a trial-based NeuroGym environment")
    if getattr(env.action_space, "n", None) is None:
        raise ConfigError("task", f"{env_id!r} has a continuous action space; only discrete "
                          "actions have a one-hot ground truth")
    if len(env.observation_space.shape or ()) != 1:
        raise ConfigError("task", f"{env_id!r} has observations of shape "
                          f"{env.observation_space.shape}; only flat vectors are supported")
    return env


def env_seed(gen: torch.Generator) -> int:
    """A 31-bit integer seed for numpy, drawn from the seed's generator."""
    return int(torch.randint(0, 2**31 - 1, (), generator=gen))


def trial(env: Any, n_out: int) -> tuple[Tensor, Tensor]:
    """One new trial: observations (T, n_in) and one-hot ground truth (T, n_out)."""
    env.new_trial()
    x = torch.as_tensor(env.ob, dtype=F64).reshape(len(env.ob), -1)
    y = one_hot_f64(torch.as_tensor(env.gt).reshape(-1), n_out)
    return x, y


class NeuroGymStream(TrialStream):
    def __init__(self, task: NeuroGymTask, seeds: Sequence[int], split: str) -> None:
        super().__init__(task, seeds, split)
        self.envs = []
        for gen in self.generators:
            env = make_env(task.args["env"], task.args["dt"])
            env.reset(seed=env_seed(gen))
            env.seed(env_seed(gen))
            self.envs.append(env)

    def block(self, index: int) -> tuple[Tensor, Tensor]:
        return trial(self.envs[index], self.task.n_out)

    def extra_state(self) -> dict[str, Any]:
        state = super().extra_state()
        try:
            state["envs"] = [pickle.dumps(env) for env in self.envs]
        except Exception:  # an environment holding lambdas: keep its random state only
            state["env_rng"] = [env.rng.get_state() for env in self.envs]
        return state

    def load_extra_state(self, state: dict[str, Any]) -> None:
        super().load_extra_state(state)
        if "envs" in state:
            self.envs = [pickle.loads(blob) for blob in state["envs"]]
        else:
            for env, rng in zip(self.envs, state["env_rng"], strict=True):
                env.rng.set_state(rng)


class NeuroGymTask(Task):
    """Registered as ``neurogym:NAME``; ``make_task`` puts NAME into the ``env`` setting."""

    name = "neurogym:NAME"
    summary = "Any NeuroGym environment as a supervised stream (ground-truth action, one-hot)"
    settings = (
        Setting("env", "PerceptualDecisionMaking-v0",
                "NeuroGym environment id (normally given in the task name, neurogym:ID)", str),
        Setting("dt", 100, "milliseconds of task time per step", int, 1, 10_000),
    )
    loss = "cross_entropy"

    def __init__(self, **args: Any) -> None:
        super().__init__(**args)
        self.name = f"neurogym:{args['env']}"  # type: ignore[misc]  # seeds streams per env
        probe = make_env(args["env"], args["dt"])
        self._n_in = int(probe.observation_space.shape[0])
        self._n_out = int(probe.action_space.n)

    n_in = property(lambda self: self._n_in)  # type: ignore[assignment]
    n_out = property(lambda self: self._n_out)  # type: ignore[assignment]

    def stream(self, seeds: Sequence[int], split: str = "train") -> NeuroGymStream:
        return NeuroGymStream(self, seeds, split)

    @cached_property
    def _levels(self) -> dict[str, float]:
        _, y = self.stream([0], "reference").next(20_000)
        marginal = y[:, 0].mean(0)
        entropy = -sum(float(p) * math.log(float(p)) for p in marginal if p > 0)
        return {"nothing learned (action marginal)": entropy}

    def reference_levels(self) -> dict[str, float]:
        return dict(self._levels)

    def view(self) -> dict[str, Any]:
        kind = "heatmap" if max(self.n_in, self.n_out) > 8 else "lines"
        return {
            "kind": kind,
            "inputs": self.n_in,
            "outputs": self.n_out,
            "env": self.args["env"],
            "dt": self.args["dt"],
        }
