"""Task registry: name -> Task class. A new task is one module plus one line here."""

from __future__ import annotations

from typing import Any

from simulator.settings import ConfigError, resolve
from simulator.tasks.add import AddTask
from simulator.tasks.base import Task, TaskStream
from simulator.tasks.mimic import MimicTask

TASKS: dict[str, type[Task]] = {
    AddTask.name: AddTask,
    MimicTask.name: MimicTask,
}


def make_task(name: str, args: dict[str, Any] | None = None) -> Task:
    """Build a task by name from (string or typed) settings, validating every field."""
    if name not in TASKS:
        raise ConfigError("task", f"unknown task {name!r}; allowed: {', '.join(TASKS)}")
    cls = TASKS[name]
    return cls(**resolve(cls.settings, args, "task_args"))


__all__ = ["TASKS", "Task", "TaskStream", "make_task"]
