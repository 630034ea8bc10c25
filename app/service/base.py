"""The Backend interface: the seam between the dashboard / REST API and the simulation workers.

A backend owns runs. Each run is a simulation (``simulator.Run``) living in a worker that keeps
going while clients watch it; clients never touch the simulation directly. They:

- create runs from CLI-style config dicts (``create``), list and inspect them (``list_runs``,
  ``get``);
- read the live telemetry stream after a cursor (``frames``): only frames they have not seen,
  with work proportional to the new data; a late joiner asks ``history`` for the whole-run
  decimated overview first, then follows ``frames``;
- drive the run (``control``: pause, resume, step, stop, speed, fast_forward, set, view,
  checkpoint, branch, evaluate);
- export (``export_csv``, ``export_config``), ``delete`` and ``shutdown``.

Errors (every message names the offending field where there is one):

- ``simulator.settings.ConfigError`` (a ``ValueError``): bad config or bad control params.
  ``str(err)`` is ``"field: message"``; ``err.field`` / ``err.message`` hold the parts.
- :class:`RunNotFound` (a ``LookupError``): unknown run id.
- :class:`LimitReached`: the concurrent-run limit is reached (``create``, ``resume``, ``branch``).
- :class:`InsufficientStorage` (507): the disk is full or the run would not fit under the
  server's disk budget (``create``, ``branch``, ``resume``).
- :class:`Conflict`: the action does not apply in the run's current state (e.g. ``resume`` of a
  finished run, ``step`` of a failed one).

Frames: each is ``simulator.telemetry.make_frame``'s dict (t0, t1, phase, phases, loss,
loss_seeds, diagnostics, alignment, traces {seed, units, step, V, U, r}, task, weight_change,
weight_norm, status = the engine's status) plus

    seq               int, strictly increasing per run (the cursor unit; starts at 0)
    run               the run id
    wall              time.time() when the worker built the frame (for lag measurements)
    step              == t1, the number of steps done after this frame
    run_status        the service status (running, paused, finished, diverged at step N ...)
    steps_per_second  the worker's recent throughput
    detail            False for frames older than the newest ~100: traces, task and
                      weight-change matrices dropped, series re-binned to <= 16 bins
    test_loss         list per seed (None where not finite), only in frames after which a
                      held-out evaluation happened; test_step: the step count it was taken at

A frame covers ``steps_per_frame`` steps (automatic: about ``frame_rate`` frames/s); its
traces are the last <= 200 steps of the frame. Fast-forward sends no frames (only ``get`` and
``history`` advance) until the target step.

Run info (``get`` / ``list_runs``) is a JSON-ready dict with the keys in :data:`RUN_KEYS`.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.schema import ACTIONS as _ACTIONS
from app.service.status import RESUMABLE, Kind
from simulator.settings import ConfigError, quote

__all__ = [
    "ACTIONS",
    "ACTIVE_STATUSES",
    "PARKED",
    "RESUMABLE",
    "RUN_KEYS",
    "Backend",
    "BackendSettings",
    "ConfigError",
    "Conflict",
    "InsufficientStorage",
    "LimitReached",
    "RunNotFound",
    "ServiceError",
    "Unavailable",
]

#: Control actions understood by :meth:`Backend.control`, with their parameters:
#:
#:   pause                                 stop stepping, keep the worker and its state
#:   resume                                continue (also: restart an "interrupted", "parked" or
#:                                         "failed: ... (resumable)" run from its last
#:                                         checkpoint, in a new worker)
#:   step          k: int                  advance k steps then pause
#:   stop                                  end the run for good (status "stopped"), checkpoint
#:   speed         steps_per_frame: int    as fast as possible, one frame every N steps (0: automatic,
#:                                         about frame_rate frames/s), or
#:                 steps_per_second: float real-time pacing (frames ~10/s); give one of the two;
#:                 narrate: bool           with steps_per_second: slow to 10 steps/s around
#:                                         phase switches and setting changes (app.service.pacing)
#:   fast_forward  to: int                 no frame/display work until step ``to``, then live
#:   set           lr, apical, jacobian, lr_apical, lr_jacobian, lr_kernel: float; phases: str
#:                                         learning rates (a population's, or a rule setting
#:                                         holding one: simulator.rules.live_settings) / phase
#:                                         schedule, mid-run, without reset (any subset)
#:   view          units: list[int], seed_index: int   which units / seed the traces carry
#:   checkpoint    name: str (optional)    save a checkpoint now; returns {"checkpoint": name}
#:   branch        changes: dict, checkpoint: str (optional, default: the latest)
#:                                         a new run from that checkpoint with the config
#:                                         changes (e.g. {"rule": "dni-b"}); returns {"id": new}
#:   evaluate      steps: int (optional)   held-out loss now; appears in the next frame
#:
#: ``control`` returns a small dict: at least {"ok": True, "status": ...}.
ACTIONS: dict[str, tuple[str, ...]] = _ACTIONS  # declared once, as models: app.schema

#: Statuses of a run whose worker is alive (counted against the concurrent-run limit); every
#: status, its text on the wire and its typed value: :mod:`app.service.status`.
ACTIVE_STATUSES = tuple(k.value for k in (Kind.READY, Kind.RUNNING, Kind.PAUSED))

#: Status of a run without a worker that resumes from its checkpoint (not counted as active).
PARKED = Kind.PARKED.value

#: Keys of the run info dict returned by ``get`` and ``list_runs``:
#:
#:   id, config (validated, CLI keys), status (see :mod:`app.service.status`; "parked": checkpointed,
#:   no worker, resumes on play or, if it was running, on a poll), step (steps done),
#:   steps_per_second (recent rate, 0 when not running), created (unix time), parent (run id
#:   this was branched from, or None),
#:   best_test_loss / last_test_loss (list per seed, or None before the first evaluation),
#:   reference_levels (task.reference_levels(): label -> loss), task_view (task.view()),
#:   phases (the current phase schedule string), seeds (list), steps_per_frame, target_steps
#:   (config steps; the run finishes there), checkpoints (names, oldest first), view
#:   ({"units": [...], "seed_index": i}), learning_rates (population -> rate), cost
#:   (simulator.cost.Cost as a dict: memory_bytes, disk_bytes_per_1000_steps, ...); the local
#:   backend adds cursor (seq of the newest frame), alive (has a worker), pid, last_test_step
RUN_KEYS = ("id", "config", "status", "step", "steps_per_second", "created", "parent",
            "best_test_loss", "last_test_loss", "reference_levels", "task_view", "phases",
            "seeds", "steps_per_frame", "target_steps", "checkpoints", "view", "learning_rates",
            "cost")


class ServiceError(Exception):
    """Base of the backend's own errors; ``http_status`` is what the REST API answers."""

    http_status = 400

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class RunNotFound(ServiceError, LookupError):
    """No run with that id."""

    http_status = 404

    def __init__(self, run_id: str) -> None:
        super().__init__(f"id: no run with id {quote(run_id)}", field="id")
        self.run_id = run_id

    def __str__(self) -> str:  # LookupError would quote it
        return self.message


