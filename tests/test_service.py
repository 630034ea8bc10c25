"""The run service with real worker processes: lifecycle, mid-run changes, checkpoints and
branches, faults (killed worker, NaN divergence, run limit), restart and resume; and the
frame buffer on its own."""

from __future__ import annotations

import csv
import math
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import wait_for

from app.service import BackendSettings, Conflict, LimitReached, LocalBackend, RunNotFound
from app.service.framebuffer import FrameBuffer
from simulator.settings import ConfigError

SMALL = {"task": "add", "rule": "dni-b", "n": 8, "steps": 10**7, "test_steps": 200}


def settings(tmp_path: Path, **changes: Any) -> BackendSettings:
    base = {"data_dir": tmp_path / "data", "max_runs": 3, "eval_every": 500,
            "checkpoint_every": 2000, "frame_rate": 20.0}
    return BackendSettings(**{**base, **changes})


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[LocalBackend]:
    b = LocalBackend(settings(tmp_path))
    yield b
    b.shutdown()


def step_of(b: LocalBackend, run_id: str) -> int:
    return b.get(run_id)["step"]


def test_lifecycle_frames_after_cursor_and_controls(backend: LocalBackend) -> None:
    rid = backend.create(SMALL)
    info = backend.get(rid)
    assert info["status"] == "running" and info["reference_levels"] and info["task_view"]
    wait_for(lambda: backend.frames(rid)[0], what="first frames")
    seen: list[int] = []
    cursor = -1
    for _ in range(6):
        frames, new_cursor = backend.frames(rid, cursor)
        assert new_cursor >= cursor
        assert all(f["seq"] > cursor for f in frames)
        seen += [f["seq"] for f in frames]
        cursor = new_cursor
        time.sleep(0.15)
    assert seen == sorted(set(seen)) and len(seen) >= 3
    frame = backend.frames(rid, cursor - 1)[0][-1]
    assert frame["run"] == rid and frame["t1"] > frame["t0"] and "wall" in frame
    assert set(frame["traces"]) >= {"V", "U", "r", "units"}
    assert len(frame["traces"]["V"]) == 4  # default units

    assert backend.control(rid, "pause")["status"] == "paused"
    paused_at = step_of(backend, rid)
    time.sleep(0.3)
    assert step_of(backend, rid) == paused_at
    cursor = backend.frames(rid, cursor)[1]
    assert backend.frames(rid, cursor) == ([], cursor)  # nothing new while paused
    backend.control(rid, "step", k=37)
    wait_for(lambda: backend.get(rid)["status"] == "paused" and step_of(backend, rid) > paused_at,
             what="step 37")
    assert step_of(backend, rid) == paused_at + 37

    backend.control(rid, "view", units=[1, 3], seed_index=0)
    backend.control(rid, "speed", steps_per_frame=50)
    backend.control(rid, "resume")
    wait_for(lambda: step_of(backend, rid) > paused_at + 500, what="resume")
    last = backend.frames(rid, backend.get(rid)["cursor"] - 1)[0][-1]
    assert last["traces"]["units"] == [1, 3] and last["t1"] - last["t0"] == 50
    wait_for(lambda: backend.get(rid)["last_test_loss"], what="a test loss")

    history = backend.history(rid, max_points=50)
    assert 0 < len(history["step"]) <= 50 and history["test_loss"]["step"]
    assert set(history["diagnostics"]) == {"apical_loss", "jacobian_loss"}

    result = backend.control(rid, "stop")
    assert result["status"] == "stopped"
    wait_for(lambda: not backend.get(rid)["alive"], what="worker exit")
    assert backend.get(rid)["status"] == "stopped"
    with pytest.raises(Conflict, match="action"):
        backend.control(rid, "resume")

    rows = list(csv.reader(backend.export_csv(rid).open()))
    assert rows[0][:3] == ["step", "seed", "train_loss"]
    steps = [int(r[0]) for r in rows[1:]]
    assert steps == list(range(len(steps))) and len(steps) == backend.get(rid)["step"]
    assert backend.export_config(rid)["rule"] == "dni-b"


