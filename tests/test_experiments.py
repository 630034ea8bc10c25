"""Experiments through the run service (issue 14): a batch continued from its checkpoint equals
one run straight through; the embedded service runs every member x seed exactly once in its
pool with progress and an ETA; over the REST API of a real server: submit, poll, the tables,
a member opened as a normal run, cancel, the budgets (a batch over --max-run-memory, an
experiment over the per-user work budget) and viewer links (403); a server stopped mid-
experiment continues it when it starts again.
"""

from __future__ import annotations

import csv
import io
import json
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from app.service.base import BackendSettings
from app.service.sweeps import LocalSweeps, resolve_spec
from simulator import ConfigError
from simulator import sweep as sw
from tests.helpers import AUTH, http_json, real_server, wait_for

SMALL = {"base": {"task": "add", "task_args": {"t1": 2, "t2": 4}, "rule": "dni-b", "n": 8,
                  "steps": 600, "test_steps": 100, "seeds": "0-2"},
         "axes": {"rule": ["dni", "dni-b"], "lr": [1e-3, 3e-3]}, "record": {"every": 200}}


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers if headers is not None else AUTH)
    try:
        with urllib.request.urlopen(request, timeout=20) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _rows(text: str | bytes) -> list[dict[str, str]]:
    if isinstance(text, bytes):
        text = text.decode()
    return list(csv.DictReader(io.StringIO(text)))


def _every_member_seed_once(rows: list[dict[str, str]], members: int, seeds: list[int]) -> None:
    counts = Counter((int(r["member"]), int(r["seed"])) for r in rows)
    assert counts == Counter({(m, s): 1 for m in range(members) for s in seeds}), counts


def test_batch_resumed_from_its_checkpoint_equals_straight_through(tmp_path: Path) -> None:
    """A batch stopped after two chunks (checkpoint at every chunk) and continued from its
    checkpoint gives the same rows and series, float64 bit for bit, as one run through."""
    # alpha too: once batches hold per-member alpha, the restore must keep it per slot
    grid = {**SMALL, "base": {**SMALL["base"], "dtype": "float64", "steps": 3000},
            "axes": {**SMALL["axes"], "alpha": [1.0, 0.6]}}
    exp = sw.parse_experiment(grid)
    members = max(sw.plan_batches(exp), key=len)
    straight = sw.run_batch(exp, members)
    ckpt = tmp_path / "0000.ckpt"
    chunks = 0

    def stop_after_two(n: int) -> None:
        nonlocal chunks
        chunks += 1
        if chunks == 2:
            raise sw.Cancelled("test")

    with pytest.raises(sw.Cancelled):
        sw.run_batch(exp, members, stop_after_two, checkpoint=ckpt, checkpoint_seconds=0)
    assert ckpt.exists()
    resumed = sw.run_batch(exp, members, checkpoint=ckpt, checkpoint_seconds=0)
    assert resumed["resumed_from"] == 2 * 200  # two chunks (one per record.every)
    assert resumed["rows"] == straight["rows"]
    assert resumed["series"] == straight["series"]
    # a checkpoint of other members is ignored (the batch starts over)
    other = sw.run_batch(exp, members[:1], checkpoint=ckpt)
    assert other["resumed_from"] == 0


