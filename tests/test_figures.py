"""The dashboard's pure parts: figures, per-tick updates, URL state, presets, callback helpers.

No browser, no backend: frames are made by hand in the telemetry format.
"""

from __future__ import annotations

import json
import math
from typing import ClassVar

import pytest

from app import live
from app.dashboard import callbacks, figures, layout, presets, urlstate
from simulator.config import RunConfig
from simulator.rules import RULES
from simulator.tasks import TASKS

RID = "aaaa1111"
RID2 = "bbbb2222"


# ---------------------------------------------------------------------------------------------
# helpers: run views and frames in the telemetry format
# ---------------------------------------------------------------------------------------------
def info(rid: str = RID, rule: str = "dni-b", steps: int = 10_000, n: int = 8) -> dict:
    rule_args = {"lr_apical": 0.05, "jacobian": "learned"} if rule.startswith("dni") else {}
    return {"id": rid, "status": "running", "target_steps": steps,
            "config": {"rule": rule, "n": n, "steps": steps, "rule_args": rule_args}}


def run_view(rid: str = RID, rule: str = "dni-b", color: str = "#0072B2", **kw) -> figures.RunView:
    diags = list(RULES[rule].diagnostic_names) if rule in RULES else []
    return figures.make_run_view(info(rid, rule, **kw), color, diagnostics=diags)


def view(*runs: figures.RunView, phases: tuple[str, ...] = ("all",), **kw) -> figures.View:
    return figures.make_view(list(runs), epoch=3, refs={"nothing": 0.66, "optimum": 0.45},
                             phase_names=phases, **kw)


def frame(t0: int, k: int = 10, *, units=(0, 1, 2, 3), pops=("basal", "apical", "jacobian",
                                                              "readout"),
          loss: float = 0.6, phases=None, test=None, align=None, n: int = 8) -> dict:
    steps = list(range(t0, t0 + k))
    f = {
        "t0": t0, "t1": t0 + k, "seq": t0 // k, "wall": 1000.0 + t0,
        "phases": phases or [[t0, t0 + k, "all"]],
        "loss": {"step": steps, "mean": [loss] * k, "min": [loss] * k, "max": [loss] * k},
        "diagnostics": {"apical_loss": {"step": steps, "mean": [0.1] * k},
                        "jacobian_loss": {"step": steps, "mean": [0.01] * k}},
        "alignment": None if align is None else {"step": steps, "mean": [align] * k},
        "traces": {"units": list(units), "step": steps,
                   "V": [[0.1 * u] * k for u in units], "U": [[0.01 * u] * k for u in units],
                   "r": [[0.2] * k for _ in units]},
        "task": {"step": steps, "x": [[1.0] * k, [0.0] * k], "y": [[0.7] * k, [0.3] * k],
                 "pred": [[0.6] * k, [0.4] * k]},
        "weight_change": {p: {"norm": 0.1, "max_abs": 0.01,
                              "matrix": [[0.001 * (i - j) for j in range(n + 3)]
                                         for i in range(n if p != "readout" else 2)]}
                          for p in pops},
        "weight_norm": {p: 1.0 for p in pops},
    }
    if test is not None:
        f["test_loss"] = test
    return f


def trace_names(fig: dict) -> list[str]:
    return [t.get("name") for t in fig["data"]]


# ---------------------------------------------------------------------------------------------
# binning and smoothing
# ---------------------------------------------------------------------------------------------
def test_fold_completes_blocks_and_keeps_a_provisional_tail() -> None:
    carry = figures.new_series_carry()
    pts = [(s, float(s), 1.0) for s in range(0, 25)]  # steps 0..24, value = step
    xs, raw, smooth, tail = figures.fold(pts, 10, 50.0, carry)
    assert xs == [9, 19]
    assert raw == [4.5, 14.5]
    assert len(smooth) == 2 and smooth[0] == pytest.approx(4.5)  # debiased EMA starts at value
    assert tail is not None and tail[0] == 24 and tail[1] == pytest.approx(22.0)
    # the next points finish the open block; nothing is lost or double counted
    xs2, _raw2, _, _ = figures.fold([(s, float(s), 1.0) for s in range(25, 30)], 10, 50.0, carry)
    assert xs2 == [] and carry["w"] == 10
    xs3, raw3, _, _ = figures.fold([(30, 30.0, 1.0)], 10, 50.0, carry)
    assert xs3 == [29] and raw3 == [24.5]


def test_fold_weights_bins_by_their_width() -> None:
    carry = figures.new_series_carry()
    # a frame binned into 2 bins: steps 0-7 (mean 1) and 8-9 (mean 6)
    pts = figures.bin_points({"step": [7, 9], "mean": [1.0, 6.0]}, 0)
    assert pts == [(7, 1.0, 8.0), (9, 6.0, 2.0)]
    xs, _raw, _, tail = figures.fold(pts, 100, 10.0, carry)
    assert xs == [] and tail[1] == pytest.approx(2.0)  # (8*1 + 2*6) / 10


def test_bin_points_skips_missing_values() -> None:
    assert figures.bin_points({"step": [0, 1, 2], "mean": [None, float("nan"), 3.0]}, 0) == [
        (2, 3.0, 1.0)]
    assert figures.bin_points(None, 0) == []


def test_ema_is_time_aware() -> None:
    a, b = figures.new_series_carry(), figures.new_series_carry()
    figures.ema_update(a, 0, 0.0, 100.0)
    figures.ema_update(b, 0, 0.0, 100.0)
    # one update 100 steps later moves as far as 100 updates one step apart
    far = figures.ema_update(a, 100, 1.0, 100.0)
    for t in range(1, 101):
        near = figures.ema_update(b, t, 1.0, 100.0)
    assert far == pytest.approx(near, rel=1e-9)


def test_stride_keeps_whole_runs_near_the_point_budget() -> None:
    assert figures.loss_stride(1000) == 1
    for steps in (10_000, 1_000_000, 10**9):
        assert steps / figures.loss_stride(steps) <= 2 * figures.LOSS_POINTS


