"""Storage that is bounded and survives faults: the history CSV within its budget, checkpoint
pruning, a copied data directory that never touches the original, a full disk (a real tmpfs),
a damaged index (server start, the doctor) and a truncated latest checkpoint."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import AUTH, TOKEN, free_port, wait_for

from app.service import BackendSettings, LimitReached, LocalBackend

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"task": "add", "rule": "output-only", "n": 8, "steps": 10**7, "test_steps": 100}


def settings(data: Path, **changes: Any) -> BackendSettings:
    base = {"data_dir": data, "max_runs": 2, "eval_every": 0, "checkpoint_every": 500,
            "frame_rate": 20.0, "max_disk": 1 << 40}
    return BackendSettings(**{**base, **changes})


def files(folder: Path) -> dict[str, int]:
    """Relative path -> size of every file under ``folder``."""
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*") if p.is_file()}


def http(url: str, body: Any = None, method: str | None = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method or ("POST" if data else "GET"),
                                 headers={"Content-Type": "application/json", **AUTH})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


class Server:
    """``python -m app serve`` in a subprocess (REST API only), its output in a file."""

    def __init__(self, data: Path, *args: str, log: Path) -> None:
        self.port, self.log = free_port(), log
        self.out = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app", "serve", "--no-dashboard", "--port", str(self.port),
             "--data-dir", str(data), *args], cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), "PLASTICITY_TOKEN": TOKEN},
            stdout=self.out, stderr=subprocess.STDOUT)
        self.base = f"http://127.0.0.1:{self.port}/api"

        def up() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited: {self.output()[-3000:]}")
            with contextlib.suppress(OSError):
                return http(f"{self.base}/openapi.json")[0] == 200
            return False

        wait_for(up, timeout=90, what="server up")

    def output(self) -> str:
        self.out.flush()
        return self.log.read_text(errors="replace")

    def __call__(self, path: str, body: Any = None, method: str | None = None) -> tuple[int, Any]:
        return http(f"{self.base}{path}", body, method)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.out.close()


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Any]:
    servers: list[Server] = []

    def start(data: Path, *args: str) -> Server:
        server = Server(data, *args, log=tmp_path / f"server-{len(servers)}.log")
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


# ---- the history CSV within its budget ------------------------------------------------------
def test_history_csv_block_means_are_exact_and_the_file_stays_under_budget(tmp_path: Path) -> None:
    from app.service.worker import HistoryCSV
    from simulator.engine import Telemetry

    seeds, steps, budget = [3, 5, 7], 6000, 40_000
    rng = np.random.default_rng(1)
    loss = rng.uniform(0.3, 0.7, (steps, len(seeds)))
    diag = rng.normal(size=(steps, len(seeds)))
    path = tmp_path / "scalars.csv"
    writer = HistoryCSV(path, budget)
    t, chunks = 0, iter(rng.integers(1, 97, 10_000))
    while t < steps:
        k = min(int(next(chunks)), steps - t)
        tel = Telemetry(start=t, loss=torch.from_numpy(loss[t:t + k]), phase=[0] * k,
                        diagnostics={"apical_loss": torch.from_numpy(diag[t:t + k])}, weight_change={})
        writer.write(tel, seeds, steps)
        t += k
        if t - k < 2500 <= t:
            writer.flush()  # a checkpoint cuts the block in progress short
            assert path.stat().st_size == writer.size
        if t - k < 4000 <= t:  # a resume: a new writer on the same file
            writer.close()
            writer = HistoryCSV(path, budget)
            assert writer.block >= 2 and writer.cols == ["train_loss", "apical_loss"]
    writer.close()
    assert path.stat().st_size <= budget and writer.dropped_steps == 0
    rows = list(csv.DictReader(path.open()))
    assert list(rows[0]) == ["step", "seed", "train_loss", "apical_loss", "block"]
    full = [r for r in rows if r["block"] == "1"]
    coarse = [r for r in rows if r["block"] != "1"]
    assert full and coarse and max(int(r["block"]) for r in coarse) >= 4
    covered = {s: 0 for s in seeds}
    for r in rows:
        step, seed, block = int(r["step"]), int(r["seed"]), int(r["block"])
        assert step == covered[seed], "rows of a seed cover the steps in order, without gaps"
        covered[seed] += block
        i = seeds.index(seed)
        np.testing.assert_allclose(float(r["train_loss"]), loss[step:step + block, i].mean(),
                                   rtol=1e-6)
        np.testing.assert_allclose(float(r["apical_loss"]), diag[step:step + block, i].mean(),
                                   rtol=1e-6, atol=1e-7)
    assert covered == {s: steps for s in seeds}


def test_long_256_seed_run_keeps_its_history_under_budget(start_server: Any, tmp_path: Path) -> None:
    """The issue's case: n=1, 256 seeds, output-only wrote 970 MB of CSV in 64 s."""
    budget = 2 << 20
    server = start_server(tmp_path / "data", "--history-budget", str(budget))
    steps = 20_000
    status, made = server("/runs", {"task": "add", "rule": "output-only", "n": 1,
                                    "seeds": "0-255", "steps": steps, "test_steps": 10})
    assert status == 201, made
    rid = made["id"]
    server(f"/runs/{rid}/control", {"action": "fast_forward", "to": steps})
    wait_for(lambda: server(f"/runs/{rid}")[1]["status"] == "finished", timeout=240,
             what="the 256-seed run to finish")
    csv_path = tmp_path / "data" / "runs" / rid / "scalars.csv"
    size = csv_path.stat().st_size
    assert 0.5 * budget < size <= budget  # at full resolution: about 100 MB
    covered = np.zeros(256, dtype=np.int64)
    full = 0
    with csv_path.open() as f:
        reader = csv.reader(f)
        assert next(reader)[-1] == "block"
        for row in reader:
            covered[int(row[1])] += int(row[-1])
            full += row[-1] == "1"
    assert (covered == steps).all()  # every step of every seed is in some row
    assert full * 30 > 0.4 * budget  # about half the budget holds the first steps in full


