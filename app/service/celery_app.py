"""The Celery app and the run task: the embedded worker's loop, hosted by a Celery worker.

Start workers with ``plasticity-lab worker --redis-url redis://HOST:6379/0`` (or
``celery -A app.service.celery_app worker -Q plasticity -Ofair ...`` with
``PLASTICITY_REDIS_URL`` set). Each run is one task, ``plasticity.run(run_id, attempt)``.

How a worker hosts runs. A run is a long task that occupies one pool slot for its lifetime,
paused or not (as in the embedded mode, where a run owns a worker process). The pool is
**prefork**: each run steps in its own process, forked from a parent that has already imported
torch and the simulator, so a slot costs little memory and starts at once, one run cannot
stall another through the GIL, and a crash or SIGKILL takes down one run only. A host serves
``--concurrency`` runs (default :func:`default_concurrency`: two per core, at most one per
``SLOT_MEMORY`` of RAM; a run at full speed takes a core, a paced one a few percent of one;
the servers' ``--max-runs`` bounds the runs across all workers). Every slot is a process
forked at start, so slots cost start time and memory even when idle: add hosts, or raise
``--concurrency`` on a big one, for more.

The loop is :class:`app.service.worker.Worker`, unchanged: it talks to a transport with
``send``/``poll``/``recv``. Locally that is a pipe; here it is :class:`RunChannel`, which
turns the same messages into Redis writes (frames to the run's stream, state to its hash,
checkpoints and CSV blocks to their keys) and pops commands from the run's command list.

Faults. ``acks_late`` + ``reject_on_worker_lost``: a pool process killed mid-run gets its
message requeued at once by its parent. Independently of Celery, each task holds a **lease**
(a Redis key with a TTL, refreshed by a heartbeat thread); every server and every worker runs
a :class:`Reaper` that requeues a run whose lease expired (its worker host died, or was
SIGKILLed with its children) as attempt + 1, resumed from its latest checkpoint; after
``max_recoveries`` losses the run is marked "failed: worker lost ..." (resumable by hand).
Attempt numbers and lease tokens fence stale tasks out: a redelivered old message finds a
newer attempt and exits; a task that lost its lease cannot write (every write checks it).
A worker that shuts down warmly marks its host as draining: its runs checkpoint and hand
themselves back to the queue, to continue on another worker.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import socket
import tempfile
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

from celery import Celery, signals

from app.service.base import ACTIVE_STATUSES
from app.service.core import fold_progress
from app.service.redis_store import (
    REDIS_ERRORS,
    Fenced,
    RedisStore,
    enc,
    encode_frame,
    npz_arrays,
    npz_bytes,
)

log = logging.getLogger("app.service.celery")

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
QUEUE = "plasticity"
TASK_NAME = "plasticity.run"
PREFIX = "pl:"
TASK_RETRY_SECONDS = 60.0    # a task keeps retrying Redis this long before giving up
CSV_SCRATCH_LIMIT = 4 << 20  # bytes of local CSV kept on the worker before it is cut back

SLOTS_PER_CORE = 2           # default run slots per core of a worker host
SLOT_MEMORY = 1 << 30        # bytes of RAM per default slot at least (a forked pool process
                             # plus a run of the default size, with room)

Enqueue = Callable[[str, int], None]


def default_concurrency(cores: int | None = None, memory: int | None = None) -> int:
    """Run slots of a worker host by default: SLOTS_PER_CORE per core, at most one per
    SLOT_MEMORY of RAM, at least one."""
    from app.service.admission import machine_memory

    if cores is None:
        affinity = getattr(os, "sched_getaffinity", None)
        cores = len(affinity(0)) if affinity else os.cpu_count() or 1
    memory = memory or machine_memory()
    return max(1, min(SLOTS_PER_CORE * cores, memory // SLOT_MEMORY))


def redis_url_from_env() -> str:
    return os.environ.get("PLASTICITY_REDIS_URL", DEFAULT_REDIS_URL)


def make_celery(redis_url: str | None = None, *, prefix: str = PREFIX) -> Celery:
    """A Celery app on ``redis_url`` (broker only: run state lives in :class:`RedisStore`)."""
    url = redis_url or redis_url_from_env()
    app = Celery("plasticity", broker=url, set_as_current=False,
                 include=["app.service.celery_sweeps"])  # experiments' batch task
    app.conf.update(
        task_default_queue=QUEUE,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        result_backend=None,
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry=True,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        broker_transport_options={"visibility_timeout": 6 * 3600, "socket_timeout": 5,
                                  "socket_connect_timeout": 2, "retry_on_timeout": True,
                                  "health_check_interval": 10},
        broker_pool_limit=4,
        task_publish_retry=True,
        task_publish_retry_policy={"max_retries": 30, "interval_start": 0.1,
                                   "interval_step": 0.2, "interval_max": 1.0},
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        worker_enable_remote_control=False,
        plasticity_redis_url=url,
        plasticity_prefix=prefix,
    )

    @app.task(name=TASK_NAME, bind=True, acks_late=True, reject_on_worker_lost=True,
              ignore_result=True)
    def run_task(self: Any, run_id: str, attempt: int, prefix: str | None = None) -> str:
        """Host one run until it ends, is handed off, or this task is fenced out. ``prefix``:
        the key namespace of the server that queued it (several labs may share workers)."""
        conf = self.app.conf
        prefix = prefix or conf.plasticity_prefix
        store = RedisStore(conf.plasticity_redis_url, prefix=prefix,
                           retry_seconds=TASK_RETRY_SECONDS, queue=QUEUE)
        host = self.request.hostname or socket.gethostname()
        try:
            outcome = host_run(store, run_id, int(attempt), host, enqueuer(self.app, prefix))
        finally:
            store.close()
        log.info("run %s attempt %s on %s: %s", run_id, attempt, host, outcome)
        return outcome

    return app


def enqueuer(app: Celery, prefix: str = PREFIX) -> Enqueue:
    """A function that queues ``plasticity.run(run_id, attempt)`` of namespace ``prefix``."""

    def enqueue(run_id: str, attempt: int) -> None:
        app.send_task(TASK_NAME, args=[run_id, int(attempt)], kwargs={"prefix": prefix},
                      queue=QUEUE)

    return enqueue


# ---- hosting one run ------------------------------------------------------------------------
def host_run(store: RedisStore, run_id: str, attempt: int, host: str, enqueue: Enqueue) -> str:
    """Claim the run (waiting out a dead predecessor's lease), then drive it with the shared
    :class:`app.service.worker.Worker` loop over a :class:`RunChannel`. Returns the outcome."""
    fields = store.fields(run_id)
    if fields is None:
        return "gone"
    if store.is_draining(host):  # this host is shutting down: let another worker take it
        time.sleep(0.5)
        enqueue(run_id, attempt)
        return "passed on (host draining)"
    settings = fields.get("settings") or {}
    ttl = float(settings.get("heartbeat_ttl", 10.0))
    ttl_ms = int(ttl * 1000)
    token = f"{attempt}:{host}:{os.getpid()}:{secrets.token_hex(4)}"
    owner = f"{host} pid {os.getpid()}"
    deadline = time.monotonic() + ttl + 2.0
    while True:  # a redelivery after a pool process died: its lease lapses within the TTL
        state = store.claim(run_id, attempt, token, ttl_ms, owner)
        if state == "ok":
            break
        if state != "busy" or time.monotonic() > deadline:
            return state
        time.sleep(0.25)
    fields = store.fields(run_id) or fields
    heartbeat = Heartbeat(store, run_id, token, ttl_ms, host)
    heartbeat.start()
    scratch = Path(tempfile.mkdtemp(prefix=f"plasticity-{run_id}-",
                                    dir=os.environ.get("PLASTICITY_SCRATCH") or None))
    try:
        from app.service.worker import Worker

        channel = RunChannel(store, run_id, token, attempt, fields, scratch, heartbeat, enqueue)
        spec = channel.prepare()
        Worker(spec, channel).loop()
        return channel.outcome
    except Fenced:
        return "fenced"
    except REDIS_ERRORS as exc:  # Redis gone for longer than the retries: like a lost worker,
        log.error("run %s on %s: redis lost (%s)", run_id, host, exc)  # the lease lapses and
        return "redis lost"  # a reaper requeues it from its checkpoint
    except Exception as exc:  # the run itself failed (bad checkpoint, a bug): say why
        reason = f"{type(exc).__name__}: {exc}".strip()[:500]
        log.exception("run %s failed on %s", run_id, host)
        with contextlib.suppress(Exception):
            fail_ops = [["HSET", store.key(run_id), "status", enc(f"failed: {reason}"),
                         "placement", '""', "steps_per_second", "0", "alive", "false"],
                        ["SREM", store.k_active, run_id],
                        ["DEL", store.key(run_id, "lease")]]
            store.fenced(run_id, token, fail_ops)
        return "failed"
    finally:
        heartbeat.stop()
        shutil.rmtree(scratch, ignore_errors=True)


class Heartbeat(threading.Thread):
    """Extends the lease every TTL/4 while the task lives; notices fencing and draining."""

    def __init__(self, store: RedisStore, run_id: str, token: str, ttl_ms: int, host: str) -> None:
        super().__init__(name=f"plasticity-heartbeat-{run_id}", daemon=True)
        self.store, self.run_id, self.token, self.ttl_ms, self.host = store, run_id, token, ttl_ms, host
        self.fenced = threading.Event()
        self.draining = threading.Event()
        self._stop_event = threading.Event()

    def run(self) -> None:
        period = max(0.2, self.ttl_ms / 4000)
        while not self._stop_event.wait(period):
            try:
                if not self.store.refresh(self.run_id, self.token, self.ttl_ms):
                    self.fenced.set()
                    return
                if self.store.is_draining(self.host):
                    self.draining.set()
            except REDIS_ERRORS as exc:  # Redis away: keep trying; the lease may lapse
                log.warning("run %s: heartbeat: %s", self.run_id, exc)

    def stop(self) -> None:
        self._stop_event.set()


class RunChannel:
    """The worker loop's transport in Celery mode (duck-types a ``multiprocessing`` pipe end).

    ``send`` maps the worker's messages onto fenced Redis writes; ``poll``/``recv`` deliver
    the run's commands. The channel keeps the run's decimated history (a FrameBuffer): it
    stamps each frame's ``seq``, and snapshots the history to Redis now and then (see
    :meth:`_snapshot_ops`) and with every checkpoint, so servers can rebuild it (snapshot plus
    the stream entries after it) and a resumed run can restore it.
    """

    def __init__(self, store: RedisStore, run_id: str, token: str, attempt: int,
                 fields: dict[str, Any], scratch: Path, heartbeat: Heartbeat,
                 enqueue: Enqueue) -> None:
        s = fields.get("settings") or {}
        self.store, self.run_id, self.token, self.attempt = store, run_id, token, attempt
        self.fields, self.scratch, self.heartbeat, self.enqueue = fields, scratch, heartbeat, enqueue
        self.ttl_ms = int(float(s.get("heartbeat_ttl", 10.0)) * 1000)
        self.stream_len = int(s.get("stream_len", 600))
        self.keep = int(s.get("keep_checkpoints", 3))
        self.snapshot_every = float(s.get("snapshot_every", 15.0))
        self.bins = int(s.get("history_bins", 2048))
        self.settings = s
        self.k_run, self.k_frames = store.key(run_id), store.key(run_id, "frames")
        self.k_csv = store.key(run_id, "csv")
        self.pending: deque[tuple[Any, ...]] = deque()
        self.replies: deque[tuple[str, dict[str, Any]]] = deque()
        self.drain_sent = False
        self.csv_path = scratch / "scalars.csv"
        self.csv_offset = 0
        self.csv_chunks = 0
        self.checkpoints: list[dict[str, Any]] = []
        self.next_seq, self.sub = 0, 1
        self.snap_n, self.last_snap, self.since_snap = 0, 0.0, 0
        self.progress: dict[str, Any] = {}
        self.outcome = "running"
        self.buffer: Any = None

    # ---- start ----------------------------------------------------------------------------
    def prepare(self) -> Any:
        """Restore from the latest checkpoint (CSV cut back to it, its history snapshot), or
        start afresh; returns the WorkerSpec."""
        from app.service.framebuffer import FrameBuffer
        from app.service.worker import WorkerSpec

        store, f, run_id = self.store, self.fields, self.run_id
        self.checkpoints = store.checkpoints(run_id)
        latest = self.checkpoints[-1] if self.checkpoints else None
        a, b = store.last_entry(run_id)
        self.next_seq = max(a, int(f.get("cursor", -1)) + 1)
        self.sub = b + 1 if a == self.next_seq else 1
        init: dict[str, Any] | None = None
        buffer = None
        step = 0
        if latest is not None:
            blob = store.checkpoint_blob(run_id, latest["name"])
            if blob is None:
                raise RuntimeError(f"checkpoint {latest['name']!r} of run {run_id} is missing")
            path = self.scratch / "init.pt"
            path.write_bytes(blob)
            init = {"checkpoint": str(path)}
            if latest["name"] == "origin":  # a branch's first start: the parent's state, our config
                init["branch"] = True
            hist = store.checkpoint_history(run_id, latest["name"])
            if hist is not None:
                with contextlib.suppress(KeyError, ValueError, TypeError):
                    buffer = FrameBuffer.restore(npz_arrays(hist), 1, 0)
            self.csv_chunks = int(latest.get("csv_chunks", 0))
            step = int(latest.get("step", 0))
        self.buffer = buffer or FrameBuffer(live_frames=1, detail_frames=0, bins=self.bins)
        self.buffer.continue_from(self.next_seq)
        ops: list[list[Any]] = []
        if self.csv_chunks > 0:
            ops.append(["LTRIM", self.k_csv, 0, self.csv_chunks - 1])
            header = store.csv_header(run_id) or b""
            self.csv_path.write_bytes(header)  # so the worker does not write a second header
            self.csv_offset = len(header)
        else:
            ops.append(["DEL", self.k_csv])
        status = f.get("status") or "running"
        playing = status == "running"
        ops.append(["HSET", self.k_run, "step", enc(step), "cursor", enc(self.next_seq - 1),
                    "steps_per_second", "0", "alive", "true",
                    "checkpoints", enc([c["name"] for c in self.checkpoints])])
        ops += self._snapshot_ops(f"{a}-{b}", force=True)
        store.fenced(run_id, self.token, ops, self.ttl_ms)
        config = f.get("config") if latest is not None else (f.get("initial_config") or f["config"])
        spec = WorkerSpec(
            run_id=run_id, config=config, run_dir=str(self.scratch), start=playing,
            view=f.get("view") or {}, init=init, eval_every=int(self.settings.get("eval_every", 0)),
            eval_steps=self.settings.get("eval_steps"),
            checkpoint_every=int(self.settings.get("checkpoint_every", 20_000)),
            checkpoint_seconds=float(self.settings.get("checkpoint_seconds", 10.0)),
            frame_rate=float(self.settings.get("frame_rate", 10.0)),
            steps_per_frame=self.settings.get("steps_per_frame"),
            history_budget=int(self.settings.get("history_budget", 0)))
        # what a resumed run was doing that its checkpoint does not hold
        if f.get("pace"):
            self.pending.append(("cmd", None, "speed", {"steps_per_second": f["pace"],
                                                        "narrate": bool(f.get("narrate"))}))
        elif f.get("steps_per_frame"):
            self.pending.append(("cmd", None, "speed", {"steps_per_frame": f["steps_per_frame"]}))
        if f.get("fast_forward_to") and playing:
            self.pending.append(("cmd", None, "fast_forward", {"to": f["fast_forward_to"]}))
        return spec

    # ---- the pipe protocol -------------------------------------------------------------------
    def poll(self, timeout: float = 0.0) -> bool:
        if self.pending:
            return True
        if self.heartbeat.fenced.is_set():
            raise Fenced(self.run_id)
        if self.heartbeat.draining.is_set() and not self.drain_sent:
            self.drain_sent = True  # checkpoint, stop, and hand the run back to the queue
            self.pending.append(("cmd", None, "quit", {"checkpoint": True}))
            return True
        cmd = self.store.pop_command(self.run_id, timeout)
        if cmd is None:
            return False
        self.pending.append(("cmd", cmd.get("id"), cmd.get("action"), cmd.get("params") or {}))
        return True

    def recv(self) -> tuple[Any, ...]:
        return self.pending.popleft()

    def send(self, msg: tuple[Any, ...]) -> None:
        kind = msg[0]
        if kind == "frame":
            self._frame(msg[1])
        elif kind == "summary":
            self._summary(msg[1])
        elif kind in ("hello", "state"):
            self._state(msg[1])
        elif kind == "checkpoint":
            self._checkpoint(msg[1])
        elif kind == "reply":  # the worker sends its new state right after: reply with it,
            if msg[1] is not None:  # so a client that got the answer reads the new state
                self.replies.append((msg[1], msg[2]))
        elif kind == "bye":
            self._bye(msg[1])

    # ---- messages ----------------------------------------------------------------------------
    def _frame(self, frame: dict[str, Any]) -> None:
        frame["run"] = self.run_id
        self._progress(frame)
        seq = self.buffer.push(frame)
        self.next_seq, self.sub = seq + 1, 1
        entry = f"{seq + 1}-0"
        self.progress["cursor"] = seq
        ops = [["XADDX", self.k_frames, self.stream_len, entry, "z", encode_frame(frame)]]
        self._publish(ops, entry)

    def _summary(self, summary: dict[str, Any]) -> None:
        self._progress(summary)
        self.buffer.fold(summary)
        entry = f"{self.next_seq}-{self.sub}"
        self.sub += 1
        ops = [["XADDX", self.k_frames, self.stream_len, entry, "z", encode_frame(summary)]]
        self._publish(ops, entry)

    def _publish(self, ops: list[list[Any]], entry: str) -> None:
        ops += self._csv_ops()
        ops.append(["HSET", self.k_run, *self._flat(self.progress)])
        ops += self._snapshot_ops(entry)
        self.store.fenced(self.run_id, self.token, ops, self.ttl_ms)

    def _progress(self, frame: dict[str, Any]) -> None:
        p = self.progress
        if frame.get("test_loss") is not None and not p.get("best_test_loss"):
            p["best_test_loss"] = self.fields.get("best_test_loss")  # from before a restart
        p["step"] = fold_progress(p, frame, p.get("step", 0))
        if frame.get("run_status"):
            p["status"] = frame["run_status"]

    def _state(self, state: dict[str, Any]) -> None:
        fields = {k: state[k] for k in ("status", "step", "steps_per_second", "steps_per_frame",
                                        "learning_rates", "phases", "view", "pace", "narrate",
                                        "fast_forward_to", "config") if k in state}
        fields["alive"] = True
        self.progress["status"] = state.get("status", self.progress.get("status"))
        ops = [["HSET", self.k_run, *self._flat(fields)], *self._reply_ops()]
        self.store.fenced(self.run_id, self.token, ops, self.ttl_ms)

    def _reply_ops(self) -> list[list[Any]]:
        ops: list[list[Any]] = []
        while self.replies:
            cmd_id, result = self.replies.popleft()
            key = self.store.k_reply(cmd_id)
            ops += [["RPUSH", key, enc(result)], ["EXPIRE", key, 60]]
        return ops

    def _checkpoint(self, info: dict[str, Any]) -> None:
        name, path = str(info["name"]), Path(info["path"])
        blob = path.read_bytes()
        ops = self._csv_ops()
        meta = {"step": int(info["step"]), "auto": bool(info["auto"]), "csv_chunks": self.csv_chunks,
                "seq": self.buffer.cursor, "created": float(info.get("wall", time.time()))}
        k_ckpts = self.store.key(self.run_id, "ckpts")
        ops += [["SET", self.store.key(self.run_id, f"ckpt:{name}"), blob],
                ["SET", self.store.key(self.run_id, f"ckpthist:{name}"),
                 npz_bytes(self.buffer.snapshot())],
                ["HSET", k_ckpts, name, enc(meta)]]
        self.checkpoints = [c for c in self.checkpoints if c["name"] != name] + [{**meta, "name": name}]
        autos = [c for c in self.checkpoints if c.get("auto")]
        for old in autos[: max(0, len(autos) - self.keep)]:
            ops += [["DEL", self.store.key(self.run_id, f"ckpt:{old['name']}"),
                     self.store.key(self.run_id, f"ckpthist:{old['name']}")],
                    ["HDEL", k_ckpts, old["name"]]]
            self.checkpoints.remove(old)
        ops.append(["HSET", self.k_run, "checkpoints", enc([c["name"] for c in self.checkpoints])])
        self.store.fenced(self.run_id, self.token, ops, self.ttl_ms)
        path.unlink(missing_ok=True)

    def _bye(self, state: dict[str, Any]) -> None:
        status = str(state.get("status", ""))
        fields = {k: state[k] for k in ("status", "step", "learning_rates", "phases", "view",
                                        "pace", "narrate", "steps_per_frame", "config",
                                        "parked_from")
                  if k in state}
        fields["steps_per_second"] = 0.0
        ops = self._csv_ops() + self._reply_ops()
        ops += self._snapshot_ops(f"{self.next_seq}-{self.sub - 1}", force=True)
        if status in ACTIVE_STATUSES:  # handed off (the host drains): back to the queue
            fields.pop("status", None)
            ops.append(["HSET", self.k_run, *self._flat(fields)])
            self.store.fenced(self.run_id, self.token, ops, self.ttl_ms)
            out = self.store.requeue(self.run_id, "handoff", token=self.token)
            if out and out[0] == "requeue":
                self.enqueue(self.run_id, int(out[1]))
            self.outcome = "handed off"
            return
        fields.update(placement="", alive=False)
        ops += [["HSET", self.k_run, *self._flat(fields)],
                ["SREM", self.store.k_active, self.run_id],
                ["DEL", self.store.key(self.run_id, "lease")]]
        self.store.fenced(self.run_id, self.token, ops)
        self.outcome = status

    # ---- helpers -----------------------------------------------------------------------------
    @staticmethod
    def _flat(fields: dict[str, Any]) -> list[str]:
        out: list[str] = []
        for key, value in fields.items():
            out += [key, enc(value)]
        return out

    def _csv_ops(self) -> list[list[Any]]:
        """The CSV rows the worker appended since the last call, as one zlib block."""
        try:
            size = self.csv_path.stat().st_size
        except FileNotFoundError:
            return []
        if size <= self.csv_offset:
            return []
        with open(self.csv_path, "rb") as f:
            f.seek(self.csv_offset)
            data = f.read(size - self.csv_offset)
        cut = data.rfind(b"\n") + 1
        if not cut:
            return []
        self.csv_offset += cut
        op = ["RPUSHAT", self.k_csv, self.csv_chunks, zlib.compress(data[:cut], 6)]
        self.csv_chunks += 1
        if self.csv_offset > CSV_SCRATCH_LIMIT and self.csv_offset == size:
            os.truncate(self.csv_path, 0)  # the worker appends (O_APPEND): safe to cut back
            self.csv_offset = 0
        return [op]

    def _snapshot_ops(self, entry: str, force: bool = False) -> list[list[Any]]:
        """Snapshot the history pyramid when forced, when a third of the stream's window has
        gone by since the last one (servers rebuild from the snapshot plus the entries after
        it, which must still be in the stream), or every ``snapshot_every`` s."""
        now = time.monotonic()
        self.since_snap += 0 if force else 1
        due = self.since_snap >= max(1, self.stream_len // 3) or (
            self.since_snap and now - self.last_snap >= self.snapshot_every)
        if not (force or due):
            return []
        self.last_snap, self.since_snap = now, 0
        self.snap_n += 1
        return [["SET", self.store.key(self.run_id, "hist"), npz_bytes(self.buffer.snapshot())],
                ["HSET", self.k_run, "hist_version", enc(f"{self.attempt}.{self.snap_n}"),
                 "hist_id", enc(entry)]]


# ---- the reaper -----------------------------------------------------------------------------
class Reaper(threading.Thread):
    """Every ``every`` seconds: requeue active runs whose task's lease expired (or whose queued
    message was lost), or mark them failed after the run's ``max_recoveries``. Runs in every server and
    every worker's main process; the Lua script makes concurrent reapers harmless."""

    def __init__(self, store: RedisStore, enqueue: Enqueue, *, every: float = 1.0) -> None:
        super().__init__(name="plasticity-reaper", daemon=True)
        self.store, self.enqueue, self.every = store, enqueue, every
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.every):
            try:
                self.reap_once()
            except REDIS_ERRORS as exc:
                log.debug("reaper: redis unavailable: %s", exc)
            except Exception:
                log.exception("reaper")

    def reap_once(self) -> list[tuple[str, str]]:
        """One pass; returns [(run id, "requeued" | "failed")]."""
        done = []
        for run_id in self.store.active_ids():
            out = self.store.requeue(run_id, "reap")
            if not out:
                continue
            if out[0] == "requeue":
                log.warning("run %s: its worker is gone; requeued as attempt %s", run_id, out[1])
                self.enqueue(run_id, int(out[1]))
                done.append((run_id, "requeued"))
            else:
                log.error("run %s: %s", run_id, out[1])
                done.append((run_id, "failed"))
        return done

    def stop(self) -> None:
        self._stop_event.set()


