"""Exports for slides and papers (issue 12 item 8): every scalar a run has, in CSV, JSON and a
zip, from a real server; the values equal what the run produced."""

from __future__ import annotations

import csv
import io
import json
import math
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import AUTH, http_json, real_server, wait_for


def _get(url: str) -> tuple[int, bytes, dict[str, str]]:
    req = urllib.request.Request(url, headers=AUTH)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with real_server(tmp_path_factory.mktemp("export")) as (base, _proc):
        yield base


def _control(api: str, rid: str, **body: Any) -> dict[str, Any]:
    status, out = http_json(f"{api}/runs/{rid}/control", body)
    assert status == 200, out
    return out


def _at_step(api: str, rid: str, step: int) -> None:
    wait_for(lambda: http_json(f"{api}/runs/{rid}")[1]["step"] >= step, 60, f"step {step}")


@pytest.fixture(scope="module")
def run(api: str) -> dict[str, Any]:
    """A paused run stepped 100, evaluated, its rate changed, stepped 100, evaluated, then
    played to its end (300 steps, two phases, alignment on)."""
    status, made = http_json(f"{api}/runs", {
        "rule": "dni-b", "task": "add", "n": 8, "steps": 300, "seeds": [3, 5],
        "phases": "apical-then-basal", "align": "auto", "start": False})
    assert status == 201, made
    rid = made["id"]
    _control(api, rid, action="step", k=100)
    _at_step(api, rid, 100)
    first = _control(api, rid, action="evaluate", steps=50)["test_loss"]
    _control(api, rid, action="set", lr=0.002)
    _control(api, rid, action="step", k=100)
    _at_step(api, rid, 200)
    second = _control(api, rid, action="evaluate", steps=50)["test_loss"]
    _control(api, rid, action="resume")
    wait_for(lambda: http_json(f"{api}/runs/{rid}")[1]["status"] == "finished", 60, "finished")
    frames = http_json(f"{api}/runs/{rid}/frames")[1]["frames"]
    return {"id": rid, "tests": {99: first, 199: second}, "frames": frames}


def _table(data: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(data.decode())))


def test_the_csv_has_every_scalar_and_equals_what_the_run_produced(api: str,
                                                                   run: dict[str, Any]) -> None:
    status, data, headers = _get(f"{api}/runs/{run['id']}/export/scalars.csv")
    assert status == 200, data[:300]
    assert headers["Content-Disposition"] == (
        f'attachment; filename="plasticity-dni-b-{run["id"]}.csv"')
    rows = _table(data)
    columns = list(rows[0])
    for name in ("step", "seed", "train_loss", "alignment", "norm_ratio", "phase", "test_loss",
                 "weight_norm_basal", "weight_norm_apical", "weight_norm_readout", "block"):
        assert name in columns, columns
    assert any(c.endswith("_loss") and c not in ("train_loss", "test_loss") for c in columns)
    assert len(rows) == 300 * 2 and {r["seed"] for r in rows} == {"3", "5"}
    by = {(int(r["step"]), int(r["seed"])): r for r in rows}
    # the plain per-step table is the run's own file, row for row
    raw = _table(_get(f"{api}/runs/{run['id']}/export.csv")[1])
    assert [{k: r[k] for k in raw[0]} for r in rows] == raw
    # test loss: per seed, at the step it was measured, empty elsewhere
    for step, losses in run["tests"].items():
        assert [float(by[step, s]["test_loss"]) for s in (3, 5)] == losses
    measured = {k for k, r in by.items() if r["test_loss"]}
    assert measured == {(s, seed) for s in run["tests"] for seed in (3, 5)}
    # weight norms: each frame's, at its last step
    frames = [f for f in run["frames"] if f.get("weight_norm")]
    assert len(frames) >= 3
    for f in frames:
        row = by[f["t1"] - 1, 3]
        for pop, value in f["weight_norm"].items():
            assert float(row[f"weight_norm_{pop}"]) == value, (f["t1"], pop)
    # the phase of every step, as the schedule ran it
    assert {by[s, 3]["phase"] for s in range(100)} == {"apical"}
    assert {by[s, 5]["phase"] for s in range(100, 200)} == {"basal"}
    assert by[250, 3]["phase"] == "apical"


def test_the_settings_changes_are_recorded_with_their_step(api: str, run: dict[str, Any]) -> None:
    status, data, headers = _get(f"{api}/runs/{run['id']}/export/events.csv")
    assert status == 200, data[:300]
    assert headers["Content-Disposition"].endswith(f'-{run["id"]}.events.csv"')
    assert _table(data) == [{"step": "100", "action": "set", "setting": "lr", "value": "0.002"}]