def make_runs(data: Path) -> list[str]:
    """Two runs: one finished, one interrupted with a few checkpoints."""
    b = LocalBackend(settings(data))
    try:
        done = b.create({**SMALL, "steps": 700})
        long = b.create(SMALL)
        wait_for(lambda: b.get(done)["status"] == "finished" and
                 len(b.get(long)["checkpoints"]) >= 2,
                 what="one finished run, one with two checkpoints")
    finally:
        b.shutdown()
    return [done, long]


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """A data directory with two runs (made once per module; tests work on copies)."""
    data = tmp_path_factory.mktemp("made") / "data"
    done, long = make_runs(data)
    return data, done, long


def copy_of(made: tuple[Path, str, str], target: Path) -> tuple[Path, str, str]:
    shutil.copytree(made[0], target)
    return target, made[1], made[2]


# ---- checkpoints: pruned, and nothing left by a refused branch -------------------------------
def test_branch_checkpoints_are_not_kept_and_a_refused_branch_writes_nothing(tmp_path: Path) -> None:
    b = LocalBackend(settings(tmp_path / "data", keep_checkpoints=2))
    try:
        parent = b.create(SMALL)
        folder = tmp_path / "data" / "runs" / parent / "checkpoints"
        wait_for(lambda: b.get(parent)["step"] > 600, what="progress")
        child = b.control(parent, "branch", changes={"lr": 0.02})["id"]  # from "now"
        assert not [n for n in b.get(parent)["checkpoints"] if n.startswith("branch-")]
        assert not list(folder.glob("branch-*"))  # the branch holds its own link ("origin")
        assert (tmp_path / "data" / "runs" / child / "checkpoints" / "origin.pt").exists()
        stray = folder / "auto-0000000001.pt"  # a checkpoint whose indexing failed
        stray.write_bytes(b"x")
        before = len(b.get(parent)["checkpoints"])
        wait_for(lambda: len({*b.get(parent)["checkpoints"]}) >= before and not stray.exists(),
                 what="the next checkpoint to prune the stray file")
        runs_before = sorted(p.name for p in (tmp_path / "data" / "runs").iterdir())
        b.control(parent, "pause")
        on_disk = files(folder)
        with pytest.raises(LimitReached):  # two runs are active: the limit
            b.control(parent, "branch", changes={"lr": 0.03})
        assert files(folder) == on_disk  # no checkpoint written for the refused branch
        assert sorted(p.name for p in (tmp_path / "data" / "runs").iterdir()) == runs_before
        b.control(parent, "resume")
        wait_for(lambda: b.get(parent)["step"] > 4000, what="more checkpoints")
        autos = [p for p in folder.glob("*.pt") if p.name.startswith("auto-")]
        assert len(autos) <= 3 and len(b.get(parent)["checkpoints"]) <= 2
    finally:
        b.shutdown()


