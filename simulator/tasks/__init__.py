"""Task registry: name -> Task class. A new task is one module plus one line here."""

from __future__ import annotations

from typing import Any

from simulator.settings import ConfigError, quote, resolve
from simulator.tasks.add import AddTask
from simulator.tasks.base import Task, TaskStream
from simulator.tasks.copy_task import CopyTask
from simulator.tasks.delayed_nonmatch import DelayedNonMatchTask
from simulator.tasks.digits import DigitsTask
from simulator.tasks.flipflop import FlipFlopTask
from simulator.tasks.mimic import MimicTask
from simulator.tasks.neurogym_bridge import NeuroGymTask
from simulator.tasks.pattern import PatternTask

TASKS: dict[str, type[Task]] = {
    AddTask.name: AddTask,
    MimicTask.name: MimicTask,
    FlipFlopTask.name: FlipFlopTask,
    DelayedNonMatchTask.name: DelayedNonMatchTask,
    PatternTask.name: PatternTask,
    DigitsTask.name: DigitsTask,
    CopyTask.name: CopyTask,
    NeuroGymTask.name: NeuroGymTask,  # "neurogym:NAME", a family: see make_task
}

FAMILY = ":NAME"  # a registry key ending in this takes an id after the colon


def _lookup(name: str, args: dict[str, Any]) -> tuple[type[Task], dict[str, Any]]:
    """The class for ``name``; a family name ``prefix:ID`` puts ID into ``args['env']``."""
    prefix, colon, ident = name.partition(":")
    family = f"{prefix}{FAMILY}"
    if colon and family in TASKS:
        if not ident or ident == "NAME":
            raise ConfigError("task", f"give an environment id after the colon, e.g. "
                              f"{prefix}:PerceptualDecisionMaking-v0")
        if "env" in args and args["env"] != ident:
            raise ConfigError("task_args.env", f"conflicts with the task name {quote(name)}")
        return TASKS[family], {**args, "env": ident}
    if name in TASKS and not name.endswith(FAMILY):
        return TASKS[name], args
    raise ConfigError("task", f"unknown task {quote(name)}; allowed: {', '.join(TASKS)}")


def make_task(name: str, args: dict[str, Any] | None = None) -> Task:
    """Build a task by name from (string or typed) settings, validating every field."""
    cls, given = _lookup(name, dict(args or {}))
    return cls(**resolve(cls.settings, given, "task_args"))


__all__ = ["TASKS", "Task", "TaskStream", "make_task"]