def test_the_json_is_one_document_with_the_same_table(api: str, run: dict[str, Any]) -> None:
    status, data, _ = _get(f"{api}/runs/{run['id']}/export/run.json")
    assert status == 200, data[:300]
    doc = json.loads(data)
    assert set(doc) == {"run", "config", "columns", "rows", "series", "events"}
    assert doc["run"]["id"] == run["id"] and doc["run"]["name"] == "dni-b"
    assert doc["run"]["setup"].startswith("dni-b · add · n 8 · lr ")
    assert doc["config"]["phases"] == "apical-then-basal" and doc["config"]["seeds"] == [3, 5]
    assert doc["events"] == [{"step": 100, "action": "set", "lr": 0.002, "label": "lr 0.002"}]
    csv_rows = _table(_get(f"{api}/runs/{run['id']}/export/scalars.csv")[1])
    assert doc["columns"] == list(csv_rows[0])
    assert len(doc["rows"]) == len(csv_rows)
    for got, want in zip(doc["rows"], csv_rows, strict=True):
        for column, value in zip(doc["columns"], got, strict=True):
            text = want[column]
            if column == "phase":
                assert value == (text or None)
            elif text in ("", "nan"):
                assert value is None
            else:
                assert value == float(text) and math.isfinite(value)
    tests = doc["series"]["test_loss"]
    assert tests["step"] == [99, 199] and tests["seeds"] == [3, 5]
    assert tests["values"] == [run["tests"][99], run["tests"][199]]
    assert doc["series"]["phases"][0] == [0, 100, "apical"]


def test_a_zip_of_two_runs_holds_each_runs_files_named_by_run(api: str,
                                                             run: dict[str, Any]) -> None:
    status, made = http_json(f"{api}/runs", {"rule": "rflo", "task": "add", "n": 8,
                                             "steps": 50, "seeds": [0]})
    assert status == 201, made
    other = made["id"]
    wait_for(lambda: http_json(f"{api}/runs/{other}")[1]["status"] == "finished", 60, "finished")
    status, data, headers = _get(f"{api}/export.zip?ids={run['id']},{other}")
    assert status == 200, data[:300]
    assert headers["Content-Disposition"] == 'attachment; filename="plasticity-2-runs.zip"'
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert zf.testzip() is None
        names = zf.namelist()
        # named by what differs between the two (the rule, the rate changed, seeds, phases)
        files = {(rid, ext): [n for n in names if n.startswith(f"plasticity-{rule}")
                              and n.endswith(f"-{rid}.{ext}")]
                 for rule, rid in (("dni-b_lr-2e-3", run["id"]), ("rflo", other))
                 for ext in ("csv", "events.csv", "json")}
        assert all(len(found) == 1 for found in files.values()), names
        assert len(names) == 6
        single = _get(f"{api}/runs/{run['id']}/export/scalars.csv")[1]
        assert zf.read(files[run["id"], "csv"][0]) == single
        assert len(_table(zf.read(files[other, "csv"][0]))) == 50
        assert json.loads(zf.read(files[other, "json"][0]))["events"] == []


def test_bad_and_unknown_ids_are_named(api: str, tmp_path: Path) -> None:
    status, data, _ = _get(f"{api}/export.zip?ids=" + "x" * 300)
    assert status == 400
    body = json.loads(data)
    assert body["field"] == "ids" and body["error"].startswith("ids: got ")
    assert "allowed: 1 to 64 run ids" in body["error"] and len(body["error"]) < 200
    assert _get(f"{api}/export.zip")[0] == 400
    status, data, _ = _get(f"{api}/export.zip?ids=nosuchrun")
    assert status == 404, data
    assert _get(f"{api}/runs/nosuchrun/export/run.json")[0] == 404
    req = urllib.request.Request(f"{api}/runs/nosuchrun/export/scalars.csv")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    assert err.value.code == 401  # no token: signed out like the rest of the API


def test_settings_changes_survive_a_history_snapshot() -> None:
    from app.service.framebuffer import FrameBuffer

    buf = FrameBuffer()
    buf.fold({"t0": 0, "t1": 10, "events": [{"step": 10, "action": "set", "lr": 0.01}]})
    buf.fold({"t0": 10, "t1": 10, "events": [{"step": 10, "action": "set", "phases": "all"},
                                             {"step": "bad"}, "bad"]})
    again = FrameBuffer.restore(buf.snapshot())
    want = [{"step": 10, "action": "set", "lr": 0.01},
            {"step": 10, "action": "set", "phases": "all"}]
    assert buf.history()["events"] == want and again.history()["events"] == want
    assert again.history(start=11)["events"] == []


