"""Runs release what they hold, and killed workers resume (issue 10, items 5 and 7; defects 8,
9 and 10's SIGKILL part): idle runs are parked (checkpointed, worker released, no slot held)
and continue bit for bit; runs without a worker keep no frame window beyond a small LRU; a
worker killed by any signal restarts from its last checkpoint, within a retry budget."""

from __future__ import annotations

import csv
import gc
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import http_json, real_server, wait_for

from app.service import BackendSettings, LocalBackend
from app.service.framebuffer import FrameBuffer

SMALL = {"task": "add", "rule": "dni-b", "n": 8, "steps": 10**7, "test_steps": 200}


def settings(tmp_path: Path, **changes: Any) -> BackendSettings:
    base = {"data_dir": tmp_path / "data", "max_runs": 3, "eval_every": 0,
            "checkpoint_every": 10**6, "frame_rate": 20.0}
    return BackendSettings(**{**base, **changes})


def status_of(b: LocalBackend, run_id: str) -> str:
    """The status without counting as a poll (list_runs does not touch a run)."""
    return next(r["status"] for r in b.list_runs() if r["id"] == run_id)


def csv_rows(path: Path) -> list[list[str]]:
    with path.open() as f:
        return list(csv.reader(f))


# ---- defect 8: paused runs no longer hold every slot forever --------------------------------
@pytest.mark.slow
def test_paused_runs_are_parked_and_free_their_slots_for_others(tmp_path: Path) -> None:
    with real_server(tmp_path, "--max-runs", "2", "--idle-release", "2") as (base, _):
        hog = [http_json(f"{base}/runs", SMALL)[1]["id"] for _ in range(2)]
        wait_for(lambda: all(http_json(f"{base}/runs/{r}")[1]["step"] > 0 for r in hog),
                 what="both running")
        for rid in hog:
            assert http_json(f"{base}/runs/{rid}/control", {"action": "pause"})[0] == 200
        code, refused = http_json(f"{base}/runs", SMALL)
        assert code == 409 and refused["field"] == "max_runs"
        assert "2 runs are active" in refused["error"] and "after 2 s" in refused["error"]

        wait_for(lambda: all(http_json(f"{base}/runs/{r}")[1]["status"] == "parked" for r in hog),
                 timeout=30, what="both paused runs parked")
        parked = http_json(f"{base}/runs/{hog[0]}")[1]
        assert parked["alive"] is False and parked["pid"] is None and parked["checkpoints"]
        code, other = http_json(f"{base}/runs", SMALL)  # another client gets a slot now
        assert code == 201, other

        # play on a parked run brings it back from where it stood
        code, resumed = http_json(f"{base}/runs/{hog[0]}/control", {"action": "resume"})
        assert code == 200 and resumed["status"] == "running" and resumed["step"] == parked["step"]
        wait_for(lambda: http_json(f"{base}/runs/{hog[0]}")[1]["step"] > parked["step"] + 100,
                 what="progress after play")


# ---- item 1: a parked run continues bit for bit ---------------------------------------------
@pytest.mark.slow
def test_parked_runs_continue_bit_for_bit(tmp_path: Path) -> None:
    cfg = {"task": "add", "rule": "dni-b", "n": 8, "steps": 1500, "seeds": [0, 1],
           "dtype": "float64", "test_steps": 100}
    b = LocalBackend(settings(tmp_path, idle_release=1.5))
    try:
        reference = b.create(cfg)
        unwatched = b.create(cfg)  # running, paced, and nobody polls it
        b.control(unwatched, "speed", steps_per_second=300.0)
        paused = b.create(cfg, start=False)
        wait_for(lambda: b.get(reference)["status"] == "finished", what="reference finished")
        b.control(paused, "step", k=321)
        wait_for(lambda: status_of(b, unwatched) == "parked", what="the unwatched run parked")
        wait_for(lambda: status_of(b, paused) == "parked", what="the paused run parked")
        info = next(r for r in b.list_runs() if r["id"] == paused)
        assert info["step"] == 321 and not info["alive"]
        stood = next(r for r in b.list_runs() if r["id"] == unwatched)["step"]
        assert 0 < stood < 1500

        # a poll restarts the run parked while running; play restarts the paused one
        assert b.get(unwatched)["status"] == "running"
        assert b.get(paused)["status"] == "parked"  # polling a paused one leaves it parked
        b.control(unwatched, "speed", steps_per_frame=0)
        assert b.control(paused, "resume")["step"] == 321
        for rid in (unwatched, paused):
            wait_for(lambda r=rid: b.get(r)["status"] == "finished", what="finished after parking")

        want = csv_rows(b.export_csv(reference))
        assert len(want) == 1 + 1500 * 2
        for rid in (unwatched, paused):
            assert csv_rows(b.export_csv(rid)) == want
        final = {rid: torch.load(b.store.checkpoint(rid)["path"], weights_only=False)
                 for rid in (reference, unwatched, paused)}
        for rid in (unwatched, paused):
            _assert_same_state(final[reference], final[rid])
    finally:
        b.shutdown()