class LimitReached(ServiceError):
    """The concurrent-run limit is reached."""

    http_status = 409


class Conflict(ServiceError):
    """The action does not apply in the run's current state."""

    http_status = 409


class InsufficientStorage(ServiceError):
    """The data disk cannot hold what was asked (full, or over --max-disk)."""

    http_status = 507


class Unavailable(ServiceError):
    """The run's worker did not answer in time (it is busy or starting); try again."""

    http_status = 503


def reply_or_raise(reply: dict[str, Any]) -> dict[str, Any]:
    """A worker's reply to a command, or the error it carries raised as ours.

    Workers (local or Celery) answer ``{"error": {"type", "field", "message"}}`` when a command
    fails; a ConfigError keeps its field, anything else becomes a Conflict naming its field.
    """
    error = reply.get("error")
    if not error:
        return reply
    field_name, message = error.get("field") or "action", error.get("message", "")
    if error.get("type") == "ConfigError":
        raise ConfigError(field_name, message)
    raise Conflict(message if ":" in message[:40] else f"{field_name}: {message}", field=field_name)


@dataclass(frozen=True)
class BackendSettings:
    """Settings of a backend (the CLI exposes data_dir, max_runs, idle_release and
    checkpoint_seconds).

    data_dir            where the SQLite database, CSV histories and checkpoints live
    max_runs            concurrent active runs (workers) at most
    eval_every          steps between held-out evaluations (test loss in frames); 0: never
    eval_steps          held-out steps per evaluation (None: the run's test_steps)
    checkpoint_every    steps between automatic checkpoints (for resume after a restart)
    checkpoint_seconds  seconds of compute between automatic checkpoints too (so a short run
                        killed midway loses little)
    idle_release        seconds after which a paused (or ready) run, or a running run nobody
                        polls, is checkpointed and parked (its worker released); 0: never
    restart_limit       automatic restarts of a killed worker within restart_window seconds;
                        one more kill ends the run "failed: ... (resumable)"
    restart_window      see restart_limit
    restart_backoff     seconds before the first automatic restart (doubling each time)
    history_cache       frame buffers of runs without a worker kept in memory (least recently
                        used first out); the others are read from disk when asked
    keep_checkpoints    automatic checkpoints kept per run (named ones are kept always)
    history_budget      bytes of per-step CSV history per run: full resolution up to half of
                        it, then block means (``app.service.worker.HistoryCSV``); 0: no limit
    max_disk            bytes the data directory may hold in all (None: the disk's free space
                        at start plus what the directory holds, minus a margin; see
                        ``app.service.store.default_max_disk``)
    frame_rate          target frames per second while running as fast as possible
    steps_per_frame     default steps per frame (None: adapt to reach frame_rate)
    live_frames         full frames kept in memory per run (the live window)
    history_bins        bins per decimation level of the whole-run scalar overview
    max_run_memory      bytes of estimated peak memory per run (None: a quarter of the RAM;
                        0: no limit); see app.service.admission
    max_total_memory    bytes summed over active runs (None: half of the RAM; 0: no limit)
    max_run_work        flops_per_step x steps per run (None: 1e15; 0: no limit)
    """

    data_dir: Path = Path("data")
    max_runs: int = 4
    eval_every: int = 5000
    eval_steps: int | None = None
    checkpoint_every: int = 20_000
    checkpoint_seconds: float = 10.0
    idle_release: float = 600.0
    restart_limit: int = 3
    restart_window: float = 600.0
    restart_backoff: float = 1.0
    history_cache: int = 4
    keep_checkpoints: int = 3
    history_budget: int = 64 << 20
    max_disk: int | None = None
    frame_rate: float = 10.0
    steps_per_frame: int | None = None
    live_frames: int = 600
    history_bins: int = 2048
    max_run_memory: int | None = None
    max_total_memory: int | None = None
    max_run_work: int | None = None