def _big_run(tmp_path: Path, rows: int) -> Any:
    """A RunScalars over a coarsened table of ``rows`` rows (two seeds), with per-frame parts."""
    import numpy as np

    from app.exports import RunScalars

    path = tmp_path / "scalars.csv"
    steps = np.repeat(np.arange(rows // 2) * 4, 2)
    seeds = np.tile([0, 1], rows // 2)
    loss = np.linspace(2.0, 0.1, rows)
    with open(path, "w") as f:
        f.write("step,seed,train_loss,apical_loss,alignment,block\n")
        np.savetxt(f, np.stack([steps, seeds, loss, loss / 2, loss / 3, np.full(rows, 4)], 1),
                   fmt="%d,%d,%.7g,%.7g,%.7g,%d")
    return RunScalars(
        run_id="big", name="dni", info={"seeds": [0, 1]}, config={"seeds": [0, 1]},
        csv_path=path, csv_size=path.stat().st_size,
        header=["step", "seed", "train_loss", "apical_loss", "alignment", "block"],
        test_steps=[5, 4001], test_values=[[0.5, 0.25], [0.125, None]],
        norm_steps=[3, 7], norms={"basal": [1.5, 2.5]}, spans=[[0, 6, "a"], [6, 10**9, "b"]],
        events=[])


def test_the_exports_stream_the_table_block_by_block(tmp_path: Path) -> None:
    """The table is read and sent in blocks of about 256 KiB, never read whole first: rows
    changed in the file after the first block went out come out changed."""
    from app.exports import BLOCK, run_json, scalars_csv

    for build in (scalars_csv, run_json):
        rs = _big_run(tmp_path, 30_000)
        assert rs.csv_size > 4 * BLOCK
        chunks = build(rs)
        sent = [next(chunks)]
        while sum(map(len, sent)) < BLOCK:
            sent.append(next(chunks))
        data = rs.csv_path.read_bytes()
        half = len(data) // 2  # the second half: every 1 becomes 7 (same length)
        rs.csv_path.write_bytes(data[:half] + data[half:].replace(b"1", b"7"))
        sent += list(chunks)
        assert max(map(len, sent)) < 2 * BLOCK
        last = rs.csv_path.read_bytes().splitlines()[-1].decode().split(",")
        tail = b"".join(sent).decode().rstrip("]}\n")
        assert f"{last[0]},{last[1]},{last[2]}" in tail[-400:].replace("[", ""), (build, last)


def test_the_coarsened_table_gets_the_values_measured_in_each_block(tmp_path: Path) -> None:
    from app.exports import scalars_csv

    rs = _big_run(tmp_path, 200)
    lines = b"".join(scalars_csv(rs)).decode().splitlines()
    assert lines[0] == ("step,seed,train_loss,apical_loss,alignment,phase,test_loss,"
                        "weight_norm_basal,block")
    # a block of 4 steps gets the per-frame values measured inside it (test loss per seed)
    joined = [[row[i] for i in (0, 1, 5, 6, 7, 8)] for row in
              (line.split(",") for line in lines[1:7])]
    assert joined == [["0", "0", "a", "", "1.5", "4"], ["0", "1", "a", "", "1.5", "4"],
                      ["4", "0", "a", "0.5", "2.5", "4"], ["4", "1", "a", "0.25", "2.5", "4"],
                      ["8", "0", "b", "", "", "4"], ["8", "1", "b", "", "", "4"]]
    assert lines[-1].split(",")[5:8] == ["b", "", ""]
    assert lines[1].split(",")[2:5] == ["2", "1", "0.6666667"]
    # steps older than the phase spans the history kept: from the run's schedule, unless
    # the phases were changed mid-run (then unknown: empty)
    rs.spans = [[300, 10**9, "late"]]  # rows 150 on (a row is 4 steps of one of 2 seeds)
    rs.config["phases"] = "apical-then-basal"
    phases = [line.split(",")[5] for line in b"".join(scalars_csv(rs)).decode().splitlines()[1:]]
    assert phases[:2] == ["apical", "apical"] and phases[50:52] == ["basal", "basal"]
    assert set(phases[100:150]) == {"apical"} and set(phases[150:]) == {"late"}
    rs.events = [{"step": 40, "action": "set", "phases": "all"}]
    phases = [line.split(",")[5] for line in b"".join(scalars_csv(rs)).decode().splitlines()[1:]]
    assert set(phases[:150]) == {""} and set(phases[150:]) == {"late"}
