"""The circuit panel (app/dashboard/panels/circuit.py): one unit drawn as the paper does, its
synapse arrows and the V/U strips of every unit, from frames a real ``Run`` made
(simulator.telemetry.make_frame); and, in real Chromium against a real server, the panel
appearing and updating live.
"""

from __future__ import annotations

import copy
import itertools
import math
import time
from typing import Any

import pytest

from app import live
from app.dashboard import figures
from app.dashboard.panels import circuit
from simulator import Run, RunConfig
from simulator.telemetry import SNAPSHOT_UNITS, make_frame

RID = "c1rc0001"
#: apical learning (apical A and J̃) for 20 steps, then basal learning (W and readout) for 20
PHASED = "listen=apical+jacobian:20,act=basal+readout:20"


# ---------------------------------------------------------------------------------------------
# helpers: frames from a real run
# ---------------------------------------------------------------------------------------------
def run_frames(k: int = 10, chunks: int = 3, **config: Any) -> tuple[Run, list[dict[str, Any]]]:
    """A real run's first ``chunks`` frames of ``k`` steps each (traces recorded, as live)."""
    run, frames, _tel = run_frames_tel(k, chunks, **config)
    return run, frames


def run_frames_tel(k: int = 10, chunks: int = 3, **config: Any
                   ) -> tuple[Run, list[dict[str, Any]], Any]:
    """run_frames and the last chunk's telemetry."""
    run = Run(RunConfig(**{"n": 8, "steps": 10_000, **config}))
    frames, tel = [], None
    for seq in range(chunks):
        tel = run.advance(k, record="traces")
        frame = make_frame(tel, run)
        frame["seq"] = seq
        frames.append(frame)
    return run, frames, tel


def view_of(run: Run, frames: list[dict[str, Any]], panels: tuple[str, ...] = ("circuit",),
            units: tuple[int, ...] = (0,)) -> figures.View:
    info = {"id": RID, "status": "running", "target_steps": run.config.steps,
            "config": {"rule": run.config.rule, "n": run.net.n, "steps": run.config.steps,
                       "seeds": list(run.seeds)}}
    rv = figures.make_run_view(info, "#0072B2", pops=list(frames[-1]["weight_change"]))
    return figures.make_view([rv], epoch=1, panels=panels, units=units)


def trace(fig: dict[str, Any], name: str) -> dict[str, Any]:
    return next(t for t in fig["data"] if t.get("name") == name)


def note(fig: dict[str, Any], name: str) -> dict[str, Any]:
    return next(a for a in fig["layout"]["annotations"] if a.get("name") == name)


def label(fig: dict[str, Any], arrow: str) -> str:
    """An arrow's label: the text at its label end (the readout's head, the others' tail)."""
    return "".join(trace(fig, f"arrow:{arrow}")["text"])


# ---------------------------------------------------------------------------------------------
# the frame's snapshot (simulator/telemetry.py)
# ---------------------------------------------------------------------------------------------
def test_a_frame_carries_every_units_v_and_u_at_its_last_step() -> None:
    run, frames, tel = run_frames_tel(n=12)
    snap = frames[-1]["snapshot"]
    assert snap["n"] == 12 and snap["step"] == frames[-1]["t1"] - 1 == run.t - 1
    for comp in ("V", "U"):
        want = getattr(tel, comp)[-1, 0].double().tolist()
        assert len(snap[comp]) == 12
        # 4 significant digits relative to the largest magnitude of the snapshot
        tol = 10 ** (math.floor(math.log10(max(abs(v) for v in want))) - 3)
        assert max(abs(a - b) for a, b in zip(snap[comp], want, strict=True)) <= tol
    basal = frames[-1]["weight_change"]["basal"]
    dw = tel.weight_change["basal"][0].double()
    # float32 norms (the engine's dtype) against float64 ones of the same blocks
    assert basal["parts"]["recurrent"] == pytest.approx(float(dw[:, :12].norm()), rel=1e-6)
    assert basal["parts"]["input"] == pytest.approx(float(dw[:, 12:14].norm()), rel=1e-6)