def test_embedded_service_runs_every_member_and_seed_once(tmp_path: Path) -> None:
    """LocalSweeps over a pool of 2 processes: progress rises to 1 with an ETA on the way, the
    tables hold every member x seed once and equal the CLI's sweep of the same spec."""
    # long enough (about a second a batch) that progress is drained while batches still run:
    # SMALL's batches can finish within one 0.2 s drain, leaving no running-with-ETA moment
    spec = {**SMALL, "base": {**SMALL["base"], "steps": 20000}, "record": {"every": 1000}}
    service = LocalSweeps(BackendSettings(data_dir=tmp_path / "data"), workers=2)
    exp_id = service.submit(spec, owner="admin")
    seen: list[dict[str, Any]] = []

    def finished() -> bool:
        seen.append(service.get(exp_id))
        assert seen[-1]["status"] in ("queued", "running", "finished"), seen[-1]
        return seen[-1]["status"] == "finished"

    wait_for(finished, 120, "the experiment to finish", every=0.1)
    info = seen[-1]
    assert info["progress"] == 1.0 and info["batches_done"] == info["batches"] == 2
    assert any(s["status"] == "running" and s["eta_seconds"] is not None for s in seen)
    rows = _rows(service.table(exp_id, "results.csv").read_text())
    _every_member_seed_once(rows, 4, [0, 1, 2])
    assert list(rows[0]) == ["member", "rule", "lr", "seed", "final_test_loss",
                             "train_loss_last", "status"]
    cli = tmp_path / "cli"
    sw.sweep(sw.parse_experiment(spec), cli, workers=1, show_progress=False)
    folder = tmp_path / "data" / "experiments" / exp_id
    for name in ("results.csv", "series.csv"):
        assert (folder / name).read_text() == (cli / name).read_text()
    service.shutdown()


def test_user_budget_counts_unfinished_experiments(tmp_path: Path) -> None:
    """The per-user budget (--max-run-work x --max-user-runs) counts what the user's queued
    experiments still have to do; the refusal names the field, the estimate and the limit."""

    class Parked(LocalSweeps):
        def _launch(self, exp_id: str) -> None:  # queued, never run: outstanding work stays
            pass

    exp = sw.parse_experiment(SMALL)
    work = sum(c.work_flops for c in sw.check_costs(exp, sw.plan_batches(exp, workers=2), 0))
    settings = BackendSettings(data_dir=tmp_path / "data", max_run_work=int(work * 0.75))
    service = Parked(settings, workers=2, user_runs=2)  # ann may have 1.5 x work queued
    service.submit(SMALL, owner="ann", admin=False)
    with pytest.raises(Exception, match=r"steps: .* your unfinished experiments still need "
                                        r"about .* per user \(--max-run-work x "
                                        r"--max-user-runs\)") as refused:
        service.submit(SMALL, owner="ann", admin=False)
    assert getattr(refused.value, "http_status", None) == 422
    service.submit(SMALL, owner="bob", admin=False)  # another user's budget is their own
    assert [e["owner"] for e in service.list()] == ["bob", "ann"]


def test_preset_and_toml_submissions_resolve() -> None:
    spec = resolve_spec({"preset": "dnib-rates", "steps": 2000, "seeds": "0-1"})
    assert spec["base"]["steps"] == 2000 and spec["base"]["rule"] == "dni-b"
    assert resolve_spec({"toml": '[base]\nrule = "dni"\n[axes]\nlr = [0.001]'})["axes"] == {
        "lr": [0.001]}
    with pytest.raises(ConfigError, match="preset: got 'nope'; allowed: dni-ablation"):
        resolve_spec({"preset": "nope"})
    with pytest.raises(ConfigError, match="unknown key beside a preset"):
        resolve_spec({"preset": "dnib-rates", "rule": "x"})
    with pytest.raises(ConfigError, match="toml: not valid TOML"):
        resolve_spec({"toml": "[base"})


def _viewer_headers(base: str) -> dict[str, str]:
    """A viewer link's cookies (a run shared by the admin)."""
    status, made = http_json(f"{base}/runs", {"task": "add", "rule": "dni-b", "n": 8,
                                              "start": False})
    assert status == 201, made
    status, link = http_json(f"{base}/runs/{made['id']}/share", {})
    assert status == 201, link
    root = base.removesuffix("/api")

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        opener.open(f"{root}/view/{link['token']}", timeout=10)
        raise AssertionError("the viewer link did not redirect")
    except urllib.error.HTTPError as answer:
        assert answer.code == 303
        cookies = dict(c.split(";")[0].split("=", 1) for c in answer.headers.get_all("Set-Cookie"))
    return {"Cookie": "; ".join(f"{k}={v}" for k, v in cookies.items()),
            "X-CSRFToken": cookies["_csrf_token"], "Content-Type": "application/json"}


