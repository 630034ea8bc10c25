"""What every backend does the same way, written once: the run info dict, a control action's
path (check -> branch -> a run without a worker -> send), folding a frame's progress, the
limit message, the reply timeout, the decisions on a run without a worker, and the checks of
the telemetry calls' parameters.

A backend (:class:`app.service.local.LocalBackend`, :class:`app.service.celery_backend.
CeleryBackend`) subclasses :class:`ServiceCore` and supplies its transport and store through
the hooks below; it keeps the run in its own shape (a handle in memory, a Redis hash) and
calls :func:`run_info` with the facts it holds.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from app.service.admission import cost_of
from app.service.base import Backend, BackendSettings, Conflict, LimitReached
from app.service.status import Kind, Status
from app.service.worker import branch_config, branch_steps, check_params
from simulator.settings import ConfigError, quote

REPLY_TIMEOUT = 30.0   # seconds to wait for a worker's answer
SLOW_ACTIONS = {"evaluate": 4.0}  # actions that may take longer: a multiple of REPLY_TIMEOUT

DeadAction = Literal["stop", "resume", "pause", "wake"]


def backend_settings(settings: BackendSettings | None, overrides: Mapping[str, Any]) -> BackendSettings:
    """A backend's settings: ``settings`` (or the defaults) with ``overrides``, the data
    directory made absolute now, so that runs, checkpoints and exports stay under it whatever
    the process's working directory later is."""
    settings = settings or BackendSettings()
    if overrides:
        settings = dataclasses.replace(settings, **overrides)
    return dataclasses.replace(settings, data_dir=Path(settings.data_dir).absolute())


def reply_timeout(action: str) -> float:
    """Seconds a caller waits for the worker's answer to ``action``."""
    return REPLY_TIMEOUT * SLOW_ACTIONS.get(action, 1.0)


def int_param(value: Any, name: str, low: int, high: int) -> int:
    """An integer in [low, high] (an integral float too, never a bool); ConfigError naming
    ``name`` otherwise."""
    allowed = f"allowed: an integer in [{low}, {high}]"
    if isinstance(value, bool):
        raise ConfigError(name, f"got {quote(value)}; {allowed}")
    try:
        number = int(value)
        if isinstance(value, float) and not value.is_integer():
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(name, f"got {quote(value)}; {allowed}") from None
    if not low <= number <= high:
        raise ConfigError(name, f"got {quote(value)}; {allowed}")
    return number


def history_args(max_points: Any, start: Any, stop: Any) -> tuple[int, int | None, int | None]:
    """The checked parameters of ``Backend.history``."""
    return (int_param(max_points, "max_points", 1, 100_000),
            None if start is None else int_param(start, "start", 0, 10**12),
            None if stop is None else int_param(stop, "stop", 0, 10**12))


def nanmin(a: float | None, b: float | None) -> float | None:
    """The smaller finite one of two losses (None where neither is)."""
    values = [v for v in (a, b) if v is not None and math.isfinite(v)]
    return min(values) if values else None


def fold_progress(facts: dict[str, Any], frame: Mapping[str, Any], step: int) -> int:
    """Fold a frame's (or summary's) progress into a run's facts: steps_per_second and the
    last / best held-out losses; returns its step. (Its ``run_status`` is the caller's.)"""
    step = int(frame.get("t1", step))
    if "steps_per_second" in frame:
        facts["steps_per_second"] = frame["steps_per_second"]
    losses = frame.get("test_loss")
    if losses is not None:
        best = facts.get("best_test_loss") or [None] * len(losses)
        facts["last_test_loss"] = losses
        facts["last_test_step"] = frame.get("test_step", step)
        facts["best_test_loss"] = [nanmin(a, b) for a, b in zip(best, losses, strict=False)]
    return step


def idle_seconds(status: str, touched: float, polled: float, now: float) -> float:
    """How long an active run has sat idle (the idle release parks it past ``idle_release``):
    since the last control action, or for a running run since the last poll too (frames,
    get, history): a running run nobody watches is idle as well. Not active: 0."""
    state = Status.parse(status)
    if not state.is_active:
        return 0.0
    return now - (max(touched, polled) if state.kind is Kind.RUNNING else touched)