def test_merge_spans_joins_touching_phases() -> None:
    spans = [[0, 5, "a"], [5, 10, "a"], [10, 20, "b"], [20, 22, "b"], [22, 30, "a"]]
    assert figures.merge_spans(spans) == [[0, 10, "a"], [10, 22, "b"], [22, 30, "a"]]


# ---------------------------------------------------------------------------------------------
# colours and slots
# ---------------------------------------------------------------------------------------------
def test_colours_one_per_rule_and_distinct() -> None:
    colors = figures.assign_colors(["dni", "dni-b", "dni-b", "some-new-rule"])
    assert colors[0] == figures.RULE_COLORS["dni"] and colors[1] == figures.RULE_COLORS["dni-b"]
    assert len(set(colors)) == 4


def _linear(channel: int) -> float:
    c = channel / 255
    return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4


def _rgb(color: str) -> list[float]:
    return [_linear(int(color[i:i + 2], 16)) for i in (1, 3, 5)]


def _contrast_on_white(color: str) -> float:
    """WCAG contrast ratio of a colour against the plots' white background."""
    r, g, b = _rgb(color)
    return 1.05 / (0.2126 * r + 0.7152 * g + 0.0722 * b + 0.05)


def _delta_e(a: str, b: str) -> float:
    """CIE76 colour difference (about 2.3: just noticeable; above 15: clearly different)."""
    def lab(color: str) -> tuple[float, float, float]:
        r, g, b_ = _rgb(color)
        xyz = ((0.4124 * r + 0.3576 * g + 0.1805 * b_) / 0.95047,
               0.2126 * r + 0.7152 * g + 0.0722 * b_,
               (0.0193 * r + 0.1192 * g + 0.9505 * b_) / 1.08883)
        fx, fy, fz = (t ** (1 / 3) if t > 0.008856 else 7.787 * t + 16 / 116 for t in xyz)
        return 116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)
    return math.dist(lab(a), lab(b))


@pytest.mark.parametrize("race", [list(RULES), *[[rule] * 10 for rule in RULES]],
                         ids=["every-rule", *[f"10x{rule}" for rule in RULES]])
def test_runs_of_a_race_get_colours_told_apart_on_a_projector(race: list[str]) -> None:
    """Every registered rule racing, or ten runs of one rule (seeds, rates): each run's
    colour is clearly different from every other (CIE76 delta E >= 15) and readable as a
    line on the white plot (contrast >= 2: no pale sand or sky blue)."""
    colors = figures.assign_colors(race)
    assert len(set(colors)) == len(race)
    worst = min((_delta_e(a, b), a, b) for k, a in enumerate(colors) for b in colors[k + 1:])
    assert worst[0] >= 15, worst
    palest = min((_contrast_on_white(c), c) for c in colors)
    assert palest[0] >= 2.0, palest


def test_trace_budget_stays_small() -> None:
    """Few traces per panel (the browser chokes on dozens of live traces)."""
    one = view(run_view())
    race = view(*[run_view(f"r{i:07d}", rule, figures.EXTRA_COLORS[i])
                  for i, rule in enumerate(["bptt", "dni", "dni-b", "output-only"])])
    for v in (one, race):
        assert len(figures.voltage_slots(v)) <= 3 * figures.MAX_VOLTAGE_PAIRS
        assert len(figures.loss_slots(v)) <= 12
        assert len(figures.weight_slots(v)) <= 12
        assert len(figures.task_slots(v)) <= 10
    assert len(figures.voltage_slots(one)) == 9  # 3 units x V, U, r


def test_figures_follow_their_slots() -> None:
    v = view(run_view(), run_view(RID2, "dni", "#E69F00"))
    figs, _ = figures.build_figures(v)
    for gid, slots in figures.SLOTS.items():
        assert len(figs[gid]["data"]) == len(slots(v)), gid
        assert figs[gid]["layout"]["meta"]["epoch"] == 3
    json.dumps(figs, allow_nan=False)


# ---------------------------------------------------------------------------------------------
# figures
# ---------------------------------------------------------------------------------------------
def test_loss_figure_has_reference_lines_log_y_and_history() -> None:
    v = view(run_view())
    hist = {RID: {"step": [9, 19, 29], "loss": {"mean": [0.7, 0.6, None]},
                  "test_loss": {"step": [20], "mean": [0.55]}, "phases": []}}
    carry: dict = {}
    fig = figures.loss_figure(v, hist, carry)
    layout_ = fig["layout"]
    assert layout_["yaxis"]["type"] == "log"
    # the reference levels: the ticks (and dashed grid lines) of a right-hand axis that
    # follows the loss axis, not shapes and annotations (rebuilt at every redraw)
    refs = layout_["yaxis2"]
    assert refs["overlaying"] == "y" and refs["matches"] == "y" and refs["type"] == "log"
    assert sorted(refs["tickvals"]) == [0.45, 0.66] and refs["griddash"] == "dash"
    assert "nothing 0.66" in refs["ticktext"] and "optimum 0.45" in refs["ticktext"]
    assert not [s for s in layout_["shapes"] if s.get("name") == "ref"]
    assert not layout_["annotations"]
    raw, smooth, test, refs_trace = fig["data"]
    assert refs_trace["yaxis"] == "y2" and refs_trace["x"] == []
    # blocks of the run's stride (6 steps); the last one (step 19) stays open in the carry
    # while the run is running: the next tick continues it; a NaN bin is no point
    assert figures.loss_stride(10_000) == 6
    assert raw["x"] == [9] and raw["y"] == [0.7] and raw["opacity"] < 0.5
    assert smooth["y"] == [pytest.approx(0.7, rel=1e-12)]
    assert carry[RID]["loss"]["t"] == 19 and carry[RID]["loss"]["w"] == 10
    assert test["x"] == [20] and test["y"] == [0.55]
    assert carry[RID]["loss"]["et"] == 9  # EMA continues from the history
    done = figures.loss_figure(view({**run_view(), "status": "finished"}), hist, {})
    assert done["data"][0]["x"] == [9, 19] and done["data"][0]["y"] == [0.7, 0.6]


def test_linear_loss_axis() -> None:
    fig = figures.loss_figure(view(run_view(), log_y=False))
    assert fig["layout"]["yaxis"]["type"] == "linear"