def test_bad_params_name_the_field_and_the_worker_survives(backend: LocalBackend) -> None:
    rid = backend.create({**SMALL, "rule": "rtrl"}, start=False)
    assert backend.get(rid)["status"] == "ready"
    cases = [("jump", {}, "action"), ("step", {}, "k"), ("step", {"k": -1}, "k"),
             ("step", {"k": "x"}, "k"), ("speed", {}, "steps_per_frame"),
             ("speed", {"steps_per_second": -5}, "steps_per_second"), ("set", {"lr": 99}, "lr"),
             ("set", {"phases": "basal:x"}, "phases"), ("set", {"apical": 0.1}, "apical"),
             ("view", {"units": [8]}, "units"), ("view", {"seed_index": 1}, "seed_index"),
             ("pause", {"bogus": 1}, "bogus"), ("branch", {"changes": {"n": 9}}, "changes.n"),
             ("branch", {"changes": {"rule": "nope"}}, "changes.rule"),
             ("checkpoint", {"name": "../x"}, "name")]
    for action, params, field in cases:
        with pytest.raises(ConfigError) as err:
            backend.control(rid, action, **params)
        assert err.value.field == field, (action, params, str(err.value))
    with pytest.raises(RunNotFound):
        backend.get("nope")
    with pytest.raises(ConfigError, match="n:"):
        backend.create({**SMALL, "n": 0})
    backend.control(rid, "step", k=5)
    wait_for(lambda: step_of(backend, rid) == 5, what="worker alive after bad params")


def test_set_learning_rates_and_phases_mid_run(backend: LocalBackend) -> None:
    rid = backend.create(SMALL)
    wait_for(lambda: step_of(backend, rid) > 200, what="progress")
    result = backend.control(rid, "set", lr=0.02, apical=0.2, phases="listen=apical+jacobian:30,"
                                                                     "act=basal+readout:30")
    assert result["learning_rates"]["basal"] == 0.02 and result["learning_rates"]["apical"] == 0.2
    step = result["step"]
    wait_for(lambda: step_of(backend, rid) > step + 500, what="progress after set")
    assert step_of(backend, rid) > step  # no reset
    cursor = backend.get(rid)["cursor"]
    frame = backend.frames(rid, cursor - 1)[0][-1]
    assert {name for _, _, name in frame["phases"]} <= {"listen", "act"}
    info = backend.get(rid)
    assert info["phases"].startswith("listen=") and info["learning_rates"]["basal"] == 0.02
    config = backend.export_config(rid)
    assert config["lr"] == 0.02 and config["rule_args"]["lr_apical"] == 0.2


def test_live_settings_come_from_the_rule_classes(backend: LocalBackend) -> None:
    """KeRNL's lr_kernel (its "jacobian" population's rate, declared by the rule class) changes
    live through ``set``, by its setting name; a setting the run's rule lacks is refused
    naming it; simulator.rules.live_settings says which apply."""
    from simulator.rules import live_settings

    assert live_settings("kernl") == {"lr_kernel": "jacobian"}
    assert live_settings("dni", {"jacobian": "exact"}) == {"lr_apical": "apical"}
    assert live_settings("dni-b") == {"lr_apical": "apical", "lr_jacobian": "jacobian"}
    rid = backend.create({**SMALL, "rule": "kernl"}, start=False)
    result = backend.control(rid, "set", lr_kernel=2.5e-4)
    assert result["learning_rates"]["jacobian"] == 2.5e-4
    assert backend.export_config(rid)["rule_args"]["lr_kernel"] == 2.5e-4
    with pytest.raises(ConfigError, match=r"^lr_apical: not a live setting of rule 'kernl'"):
        backend.control(rid, "set", lr_apical=0.1)
    with pytest.raises(ConfigError, match=r"^lr_bogus: unknown parameter for set"):
        backend.control(rid, "set", lr_bogus=0.1)
    assert backend.get(rid)["learning_rates"]["jacobian"] == 2.5e-4