def test_experiments_over_the_api(tmp_path: Path) -> None:
    """A real server: submit, poll to the end, both tables, a member opened as a normal run,
    the budgets, viewer links refused, cancel (the pool is freed: the next one runs)."""
    from app.users import AccessStore

    ann = {"Authorization": f"Bearer {AccessStore(tmp_path / 'data').add_user('ann')}",
           "Content-Type": "application/json"}
    with real_server(tmp_path, "--max-run-memory", "20MB", "--max-run-work", "1e9",
                     "--max-user-runs", "1") as (base, _proc):
        status, made = http_json(f"{base}/experiments", SMALL)
        assert status == 201, made
        exp_id = made["id"]
        assert made["experiment"]["status"] in ("queued", "running")
        assert made["experiment"]["members"] == 4

        def done() -> dict[str, Any] | None:
            status, info = http_json(f"{base}/experiments/{exp_id}")
            assert status == 200 and info["status"] in ("queued", "running", "finished"), info
            return info if info["status"] == "finished" else None

        info = wait_for(done, 120, "the experiment to finish", every=0.2)
        assert info["progress"] == 1.0 and info["spec"]["axes"] == SMALL["axes"]
        status, body = _get(f"{base}/experiments/{exp_id}/results.csv")
        assert status == 200
        _every_member_seed_once(_rows(body), 4, [0, 1, 2])
        status, body = _get(f"{base}/experiments/{exp_id}/series.csv")
        series = _rows(body)
        assert status == 200 and list(series[0]) == ["member", "seed", "step", "name", "value"]
        assert {(r["name"], int(r["step"])) for r in series} == {
            (n, s) for n in ("train_loss", "test_loss") for s in (200, 400, 600)}
        assert [e["id"] for e in http_json(f"{base}/experiments")[1]["experiments"]] == [exp_id]

        # member 3 (dni-b, lr 3e-3) with seed 2 as a normal, paused run of the caller's
        status, opened = http_json(f"{base}/experiments/{exp_id}/runs", {"member": 3, "seed": 2})
        assert status == 201, opened
        assert opened["url"] == f"/?run={opened['id']}"
        run = http_json(f"{base}/runs/{opened['id']}")[1]
        assert (run["config"]["rule"], run["config"]["lr"], run["config"]["seeds"],
                run["config"]["steps"]) == ("dni-b", 3e-3, [2], 600)
        assert run["status"] == "ready"
        status, bad = http_json(f"{base}/experiments/{exp_id}/runs", {"member": 9, "seed": 2})
        assert status == 422 and bad["error"] == "member: got 9; allowed: 0 to 3"

        # a batch over --max-run-memory: refused before anything is written
        big = {**SMALL, "base": {**SMALL["base"], "n": 256, "seeds": "0-63"}, "axes": {
            "lr": [1e-3]}}
        status, refused = http_json(f"{base}/experiments", big)
        assert status == 422 and refused["field"] == "batch", refused
        assert "needs about" in refused["error"] and "(--max-run-memory)" in refused["error"]
        assert len(http_json(f"{base}/experiments")[1]["experiments"]) == 1
        status, refused = http_json(f"{base}/experiments", {"preset": "nope"})
        assert status == 422 and refused["field"] == "preset"
        assert _get(f"{base}/experiments/zzz")[0] == 404

        # a user sees only their own; their work budget is --max-run-work x --max-user-runs
        assert json.loads(_get(f"{base}/experiments", ann)[1])["experiments"] == []
        assert _get(f"{base}/experiments/{exp_id}", ann)[0] == 404
        assert _get(f"{base}/experiments/{exp_id}/results.csv", ann)[0] == 404
        heavy = {**SMALL, "base": {**SMALL["base"], "steps": 60_000}}
        request = urllib.request.Request(f"{base}/experiments", data=json.dumps(heavy).encode(),
                                         headers=ann, method="POST")
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(request, timeout=10)
        refused = json.loads(answer.value.read())
        assert answer.value.code == 422 and refused["field"] == "steps", refused
        assert ("this server allows 1 GFLOP per user (--max-run-work x --max-user-runs)"
                in refused["error"]), refused

        # a viewer link sees no experiments and cannot start one
        viewer = _viewer_headers(base)
        assert _get(f"{base}/experiments", viewer)[0] == 403
        assert _get(f"{base}/experiments/{exp_id}/results.csv", viewer)[0] == 403
        request = urllib.request.Request(f"{base}/experiments", data=json.dumps(SMALL).encode(),
                                         headers=viewer, method="POST")
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(request, timeout=10)
        assert answer.value.code == 403 and b"viewer link" in answer.value.read()

        # cancel a long one: it stops, and the next experiment gets the pool
        long = {**SMALL, "base": {**SMALL["base"], "steps": 40_000}, "record": {"every": 0}}
        long_id = http_json(f"{base}/experiments", long)[1]["id"]
        wait_for(lambda: http_json(f"{base}/experiments/{long_id}")[1]["done"] > 0, 60,
                 "the long experiment to step")
        status, cancelled = http_json(f"{base}/experiments/{long_id}/cancel", {})
        assert status == 200 and cancelled["status"] == "cancelled"
        status, again = http_json(f"{base}/experiments/{long_id}/cancel", {})
        assert status == 409 and again["field"] == "status"
        next_id = http_json(f"{base}/experiments", SMALL)[1]["id"]
        wait_for(lambda: http_json(f"{base}/experiments/{next_id}")[1]["status"] == "finished",
                 120, "the next experiment to finish", every=0.2)
        assert http_json(f"{base}/experiments/{long_id}")[1]["status"] == "cancelled"
        request = urllib.request.Request(f"{base}/experiments/{long_id}", headers=AUTH,
                                         method="DELETE")
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.status == 200
        assert not (tmp_path / "data" / "experiments" / long_id).exists()
        assert _get(f"{base}/experiments/{long_id}")[0] == 404