def test_many_runs_hide_the_raw_curve() -> None:
    runs = [run_view(f"r{i:07d}", "dni-b", c) for i, c in enumerate(figures.EXTRA_COLORS[:4])]
    slots = figures.loss_slots(view(*runs))
    assert not any(s.startswith("raw:") for s in slots)


def test_phase_shading_and_legend() -> None:
    v = view(run_view(), phases=("apical", "basal"))
    hist = {RID: {"step": [], "loss": {"mean": []},
                  "phases": [[0, 100, "apical"], [100, 200, "basal"], [200, 250, "apical"]]}}
    fig = figures.loss_figure(v, hist)
    rects = [s for s in fig["layout"]["shapes"] if s["name"].startswith("phase:")]
    assert [(r["x0"], r["x1"], r["name"]) for r in rects] == [
        (-0.5, 99.5, "phase:apical"), (99.5, 199.5, "phase:basal"), (199.5, 249.5, "phase:apical")]
    assert rects[0]["fillcolor"] != rects[1]["fillcolor"]
    assert any("phases:" in a["text"] for a in fig["layout"]["annotations"])
    # one phase: nothing shaded
    flat = figures.loss_figure(view(run_view()), hist)
    assert not [s for s in flat["layout"]["shapes"] if s["name"].startswith("phase:")]


def test_voltage_figure_rows_and_colours() -> None:
    single = figures.voltage_figure(view(run_view(), units=[0, 2]), {RID: [frame(0)]})
    assert [t["yaxis"] for t in single["data"]] == ["y", "y", "y2", "y2", "y3", "y3"]
    assert single["data"][0]["line"]["color"] != single["data"][1]["line"]["color"]
    assert single["data"][1]["y"] == [0.2] * 10  # V of unit 2
    assert single["layout"]["meta"]["window"] == figures.WINDOW
    race = figures.voltage_figure(view(run_view(), run_view(RID2, "dni", "#E69F00"), units=[0, 1]))
    colors = {t["line"]["color"] for t in race["data"]}
    assert colors == {"#0072B2", "#E69F00"}


def test_the_seed_picker_shows_one_seed_of_an_ensemble() -> None:
    """Frames carry the seed their traces came from; the panels draw only the chosen seed's
    (frames made before the worker saw a new choice are skipped, not mixed in)."""
    ensemble = figures.make_run_view({**info(), "config": {**info()["config"], "seeds": [3, 5]}},
                                     "#0072B2")

    def seeded(t0: int, seed: int) -> dict:
        f = frame(t0)
        f["traces"]["seed"] = f["task"]["seed"] = seed
        return f

    frames = {RID: [seeded(0, 3), seeded(10, 5), seeded(20, 5)]}
    for index, seed, steps in ((0, 3, list(range(10))), (1, 5, list(range(10, 30)))):
        v = view(ensemble, units=[0], seed_index=index)
        assert figures.shown_seed(v, ensemble) == seed
        volt = figures.voltage_figure(v, frames)
        assert [x for x in volt["data"][0]["x"] if x is not None] == steps
        task = figures.task_figure(v, frames)
        assert [x for x in task["data"][0]["x"] if x is not None] == steps
    assert figures.shown_seed_index(view(ensemble, seed_index=9), ensemble) == 1  # clamped
    assert callbacks.seed_options("3,5") == [{"label": "seed 3", "value": 0},
                                             {"label": "seed 5", "value": 1}]
    assert callbacks.seed_options("nonsense") == [{"label": "seed 0", "value": 0}]
    setup = {**urlstate.default_setup(), "seeds": "0-3", "seed_index": 2}
    back, _ = urlstate.decode(urlstate.encode(setup, []))
    assert back["seed_index"] == 2


def test_weight_figure_combines_populations() -> None:
    v = view(run_view())
    fig = figures.weight_figure(v, {RID: [frame(0), frame(10)]})
    heat = fig["data"][0]
    assert heat["type"] == "heatmap" and heat["zmin"] == -1 and heat["zmax"] == 1
    values = [x for row in heat["z"] for x in row if x is not None]
    assert max(abs(x) for x in values) == pytest.approx(1.0)
    # block titles: the tick labels of the heatmap's top axis, at each block's centre
    top = fig["layout"]["xaxis"]
    assert top["side"] == "top" and len(top["tickvals"]) == len(top["ticktext"])
    assert top["tickvals"] == sorted(top["tickvals"])
    titles = top["ticktext"]
    assert [t.split("</b>")[0].removeprefix("<b>") for t in titles] == [
        "basal W", "apical A", "Jacobian J̃", "readout"]
    assert "2.0e-02" in titles[0]  # two frames of max 0.01 summed
    norms = fig["data"][1:]
    assert [t["name"] for t in norms] == ["‖basal‖", "‖apical‖", "‖jacobian‖", "‖readout‖"]


def test_combine_matrices_layout() -> None:
    n = 4
    mats = {"basal": ([[1.0] * (n + 3)] * n, 2.0), "readout": ([[3.0] * (n + 1)] * 2, 3.0)}
    z, blocks = figures.combine_matrices(["basal", "readout"], mats, n)
    assert len(z) == n
    # basal: W_rec (4) | gap | W_in (2) | gap | b (1); two gap columns; readout W_out (4) | gap | b
    assert len(z[0]) == 4 + 1 + 2 + 1 + 1 + 2 + 4 + 1 + 1
    assert z[0][4] is None and z[0][7] is None and z[0][9] is None and z[0][10] is None
    assert z[0][0] == 0.5 and z[3][11] == 1.0  # scaled by the block's own max; readout rows repeat
    assert [b[0] for b in blocks] == ["basal", "readout"]


def test_alignment_figure_explains_how_to_turn_it_on() -> None:
    fig = figures.alignment_figure(view(run_view()))
    text = " ".join(a["text"] for a in fig["layout"]["annotations"])
    assert "measure alignment" in text
    on = figures.make_run_view(info(), "#000", diagnostics=["apical_loss"], alignment=True)
    fig = figures.alignment_figure(view(on))
    assert "measure alignment" not in " ".join(a["text"] for a in fig["layout"]["annotations"])
    assert trace_names(fig) == ["dni-b #1111", "apical prediction loss"]