def test_the_snapshot_is_capped_for_a_large_network_and_the_panel_says_so() -> None:
    run, frames = run_frames(k=1, chunks=1, n=SNAPSHOT_UNITS + 44)
    snap = frames[-1]["snapshot"]
    assert snap["n"] == SNAPSHOT_UNITS + 44
    assert len(snap["V"]) == len(snap["U"]) == SNAPSHOT_UNITS
    fig = circuit.circuit_figure(view_of(run, frames), {RID: frames})
    assert note(fig, "cap")["text"] == f"first {SNAPSHOT_UNITS} of {SNAPSHOT_UNITS + 44} units"
    assert len(fig["data"][0]["z"]) == SNAPSHOT_UNITS


def test_frames_name_the_populations_plastic_in_their_phase() -> None:
    _run, frames = run_frames(k=10, chunks=4, phases=PHASED)
    assert [f["plastic"] for f in frames] == [["apical", "jacobian"]] * 2 + [
        ["basal", "readout"]] * 2


# ---------------------------------------------------------------------------------------------
# pure helpers
# ---------------------------------------------------------------------------------------------
def test_the_diverging_colours_are_the_colour_bars() -> None:
    assert circuit.diverging_color(2.0, 2.0) == "rgb(178,24,43)"
    assert circuit.diverging_color(9.0, 2.0) == "rgb(178,24,43)"  # clipped at the end colour
    assert circuit.diverging_color(0.0, 2.0) == "rgb(247,247,247)"
    assert circuit.diverging_color(-2.0, 2.0) == "rgb(33,102,172)"
    # a quarter of the way: the scale's own stop, as Plotly interpolates it
    assert circuit.diverging_color(1.0, 2.0) == "rgb(239,138,98)"
    assert circuit.diverging_color(0.5, 2.0) == "rgb(243,193,173)"  # half-way 247 -> 239 ...
    assert circuit.diverging_color(None, 2.0) == circuit.NEUTRAL
    assert circuit.diverging_color(float("nan"), 2.0) == circuit.NEUTRAL


def test_colour_ranges_are_readable_steps_not_set_by_outliers() -> None:
    assert circuit.nice_range([0.3, -0.7]) == 1.0
    assert circuit.nice_range([0.012]) == 0.02
    assert circuit.nice_range([0.0]) == 1e-3
    assert circuit.nice_range([-3.1, None, float("nan")]) == 5.0
    assert circuit.nice_range([0.5] * 99 + [100.0]) == 0.5  # the 95th percentile


def test_arrow_widths_follow_the_update_sizes_on_a_log_scale() -> None:
    w = circuit.arrow_widths({"a": 1e-2, "b": 1e-4, "c": 1e-7, "d": 0.0, "e": None})
    span = circuit.MAX_WIDTH - circuit.MIN_WIDTH
    assert w["a"] == circuit.MAX_WIDTH
    assert w["b"] == pytest.approx(circuit.MIN_WIDTH + span * (1 - 2 / circuit.DECADES), abs=0.01)
    assert w["c"] == w["d"] == w["e"] == circuit.MIN_WIDTH  # 5 decades below, none, unknown
    assert circuit.arrow_widths({"a": 0.0}) == {"a": circuit.MIN_WIDTH}


# ---------------------------------------------------------------------------------------------
# the figure
# ---------------------------------------------------------------------------------------------
def test_the_neuron_is_coloured_by_the_units_v_and_u() -> None:
    run, frames = run_frames(n=8)
    view = view_of(run, frames, units=(3,))
    carry: dict[str, Any] = {}
    fig = circuit.circuit_figure(view, {RID: frames}, carry)
    assert [t["name"] for t in fig["data"][2:]] == list(circuit.NEURON_TRACES)
    snap = frames[-1]["snapshot"]
    ranges = carry["circuit"]
    assert ranges["V"] == circuit.nice_range([v for f in frames for v in f["snapshot"]["V"]])
    v3, u3 = snap["V"][3], snap["U"][3]
    assert trace(fig, "soma")["fillcolor"] == circuit.diverging_color(v3, ranges["V"])
    assert trace(fig, "basal")["line"]["color"] == circuit.diverging_color(v3, ranges["V"])
    assert trace(fig, "apical")["line"]["color"] == circuit.diverging_color(u3, ranges["U"])
    # three basal dendrites and the apical trunk with three tuft branches: separate lines
    assert trace(fig, "basal")["x"].count(None) == 2
    assert trace(fig, "apical")["x"].count(None) == 3
    assert trace(fig, "values")["text"] == [f"unit 3: V = {v3:+.3g}, U = {u3:+.3g}"]
    # the strips: every unit (rows) by frame (columns), on the ranges the neuron uses
    hv, hu = fig["data"][:2]
    assert hv["x"] == [f["snapshot"]["step"] for f in frames]
    assert [row[-1] for row in hv["z"]] == snap["V"]
    assert [row[-1] for row in hu["z"]] == snap["U"]
    assert (hv["zmin"], hv["zmax"], hu["zmax"]) == (-ranges["V"], ranges["V"], ranges["U"])
    assert [c for _f, c in hv["colorscale"]] == [
        "rgb({},{},{})".format(*c) for _f, c in circuit.COLORSCALE]


