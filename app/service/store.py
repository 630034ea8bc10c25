"""Persistence: an embedded SQLite database (WAL) plus files under the data directory.

    DATA_DIR/runs.sqlite3                 the index: runs (id, config, status, step, info) and
                                          checkpoints (paths relative to DATA_DIR)
    DATA_DIR/runs/<id>/run.json           the run's own record (config, status, created, parent,
                                          info, checkpoints): enough to rebuild the index
    DATA_DIR/runs/<id>/scalars.csv        per-step scalars within a byte budget (the worker
                                          appends; see ``app.service.worker.HistoryCSV``)
    DATA_DIR/runs/<id>/checkpoints/*.pt   torch.save'd Run.state_dict() (the worker writes)
    DATA_DIR/runs/<id>/checkpoints/*.history.npz   the server's decimated history at that point
    DATA_DIR/runs/<id>/history.npz        the decimated history when the run ended

Only the server process touches the database; one connection guarded by a lock.

Faults: a database that cannot be read (garbage, truncated, failing its quick check) leaves
the store ``damaged`` (the reason): runs are then read from their run.json files and nothing
is written until ``plasticity-lab doctor --data-dir DATA_DIR`` rebuilds the index. A row that
does not parse is returned as ``unreadable`` with its reason. A full disk raises
:class:`DiskFull` from every write (SQLite's "database or disk is full" included).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import secrets
import shutil
import sqlite3
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("app.service")

MANIFEST = "run.json"
TRASH_PREFIX = ".trash-"

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    parent TEXT,
    config TEXT NOT NULL,
    status TEXT NOT NULL,
    step INTEGER NOT NULL DEFAULT 0,
    info TEXT NOT NULL DEFAULT '{}',
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS checkpoints (
    run_id TEXT NOT NULL,
    name TEXT NOT NULL,
    step INTEGER NOT NULL,
    path TEXT NOT NULL,
    auto INTEGER NOT NULL,
    csv_bytes INTEGER NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (run_id, name)
);
"""


class DiskFull(OSError):
    """A write failed because the data disk is full (ENOSPC / EDQUOT / SQLite's "full")."""

    def __init__(self, what: str) -> None:
        super().__init__(errno.ENOSPC, what)
        self.what = what

    def __str__(self) -> str:
        return self.what


class StoreDamaged(RuntimeError):
    """The index database cannot be used; the store is read-only until repaired."""


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC or EDQUOT from the OS, or SQLite's "database or disk is full"."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(exc, sqlite3.OperationalError) and "full" in str(exc)


def repair_hint(root: Path) -> str:
    return f"plasticity-lab doctor --data-dir {root}"