def test_task_figure_uses_the_task_view_hints() -> None:
    tv = {"kind": "lines", "inputs": ["x"], "outputs": ["p(label 0)"], "input_index": [0],
          "output_index": [0]}
    v = view(run_view(), task_view=tv)
    fig = figures.task_figure(v, {RID: [frame(0)]})
    assert trace_names(fig) == ["input: x", "target: p(label 0)", "prediction: p(label 0)"]
    assert fig["data"][2]["y"] == [0.6] * 10
    # a count instead of names, and a race: predictions per run, target once
    v2 = view(run_view(), run_view(RID2, "dni", "#E69F00"),
              task_view={"kind": "heatmap", "inputs": 6, "outputs": 3})
    assert figures.task_slots(v2) == ["x:0", "x:1", "x:2", "x:3", "y:0", "y:1",
                                      f"pred:{RID}:0", f"pred:{RID}:1",
                                      f"pred:{RID2}:0", f"pred:{RID2}:1"]


def test_empty_view_figures_are_valid() -> None:
    figs, carry = figures.build_figures(figures.make_view([], epoch=0))
    assert carry == {}
    for fig in figs.values():
        assert fig["data"] == [] or all(not t.get("x") for t in fig["data"])
        json.dumps(fig, allow_nan=False)


# ---------------------------------------------------------------------------------------------
# ticks
# ---------------------------------------------------------------------------------------------
def test_tick_sends_only_new_points_in_slot_order() -> None:
    v = view(run_view(steps=1000))
    _, carry = figures.build_figures(v)
    ops, carry = figures.tick_ops(v, {RID: [frame(0), frame(10, test=[0.5, 0.6])]}, carry)
    # every graph but the circuit, which draws only frames with a network snapshot
    assert set(ops) == set(figures.SLOTS) - {"circuit-graph"}
    loss = ops["loss-graph"]["extend"]
    slots = figures.loss_slots(v)
    by_slot = {slots[i]: (x, y) for i, x, y in zip(loss["idx"], loss["x"], loss["y"], strict=True)}
    assert by_slot[f"raw:{RID}"][0] == list(range(20))  # stride 1: 19 blocks, then the tail
    assert loss["tail"] == [True, True, False]
    assert by_slot[f"test:{RID}"] == ([20], [pytest.approx(0.55)])
    volt = ops["voltage-graph"]["extend"]
    assert len(volt["idx"]) == 9 and all(len(x) == 20 for x in volt["x"])
    assert all(m == figures.WINDOW for m in volt["max"])
    assert ops["weight-change-graph"]["set"][0]["i"] == 0
    assert len(ops["weight-change-graph"]["titles"]) == 4
    json.dumps(ops, allow_nan=False)
    # a tick without frames sends nothing
    again, _ = figures.tick_ops(v, {RID: []}, carry)
    assert again == {}


def test_tick_restarts_scrolling_windows_after_a_jump() -> None:
    v = view(run_view())
    _, carry = figures.build_figures(v)
    figures.tick_ops(v, {RID: [frame(0)]}, carry)
    ops, _ = figures.tick_ops(v, {RID: [frame(500)]}, carry)  # steps 10..499 skipped
    volt = ops["voltage-graph"]["extend"]
    assert volt["restart"] == [True] * len(volt["idx"])
    assert volt["x"][0][0] == 500
    contiguous, _ = figures.tick_ops(v, {RID: [frame(510)]}, carry)
    assert "restart" not in contiguous["voltage-graph"]["extend"]


def test_tick_respects_hidden_panels_and_phase_spans() -> None:
    v = view(run_view(), phases=("a", "b"), panels=["loss"])
    _, carry = figures.build_figures(v)
    ops, _ = figures.tick_ops(v, {RID: [frame(0, phases=[[0, 4, "a"], [4, 10, "b"]])]}, carry)
    assert set(ops) == {"loss-graph"}
    assert ops["loss-graph"]["spans"] == [[0, 4, "a"], [4, 10, "b"]]


def test_tick_alignment_and_diagnostics() -> None:
    rv = figures.make_run_view(info(), "#000", diagnostics=["apical_loss", "jacobian_loss"],
                               alignment=True)
    v = view(rv)
    _, carry = figures.build_figures(v)
    ops, _ = figures.tick_ops(v, {RID: [frame(0, align=0.3)]}, carry)
    ext = ops["alignment-graph"]["extend"]
    assert len(ext["idx"]) == 3
    assert ext["y"][0][-1] == pytest.approx(0.3)


def test_population_change_triggers_a_rebuild() -> None:
    v = view(run_view())
    assert not figures.populations_changed(v, {RID: [frame(0)]})
    assert figures.populations_changed(v, {RID: [frame(0, pops=("basal", "readout"))]})


def test_a_jump_in_the_loss_stream_asks_for_a_rebuild() -> None:
    v = view(run_view(steps=1000))
    _, carry = figures.build_figures(v)
    assert not figures.loss_gap(v, {RID: [frame(0)]}, carry)
    figures.tick_ops(v, {RID: [frame(0)]}, carry)
    assert not figures.loss_gap(v, {RID: [frame(10)]}, carry)
    assert figures.loss_gap(v, {RID: [frame(5000)]}, carry)  # a fast-forward sent no frames


def test_guess_populations() -> None:
    assert figures.guess_populations("dni-b", {"lr_apical": 0.05, "jacobian": "learned"}) == [
        "basal", "apical", "jacobian", "readout"]
    assert figures.guess_populations("bptt", {"T": 10}) == ["basal", "readout"]