class Backend(abc.ABC):
    """Runs in background workers, a bounded telemetry stream, live control, persistence."""

    settings: BackendSettings

    # ---- runs -----------------------------------------------------------------------------
    @abc.abstractmethod
    def create(self, config: dict[str, Any], *, start: bool = True, view: dict | None = None,
               parent: str | None = None) -> str:
        """Validate ``config`` (CLI keys; ConfigError names the field), refuse with
        LimitReached at the concurrent-run limit, start a worker and return the run id.
        ``start=False`` leaves it "ready" (paused at step 0) until ``control(id, "resume")``.
        ``view`` is {"units": [...], "seed_index": i} for the traces."""

    @abc.abstractmethod
    def list_runs(self) -> list[dict[str, Any]]:
        """Every run (past ones included), newest first, as run info dicts (RUN_KEYS)."""

    @abc.abstractmethod
    def get(self, run_id: str) -> dict[str, Any]:
        """One run's info dict (RUN_KEYS); RunNotFound if unknown."""

    # ---- telemetry --------------------------------------------------------------------------
    @abc.abstractmethod
    def frames(self, run_id: str, after: int = -1) -> tuple[list[dict[str, Any]], int]:
        """Frames with seq > ``after`` still in the live window, oldest first, and the new
        cursor (the last seq returned, or ``after`` when there is nothing new; never lower).
        Work is proportional to the new frames. The dicts are shared: do not mutate them."""

    @abc.abstractmethod
    def history(self, run_id: str, max_points: int = 500) -> dict[str, Any]:
        """The whole-run decimated overview, at most ``max_points`` bins per series:
        {"step": [...], "loss": {"mean", "min", "max"}, "diagnostics": name -> {"mean", "min",
        "max"}, "alignment": {...} or None, "test_loss": {"step": [...], "mean": [...],
        "seeds": [[...] per evaluation]}, "phases": [[start, stop, name], ...] (recent),
        "cursor": seq of the last frame folded in, "t": steps covered}."""

    # ---- control ----------------------------------------------------------------------------
    @abc.abstractmethod
    def control(self, run_id: str, action: str, **params: Any) -> dict[str, Any]:
        """Apply one of :data:`ACTIONS`. Unknown action or bad params: ConfigError naming the
        field ("action", "k", "lr", ...). Returns {"ok": True, "status": ..., ...}."""

    # ---- export / lifecycle -----------------------------------------------------------------
    @abc.abstractmethod
    def export_csv(self, run_id: str) -> Path:
        """Path of the full-resolution per-step scalar history CSV (step, seed, train_loss,
        diagnostics...), complete up to the last frame received."""

    @abc.abstractmethod
    def export_config(self, run_id: str) -> dict[str, Any]:
        """The run's validated config (CLI keys), current phases included: re-POSTable."""

    @abc.abstractmethod
    def delete(self, run_id: str) -> None:
        """Stop the run's worker if alive and remove the run and its files."""

    @abc.abstractmethod
    def shutdown(self) -> None:
        """Stop all workers (checkpointing running runs so they can be resumed later)."""