def test_checkpoint_and_branch_with_another_rule(backend: LocalBackend) -> None:
    rid = backend.create(SMALL)
    wait_for(lambda: step_of(backend, rid) > 300, what="progress")
    backend.control(rid, "pause")
    assert backend.control(rid, "checkpoint", name="here")["checkpoint"] == "here"
    at = step_of(backend, rid)
    evaluated = backend.control(rid, "evaluate", steps=100)["test_loss"]
    assert len(evaluated) == 1 and math.isfinite(evaluated[0])
    branch = backend.control(rid, "branch", changes={"rule": "rtrl"}, checkpoint="here")
    child = branch["id"]
    assert branch["step"] == at
    info = backend.get(child)
    assert info["parent"] == rid and info["config"]["rule"] == "rtrl"
    wait_for(lambda: step_of(backend, child) > at + 100, what="branch progress")
    frame = wait_for(lambda: backend.frames(child)[0], what="branch frames")[0]
    assert frame["t0"] >= at and "apical_loss" not in frame["diagnostics"]
    assert step_of(backend, rid) == at  # the parent stayed paused
    live = backend.control(rid, "branch", changes={"lr": 0.01})  # from "now"
    assert backend.get(live["id"])["config"]["rule"] == "dni-b"


def test_killed_worker_fails_its_run_only_and_the_limit_answers(tmp_path: Path) -> None:
    b = LocalBackend(settings(tmp_path, max_runs=2, restart_limit=0))  # no automatic restart
    try:
        victim, other = b.create(SMALL), b.create({**SMALL, "rule": "output-only"})
        with pytest.raises(LimitReached, match="max_runs"):
            b.create(SMALL)
        wait_for(lambda: step_of(b, victim) > 0 and step_of(b, other) > 0, what="both running")
        os.kill(b.get(victim)["pid"], signal.SIGKILL)
        wait_for(lambda: b.get(victim)["status"].startswith("failed"), what="failed status")
        assert "SIGKILL" in b.get(victim)["status"]
        assert b.get(victim)["status"].endswith("(resumable)")
        with pytest.raises(Conflict):
            b.control(victim, "pause")
        before = step_of(b, other)
        wait_for(lambda: step_of(b, other) > before + 200, what="the other run carries on")
        assert b.get(other)["status"] == "running"
        third = b.create(SMALL, start=False)  # the killed run freed its slot
        assert b.get(third)["status"] == "ready"
    finally:
        b.shutdown()


def test_nan_divergence_stops_the_run_with_its_message(backend: LocalBackend) -> None:
    rid = backend.create({"task": "mimic", "rule": "dni-b", "n": 8, "lr": 10, "alpha": 1.0,
                          "steps": 100_000})
    status = wait_for(lambda: backend.get(rid)["status"].startswith("diverged") and
                      backend.get(rid)["status"], what="divergence")
    assert status.startswith("diverged at step ")
    wait_for(lambda: not backend.get(rid)["alive"], what="worker exit")
    assert backend.get(rid)["status"] == status
    frames, _ = backend.frames(rid)
    assert frames and frames[-1]["run_status"] == status


def test_restart_lists_runs_marks_running_interrupted_and_resumes(tmp_path: Path) -> None:
    first = LocalBackend(settings(tmp_path))
    done = first.create({**SMALL, "steps": 1500})
    long = first.create(SMALL)
    wait_for(lambda: first.get(done)["status"] == "finished", what="short run finished")
    wait_for(lambda: len(first.get(long)["checkpoints"]) >= 1, what="an automatic checkpoint")
    finished_history = first.history(done)
    first.shutdown()  # checkpoints the running one: it becomes interrupted

    second = LocalBackend(settings(tmp_path))
    try:
        runs = {r["id"]: r for r in second.list_runs()}
        assert runs[done]["status"] == "finished" and runs[done]["step"] == 1500
        assert runs[long]["status"] == "interrupted"
        assert second.history(done)["step"] == finished_history["step"]
        at = runs[long]["step"]
        resumed = second.control(long, "resume")
        assert resumed["status"] == "running" and resumed["step"] == at
        wait_for(lambda: step_of(second, long) > at + 300, what="resumed progress")
        frames, cursor = second.frames(long, runs[long]["cursor"])
        assert frames and frames[0]["t0"] >= at and cursor > runs[long]["cursor"]
        second.control(long, "pause")
        steps = [int(r[0]) for r in list(csv.reader(second.export_csv(long).open()))[1:]]
        assert steps == list(range(len(steps)))  # no gap, no duplicate across the restart
    finally:
        second.shutdown()