# ---------------------------------------------------------------------------------------------
# URL state, validation, presets
# ---------------------------------------------------------------------------------------------
def test_url_round_trip() -> None:
    setup = urlstate.default_setup()
    setup.update(rules=["dni", "dni-b"], n="16", seeds="0-2", phase_race=True,
                 phases="apical=apical+jacobian:100,basal=basal+readout:100", units=[1, 5],
                 panels=["loss", "voltage"], log_y=False, present=True, focus="voltage")
    setup["rule_args"] = {"dni": {"feedback": "random", "label": "tanh"}}
    setup["task_args"] = {"t1": "3", "t2": "7"}
    query = urlstate.encode(setup, ["r1"])
    back, runs = urlstate.decode(query)
    assert runs == ["r1"]
    for key in ("rules", "n", "seeds", "phase_race", "phases", "units", "panels", "log_y",
                "present", "focus"):
        assert back[key] == setup[key], key
    assert urlstate.rule_args_of(back, "dni")["feedback"] == "random"
    assert urlstate.task_args_of(back)["t1"] == "3"
    assert "r.dni.feedback=random" in query and "r.dni.jacobian" not in query  # defaults omitted


def test_decode_keeps_bad_values_for_their_messages() -> None:
    setup, _ = urlstate.decode("?n=abc&t.t1=x&rules=dni-b&junk=1&panels=loss,nonsense")
    assert setup["n"] == "abc" and setup["panels"] == ["loss"]
    errors = urlstate.validate(setup)
    assert set(errors) == {"n", "task_args.t1"}
    assert "allowed" in errors["n"]


def test_validate_names_each_bad_field() -> None:
    setup = urlstate.default_setup()
    assert urlstate.validate(setup) == {}
    bad = {**setup, "alpha": "2", "seeds": "x", "phases": "apical:0", "rules": []}
    errors = urlstate.validate(bad)
    assert set(errors) == {"alpha", "seeds", "phases", "rules"}
    rule_bad = {**setup, "rule_args": {"dni-b": {"lr_apical": "-1"}}}
    assert set(urlstate.validate(rule_bad)) == {"rule_args.dni-b.lr_apical"}
    cross = {**setup, "task_args": {"t1": "9", "t2": "5"}}
    assert set(urlstate.validate(cross)) == {"task_args.t1"}


def test_variants_make_a_race() -> None:
    setup = {**urlstate.default_setup(), "rules": ["dni", "dni-b"]}
    configs = urlstate.validated_configs(setup)
    assert [c["config"]["rule"] for c in configs] == ["dni", "dni-b"]
    assert configs[0]["config"]["seeds"] == configs[1]["config"]["seeds"]
    phase_race = {**urlstate.default_setup(), "phase_race": True,
                  "phases": "apical=apical+jacobian:50,basal=basal+readout:50"}
    labels = [(v["label"], v["config"]["phases"]) for v in urlstate.variants(phase_race)]
    assert labels == [("phases", phase_race["phases"]), ("no phases", "all")]


def test_schedule_rows_round_trip() -> None:
    text = "listen=apical+jacobian:100,act=basal+readout:30"
    rows = urlstate.schedule_rows(text)
    assert rows[1] == {"name": "act", "steps": "30", "pops": ["basal", "readout"]}
    assert urlstate.rows_schedule(rows) == text
    assert urlstate.schedule_rows("nonsense") is None


def test_setup_from_a_runs_config() -> None:
    config = RunConfig.from_dict({"rule": "dni", "n": 16, "seeds": [1, 2],
                                  "rule_args": {"feedback": "random"}}).to_dict()
    setup = urlstate.setup_from_config(config)
    assert setup["rules"] == ["dni"] and setup["n"] == "16" and setup["seeds"] == "1,2"
    assert urlstate.validate(setup) == {}
    assert urlstate.rule_args_of(setup, "dni")["feedback"] == "random"


def test_every_preset_is_valid() -> None:
    items = presets.presets(max_runs=4)
    ids = [p["id"] for p in items]
    assert {"paper", "dni-to-dnib", "race", "phases"} <= set(ids)
    assert len(ids) == len(set(ids))
    for name in TASKS:
        assert f"task-{name}" in ids
    for p in items:
        errors = urlstate.validate(p["setup"])
        if p["id"].startswith("task-") and ":" in p["id"]:
            continue  # a task family that needs a name (e.g. neurogym:ENV)
        assert errors == {}, (p["id"], errors)
    race = presets.preset_by_id("race", max_runs=3)
    assert len(race["setup"]["rules"]) == 3 and race["setup"]["rules"][0] == "bptt"


def test_field_keys_cover_every_setting() -> None:
    keys = layout.field_keys()
    for name, cls in RULES.items():
        for s in cls.settings:
            assert f"rule_args.{name}.{s.name}" in keys
    values = callbacks.field_values(urlstate.default_setup(), keys)
    setup = callbacks.setup_from_fields(keys, values, {**urlstate.default_setup(), "rules": ["dni-b"]})
    assert urlstate.validate({**setup, "phases": "all"}) == {}


# ---------------------------------------------------------------------------------------------
# callback helpers
# ---------------------------------------------------------------------------------------------
def test_live_updates_change_rates_and_phases_only() -> None:
    setup = {**urlstate.default_setup(), "lr": "0.01", "phases": "a=basal:10,b=apical:10",
             "rule_args": {"dni-b": {"lr_apical": "0.1"}}}
    run_info = {"config": {"rule": "dni-b", "lr": 0.001, "rule_args": {"lr_apical": 0.05}},
                "learning_rates": {"basal": 0.001, "apical": 0.05}, "phases": "all"}
    params = callbacks.live_updates(setup, run_info, "")
    assert params == {"lr": 0.01, "apical": 0.1, "phases": "a=basal:10,b=apical:10"}
    assert "phases" not in callbacks.live_updates(setup, run_info, "no phases")
    same = {**urlstate.default_setup()}
    assert callbacks.live_updates(same, {"config": {"rule": "dni-b", "lr": 0.001},
                                         "learning_rates": {"basal": 0.001}, "phases": "all"},
                                  "") == {}


def _badges(rows: list) -> dict[str, str]:
    """Setting name -> its badge ("live") in a settings block's rows."""
    out = {}
    for row in rows:
        label = row.children[0]
        name, badge = label.children[0], label.children[1]
        out[name] = badge.children if badge is not None else ""
    return out