def test_the_drawing_is_traces_so_a_redraw_rebuilds_no_shape_annotation_or_colour_bar() -> None:
    """Plotly redraws every layout shape, annotation and colour bar at each redraw (about
    25 ms of the panel's 50 ms at presenter size, ten times a second); the neuron is traces,
    the colour bars HTML (meta.scale; Plotly's in exports), and the annotations left are the
    ones a frame never changes."""
    run, frames = run_frames(n=8)
    fig = circuit.circuit_figure(view_of(run, frames), {RID: frames})
    assert fig["layout"]["shapes"] == []
    assert [a["name"] for a in fig["layout"]["annotations"]] == ["circuit-run"]
    for strip in fig["data"][:2]:
        assert strip["showscale"] is False and strip["meta"] == {"scale": True}
        assert strip["colorbar"]["title"]["text"] in ("basal V", "apical U")  # for exports
    # room for the HTML colour bars: Plotly no longer widens the margin for its own
    assert fig["layout"]["margin"]["r"] >= 60


def test_the_strips_draw_one_column_per_frame_however_uneven_the_steps() -> None:
    """At max speed the steps between frames vary; on a linear step axis Plotly then draws
    each heatmap pixel by pixel (20 ms a redraw) instead of as one scaled image. The step axis
    is categorical (one column per frame), labelled at round steps."""
    run, frames = run_frames(n=8, chunks=6)
    uneven = [{**f, "snapshot": {**f["snapshot"], "step": step}}
              for f, step in zip(frames, (9, 30, 44, 71, 102, 125), strict=True)]
    fig = circuit.circuit_figure(view_of(run, uneven), {RID: uneven})
    for ax in ("xaxis2", "xaxis3"):
        axis = fig["layout"][ax]
        assert axis["type"] == "category" and axis["tickmode"] == "array"
        # steps 9..125: a tick every 50 steps, at the column nearest each multiple
        assert axis["tickvals"] == [44, 102] and axis["ticktext"] == ["50", "100"]
    assert circuit.step_ticks([1043, 2011, 2950, 4102, 5300, 6010, 7100, 8020, 9100, 10300]) == {
        "tickmode": "array", "tickvals": [2011, 4102, 6010, 8020, 10300],
        "ticktext": ["2k", "4k", "6k", "8k", "10k"]}
    assert circuit.step_ticks([]) == {"tickmode": "array", "tickvals": [], "ticktext": []}


def test_a_positive_and_a_negative_voltage_get_opposite_colours() -> None:
    run, frames = run_frames(n=8)
    snap = frames[-1]["snapshot"]
    pos = max(range(8), key=lambda u: snap["V"][u])
    neg = min(range(8), key=lambda u: snap["V"][u])
    assert snap["V"][pos] > 0 > snap["V"][neg]

    def rgb(unit: int) -> list[int]:
        fig = circuit.circuit_figure(view_of(run, frames, units=(unit,)), {RID: frames})
        return [int(c) for c in trace(fig, "soma")["fillcolor"][4:-1].split(",")]

    r, _g, b = rgb(pos)
    assert r > b  # red side
    r, _g, b = rgb(neg)
    assert b > r  # blue side