class Store:
    """Runs, checkpoints and files of one data directory."""

    def __init__(self, data_dir: Path | str) -> None:
        self.root = Path(data_dir)
        self.db_path = self.root / "runs.sqlite3"
        self.damaged: str | None = None   # why the index cannot be used (None: it can)
        self.full: str | None = None      # set when the index could not open for a full disk
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        (self.root / "runs").mkdir(parents=True, exist_ok=True)
        self.reopen()
        if self._db is not None:
            try:
                self._migrate_paths()
            except sqlite3.DatabaseError as exc:
                if not is_disk_full(exc):
                    raise
                log.warning("%s: cannot migrate old checkpoint paths now (disk full)", self.db_path)

    def reopen(self) -> bool:
        """(Re)open the index; True when it is open. A failure on a disk that takes no write
        sets ``full`` (SQLite says "disk I/O error" when it cannot make its -shm file), any
        other ``damaged``."""
        if self._db is not None:
            return True
        try:
            self._db = self._open()
            self.full = self.damaged = None
            return True
        except sqlite3.DatabaseError as exc:
            if is_disk_full(exc) or self.probe() is not None:
                self.full = f"{self.db_path} cannot open ({exc})"
            else:
                self.damaged = f"{self.db_path} is damaged ({exc})"
            return False

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.db_path, check_same_thread=False, isolation_level=None, timeout=10)
        db.row_factory = sqlite3.Row
        try:
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {str(check)[:100]}")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(SCHEMA)
        except BaseException:
            db.close()
            raise
        return db

    def _migrate_paths(self) -> None:
        """Old rows hold absolute checkpoint paths (maybe of another data directory this one
        was copied from): store them relative to this one, where the run's files are."""
        with self._lock:
            rows = self._db.execute("SELECT run_id, name, path FROM checkpoints").fetchall()
            for row in rows:
                rel = self.relative(row["run_id"], row["path"])
                if rel != row["path"]:
                    self._db.execute("UPDATE checkpoints SET path = ? WHERE run_id = ? AND name = ?",
                                     (rel, row["run_id"], row["name"]))

    # ---- paths ---------------------------------------------------------------------------
    def run_dir(self, run_id: str) -> Path:
        return self.root / "runs" / run_id

    def csv_path(self, run_id: str) -> Path:
        return self.run_dir(run_id) / "scalars.csv"

    def history_path(self, run_id: str) -> Path:
        return self.run_dir(run_id) / "history.npz"

    def relative(self, run_id: str, path: str | Path) -> str:
        """How the index stores a checkpoint file: relative to the data directory, always
        inside the run's own folder (whatever directory an old absolute path named)."""
        return f"runs/{run_id}/checkpoints/{Path(path).name}"

    def resolve(self, rel: str) -> Path:
        return self.root / rel

    # ---- plumbing ---------------------------------------------------------------------------
    def _exec(self, fn: Any) -> Any:
        """Run ``fn(db)`` under the lock; a full disk raises DiskFull, no index StoreDamaged."""
        if self._db is None:
            raise StoreDamaged(self.damaged or self.full or "the index is closed")
        with self._lock:
            try:
                return fn(self._db)
            except sqlite3.OperationalError as exc:
                if is_disk_full(exc):
                    raise DiskFull(f"{self.db_path}: {exc}") from None
                raise

    def probe(self) -> str | None:
        """None if the data directory takes a small write now, else why not."""
        path = self.root / f".probe-{secrets.token_hex(3)}"
        try:
            with open(path, "wb") as f:
                f.write(b"\0" * 65536)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            return f"{self.root}: {exc.strerror or exc}"
        finally:
            with contextlib.suppress(OSError):
                path.unlink()
        return None

    # ---- runs ----------------------------------------------------------------------------
    def insert_run(self, run_id: str, config: dict[str, Any], status: str,
                   parent: str | None, info: dict[str, Any], created: float) -> None:
        """Index a new run and create its folder (with run.json). Nothing is left behind when
        it fails (a full disk raises DiskFull)."""
        folder = self.run_dir(run_id)
        try:
            folder.mkdir(parents=True, exist_ok=False)  # an existing folder is never touched
        except OSError as exc:
            if is_disk_full(exc):
                raise DiskFull(f"{folder}: {exc}") from None
            raise
        try:
            self._exec(lambda db: db.execute(
                "INSERT INTO runs (id, created, parent, config, status, step, info, updated) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, created, parent, json.dumps(config), status, int(info.get("step", 0)),
                 json.dumps(info), time.time())))
            self.write_manifest(run_id, strict=True)
        except BaseException as exc:
            self.forget_run(run_id)
            if is_disk_full(exc) and not isinstance(exc, DiskFull):
                raise DiskFull(f"{folder}: {exc}") from None
            raise

    def forget_run(self, run_id: str) -> None:
        """Undo a half-made run: its folder and rows (never raises)."""
        shutil.rmtree(self.run_dir(run_id), ignore_errors=True)
        with contextlib.suppress(Exception):
            self._exec(lambda db: (db.execute("DELETE FROM runs WHERE id = ?", (run_id,)),
                                   db.execute("DELETE FROM checkpoints WHERE run_id = ?", (run_id,))))

    def update_run(self, run_id: str, *, status: str | None = None, step: int | None = None,
                   config: dict[str, Any] | None = None, info: dict[str, Any] | None = None) -> None:
        sets, args = ["updated = ?"], [time.time()]
        for column, value in (("status", status), ("step", step)):
            if value is not None:
                sets.append(f"{column} = ?")
                args.append(value)
        for column, value in (("config", config), ("info", info)):
            if value is not None:
                sets.append(f"{column} = ?")
                args.append(json.dumps(value))
        self._exec(lambda db: db.execute(f"UPDATE runs SET {', '.join(sets)} WHERE id = ?",
                                         (*args, run_id)))
        if status is not None:
            self.write_manifest(run_id)

    def load_runs(self, adopt: bool = True) -> list[dict[str, Any]]:
        """Every run, oldest first: id, created, parent, config, status, step, info; a row or
        folder that cannot be read comes back with ``unreadable`` (the reason) and config {}.
        Folders the index lacks are indexed from their run.json when ``adopt`` (an emptied
        database: "adopted" is set), else come back with "indexed" False."""
        if self._db is None:
            return [self.manifest_run(folder.name) for folder in self._folders()]
        rows = self._exec(lambda db: db.execute("SELECT * FROM runs ORDER BY created").fetchall())
        out = [_parse_row(r) for r in rows]
        known = {r["id"] for r in out}
        missing = [f.name for f in self._folders() if f.name not in known]
        for run_id in missing:
            run = self.manifest_run(run_id)
            run["indexed"] = False
            if "unreadable" not in run and adopt:
                with contextlib.suppress(DiskFull):
                    self.index_from_manifest(run)
                    run["adopted"], run["indexed"] = True, True
            out.append(run)
        return sorted(out, key=lambda r: r["created"])

    def _folders(self) -> list[Path]:
        base = self.root / "runs"
        return sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))

    def read_manifest(self, run_id: str) -> dict[str, Any]:
        """The run's run.json; raises ValueError/OSError when it cannot be read."""
        data = json.loads((self.run_dir(run_id) / MANIFEST).read_text(encoding="utf-8"))
        if not isinstance(data, dict) or not isinstance(data.get("config"), dict):
            raise ValueError("run.json holds no config object")
        return data

    def manifest_run(self, run_id: str) -> dict[str, Any]:
        """The run as its run.json records it (``unreadable`` set when it cannot be read)."""
        folder = self.run_dir(run_id)
        try:
            data = self.read_manifest(run_id)
            return {"id": run_id, "created": float(data.get("created", 0.0)),
                    "parent": data.get("parent"), "config": data["config"],
                    "status": str(data.get("status", "interrupted")), "step": int(data.get("step", 0)),
                    "info": dict(data.get("info") or {}),
                    "checkpoints": list(data.get("checkpoints") or [])}
        except FileNotFoundError:
            reason = f"{folder} has no {MANIFEST} and the index does not list it"
        except (OSError, ValueError, TypeError) as exc:
            reason = f"{folder / MANIFEST}: {str(exc)[:100]}"
        return {"id": run_id, "created": _mtime(folder), "parent": None, "config": {},
                "status": "unreadable", "step": 0, "info": {}, "unreadable": reason}

    def index_from_manifest(self, run: dict[str, Any]) -> int:
        """Insert a run read from its run.json, with those of its checkpoints whose files
        exist; returns how many checkpoints were indexed."""
        cks = [c for c in run.get("checkpoints", []) if isinstance(c, dict) and c.get("name")
               and self.resolve(self.relative(run["id"], c.get("file") or f"{c['name']}.pt")).exists()]

        def write(db: sqlite3.Connection) -> None:
            db.execute("INSERT OR REPLACE INTO runs (id, created, parent, config, status, step, info, "
                       "updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       (run["id"], run["created"], run["parent"], json.dumps(run["config"]),
                        run["status"], run["step"], json.dumps(run["info"]), time.time()))
            for c in cks:
                db.execute("INSERT OR REPLACE INTO checkpoints VALUES (?, ?, ?, ?, ?, ?, ?)",
                           (run["id"], c["name"], int(c.get("step", 0)),
                            self.relative(run["id"], c.get("file") or f"{c['name']}.pt"),
                            int(bool(c.get("auto"))), int(c.get("csv_bytes", 0)),
                            float(c.get("created", 0.0))))

        self._exec(write)
        return len(cks)

    def write_manifest(self, run_id: str, strict: bool = False) -> None:
        """Write run.json from the index (atomically). A failure is logged, not raised, unless
        ``strict``: the index is the live record, run.json its recoverable copy."""
        def read(db: sqlite3.Connection) -> tuple[Any, list[Any]]:
            return (db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone(),
                    db.execute("SELECT * FROM checkpoints WHERE run_id = ? ORDER BY created, step",
                               (run_id,)).fetchall())
        try:
            row, cks = self._exec(read)
            if row is None:
                return
            run = _parse_row(row)
            run.pop("unreadable", None)
            data = {**run, "checkpoints": [
                {"name": c["name"], "step": c["step"], "file": Path(c["path"]).name,
                 "auto": bool(c["auto"]), "csv_bytes": c["csv_bytes"], "created": c["created"]}
                for c in cks]}
            path = self.run_dir(run_id) / MANIFEST
            tmp = path.with_name(MANIFEST + ".tmp")
            tmp.write_text(json.dumps(data), encoding="utf-8")
            tmp.replace(path)
        except (OSError, StoreDamaged, sqlite3.DatabaseError) as exc:
            if strict:
                raise
            log.warning("run %s: %s not written: %s", run_id, MANIFEST, exc)

    def delete_run(self, run_id: str) -> None:
        """Remove a run: its folder first (renamed aside, then removed: this frees the disk
        and needs no space), then its rows. A full disk cannot stop the files going."""
        folder = self.run_dir(run_id)
        trash = folder.with_name(f"{TRASH_PREFIX}{run_id}-{secrets.token_hex(3)}")
        with contextlib.suppress(FileNotFoundError):
            folder.rename(trash)
        shutil.rmtree(trash, ignore_errors=True)
        if self._db is None:
            return
        self._exec(lambda db: (db.execute("DELETE FROM runs WHERE id = ?", (run_id,)),
                               db.execute("DELETE FROM checkpoints WHERE run_id = ?", (run_id,))))

    def sweep_trash(self) -> int:
        """Remove folders of deletions a crash interrupted; returns how many."""
        base, n = self.root / "runs", 0
        for p in base.glob(f"{TRASH_PREFIX}*"):
            shutil.rmtree(p, ignore_errors=True)
            n += 1
        return n

    # ---- checkpoints -----------------------------------------------------------------------
    def add_checkpoint(self, run_id: str, name: str, step: int, path: str | Path, auto: bool,
                       csv_bytes: int, keep_auto: int) -> None:
        """Record a checkpoint (its file in the run's checkpoints folder); drop the oldest
        automatic ones beyond ``keep_auto``, and automatic files older than this one that the
        index does not hold (a checkpoint whose indexing failed)."""
        rel = self.relative(run_id, path)

        def write(db: sqlite3.Connection) -> list[Any]:
            db.execute("INSERT OR REPLACE INTO checkpoints VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (run_id, name, step, rel, int(auto), csv_bytes, time.time()))
            old = db.execute(
                "SELECT name, path FROM checkpoints WHERE run_id = ? AND auto = 1 "
                "ORDER BY created DESC, step DESC LIMIT -1 OFFSET ?", (run_id, keep_auto)).fetchall()
            for row in old:
                db.execute("DELETE FROM checkpoints WHERE run_id = ? AND name = ?",
                           (run_id, row["name"]))
            return old

        old = self._exec(write)
        for row in old:
            _unlink_checkpoint(self.resolve(row["path"]))
        self._prune_strays(run_id, step)
        self.write_manifest(run_id)

    def _prune_strays(self, run_id: str, step: int) -> None:
        indexed = {Path(c["path"]).name for c in self.checkpoints(run_id)}
        for file in (self.run_dir(run_id) / "checkpoints").glob("auto-*.pt"):
            with contextlib.suppress(ValueError):
                if file.name not in indexed and int(file.stem.split("-", 1)[1]) < step:
                    _unlink_checkpoint(file)

    def drop_checkpoint(self, run_id: str, name: str) -> None:
        """Forget a checkpoint and remove its files."""
        ck = self.checkpoint(run_id, name, exists=False)
        self._exec(lambda db: db.execute("DELETE FROM checkpoints WHERE run_id = ? AND name = ?",
                                         (run_id, name)))
        if ck is not None:
            _unlink_checkpoint(Path(ck["path"]))
        self.write_manifest(run_id)

    def checkpoints(self, run_id: str) -> list[dict[str, Any]]:
        """Checkpoints of a run, oldest first; "path" resolved in this data directory."""
        if self._db is None:
            return []
        rows = self._exec(lambda db: db.execute(
            "SELECT * FROM checkpoints WHERE run_id = ? ORDER BY created, step", (run_id,)).fetchall())
        return [{**dict(r), "path": str(self.resolve(self.relative(run_id, r["path"])))} for r in rows]

    def checkpoint(self, run_id: str, name: str | None = None,
                   exists: bool = True) -> dict[str, Any] | None:
        """A named checkpoint, or the latest one; None if there is none."""
        found = self.checkpoints(run_id)
        if name is not None:
            found = [c for c in found if c["name"] == name]
        if exists:
            found = [c for c in found if Path(c["path"]).exists()]
        return found[-1] if found else None

    def intact_checkpoint(self, run_id: str, name: str | None = None) -> dict[str, Any] | None:
        """Like :meth:`checkpoint`, but the newest one whose file verifies (every member's
        CRC in the zip archive torch.save writes); damaged ones are logged and skipped."""
        found = [c for c in self.checkpoints(run_id) if name is None or c["name"] == name]
        for ck in reversed(found):
            reason = verify_checkpoint(Path(ck["path"]))
            if reason is None:
                return ck
            log.warning("run %s: checkpoint %s is unusable (%s); trying an older one",
                        run_id, ck["name"], reason)
        return None

    # ---- files ---------------------------------------------------------------------------
    def truncate_csv(self, run_id: str, size: int) -> None:
        """Cut the CSV back to ``size`` bytes (rows written after the checkpoint resumed from)."""
        path = self.csv_path(run_id)
        if path.exists() and path.stat().st_size > size:
            with open(path, "r+b") as f:
                f.truncate(size)

    def ensure_csv(self, run_id: str) -> Path:
        path = self.csv_path(run_id)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("step,seed,train_loss\n", encoding="utf-8")
        return path

    def save_history(self, path: Path, arrays: dict[str, np.ndarray]) -> None:
        tmp = path.with_name(path.name + ".tmp")
        try:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
            tmp.replace(path)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise

    def load_history(self, path: Path) -> dict[str, np.ndarray] | None:
        if not path.exists():
            return None
        try:
            with np.load(path) as data:
                return {k: data[k] for k in data.files}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            return None

    def usage(self, run_id: str | None = None) -> int:
        """Bytes on disk under the data directory (or one run's folder)."""
        base = self.run_dir(run_id) if run_id else self.root
        total = 0
        for dirpath, _, files in os.walk(base):
            for f in files:
                with contextlib.suppress(OSError):
                    total += os.lstat(os.path.join(dirpath, f)).st_blocks * 512
        return total

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


# ---- disk budgets -----------------------------------------------------------------------------
MARGIN_FRACTION = 0.05     # of the disk's size, kept free by the default --max-disk
MARGIN_MIN = 256 << 20     # bytes, at least


def disk_estimate(config: dict[str, Any]) -> tuple[int, int]:
    """(CSV bytes per 1,000 steps at full resolution, bytes of one checkpoint) for a
    validated config dict, from ``simulator.cost.estimate`` (one source for every cost)."""
    from simulator.config import RunConfig
    from simulator.cost import estimate

    cost = estimate(RunConfig.from_dict(config))
    return int(cost.disk_bytes_per_1000_steps), int(cost.checkpoint_bytes)


def run_disk_need(config: dict[str, Any], history_budget: int, keep_checkpoints: int) -> int:
    """Bytes a run may come to hold: its history (at most the budget) plus its automatic
    checkpoints (those kept, one being written and the final one)."""
    per_1000, checkpoint = disk_estimate(config)
    history = per_1000 * (int(config.get("steps", 0)) + 1000) // 1000
    if history_budget:
        history = min(history, history_budget)
    return history + checkpoint * (keep_checkpoints + 2)


def default_max_disk(root: Path, used: int) -> int:
    """The default --max-disk: what the data directory holds plus the disk's free space,
    minus a margin of 5% of the disk's size (at least 256 MiB)."""
    disk = shutil.disk_usage(root)
    return max(0, used + disk.free - max(MARGIN_MIN, int(disk.total * MARGIN_FRACTION)))


def size_text(nbytes: float) -> str:
    """Bytes in binary units, as the CLI reads them (64M is 64 MiB)."""
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if abs(nbytes) < 1024 or unit == "GiB":
            return f"{nbytes:.0f} {unit}" if unit == "bytes" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes:.1f} GiB"