def test_kernls_kernel_rate_changes_live_from_the_rule_class() -> None:
    """The live settings come from the rule classes: KeRNL's lr_kernel (its "jacobian"
    population) is marked LIVE in the form and sent with the set action; its run reports
    that population before its first frame."""
    from app.dashboard import rulefacts

    assert rulefacts.live_form_settings("kernl") == {"lr_kernel": "jacobian"}
    assert rulefacts.live_form_settings("dni-b") == {"lr_apical": "apical",
                                                     "lr_jacobian": "jacobian"}
    assert rulefacts.live_form_settings("bptt") == {}
    kernl = _badges(layout.settings_block(RULES["kernl"].settings, "rule_args.kernl",
                                          rulefacts.live_form_settings("kernl")))
    assert kernl["lr_kernel"] == "live" and list(kernl.values()).count("live") == 1
    setup = {**urlstate.default_setup(), "rules": ["kernl"],
             "rule_args": {"kernl": {"lr_kernel": "2e-5"}}}
    run_info = {"config": {"rule": "kernl", "lr": 0.001, "rule_args": {"lr_kernel": 5e-6}},
                "learning_rates": {"basal": 0.001, "jacobian": 5e-6}, "phases": "all"}
    assert callbacks.live_updates(setup, run_info, "") == {"jacobian": 2e-5}
    assert figures.guess_populations("kernl", {}) == ["basal", "jacobian", "readout"]
    assert figures.guess_populations("dni-b", {"jacobian": "fixed"}) == ["basal", "apical",
                                                                         "readout"]


def test_a_new_rule_class_drives_the_live_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from app.dashboard import layout, rulefacts
    from simulator.rules.base import Rule
    from simulator.settings import Setting

    class Tuft(Rule):
        name = "tuft"
        summary = "a made-up rule with an apical tuft"
        settings = (Setting("lr_tuft", 0.01, "learning rate of the tuft", float, 0.0, 1.0),)
        own_populations: ClassVar[dict[str, str]] = {"apical": "lr_tuft"}

    monkeypatch.setitem(RULES, "tuft", Tuft)
    assert rulefacts.live_rule_settings("tuft") == {"lr_tuft": "apical"}
    assert figures.guess_populations("tuft", None) == ["basal", "apical", "readout"]
    assert _badges(layout.settings_block(Tuft.settings, "rule_args.tuft",
                                         rulefacts.live_form_settings("tuft"))) == {
        "lr_tuft": "live"}
    run_info = {"config": {"rule": "tuft", "lr": 0.001, "rule_args": {"lr_tuft": 0.01}},
                "learning_rates": {"basal": 0.001, "apical": 0.01}, "phases": "all"}
    setup = {**urlstate.default_setup(), "rules": ["tuft"],
             "rule_args": {"tuft": {"lr_tuft": "0.05"}}}
    assert callbacks.live_updates(setup, run_info, "") == {"apical": 0.05}


def test_restart_fields() -> None:
    setup = {**urlstate.default_setup(), "n": "16", "seeds": "0,1"}
    assert urlstate.restart_fields(setup, {"task": "add", "n": 32, "alpha": 1.0, "seeds": [0]}) == [
        "n", "seeds"]


def test_branch_changes_from_the_panel() -> None:
    config = RunConfig.from_dict({"rule": "dni"}).to_dict()
    setup = {**urlstate.default_setup(), "rules": ["dni-b"], "lr": "0.002"}
    changes = callbacks.setup_changes_for_branch(setup, config)
    assert changes["rule"] == "dni-b" and changes["lr"] == 0.002
    assert changes["rule_args"]["feedback"] == "random"


def test_table_rows_and_status() -> None:
    row = callbacks.table_row({**info(), "step": 5, "best_test_loss": [0.5, 0.7],
                               "last_test_loss": None, "phases": "all"}, [RID])
    assert row["best"] == 0.6 and row["last"] is None and row["live"] == 1
    assert callbacks.is_terminal("diverged at step 3 (seeds 0)")
    assert not callbacks.is_terminal("running")
    assert callbacks.field_for("task_args.t1", "add") == "task_args.add.t1"


def test_tick_payload_with_a_fake_backend() -> None:
    class Fake:
        def __init__(self) -> None:
            self.calls: list = []

        def frames(self, rid: str, after: int = -1) -> tuple[list, int]:
            self.calls.append((rid, after))
            return [frame(0), frame(10)], after + 2

    v = view(run_view())
    _, carry = figures.build_figures(v)
    fake = Fake()
    payload = live.tick_payload(fake, v, {RID: 4}, carry)  # type: ignore[arg-type]
    assert fake.calls == [(RID, 4)]
    assert payload["from"] == {RID: 4} and payload["to"] == {RID: 6}
    assert payload["epoch"] == 3 and payload["has_frames"] and not payload["rebuild"]
    assert payload["wall"] == 1010.0
    json.dumps(payload, allow_nan=False)


def test_frames_read_together_become_items_of_their_own() -> None:
    """A worker that fell behind sends two frames close together and one read finds both:
    each becomes an item of its own (the page draws them one after the other, not as one
    update); frames of different runs that came together share an item; a long read (a poll
    after a pause) is at most SPLIT_MAX items, its oldest frames together in the first."""
    mine = [frame(10 * i) for i in range(6)]  # seq 0..5, made at 1000, 1010, ... 1050
    other = [{**frame(10 * i), "wall": 1001.0 + 10 * i} for i in range(6)]  # 1 ms later

    def shape(groups: list) -> list:
        return [{rid: ([f["t0"] for f in frames], cursor)
                 for rid, (frames, cursor) in group.items()} for group in groups]

    read = {RID: (mine[1:3], 2), RID2: (other[1:2], 1)}
    assert shape(live.frame_groups(read, {RID: 0, RID2: 0})) == [
        {RID: ([10], 1), RID2: ([10], 1)}, {RID: ([20], 2), RID2: ([], 1)}]
    assert shape(live.frame_groups({RID: (mine, 5)}, {RID: -1})) == [
        {RID: ([0, 10, 20, 30], 3)}, {RID: ([40], 4)}, {RID: ([50], 5)}]
    assert live.SPLIT_MAX == 3
    assert shape(live.frame_groups({RID: ([], 7)}, {RID: 7})) == [{RID: ([], 7)}]