def test_arrows_glow_in_their_phase_and_dim_when_frozen() -> None:
    run, frames = run_frames(k=10, chunks=4, phases=PHASED)
    view = view_of(run, frames)
    listen = circuit.circuit_figure(view, {RID: frames[:2]})
    act = circuit.circuit_figure(view, {RID: frames})
    for fig, on in ((listen, {"apical", "jacobian"}), (act, {"input", "recurrent", "readout"})):
        for arrow, (pop, *_rest) in circuit.ARROWS.items():
            a = trace(fig, f"arrow:{arrow}")
            # the head is an arrow marker at the line's end, in the line's colour and growing
            # with its width
            assert a["marker"]["size"] == [0, circuit.head_size(a["line"]["width"])]
            assert a["marker"]["color"] == a["line"]["color"] == a["textfont"]["color"]
            if arrow in on:
                assert (a["line"]["color"], a["opacity"]) == (figures.POP_COLORS[pop], 1.0), arrow
                assert "frozen" not in label(fig, arrow)
                assert a["line"]["width"] > circuit.MIN_WIDTH  # it was updated in this frame
            else:
                assert (a["line"]["color"], a["opacity"]) == (circuit.DIM_COLOR,
                                                              circuit.DIM_OPACITY)
                assert label(fig, arrow).endswith("(frozen)")
                assert a["line"]["width"] == circuit.MIN_WIDTH  # frozen: no update at all
    assert trace(act, "phase")["text"] == ["phase act: basal, readout plastic"]
    # the readout points at its label (the output), the others start at theirs
    assert trace(act, "arrow:readout")["text"][0] == "" != trace(act, "arrow:readout")["text"][1]
    assert trace(act, "arrow:apical")["text"][1] == "" != trace(act, "arrow:apical")["text"][0]


def test_arrow_widths_follow_the_frames_update_norms() -> None:
    run, frames = run_frames(k=10, chunks=2)
    fig = circuit.circuit_figure(view_of(run, frames), {RID: frames})
    sizes = circuit.update_sizes(frames[-1])
    changes = frames[-1]["weight_change"]
    assert sizes["recurrent"] == changes["basal"]["parts"]["recurrent"]
    assert sizes["apical"] == changes["apical"]["norm"]
    widths = {k: trace(fig, f"arrow:{k}")["line"]["width"] for k in circuit.ARROWS}
    assert widths == circuit.arrow_widths(sizes)
    order = sorted(sizes, key=lambda k: sizes[k])
    assert [widths[k] for k in order] == sorted(widths.values())  # bigger update, thicker
    assert max(widths.values()) == circuit.MAX_WIDTH


def test_a_rule_without_an_apical_compartment_shows_those_arrows_as_absent() -> None:
    run, frames = run_frames(rule="bptt")
    fig = circuit.circuit_figure(view_of(run, frames), {RID: frames})
    for arrow in ("apical", "jacobian"):
        assert trace(fig, f"arrow:{arrow}")["opacity"] == circuit.ABSENT_OPACITY
        assert label(fig, arrow).endswith("(none)")
    assert trace(fig, "arrow:recurrent")["opacity"] == 1.0


def test_no_run_yet_is_an_empty_panel_with_a_note() -> None:
    fig = circuit.circuit_figure(figures.make_view([], epoch=0, panels=("circuit",)))
    assert [a["text"] for a in fig["layout"]["annotations"]] == [
        "the circuit appears when a run steps"]
    # the drawing's traces are there (the panel's slots), empty
    assert [t["name"] for t in fig["data"][2:]] == list(circuit.NEURON_TRACES)
    assert all(t["x"] == [] for t in fig["data"][2:])