def test_experiment_survives_a_server_restart(tmp_path: Path) -> None:
    """A server stopped while an experiment runs: the next server on the same data directory
    continues it (finished batches kept, running ones from their checkpoints) to a table with
    every member x seed exactly once."""
    # long enough that a batch is still running at its first checkpoint on a fast, quiet
    # machine (the fused step runs these small batches at tens of thousands of steps/s)
    grid = {**SMALL, "base": {**SMALL["base"], "steps": 100_000}, "record": {"every": 20_000}}
    with real_server(tmp_path, "--checkpoint-seconds", "0.5") as (base, _proc):
        exp_id = http_json(f"{base}/experiments", grid)[1]["id"]
        wait_for(lambda: any((tmp_path / "data" / "experiments" / exp_id / "batches").glob(
            "*.ckpt")), 120, "a batch checkpoint", every=0.1)
    with real_server(tmp_path, "--checkpoint-seconds", "0.5") as (base, _proc):
        info = wait_for(lambda: (lambda i: i if i["status"] == "finished" else None)(
            http_json(f"{base}/experiments/{exp_id}")[1]), 180, "the experiment to finish",
            every=0.2)
        assert info["progress"] == 1.0
        _every_member_seed_once(_rows(_get(f"{base}/experiments/{exp_id}/results.csv")[1]),
                                4, [0, 1, 2])
    batches = tmp_path / "data" / "experiments" / exp_id / "batches"
    resumed = [json.loads(p.read_text())["resumed_from"] for p in sorted(batches.glob("*.json"))]
    assert any(step > 0 for step in resumed), resumed
