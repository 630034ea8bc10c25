"""The worker process: one run, stepped in chunks, commands in and telemetry out over a pipe.

The server starts :func:`main` in a fresh process (multiprocessing "spawn" context) with a
:class:`WorkerSpec` and one end of a duplex pipe. Protocol (tuples, pickled by the pipe):

server -> worker   ("cmd", cmd_id, action, params)   actions of ``app.service.base.ACTIONS``
                                                     plus "quit" {"checkpoint": bool}
worker -> server   ("hello", state)                  after the run is built
                   ("frame", frame)                  a telemetry frame (live mode)
                   ("summary", summary)              scalars only (fast-forward, evaluate)
                   ("state", state)                  status/step/rates/... changed
                   ("checkpoint", info)              a checkpoint file was written
                   ("reply", cmd_id, result)         {"ok": ...} or {"error": {...}}
                   ("bye", state)                    clean exit; state["status"] is final
                   ("failed", reason)                an unexpected exception; exits 1

Between chunks the worker drains its commands, so a command waits at most one chunk (about a
frame interval, ~0.1 s). It writes the per-step scalar history to its CSV itself (one append
per chunk, within a byte budget: :class:`HistoryCSV`) and its checkpoints with ``torch.save``;
the server keeps the index. A full disk pauses the run (state "note" says so) instead of
failing it: nothing written is torn, and play carries on once there is space.

The loop (:class:`Worker`) only needs a :class:`Transport`: ``send``/``poll``/``recv`` of the
messages above. The embedded backend gives it a pipe end; the Celery backend runs the very
same loop inside a Celery task with ``app.service.celery_app.RunChannel``, which maps the
messages onto Redis (frames to a stream, state to a hash, commands from a list).
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import signal
import threading
import time
import traceback
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Protocol

from app.schema import MAX_LIVE_CHUNK
from app.service import pacing
from app.service.status import Status
from simulator.settings import ConfigError

TRACE_TAIL = 200          # steps of V/U/r recorded per frame (make_frame shows at most 200)
FF_SECONDS = 0.25         # target duration of one fast-forward chunk
WORKER_NICE = 10          # a run worker's CPU priority below the server's (os.nice)


def check_create(config: Any, view: Any, parent: Any) -> tuple[Any, dict[str, Any]]:
    """Validate what ``Backend.create`` receives: the config (a RunConfig comes back), the
    optional view (units / seed_index, checked against the run's sizes) and the parent id.
    Raises ConfigError naming the field."""
    from simulator.config import RunConfig

    cfg = RunConfig.from_dict(config)
    if view is not None and not isinstance(view, dict):
        raise ConfigError("view", "must be an object: {\"units\": [...], \"seed_index\": i}")
    checked_view = check_params("view", view, cfg.n, len(cfg.seeds)) if view else {}
    if parent is not None and not isinstance(parent, str):
        raise ConfigError("parent", "must be a run id")
    return cfg, checked_view


def check_params(action: Any, params: dict[str, Any], n: int, seeds: int) -> dict[str, Any]:
    """Validate a control command's params (n units, seeds: the run's sizes); returns them
    parsed. Raises ConfigError naming the field: "action" or the parameter. The actions and
    their ranges are declared once, in :mod:`app.schema`."""
    from app.schema import check_control

    return check_control(action, params, n, seeds)


#: Config fields a branch must keep (the checkpointed network and stream depend on them).
BRANCH_FIXED = ("task", "task_args", "n", "seeds")


def branch_config(config: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """The config of a branch of a run with ``config``: ``changes`` applied (a new rule starts
    from its default settings unless rule_args are given), validated; ConfigError names the
    field as "changes.<field>". Both backends use it; see :func:`branch_steps` too."""
    from simulator.config import RunConfig

    for key in BRANCH_FIXED:
        if key in changes and changes[key] != config.get(key):
            raise ConfigError(f"changes.{key}", "a branch keeps the network and the task; "
                              "allowed changes: rule, rule_args, lr, alpha, phases, steps, "
                              "test_steps, device, dtype")
    base = dict(config)
    if changes.get("rule", base["rule"]) != base["rule"] and "rule_args" not in changes:
        base["rule_args"] = {}
    new = {**base, **changes}
    try:
        RunConfig.from_dict(new)
    except ConfigError as exc:
        raise ConfigError(f"changes.{exc.field}", exc.message) from None
    return new


def branch_steps(new: dict[str, Any], changes: dict[str, Any], config: dict[str, Any],
                 step: int) -> dict[str, Any]:
    """A branch taken at ``step`` past its steps (and not told otherwise) runs as many steps
    again as its parent had."""
    if "steps" not in changes and step >= int(new["steps"]):
        new = {**new, "steps": step + int(config["steps"])}
    return new


class Transport(Protocol):
    """What the loop talks through (a ``multiprocessing`` pipe end satisfies it)."""

    def send(self, obj: Any) -> None: ...

    def poll(self, timeout: float = 0.0) -> bool: ...

    def recv(self) -> Any: ...


@dataclass
class WorkerSpec:
    """What a worker needs to start (picklable).

    init: None for a fresh run; {"checkpoint": path} to resume; {"checkpoint": path,
    "branch": True} to continue that state under ``config`` (another rule...).
    checkpoint_every / checkpoint_seconds: an automatic checkpoint after that many steps or
    that many seconds of compute (paused time does not count), whichever comes first.
    pace: real-time pacing in steps/s (None: as fast as possible), kept across a restart.
    """

    run_id: str
    config: dict[str, Any]
    run_dir: str
    start: bool = True
    view: dict[str, Any] = field(default_factory=dict)
    init: dict[str, Any] | None = None
    eval_every: int = 5000
    eval_steps: int | None = None
    checkpoint_every: int = 20_000
    checkpoint_seconds: float = 10.0
    frame_rate: float = 10.0
    steps_per_frame: int | None = None
    history_budget: int = 0
    pace: float | None = None
    narrate: bool = False  # pacing.narrate_chunk: slow around phase switches and changes


def main(spec: WorkerSpec, conn: Connection) -> None:
    """Process entry point: one thread, one intra-op torch thread."""
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"
    # Ctrl-C in a terminal reaches the whole process group: the server stops its workers
    # itself (checkpointing them), so a worker must not die of it first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # SIGTERM (e.g. to the whole process group when a service manager stops the server):
    # checkpoint, then exit as "interrupted", resumable later.
    signal.signal(signal.SIGTERM, lambda signum, frame: _TERMINATE.set())
    # below the server and the browsers on the same machine: a run at max speed takes what
    # they leave, so the dashboard stays live (issue 12: +12% redraws for a race of 3 on 2 cores)
    with contextlib.suppress(OSError):
        os.nice(WORKER_NICE)
    import torch

    torch.set_num_threads(1)
    try:
        Worker(spec, conn).loop()
    except (EOFError, BrokenPipeError, ConnectionResetError):
        os._exit(0)  # the server is gone: nobody to report to
    except BaseException as exc:  # report, then die: the server marks the run failed
        reason = f"{type(exc).__name__}: {exc}".strip()
        with contextlib.suppress(Exception):
            conn.send(("failed", reason[:500], traceback.format_exc()[-4000:]))
        os._exit(1)


class Worker:
    """Drives one ``simulator.Run``: play/pause/step/pacing/fast-forward, frames, CSV, checkpoints."""

    def __init__(self, spec: WorkerSpec, conn: Connection | Transport) -> None:
        import torch

        from simulator import Run, RunConfig
        from simulator.telemetry import default_units

        self.spec, self.conn = spec, conn
        self.dir = Path(spec.run_dir)
        (self.dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        config = RunConfig.from_dict(spec.config)
        if spec.init and spec.init.get("checkpoint"):
            state = torch.load(spec.init["checkpoint"], map_location="cpu", weights_only=False)
            self.run = Run.from_state(state, config if spec.init.get("branch") else None)
        else:
            self.run = Run(config)
        n, seeds = self.run.net.n, len(self.run.seeds)
        units = spec.view.get("units") or default_units(n)
        self.units = [u for u in units if 0 <= u < n] or default_units(n)
        self.seed_index = min(max(int(spec.view.get("seed_index", 0)), 0), seeds - 1)
        self.playing = spec.start
        self.budget = 0            # steps left of a "step k" command
        self.ff_to: int | None = None
        self.pace: float | None = spec.pace
        self.due: float | None = None  # pacing: when the steps done so far are due
        self.narrate = bool(spec.narrate) and bool(self.pace)
        self.events: list[int] = []    # steps of mid-run setting changes (narrate slows after)
        self.pace_now: float | None = None  # the rate the current chunk is due at
        self.spf: int | None = spec.steps_per_frame
        self.rate = 2000.0         # steps/s of the steps alone (EMA), for fast-forward chunks
        self.busy_rate = 2000.0    # steps/s counting each chunk's frame work too (EMA): max speed
        self.frame_due: float | None = None  # max speed: when the next frame is due
        self.sps = 0.0             # delivered steps/s (EMA)
        self.status = "running" if self.playing else ("ready" if self.run.t == 0 else "paused")
        self.quit = False
        self.pending_test: list[float | None] | None = None
        self.events_changed = False  # a set action was recorded: the next frame says so
        self.last_eval = self.run.t
        self.last_ckpt = self.run.t
        self.computed = 0.0        # seconds of compute since the last checkpoint
        self.parked_from: str | None = None
        self.saved_step = self.run.t if spec.init else -1
        self.note: str | None = None   # why the run paused itself (a full disk)
        self.csv = HistoryCSV(self.dir / "scalars.csv", spec.history_budget)

    # ---- plumbing ------------------------------------------------------------------------
    def send(self, *msg: Any) -> None:
        self.conn.send(msg)

    def state(self) -> dict[str, Any]:
        run = self.run
        parked = {"parked_from": self.parked_from} if self.parked_from else {}
        return {**parked, "status": self.status, "step": run.t, "steps_per_second": round(self.sps, 1),
                "steps_per_frame": self.spf or 0, "pace": self.pace, "narrate": self.narrate,
                "fast_forward_to": self.ff_to,
                "learning_rates": dict(run.lr), "phases": run.config.phases,
                "view": {"units": self.units, "seed_index": self.seed_index},
                "config": self._config_now(), "note": self.note}

    def _config_now(self) -> dict[str, Any]:
        cfg = self.run.config.to_dict()
        cfg["lr"] = self.run.lr.get("basal", cfg["lr"])
        rule_args = dict(cfg["rule_args"])
        for key, pop in self.run.rule.live_rates(rule_args).items():  # lr_apical <- apical
            if pop in self.run.lr and key in rule_args:
                rule_args[key] = self.run.lr[pop]
        cfg["rule_args"] = rule_args
        return cfg

    def loop(self) -> None:
        self.send("hello", self.state())
        while not self.quit:
            self._drain(block=not self._active())
            if _TERMINATE.is_set() and not self.quit:
                self._quit({"checkpoint": self._active() or self.status == "paused",
                            "status": "interrupted"})
            if self.quit:
                break
            if self._active():
                self._chunk()
        try:
            self.csv.close()
        except OSError as exc:
            self.note = f"the last history rows were not written: {exc}"
        self.send("bye", self.state())

    def _active(self) -> bool:
        return not Status.parse(self.status).is_ended and (self.playing or self.budget > 0)

    def _drain(self, block: bool) -> None:
        timeout = 0.5 if block else 0.0
        while self.conn.poll(timeout):
            msg = self.conn.recv()
            timeout = 0.0
            if msg[0] == "cmd":
                self._command(msg[1], msg[2], msg[3])
            if self.quit:
                return
        if block and os.getppid() == 1:  # orphaned: the server died without closing the pipe
            self.quit = True

    # ---- commands ------------------------------------------------------------------------
    def _command(self, cmd_id: int, action: str, params: dict[str, Any]) -> None:
        try:
            if action == "quit":
                result = self._quit(params)
            else:
                checked = check_params(action, params, self.run.net.n, len(self.run.seeds))
                result = getattr(self, f"_do_{action}")(**checked)
            self.send("reply", cmd_id, {"ok": True, **(result or {}), "status": self.status,
                                        "step": self.run.t})
        except ConfigError as exc:
            self.send("reply", cmd_id, {"error": {"type": "ConfigError", "field": exc.field,
                                                  "message": exc.message}})
        except _Refused as exc:
            self.send("reply", cmd_id, {"error": {"type": "Conflict", "field": "action",
                                                  "message": str(exc)}})
        except Exception as exc:  # a bad setting never kills the worker
            self.send("reply", cmd_id, {"error": {"type": "Error", "field": action,
                                                  "message": f"{type(exc).__name__}: {exc}"}})
        self.send("state", self.state())

    def _require_live(self, action: str) -> None:
        if Status.parse(self.status).is_ended:
            raise _Refused(f"action: cannot {action} a run that is {self.status}")

    def _quit(self, params: dict[str, Any]) -> dict[str, Any]:
        if params.get("checkpoint") and self.run.t > self.saved_step:
            with contextlib.suppress(OSError):  # a full disk: resume uses the one before
                self._checkpoint(auto=True)
        if params.get("status") == "parked":  # what a restart returns to
            self.parked_from = "running" if self.playing else (
                "ready" if self.status == "ready" else "paused")
        if params.get("status"):
            self.status = str(params["status"])
        self.quit = True
        return {}

    def _do_pause(self) -> dict[str, Any]:
        self._require_live("pause")
        self.playing, self.budget = False, 0
        self.status = "paused"
        return {}

    def _do_resume(self) -> dict[str, Any]:
        self._require_live("resume")
        self.playing = True
        self.status = "running"
        self.note = None
        return {}

    def _do_step(self, k: int) -> dict[str, Any]:
        self._require_live("step")
        self.playing, self.budget = False, k
        self.status = "running"
        return {}

    def _do_stop(self) -> dict[str, Any]:
        self._require_live("stop")
        self.status = "stopped"
        self.quit = True
        self._checkpoint(auto=True)
        return {}

    def _do_speed(self, steps_per_frame: int | None = None,
                  steps_per_second: float | None = None, narrate: bool = False) -> dict[str, Any]:
        self.pace = steps_per_second
        self.narrate = bool(narrate) and steps_per_second is not None
        self.spf = steps_per_frame or None
        return {"pace": self.pace, "narrate": self.narrate}

    def _do_fast_forward(self, to: int) -> dict[str, Any]:
        self._require_live("fast_forward")
        self.ff_to = to if to > self.run.t else None
        if self.ff_to is not None and not self.playing:
            self.playing = True
            self.status = "running"
        return {}

    def _do_set(self, **changes: Any) -> dict[str, Any]:
        event = {"step": self.run.t, "action": "set", **changes}
        phases = changes.pop("phases", None)
        self.events = pacing.remember(self.events, self.run.t)
        live = self.run.rule.live_rates(self.run.config.rule_args)
        rates: dict[str, float] = {}
        for key, value in changes.items():
            if key.startswith("lr_") and key not in live:
                raise ConfigError(key, f"not a live setting of rule {self.run.config.rule!r}; "
                                       f"allowed: lr, {', '.join([*self.run.lr, *live])}")
            rates[live.get(key, key)] = value
        if rates:
            self.run.set_learning_rates(**rates)
        if phases is not None:
            self.run.set_phases(phases)
        rule = self.run.rule  # a population's rate is named by its setting (lr_apical)
        named = {pop: key for pop, key in rule.rate_settings(rule.args).items()}
        event["label"] = " · ".join([f"{named.get(k, k)} {v:g}" for k, v in changes.items()]
                                    + (["phases"] if phases is not None else []))[:100]
        # into the history at once (every backend's FrameBuffer keeps it: the exports' events);
        # the next frame says so, and the dashboard redraws the loss plot with its mark
        self.send("summary", {"t0": self.run.t, "t1": self.run.t, "events": [event],
                              "wall": time.time()})
        self.events_changed = True
        return {"learning_rates": dict(self.run.lr), "phases": self.run.config.phases}

    def _do_view(self, units: list[int] | None = None, seed_index: int | None = None) -> dict:
        if units is not None:
            self.units = units
        if seed_index is not None:
            self.seed_index = seed_index
        return {"view": {"units": self.units, "seed_index": self.seed_index}}

    def _do_checkpoint(self, name: str | None = None) -> dict[str, Any]:
        try:
            return {"checkpoint": self._checkpoint(auto=name is None, name=name)}
        except OSError as exc:
            if not _disk_full(exc):
                raise
            raise _Refused(f"checkpoint: the data disk is full ({exc.strerror or exc})") from None

    def _do_branch(self, **_: Any) -> dict[str, Any]:
        raise _Refused("action: branch is handled by the server")

    def _do_evaluate(self, steps: int | None = None) -> dict[str, Any]:
        losses = self._evaluate(steps)
        if not self._active():  # no frame is coming soon: fold it into the history now
            self.send("summary", {"t0": self.run.t, "t1": self.run.t, "test_loss": losses,
                                  "wall": time.time()})
            self.pending_test = None
        return {"test_loss": losses}

    # ---- stepping ---------------------------------------------------------------------------
    def _chunk(self) -> None:
        run = self.run
        target = run.config.steps
        if run.t >= target:
            self._finish()
            return
        began = time.perf_counter()
        if self.ff_to is not None and run.t < self.ff_to:
            k = int(min(self.ff_to - run.t, target - run.t, max(100, self.rate * FF_SECONDS)))
            live = False
        else:
            self.ff_to = None
            k = self._live_k(target - run.t)
            live = True
        tel, traced = self._advance(k, live)
        elapsed = time.perf_counter() - began
        self.computed += elapsed
        self.rate = pacing.ema_rate(self.rate, tel.steps, elapsed)
        if self.budget:
            self.budget = max(0, self.budget - tel.steps)
            if not self.budget and not self.playing:
                self.status = "paused"
        # CSV rows, frame and any checkpoint first, then the pacing wait: a command taken
        # during the wait (a checkpoint, parking) sees this chunk's rows already written
        self._after_chunk(tel, traced, live)
        if live:
            self.busy_rate = pacing.ema_rate(self.busy_rate, tel.steps,
                                             time.perf_counter() - began)
        self._pace(tel.steps, began)
        self.sps = pacing.ema_rate(self.sps, tel.steps, time.perf_counter() - began)

    def _live_k(self, left: int) -> int:
        if self.pace and self.narrate:
            k, self.pace_now = pacing.narrate_chunk(self.run.t, self.run.schedule, self.events,
                                                    self.pace, self.spec.frame_rate)
        elif self.pace:
            k, self.pace_now = max(1, round(self.pace / self.spec.frame_rate)), self.pace
        elif self.spf:
            k = self.spf
        else:
            now = time.perf_counter()
            self.frame_due = pacing.frame_due(self.frame_due, now, self.spec.frame_rate)
            k = pacing.max_speed_chunk(self.busy_rate, self.frame_due - now, MAX_LIVE_CHUNK,
                                       floor=0.5 / self.spec.frame_rate)
        if self.budget:
            k = min(k, self.budget)
        return max(1, min(k, left))

    def _pace(self, k: int, began: float) -> None:
        """Real-time pacing on a running schedule: each chunk is due k/pace after the previous
        one, so the frame work done after the wait does not slow the run below its pace (a
        schedule more than half a second behind, e.g. after a pause, restarts from now)."""
        if not self.pace or self.ff_to is not None:
            self.due = None
            return
        # the same schedule as max speed's frames: one chunk of k steps every k/pace s
        self.due = pacing.frame_due(self.due, began, (self.pace_now or self.pace) / k)
        wait = self.due - time.perf_counter()
        end = time.perf_counter() + wait
        while wait > 0 and not self.quit:  # stay responsive to commands while waiting
            if self.conn.poll(min(wait, 0.1)):
                self._drain(block=False)
            wait = end - time.perf_counter()

    def _advance(self, k: int, live: bool) -> tuple[Any, Any]:
        """Advance k steps: (telemetry of all k, the traced tail or None). Live chunks record
        traces for their last TRACE_TAIL steps only; the rest runs scalars-only."""
        from simulator.telemetry import concat

        run = self.run
        if not live:
            return run.advance(k, record="scalars"), None
        head = None
        if k > TRACE_TAIL:
            head = run.advance(k - TRACE_TAIL, record="scalars")
            if head.diverged_at is not None:
                return head, None
        tail = run.advance(min(k, TRACE_TAIL), record="traces")
        return (concat(head, tail) if head is not None else tail), tail

    def _after_chunk(self, tel: Any, traced: Any, live: bool) -> None:
        run = self.run
        try:
            self.csv.write(tel, run.seeds, run.config.steps)
        except OSError as exc:
            if not _disk_full(exc):
                raise
            self._pause_disk_full(exc)  # the rows wait in memory; written with the next ones
        every = self.spec.eval_every
        if every and tel.diverged_at is None and run.t // every > self.last_eval // every:
            self._evaluate(None)
        if tel.diverged_at is not None:
            self.status = run.status
        if live or tel.diverged_at is not None:
            self._send_frame(tel, traced)
        else:
            self._send_summary(tel)
        if tel.diverged_at is not None:
            self.quit = True
            return
        due = (run.t - self.last_ckpt >= self.spec.checkpoint_every
               or self.computed >= self.spec.checkpoint_seconds)
        if due and self.note is None:
            try:
                self._checkpoint(auto=True)
            except OSError as exc:
                if not _disk_full(exc):
                    raise
                self._pause_disk_full(exc)
        if run.t >= run.config.steps:
            self._finish()

    def _pause_disk_full(self, exc: OSError) -> None:
        """A full disk pauses the run; play tries again."""
        self.playing, self.budget, self.ff_to = False, 0, None
        if self.status == "running":
            self.status = "paused"
        self.note = (f"disk full at step {self.run.t} ({exc.strerror or exc}): paused; "
                     "free space, then press play")
        self.send("state", self.state())

    def _finish(self) -> None:
        self.status = "finished"
        self.playing = False
        self.quit = True
        try:
            self._checkpoint(auto=True)
        except OSError as exc:
            if not _disk_full(exc):
                raise
            self.note = f"finished without a final checkpoint: the disk is full ({exc.strerror})"

    def _evaluate(self, steps: int | None) -> list[float | None]:
        steps = steps or self.spec.eval_steps or self.run.config.test_steps
        values = self.run.evaluate(steps).tolist()
        self.last_eval = self.run.t
        self.pending_test = [v if math.isfinite(v) else None for v in values]
        return self.pending_test

    def _send_frame(self, tel: Any, traced: Any) -> None:
        from simulator.telemetry import make_frame

        frame = make_frame(tel, self.run, units=self.units, seed_index=self.seed_index)
        if traced is not None and traced is not tel:
            part = make_frame(traced, self.run, units=self.units, seed_index=self.seed_index,
                              matrices=False, max_points=1)
            for key in ("traces", "task", "snapshot"):
                if key in part:
                    frame[key] = part[key]
        self._stamp(frame)
        self.send("frame", frame)

    def _send_summary(self, tel: Any) -> None:
        """Scalars only (fast-forward): a few bins, no traces, no matrices."""
        from simulator.telemetry import binned

        run, t0 = self.run, tel.start
        summary: dict[str, Any] = {
            "t0": t0, "t1": t0 + tel.steps, "loss": binned(tel.loss, t0, 16),
            "diagnostics": {k: binned(v, t0, 16) for k, v in tel.diagnostics.items()},
            "alignment": None if tel.alignment is None else {
                **binned(tel.alignment, t0, 16),
                **({"compare": {k: binned(v, t0, 16) for k, v in tel.compare.items()}}
                   if tel.compare else {})},
            "phases": [list(s) for s in run.schedule.spans(t0, t0 + tel.steps)][-64:],
            "weight_norm": {name: float(w.flatten(1).norm(dim=1).mean())
                            for name, w in run.populations().items()},
            "status": run.status,
        }
        self._stamp(summary)
        self.send("summary", summary)

    def _stamp(self, frame: dict[str, Any]) -> None:
        frame["wall"] = time.time()
        frame["step"] = frame.get("t1", self.run.t)
        frame["run_status"] = self.status
        frame["steps_per_second"] = round(self.sps, 1)
        if self.events_changed:
            frame["events_changed"], self.events_changed = True, False
        if self.pending_test is not None:
            frame["test_loss"] = self.pending_test
            frame["test_step"] = self.last_eval
            self.pending_test = None

    def _checkpoint(self, auto: bool, name: str | None = None) -> str:
        """Write a checkpoint (the CSV first made complete up to this step). A full disk
        raises OSError and leaves no partial file."""
        import torch

        run = self.run
        self.csv.flush()
        name = name or f"auto-{run.t:010d}"
        path = self.dir / "checkpoints" / f"{name}.pt"
        tmp = path.with_suffix(".tmp")
        target = _WriteErrors(None)
        try:
            with open(tmp, "wb") as f:
                target.file = f
                torch.save(run.state_dict(), target)
            os.replace(tmp, path)
        except BaseException as exc:
            tmp.unlink(missing_ok=True)
            if isinstance(exc, RuntimeError) and target.error is not None:
                raise target.error from None  # torch's zip writer hides the OSError
            raise
        self.last_ckpt = run.t
        self.saved_step = run.t
        self.computed = 0.0
        self.send("checkpoint", {"name": name, "step": run.t, "path": str(path), "auto": auto,
                                 "csv_bytes": self.csv.size, "wall": time.time()})
        return name


_TERMINATE = threading.Event()


class _WriteErrors:
    """A file for torch.save that keeps the OSError of a failed write (torch reports it as a
    RuntimeError without the errno)."""

    def __init__(self, file: Any) -> None:
        self.file, self.error = file, None

    def write(self, data: bytes) -> int:
        try:
            return self.file.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.file.flush()


def _disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


class HistoryCSV:
    """The run's per-step scalars, appended to ``scalars.csv`` within a byte budget.

    Columns: step, seed, train_loss, the diagnostics (alignment...), block. At full
    resolution each row is one step of one seed (block = 1). Once the file would pass half
    the budget, each row is the mean over ``block`` consecutive steps of one seed, starting
    at ``step``: blocks are aligned to multiples of a power of two, chosen so that the steps
    left until the run's target fit in the rest of the budget, and doubled whenever the
    estimate falls short. A block cut by a checkpoint or the end of the run holds fewer steps
    (its ``block`` says how many), so the mean over any range of whole rows, weighted by
    ``block``, is the full-resolution mean. A row never takes the file past the budget (rows
    that would are dropped and counted in ``dropped_steps``; a right estimate drops none).
    Writes are whole or not at all: a failed append (a full disk) is cut back, its bytes kept
    and written first by the next append. ``budget`` 0: no limit (always full resolution).
    A file from before the block column keeps full resolution without a limit.
    """

    def __init__(self, path: Path, budget: int) -> None:
        self.path, self.budget = path, int(budget)
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.size = os.fstat(self.fd).st_size
        self.cols: list[str] | None = None   # value columns of the header (after step, seed)
        self.blocked = True                  # the file has the block column
        self.block = 1
        self.row_bytes = 0.0                 # widest average row seen, bytes
        self.acc: tuple[int, int, Any, int] | None = None  # (start, block id, sums, count)
        self.pending = b""
        self.dropped_steps = 0
        self.seeds: list[int] = []
        if self.size:
            self._read_back()

    def _read_back(self) -> None:
        """Header and the last row of an existing file (a resumed run)."""
        with open(self.path, "rb") as f:
            header = f.readline().decode("utf-8", "replace").strip().split(",")
            f.seek(max(0, self.size - 4096))
            last = f.read().splitlines()[-1:] or [b""]
        self.blocked = header[-1:] == ["block"]
        self.cols = header[2:-1] if self.blocked else header[2:]
        if not self.blocked:
            self.budget = 0
            return
        with contextlib.suppress(ValueError, IndexError):
            count = int(float(last[0].split(b",")[-1]))
            if count > 1 or self.size >= self.budget // 2:
                self.block = max(2, 1 << max(0, count - 1).bit_length())
        self.row_bytes = float(len(last[0]) + 1)

    # ---- writing ---------------------------------------------------------------------------
    def write(self, tel: Any, seeds: list[int], target: int) -> None:
        import numpy as np

        from simulator.telemetry import scalar_history

        cols, rows = scalar_history(tel, seeds)
        self.seeds = list(seeds)
        header = b""
        if self.cols is None:
            self.cols = cols[2:]
            if self.size == 0:
                header = (",".join([*cols, "block"]) + "\n").encode()
        if cols[2:] != self.cols:  # keep the header's columns
            index = {c: i for i, c in enumerate(cols)}
            rows = np.stack([rows[:, 0], rows[:, 1], *[
                rows[:, index[c]] if c in index else np.full(len(rows), np.nan)
                for c in self.cols]], 1)
        k, S = tel.steps, len(seeds)
        m = 0  # steps written at full resolution
        if self.block == 1:
            text = self._format(rows, np.ones(len(rows)) if self.blocked else None)
            room = self.budget // 2 - self.size - len(header) - len(self.pending)
            self._note_width(text, len(rows))
            if not self.budget or len(text) <= room:
                self._append(header + text)
                return
            # the whole steps that still fit at full resolution, then blocks from there on
            ends = np.flatnonzero(np.frombuffer(text, dtype=np.uint8) == 10)
            m = int(np.searchsorted(ends, room - 1, side="right")) // S
            if m:
                self._append(header + text[: ends[m * S - 1] + 1])
                header = b""
        values = rows[m * S:, 2:].reshape(k - m, S, -1)
        if k - m == 0:
            return
        self._choose_block(tel.start + m, target, S, len(header))
        self._accumulate(tel.start + m, values, seeds, header)

    def _choose_block(self, t: int, target: int, seeds: int, extra: int) -> None:
        """The smallest power-of-two block (>= 2, never smaller than before) with which the
        steps left fit in the budget left."""
        left = max(1, target - t)
        room = self.budget - self.size - extra - len(self.pending) - 2 * seeds * self.row_bytes
        need = left * seeds * self.row_bytes * 1.25 / max(room, 1.0)
        block = max(2, self.block, 1 << max(0, math.ceil(need) - 1).bit_length())
        if block != self.block:
            self._flush_acc()
            self.block = block

    def _accumulate(self, t0: int, values: Any, seeds: list[int], header: bytes) -> None:
        import numpy as np

        k = values.shape[0]
        steps = t0 + np.arange(k)
        ids = steps // self.block
        starts = np.concatenate([[0], np.flatnonzero(np.diff(ids)) + 1])
        sums = np.add.reduceat(values, starts, axis=0)
        counts = np.diff(np.concatenate([starts, [k]]))
        first = steps[starts]
        if self.acc is not None and self.acc[1] == ids[0]:
            sums[0] += self.acc[2]
            counts[0] += self.acc[3]
            first[0] = self.acc[0]
            self.acc = None
        elif self.acc is not None:
            self._flush_acc()
        if (steps[-1] + 1) % self.block:  # the last block is not complete yet: carry it
            self.acc = (int(first[-1]), int(ids[-1]), sums[-1].copy(), int(counts[-1]))
            sums, counts, first = sums[:-1], counts[:-1], first[:-1]
        self._emit(first, sums, counts, seeds, header)

    def _emit(self, first: Any, sums: Any, counts: Any, seeds: list[int], header: bytes = b"") -> None:
        import numpy as np

        if len(counts) == 0:
            if header:
                self._append(header)
            return
        G, S, C = sums.shape
        means = sums / counts[:, None, None]
        rows = np.concatenate([np.repeat(first, S)[:, None].astype(np.float64),
                               np.tile(np.asarray(seeds, dtype=np.float64), G)[:, None],
                               means.reshape(G * S, C)], 1)
        text = self._format(rows, np.repeat(counts, S))
        if self.size + len(header) + len(text) + len(self.pending) > self.budget:
            self.dropped_steps += int(counts.sum())
            self.block *= 2  # the estimate fell short: coarser from here on
            text = b""
        else:
            self._note_width(text, len(rows))
        self._append(header + text)

    def _flush_acc(self) -> None:
        if self.acc is not None:
            import numpy as np

            start, _, sums, count = self.acc
            self.acc = None
            seeds = self.seeds
            self._emit(np.array([start]), sums[None], np.array([count]), seeds)

    def _format(self, rows: Any, blocks: Any) -> bytes:
        import numpy as np

        if blocks is not None:
            rows = np.concatenate([rows, np.asarray(blocks, dtype=np.float64)[:, None]], 1)
        line = "%d,%d" + ",%.7g" * (rows.shape[1] - 2 - (blocks is not None)) + (
            ",%d\n" if blocks is not None else "\n")
        return ((line * rows.shape[0]) % tuple(rows.ravel().tolist())).encode()

    def _note_width(self, text: bytes, nrows: int) -> None:
        if nrows:
            self.row_bytes = max(self.row_bytes, len(text) / nrows)

    def _append(self, data: bytes) -> None:
        data = self.pending + data
        if not data:
            return
        written = 0
        try:
            while written < len(data):
                written += os.write(self.fd, data[written:])
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, self.size)
            self.pending = data
            raise
        self.size += len(data)
        self.pending = b""

    def flush(self) -> None:
        """Write the block in progress (cut short) and anything held back."""
        self._flush_acc()
        self._append(b"")

    def close(self) -> None:
        try:
            self.flush()
        finally:
            os.close(self.fd)


class _Refused(Exception):
    """A command that does not apply in the current state (reported as a conflict)."""