def limit_reached(active: int, settings: BackendSettings) -> LimitReached:
    """The refusal at the concurrent-run limit, saying what frees a slot."""
    release = (f"paused and unwatched runs are parked (their slot released) after "
               f"{settings.idle_release:g} s" if settings.idle_release > 0 else
               "paused runs count (--idle-release 0: never released)")
    return LimitReached(f"max_runs: {active} runs are active, the limit is {settings.max_runs}; "
                        f"{release}; or stop, delete or let one finish, or raise --max-runs",
                        field="max_runs")


@functools.lru_cache(maxsize=256)
def _task_meta(task: str, task_args: str) -> tuple[dict[str, Any], dict[str, Any]]:
    from simulator.tasks import make_task

    made = make_task(task, json.loads(task_args))
    return made.reference_levels(), made.view()


def task_meta(config: Mapping[str, Any]) -> dict[str, Any]:
    """{"reference_levels", "task_view"} of a run's task ({} each for a config that no longer
    validates: the run is shown anyway)."""
    try:
        levels, view = _task_meta(config["task"], json.dumps(config.get("task_args") or {},
                                                             sort_keys=True))
    except Exception:
        return {"reference_levels": {}, "task_view": {}}
    return {"reference_levels": dict(levels), "task_view": dict(view)}


def run_info(run_id: str, config: Mapping[str, Any], status: str, step: int, *,
             created: Any, parent: Any, facts: Mapping[str, Any], checkpoints: list[str],
             cursor: int, alive: bool, pid: int | None, meta: Mapping[str, Any] | None = None,
             **extra: Any) -> dict[str, Any]:
    """The run info dict of ``get`` / ``list_runs`` (base.RUN_KEYS plus cursor, alive, pid,
    last_test_step, note when there is one, and a backend's ``extra``). ``facts``: what the
    backend keeps of the run's progress (steps_per_second, test losses, phases,
    steps_per_frame, view, learning_rates, note); ``meta``: reference_levels, task_view and
    cost when at hand (else computed from the config)."""
    meta = meta or {}
    task = meta if "reference_levels" in meta else task_meta(config)
    cost = meta.get("cost") or cost_of(dict(config))
    info = {
        "id": run_id, "config": config, "status": status, "step": int(step),
        "steps_per_second": float(facts.get("steps_per_second") or 0.0)
        if status == Kind.RUNNING else 0.0,
        "created": created, "parent": parent,
        "best_test_loss": facts.get("best_test_loss"),
        "last_test_loss": facts.get("last_test_loss"),
        "last_test_step": facts.get("last_test_step"),
        "reference_levels": task.get("reference_levels") or {},
        "task_view": task.get("task_view") or {},
        "phases": facts.get("phases") or config.get("phases"), "seeds": config.get("seeds"),
        "steps_per_frame": facts.get("steps_per_frame") or 0, "target_steps": config.get("steps"),
        "checkpoints": list(checkpoints),
        "view": facts.get("view") or {"units": list(range(min(4, int(config.get("n", 4))))),
                                      "seed_index": 0},
        "learning_rates": facts.get("learning_rates") or {},
        "cursor": int(cursor), "alive": bool(alive), "pid": pid, "cost": cost,
    }
    if facts.get("note"):
        info["note"] = facts["note"]
    info.update(extra)
    return info


def dead_action(status: Status, action: str, run_id: str, *, waiting: bool = False) -> DeadAction:
    """What ``action`` does to a run without a worker (``waiting``: its automatic restart is
    due): "stop" it, "resume" it, "pause" a parked one (it stays parked, as paused), or
    "wake" it (a worker, paused, then the action is sent). Conflict when it does not apply."""
    resumable = status.can_resume or waiting
    if resumable and action in ("stop", "resume"):
        return "stop" if action == "stop" else "resume"
    if status.kind is Kind.PARKED and action == "pause":
        return "pause"
    if status.kind is Kind.PARKED or waiting:
        return "wake"
    allowed = "resume, stop, branch" if resumable else "branch"
    raise Conflict(f"action: cannot {action} run {run_id}: it is {status} (allowed: {allowed})",
                   field="action")