def _assert_same_state(a: Any, b: Any, path: str = "") -> None:
    """Every tensor equal bit for bit (float64 runs), recursing through dicts and lists."""
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            _assert_same_state(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same_state(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


# ---- defect 9: finished runs keep no frame window beyond a small LRU ------------------------
@pytest.mark.slow
def test_finished_runs_keep_no_frame_buffers_beyond_a_small_lru(tmp_path: Path) -> None:
    short = {"task": "add", "rule": "output-only", "n": 4, "steps": 300, "test_steps": 50}
    gc.collect()
    before = sum(type(o) is FrameBuffer for o in gc.get_objects())  # left by earlier tests
    b = LocalBackend(settings(tmp_path, max_runs=4))  # history_cache: 4 by default
    bound = 4
    try:
        done: list[str] = []
        pending: list[str] = []

        def advance() -> bool:  # at most 4 at a time, 10 in all
            for rid in list(pending):
                if status_of(b, rid) == "finished" and not b.get(rid)["alive"]:
                    pending.remove(rid)
                    done.append(rid)
            while len(pending) < 4 and len(done) + len(pending) < 10:
                pending.append(b.create(short))
            return len(done) == 10

        wait_for(advance, timeout=240, what="10 short runs finished")

        def held() -> int:  # this backend's buffers alive in the process (other tests' aside)
            gc.collect()
            return sum(type(o) is FrameBuffer for o in gc.get_objects()) - before

        # a worker that just exited hands its buffer to the LRU from the reader thread: wait
        # for that (a leak never gets there), not a fixed moment
        wait_for(lambda: held() <= bound, timeout=30,
                 what=f"at most {bound} frame buffers for 10 finished runs")
        for rid in done:  # each history is still there, read back from disk when asked
            history = b.history(rid, max_points=50)
            assert history["t"] == 300 and history["step"][-1] == 299
        assert held() <= bound and b.buffers_in_memory() <= bound
    finally:
        b.shutdown()


# ---- defect 10 (SIGKILL part): killed workers resume by themselves --------------------------
@pytest.mark.slow
def test_killed_workers_resume_from_their_checkpoint_then_fail_resumable(tmp_path: Path) -> None:
    with real_server(tmp_path, "--checkpoint-seconds", "0.5") as (base, _):
        rid = http_json(f"{base}/runs", SMALL)[1]["id"]

        def info() -> dict[str, Any]:
            return http_json(f"{base}/runs/{rid}")[1]

        wait_for(lambda: info()["checkpoints"], what="a checkpoint by time")
        for sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGSEGV):
            before = info()
            checkpointed = max(int(c.split("-")[-1]) for c in before["checkpoints"]
                               if c.startswith("auto-"))
            assert 0 < checkpointed < 20_000  # by time: long before the 20,000-step trigger
            os.kill(before["pid"], sig)
            after = wait_for(lambda b=before: (i := info())["pid"] not in (None, b["pid"]) and i,
                             what=f"a new worker after {sig.name}")
            assert after["status"] == "running" and after["step"] >= checkpointed
            wait_for(lambda a=after: info()["step"] > a["step"] + 100, what="progress")
            frames = http_json(f"{base}/runs/{rid}/frames?after={before['cursor']}")[1]["frames"]
            assert frames and frames[0]["t0"] >= checkpointed  # from the checkpoint, not 0
        os.kill(info()["pid"], signal.SIGKILL)  # one kill more than the budget (3 in 10 min)
        status = wait_for(lambda: (s := info()["status"]).startswith("failed") and s,
                          what="failed after the retry budget")
        assert "SIGKILL" in status and status.endswith("(resumable)")
        assert info()["alive"] is False
        stood = info()["step"]
        code, resumed = http_json(f"{base}/runs/{rid}/control", {"action": "resume"})
        assert code == 200 and resumed["status"] == "running" and 0 < resumed["step"] <= stood
        wait_for(lambda: info()["step"] > stood + 100, what="progress after resume")
        assert http_json(f"{base}/runs/{rid}/control", {"action": "pause"})[0] == 200
        rows = csv_rows(tmp_path / "data" / "runs" / rid / "scalars.csv")
        assert [int(r[0]) for r in rows[1:]] == list(range(len(rows) - 1))  # no gap, no repeat


@pytest.mark.parametrize("flag", ["--idle-release=-1", "--checkpoint-seconds=0"])
def test_lifecycle_flags_are_checked(tmp_path: Path, flag: str) -> None:
    import subprocess
    import sys

    from helpers import ROOT

    done = subprocess.run([sys.executable, "-m", "app", "serve", flag], cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and flag[2:].split("=")[0] in done.stderr
    assert "allowed" in done.stderr


def test_the_dashboard_shows_a_parked_run_as_such_and_play_resumes_it() -> None:
    from app.dashboard.callbacks import is_active, status_chips

    info = {"id": "abc", "status": "parked", "step": 5, "config": {"rule": "dni-b", "steps": 9}}
    chip = status_chips([info], {})[0]
    assert "chip-parked" in chip.className and "parked" in chip.children[1]
    assert "resumes" in chip.title
    assert is_active("parked")  # so ▶ resumes the group instead of starting a new one