# ---- a copied data directory is self-contained (defect 5) -------------------------------------
def test_a_copied_data_dir_never_touches_the_original(
        made: tuple[Path, str, str], tmp_path: Path) -> None:
    original, _, rid = copy_of(made, tmp_path / "original")
    copy = tmp_path / "copy"
    with sqlite3.connect(original / "runs.sqlite3") as db:  # as the old code stored them
        db.execute("UPDATE checkpoints SET path = ? || '/' || path", (str(original),))
    before = files(original / "runs" / rid / "checkpoints")
    assert len(before) >= 4  # checkpoints and their history snapshots
    shutil.copytree(original, copy)
    second = LocalBackend(settings(copy, keep_checkpoints=1))
    try:
        at = second.control(rid, "resume")["step"]
        wait_for(lambda: second.get(rid)["step"] > at + 1500, what="new checkpoints in the copy")
        second.delete(rid)
    finally:
        second.shutdown()
    assert files(original / "runs" / rid / "checkpoints") == before
    third = LocalBackend(settings(original))
    try:
        assert third.control(rid, "resume")["step"] == at  # the original resumes as it was
    finally:
        third.shutdown()


# ---- a truncated latest checkpoint (defect 10) -----------------------------------------------
def test_a_truncated_latest_checkpoint_falls_back_to_an_intact_one(
        made: tuple[Path, str, str], tmp_path: Path) -> None:
    data, _, rid = copy_of(made, tmp_path / "data")
    second = LocalBackend(settings(data, keep_checkpoints=3))
    try:
        cks = second.store.checkpoints(rid)
        latest, previous = Path(cks[-1]["path"]), cks[-2]
        with open(latest, "r+b") as f:  # a crash halfway through writing it
            f.truncate(latest.stat().st_size // 2)
        resumed = second.control(rid, "resume")
        assert resumed["checkpoint"] == previous["name"] and resumed["step"] == previous["step"]
        wait_for(lambda: second.get(rid)["step"] > previous["step"] + 300, what="progress")
        assert second.get(rid)["status"] == "running"
    finally:
        second.shutdown()


# ---- a full disk (a real tmpfs) ---------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a 12 MB tmpfs to fill ({done.stderr.strip()[:200]}): "
                    "needs root and a kernel that allows it")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill(disk: Path) -> Path:
    """Fill the disk to the last block; returns the filler file."""
    filler = disk / "filler"
    with open(filler, "ab", buffering=0) as f:
        for size in (1 << 20, 1 << 16, 1 << 12, 1 << 9):
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * size)
    return filler


def test_full_disk_create_507_run_pauses_delete_frees_restart_read_only(
        small_disk: Path, start_server: Any) -> None:
    data = small_disk / "data"
    server = start_server(data, "--history-budget", "256K", "--max-disk", "1T")
    status, made = server("/runs", {**SMALL, "rule": "output-only"})
    assert status == 201, made
    victim = made["id"]
    status, made = server("/runs", SMALL)
    assert status == 201, made
    other = made["id"]
    wait_for(lambda: all(server(f"/runs/{r}")[1]["checkpoints"] for r in (victim, other)),
             what="checkpoints of both runs")
    folders = sorted(p.name for p in (data / "runs").iterdir())
    filler = fill(small_disk)

    status, refused = server("/runs", SMALL)  # a clear 507, nothing left behind
    assert status == 507 and refused["field"] in ("disk", "storage"), refused
    assert "free" in refused["error"] or "full" in refused["error"]
    assert sorted(p.name for p in (data / "runs").iterdir()) == folders
    # the running runs do not fail: they pause, saying why
    info = wait_for(lambda: (i := server(f"/runs/{other}")[1])["status"] == "paused" and i,
                    what="the run to pause on the full disk", timeout=60)
    assert "disk full" in info["note"] and info["alive"]

    status, _ = server(f"/runs/{victim}", method="DELETE")  # frees its files on a full disk
    assert status == 200
    assert not (data / "runs" / victim).exists()
    assert server(f"/runs/{victim}")[0] == 404
    server.stop()

    fill(small_disk)  # and full again: the server starts read-only
    server = start_server(data, "--history-budget", "256K", "--max-disk", "1T")
    status, listed = server("/runs")
    assert status == 200 and [r["id"] for r in listed["runs"]] == [other]
    assert server(f"/runs/{other}/history")[0] == 200
    status, refused = server("/runs", SMALL)
    assert status == 507 and "read-only" in refused["error"], refused
    assert "\n" not in refused["error"] and "Traceback" not in server.output()

    filler.unlink()  # space again: writable without a restart, and the run resumes
    status, made = server("/runs", {**SMALL, "steps": 300})
    assert status == 201, made
    assert server(f"/runs/{other}/control", {"action": "resume"})[0] == 200


