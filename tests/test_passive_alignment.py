"""Passive alignment, the JMLR protocol (RunConfig.compare / --compare): comparison rules step
on the run's own network every step without applying their updates; their cosine with the
exact gradient reaches telemetry, frames, the history, the CSV, the CLI summary and the REST
API of a real ``python -m app serve``."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import AUTH, TOKEN, free_port, wait_for
from test_api import _http

from app.service.framebuffer import FrameBuffer, strip_frame
from simulator import ConfigError, Run, RunConfig
from simulator.alignment import pairwise_alignment
from simulator.cli import main as cli_main
from simulator.telemetry import make_frame, scalar_history

ROOT = Path(__file__).resolve().parents[1]


def small(**kw) -> RunConfig:
    base = {"task": "add", "task_args": {"t1": 2, "t2": 4}, "rule": "dni-b", "n": 6,
            "seeds": [0, 1], "dtype": "float64", "lr": 0.05,
            # from r = 0 the first W_rec gradient is exactly zero (cosine defined as 0 there)
            "init_state": "tanh-normal"}
    base.update(kw)
    return RunConfig(**base)


def test_comparison_rules_never_change_the_run():
    plain = Run(small(align="rtrl"))
    watched = Run(small(align="rtrl", compare=["rflo", "dni", "kernl", "snap-1", "uoro"]))
    a, b = plain.advance(80), watched.advance(80)
    assert torch.equal(a.loss, b.loss) and torch.equal(a.alignment, b.alignment)
    assert torch.equal(plain.net.W, watched.net.W)
    assert torch.equal(plain.net.W_out, watched.net.W_out)
    for name, pop in plain.rule.populations().items():
        assert torch.equal(pop, watched.rule.populations()[name])
    assert set(b.compare) == {"rflo", "dni", "kernl", "snap-1", "uoro"}
    assert all(v.shape == (80, 2) and torch.isfinite(v).all() for v in b.compare.values())


def test_passive_cosine_is_the_rules_update_against_the_exact_gradient_on_the_drivers_path():
    """Against pairwise_alignment with a driver (each rule in its own Run, following the
    driver's weights): the cosine of rflo with rtrl there equals rflo's passive alignment."""
    config = small(lr=0.02)
    pairs = pairwise_alignment(config, ["dni-b", "rflo", "rtrl"], 40, driver=0)
    run = Run(config.replace(align="rtrl", compare=["rflo", "rtrl"]))
    tel = run.advance(40, record="scalars")
    torch.testing.assert_close(tel.compare["rflo"], pairs[("rflo", "rtrl")], rtol=1e-10,
                               atol=1e-12)
    torch.testing.assert_close(tel.compare["rtrl"], torch.ones(40, 2, dtype=torch.float64),
                               rtol=0, atol=1e-12)
    assert float((tel.compare["rflo"] - 1).abs().max()) > 1e-3  # a real measurement


def test_comparison_rules_own_populations_learn_and_checkpoints_continue_them():
    run = Run(small(align="rtrl", compare=["dni", "kernl"]))
    apical = run.passive.rules["dni"].populations()["apical"].clone()
    run.advance(50)
    assert not torch.equal(apical, run.passive.rules["dni"].populations()["apical"])
    copy = Run.from_state(run.state_dict())
    a, b = run.advance(30, record="scalars"), copy.advance(30, record="scalars")
    for name in ("dni", "kernl"):
        assert torch.equal(a.compare[name], b.compare[name])


def test_alignment_continues_exactly_from_a_checkpoint():
    """The shadow's exact gradient (RTRL's influence, BPTT's window) is part of the
    checkpoint: it used to restart from zero, so alignment after a resume was wrong for a
    while (0.47 off at the first step here)."""
    for align in ("rtrl", "bptt:4"):
        run = Run(small(align=align))
        run.advance(50)
        copy = Run.from_state(run.state_dict())
        a, b = run.advance(20, record="scalars"), copy.advance(20, record="scalars")
        assert torch.equal(a.alignment, b.alignment) and torch.equal(a.norm_ratio, b.norm_ratio)


@pytest.mark.parametrize("value,message", [
    ("rflo,nope", "compare: got 'nope'; allowed: rule names from: bptt, rtrl"),
    (["rflo", "rflo"], "compare: got ['rflo', 'rflo']; allowed: each rule name at most once"),
    ("output-only", "compare: got 'output-only' (it makes no basal update)"),
    ("node-perturbation", "compare: got 'node-perturbation' (its noise must drive the network"),
    (5, "compare: got 5; allowed: a list of rule names or text like 'rflo,kernl,dni-b'"),
    ("x" * 500, "compare: got 'xxxxxxxx"),
])
def test_bad_compare_lists_are_refused_naming_the_field(value, message):
    with pytest.raises(ConfigError) as err:
        RunConfig(compare=value).validated()
    assert str(err.value).startswith(message)
    assert len(str(err.value)) < 400
    assert RunConfig(compare=" rflo, kernl ,dni-b").validated().compare == ["rflo", "kernl", "dni-b"]
    assert RunConfig().validated().compare == []


def test_frames_history_and_csv_carry_each_comparison_rule():
    run = Run(small(compare=["rflo", "snap-1"]))
    assert run.shadow is not None and run.shadow.spec == "rtrl"  # compare implies align auto
    buffer = FrameBuffer(live_frames=8, detail_frames=1)
    for _ in range(3):
        tel = run.advance(40)
        frame = make_frame(tel, run, max_points=20)
        buffer.push(frame)
    compared = frame["alignment"]["compare"]
    assert list(compared) == ["rflo", "snap-1"]
    expected = tel.compare["rflo"][-2:].mean()  # the last bin: steps 118 and 119
    assert compared["rflo"]["step"][-1] == 119
    assert compared["rflo"]["mean"][-1] == pytest.approx(float(expected), rel=1e-4)
    stripped = strip_frame(frame)
    assert set(stripped["alignment"]["compare"]) == {"rflo", "snap-1"}
    assert "compare" in frame["alignment"] and len(frame["alignment"]["step"]) == 20
    history = buffer.history(max_points=10)
    assert set(history["alignment"]["compare"]) == {"rflo", "snap-1"}
    restored = FrameBuffer.restore(buffer.snapshot())
    assert restored.history(max_points=10)["alignment"]["compare"]["rflo"] == \
        history["alignment"]["compare"]["rflo"]
    cols, rows = scalar_history(tel, run.seeds)
    assert cols[-2:] == ["alignment_rflo", "alignment_snap-1"]
    np.testing.assert_array_equal(rows[:, -1], tel.compare["snap-1"].reshape(-1).numpy())


def test_the_worker_keeps_alignment_when_it_merges_a_chunk():
    """A live chunk longer than the traced tail is two advance() calls merged into one
    Telemetry; the merge used to drop alignment (and so the frame's alignment panel data)."""
    from simulator.telemetry import concat

    run = Run(small(align="rtrl"))
    head, tail = run.advance(7, record="scalars"), run.advance(5)
    merged = concat(head, tail)
    assert merged.alignment is not None and merged.alignment.shape == (12, 2)
    torch.testing.assert_close(merged.alignment, torch.cat([head.alignment, tail.alignment]))
    torch.testing.assert_close(merged.norm_ratio, torch.cat([head.norm_ratio, tail.norm_ratio]))


def test_the_worker_keeps_comparison_rules_when_it_merges_a_chunk():
    from simulator.telemetry import concat

    run = Run(small(compare=["rflo"]))
    head, tail = run.advance(7, record="scalars"), run.advance(5)
    merged = concat(head, tail)
    torch.testing.assert_close(merged.compare["rflo"],
                               torch.cat([head.compare["rflo"], tail.compare["rflo"]]))


def test_cli_compare_prints_the_protocol_and_a_mean_per_rule(tmp_path, capsys):
    code = cli_main(["run", "--rule", "dni-b", "--compare", "rflo,snap-1", "--n", "6",
                     "--steps", "300", "--test-steps", "50", "--seeds", "0-1", "--json",
                     "--no-progress", "--out", str(tmp_path)])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["compare_protocol"] == "passive on dni-b's network, steps 0-299"
    assert set(summary["mean_alignment_compare"]) == {"rflo", "snap-1"}
    with open(tmp_path / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 600
    mean = sum(float(r["alignment_rflo"]) for r in rows if r["seed"] == "1") / 300
    assert summary["mean_alignment_compare"]["rflo"][1] == pytest.approx(mean, rel=1e-9)


def test_real_server_streams_and_exports_passive_alignment(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PLASTICITY_TOKEN": TOKEN}
    proc = subprocess.Popen([sys.executable, "-m", "app", "serve", "--port", str(port),
                             "--data-dir", str(tmp_path / "data")], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/api"
    try:
        def up() -> bool:
            assert proc.poll() is None, "server exited"
            with contextlib.suppress(OSError):
                return _http(f"{base}/openapi.json")[0] == 200
            return False

        wait_for(up, timeout=60, what="server up")
        bad = _http(f"{base}/runs", {"compare": "rflo,bogus"})
        assert bad[0] == 422 and bad[1]["field"] == "compare"
        status, created = _http(f"{base}/runs", {"task": "add", "rule": "dni-b", "n": 8,
                                                 "steps": 800, "test_steps": 100,
                                                 "compare": "rflo,kernl"})
        assert status == 201, created
        rid = created["id"]
        assert created["run"]["config"]["compare"] == ["rflo", "kernl"]

        def compared() -> dict | None:
            frames = _http(f"{base}/runs/{rid}/frames?after=-1")[1]["frames"]
            found = [f["alignment"]["compare"] for f in frames if f.get("alignment")]
            return found[-1] if found else None

        live = wait_for(compared, timeout=60, what="a frame with passive alignment")
        assert set(live) == {"rflo", "kernl"}
        wait_for(lambda: _http(f"{base}/runs/{rid}")[1]["status"] == "finished", timeout=120,
                 what="the run to finish")
        history = _http(f"{base}/runs/{rid}/history?max_points=20")[1]
        assert set(history["alignment"]["compare"]) == {"rflo", "kernl"}
        export = urllib.request.Request(f"{base}/runs/{rid}/export.csv", headers=AUTH)
        with urllib.request.urlopen(export, timeout=10) as answer:
            rows = list(csv.DictReader(io.StringIO(answer.read().decode())))
        assert len(rows) == 800
        assert all(r["alignment_rflo"] not in ("", "nan") for r in rows)
        assert -1 <= float(rows[-1]["alignment_kernl"]) <= 1
    finally:
        proc.terminate()
        proc.wait(15)


# ---- the dashboard's alignment panel and controls (pure parts) ------------------------------

def _compare_view(status: str = "running"):
    from test_figures import RID, info, view

    from app.dashboard import figures

    run_info = info()
    run_info["status"] = status
    run_info["config"].update(compare=["rflo", "kernl"], align="auto")
    rv = figures.make_run_view(run_info, "#0072B2", alignment=True)
    return RID, rv, view(rv)


def test_alignment_panel_draws_each_comparison_rule_in_its_colour_and_names_the_protocol():
    from app.dashboard import figures

    rid, rv, v = _compare_view(status="finished")
    assert figures.alignment_slots(v)[:3] == [f"align:{rid}", f"cmp:{rid}:rflo",
                                              f"cmp:{rid}:kernl"]
    steps = [99, 199]
    hist = {"step": steps, "alignment": {
        "mean": [0.2, 0.3], "min": [0.1, 0.2], "max": [0.3, 0.4],
        "compare": {"rflo": {"mean": [0.6, 0.7]}, "kernl": {"mean": [0.5, 0.55]}}}}
    fig = figures.alignment_figure(v, {rid: hist})
    by_name = {t["name"]: t for t in fig["data"]}
    assert by_name["rflo (passive)"]["line"]["color"] == figures.RULE_COLORS["rflo"]
    assert by_name["kernl (passive)"]["line"]["color"] == figures.RULE_COLORS["kernl"]
    assert by_name["rflo (passive)"]["x"] == steps and by_name["rflo (passive)"]["y"][0] == 0.6
    notes = [a["text"] for a in fig["layout"]["annotations"] if a.get("name") == "protocol"]
    assert notes == [f"{rv['label']}: own training · rflo, kernl: passive on dni-b's network, "
                     "steps 0–199"]
    live = figures.alignment_protocol({**rv, "status": "running"}, steps)
    assert live.endswith("passive on dni-b's network, steps 0–now")
    own_only = figures.alignment_protocol({**rv, "compare": []}, steps)
    assert own_only == f"{rv['label']}: own training"


def test_alignment_ticks_extend_each_comparison_rule():
    from test_figures import frame

    from app.dashboard import figures

    rid, _rv, v = _compare_view()
    _, carry = figures.build_figures(v)
    f = frame(0, align=0.3)
    f["alignment"]["compare"] = {"rflo": {"step": f["alignment"]["step"], "mean": [0.8] * 10},
                                 "kernl": {"step": f["alignment"]["step"], "mean": [0.4] * 10}}
    ops, _ = figures.tick_ops(v, {rid: [f]}, carry)
    ext = ops["alignment-graph"]["extend"]
    slots = figures.alignment_slots(v)
    last = {slots[i]: y[-1] for i, y in zip(ext["idx"], ext["y"], strict=True)}
    assert last[f"cmp:{rid}:rflo"] == pytest.approx(0.8)
    assert last[f"cmp:{rid}:kernl"] == pytest.approx(0.4)
    assert last[f"align:{rid}"] == pytest.approx(0.3)


def test_compare_travels_through_the_url_into_each_run_config():
    from app.dashboard import urlstate

    setup = {**urlstate.default_setup(), "rules": ["dni", "dni-b"], "compare": ["rflo", "snap-1"]}
    query = urlstate.encode(setup)
    assert "compare=rflo,snap-1" in query
    decoded, _ = urlstate.decode(query)
    assert decoded["compare"] == ["rflo", "snap-1"]
    configs = urlstate.validated_configs(decoded)
    assert [c["config"]["compare"] for c in configs] == [["rflo", "snap-1"]] * 2
    assert all(c["config"]["align"] == "auto" for c in configs)
    assert urlstate.validate({**decoded, "compare": ["nope"]})["compare"].startswith("got 'nope'")
    assert urlstate.setup_from_config(configs[0]["config"])["compare"] == ["rflo", "snap-1"]
    assert "compare" in urlstate.restart_fields({**decoded, "compare": []}, configs[0]["config"])


def test_fast_forward_keeps_alignment_in_the_history(tmp_path: Path) -> None:
    """A fast-forward sends scalar summaries, not frames; they used to leave alignment out,
    so the history (and the dashboard's back-filled alignment panel) had a hole there."""
    from app.server import create_server

    app = create_server(data_dir=tmp_path / "data", max_runs=2, eval_every=0,
                        checkpoint_every=10**6, frame_rate=20.0, auth=False)
    client = app.test_client()
    try:
        rid = client.post("/api/runs", json={"task": "add", "rule": "rflo", "n": 8,
                                             "steps": 10**6, "align": "rtrl",
                                             "start": False}).json["id"]
        assert client.post(f"/api/runs/{rid}/control",
                           json={"action": "fast_forward", "to": 3000}).status_code == 200
        wait_for(lambda: client.get(f"/api/runs/{rid}").json["step"] >= 3000, timeout=60,
                 what="the fast-forward")
        client.post(f"/api/runs/{rid}/control", json={"action": "pause"})
        history = client.get(f"/api/runs/{rid}/history?max_points=30&stop=2999").json
        assert history["alignment"] is not None
        means = history["alignment"]["mean"]
        assert len(means) >= 10 and all(m is not None and -1 <= m <= 1 for m in means)
    finally:
        app.extensions["plasticity_backend"].shutdown()