def test_the_channel_sends_a_frame_per_item_and_they_add_up_to_the_whole_read() -> None:
    """Through the hub: two frames read at one poll are two items with chained cursors, and
    the points they append, applied in turn as the page does, are those of one item made
    from both frames (the smoothing carried across)."""
    frames = [frame(10 * i, loss=0.6 - 0.01 * i) for i in range(8)]

    class Backend:
        made = 1  # frames the run has sent so far

        def frames(self, rid: str, after: int = -1) -> tuple[list, int]:
            got = [f for f in frames[:self.made] if f["seq"] > after]
            return got, got[-1]["seq"] if got else after

        def get(self, rid: str) -> dict:
            return {"id": rid, "status": "running"}

    v = view(run_view(), panels=["loss"])
    _, carry = figures.build_figures(v, recent={RID: frames[:1]})
    backend = Backend()
    backend.made = 3
    whole = live.tick_payload(backend, v, {RID: 0}, json.loads(json.dumps(carry)))
    backend.made = 1
    hub = live.LiveHub(backend, min_interval=0.0)
    key = hub.join(v, {RID: 0}, carry)
    backend.made = 3  # two new frames, read by one poll
    items = json.loads(hub.poll(key, -1, {RID: 0})[1])["items"]
    assert [(it["from"][RID], it["to"][RID]) for it in items] == [(0, 1), (1, 2)]
    assert [it["steps"][RID] for it in items] == [20, 30]
    assert [it["wall"] for it in items] == [1010.0, 1020.0]
    assert hub.counts["computed"] == 2 and hub.counts["reads"] == 1
    one, split = {}, {}
    op = whole["graphs"]["loss-graph"]["extend"]
    for j, i in enumerate(op["idx"]):
        _apply(one.setdefault(i, {"x": [], "y": []}), op, j)
    for it in items:
        op = it["graphs"]["loss-graph"]["extend"]
        for j, i in enumerate(op["idx"]):
            _apply(split.setdefault(i, {"x": [], "y": []}), op, j)
    assert split.keys() == one.keys() and one
    for i in one:
        assert split[i]["x"] == one[i]["x"], i
        assert split[i]["y"] == pytest.approx(one[i]["y"], rel=1e-4), i  # items: 5 digits


# ---------------------------------------------------------------------------------------------
# the loss plot on a projector: one binning, y-range from the smoothed curve, marks
# ---------------------------------------------------------------------------------------------
def _apply(trace: dict, op: dict, j: int) -> None:
    """What assets/plab.js does with one trace's extend: drop the provisional point it drew
    last time, append the new points, remember whether the last one is provisional."""
    if trace.get("_tail") and trace["x"]:
        trace["x"].pop()
        trace["y"].pop()
    trace["x"] += op["x"][j]
    trace["y"] += op["y"][j]
    trace["_tail"] = bool(op.get("tail") and op["tail"][j])


def _noisy_frames(count: int, k: int = 10) -> list[dict]:
    """Frames of k one-step bins with a loss that differs per frame (and a spike)."""
    frames = []
    for i in range(count):
        f = frame(i * k, k, loss=0.6 + 0.05 * math.sin(i))
        if i == 7:
            f["loss"]["mean"][3] = 40.0  # one raw spike
        frames.append(f)
    return frames


def test_the_raw_trace_built_by_ticks_equals_the_rebuilt_one() -> None:
    """The faint raw loss is binned once: the points that ticks draw one by one are the
    points a rebuild from the run's history draws (blocks of the run's stride), and the
    rebuilt figure's carry continues exactly as the live one."""
    from app.service.framebuffer import FrameBuffer

    v = view(run_view(steps=10_000))  # stride 6: blocks straddle the 10-step frames
    frames = _noisy_frames(40)
    figs, carry = figures.build_figures(v)
    raw, smooth = figs["loss-graph"]["data"][0], figs["loss-graph"]["data"][1]
    buffer = FrameBuffer(bins=4096)
    for f in frames[:30]:
        ops, carry = figures.tick_ops(v, {RID: [f]}, carry)
        for j, i in enumerate(ops["loss-graph"]["extend"]["idx"]):
            _apply(figs["loss-graph"]["data"][i], ops["loss-graph"]["extend"], j)
        buffer.push(json.loads(json.dumps(f)))
    hist = buffer.history(figures.HISTORY_POINTS)
    rebuilt, rcarry = figures.build_figures(v, {RID: hist})
    rraw, rsmooth = rebuilt["loss-graph"]["data"][0], rebuilt["loss-graph"]["data"][1]
    assert raw["_tail"]  # live: the open block is drawn provisionally; rebuilt: left out
    assert rraw["x"] == raw["x"][:-1] and len(rraw["x"]) == 300 // 6 - 1
    assert rraw["y"] == pytest.approx(raw["y"][:-1], rel=1e-12, abs=0)
    assert rsmooth["y"] == pytest.approx(smooth["y"][:-1], rel=1e-12, abs=0)
    for later in frames[30:]:  # both carries continue with the same points
        live_ops, carry = figures.tick_ops(v, {RID: [later]}, carry)
        re_ops, rcarry = figures.tick_ops(v, {RID: [later]}, rcarry)
        a, b = live_ops["loss-graph"]["extend"], re_ops["loss-graph"]["extend"]
        assert a["x"] == b["x"]
        assert [y for ys in a["y"] for y in ys] == pytest.approx(
            [y for ys in b["y"] for y in ys], rel=1e-12, abs=0)