# ---- the frame buffer alone ---------------------------------------------------------------
def _frame(t0: int, k: int, losses: np.ndarray, test: float | None = None) -> dict[str, Any]:
    steps = list(range(t0, t0 + k))
    frame: dict[str, Any] = {
        "t0": t0, "t1": t0 + k, "phases": [[t0, t0 + k, "all"]],
        "loss": {"step": steps, "mean": losses.tolist(), "min": losses.tolist(),
                 "max": losses.tolist()},
        "diagnostics": {}, "weight_norm": {"basal": 1.0},
        "traces": {"V": [[0.0] * 200]}, "weight_change": {"basal": {"norm": 1.0, "matrix": [[0.0]]}},
    }
    if test is not None:
        frame["test_loss"] = [test]
    return frame


def test_framebuffer_bounded_window_envelopes_and_snapshot() -> None:
    buf = FrameBuffer(live_frames=20, detail_frames=5, bins=64, levels=3, fan=4)
    rng = np.random.default_rng(0)
    for i in range(2000):
        losses = rng.uniform(0.4, 0.6, 50)
        if i == 1234:
            losses[7] = 9.0  # one spike must survive every level of decimation
        buf.push(_frame(i * 50, 50, losses, test=0.5 if i % 100 == 0 else None))
    frames, cursor = buf.since(-1)
    assert [f["seq"] for f in frames] == list(range(1980, 2000)) and cursor == 1999
    assert sum(f["detail"] for f in frames) == 5 and "traces" not in frames[0]
    assert "matrix" not in frames[0]["weight_change"]["basal"]
    assert buf.since(1999) == ([], 1999) and [f["seq"] for f in buf.since(1997)[0]] == [1998, 1999]
    history = buf.history(max_points=100)
    assert len(history["step"]) <= 100 and history["step"][-1] == 2000 * 50 - 1
    # the spike and the floor both survive decimation (bins keep their extremes, not means)
    assert max(history["loss"]["max"]) == 9.0 and 0.4 <= min(history["loss"]["min"]) < 0.41
    assert abs(np.nanmean(history["loss"]["mean"]) - 0.5) < 0.01
    assert len(history["test_loss"]["step"]) == 20
    size = buf.nbytes()
    for i in range(2000, 6000):
        buf.push(_frame(i * 50, 50, rng.uniform(0.4, 0.6, 50)))
    assert buf.nbytes() == size  # flat
    recent = buf.history(max_points=100, start=6000 * 50 - 40)  # finest level still covers it
    assert recent["level"] == 0 and recent["step"][:2] == [6000 * 50 - 40, 6000 * 50 - 39]
    restored = FrameBuffer.restore(buf.snapshot(), live_frames=20, detail_frames=5)
    assert restored.history(100)["step"] == buf.history(100)["step"]
    assert restored.since(-1) == ([], -1)
    restored.push(_frame(300_000, 10, np.full(10, 0.5)))
    assert restored.since(-1)[0][0]["seq"] == 6000


def test_alignment_requested_in_the_config_streams_in_frames(backend: LocalBackend) -> None:
    rid = backend.create({**SMALL, "align": "auto"})
    assert backend.get(rid)["config"]["align"] == "auto"
    frames = wait_for(lambda: [f for f in backend.frames(rid)[0] if f.get("alignment")],
                      what="frames with alignment")
    series = frames[-1]["alignment"]["mean"]
    assert series and all(v is None or -1.0 <= v <= 1.0 for v in series)
    with pytest.raises(ConfigError, match=r"^align:"):
        backend.create({**SMALL, "align": "exactly"})