def test_max_disk_refuses_a_run_that_may_not_fit(start_server: Any, tmp_path: Path) -> None:
    server = start_server(tmp_path / "data", "--max-disk", "1M", "--history-budget", "64M")
    status, refused = server("/runs", SMALL)  # could never fit: a setting to change
    assert status == 422 and refused["field"] == "max_disk", refused
    assert "--max-disk" in refused["error"] and "history up to 64.0 MiB" in refused["error"]
    assert not list((tmp_path / "data" / "runs").iterdir())
    server.stop()
    server = start_server(tmp_path / "data", "--max-disk", "70M", "--history-budget", "40M")
    assert server("/runs", SMALL)[0] == 201  # fits: 40 MiB of history and small checkpoints
    status, refused = server("/runs", SMALL)  # fits alone, not beside the first one's budget
    assert status == 507 and refused["field"] == "max_disk", refused
    assert "reserved by live runs" in refused["error"]
    assert len(list((tmp_path / "data" / "runs").iterdir())) == 1


# ---- a damaged index (defect 10) --------------------------------------------------------------
def damage(db: Path, how: str) -> None:
    for suffix in ("-wal", "-shm"):
        db.with_name(db.name + suffix).unlink(missing_ok=True)
    if how == "garbage":
        db.write_bytes(os.urandom(db.stat().st_size))
    elif how == "truncated":
        with open(db, "r+b") as f:
            f.truncate(db.stat().st_size // 3)
    else:
        db.write_bytes(b"")


@pytest.mark.parametrize("how", ["garbage", "truncated", "empty"])
def test_damaged_database_server_starts_lists_runs_and_names_the_repair(
        how: str, made: tuple[Path, str, str], tmp_path: Path, start_server: Any) -> None:
    data, done, long = copy_of(made, tmp_path / "data")
    damage(data / "runs.sqlite3", how)
    server = start_server(data)
    status, listed = server("/runs")
    assert status == 200
    runs = {r["id"]: r for r in listed["runs"]}
    assert set(runs) == {done, long}
    assert runs[done]["status"] == "finished" and runs[long]["status"] == "interrupted"
    assert server(f"/runs/{done}/history")[0] == 200
    said = [line for line in server.output().splitlines() if "runs.sqlite3" in line]
    if how == "empty":  # an emptied index is rebuilt from the run folders: writable
        assert server(f"/runs/{long}/control", {"action": "resume"})[0] == 200
        return
    assert len(said) == 1 and f"plasticity-lab doctor --data-dir {data}" in said[0], said
    status, refused = server("/runs", SMALL)
    assert status == 503 and "doctor" in refused["error"]
    server.stop()

    doctor = subprocess.run([sys.executable, "-m", "app", "doctor", "--data-dir", str(data)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert "rebuilding" in doctor.stdout and f"run {long}: indexed" in doctor.stdout
    b = LocalBackend(settings(data))
    try:
        assert {r["id"]: r["status"] for r in b.list_runs()} == {done: "finished",
                                                                 long: "interrupted"}
        assert b.control(long, "resume")["checkpoint"]  # its checkpoints are indexed again
    finally:
        b.shutdown()


def test_a_bad_config_row_is_listed_unreadable_not_a_500(
        made: tuple[Path, str, str], tmp_path: Path, start_server: Any) -> None:
    data, done, long = copy_of(made, tmp_path / "data")
    with sqlite3.connect(data / "runs.sqlite3") as db:
        db.execute("UPDATE runs SET config = '{\"task\": ' WHERE id = ?", (long,))
    server = start_server(data)
    status, listed = server("/runs")
    assert status == 200
    runs = {r["id"]: r for r in listed["runs"]}
    assert runs[done]["status"] == "finished"
    assert runs[long]["status"].startswith("unreadable: its index row does not parse")
    status, refused = server(f"/runs/{long}/control", {"action": "resume"})
    assert status == 409 and "doctor" in refused["error"]
    server.stop()
    doctor = subprocess.run([sys.executable, "-m", "app", "doctor", "--data-dir", str(data)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert doctor.returncode == 0 and "rewritten from its run.json" in doctor.stdout, doctor.stdout
    b = LocalBackend(settings(data))
    try:
        assert b.get(long)["status"] == "interrupted" and b.get(long)["config"]["rule"] == "output-only"
    finally:
        b.shutdown()