def test_the_loss_range_follows_the_smoothed_curve_not_raw_spikes() -> None:
    """The y-range spans the smoothed curve, the held-out test losses and the reference
    levels: a raw spike does not squash the plot."""
    v = view(run_view(steps=10_000))
    frames = _noisy_frames(30)
    hist = {RID: {"step": [s for f in frames for s in f["loss"]["step"]],
                  "loss": {"mean": [m for f in frames for m in f["loss"]["mean"]]},
                  "test_loss": {"step": [200], "mean": [0.3]}}}  # a held-out loss counts
    carry: dict = {}
    fig = figures.loss_figure(v, hist, carry)
    lo, hi = fig["layout"]["yaxis"]["range"]
    assert fig["layout"]["yaxis"]["autorange"] is False
    smooth = [y for y in fig["data"][1]["y"] if y is not None]
    top = max(max(smooth), 0.66)  # the smoothed curve and the highest reference level
    bottom = min(min(smooth), 0.45, 0.3)  # ...the lowest one, and the test loss below both
    assert max(fig["data"][0]["y"]) > 5  # the raw trace has its spike...
    span = math.log10(top) - math.log10(bottom)
    padded = [math.log10(bottom) - figures.Y_PAD * span, math.log10(top) + figures.Y_PAD * span]
    assert [lo, hi] == figures.range_grid(*padded, span)
    step = span / 8  # the grid's step is at most this: the range is the padded one, widened
    assert padded[0] - step <= lo <= padded[0] and padded[1] <= hi <= padded[1] + step
    assert 10 ** hi < max(fig["data"][0]["y"]) / 4  # ...which does not set the range
    # live: a tick whose smoothed curve leaves the range sends the new range, a spike alone
    # (smoothed within the range) sends none
    ops, carry = figures.tick_ops(v, {RID: [frame(300, 10, loss=0.6)]}, carry)
    assert "axes" not in ops["loss-graph"]
    ops, carry = figures.tick_ops(v, {RID: [frame(310, 600, loss=0.1)]}, carry)
    new_lo = ops["loss-graph"]["axes"]["yaxis"]["range"][0]
    assert new_lo < lo and 10 ** new_lo < carry[RID]["loss"]["lo"]


def test_the_loss_range_moves_in_grid_steps_so_a_creeping_curve_rarely_moves_it() -> None:
    """The range widens outward to multiples of a 1-2-5 step of about span / 8, and a live
    tick sends it only when it moved to another step: a curve that creeps down by a little
    at every frame moves the axis now and then, not at every frame (a frame that keeps the
    ranges redraws the lines alone in the browser)."""
    # span 0.19 decades: step 0.02 (the largest of 0.01, 0.02, 0.05 <= 0.02375)
    assert figures.range_grid(-0.3668, -0.1349, 0.19) == [-0.38, -0.12]
    assert figures.range_grid(-0.38, -0.12, 0.19) == [-0.38, -0.12]  # on the grid: kept
    assert figures.range_grid(0.5, 9.5, 8.0) == [0.0, 10.0]  # span 8: step 1
    assert figures.range_grid(-1.23e-4, 3.1e-3, 3.2e-3) == [-0.0002, 0.0032]  # step 2e-4
    v = view(run_view(steps=100_000))
    carry: dict = {}
    sent, ticks = [], 200
    for i in range(ticks):  # a smoothed loss that falls by 0.2% per frame, from 0.6
        ops, carry = figures.tick_ops(v, {RID: [frame(10 * i, 10, loss=0.6 * 0.998 ** i)]},
                                      carry)
        axes = ops["loss-graph"].get("axes")
        if axes:
            rng = axes["yaxis"]["range"]
            assert rng == figures.y_range(v, carry)  # the range the whole figure would have
            assert not sent or rng != sent[-1]  # only when it moved
            sent.append(rng)
    assert 1 <= len(sent) <= ticks // 10  # the loss fell to 0.40: a few steps, not 200
    assert sent[-1][0] <= math.log10(carry[RID]["loss"]["lo"])


def test_a_setting_change_is_a_labelled_vertical_line_on_the_loss_plot() -> None:
    v = view(run_view(), run_view(RID2, "dni", "#E69F00"))
    events = [{"step": 1200, "action": "set", "lr": 0.003, "label": "lr 0.003"},
              {"step": 3000, "action": "set", "apical": 0.02, "phases": "all",
               "label": "apical 0.02 · phases"}]
    hist = {RID: {"step": [9], "loss": {"mean": [0.7]}, "events": events},
            RID2: {"step": [9], "loss": {"mean": [0.7]}, "events": events[:1]}}  # a race: once
    fig = figures.loss_figure(v, hist)
    lines = [s for s in fig["layout"]["shapes"] if s.get("name") == "event"]
    labels = [a for a in fig["layout"]["annotations"] if a.get("name") == "event"]
    assert [(s["x0"], s["x1"], s["yref"]) for s in lines] == [(1200, 1200, "paper"),
                                                              (3000, 3000, "paper")]
    assert [(a["x"], a["text"]) for a in labels] == [(1200, "lr 0.003"),
                                                     (3000, "apical 0.02 · phases")]
    # a frame that carries a change asks the live channel to rebuild (the mark comes from
    # the history, where the run recorded it)
    f = frame(10)
    assert not figures.needs_rebuild(v, {RID: [f]})
    assert figures.needs_rebuild(v, {RID: [{**f, "events_changed": True}]})


def test_a_mid_run_learning_rate_change_is_recorded_and_marked(tmp_path) -> None:
    """A real run: the set action's change is recorded in the run's history (the worker
    records it in the history at once and flags its next frame), and the loss plot marks it."""
    from helpers import wait_for

    from app.service import BackendSettings, LocalBackend

    backend = LocalBackend(BackendSettings(data_dir=tmp_path / "data", max_runs=1,
                                           frame_rate=20.0, checkpoint_every=10**6))
    try:
        rid = backend.create({"task": "add", "rule": "dni-b", "n": 8, "steps": 10**6})
        wait_for(lambda: backend.get(rid)["step"] > 100, what="progress")
        step = backend.control(rid, "set", lr=0.003, apical=0.02)["step"]
        wait_for(lambda: backend.history(rid)["events"], what="the change in the history")
        events = backend.history(rid)["events"]
        assert len(events) == 1 and step - 5 <= events[0]["step"] <= step + 5
        assert events[0]["label"] == "lr 0.003 · lr_apical 0.02"  # named as in the form
        assert (events[0]["lr"], events[0]["apical"]) == (0.003, 0.02)  # the values, for export
        info = backend.get(rid)
        v = view(figures.make_run_view(info, "#0072B2"))
        fig = figures.loss_figure(v, {rid: backend.history(rid)})
        marks = [a["text"] for a in fig["layout"]["annotations"] if a.get("name") == "event"]
        assert marks == ["lr 0.003 · lr_apical 0.02"]
    finally:
        backend.shutdown()
