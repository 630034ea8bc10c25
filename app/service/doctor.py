"""``plasticity-lab doctor --data-dir D``: check a data directory and repair what it can.

What it checks, and what it does about it (``check_only``: nothing, it reports):

- the index (runs.sqlite3) opens and passes SQLite's quick check; if not, it is moved aside
  (runs.sqlite3.damaged-<time>) and rebuilt from the run folders' run.json files;
- each run folder is indexed (from its run.json), each index row parses (else it is
  rewritten from run.json) and has its folder (else the row is dropped: the run was deleted);
- each indexed checkpoint file exists and verifies (every CRC of torch.save's zip archive);
  missing or damaged ones leave the index and damaged files are removed, so resume and
  branch use the newest intact one; stray files (``*.tmp`` from an interrupted write,
  automatic checkpoints the index no longer holds) are removed; interrupted deletions
  (``runs/.trash-*``) are finished;
- each run.json is rewritten from the repaired index.

Run folders from before run.json existed cannot be rebuilt when the index is lost; they are
reported and left as they are. Stop the server on that directory first: the doctor writes the
index the server holds open.
"""

from __future__ import annotations

import time
from pathlib import Path

from app.service.store import MANIFEST, TRASH_PREFIX, Store, verify_checkpoint


def doctor(data_dir: Path | str, check_only: bool = False) -> tuple[list[str], int]:
    """Check (and unless ``check_only``, repair) ``data_dir``: (report lines, problems left)."""
    root = Path(data_dir)
    lines: list[str] = []
    left = 0
    if not (root / "runs").is_dir() and not (root / "runs.sqlite3").exists():
        return [f"{root}: not a Plasticity Lab data directory (no runs/ and no runs.sqlite3)"], 1
    if check_only and not (root / "runs.sqlite3").exists():
        legacy = _check_folders(root)
        return [f"index: {root / 'runs.sqlite3'} is missing (the doctor rebuilds it)", *legacy], \
            1 + len(legacy)
    store = Store(root)
    if store.damaged:
        lines.append(f"index: {store.damaged}")
        if check_only:
            store.close()
            legacy = _check_folders(root)
            return [*lines, *legacy], 1 + len(legacy)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for suffix in ("", "-wal", "-shm"):
            path = root / f"runs.sqlite3{suffix}"
            if path.exists():
                path.rename(root / f"runs.sqlite3.damaged-{stamp}{suffix}")
        lines.append(f"index: moved aside to runs.sqlite3.damaged-{stamp}; rebuilding from run folders")
        store = Store(root)
    try:
        trash = list((root / "runs").glob(f"{TRASH_PREFIX}*"))
        if trash:
            lines.append(f"{len(trash)} interrupted deletion(s) " +
                         ("found" if check_only else "finished"))
            if check_only:
                left += len(trash)
            else:
                store.sweep_trash()
        for run in store.load_runs(adopt=not check_only):
            run_id, reason = run["id"], run.get("unreadable")
            if run.get("adopted"):
                lines.append(f"run {run_id}: indexed from its {MANIFEST}")
            if reason is not None and run.get("indexed") is False:
                left += 1
                lines.append(f"run {run_id}: {reason}" + (
                    "" if check_only else f"; cannot rebuild it (no readable {MANIFEST}), left as is"))
                continue
            if reason is not None:  # an index row that does not parse
                fixed = False
                if not check_only:
                    try:
                        manifest = store.manifest_run(run_id)
                        if "unreadable" not in manifest:
                            store.index_from_manifest(manifest)
                            fixed = True
                    except Exception as exc:  # report, carry on with the other runs
                        reason += f"; {exc}"
                left += not fixed
                lines.append(f"run {run_id}: {reason}" +
                             ("; rewritten from its run.json" if fixed else ""))
                if not fixed:
                    continue
            if not store.run_dir(run_id).is_dir():
                lines.append(f"run {run_id}: its folder is gone" +
                             ("" if check_only else "; dropped from the index"))
                if check_only:
                    left += 1
                else:
                    store.forget_run(run_id)
                continue
            left += _checkpoints(store, run_id, check_only, lines)
            if not check_only:
                store.write_manifest(run_id)
    finally:
        store.close()
    if not lines:
        lines.append(f"{root}: ok, nothing to repair")
    elif not check_only:
        lines.append(f"{root}: repaired" + (f"; {left} problem(s) left" if left else ""))
    return lines, left


def _checkpoints(store: Store, run_id: str, check_only: bool, lines: list[str]) -> int:
    """Check one run's checkpoints and stray files; returns the problems left."""
    left = 0
    indexed = store.checkpoints(run_id)
    for ck in indexed:
        reason = verify_checkpoint(Path(ck["path"]))
        if reason is None:
            continue
        lines.append(f"run {run_id}: checkpoint {ck['name']} is unusable ({reason})" +
                     ("" if check_only else "; removed"))
        if check_only:
            left += 1
        else:
            store.drop_checkpoint(run_id, ck["name"])
    names = {Path(c["path"]).name for c in indexed}
    folder = store.run_dir(run_id) / "checkpoints"
    strays = [p for p in folder.glob("*.tmp")] + [
        p for p in folder.glob("auto-*.pt") if p.name not in names]
    for path in strays:
        lines.append(f"run {run_id}: stray file {path.name}" + ("" if check_only else "; removed"))
        if check_only:
            left += 1
        else:
            path.unlink(missing_ok=True)
    return left


def _check_folders(root: Path) -> list[str]:
    base = root / "runs"
    if not base.is_dir():
        return []
    return [f"run {p.name}: no {MANIFEST}: cannot be rebuilt" for p in sorted(base.iterdir())
            if p.is_dir() and not p.name.startswith(".") and not (p / MANIFEST).exists()]