# ---------------------------------------------------------------------------------------------
# live updates
# ---------------------------------------------------------------------------------------------
def test_ticks_append_one_column_per_new_frame_and_patch_the_drawing() -> None:
    run, frames = run_frames(k=10, chunks=4, phases=PHASED)
    view = view_of(run, frames, units=(2,))
    carry: dict[str, Any] = {}
    circuit.circuit_figure(view, {RID: frames[:2]}, carry)
    ops = circuit.circuit_ops(view, {RID: frames[1:]}, carry)[circuit.GRAPH]  # one seen before
    heat_v, heat_u = ops["heat"]
    assert heat_v["x"] == [frames[2]["snapshot"]["step"], frames[3]["snapshot"]["step"]]
    assert [row for row in heat_v["z"]] == [
        [frames[2]["snapshot"]["V"][u], frames[3]["snapshot"]["V"][u]] for u in range(8)]
    assert [row[-1] for row in heat_u["z"]] == frames[3]["snapshot"]["U"]
    assert heat_v["max"] == circuit.HISTORY and heat_v["zmax"] == carry["circuit"]["V"]
    patch = ops["patch"]["traces"]
    # the patch is what the whole figure of the same frames, on the same colour ranges, draws
    # (one source)
    whole = circuit.circuit_figure(view, {RID: frames}, copy.deepcopy(carry))
    for name, props in patch.items():
        got = trace(whole, name)
        for key, value in props.items():
            if isinstance(value, dict):
                assert {k: got[key][k] for k in value} == value, (name, key)
            else:
                assert got[key] == value, (name, key)
    assert set(patch) == {"soma", "basal", "apical", "values", "phase",
                          *(f"arrow:{a}" for a in circuit.ARROWS)}
    assert patch["arrow:apical"]["opacity"] == circuit.DIM_OPACITY  # act phase
    # the step axes' ticks over the columns the client now holds: the whole figure's
    steps = [f["snapshot"]["step"] for f in frames]
    assert ops["axes"]["xaxis3"] == ops["axes"]["xaxis2"] == circuit.step_ticks(steps)
    assert whole["layout"]["xaxis3"]["tickvals"] == ops["axes"]["xaxis3"]["tickvals"]
    assert circuit.circuit_ops(view, {RID: frames[3:]}, carry) == {}  # nothing new
    hidden = view_of(run, frames, panels=("loss",))
    assert circuit.circuit_ops(hidden, {RID: frames}, {}) == {}


class _Frames:
    """The one backend call the live path makes, over frames a real run made."""

    def __init__(self, items: list[dict[str, Any]]) -> None:
        self.items = items

    def frames(self, rid: str, after: int = -1) -> tuple[list[dict[str, Any]], int]:
        got = [f for f in self.items if f["seq"] > after]
        return got, got[-1]["seq"] if got else after


def test_the_live_channel_carries_the_circuits_ops() -> None:
    run, frames = run_frames(k=10, chunks=3)
    view = view_of(run, frames, panels=("loss", "circuit"))
    backend = _Frames(frames)
    carry: dict[str, Any] = {}
    circuit.circuit_figure(view, {RID: frames[:1]}, carry)
    payload = live.tick_payload(backend, view, {RID: 0}, carry)
    ops = payload["graphs"][circuit.GRAPH]
    assert ops["heat"][0]["x"] == [f["snapshot"]["step"] for f in frames[1:]]
    assert "loss-graph" in payload["graphs"]


# ---------------------------------------------------------------------------------------------
# in real Chromium, against a real server (fixtures of test_dashboard_browser)
# ---------------------------------------------------------------------------------------------
try:
    from test_dashboard_browser import _open, browser, page, server  # noqa: F401 - fixtures
except pytest.skip.Exception:  # no Chromium or no Playwright: the browser test is skipped
    _open = None

#: what the live circuit shows: columns, rows, the apical arrow, the neuron and its numbers
CIRCUIT_JS = """
() => {
  const gd = document.querySelector('#circuit-graph .js-plotly-plot');
  if (!gd || !gd.data || !gd.data.length) return null;
  const tr = (n) => gd.data.find((t) => t.name === n) || {};
  const durs = (gid) => window.plab.paintLog.filter((p) => p.gid === gid).map((p) => p.dur);
  const scales = [...gd.querySelectorAll('.plab-scale')];
  return {cols: (gd.data[0].x || []).length, last: (gd.data[0].x || []).slice(-1)[0],
          x: gd.data[0].x, lossDurs: durs('loss-graph'),
          rows: (gd.data[0].z || []).length, zmaxV: gd.data[0].zmax,
          apical: tr('arrow:apical').opacity, basal: tr('arrow:recurrent').opacity,
          values: (tr('values').text || [])[0], soma: tr('soma').fillcolor,
          // one scaled image per strip (Plotly's fast path), not pixel by pixel
          linear: (gd.calcdata || []).slice(0, 2).map((cd) => cd[0].trace._islinear),
          plotlyBars: gd.querySelectorAll('.colorbar').length,
          scales: scales.map((b) => [b.querySelector('.plab-scale-title').textContent,
                                     [...b.querySelectorAll('.plab-scale-ticks span')].map(
                                         (t) => t.textContent)]),
          ticks: gd.layout.xaxis3.ticktext,
          paints: window.plab.paintLog.filter((p) => p.gid === 'circuit-graph').length,
          durs: window.plab.paintLog.filter((p) => p.gid === 'circuit-graph').map((p) => p.dur)};
}
"""


