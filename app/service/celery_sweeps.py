"""Experiments on Celery workers: each batch (members x seeds as one run) is one Celery task,
``plasticity.sweep_batch(folder, index)``, spread over every worker of the queue.

The experiment folder (``DATA_DIR/experiments/<id>/``, see app.service.sweeps) is shared by
the server and the workers: they run on the server's machine or mount its data directory at
the same path. A task writes only its own batch's files: a checkpoint (``NNNN.ckpt``, every
``checkpoint_seconds`` of compute), a progress note (``NNNN.progress``), and at the end its
result (``NNNN.json``, atomically; a batch computed twice replaces it, never appends).

Faults. The task is ``acks_late`` + ``reject_on_worker_lost`` (a killed pool process gets its
message requeued by its parent). A whole worker host killed (SIGKILL, power) leaves no one to
requeue: so a task holds a **lease** on its batch (a Redis key with a TTL, refreshed by a
heartbeat thread) and leaves a claim file; the server's monitor requeues a batch whose claim has
no lease any more, and the next worker continues it from its checkpoint. Whoever finds the
batch done, or its lease held by a live worker, exits at once; so every member x seed is in
the table exactly once, whatever was redelivered.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import socket
import threading
import time
from pathlib import Path
from typing import Any

from celery import shared_task

from app.service.sweeps import UNFINISHED, ExperimentService, write_json
from simulator import sweep as sw

log = logging.getLogger("app.service.celery_sweeps")

TASK_NAME = "plasticity.sweep_batch"
MONITOR_SECONDS = 0.5
PROGRESS_SECONDS = 0.5


def lease_key(prefix: str, exp_id: str, index: int) -> str:
    return f"{prefix}xlease:{exp_id}:{index}"


def host_batch(folder: Path, index: int, client: Any, prefix: str, host: str, ttl: float,
               checkpoint_seconds: float) -> str:
    """Run batch ``index`` of the experiment in ``folder`` under a lease (see the module doc);
    returns what happened."""
    if sw.batch_path(folder, index).exists():
        return "done already"
    if (folder / "cancelled").exists():
        return "cancelled"
    key, token = lease_key(prefix, folder.name, index), secrets.token_hex(8)
    if not client.set(key, token, nx=True, px=int(ttl * 1000)):
        return "held by another worker"
    write_json(sw.batch_path(folder, index, ".claim"), {"host": host, "since": time.time()})
    lost = threading.Event()
    stop = threading.Event()

    def heartbeat() -> None:
        while not stop.wait(ttl / 3):
            try:
                if client.get(key) != token.encode() or not client.pexpire(key, int(ttl * 1000)):
                    lost.set()
                    return
            except Exception:  # Redis away for a moment: try again (the lease may expire)
                log.warning("batch %s/%s: lease refresh failed", folder.name, index)

    beat = threading.Thread(target=heartbeat, daemon=True, name=f"lease-{index}")
    beat.start()
    try:
        stored = json.loads((folder / "spec.json").read_text())
        exp = sw.parse_experiment(stored["spec"])
        members = json.loads((folder / "plan.json").read_text())["batches"][index]
        note = sw.batch_path(folder, index, ".progress")
        state = {"done": 0, "written": 0.0}

        def progress(n: int) -> None:
            state["done"] += n
            now = time.monotonic()
            if now - state["written"] >= PROGRESS_SECONDS:
                state["written"] = now
                write_json(note, {"host": host, "done": state["done"]})
            if lost.is_set() or (folder / "cancelled").exists():
                raise sw.Cancelled("lease lost" if lost.is_set() else "cancelled")

        try:
            result = sw.run_batch(exp, members, progress, checkpoint=sw.batch_path(
                folder, index, ".ckpt"), checkpoint_seconds=checkpoint_seconds)
        except sw.Cancelled as why:
            return str(why)
        result["host"] = host
        sw.finish_batch(folder, index, result)
        note.unlink(missing_ok=True)
        return f"done (from step {result['resumed_from']})"
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            if client.get(key) == token.encode():
                client.delete(key)


@shared_task(name=TASK_NAME, bind=True, acks_late=True, reject_on_worker_lost=True,
             ignore_result=True)
def sweep_batch(self: Any, folder: str, index: int, prefix: str, ttl: float,
                checkpoint_seconds: float) -> str:
    """One batch of an experiment (see host_batch)."""
    import redis

    client = redis.Redis.from_url(self.app.conf.plasticity_redis_url, socket_timeout=5)
    host = self.request.hostname or socket.gethostname()
    try:
        outcome = host_batch(Path(folder), int(index), client, prefix, host, float(ttl),
                             float(checkpoint_seconds))
    finally:
        client.close()
    log.info("experiment %s batch %s on %s: %s", Path(folder).name, index, host, outcome)
    return outcome


class CelerySweeps(ExperimentService):
    """Experiments whose batches are Celery tasks on the CeleryBackend's queue and Redis."""

    kind = "celery"

    def __init__(self, backend: Any, **kwargs: Any) -> None:
        import redis

        from app.service.celery_app import QUEUE

        super().__init__(backend.settings, **kwargs)
        self.celery, self.queue = backend.celery, QUEUE
        self.prefix = backend.store.prefix
        self.ttl = float(backend.run_settings["heartbeat_ttl"])
        self.client = redis.Redis.from_url(backend.redis_url, socket_timeout=5)
        self._active: set[str] = set()
        self._stopping = threading.Event()
        self._monitor: threading.Thread | None = None
        for exp_id in self._recoverable():  # re-queue what is not done (duplicates exit)
            self._launch(exp_id)

    def _send(self, exp_id: str, index: int) -> None:
        self.celery.send_task(TASK_NAME, args=[str(self.root / exp_id), index, self.prefix,
                                               self.ttl, self.settings.checkpoint_seconds],
                              queue=self.queue)

    def _unfinished(self, exp_id: str) -> list[int]:
        folder = self.root / exp_id
        return [b for b in range(len(self.batches(exp_id)))
                if not sw.batch_path(folder, b).exists()]

    def _launch(self, exp_id: str) -> None:
        folder = self.root / exp_id
        exp = self.experiment(exp_id)
        batches = self.batches(exp_id)
        todo = self._unfinished(exp_id)
        before = sum(len(batches[b]) * len(exp.seeds) * exp.steps
                     for b in range(len(batches)) if b not in todo)
        self._mark_running(exp_id, before)
        for b in todo:
            sw.batch_path(folder, b, ".claim").unlink(missing_ok=True)
            self._send(exp_id, b)
        with self._lock:
            self._active.add(exp_id)
            if self._monitor is None:
                self._monitor = threading.Thread(target=self._watch, daemon=True,
                                                 name="plab-sweep-monitor")
                self._monitor.start()

    def _cancel(self, exp_id: str) -> None:
        with self._lock:
            self._active.discard(exp_id)

    def _done(self, exp_id: str, folder: Path, batches: list[list[int]], finished: list[int],
              seeds: int, steps: int) -> int:
        total = sum(len(batches[b]) * seeds * steps for b in finished)
        for b in range(len(batches)):
            if b not in finished:
                with contextlib.suppress(OSError, ValueError, KeyError):
                    total += int(json.loads(sw.batch_path(folder, b, ".progress")
                                            .read_text())["done"])
        return total

    def shutdown(self) -> None:
        self._stopping.set()

    def _watch(self) -> None:
        while not self._stopping.wait(MONITOR_SECONDS):
            with self._lock:
                active = list(self._active)
            for exp_id in active:
                try:
                    self._check(exp_id)
                except Exception:  # keep watching the others
                    log.exception("experiment %s: monitor", exp_id)

    def _check(self, exp_id: str) -> None:
        folder = self.root / exp_id
        if self.meta(exp_id)["status"] not in UNFINISHED:
            self._cancel(exp_id)
            return
        todo = self._unfinished(exp_id)
        if not todo:
            self._finish(exp_id, self.experiment(exp_id))
            self._cancel(exp_id)
            return
        for b in todo:
            claim = sw.batch_path(folder, b, ".claim")
            try:
                since = json.loads(claim.read_text())["since"]
            except (OSError, ValueError, KeyError):
                continue  # queued, not started yet
            if time.time() - since < self.ttl or self.client.exists(
                    lease_key(self.prefix, exp_id, b)):
                continue
            if sw.batch_path(folder, b).exists():
                continue  # finished between the two looks
            log.warning("experiment %s batch %s: its worker was lost; requeued (it continues "
                        "from its checkpoint)", exp_id, b)
            claim.unlink(missing_ok=True)
            self._send(exp_id, b)
