"""Experiments through the run service: grids of runs (``simulator.sweep``) submitted, watched,
cancelled and read back, on the embedded backend or on Celery workers.

    service = LocalSweeps(settings)                    # or CelerySweeps (celery_sweeps.py)
    exp_id = service.submit({"preset": "dnib-rates", "steps": 2000}, owner="admin")
    service.get(exp_id)    # status, progress (seed-steps done / total), ETA, batches done
    service.table(exp_id, "results.csv")              # the tidy table (partial while running)

Each experiment is a folder ``DATA_DIR/experiments/<id>/``: ``meta.json`` (owner, status,
times), and what ``simulator.sweep`` writes there (spec.json, plan.json, one file per finished
batch, a checkpoint per running batch, results.csv and series.csv). Everything the page shows is
read from that folder, so it survives a page reload and a server restart (an experiment that
was running continues from its batches' checkpoints when the server starts again).

Admission (before anything is written): every batch (members x seeds as one run) is checked
like a run against ``--max-run-memory`` and ``--max-run-work``; the whole experiment's work,
plus what the owner's unfinished experiments still have to do, against the per-user budget:
``--max-run-work`` x the user's run quota (``--max-user-runs``; the admin: ``--max-runs``),
i.e. as much work as the user may have queued as single runs at once.

The embedded backend runs one experiment at a time (a FIFO queue), its batches in a pool of
processes using every core (``simulator.sweep.sweep``, the same pool as the CLI's).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import threading
import time
import tomllib
from pathlib import Path
from typing import Any

from app.service.admission import Budgets, OverBudget
from app.service.base import BackendSettings, Conflict, ServiceError
from simulator import sweep as sw
from simulator.config import RunConfig
from simulator.cost import flops_text
from simulator.settings import ConfigError, quote

STATUSES = ("queued", "running", "finished", "cancelled", "failed")
UNFINISHED = ("queued", "running")
TABLES = ("results.csv", "series.csv")
MAX_TOML = 64 << 10
#: keys a preset submission may carry besides "preset" (they override the preset's [base])
PRESET_OVERRIDES = ("steps", "seeds", "test_steps")


class ExperimentNotFound(ServiceError, LookupError):
    """No experiment with this id (or not the caller's)."""

    http_status = 404

    def __init__(self, exp_id: str) -> None:
        super().__init__(f"id: no experiment with id {quote(exp_id)}", field="id")

    def __str__(self) -> str:
        return self.message


def resolve_spec(body: Any) -> dict[str, Any]:
    """The experiment spec of a submission: a spec (the TOML form as JSON), ``{"toml": TEXT}``,
    or ``{"preset": NAME}`` with optional ``steps``/``seeds``/``test_steps`` overrides."""
    from simulator import presets

    if not isinstance(body, dict):
        raise ConfigError("experiment", "got a non-object body; allowed: an experiment spec "
                                        "(base, axes, ...), {\"toml\": ...} or {\"preset\": NAME}")
    if "toml" in body:
        text = body["toml"]
        if not isinstance(text, str) or len(text) > MAX_TOML:
            raise ConfigError("toml", f"allowed: TOML text of at most {MAX_TOML:,} characters")
        try:
            spec = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise ConfigError("toml", f"not valid TOML: {str(err)[:100]}") from None
        extra = {k: v for k, v in body.items() if k != "toml"}
        return _with_overrides(spec, extra) if extra else spec
    if "preset" not in body:
        return body
    name = body["preset"]
    if not isinstance(name, str) or name not in presets.names():
        raise ConfigError("preset", f"got {quote(name)}; allowed: {', '.join(presets.names())}")
    spec = tomllib.loads(presets.resolve_experiment(name).read_text())
    return _with_overrides(spec, {k: v for k, v in body.items() if k != "preset"})


def _with_overrides(spec: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    for key in extra:
        if key not in PRESET_OVERRIDES:
            raise ConfigError(quote(key)[1:-1], f"unknown key beside a preset or TOML; allowed: "
                                                f"{', '.join(PRESET_OVERRIDES)}")
    base = spec.get("base", {})
    if not isinstance(base, dict):
        raise ConfigError("base", "must be a table")
    return {**spec, "base": {**base, **extra}}


def _now() -> float:
    return time.time()


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(f"{path.suffix}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


@dataclasses.dataclass
class Progress:
    """Seed-steps done since ``since`` (a launch), on top of ``before`` (done earlier)."""

    since: float
    before: int = 0
    done: int = 0


class ExperimentService:
    """What both backends share: the folder layout, admission, listing, tables and progress.
    Subclasses launch and cancel (``_launch``, ``_cancel``) and report in-flight progress."""

    kind = "base"

    def __init__(self, settings: BackendSettings, *, workers: int | None = None,
                 user_runs: int | None = None) -> None:
        self.settings = settings
        self.root = Path(settings.data_dir) / "experiments"  # made by the first submit
        self.workers = workers or os.cpu_count() or 1
        self.user_runs = user_runs  # the per-user run quota (None: max_runs)
        self._lock = threading.RLock()
        self._progress: dict[str, Progress] = {}

    # ---- folders ------------------------------------------------------------------------------
    def folder(self, exp_id: str) -> Path:
        if not (isinstance(exp_id, str) and exp_id.isalnum() and len(exp_id) <= 40):
            raise ExperimentNotFound(str(exp_id))
        path = self.root / exp_id
        if not (path / "meta.json").is_file():
            raise ExperimentNotFound(exp_id)
        return path

    def meta(self, exp_id: str) -> dict[str, Any]:
        return json.loads((self.folder(exp_id) / "meta.json").read_text())

    def _update_meta(self, exp_id: str, **changes: Any) -> dict[str, Any]:
        with self._lock:
            meta = {**self.meta(exp_id), **changes}
            write_json(self.root / exp_id / "meta.json", meta)
            return meta

    def experiment(self, exp_id: str) -> sw.Experiment:
        stored = json.loads((self.folder(exp_id) / "spec.json").read_text())
        return sw.parse_experiment(stored["spec"])

    def batches(self, exp_id: str) -> list[list[int]]:
        return json.loads((self.folder(exp_id) / "plan.json").read_text())["batches"]

    def ids(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted((p.name for p in self.root.iterdir() if (p / "meta.json").is_file()),
                      key=lambda i: (self.root / i / "meta.json").stat().st_mtime_ns)

    # ---- admission ----------------------------------------------------------------------------
    def user_budget(self, owner_is_admin: bool) -> int:
        """FLOP of work a user may have outstanding in experiments (0: no limit)."""
        budgets = Budgets.of(self.settings)
        quota = self.settings.max_runs if owner_is_admin or not self.user_runs else self.user_runs
        return budgets.run_work * max(1, quota)

    def outstanding_work(self, owner: str) -> int:
        """FLOP still to do in ``owner``'s queued and running experiments."""
        total = 0
        for exp_id in self.ids():
            with contextlib.suppress(Exception):
                meta = self.meta(exp_id)
                if meta["owner"] == owner and meta["status"] in UNFINISHED:
                    info = self.get(exp_id)
                    total += int(meta["work_flops"] * (1 - info["progress"]))
        return total

    def admit(self, exp: sw.Experiment, owner: str, admin: bool) -> tuple[list[list[int]], int]:
        """The batches and the total work, or OverBudget naming the field and the limit."""
        budgets = Budgets.of(self.settings)
        batches = sw.plan_batches(exp, sw.DEFAULT_BATCH, self.workers)
        try:
            costs = sw.check_costs(exp, batches, budgets.run_memory, flag="--max-run-memory")
        except ConfigError as err:
            raise OverBudget(f"{err.field}: {err.message}", field=err.field) from None
        for b, cost in enumerate(costs):
            if budgets.run_work and cost.work_flops > budgets.run_work:
                raise OverBudget(f"steps: batch {b} ({len(batches[b])} members x "
                                 f"{len(exp.seeds)} seeds x {exp.steps:,} steps) is about "
                                 f"{flops_text(cost.work_flops)} of work; this server allows "
                                 f"{flops_text(budgets.run_work)} per run (--max-run-work)",
                                 field="steps")
        work = sum(c.work_flops for c in costs)
        limit = self.user_budget(admin)
        if limit:
            pending = self.outstanding_work(owner)
            if pending + work > limit:
                held = (f" and your unfinished experiments still need about "
                        f"{flops_text(pending)}" if pending else "")
                raise OverBudget(f"steps: this experiment is about {flops_text(work)} of work "
                                 f"({len(exp.members)} members x {len(exp.seeds)} seeds x "
                                 f"{exp.steps:,} steps){held}; this server allows "
                                 f"{flops_text(limit)} per user (--max-run-work x "
                                 "--max-user-runs): fewer steps, seeds or members",
                                 field="steps")
        return batches, work

    # ---- the service --------------------------------------------------------------------------
    def submit(self, body: Any, *, owner: str, admin: bool = True) -> str:
        """Validate, admit and queue an experiment; returns its id."""
        exp = sw.parse_experiment(resolve_spec(body))
        with self._lock:
            batches, work = self.admit(exp, owner, admin)
            exp_id = secrets.token_hex(6)
            folder = self.root / exp_id
            folder.mkdir(parents=True)
            sw.prepare(exp, folder, workers=self.workers)
            total = sum(len(b) for b in batches) * len(exp.seeds) * exp.steps
            write_json(folder / "meta.json", {
                "id": exp_id, "owner": owner, "name": exp.spec.get("name") or "",
                "status": "queued", "created": _now(), "started": None, "ended": None,
                "error": None, "total": total, "work_flops": work, "backend": self.kind})
        self._launch(exp_id)
        return exp_id

    def list(self, owner: str | None = None) -> list[dict[str, Any]]:
        out = []
        for exp_id in reversed(self.ids()):
            with contextlib.suppress(ServiceError, OSError, ValueError, KeyError):
                info = self.get(exp_id, detail=False)
                if owner is None or info["owner"] == owner:
                    out.append(info)
        return out

    def get(self, exp_id: str, detail: bool = True) -> dict[str, Any]:
        meta = self.meta(exp_id)
        folder = self.root / exp_id
        batches = self.batches(exp_id)
        stored = json.loads((folder / "spec.json").read_text())
        seeds = len(stored["seeds"])
        steps_of = int(meta["total"] // max(1, sum(len(b) for b in batches) * seeds))
        finished = [b for b in range(len(batches)) if sw.batch_path(folder, b).exists()]
        done_batches = sum(len(batches[b]) * seeds * steps_of for b in finished)
        done = max(done_batches, self._done(exp_id, folder, batches, finished, seeds, steps_of))
        total = max(1, int(meta["total"]))
        if meta["status"] == "finished":
            done = total
        progress = min(1.0, done / total)
        eta = None
        record = self._progress.get(exp_id)
        if meta["status"] == "running" and record is not None:
            elapsed = _now() - record.since
            fresh = done - record.before
            if fresh > 0 and elapsed > 0:
                eta = (total - done) * elapsed / fresh
        info = {**meta, "progress": progress, "done": done, "eta_seconds": eta,
                "batches": len(batches), "batches_done": len(finished),
                "members": stored["members"], "seeds": stored["seeds"]}
        if detail:
            info["spec"] = stored["spec"]
            info["code_version"] = stored.get("code_version")
        return info

    def _done(self, exp_id: str, folder: Path, batches: list[list[int]], finished: list[int],
              seeds: int, steps: int) -> int:
        """Seed-steps done as the backend knows them (in flight included)."""
        record = self._progress.get(exp_id)
        return 0 if record is None else record.before + record.done

    def cancel(self, exp_id: str) -> dict[str, Any]:
        meta = self.meta(exp_id)
        if meta["status"] not in UNFINISHED:
            raise Conflict(f"status: experiment {exp_id} is {meta['status']}; allowed: cancel a "
                           "queued or running experiment", field="status")
        (self.root / exp_id / "cancelled").touch()
        self._cancel(exp_id)
        return self._update_meta(exp_id, status="cancelled", ended=_now())

    def table(self, exp_id: str, name: str) -> Path:
        """results.csv or series.csv: the whole table once finished, else the rows of the
        batches done so far (written on demand)."""
        if name not in TABLES:
            raise ExperimentNotFound(name)
        folder = self.folder(exp_id)
        path = folder / name
        if self.meta(exp_id)["status"] != "finished" or not path.exists():
            with self._lock:
                sw.write_tables(self.experiment(exp_id), folder, len(self.batches(exp_id)),
                                partial=True)
        return path

    def member_config(self, exp_id: str, member: int, seed: int) -> dict[str, Any]:
        """The config of one member with one seed, as a normal run would take it."""
        exp = self.experiment(exp_id)
        if not 0 <= member < len(exp.members):
            raise ConfigError("member", f"got {quote(member)}; allowed: 0 to "
                                        f"{len(exp.members) - 1}")
        if seed not in exp.seeds:
            raise ConfigError("seed", f"got {quote(seed)}; allowed: one of the experiment's "
                                      f"seeds ({quote(exp.seeds)})")
        config: RunConfig = dataclasses.replace(exp.members[member].config, seeds=[seed],
                                                steps=exp.steps, test_steps=exp.test_steps)
        return config.to_dict()

    def delete(self, exp_id: str) -> None:
        import shutil

        meta = self.meta(exp_id)
        if meta["status"] in UNFINISHED:
            self.cancel(exp_id)
        shutil.rmtree(self.root / exp_id, ignore_errors=True)

    # ---- backend hooks ------------------------------------------------------------------------
    def _launch(self, exp_id: str) -> None:
        raise NotImplementedError

    def _cancel(self, exp_id: str) -> None:
        raise NotImplementedError

    def shutdown(self) -> None:
        """Stop background work (checkpoints stay: a restart continues)."""

    def _mark_running(self, exp_id: str, before: int) -> None:
        self._progress[exp_id] = Progress(since=_now(), before=before)
        meta = self.meta(exp_id)
        self._update_meta(exp_id, status="running", started=meta["started"] or _now())

    def _finish(self, exp_id: str, exp: sw.Experiment) -> None:
        folder = self.root / exp_id
        with self._lock:
            sw.write_tables(exp, folder, len(self.batches(exp_id)))
        self._update_meta(exp_id, status="finished", ended=_now())

    def _fail(self, exp_id: str, error: BaseException) -> None:
        text = f"{type(error).__name__}: {str(error)[:200]}" if not isinstance(
            error, ServiceError | ConfigError) else str(error)[:300]
        self._update_meta(exp_id, status="failed", ended=_now(), error=text)

    def _recoverable(self) -> list[str]:
        out = []
        for exp_id in self.ids():
            with contextlib.suppress(Exception):
                if self.meta(exp_id)["status"] in UNFINISHED:
                    out.append(exp_id)
        return out


class LocalSweeps(ExperimentService):
    """The embedded backend: one experiment at a time, its batches over every core."""

    kind = "local"

    def __init__(self, settings: BackendSettings, **kwargs: Any) -> None:
        super().__init__(settings, **kwargs)
        self._queue: list[str] = []
        self._wake = threading.Condition(self._lock)
        self._stop: set[str] = set()
        self._closing = False
        self._thread: threading.Thread | None = None
        for exp_id in self._recoverable():  # a restart continues what was queued or running
            self._launch(exp_id)

    def _launch(self, exp_id: str) -> None:
        with self._wake:
            self._queue.append(exp_id)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="plab-sweeps",
                                                daemon=True)
                self._thread.start()
            self._wake.notify_all()

    def _cancel(self, exp_id: str) -> None:
        with self._wake:
            self._stop.add(exp_id)
            if exp_id in self._queue:
                self._queue.remove(exp_id)

    def shutdown(self) -> None:
        with self._wake:
            self._closing = True
            self._stop.update(self._queue)
            self._stop.update(self._progress)
            self._wake.notify_all()

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._queue and not self._closing:
                    self._wake.wait()
                if self._closing:
                    return
                exp_id = self._queue.pop(0)
            self._run(exp_id)

    def _run(self, exp_id: str) -> None:
        try:
            if exp_id in self._stop or self.meta(exp_id)["status"] not in UNFINISHED:
                return
            exp = self.experiment(exp_id)
            folder = self.root / exp_id
            batches = self.batches(exp_id)
            before = sum(len(batches[b]) * len(exp.seeds) * exp.steps
                         for b in range(len(batches)) if sw.batch_path(folder, b).exists())
            self._mark_running(exp_id, before)
            record = self._progress[exp_id]

            def progress(n: int) -> None:
                record.done += n

            sw.sweep(exp, folder, workers=self.workers, resume=True, show_progress=False,
                     progress=progress, stop=lambda: exp_id in self._stop,
                     checkpoint_seconds=self.settings.checkpoint_seconds)
            self._finish(exp_id, exp)
        except sw.Cancelled:
            pass  # meta says cancelled already (or the server is closing: continues on restart)
        except Exception as err:  # one failed experiment must not stop the queue
            with contextlib.suppress(Exception):
                self._fail(exp_id, err)
        finally:
            self._progress.pop(exp_id, None)