class ServiceCore(Backend):
    """The control path both backends share; ``R`` is a backend's run record (a handle, a
    Redis hash as a dict). Hooks: how to find a run and its config, note a control action,
    tell whether it has a worker, and the transport-specific steps."""

    def control(self, run_id: str, action: str, **params: Any) -> dict[str, Any]:
        run = self._control_run(run_id)
        config = self._config_of(run)
        checked = check_params(action, params, int(config["n"]), len(config["seeds"]))
        run = self._touch(run)
        if action == "branch":
            return self._branch(run, **checked)
        if not self._has_worker(run):
            status = Status.parse(self._status_of(run))
            what = dead_action(status, action, self._id_of(run), waiting=self._restart_due(run))
            if what == "stop":
                return self._stop_without_worker(run)
            if what == "resume":
                return self._resume(run)
            if what == "pause":
                return self._pause_parked(run)
            run = self._wake(run)
        return self._deliver(run, action, checked, reply_timeout(action))

    def _branch(self, run: Any, changes: dict[str, Any],
                checkpoint: str | None = None) -> dict[str, Any]:
        """A new run from a checkpoint of ``run`` (the latest, or one taken now if it has a
        worker) with the config ``changes``; refused before anything is written."""
        config = self._config_of(run)
        new = branch_config(dict(config), changes)
        self._admit_branch(new)
        point, temporary = self._branch_point(run, checkpoint)
        try:
            new = branch_steps(new, changes, dict(config), point["step"])
            new_id = self._create_branch(run, new, point)
        finally:
            if temporary:  # the branch holds its own copy ("origin"): the parent drops it
                self._drop_branch_point(run, point)
        return {"ok": True, "id": new_id, "checkpoint": point["name"], "step": point["step"],
                "status": self._status_of(self._refresh(run))}

    def _limit_reached(self, active: int) -> LimitReached:
        return limit_reached(active, self.settings)

    # ---- hooks -------------------------------------------------------------------------------
    def _control_run(self, run_id: str) -> Any:
        """The run record; RunNotFound, or Conflict for one that cannot be controlled."""
        raise NotImplementedError

    def _config_of(self, run: Any) -> Mapping[str, Any]:
        raise NotImplementedError

    def _id_of(self, run: Any) -> str:
        raise NotImplementedError

    def _status_of(self, run: Any) -> str:
        raise NotImplementedError

    def _touch(self, run: Any) -> Any:
        """Note a control action (idle release counts from it); the record to go on with."""
        return run

    def _has_worker(self, run: Any) -> bool:
        raise NotImplementedError

    def _restart_due(self, run: Any) -> bool:
        """An automatic restart of a killed worker is due (the run keeps its slot)."""
        return False

    def _admit_branch(self, config: dict[str, Any]) -> None:
        """Refuse a branch with this config (limit, memory, disk) before anything is written."""
        raise NotImplementedError

    def _branch_point(self, run: Any, name: str | None) -> tuple[dict[str, Any], bool]:
        """The checkpoint to branch from ({"name", "step", ...}), and whether it was made
        for this branch only."""
        raise NotImplementedError

    def _create_branch(self, run: Any, config: dict[str, Any], point: dict[str, Any]) -> str:
        raise NotImplementedError

    def _drop_branch_point(self, run: Any, point: dict[str, Any]) -> None:
        """Drop a checkpoint made for a branch only (once the branch holds its own)."""

    def _refresh(self, run: Any) -> Any:
        """The run's record as it is now (a backend whose records are snapshots re-reads)."""
        return run

    def _stop_without_worker(self, run: Any) -> dict[str, Any]:
        raise NotImplementedError

    def _resume(self, run: Any) -> dict[str, Any]:
        raise NotImplementedError

    def _pause_parked(self, run: Any) -> dict[str, Any]:
        raise NotImplementedError

    def _wake(self, run: Any) -> Any:
        """A worker for a parked run (or one whose restart is due), not playing; the record."""
        raise NotImplementedError

    def _deliver(self, run: Any, action: str, params: dict[str, Any],
                 timeout: float) -> dict[str, Any]:
        """Send the checked action to the run's worker and return its answer."""
        raise NotImplementedError