# ---- the worker process (celery -A app.service.celery_app worker) ---------------------------
app = make_celery(prefix=os.environ.get("PLASTICITY_PREFIX") or PREFIX)
_reaper: Reaper | None = None


@signals.worker_process_init.connect
def _one_thread(**_: Any) -> None:
    """Each pool process steps with one intra-op torch thread (small ops spin otherwise)."""
    import torch

    torch.set_num_threads(int(os.environ.get("PLASTICITY_THREADS", "1")))


@signals.worker_ready.connect
def _start_reaper(sender: Any = None, **_: Any) -> None:
    global _reaper
    worker_app = getattr(sender, "app", None) or app
    conf = worker_app.conf
    store = RedisStore(conf.plasticity_redis_url, prefix=conf.plasticity_prefix, queue=QUEUE)
    host = getattr(sender, "hostname", None)
    if host:  # a restarted worker of the same name is not draining
        with contextlib.suppress(*REDIS_ERRORS):
            store.r.delete(store.k_drain(host))
    _reaper = Reaper(store, enqueuer(worker_app, conf.plasticity_prefix))
    _reaper.start()


@signals.worker_shutting_down.connect
def _drain(sender: Any = None, **_: Any) -> None:
    """Warm shutdown: ask this host's runs to checkpoint and go back to the queue."""
    host = str(sender) if sender else socket.gethostname()
    with contextlib.suppress(Exception):
        store = RedisStore(app.conf.plasticity_redis_url, prefix=app.conf.plasticity_prefix,
                           retry_seconds=1.0)
        store.set_drain(host, 60)
        store.close()
    if _reaper is not None:
        _reaper.stop()


# Preload what every run needs, once, in the parent: forked pool processes share it.
with contextlib.suppress(ImportError):
    import simulator
    import simulator.engine  # noqa: F401
    from app.service import framebuffer as _framebuffer  # noqa: F401  (not `import app...`:
    # that would rebind this module's Celery `app`)
