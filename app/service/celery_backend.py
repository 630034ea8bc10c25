"""The scale-out backend: runs are Celery tasks on any worker host, state lives in Redis.

    backend = CeleryBackend(BackendSettings(max_runs=40), redis_url="redis://127.0.0.1:6379/0")

Same interface, same answers as :class:`app.service.local.LocalBackend`; what differs is where
things are (see :mod:`app.service.redis_store` for the key layout and why Redis):

- ``create`` writes the run into the shared registry (refusing at ``max_runs`` active runs,
  counted across every server) and queues ``plasticity.run``; any worker picks it up.
- ``frames`` is one ``XRANGE`` of the run's stream after the cursor: O(new frames); frames
  older than the newest ``DETAIL_FRAMES`` come without traces / task window / matrices, like
  the local live window.
- ``history`` restores the pyramid snapshot the task writes now and then and folds the stream
  entries after it (cached per process; O(new entries) per call).
- ``control`` validates here (bad params never travel), pushes the command onto the run's
  command list and waits for the task's reply; a run waiting in the queue answers 503.
- Every server process is stateless apart from caches, so any number of them (gunicorn
  workers, hosts) serve the same runs; ``shutdown`` leaves the runs running.

Each server also runs a :class:`app.service.celery_app.Reaper`, which requeues runs whose worker
died (their lease expired) from their latest checkpoint.

Release (``idle_release`` > 0): each server parks runs that sit idle on a worker slot, as the
local backend does: paused or ready for ``idle_release`` s since the last control action, or
running with no poll (frames, get, history; stamped in the run hash as ``touched`` /
``polled``) that long. It pushes a ``quit`` {checkpoint, status "parked"} command; the task
checkpoints and leaves the active set ("parked": no slot). ``resume`` (or any action that needs
a worker) requeues it from that checkpoint; a poll requeues one parked while running.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from app.service.admission import admit
from app.service.base import (
    ACTIVE_STATUSES,
    PARKED,
    BackendSettings,
    Conflict,
    RunNotFound,
    ServiceError,
    Unavailable,
    reply_or_raise,
)
from app.service.core import (
    REPLY_TIMEOUT,
    ServiceCore,
    backend_settings,
    history_args,
    idle_seconds,
    int_param,
    run_info,
    task_meta,
)
from app.service.framebuffer import FrameBuffer, strip_frame
from app.service.redis_store import REDIS_ERRORS, RedisStore, decode_frame, npz_arrays
from app.service.status import Kind
from app.service.worker import check_create
from simulator.config import RunConfig
from simulator.settings import ConfigError, quote

log = logging.getLogger("app.service.celery")

DETAIL_FRAMES = 100      # newest frames returned with traces and matrices
QUEUED_TIMEOUT = 3.0     # seconds to wait when the run still waits for a worker
HISTORY_CACHE = 32       # runs whose rebuilt history a server process keeps (~2 MB each)
POLL_STAMP_EVERY = 1.0   # seconds between this server's "polled" stamps of one run
PARK_RETRY = 30.0        # seconds before a park command is sent again to a run still active

F = TypeVar("F", bound=Callable[..., Any])


def _redis_errors(method: F) -> F:
    """Redis unreachable (after the client's retries) answers 503, never a 500."""

    @functools.wraps(method)
    def wrapper(self: CeleryBackend, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except REDIS_ERRORS as exc:
            raise Unavailable(f"redis: cannot reach {self._safe_url}: {exc}", field="redis") from None

    return wrapper  # type: ignore[return-value]


@dataclasses.dataclass
class _History:
    version: Any
    buffer: FrameBuffer
    last_id: str


class CeleryBackend(ServiceCore):
    """Runs as Celery tasks, registry/frames/commands/histories in Redis (module doc)."""

    def __init__(self, settings: BackendSettings | None = None, *, redis_url: str,
                 prefix: str = "pl:", heartbeat_ttl: float = 10.0, max_recoveries: int = 3,
                 lost_after: float = 30.0, snapshot_every: float = 15.0,
                 stream_len: int | None = None, reaper: bool = True,
                 retry_seconds: float = 3.0, **overrides: Any) -> None:
        from app.service.celery_app import QUEUE, Reaper, enqueuer, make_celery

        self.settings = backend_settings(settings, overrides)
        self.redis_url = redis_url
        self._safe_url = _strip_password(redis_url)
        self.store = RedisStore(redis_url, prefix=prefix, retry_seconds=retry_seconds, queue=QUEUE)
        self.celery = make_celery(redis_url, prefix=prefix)
        self._enqueue = enqueuer(self.celery, prefix)
        self.run_settings = {
            "eval_every": self.settings.eval_every, "eval_steps": self.settings.eval_steps,
            "checkpoint_every": self.settings.checkpoint_every,
            "checkpoint_seconds": self.settings.checkpoint_seconds,
            "keep_checkpoints": self.settings.keep_checkpoints,
            "history_budget": self.settings.history_budget,
            "frame_rate": self.settings.frame_rate, "steps_per_frame": self.settings.steps_per_frame,
            "history_bins": self.settings.history_bins,
            "stream_len": int(stream_len or self.settings.live_frames),
            "heartbeat_ttl": float(heartbeat_ttl), "max_recoveries": int(max_recoveries),
            "lost_after": float(lost_after), "snapshot_every": float(snapshot_every),
        }
        self._hist: OrderedDict[str, _History] = OrderedDict()
        self._hist_lock = threading.Lock()
        self._closed = False
        self._reaper = Reaper(self.store, self._enqueue) if reaper else None
        if self._reaper is not None:
            self._reaper.start()
        self._stamped: dict[str, float] = {}  # run id -> when this server last stamped a poll
        self._stopping = threading.Event()
        if self.settings.idle_release > 0:
            threading.Thread(target=self._release_loop, daemon=True,
                             name="plasticity-idle-release").start()

    # ---- runs ----------------------------------------------------------------------------
    def create(self, config: dict[str, Any], *, start: bool = True, view: dict | None = None,
               parent: str | None = None) -> str:
        return self._create(config, start=start, view=view, parent=parent, origin=None)

    @_redis_errors
    def _create(self, config: dict[str, Any], *, start: bool, view: dict | None,
                parent: str | None, origin: dict[str, Any] | None) -> str:
        self._check_open()
        cfg, checked_view = check_create(config, view, parent)
        cost = admit(cfg, self.settings, self._active_memory())
        meta = task_meta(cfg.to_dict())
        now = time.time()
        status = "running" if start else "ready"
        step = int(origin["step"]) if origin else 0
        fields = {
            "id": "", "created": now, "parent": parent, "config": cfg.to_dict(),
            "initial_config": cfg.to_dict(), "status": status, "step": step,
            "steps_per_second": 0.0, "best_test_loss": None, "last_test_loss": None,
            "last_test_step": None, "reference_levels": meta["reference_levels"],
            "task_view": meta["task_view"], "phases": cfg.phases,
            "steps_per_frame": self.settings.steps_per_frame or 0,
            "checkpoints": ["origin"] if origin else [], "view": checked_view,
            "learning_rates": {}, "cursor": -1, "settings": self.run_settings,
            "attempt": 1, "placement": "queued", "queued_at": now, "recoveries": 0,
            "owner": None, "alive": False, "cost": cost.to_dict(),
        }
        created = -1
        while created < 0:  # a fresh id (random; taken ones are refused atomically)
            run_id = fields["id"] = secrets.token_hex(4)
            created = self.store.create_run(run_id, fields, self.settings.max_runs)
        if created == 0:
            raise self._limit_reached(len(self.store.active_ids()))
        if origin is not None and not self.store.adopt_checkpoint(
                origin["run"], origin["name"], run_id, step):
            self.store.delete_run(run_id)
            raise Conflict(f"checkpoint: {origin['name']!r} of run {origin['run']} is gone",
                           field="checkpoint")
        self._enqueue(run_id, 1)
        return run_id

    def _active_memory(self) -> list[int]:
        """Estimated peak memory (bytes) of each active run (not atomic with the create)."""
        return [int((f.get("cost") or {}).get("memory_bytes") or 0)
                for f in self.store.many_fields(self.store.active_ids()) if f]

    def _check_open(self) -> None:
        if self._closed:
            raise Conflict("backend: shut down")

    # ---- idle release ----------------------------------------------------------------------
    def _stamp(self, run_id: str, name: str) -> None:
        """Note a control action ("touched") or a poll ("polled") in the run hash, for the
        idle release of every server."""
        with contextlib.suppress(*REDIS_ERRORS):
            if self.store.r.exists(self.store.key(run_id)):
                self.store.r.hset(self.store.key(run_id), name, str(time.time()))

    def _polled(self, run_id: str, f: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """Someone watches the run: stamp it (at most once a second per run and server);
        one parked while running goes back to the queue. ``f``: its fields when at hand."""
        now = time.time()
        if now - self._stamped.get(run_id, 0.0) >= POLL_STAMP_EVERY:
            if len(self._stamped) > 4096:
                self._stamped.clear()
            self._stamped[run_id] = now
            self._stamp(run_id, "polled")
            if f is None:
                with contextlib.suppress(RunNotFound):
                    f = self._fields(run_id)
        if f and f.get("status") == PARKED and f.get("parked_from") == "running":
            with contextlib.suppress(ServiceError):  # no free slot: it stays parked for now
                self._resume(f)
                return self._fields(run_id)
        return f

    def _release_loop(self) -> None:
        every = min(1.0, max(0.1, self.settings.idle_release / 4))
        while not self._stopping.wait(every):
            try:
                self.release_idle()
            except REDIS_ERRORS:
                continue
            except Exception:
                log.exception("idle release")

    def release_idle(self) -> list[str]:
        """One pass: send the park command to each idle run on a worker; their ids."""
        idle, now, parked = self.settings.idle_release, time.time(), []
        ids = self.store.active_ids()
        for f in self.store.many_fields(ids):
            if not f or f.get("placement") != "claimed" or f.get("status") not in ACTIVE_STATUSES:
                continue
            if now - float(f.get("parking") or 0) < PARK_RETRY:
                continue
            touched = max(float(f.get(key) or 0) for key in ("touched", "claimed_at",
                                                             "queued_at", "created"))
            if idle_seconds(f["status"], touched, float(f.get("polled") or 0), now) < idle:
                continue
            self.store.r.hset(self.store.key(f["id"]), "parking", str(now))
            self.store.send_command(f["id"], "quit", {"checkpoint": True, "status": PARKED})
            log.info("run %s: %s and idle for %g s: parking it", f["id"], f.get("status"), idle)
            parked.append(f["id"])
        return parked

    @_redis_errors
    def list_runs(self) -> list[dict[str, Any]]:
        ids = self.store.run_ids()
        found = zip(ids, self.store.many_fields(ids), strict=True)
        return [self._info({"id": run_id, **f}) for run_id, f in found
                if f and ("config" in f or "unreadable" in f)]

    @_redis_errors
    def get(self, run_id: str) -> dict[str, Any]:
        f = self._fields(run_id)
        return self._info(self._polled(f["id"], f) or f)

    def _fields(self, run_id: Any) -> dict[str, Any]:
        fields = self.store.fields(run_id) if isinstance(run_id, str) and run_id else None
        if fields is None or ("config" not in fields and "unreadable" not in fields):
            raise RunNotFound(str(run_id))
        fields.setdefault("id", run_id)
        return fields

    def _info(self, f: dict[str, Any]) -> dict[str, Any]:
        cfg = f.get("config") or {}
        status = f"unreadable: {f['unreadable']}" if "unreadable" in f else f.get("status", "")
        owner = f.get("owner") if f.get("placement") == "claimed" else None
        return run_info(
            f["id"], cfg, status, int(f.get("step") or 0), created=f.get("created"),
            parent=f.get("parent"), facts=f, checkpoints=list(f.get("checkpoints") or []),
            cursor=int(f.get("cursor", -1)),
            alive=status in ACTIVE_STATUSES and f.get("placement") in ("queued", "claimed"),
            pid=_owner_pid(owner), meta=f if "reference_levels" in f else None,
            worker={"host": owner, "state": f.get("placement") or None,
                    "attempt": f.get("attempt"), "recoveries": f.get("recoveries", 0)})

    # ---- telemetry -------------------------------------------------------------------------
    @_redis_errors
    def frames(self, run_id: str, after: int = -1) -> tuple[list[dict[str, Any]], int]:
        after = int_param(after, "after", -1, 2**62)
        if not isinstance(run_id, str) or not run_id:
            raise RunNotFound(str(run_id))
        self._polled(run_id)
        count = 2 * self.run_settings["stream_len"] + 256  # approximate trimming keeps extra
        exists, entries = self.store.read_frames(run_id, after, count)
        if not exists:
            raise RunNotFound(run_id)
        if not entries:
            return [], after
        newest = entries[-1][0][0] - 1
        frames = []
        for (major, _), blob in entries:
            frame = decode_frame(blob)
            if major - 1 <= newest - DETAIL_FRAMES and frame.get("detail", True):
                frame = strip_frame(frame)
            frames.append(frame)
        return frames, frames[-1]["seq"]

    @_redis_errors
    def history(self, run_id: str, max_points: int = 500, start: int | None = None,
                stop: int | None = None) -> dict[str, Any]:
        max_points, start, stop = history_args(max_points, start, stop)
        if not isinstance(run_id, str) or not run_id:
            raise RunNotFound(str(run_id))
        self._polled(run_id)
        with self._hist_lock:
            buffer = self._history_buffer(run_id)
            out = buffer.history(max_points, start, stop)
        out["run"] = run_id
        return out

    def _history_buffer(self, run_id: str) -> FrameBuffer:
        """The run's pyramid: the task's latest snapshot plus the stream entries after it."""
        exists, version = self.store.snapshot_version(run_id)
        if not exists:
            self._hist.pop(run_id, None)
            raise RunNotFound(run_id)
        cached = self._hist.get(run_id)
        if cached is None or cached.version != version:
            version, last_id, blob = self.store.load_snapshot(run_id)
            buffer = None
            if blob is not None:
                with contextlib.suppress(KeyError, ValueError, TypeError, OSError):
                    buffer = FrameBuffer.restore(npz_arrays(blob), 1, 0)
            if buffer is None:
                buffer = FrameBuffer(live_frames=1, detail_frames=0, bins=self.settings.history_bins)
                last_id = "0-0"
            cached = _History(version, buffer, last_id)
            self._hist[run_id] = cached
            while len(self._hist) > HISTORY_CACHE:
                self._hist.popitem(last=False)
        self._hist.move_to_end(run_id)
        for entry_id, (major, minor), blob in self.store.entries_after(run_id, cached.last_id):
            item = decode_frame(blob)
            if minor == 0:
                seq = major - 1
                if seq > cached.buffer.cursor + 1:
                    cached.buffer.continue_from(seq)
                if seq == cached.buffer.cursor + 1:
                    cached.buffer.push(item)
            else:
                cached.buffer.fold(item)
            cached.last_id = entry_id
        return cached.buffer

    # ---- control (the path itself: ServiceCore.control) ---------------------------------
    @_redis_errors
    def control(self, run_id: str, action: str, **params: Any) -> dict[str, Any]:
        return super().control(run_id, action, **params)

    def _control_run(self, run_id: str) -> dict[str, Any]:
        f = self._fields(run_id)
        if "unreadable" in f:
            raise Conflict(f"action: run {f['id']} is unreadable ({f['unreadable']}); delete it",
                           field="action")
        return f

    def _config_of(self, f: dict[str, Any]) -> dict[str, Any]:
        return f["config"]

    def _id_of(self, f: dict[str, Any]) -> str:
        return f["id"]

    def _status_of(self, f: dict[str, Any]) -> str:
        return str(f.get("status", ""))

    def _touch(self, f: dict[str, Any]) -> dict[str, Any]:
        self._stamp(f["id"], "touched")
        return f

    def _has_worker(self, f: dict[str, Any]) -> bool:
        return self._active(f)

    def _active(self, f: dict[str, Any]) -> bool:
        return f.get("status") in ACTIVE_STATUSES and f.get("placement") in ("queued", "claimed")

    def _stop_without_worker(self, f: dict[str, Any]) -> dict[str, Any]:
        self.store.settle(f["id"], Kind.STOPPED.value)
        return {"ok": True, "status": Kind.STOPPED.value, "step": int(f.get("step") or 0)}

    def _pause_parked(self, f: dict[str, Any]) -> dict[str, Any]:
        if f.get("parked_from") == Kind.RUNNING:
            self.store.r.hset(self.store.key(f["id"]), "parked_from", '"paused"')
        return {"ok": True, "status": f.get("status"), "step": int(f.get("step") or 0)}

    def _wake(self, f: dict[str, Any]) -> dict[str, Any]:
        self._resume(f, Kind.PAUSED.value)
        return self._fields(f["id"])  # queued again: the action goes to it

    def _deliver(self, f: dict[str, Any], action: str, params: dict[str, Any],
                 timeout: float) -> dict[str, Any]:
        if f.get("placement") != "claimed" and action == "stop":
            return self._stop_without_worker(f)  # never started (or between workers)
        return self._send(f, action, params, timeout)

    def _resume(self, f: dict[str, Any], status: str = "running") -> dict[str, Any]:
        self._check_open()
        self.store.r.delete(self.store.key(f["id"], "cmd"))  # e.g. a second park command
        attempt = self.store.activate(f["id"], self.settings.max_runs, status)
        if attempt == 0:
            raise self._limit_reached(len(self.store.active_ids()))
        if attempt < 0:
            raise Conflict(f"action: run {f['id']} is already active", field="action")
        self._enqueue(f["id"], attempt)
        ckpts = self.store.checkpoints(f["id"])
        self.store.r.hdel(self.store.key(f["id"]), "parked_from", "parking")
        self._stamp(f["id"], "touched")
        return {"ok": True, "status": status,
                "step": int(ckpts[-1]["step"]) if ckpts else 0,
                "checkpoint": ckpts[-1]["name"] if ckpts else None}

    def _send(self, f: dict[str, Any], action: str, params: dict[str, Any],
              timeout: float) -> dict[str, Any]:
        run_id = f["id"]
        queued = f.get("placement") != "claimed"
        cmd_id, payload = self.store.send_command(run_id, action, params)
        reply = self.store.wait_reply(cmd_id, QUEUED_TIMEOUT if queued else timeout)
        if reply is None:
            if self.store.withdraw_command(run_id, payload):
                what = ("is waiting for a worker (queued)" if queued
                        else f"'s worker did not answer {action} within {timeout:.0f} s")
                raise Unavailable(f"action: run {run_id} {what}; try again", field="action")
            reply = self.store.wait_reply(cmd_id, timeout)  # taken: the answer is coming
            if reply is None:
                raise Unavailable(f"action: run {run_id}'s worker did not answer {action} within "
                                  f"{timeout:.0f} s", field="action")
        return reply_or_raise(reply)

    def _admit_branch(self, config: dict[str, Any]) -> None:
        active = len(self.store.active_ids())
        if active >= self.settings.max_runs:  # refuse before the parent writes a checkpoint
            raise self._limit_reached(active)
        admit(RunConfig.from_dict(config), self.settings, self._active_memory())

    def _create_branch(self, f: dict[str, Any], config: dict[str, Any],
                       point: dict[str, Any]) -> str:
        return self._create(config, start=True, view=f.get("view") or None, parent=f["id"],
                            origin={"run": f["id"], "name": point["name"], "step": point["step"]})

    def _refresh(self, f: dict[str, Any]) -> dict[str, Any]:
        return self._fields(f["id"])

    def _branch_point(self, f: dict[str, Any], name: str | None) -> tuple[dict[str, Any], bool]:
        """The checkpoint to branch from; one made now is automatic (pruned in turn), so
        never dropped here."""
        run_id = f["id"]
        ckpts = {c["name"]: c for c in self.store.checkpoints(run_id)}
        if name is not None:
            if name not in ckpts:
                have = ", ".join(ckpts) or "none"
                raise ConfigError("checkpoint", f"run {run_id} has no checkpoint {quote(name)}; have: {have}")
            return ckpts[name], False
        if self._active(f) and f.get("placement") == "claimed":  # a checkpoint of this moment
            with contextlib.suppress(Conflict, Unavailable):
                reply = self._send(f, "checkpoint", {}, REPLY_TIMEOUT)
                made = {c["name"]: c for c in self.store.checkpoints(run_id)}
                if reply.get("checkpoint") in made:
                    return made[reply["checkpoint"]], False
        latest = self.store.checkpoints(run_id)
        if not latest:
            raise Conflict(f"checkpoint: run {run_id} has no checkpoint to branch from",
                           field="checkpoint")
        return latest[-1], False

    # ---- export / lifecycle ----------------------------------------------------------------
    @_redis_errors
    def export_csv(self, run_id: str) -> Path:
        """The CSV blocks from Redis, written to DATA_DIR/exports/<id>.csv (atomically)."""
        f = self._fields(run_id)
        out = self.settings.data_dir / "exports" / f"{f['id']}.csv"
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f"{out.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        wrote = False
        with open(tmp, "wb") as fh:
            for block in self.store.csv_blocks(f["id"]):
                fh.write(block)
                wrote = True
            if not wrote:
                fh.write(b"step,seed,train_loss\n")
        os.replace(tmp, out)
        return out

    @_redis_errors
    def export_config(self, run_id: str) -> dict[str, Any]:
        return dict(self._fields(run_id)["config"])

    @_redis_errors
    def delete(self, run_id: str) -> None:
        f = self._fields(run_id)
        self.store.delete_run(f["id"])  # fences the task out: it stops at its next write
        with self._hist_lock:
            self._hist.pop(f["id"], None)
        with contextlib.suppress(OSError):
            (self.settings.data_dir / "exports" / f"{f['id']}.csv").unlink()

    def shutdown(self) -> None:
        """Stop this server's reaper and close its connections. Runs live in the workers and
        keep going: other servers (or this one restarted) serve them."""
        if self._closed:
            return
        self._closed = True
        self._stopping.set()
        if self._reaper is not None:
            self._reaper.stop()
        with contextlib.suppress(Exception):
            self.store.close()

    def reap(self) -> list[tuple[str, str]]:
        """One reaper pass now (tests, tools): [(run id, "requeued" | "failed")]."""
        from app.service.celery_app import Reaper

        return Reaper(self.store, self._enqueue).reap_once()

    def __enter__(self) -> CeleryBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


# ---- helpers ---------------------------------------------------------------------------------
def _owner_pid(owner: Any) -> int | None:
    if isinstance(owner, str) and " pid " in owner:
        with contextlib.suppress(ValueError):
            return int(owner.rsplit(" pid ", 1)[1])
    return None


def _strip_password(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


__all__ = ["CeleryBackend", "ServiceError"]