def verify_checkpoint(path: Path) -> str | None:
    """None if the checkpoint file is intact, else why not (missing, truncated, a bad CRC)."""
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
        return None if bad is None else f"bad CRC in {bad}"
    except FileNotFoundError:
        return "missing"
    except (OSError, zipfile.BadZipFile, EOFError, ValueError, RuntimeError) as exc:
        return f"{type(exc).__name__}: {str(exc)[:100]}"


def _parse_row(r: sqlite3.Row) -> dict[str, Any]:
    out = {"id": r["id"], "created": r["created"], "parent": r["parent"], "status": r["status"],
           "step": r["step"]}
    try:
        config, info = json.loads(r["config"]), json.loads(r["info"])
        if not isinstance(config, dict) or not isinstance(info, dict):
            raise ValueError("config and info must be JSON objects")
        return {**out, "config": config, "info": info}
    except (ValueError, TypeError) as exc:
        return {**out, "config": {}, "info": {}, "status": "unreadable",
                "unreadable": f"its index row does not parse ({str(exc)[:100]})"}


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _unlink_checkpoint(path: Path) -> None:
    for file in (path, _history_of(path)):
        file.unlink(missing_ok=True)


def _history_of(checkpoint: Path) -> Path:
    """Where the server keeps the decimated history snapshot that goes with a checkpoint."""
    return checkpoint.with_name(checkpoint.stem + ".history.npz")


history_of = _history_of