def test_alignment_survives_frames_longer_than_the_trace_tail(tmp_path: Path) -> None:
    """steps_per_frame=500 (> TRACE_TAIL = 200): each frame's first 300 steps run scalars-only
    and are joined to the traced tail (simulator.telemetry.concat). Every frame carries
    alignment over all its steps, and the CSV keeps its alignment and norm_ratio columns
    with values in the scalars-only part too."""
    from app.service.worker import TRACE_TAIL

    b = LocalBackend(settings(tmp_path, steps_per_frame=500, checkpoint_every=10**6))
    try:
        rid = b.create({**SMALL, "align": "auto"})
        frames = wait_for(lambda: [f for f in b.frames(rid)[0] if f["t1"] >= 1500],
                          what="three frames of 500 steps")
        b.control(rid, "pause")
        frames = b.frames(rid)[0]
        assert TRACE_TAIL < 500 and frames[0]["t1"] - frames[0]["t0"] == 500
        for frame in frames:
            assert frame["t1"] - frame["t0"] == 500
            alignment = frame["alignment"]
            assert alignment is not None, frame["seq"]
            assert alignment["step"][0] < frame["t0"] + 500 - TRACE_TAIL  # the scalars-only part
            assert all(v is not None and -1.0 <= v <= 1.0 for v in alignment["mean"][1:])
        with open(b.export_csv(rid), newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert {"alignment", "norm_ratio"} <= set(rows[0])
        head = [r for r in rows if 0 < int(float(r["step"])) < 500 - TRACE_TAIL]
        assert len(head) == 299
        assert all(math.isfinite(float(r["alignment"])) and float(r["norm_ratio"]) > 0
                   for r in head)
    finally:
        b.shutdown()


def test_status_is_a_typed_value_that_keeps_its_wire_text() -> None:
    """Every status the service writes parses to a kind (and reason) and back to the same
    text; the service's decisions read the value, the dashboard's helpers the text."""
    from app.service.core import dead_action
    from app.service.status import Kind, Status, is_active, is_terminal

    texts = {
        "ready": (Kind.READY, "", False), "running": (Kind.RUNNING, "", False),
        "paused": (Kind.PAUSED, "", False), "parked": (Kind.PARKED, "", False),
        "finished": (Kind.FINISHED, "", False), "stopped": (Kind.STOPPED, "", False),
        "interrupted": (Kind.INTERRUPTED, "", False),
        "diverged at step 12 (seeds 0): loss nan": (Kind.DIVERGED,
                                                    "at step 12 (seeds 0): loss nan", False),
        "failed: ValueError: x": (Kind.FAILED, "ValueError: x", False),
        "failed: worker lost: w1 died (4 times) (resumable)": (Kind.FAILED,
                                                                "worker lost: w1 died (4 times)",
                                                                True),
        "unreadable: run.json is damaged": (Kind.UNREADABLE, "run.json is damaged", False),
    }
    for text, (kind, reason, resumable) in texts.items():
        status = Status.parse(text)
        assert (status.kind, status.reason, status.resumable) == (kind, reason, resumable)
        assert str(status) == text and Status.parse(str(status)) == status
    assert [t for t in texts if is_active(t)] == ["ready", "running", "paused"]
    assert [t for t in texts if is_terminal(t)] == [
        "finished", "stopped", "interrupted", "diverged at step 12 (seeds 0): loss nan",
        "failed: ValueError: x", "failed: worker lost: w1 died (4 times) (resumable)",
        "unreadable: run.json is damaged"]
    assert not is_active("bogus") and not is_terminal(None)
    with pytest.raises(ValueError, match=r"^status: got 'x{100}'; allowed: ready, running"):
        Status.parse("x" * 500)
    # a run without a worker: what each action does (both backends follow this table)
    parked, failed = Status(Kind.PARKED), Status.parse("failed: worker lost (resumable)")
    assert [dead_action(parked, a, "r") for a in ("stop", "resume", "pause", "step")] == [
        "stop", "resume", "pause", "wake"]
    assert [dead_action(failed, a, "r") for a in ("stop", "resume")] == ["stop", "resume"]
    assert dead_action(Status(Kind.RUNNING), "step", "r", waiting=True) == "wake"
    with pytest.raises(Conflict, match=r"^action: cannot step run r: it is finished "
                                       r"\(allowed: branch\)$"):
        dead_action(Status(Kind.FINISHED), "step", "r")