@pytest.mark.browser
def test_the_circuit_panel_appears_and_updates_live(page: Any, server: str) -> None:
    if _open is None:
        pytest.skip("Chromium / Playwright not available")
    _open(page, server, "?phases=apical-then-basal&panels=loss,circuit&steps=100000&n=32")
    assert page.is_visible("#panel-circuit")
    page.click("#btn-play")
    state = lambda: page.evaluate(CIRCUIT_JS)  # noqa: E731
    first = wait_for_state(page, state, lambda s: s and s["cols"] >= 6, "live columns")
    assert first["rows"] == 32
    # the arrows take turns: apical A glows in the apical phase and is dimmed in the basal
    # one (100 steps each, 1 s at 100 steps/s), the recurrent arrow the other way round
    seen = set()

    def both_phases(s: dict | None) -> bool:
        if s:
            seen.add((s["apical"], s["basal"]))
        return {(1, circuit.DIM_OPACITY), (circuit.DIM_OPACITY, 1)} <= seen

    wait_for_state(page, state, both_phases, "both phases drawn")
    now = state()
    assert now["linear"] == [True, True] and now["plotlyBars"] == 0, now
    # the colour bars in HTML: titled, ticks from -zmax to zmax through 0 (minus signs as
    # Plotly writes them)
    zmax = circuit.nice_range([now["zmaxV"]])
    assert [title for title, _ticks in now["scales"]] == ["basal V", "apical U"]
    ticks = now["scales"][0][1]
    assert ticks[len(ticks) // 2] == "0" and ticks[-1] == f"{zmax:g}", now["scales"]
    assert ticks[0] == f"\u2212{zmax:g}", now["scales"]
    assert now["ticks"] and all(t.rstrip("k").replace(".", "").isdigit() for t in now["ticks"])
    # the neuron's colour is the unit's V on the strip's colour scale (3 digits shown)
    now = state()
    v = float(now["values"].split("V = ")[1].split(",")[0])
    want = [int(c) for c in circuit.diverging_color(v, now["zmaxV"])[4:-1].split(",")]
    got = [int(c) for c in now["soma"][4:-1].split(",")]
    assert max(abs(a - b) for a, b in zip(want, got, strict=True)) <= 3, (now, want)
    # updates keep coming: measured over 3 s of frames (10 frames/s at 100 steps/s)
    t0, p0 = time.monotonic(), now["paints"]
    later = wait_for_state(page, state, lambda s: s and time.monotonic() - t0 >= 3.0, "3 s")
    rate = (later["paints"] - p0) / (time.monotonic() - t0)
    median = sorted(later["durs"])[len(later["durs"]) // 2]
    loss = sorted(later["lossDurs"])[len(later["lossDurs"]) // 2]
    print(f"circuit panel: {rate:.1f} updates/s, redraw median {median:.1f} ms "
          f"(loss panel {loss:.1f} ms), {later['cols']} columns")
    assert later["last"] > now["last"] and rate > 0
    # every frame became a column, in order, none twice (paced: 10 steps a frame), however
    # many frames one redraw took in
    steps = [x for x in later["x"] if x > first["last"]]
    assert steps and {b - a for a, b in itertools.pairwise(steps)} == {10}, steps
    # a redraw of the circuit costs about what the loss panel's does (both measured in this
    # page on this machine, whatever its load): it is not what holds the rate down
    assert median <= 3 * loss + 5, (later["durs"], later["lossDurs"])
    assert not page.errors, page.errors


def wait_for_state(page: Any, read: Any, cond: Any, what: str, timeout: float = 60.0) -> Any:
    """Poll the page through Playwright (its events keep flowing) until ``cond(read())``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = read()
        if cond(value):
            return value
        page.wait_for_timeout(100)
    raise AssertionError(f"timed out waiting for {what}: {read()}")
