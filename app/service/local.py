"""The embedded default backend: each run in its own worker process, frames over a pipe into
a per-run :class:`app.service.framebuffer.FrameBuffer`, runs persisted in SQLite + files.

Process model: the server process holds one :class:`_Handle` per run. A live run has a worker
process (forked from multiprocessing's fork server, which imported torch once: see
worker_context; one torch thread) and a duplex pipe; a reader thread
in the server receives the worker's frames, state changes, checkpoints and replies. Commands
are validated here first (bad params never reach the worker), then sent over the pipe; the
caller waits for the worker's reply (it drains commands between chunks, ~0.1 s).

A worker that raises reports it and exits: its run is "failed: <reason>". A worker killed by a
signal (SIGKILL, SIGSEGV, or SIGTERM, after which it checkpoints first) closes its pipe: the
reader thread sees EOF and the supervisor restarts the run from its latest checkpoint after a
backoff (``restart_backoff`` s, doubling), keeping its slot meanwhile; after ``restart_limit``
restarts within ``restart_window`` s the next kill ends it "failed: <reason> (resumable)".
Workers checkpoint every ``checkpoint_every`` steps or ``checkpoint_seconds`` of compute.
Nothing else is affected. A server restart marks runs that had a worker "interrupted";
``resume`` restarts them from their latest checkpoint (the CSV is cut back to that point, the
decimated history restored from the snapshot taken with that checkpoint; a checkpoint that
does not verify is skipped for the one before).

Release. The supervisor thread parks a run whose worker sits idle: paused or ready for
``idle_release`` s (since the last control action), or running with nobody polling it (frames,
get, history) that long. Parking checkpoints, ends the worker and sets status "parked"; parked
runs hold no slot. ``resume`` (or any action that needs a worker) restarts it from that
checkpoint, bit for bit; a poll restarts a run that was parked while running. Frame buffers
of runs without a worker go to a small LRU (``history_cache``); the rest are read back from
their snapshot on disk when asked, so server memory does not grow with finished runs.

Storage: creates are admitted against the disk (``--max-disk`` and the live runs' budgets:
:func:`app.service.store.run_disk_need`); a damaged index or a full disk leaves the server
read-only (``read_only`` says why) with every run still listed and readable.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import secrets
import shutil
import signal
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.service.admission import admit, cost_of
from app.service.base import (
    PARKED,
    BackendSettings,
    Conflict,
    InsufficientStorage,
    RunNotFound,
    ServiceError,
    Unavailable,
    reply_or_raise,
)
from app.service.core import (
    REPLY_TIMEOUT,
    ServiceCore,
    backend_settings,
    fold_progress,
    history_args,
    idle_seconds,
    int_param,
    run_info,
    task_meta,
)
from app.service.framebuffer import FrameBuffer
from app.service.status import Kind, Status
from app.service.store import (
    DiskFull,
    Store,
    StoreDamaged,
    default_max_disk,
    history_of,
    is_disk_full,
    repair_hint,
    run_disk_need,
    size_text,
)
from app.service.worker import WorkerSpec, check_create
from app.service.worker import main as worker_main
from simulator.config import RunConfig
from simulator.settings import ConfigError, quote

log = logging.getLogger("app.service")

STORE_EVERY = 2.0      # seconds between progress writes to SQLite per run
SUPERVISE_EVERY = 0.2  # seconds between the supervisor's looks at idle and killed workers
_ENV_LOCK = threading.Lock()


@dataclass
class _Handle:
    """One run as the server knows it."""

    id: str
    config: dict[str, Any]
    created: float
    parent: str | None
    status: str
    step: int = 0
    info: dict[str, Any] = field(default_factory=dict)
    checkpoints: list[str] = field(default_factory=list)
    process: Any = None
    conn: Any = None
    reader: threading.Thread | None = None
    buffer: FrameBuffer | None = None
    send_lock: threading.Lock = field(default_factory=threading.Lock)
    pending: dict[int, list[Any]] = field(default_factory=dict)
    held: list[tuple[list[Any], Any]] = field(default_factory=list)  # replies awaiting state
    next_cmd: int = 0
    clean_exit: bool = False
    fail_reason: str | None = None
    deleting: bool = False
    last_store: float = 0.0
    meta: dict[str, Any] | None = None
    unreadable: str | None = None   # why its record cannot be read (listed, not runnable)
    touched: float = field(default_factory=time.monotonic)  # last control action (or start)
    polled: float = 0.0          # last frames / get / history (monotonic)
    live_status: str = ""        # the last of ACTIVE_STATUSES it had (what a restart returns to)
    parking: bool = False        # told to checkpoint and exit as "parked"
    up: bool = False             # its worker has said hello (a starting one is never idle)
    kills: list[float] = field(default_factory=list)  # when its workers were killed (monotonic)
    restart_at: float | None = None  # an automatic restart is due then (keeps its slot)

    def alive(self) -> bool:
        return self.process is not None


class LocalBackend(ServiceCore):
    """Runs in local worker processes; see the module docstring."""

    def __init__(self, settings: BackendSettings | None = None, **overrides: Any) -> None:
        self.settings = backend_settings(settings, overrides)
        self._ctx = worker_context()
        self._lock = threading.RLock()
        self._runs: dict[str, _Handle] = {}
        self._cache: OrderedDict[str, FrameBuffer] = OrderedDict()  # buffers of runs w/o worker
        self._closed = False
        self._stopping = threading.Event()
        #: why the server refuses writes (creates, resumes, branches), None when it does not:
        #: a full disk (re-checked at each create) or a damaged index (until repaired)
        self.read_only: str | None = None
        self._disk_full = False
        self.store = Store(self.settings.data_dir)
        if self.store.damaged:
            self.read_only = (f"storage: {self.store.damaged}; runs are listed from their "
                              f"run.json files, nothing is written; repair: "
                              f"{repair_hint(self.settings.data_dir)}")
            log.error("%s", self.read_only)
        elif self.store.full:
            self._set_disk_full(self.store.full)
        self._load()
        used = self.store.usage()
        self.max_disk = (self.settings.max_disk if self.settings.max_disk is not None
                         else default_max_disk(self.settings.data_dir, used))
        if self.read_only is None:
            self._probe_disk()
        if self._disk_full:
            log.error("%s", self.read_only)
        self._supervisor = threading.Thread(target=self._supervise, daemon=True,
                                            name="plasticity-supervisor")
        self._supervisor.start()
        if self._ctx.get_start_method() == "forkserver":  # its imports, before the first run
            threading.Thread(target=warm_forkserver, daemon=True, name="plasticity-warm").start()

    # ---- startup -------------------------------------------------------------------------
    def _load(self) -> None:
        """Every past run; those that had a worker are now interrupted. Unreadable records
        are listed with their reason; a full disk leaves the server read-only."""
        with contextlib.suppress(OSError):
            self.store.sweep_trash()
        adopted, unreadable = 0, 0
        for row in self.store.load_runs():
            h = _Handle(row["id"], row["config"], row["created"], row["parent"], row["status"],
                        row["step"], row["info"])
            if row.get("unreadable") is None and not self.store.run_dir(h.id).is_dir():
                row["unreadable"] = f"its folder {self.store.run_dir(h.id)} is gone"
            if row.get("unreadable"):
                h.unreadable = row["unreadable"]
                h.status = f"unreadable: {h.unreadable}"
                unreadable += 1
                self._runs[h.id] = h
                continue
            adopted += bool(row.get("adopted"))
            h.checkpoints = [c["name"] for c in (row["checkpoints"] if "checkpoints" in row
                                                   else self.store.checkpoints(h.id))]
            if Status.parse(h.status).is_active:
                h.status = Kind.INTERRUPTED.value
                h.info["steps_per_second"] = 0.0
                try:
                    self.store.update_run(h.id, status=h.status, info=h.info)
                except DiskFull as exc:
                    self._set_disk_full(str(exc))
                except StoreDamaged:
                    pass
            self._runs[h.id] = h
        if adopted:
            log.warning("indexed %d run folder(s) the database %s did not list, from their %s",
                        adopted, self.store.db_path, "run.json")
        if unreadable and not self.store.damaged:
            log.error("%d run(s) in %s are unreadable (listed with the reason); repair: %s",
                      unreadable, self.settings.data_dir, repair_hint(self.settings.data_dir))

    def _set_disk_full(self, detail: str) -> None:
        self._disk_full = True
        self.read_only = (f"storage: the data disk is full ({detail[:200]}); the server is "
                          "read-only: delete runs or free space on that disk")

    def _probe_disk(self) -> None:
        """Read-only while the data disk takes no write; writable again once it does."""
        reason = self.store.probe()
        if reason is not None:
            self._set_disk_full(reason)
        elif self._disk_full and self.store.reopen():
            self._disk_full, self.read_only = False, None
            log.warning("the data disk takes writes again: the server is writable")

    def _check_writable(self) -> None:
        if self._disk_full:
            self._probe_disk()
        if self.read_only is not None:
            if self._disk_full:
                raise InsufficientStorage(self.read_only, field="storage")
            raise Unavailable(self.read_only, field="storage")

    def _check_disk(self, config: dict[str, Any]) -> None:
        """Refuse a run that would not fit under --max-disk or on the disk as it is now: what
        the data directory holds, plus what the live runs may still write (their budgets),
        plus this run's budget."""
        s = self.settings
        need = run_disk_need(config, s.history_budget, s.keep_checkpoints)
        what = (f"this run may need about {size_text(need)} on disk (history up to "
                f"{size_text(s.history_budget)}, {s.keep_checkpoints + 2} checkpoints)")
        if need > self.max_disk:  # could never fit: a setting to change (422)
            raise ConfigError("max_disk", f"{what}; this server allows {size_text(self.max_disk)} "
                              "in all: lower steps, seeds or n, or raise --max-disk")
        used = self.store.usage()
        live = [h for h in self._runs.values() if h.alive()]
        reserved = sum(max(0, run_disk_need(h.config, s.history_budget, s.keep_checkpoints)
                           - self.store.usage(h.id)) for h in live)
        if used + reserved + need > self.max_disk:
            raise InsufficientStorage(
                f"max_disk: {what}; {size_text(used)} are used and {size_text(reserved)} "
                "reserved by live runs "
                f"of the {size_text(self.max_disk)} this server allows in {s.data_dir}: "
                "delete runs, lower steps/seeds/n, or raise --max-disk", field="max_disk")
        free = shutil.disk_usage(s.data_dir).free
        if reserved + need > free:
            raise InsufficientStorage(
                f"disk: this run may need about {size_text(need)} and live runs "
                f"{size_text(reserved)} more, but {s.data_dir} has {size_text(free)} free: "
                "delete runs or free space", field="disk")

    # ---- runs ----------------------------------------------------------------------------
    def create(self, config: dict[str, Any], *, start: bool = True, view: dict | None = None,
               parent: str | None = None) -> str:
        return self._create(config, start=start, view=view, parent=parent, init=None)

    def _create(self, config: dict[str, Any], *, start: bool, view: dict | None,
                parent: str | None, init: dict[str, Any] | None) -> str:
        cfg, checked_view = check_create(config, view, parent)
        with self._lock:
            self._check_open()
            self._check_limit()
            self._check_writable()
            admit(cfg, self.settings, self._active_memory())  # memory and work first: the
            self._check_disk(cfg.to_dict())                   # likelier and clearer refusal
            run_id = self._new_id()
            status = "running" if start else "ready"
            h = _Handle(run_id, cfg.to_dict(), time.time(), parent, status,
                        step=0, info={"view": checked_view})
            if init and init.get("step"):
                h.step = int(init["step"])
            try:
                self.store.insert_run(run_id, h.config, status, parent, h.info, h.created)
                if init and init.get("branch"):
                    init = self._adopt_checkpoint(h, init)
                h.buffer = self._new_buffer()
                self._spawn(h, start=start, init=init)
            except BaseException as exc:  # nothing of it stays behind
                self.store.forget_run(run_id)
                if is_disk_full(exc):
                    self._set_disk_full(str(exc))
                    raise InsufficientStorage(f"storage: the data disk is full, run not created "
                                              f"({str(exc)[:200]})", field="storage") from None
                raise
            self._runs[run_id] = h
        return run_id

    def _adopt_checkpoint(self, h: _Handle, init: dict[str, Any]) -> dict[str, Any]:
        """A branch starts from its own copy of the parent's checkpoint ("origin"), so the
        parent may prune its own, and the branch can resume from it after a restart."""
        source = Path(init["checkpoint"])
        target = self.store.run_dir(h.id) / "checkpoints" / "origin.pt"
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, target)
        except OSError:
            shutil.copyfile(source, target)
        step = int(init.get("step", 0))
        self.store.add_checkpoint(h.id, "origin", step, str(target), False, 0,
                                  self.settings.keep_checkpoints)
        h.checkpoints = ["origin"]
        return {**init, "checkpoint": str(target)}

    def _new_id(self) -> str:
        while True:
            run_id = secrets.token_hex(4)
            if run_id not in self._runs:
                return run_id

    def _check_open(self) -> None:
        if self._closed:
            raise Conflict("backend: shut down")

    def _check_limit(self) -> None:
        s = self.settings
        active = sum(1 for h in self._runs.values() if h.alive() or h.restart_at is not None)
        if active >= s.max_runs:
            raise self._limit_reached(active)

    def _active_memory(self) -> list[int]:
        """Estimated peak memory (bytes) of each run that has a worker."""
        return [(self._meta(h)["cost"] or {}).get("memory_bytes", 0)
                for h in self._runs.values() if h.alive()]

    def _new_buffer(self, first_seq: int = 0) -> FrameBuffer:
        s = self.settings
        return FrameBuffer(live_frames=s.live_frames, detail_frames=min(100, s.live_frames),
                           bins=s.history_bins, first_seq=first_seq)

    def _spawn(self, h: _Handle, *, start: bool, init: dict[str, Any] | None) -> None:
        s = self.settings
        spec = WorkerSpec(run_id=h.id, config=h.config, run_dir=str(self.store.run_dir(h.id)),
                          start=start, view=h.info.get("view") or {}, init=init,
                          eval_every=s.eval_every, eval_steps=s.eval_steps,
                          checkpoint_every=s.checkpoint_every,
                          checkpoint_seconds=s.checkpoint_seconds, frame_rate=s.frame_rate,
                          steps_per_frame=s.steps_per_frame, history_budget=s.history_budget,
                          pace=h.info.get("pace"), narrate=bool(h.info.get("narrate")))
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(target=worker_main, args=(spec, child_conn), daemon=True,
                                    name=f"plasticity-run-{h.id}")
        with _ENV_LOCK, _env(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1"):
            process.start()
        child_conn.close()  # so that the worker's death reads as EOF here
        h.process, h.conn = process, parent_conn
        h.clean_exit, h.fail_reason, h.parking, h.up = False, None, False, False
        h.reader = threading.Thread(target=self._read, args=(h,), daemon=True,
                                    name=f"plasticity-reader-{h.id}")
        h.reader.start()

    def list_runs(self) -> list[dict[str, Any]]:
        with self._lock:
            handles = list(self._runs.values())
        return [self._info(h) for h in sorted(handles, key=lambda h: -h.created)]

    def get(self, run_id: str) -> dict[str, Any]:
        return self._info(self._polled(self._handle(run_id)))

    def _polled(self, h: _Handle) -> _Handle:
        """Someone watches the run: it is not idle; a run parked while running restarts."""
        h.polled = time.monotonic()
        if h.status == PARKED and h.info.get("parked_from") == "running" and not h.alive():
            with contextlib.suppress(ServiceError):  # no free slot: it stays parked for now
                self._restart(h, start=True)
        return h

    def _handle(self, run_id: Any) -> _Handle:
        h = self._runs.get(run_id) if isinstance(run_id, str) else None
        if h is None:
            raise RunNotFound(str(run_id))
        return h

    def _info(self, h: _Handle) -> dict[str, Any]:
        return run_info(h.id, h.config, h.status, h.step, created=h.created, parent=h.parent,
                        facts=h.info, checkpoints=h.checkpoints,
                        cursor=h.buffer.cursor if h.buffer is not None else h.info.get("cursor", -1),
                        alive=h.alive(), pid=h.process.pid if h.process is not None else None,
                        meta=self._meta(h))

    def _meta(self, h: _Handle) -> dict[str, Any]:
        if h.meta is None:
            h.meta = {**task_meta(h.config), "cost": cost_of(h.config)}
        return h.meta

    # ---- telemetry -------------------------------------------------------------------------
    def frames(self, run_id: str, after: int = -1) -> tuple[list[dict[str, Any]], int]:
        h = self._polled(self._handle(run_id))
        after = int_param(after, "after", -1, 2**62)
        return self._buffer(h).since(after)

    def history(self, run_id: str, max_points: int = 500, start: int | None = None,
                stop: int | None = None) -> dict[str, Any]:
        h = self._polled(self._handle(run_id))
        max_points, start, stop = history_args(max_points, start, stop)
        out = self._buffer(h).history(max_points, start, stop)
        out["run"] = h.id
        return out

    def _buffer(self, h: _Handle) -> FrameBuffer:
        """The run's buffer while it has a worker; else from the LRU of buffers of runs without
        one, or its saved history (loaded on demand, then cached)."""
        buf = h.buffer
        if buf is not None:
            return buf
        with self._lock:
            if h.buffer is not None:
                return h.buffer
            buf = self._cache.get(h.id)
            if buf is None:
                buf = self._load_buffer(h, None)
                self._cache[h.id] = buf
                self._trim_cache()
            else:
                self._cache.move_to_end(h.id)
            return buf

    def _retire_buffer(self, h: _Handle) -> None:
        """The worker is gone: its buffer joins the LRU (the snapshot on disk has it all)."""
        with self._lock:
            if h.buffer is not None and h.id in self._runs:
                self._cache[h.id] = h.buffer
                self._cache.move_to_end(h.id)
            h.buffer = None
            self._trim_cache()

    def _trim_cache(self) -> None:
        while len(self._cache) > max(0, self.settings.history_cache):
            self._cache.popitem(last=False)

    def buffers_in_memory(self) -> int:
        """Frame buffers held now: one per run with a worker plus the LRU (for tests, benches)."""
        with self._lock:
            return sum(h.buffer is not None for h in self._runs.values()) + len(self._cache)

    def _load_buffer(self, h: _Handle, checkpoint: dict[str, Any] | None) -> FrameBuffer:
        paths = [history_of(Path(checkpoint["path"]))] if checkpoint else [
            self.store.history_path(h.id)]
        if checkpoint is None:
            latest = self.store.checkpoint(h.id)
            if latest:
                paths.append(history_of(Path(latest["path"])))
        s = self.settings
        for path in paths:
            arrays = self.store.load_history(path)
            if arrays is not None:
                try:
                    buf = FrameBuffer.restore(arrays, s.live_frames, min(100, s.live_frames))
                    buf.continue_from(int(h.info.get("cursor", -1)) + 1)
                    return buf
                except (KeyError, ValueError, TypeError) as exc:
                    log.warning("run %s: unreadable history %s: %s", h.id, path, exc)
        return self._new_buffer(first_seq=int(h.info.get("cursor", -1)) + 1)

    # ---- control (the path itself: ServiceCore.control) ---------------------------------
    def _control_run(self, run_id: str) -> _Handle:
        h = self._handle(run_id)
        if h.unreadable is not None:
            raise Conflict(f"action: run {h.id} is unreadable ({h.unreadable[:200]}); repair: "
                           f"{repair_hint(self.settings.data_dir)}", field="action")
        return h

    def _config_of(self, h: _Handle) -> dict[str, Any]:
        return h.config

    def _id_of(self, h: _Handle) -> str:
        return h.id

    def _status_of(self, h: _Handle) -> str:
        return h.status

    def _touch(self, h: _Handle) -> _Handle:
        with h.send_lock:  # against _park: it parks only what stayed untouched
            h.touched = time.monotonic()
            parking = h.parking
        if parking and h.reader is not None:  # being parked right now: let it finish
            h.reader.join(REPLY_TIMEOUT)
        return h

    def _has_worker(self, h: _Handle) -> bool:
        return h.alive()

    def _restart_due(self, h: _Handle) -> bool:
        return h.restart_at is not None

    def _stop_without_worker(self, h: _Handle) -> dict[str, Any]:
        h.restart_at = None
        self._set_status(h, Kind.STOPPED)
        return {"ok": True, "status": h.status, "step": h.step}

    def _resume(self, h: _Handle) -> dict[str, Any]:
        return self._restart(h, start=True)

    def _pause_parked(self, h: _Handle) -> dict[str, Any]:
        if h.info.get("parked_from") == Kind.RUNNING:
            h.info["parked_from"] = Kind.PAUSED.value
            self._set_status(h, h.status)
        return {"ok": True, "status": h.status, "step": h.step}

    def _wake(self, h: _Handle) -> _Handle:
        self._restart(h, start=h.restart_at is not None and h.live_status == Kind.RUNNING)
        return h

    def _deliver(self, h: _Handle, action: str, params: dict[str, Any],
                 timeout: float) -> dict[str, Any]:
        result = self._send(h, action, params, timeout)
        if action == "view" and "view" in result:
            h.info["view"] = result["view"]
        return result

    def _send(self, h: _Handle, action: str, params: dict[str, Any],
              timeout: float = REPLY_TIMEOUT) -> dict[str, Any]:
        event, slot = threading.Event(), [None]
        with h.send_lock:
            if not h.alive():
                raise Conflict(f"action: run {h.id} is {h.status}", field="action")
            cmd_id = h.next_cmd = h.next_cmd + 1
            h.pending[cmd_id] = [event, slot]
            try:
                h.conn.send(("cmd", cmd_id, action, params))
            except (OSError, ValueError) as exc:
                h.pending.pop(cmd_id, None)
                raise Conflict(f"action: run {h.id}'s worker is gone ({exc})", field="action") from None
        if not event.wait(timeout):
            h.pending.pop(cmd_id, None)
            raise Unavailable(f"action: run {h.id}'s worker did not answer {action} within "
                              f"{timeout:.0f} s", field="action")
        reply = slot[0] or {}
        return reply_or_raise(reply)

    def _admit_branch(self, config: dict[str, Any]) -> None:
        with self._lock:  # refuse before writing anything (the parent's checkpoint included)
            self._check_open()
            self._check_limit()
            self._check_writable()
            admit(RunConfig.from_dict(config), self.settings, self._active_memory())
            self._check_disk(config)

    def _create_branch(self, h: _Handle, config: dict[str, Any], point: dict[str, Any]) -> str:
        return self._create(config, start=True, view=h.info.get("view") or None, parent=h.id,
                            init={"checkpoint": point["path"], "branch": True,
                                  "step": point["step"]})

    def _drop_branch_point(self, h: _Handle, point: dict[str, Any]) -> None:
        with contextlib.suppress(Exception):
            self.store.drop_checkpoint(h.id, point["name"])
            h.checkpoints = [c["name"] for c in self.store.checkpoints(h.id)]

    def _branch_point(self, h: _Handle, name: str | None) -> tuple[dict[str, Any], bool]:
        """The checkpoint to branch from, and whether it was made for this branch only."""
        if name is not None:
            ck = self.store.checkpoint(h.id, name)
            if ck is None:
                have = ", ".join(h.checkpoints) or "none"
                raise ConfigError("checkpoint",
                                  f"run {h.id} has no checkpoint {quote(name)}; have: {have}")
            return ck, False
        if h.alive():  # a checkpoint of this very moment, dropped once the branch has it
            with contextlib.suppress(Conflict):  # it may just have finished: use the last one
                reply = self._send(h, "checkpoint", {"name": f"branch-{secrets.token_hex(3)}"})
                ck = self.store.checkpoint(h.id, reply["checkpoint"])
                if ck is not None:
                    return ck, True
        ck = self.store.intact_checkpoint(h.id)
        if ck is None:
            raise Conflict(f"checkpoint: run {h.id} has no checkpoint to branch from",
                           field="checkpoint")
        return ck, False

    def _restart(self, h: _Handle, *, start: bool) -> dict[str, Any]:
        """A new worker for a run without one, from its latest checkpoint (or from scratch),
        playing or not. An automatic restart that is due keeps the slot it holds."""
        with self._lock:
            self._check_open()
            if h.alive():
                return {"ok": True, "status": h.status, "step": h.step, "checkpoint": None}
            if h.restart_at is None:
                self._check_limit()
            self._check_writable()
            if self._meta(h)["cost"] is not None:
                admit(RunConfig.from_dict(dict(h.config)), self.settings, self._active_memory())
            h.restart_at = None
            self._cache.pop(h.id, None)
            ck = self.store.intact_checkpoint(h.id)
            next_seq = max(int(h.info.get("cursor", -1)),
                           h.buffer.cursor if h.buffer is not None else -1) + 1
            if ck is not None:
                self.store.truncate_csv(h.id, int(ck["csv_bytes"]))
                h.buffer = self._load_buffer(h, ck)
                h.step = int(ck["step"])
            else:
                self.store.truncate_csv(h.id, 0)
                h.buffer = self._new_buffer()
                h.step = 0
            h.buffer.continue_from(next_seq)
            h.status = "running" if start else ("ready" if h.step == 0 else "paused")
            h.info.pop("parked_from", None)
            h.touched = time.monotonic()
            self.store.update_run(h.id, status=h.status, step=h.step, info=h.info)
            self._spawn(h, start=start, init={"checkpoint": ck["path"]} if ck else None)
        return {"ok": True, "status": h.status, "step": h.step,
                "checkpoint": ck["name"] if ck else None}

    # ---- the reader thread ---------------------------------------------------------------
    def _read(self, h: _Handle) -> None:
        conn = h.conn
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                break
            except Exception as exc:  # an unpicklable message: report, keep reading
                log.exception("run %s: bad message from worker: %s", h.id, exc)
                continue
            try:
                self._dispatch(h, msg)
            except Exception:
                log.exception("run %s: error handling %s", h.id, msg[0] if msg else msg)
        self._worker_gone(h)

    def _dispatch(self, h: _Handle, msg: tuple[Any, ...]) -> None:
        kind = msg[0]
        if kind == "frame":
            frame = msg[1]
            frame["run"] = h.id
            self._progress(h, frame)
            h.buffer.push(frame)
            self._maybe_store(h)
        elif kind == "summary":
            self._progress(h, msg[1])
            h.buffer.fold(msg[1])
            self._maybe_store(h)
        elif kind in ("hello", "state"):
            if kind == "hello":  # idle time counts from when the worker is up
                h.touched, h.up = time.monotonic(), True
            self._state(h, msg[1])
            _answer(h.held)
        elif kind == "checkpoint":
            self._checkpointed(h, msg[1])
        elif kind == "reply":  # the worker sends its new state right after: answer with it,
            waiter = h.pending.pop(msg[1], None)  # so a caller then reads the new state
            if waiter is not None:
                h.held.append((waiter, msg[2]))
        elif kind == "bye":
            h.clean_exit = True
            self._state(h, msg[1])
            _answer(h.held)
        elif kind == "failed":
            h.fail_reason = msg[1]
            log.error("run %s failed: %s\n%s", h.id, msg[1], msg[2] if len(msg) > 2 else "")

    def _progress(self, h: _Handle, frame: dict[str, Any]) -> None:
        h.step = fold_progress(h.info, frame, h.step)
        status = frame.get("run_status")
        if status and status != h.status:
            self._set_status(h, status)

    def _state(self, h: _Handle, state: dict[str, Any]) -> None:
        if state.get("status") == PARKED:  # parked once the worker has gone, not before
            state = {k: v for k, v in state.items() if k != "status"}
        for key in ("steps_per_second", "steps_per_frame", "learning_rates", "phases", "view",
                    "pace", "narrate", "fast_forward_to", "note", "parked_from"):
            if key in state:
                h.info[key] = state[key]
        if state.get("config"):
            h.config = state["config"]
        h.step = int(state.get("step", h.step))
        if state.get("status") and state["status"] != h.status:
            self._set_status(h, state["status"])
        else:
            self._maybe_store(h, force=True)

    def _set_status(self, h: _Handle, status: str) -> None:
        h.status = str(status)
        if Status.parse(h.status).is_active:
            h.live_status = h.status
        if h.buffer is not None:
            h.info["cursor"] = h.buffer.cursor
        try:
            self.store.update_run(h.id, status=status, step=h.step, config=h.config, info=h.info)
        except DiskFull as exc:  # known in memory; written with the next progress write
            log.warning("run %s: status %r not stored: %s", h.id, status, exc)
        h.last_store = time.monotonic()

    def _maybe_store(self, h: _Handle, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - h.last_store > STORE_EVERY:
            h.last_store = now
            if h.buffer is not None:
                h.info["cursor"] = h.buffer.cursor
            try:
                self.store.update_run(h.id, step=h.step, info=h.info, config=h.config)
            except DiskFull as exc:  # progress is written again later; the run goes on
                log.warning("run %s: progress not stored: %s", h.id, exc)

    def _checkpointed(self, h: _Handle, ck: dict[str, Any]) -> None:
        """The worker wrote a checkpoint (in its run folder): index it, and save the history
        as of that step. On a full disk the file stays unindexed; the next checkpoint that is
        indexed removes it."""
        path = self.store.run_dir(h.id) / "checkpoints" / Path(ck["path"]).name
        try:
            if h.buffer is not None:
                self.store.save_history(history_of(path), h.buffer.snapshot())
            self.store.add_checkpoint(h.id, ck["name"], int(ck["step"]), path, bool(ck["auto"]),
                                      int(ck["csv_bytes"]), self.settings.keep_checkpoints)
        except (DiskFull, OSError) as exc:
            log.warning("run %s: checkpoint %s not indexed: %s", h.id, ck["name"], exc)
        h.checkpoints = [c["name"] for c in self.store.checkpoints(h.id)]

    def _worker_gone(self, h: _Handle) -> None:
        """The pipe closed: a clean exit (its last state stands) or a crash (failed)."""
        process = h.process
        if process is not None:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
                process.join(timeout=5)
        _answer(h.held)
        with h.send_lock:  # from here on, _send sees no worker and waits for nothing
            h.process = None
            waiters = list(h.pending.values())
            h.pending.clear()
        for waiter in waiters:
            waiter[1][0] = {"error": {"type": "Conflict", "field": "action",
                                      "message": f"action: run {h.id}'s worker exited"}}
            waiter[0].set()
        with contextlib.suppress(OSError):
            h.conn.close()
        if h.deleting:
            return
        killed, now = None, Status.parse(h.status)
        if not h.clean_exit and self._closed and not h.fail_reason:
            status = Kind.INTERRUPTED  # did not stop in time at shutdown: resumable all the same
        elif not h.clean_exit and h.fail_reason:
            status = str(Status.failed(h.fail_reason))
        elif not h.clean_exit:
            killed = _exit_reason(process)
        elif now.kind is Kind.INTERRUPTED and not self._closed:  # its own SIGTERM handler
            killed = "worker stopped by SIGTERM"
        elif h.parking and "parked_from" in h.info:
            status = PARKED
        elif now.is_active:
            status = Kind.INTERRUPTED
        else:
            status = h.status
        if killed is not None:
            status = self._after_kill(h, killed)
        h.info["steps_per_second"] = 0.0
        if h.buffer is not None:
            with contextlib.suppress(OSError):
                self.store.save_history(self.store.history_path(h.id), h.buffer.snapshot())
        with contextlib.suppress(Exception):
            self._set_status(h, status)
        self._retire_buffer(h)

    def _after_kill(self, h: _Handle, reason: str) -> str:
        """A killed worker: schedule a restart from the last checkpoint (the status it had
        stands meanwhile), or, past the retry budget, the resumable failed status."""
        s, now = self.settings, time.monotonic()
        h.kills = [t for t in h.kills if now - t < s.restart_window] + [now]
        if len(h.kills) <= s.restart_limit and not self._closed:
            h.restart_at = now + s.restart_backoff * 2 ** (len(h.kills) - 1)
            log.warning("run %s: %s; restarting from its last checkpoint in %.1f s (%d of %d)",
                        h.id, reason, h.restart_at - now, len(h.kills), s.restart_limit)
            return h.live_status or "running"
        log.error("run %s: %s, %d times within %g s: failed (resumable)", h.id, reason,
                  len(h.kills), s.restart_window)
        return str(Status.failed(f"{reason}; restarted {len(h.kills) - 1} times within "
                                 f"{s.restart_window:g} s already", resumable=True))

    # ---- the supervisor thread -------------------------------------------------------------
    def _supervise(self) -> None:
        while not self._stopping.wait(SUPERVISE_EVERY):
            try:
                self._supervise_once()
            except Exception:
                log.exception("supervisor")

    def _supervise_once(self) -> None:
        """Restart killed workers when due; park idle ones."""
        idle = self.settings.idle_release
        with self._lock:
            handles = list(self._runs.values())
        for h in handles:
            if self._closed:
                return
            now = time.monotonic()
            if h.restart_at is not None and now >= h.restart_at and not h.deleting:
                try:
                    self._restart(h, start=h.live_status == "running")
                except Conflict:  # shut down meanwhile
                    return
                except Exception as exc:
                    log.exception("run %s: restart failed", h.id)
                    h.restart_at = None
                    self._set_status(h, str(Status.failed(
                        f"restart failed: {type(exc).__name__}", resumable=True)))
            elif idle > 0 and h.alive() and not h.parking and not h.deleting:
                self._maybe_park(h, idle)

    def _idle(self, h: _Handle, idle: float) -> bool:
        return h.up and idle_seconds(h.status, h.touched, h.polled, time.monotonic()) >= idle

    def _maybe_park(self, h: _Handle, idle: float) -> None:
        """Checkpoint and end an idle worker; the run becomes "parked" when it has gone."""
        if not self._idle(h, idle):
            return
        with h.send_lock:  # a control action either came first (not idle) or sees parking
            if not self._idle(h, idle) or not h.alive():
                return
            log.info("run %s: %s and idle for %g s: parking it", h.id, h.status, idle)
            h.parking = True
            with contextlib.suppress(OSError, ValueError, AttributeError):
                h.conn.send(("cmd", 0, "quit", {"checkpoint": True, "status": PARKED}))

    # ---- export / lifecycle ----------------------------------------------------------------
    def export_csv(self, run_id: str) -> Path:
        return self.store.ensure_csv(self._handle(run_id).id)

    def export_config(self, run_id: str) -> dict[str, Any]:
        return dict(self._handle(run_id).config)

    def delete(self, run_id: str) -> None:
        h = self._handle(run_id)
        h.deleting, h.restart_at = True, None
        self._stop_worker(h, checkpoint=False, status=None)
        with self._lock:
            self._runs.pop(h.id, None)
            self._cache.pop(h.id, None)
        try:
            self.store.delete_run(h.id)  # the files go first: this frees the disk
        except DiskFull as exc:
            log.warning("run %s: files removed, index row kept (disk full: %s); it is listed "
                        "as unreadable after a restart", h.id, exc)
        except StoreDamaged:
            pass  # the index is rebuilt from run folders by the doctor: the folder is gone

    def _stop_worker(self, h: _Handle, checkpoint: bool, status: str | None,
                     wait: bool = True) -> None:
        if not h.alive():
            return
        params: dict[str, Any] = {"checkpoint": checkpoint}
        if status:
            params["status"] = status
        with h.send_lock, contextlib.suppress(OSError, ValueError, AttributeError):
            h.conn.send(("cmd", 0, "quit", params))
        if wait:
            self._join(h, 10.0)

    def _join(self, h: _Handle, timeout: float) -> None:
        reader, process = h.reader, h.process
        if reader is not None:
            reader.join(timeout)
        if process is not None and reader is not None and reader.is_alive():
            process.kill()
            reader.join(5.0)

    def shutdown(self) -> None:
        """Checkpoint and stop every worker; their runs become "interrupted" (resumable)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._stopping.set()
            handles = [h for h in self._runs.values() if h.alive()]
            for h in self._runs.values():
                if h.restart_at is not None:  # its automatic restart will not come now
                    h.restart_at = None
                    self._set_status(h, "interrupted")
        for h in handles:
            self._stop_worker(h, checkpoint=True, status="interrupted", wait=False)
        deadline = time.monotonic() + 20.0
        for h in handles:
            self._join(h, max(0.5, deadline - time.monotonic()))
        self.store.close()

    def __enter__(self) -> LocalBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


# ---- helpers ---------------------------------------------------------------------------
def _answer(held: list[tuple[list[Any], Any]]) -> None:
    """Hand the held replies to their callers (the state sent after them is in)."""
    while held:
        (event, slot), reply = held.pop(0)
        slot[0] = reply
        event.set()


def _exit_reason(process: Any) -> str:
    code = getattr(process, "exitcode", None)
    if code is None:
        return "worker disappeared"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"worker killed by {name}"
    return f"worker exited with code {code}"


#: what the worker's server process imports once, for every worker it forks
WORKER_PRELOAD = ["app.service.worker", "simulator", "torch"]


def worker_context() -> Any:
    """How worker processes start: forked from multiprocessing's fork server, a process that
    imported torch and the simulator once (WORKER_PRELOAD), so a new run's worker is stepping
    in about 0.1 s instead of after 1.3 s of imports (a spawned interpreter; 2-core machine);
    it holds no threads and no torch state, so forking from it is safe. Spawn where there is
    no fork server (Windows)."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(WORKER_PRELOAD)
    return ctx


def warm_forkserver() -> None:
    """Start the fork server now (its imports take a second or two), one torch thread."""
    from multiprocessing import forkserver

    with contextlib.suppress(Exception), _ENV_LOCK, _env(OMP_NUM_THREADS="1",
                                                         MKL_NUM_THREADS="1"):
        forkserver.ensure_running()


@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    """Set environment variables for the duration (a child started meanwhile copies them)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
