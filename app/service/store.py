"""Persistence: an embedded SQLite database (WAL) plus files under the data directory.

    DATA_DIR/runs.sqlite3                 runs (id, config, status, step, info) and checkpoints
    DATA_DIR/runs/<id>/scalars.csv        full-resolution per-step scalars (the worker appends)
    DATA_DIR/runs/<id>/checkpoints/*.pt   torch.save'd Run.state_dict() (the worker writes)
    DATA_DIR/runs/<id>/checkpoints/*.history.npz   the server's decimated history at that point
    DATA_DIR/runs/<id>/history.npz        the decimated history when the run ended

Only the server process touches the database; one connection guarded by a lock.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

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


class Store:
    """Runs, checkpoints and files of one data directory."""

    def __init__(self, data_dir: Path | str) -> None:
        self.root = Path(data_dir)
        (self.root / "runs").mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.root / "runs.sqlite3", check_same_thread=False,
                                   isolation_level=None, timeout=10)
        self._db.row_factory = sqlite3.Row
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)

    # ---- paths ---------------------------------------------------------------------------
    def run_dir(self, run_id: str) -> Path:
        return self.root / "runs" / run_id

    def csv_path(self, run_id: str) -> Path:
        return self.run_dir(run_id) / "scalars.csv"

    def history_path(self, run_id: str) -> Path:
        return self.run_dir(run_id) / "history.npz"

    # ---- runs ----------------------------------------------------------------------------
    def insert_run(self, run_id: str, config: dict[str, Any], status: str,
                   parent: str | None, info: dict[str, Any], created: float) -> None:
        self.run_dir(run_id).mkdir(parents=True, exist_ok=True)
        with self._lock:
            self._db.execute(
                "INSERT INTO runs (id, created, parent, config, status, step, info, updated) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, created, parent, json.dumps(config), status, int(info.get("step", 0)),
                 json.dumps(info), time.time()))

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
        with self._lock:
            self._db.execute(f"UPDATE runs SET {', '.join(sets)} WHERE id = ?", (*args, run_id))

    def load_runs(self) -> list[dict[str, Any]]:
        """Every run, oldest first: id, created, parent, config, status, step, info."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM runs ORDER BY created").fetchall()
        return [{"id": r["id"], "created": r["created"], "parent": r["parent"],
                 "config": json.loads(r["config"]), "status": r["status"], "step": r["step"],
                 "info": json.loads(r["info"])} for r in rows]

    def delete_run(self, run_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM runs WHERE id = ?", (run_id,))
            self._db.execute("DELETE FROM checkpoints WHERE run_id = ?", (run_id,))
        shutil.rmtree(self.run_dir(run_id), ignore_errors=True)

    # ---- checkpoints -----------------------------------------------------------------------
    def add_checkpoint(self, run_id: str, name: str, step: int, path: str, auto: bool,
                       csv_bytes: int, keep_auto: int) -> None:
        """Record a checkpoint; drop the oldest automatic ones beyond ``keep_auto``."""
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO checkpoints VALUES (?, ?, ?, ?, ?, ?, ?)",
                (run_id, name, step, path, int(auto), csv_bytes, time.time()))
            old = self._db.execute(
                "SELECT name, path FROM checkpoints WHERE run_id = ? AND auto = 1 "
                "ORDER BY created DESC, step DESC LIMIT -1 OFFSET ?", (run_id, keep_auto)).fetchall()
            for row in old:
                self._db.execute("DELETE FROM checkpoints WHERE run_id = ? AND name = ?",
                                 (run_id, row["name"]))
        for row in old:
            for file in (Path(row["path"]), _history_of(Path(row["path"]))):
                file.unlink(missing_ok=True)

    def checkpoints(self, run_id: str) -> list[dict[str, Any]]:
        """Checkpoints of a run, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM checkpoints WHERE run_id = ? ORDER BY created, step",
                (run_id,)).fetchall()
        return [dict(r) for r in rows]

    def checkpoint(self, run_id: str, name: str | None = None) -> dict[str, Any] | None:
        """A named checkpoint, or the latest one; None if there is none."""
        found = self.checkpoints(run_id)
        if name is not None:
            found = [c for c in found if c["name"] == name]
        found = [c for c in found if Path(c["path"]).exists()]
        return found[-1] if found else None

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
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        tmp.replace(path)

    def load_history(self, path: Path) -> dict[str, np.ndarray] | None:
        if not path.exists():
            return None
        try:
            with np.load(path) as data:
                return {k: data[k] for k in data.files}
        except (OSError, ValueError, KeyError):
            return None

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _history_of(checkpoint: Path) -> Path:
    """Where the server keeps the decimated history snapshot that goes with a checkpoint."""
    return checkpoint.with_name(checkpoint.stem + ".history.npz")


history_of = _history_of
