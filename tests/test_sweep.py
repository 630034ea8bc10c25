"""Experiments (issue 14): a grid of configs x seeds, batched by shape into one Run each.

Batch members equal their runs alone (float64, 1e-12); a sweep killed mid-way and resumed
gives the same tables as one run straight through; bad specs are refused naming the axis.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from simulator import ConfigError, Run
from simulator.sweep import make_batch_run, parse_experiment, plan_batches, sweep
from tests.helpers import wait_for

TOL = 1e-12


def spec(axes: dict, **base: object) -> dict:
    return {"base": {"task": "add", "task_args": {"t1": 5, "t2": 9}, "rule": "dni-b",
                     "steps": 120, "test_steps": 50, "seeds": "0-1", "dtype": "float64",
                     "n": 8, **base},
            "axes": axes, "record": {"every": 40}}


MIXED = spec({"rule": ["dni", "dni-b", "kernl", "uoro"], "lr": [1e-3, 5e-3],
              "alpha": [1.0, 0.6]})
DNI_RATES = spec({"rule_args.lr_apical": [0.02, 0.05], "rule_args.lr_jacobian": [0.003, 0.01],
                  "lr": [1e-3, 3e-3], "rule_args.order": ["sequential", "simultaneous"]})


@pytest.mark.parametrize("grid", [MIXED, DNI_RATES], ids=["rules-lr-alpha", "dnib-rates"])
def test_batch_members_equal_solo_runs(grid: dict) -> None:
    """Each member of a batch (per-member lr, lr_apical, lr_jacobian, lr_kernel as tensors
    over the batch axis) steps exactly as the same config alone: losses, every population,
    the state and the held-out loss, float64 to 1e-12."""
    exp = parse_experiment(grid)
    batches = plan_batches(exp)
    assert sum(map(len, batches)) == len(exp.members)
    assert len(batches) < len(exp.members)  # members really share batches
    steps, seeds = 120, len(exp.seeds)
    for members in batches:
        batch = make_batch_run(exp, members)
        assert batch.net.W.shape[0] == len(members) * seeds  # one tensor computation
        if len(members) > 1 and len({exp.members[m].config.lr for m in members}) > 1:
            assert isinstance(batch.lr["basal"], torch.Tensor)
        tel = batch.advance(steps, record="scalars")
        test = batch.evaluate(50)
        pops = batch.populations()
        for j, index in enumerate(members):
            solo = Run(exp.members[index].config)
            solo_tel = solo.advance(steps, record="scalars")
            sl = slice(j * seeds, (j + 1) * seeds)
            torch.testing.assert_close(tel.loss[:, sl], solo_tel.loss, rtol=0, atol=TOL)
            for name, w in solo.populations().items():
                torch.testing.assert_close(pops[name][sl], w, rtol=0, atol=TOL, msg=name)
            torch.testing.assert_close(batch.r[sl], solo.r, rtol=0, atol=TOL)
            torch.testing.assert_close(test[sl], solo.evaluate(50), rtol=0, atol=TOL)
            assert bool(torch.isfinite(solo_tel.loss).all())


def test_diverging_member_leaves_the_others_running(tmp_path: Path) -> None:
    """A member whose rate blows up is marked diverged in its rows; the rest of its batch
    finishes and still equals its solo run."""
    exp = parse_experiment(spec({"rule_args.lr_apical": [0.05, 10.0]}, rule="dni", n=32,
                                steps=300))
    assert plan_batches(exp) == [[0, 1]]
    summary = sweep(exp, tmp_path, show_progress=False)
    assert summary["ran"] == 1
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert [r["status"] for r in rows[:2]] == ["finished", "finished"]
    assert all(r["status"].startswith("diverged at step") for r in rows[2:])
    solo = Run(exp.members[0].config)
    solo.advance(300, record="scalars")
    for row, value in zip(rows[:2], solo.evaluate(50).tolist(), strict=True):
        assert abs(float(row["final_test_loss"]) - value) < TOL


def _tables(out: Path) -> tuple[str, str]:
    return (out / "results.csv").read_text(), (out / "series.csv").read_text()


def test_resumed_sweep_equals_uninterrupted(tmp_path: Path) -> None:
    """`sweep --resume` after the CLI process was killed mid-sweep: finished batches are kept
    (not recomputed), and the tables equal a straight-through sweep's, byte for byte."""
    grid = spec({"rule": ["dni", "dni-b", "rflo", "output-only"], "lr": [1e-3, 2e-3]},
                steps=1500, seeds="0-2", n=16)
    path = tmp_path / "exp.json"
    path.write_text(json.dumps(grid))
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    summary = sweep(parse_experiment(grid), straight, show_progress=False)
    assert summary["batches"] == 4 and summary["ran"] == 4
    proc = subprocess.Popen([sys.executable, "-m", "simulator", "sweep", str(path), "--out",
                             str(broken), "--workers", "1", "--no-progress"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        first = broken / "batches" / "0000.json"
        wait_for(first.exists, timeout=60, what="the first batch", every=0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    done = sorted(p.name for p in (broken / "batches").glob("*.json"))
    assert 1 <= len(done) < 4, done
    assert not (broken / "results.csv").exists()
    kept = {name: (broken / "batches" / name).stat().st_mtime_ns for name in done}
    again = subprocess.run([sys.executable, "-m", "simulator", "sweep", str(path), "--out",
                            str(broken), "--resume", "--workers", "1", "--no-progress"],
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout.splitlines()[-1])["ran"] == 4 - len(done)
    assert {n: (broken / "batches" / n).stat().st_mtime_ns for n in done} == kept
    assert _tables(broken) == _tables(straight)
    # without --resume the directory is refused; another experiment there is refused too
    refused = subprocess.run([sys.executable, "-m", "simulator", "sweep", str(path), "--out",
                              str(broken)], capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "out:" in refused.stderr and "--resume" in refused.stderr
    with pytest.raises(ConfigError, match="different experiment"):
        sweep(parse_experiment({**grid, "axes": {"lr": [1e-3]}}), broken, resume=True)


def test_pool_of_workers_gives_the_same_table(tmp_path: Path) -> None:
    """`--workers 2` (a process pool, batches split so each core has one) gives the same
    numbers as one process; the tables have the documented columns."""
    grid = spec({"rule_args.lr_apical": [0.02, 0.05], "lr": [1e-3, 3e-3]}, steps=200)
    path = tmp_path / "exp.toml"
    path.write_text('[base]\ntask = "add"\ntask_args = { t1 = 5, t2 = 9 }\nrule = "dni-b"\n'
                    'steps = 200\ntest_steps = 50\nseeds = "0-1"\ndtype = "float64"\nn = 8\n'
                    '[axes]\n"rule_args.lr_apical" = [0.02, 0.05]\nlr = [1e-3, 3e-3]\n'
                    '[record]\nevery = 40\n')
    proc = subprocess.run([sys.executable, "-m", "simulator", "sweep", str(path), "--out",
                           str(tmp_path / "pool"), "--workers", "2"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "seed-step" in proc.stderr  # the progress bar
    assert json.loads((tmp_path / "pool" / "plan.json").read_text())["batches"] == [[0, 1], [2, 3]]
    sweep(parse_experiment(grid), tmp_path / "one", show_progress=False)
    assert json.loads((tmp_path / "one" / "plan.json").read_text())["batches"] == [[0, 1, 2, 3]]
    pool = list(csv.DictReader((tmp_path / "pool" / "results.csv").open()))
    one = list(csv.DictReader((tmp_path / "one" / "results.csv").open()))
    assert list(pool[0]) == ["member", "rule_args.lr_apical", "lr", "seed", "final_test_loss",
                             "train_loss_last", "status"]
    assert len(pool) == 8 == len(one)
    for a, b in zip(pool, one, strict=True):
        assert (a["member"], a["seed"], a["lr"]) == (b["member"], b["seed"], b["lr"])
        for key in ("final_test_loss", "train_loss_last"):
            assert abs(float(a[key]) - float(b[key])) < TOL
    series = list(csv.DictReader((tmp_path / "pool" / "series.csv").open()))
    assert {(r["name"], r["step"]) for r in series} == {
        (name, str(s)) for name in ("test_loss", "train_loss") for s in (40, 80, 120, 160, 200)}
    assert len(series) == 8 * 2 * 5
    meta = json.loads((tmp_path / "pool" / "spec.json").read_text())
    assert meta["code_version"] and meta["members"] == 4 and meta["seeds"] == [0, 1]


@pytest.mark.parametrize("change, field", [
    ({"axes": {"rule_args.lr_apical": [0.02, 20.0]}}, "axes.rule_args.lr_apical[1]"),
    ({"axes": {"rule": ["dni", "nope"]}}, "axes.rule[1]"),
    ({"axes": {"seeds": [1, 2]}}, "axes.seeds"),
    ({"axes": {"lr": []}}, "axes.lr"),
    ({"axes": {"network.lr": [1]}}, "axes.network.lr"),
    ({"axes": {"alpha": [1.0, 0.0]}}, "axes.alpha[1]"),
    ({"base": {"rule": "dni-b", "n": 0}}, "base.n"),
    ({"base": {"rule": "dni-b", "bogus": 1}}, "base.bogus"),
    ({"record": {"every": -1}}, "record.every"),
    ({"rule_args": {"nope": {}}}, "rule_args.nope"),
    ({"rule_args": {"dni-b": {"lr_apical": -1}}}, "rule_args.dni-b.lr_apical"),
    ({"extra": 1}, "extra"),
])
def test_bad_specs_name_the_field(change: dict, field: str) -> None:
    grid = {**spec({"lr": [1e-3]}), **change}
    with pytest.raises(ConfigError) as err:
        parse_experiment(grid)
    assert err.value.field == field
    assert len(str(err.value)) < 400


def test_cli_refusals_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[base]\nrule = "dni-b"\n[axes]\n"rule_args.lr_apical" = [0.02, 20.0]\n')
    bad = subprocess.run([sys.executable, "-m", "simulator", "sweep", str(path), "--out",
                          str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.strip().startswith("error: axes.rule_args.lr_apical[1]: got 20")
    assert not (tmp_path / "o").exists()  # validated before anything is written
    path.write_text('[base]\nrule = "dni-b"\nseeds = "0-9"\n[axes]\nlr = [1e-3, 2e-3]\n')
    big = subprocess.run([sys.executable, "-m", "simulator", "sweep", str(path), "--out",
                          str(tmp_path / "o"), "--max-batch-memory", "1000", "--workers", "1"],
                         capture_output=True, text=True, timeout=120)
    assert big.returncode == 2
    assert big.stderr.startswith("error: batch: batch 0 (dni-b, n=32, 20 members x seeds) needs")
    assert not (tmp_path / "o").exists()


def test_presets_parse() -> None:
    from simulator.presets import names, resolve_experiment
    from simulator.sweep import load_spec

    found = names()
    assert {"jmlr-add", "jmlr-mimic", "dni-ablation", "dnib-phases", "dnib-rates"} <= set(found)
    sizes = {name: len(parse_experiment(load_spec(resolve_experiment(name))).members)
             for name in found}
    assert sizes["dni-ablation"] == 8 and sizes["jmlr-add"] == 14 and sizes["dnib-rates"] == 16
    assert sizes["dnib-phases"] == 8  # all + blocks of 1, 3, 10, 30, 100, 300, 1000


def test_recorded_alignment_equals_solo_runs(tmp_path: Path) -> None:
    """record.alignment: each member's mean cosine with the exact gradient per block of
    `every` steps, in series.csv, equals its run alone with align="auto"."""
    grid = {**spec({"rule_args.lr_apical": [0.02, 0.05]}, steps=120),
            "record": {"every": 60, "alignment": True}}
    exp = parse_experiment(grid)
    sweep(exp, tmp_path, show_progress=False)
    rows = [r for r in csv.DictReader((tmp_path / "series.csv").open())
            if r["name"] == "alignment"]
    assert len(rows) == 2 * 2 * 2  # members x seeds x blocks
    for member in exp.members:
        assert member.config.align == "auto"
        solo = Run(member.config)
        for block in (60, 120):
            tel = solo.advance(60, record="scalars")
            means = tel.alignment.double().nanmean(0).tolist()
            got = [float(r["value"]) for r in rows
                   if int(r["member"]) == member.index and int(r["step"]) == block]
            assert len(got) == 2
            for a, b in zip(got, means, strict=True):
                assert abs(a - b) < TOL
