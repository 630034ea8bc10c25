"""The circuit panel: the paper's picture of one unit, drawn live (docs/model.md section 2).

One figure (plain JSON, like the other panels):

- left: one unit as a pyramidal neuron, a soma with basal dendrites (coloured by its basal
  voltage V) and an apical trunk and tuft (coloured by its apical voltage U), on the same
  diverging colour scales as the strips on the right (their colour bars are the legend);
- five labelled arrows, one per synaptic sub-population: input W_in and recurrent W_rec onto
  the basal dendrites (together the basal population W), apical A onto the tuft, the learned
  Jacobian J̃ (the credit passed back one step) onto the tuft, and the readout from the soma.
  An arrow glows (its population's colour, full opacity) when its population is plastic in the
  current phase and is dimmed (grey, faint, "frozen") otherwise; its thickness follows the
  size of the population's last update ‖ΔW‖ (log-scaled against the largest arrow's, over
  DECADES decades); a population the rule does not have is drawn faintest, "(none)";
- right: two heatmaps, every unit (rows, the first telemetry.SNAPSHOT_UNITS) by recent frame
  (columns, the last HISTORY): V on top, U below, so a class sees the whole network.

The drawing is made of scatter traces (lines, a filled soma, lines ending in an arrow
marker, text), not layout shapes and annotations: Plotly redraws every shape, annotation and
colour bar at each redraw (about 25 ms of the panel's 50 ms at presenter size), traces cost
a fraction of that. The colour bars are drawn in HTML by assets/plab.js (``meta.scale``) and
by Plotly in exports, like the legends. The strips' step axis is categorical, one column per
frame: with the uneven step gaps of max speed, Plotly would draw a heatmap pixel by pixel
instead of as one scaled image (20 ms a redraw).

Live (``circuit_ops``): per frame one new column per heatmap (the client's "heat" op) and a
"patch" of the drawing's traces by name: the compartments' colours, the arrows' width,
colour, opacity and label, the unit's values and the phase line.
The panel shows the run the weight-change picker chose (focus_run), the first chosen
unit, the seed the voltage panel shows.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

from app.dashboard.panels import common
from app.dashboard.panels.common import _Extend
from app.dashboard.panels.weights import focus_run
from simulator.telemetry import SNAPSHOT_UNITS

GRAPH = "circuit-graph"
#: frames (heatmap columns) kept in the strips: about 10 s at 10 frames/s
HISTORY = 100
#: arrow widths (px): no update at all .. the largest update of the frame
MIN_WIDTH, MAX_WIDTH = 1.0, 9.0
#: an update this many decades below the frame's largest gets the thinnest arrow
DECADES = 4.0
#: the colour ranges cover this quantile of |V| and |U| (outliers take the end colour)
QUANTILE = 0.95
DIM_COLOR = "#a3a8b0"
DIM_OPACITY, ABSENT_OPACITY = 0.35, 0.15
NEUTRAL = "#d9dce1"  # the neuron before any voltage arrived
#: the diverging scale of V and U (blue: negative, white: 0, red: positive); the heatmaps use
#: it as given and the neuron's shapes interpolate it the way Plotly does (linear in RGB)
COLORSCALE = ((0.0, (33, 102, 172)), (0.25, (103, 169, 207)), (0.5, (247, 247, 247)),
              (0.75, (239, 138, 98)), (1.0, (178, 24, 43)))

#: arrow -> (sub-population, label, synapse end (x, y), label end (x, y)) on the drawing's
#: 0..10 x 0..12 axes; the readout's head is at its label (the output), the others' at the cell
ARROWS: dict[str, tuple[str, str, tuple[float, float], tuple[float, float]]] = {
    "input": ("basal", "input W<sub>in</sub>", (3.3, 2.15), (1.4, 0.45)),
    "recurrent": ("basal", "recurrent W<sub>rec</sub>", (4.3, 3.9), (1.9, 6.3)),
    "apical": ("apical", "apical A", (3.9, 9.9), (1.9, 11.4)),
    "jacobian": ("jacobian", "J̃ (credit from t+1)", (6.1, 9.9), (8.1, 11.4)),
    "readout": ("readout", "readout W<sub>out</sub>", (5.6, 4.1), (8.4, 5.0)),
}
#: where each arrow's label sits around its label end (Plotly textposition), off its line
LABEL_POSITION = {"input": "bottom center", "recurrent": "top center", "apical": "top center",
                  "jacobian": "top center", "readout": "top center"}
Point = tuple[float, float]
#: the neuron: the soma (a triangle) and each compartment's dendrites (polylines), with the
#: voltage that colours them
SOMA: tuple[Point, ...] = ((4.1, 3.5), (5.9, 3.5), (5.0, 5.2), (4.1, 3.5))
DENDRITES: dict[str, tuple[str, tuple[tuple[Point, ...], ...]]] = {
    "basal": ("V", (((4.45, 3.6), (3.3, 2.2), (2.6, 1.7)),
                    ((5.0, 3.6), (5.0, 2.0), (4.6, 1.3)),
                    ((5.55, 3.6), (6.7, 2.2), (7.4, 1.8)))),
    "apical": ("U", (((5.0, 5.1), (5.0, 8.4)),
                     ((5.0, 8.4), (3.9, 9.8), (3.4, 10.4)),
                     ((5.0, 8.4), (5.0, 10.6)),
                     ((5.0, 8.4), (6.1, 9.8), (6.6, 10.4)))),
}
#: the drawing's traces after the two strips, in order (the panel's slots)
NEURON_TRACES = ("outline", *DENDRITES, "soma", *(f"arrow:{a}" for a in ARROWS), "values",
                 "phase")
X_DOMAIN = [0.0, 0.48]
HEAT_X = [0.58, 0.93]
HEAT_Y = {"V": [0.55, 1.0], "U": [0.0, 0.45]}
COMP_TITLES = {"V": "basal V", "U": "apical U"}


# ---------------------------------------------------------------------------------------------
# pure helpers
# ---------------------------------------------------------------------------------------------
def nice_range(values: Sequence[Any], floor: float = 1e-3, quantile: float = QUANTILE) -> float:
    """The smallest 1-2-5 x 10^k at least the ``quantile`` of |value| (at least ``floor``): a
    colour range that only changes in readable steps, not set by a few outlying units (they
    take the end colour)."""
    mags = sorted(abs(float(v)) for v in values if v is not None and math.isfinite(float(v)))
    top = mags[min(len(mags) - 1, math.ceil(quantile * len(mags)) - 1)] if mags else 0.0
    top = max(top, floor)
    exp = math.floor(math.log10(top))
    for m in (1.0, 2.0, 5.0, 10.0):
        if m * 10.0**exp >= top * (1 - 1e-12):
            return m * 10.0**exp
    return 10.0 ** (exp + 1)  # pragma: no cover (10 x 10^exp >= top always)


def diverging_color(value: float | None, vmax: float) -> str:
    """``value`` on COLORSCALE over [-vmax, vmax] (clipped), as Plotly interpolates it."""
    if value is None or not math.isfinite(value) or vmax <= 0:
        return NEUTRAL
    f = min(1.0, max(0.0, 0.5 + 0.5 * value / vmax))
    for (f0, c0), (f1, c1) in itertools.pairwise(COLORSCALE):
        if f <= f1:
            w = (f - f0) / (f1 - f0)
            # halves round up, as JavaScript's Math.round (d3's interpolateRgb) does
            r, g, b = (math.floor(a + w * (b_ - a) + 0.5) for a, b_ in zip(c0, c1, strict=True))
            return f"rgb({r},{g},{b})"
    return "rgb({},{},{})".format(*COLORSCALE[-1][1])  # pragma: no cover


def update_sizes(frame: Mapping[str, Any]) -> dict[str, float | None]:
    """‖ΔW‖ of each arrow's population over the frame (mean over seeds; the basal update
    split into its recurrent and input blocks when the frame carries them)."""
    changes = frame.get("weight_change") or {}
    sizes: dict[str, float | None] = {}
    for arrow, (pop, *_rest) in ARROWS.items():
        entry = changes.get(pop) or {}
        value = (entry.get("parts") or {}).get(arrow, entry.get("norm"))
        sizes[arrow] = float(value) if value is not None and math.isfinite(value) else None
    return sizes


def arrow_widths(sizes: Mapping[str, float | None]) -> dict[str, float]:
    """Widths from update sizes: log10 of each against the largest, over DECADES decades;
    no update (0 or missing) is the thinnest."""
    logs = {k: math.log10(v) for k, v in sizes.items() if v is not None and v > 0}
    top = max(logs.values(), default=0.0)
    out = {}
    for arrow in sizes:
        s = 0.0 if arrow not in logs else max(0.0, 1.0 - (top - logs[arrow]) / DECADES)
        out[arrow] = round(MIN_WIDTH + (MAX_WIDTH - MIN_WIDTH) * s, 2)
    return out


def _step_label(step: int) -> str:
    """A step as Plotly labels a linear axis: 2000 -> "2k", 12500 -> "12.5k"."""
    return f"{step / 1000:g}k" if step >= 1000 else str(step)


def step_ticks(steps: Sequence[int], count: int = 5) -> dict[str, Any]:
    """Round tick labels for the strips' step axis, which is categorical (one column per
    frame, however uneven the steps between frames): at each multiple of a 1-2-5 spacing
    (about ``count`` of them) the column nearest to it, labelled with the multiple."""
    vals: list[int] = []
    text: list[str] = []
    if steps:
        lo, hi = int(steps[0]), int(steps[-1])
        raw = max(hi - lo, 1) / count
        exp = 10 ** math.floor(math.log10(raw))
        spacing = max(1, int(next(m * exp for m in (1, 2, 5, 10) if m * exp >= raw)))
        i, mark = 0, -(-lo // spacing) * spacing
        while mark <= hi:
            while steps[i] < mark:
                i += 1
            near = i - 1 if i and mark - steps[i - 1] < steps[i] - mark else i
            if not vals or vals[-1] != steps[near]:
                vals.append(int(steps[near]))
                text.append(_step_label(mark))
            mark += spacing
    return {"tickmode": "array", "tickvals": vals, "ticktext": text}


def snapshot_of(view: common.View, run: common.RunView, frame: Mapping[str, Any]
                ) -> dict[str, Any] | None:
    """The frame's whole-network snapshot if it is of the seed the view shows."""
    snap = frame.get("snapshot")
    seed = common.shown_seed(view, run)
    if not snap or not snap.get("V") or (seed is not None and snap.get("seed", seed) != seed):
        return None
    return snap


def shown_unit(view: common.View) -> int:
    return int((view.get("units") or [0])[0])


def _unit_value(snap: Mapping[str, Any] | None, comp: str, unit: int) -> float | None:
    values = (snap or {}).get(comp) or []
    v = values[unit] if unit < len(values) else None
    return float(v) if v is not None else None


def head_size(width: float) -> float:
    """The arrow marker's size for a line ``width`` px wide: its head grows with the line."""
    return round(10.0 + 3.0 * width, 2)


def _label_index(arrow: str) -> int:
    """Which end of an arrow's trace carries its label: the readout points at its label (the
    output), the others start at theirs."""
    return 1 if arrow == "readout" else 0


def neuron_patch(view: common.View, run: common.RunView, frame: Mapping[str, Any] | None,
                 ranges: Mapping[str, float]) -> dict[str, dict[str, dict[str, Any]]]:
    """What the newest frame changes in the drawing, by trace name: the compartments'
    colours, the arrows' width, colour, opacity and label, the unit's values and the phase
    line. The figure is built with it and ticks send it (one source)."""
    frame = frame or {}
    snap = snapshot_of(view, run, frame) if frame else None
    unit = shown_unit(view)
    values = {c: _unit_value(snap, c, unit) for c in ("V", "U")}
    traces: dict[str, dict[str, Any]] = {
        "soma": {"fillcolor": diverging_color(values["V"], ranges["V"])}}
    for name, (comp, _paths) in DENDRITES.items():
        traces[name] = {"line": {"color": diverging_color(values[comp], ranges[comp])}}
    plastic = set(frame.get("plastic") or [])
    phase_known = "plastic" in frame
    widths = arrow_widths(update_sizes(frame))
    for arrow, (pop, label, _cell, _label_end) in ARROWS.items():
        if pop not in run["pops"]:
            color, opacity, text = DIM_COLOR, ABSENT_OPACITY, f"{label}<br>(none)"
        elif not phase_known or pop in plastic:
            color, opacity, text = common.POP_COLORS[pop], 1.0, f"<b>{label}</b>"
        else:
            color, opacity, text = DIM_COLOR, DIM_OPACITY, f"{label}<br>(frozen)"
        texts = ["", ""]
        texts[_label_index(arrow)] = text
        traces[f"arrow:{arrow}"] = {
            "line": {"color": color, "width": widths[arrow]}, "opacity": opacity,
            "marker": {"color": color, "size": [0, head_size(widths[arrow])]},
            "text": texts, "textfont": {"color": color}}

    def fmt(v: float | None) -> str:
        return "–" if v is None else f"{v:+.3g}"

    traces["values"] = {"text": [f"unit {unit}: V = {fmt(values['V'])}, U = {fmt(values['U'])}"]}
    phase = frame.get("phase")
    traces["phase"] = {"text": ["" if phase is None else
                                f"phase {common._esc(phase)}: "
                                f"{', '.join(sorted(plastic)) or 'nothing'} plastic"]}
    return {"traces": traces}


def _frames_of(view: common.View, run: common.RunView | None,
               recent: Mapping[str, Sequence[Mapping[str, Any]]]
               ) -> list[tuple[Mapping[str, Any], dict[str, Any]]]:
    if run is None:
        return []
    out = []
    for frame in recent.get(run["id"]) or []:
        snap = snapshot_of(view, run, frame)
        if snap is not None:
            out.append((frame, snap))
    return out


def _state(carry: dict[str, Any] | None) -> dict[str, Any]:
    """The panel's carry (colour ranges, last column's step, the columns' steps) inside the
    figures' carry."""
    fresh = {"V": 1e-3, "U": 1e-3, "t": None, "steps": []}
    return fresh if carry is None else carry.setdefault("circuit", fresh)


def _column_step(frame: Mapping[str, Any], snap: Mapping[str, Any]) -> int:
    """The step of a strip's column: its snapshot's (the frame's end for older frames)."""
    return int(snap.get("step", frame.get("t1", 0)))


def _grow_ranges(state: dict[str, Any], snaps: Sequence[Mapping[str, Any]]) -> bool:
    """Widen the colour ranges to the new values (they never shrink within a view, so a
    column keeps its colour); True when one changed."""
    changed = False
    for comp in ("V", "U"):
        top = nice_range([v for s in snaps for v in s.get(comp) or []])
        if top > state[comp]:
            state[comp], changed = top, True
    return changed


# ---------------------------------------------------------------------------------------------
# the figure
# ---------------------------------------------------------------------------------------------
def _colorscale() -> list[list[Any]]:
    return [[f, "rgb({},{},{})".format(*c)] for f, c in COLORSCALE]


def _strips(view: common.View, got: Sequence[tuple[Mapping[str, Any], dict[str, Any]]],
            state: Mapping[str, Any], layout: dict[str, Any]) -> list[dict[str, Any]]:
    """The two heatmaps (V on top, U below: every unit by recent frame) and their axes."""
    rows = len(got[-1][1]["V"]) if got else 0
    steps = state["steps"]
    data: list[dict[str, Any]] = []
    for k, comp in enumerate(("V", "U")):
        ax = str(k + 2)
        z = [[(s.get(comp) or [None] * rows)[u] if u < len(s.get(comp) or []) else None
              for _f, s in got] for u in range(rows)]
        dom = HEAT_Y[comp]
        data.append({
            "type": "heatmap", "name": COMP_TITLES[comp], "x": steps, "y": list(range(rows)),
            "z": z, "zmin": -state[comp], "zmax": state[comp], "colorscale": _colorscale(),
            "xaxis": f"x{ax}", "yaxis": f"y{ax}", "hoverongaps": False,
            # the colour bar in HTML on screen, Plotly's in exports (assets/plab.js, export.js)
            "showscale": False, "meta": {"scale": True},
            "colorbar": {"title": {"text": COMP_TITLES[comp], "side": "right",
                                   "font": common._font(view, 11)},
                         "len": dom[1] - dom[0], "y": (dom[0] + dom[1]) / 2, "yanchor": "middle",
                         "x": 1.0, "thickness": 12, "tickfont": common._font(view, 10)},
            "hovertemplate": f"{COMP_TITLES[comp]} %{{z:.3f}}<br>unit %{{y}} · step %{{x}}"
                             "<extra></extra>"})
        layout[f"xaxis{ax}"] = common._axis(view, "step" if comp == "U" else "", domain=HEAT_X,
                                             anchor=f"y{ax}", showticklabels=comp == "U",
                                             showgrid=False, type="category",
                                             **step_ticks(steps),
                                             **({"matches": "x3"} if comp == "V" else {}))
        layout[f"yaxis{ax}"] = common._axis(view, f"unit ({COMP_TITLES[comp]})", domain=dom,
                                             anchor=f"x{ax}", autorange="reversed",
                                             showgrid=False, zeroline=False)
    return data


def _polyline(paths: Sequence[Sequence[Point]]) -> tuple[list[float | None], list[float | None]]:
    """Several polylines as one trace's x and y (None between them: separate lines)."""
    xs: list[float | None] = []
    ys: list[float | None] = []
    for k, path in enumerate(paths):
        if k:
            xs.append(None)
            ys.append(None)
        xs += [p[0] for p in path]
        ys += [p[1] for p in path]
    return xs, ys


def _neuron(view: common.View, patch: Mapping[str, Mapping[str, Any]] | None
            ) -> list[dict[str, Any]]:
    """The drawing's traces (NEURON_TRACES, in order) with the frame's ``patch`` applied; no
    patch (no run yet): the same traces, empty."""
    font = common._font(view, 11)
    base = {"type": "scatter", "xaxis": "x", "yaxis": "y", "hoverinfo": "skip",
            "showlegend": False, "cliponaxis": False}

    def trace(name: str, xs: Sequence[Any], ys: Sequence[Any], **props: Any) -> dict[str, Any]:
        out = {**base, "name": name, "x": list(xs) if patch else [],
               "y": list(ys) if patch else [], **props}
        for key, value in ((patch or {}).get(name) or {}).items():
            out[key] = {**out[key], **value} if isinstance(value, dict) and key in out else value
        return out

    every = [path for _comp, paths in DENDRITES.values() for path in paths]
    # a dark outline under the dendrites, so a pale (near 0) compartment still reads
    out = [trace("outline", *_polyline(every), mode="lines",
                 line={"color": "#4b5563", "width": 10})]
    out += [trace(name, *_polyline(paths), mode="lines", line={"width": 7})
            for name, (_comp, paths) in DENDRITES.items()]
    out.append(trace("soma", [p[0] for p in SOMA], [p[1] for p in SOMA], mode="lines",
                     fill="toself", line={"color": "#4b5563", "width": 2}))
    for arrow, (_pop, _label, cell, label_end) in ARROWS.items():
        ends = (cell, label_end) if _label_index(arrow) else (label_end, cell)
        positions = ["middle center", "middle center"]
        positions[_label_index(arrow)] = LABEL_POSITION[arrow]
        # the line ends in an arrow marker turned along it (angleref "previous")
        out.append(trace(f"arrow:{arrow}", [p[0] for p in ends], [p[1] for p in ends],
                         mode="lines+markers+text", textposition=positions,
                         marker={"symbol": "arrow", "angleref": "previous", "opacity": 1,
                                 "line": {"width": 0}},
                         line={}, textfont=dict(font)))
    out.append(trace("values", [10.0], [0.1], mode="text", textposition="top left",
                     textfont=dict(font)))
    out.append(trace("phase", [0.0], [12.0], mode="text", textposition="top right",
                     textfont={**font, "color": common.MUTED}))
    return out


def circuit_figure(view: common.View, recent: Mapping[str, Sequence[Mapping[str, Any]]] | None
                   = None, carry: dict[str, Any] | None = None) -> common.Figure:
    """The panel's figure for ``view`` with the latest frames ``recent`` (run id -> frames)."""
    run = focus_run(view)
    got = _frames_of(view, run, recent or {})[-HISTORY:]
    state = _state(carry if run is not None else None)  # no run: nothing to carry
    _grow_ranges(state, [s for _f, s in got])
    state["steps"] = [_column_step(f, s) for f, s in got]
    if got:
        state["t"] = state["steps"][-1]
    layout = common._base_layout(view, height=420, legend=False)
    layout["hovermode"] = "closest"
    data = _strips(view, got, state, layout)
    layout["xaxis"] = {"domain": X_DOMAIN, "range": [0, 10], "visible": False, "fixedrange": True,
                       "anchor": "y"}
    layout["yaxis"] = {"domain": [0, 1], "range": [0, 12], "visible": False, "fixedrange": True,
                       "anchor": "x"}
    # room for the colour bars (HTML on screen, Plotly's in exports) right of the strips
    layout["margin"]["r"] = round(72 * view.get("scale", 1.0))
    if run is None:
        layout["annotations"].append(common._empty_note(view, "the circuit appears when a run "
                                                               "steps"))
        return {"data": data + _neuron(view, None), "layout": layout}
    last = got[-1][0] if got else ((recent or {}).get(run["id"]) or [None])[-1]
    data += _neuron(view, neuron_patch(view, run, last, state)["traces"])
    layout["annotations"].append(
        {"name": "circuit-run", "xref": "paper", "yref": "paper", "x": HEAT_X[0], "y": 1.0,
         "xanchor": "left", "yanchor": "bottom", "showarrow": False,
         "text": f"<b>all units of {common._esc(run['label'])}</b>",
         "font": {**common._font(view, 12), "color": run["color"]}})
    n = int((got[-1][1].get("n") if got else None) or run.get("n") or 0)
    if n > SNAPSHOT_UNITS:
        layout["annotations"].append({
            "name": "cap", "xref": "paper", "yref": "paper", "x": 1.0, "y": 1.0,
            "xanchor": "right", "yanchor": "bottom", "showarrow": False,
            "text": f"first {SNAPSHOT_UNITS} of {n} units",
            "font": {**common._font(view, 11), "color": "#b54708"}})
    layout["margin"]["l"] = round(8 * view.get("scale", 1.0))
    return {"data": data, "layout": layout}


# ---------------------------------------------------------------------------------------------
# live
# ---------------------------------------------------------------------------------------------
def circuit_ops(view: common.View, frames_by_run: Mapping[str, Sequence[Mapping[str, Any]]],
                carry: dict[str, Any]) -> dict[str, common.Ops]:
    """The new frames as the panel's live update (nothing when it is hidden or has nothing
    new): {"heat": [{"i", "x", "z" (per row, the new columns), "max", "zmin", "zmax"}],
    "axes": the step axes' ticks (step_ticks), "patch": neuron_patch(...)}; ``carry`` moves
    on in place."""
    if view.get("panels") is not None and "circuit" not in view["panels"]:
        return {}
    run = focus_run(view)
    got = _frames_of(view, run, frames_by_run)
    if run is None or not got:
        return {}
    state = _state(carry)
    last_t = state.get("t")
    got = [(f, s) for f, s in got if last_t is None or _column_step(f, s) > int(last_t)]
    if not got:
        return {}
    got = got[-HISTORY:]
    _grow_ranges(state, [s for _f, s in got])
    new_steps = [_column_step(f, s) for f, s in got]
    state["t"] = new_steps[-1]
    state["steps"] = (list(state.get("steps") or []) + new_steps)[-HISTORY:]
    ticks = step_ticks(state["steps"])
    rows = len(got[-1][1]["V"])
    heat = []
    for i, comp in enumerate(("V", "U")):
        cols = [list(s.get(comp) or []) for _f, s in got]
        z = [[c[u] if u < len(c) else None for c in cols] for u in range(rows)]
        heat.append({"i": i, "x": new_steps, "z": z,
                     "max": HISTORY, "zmin": -state[comp], "zmax": state[comp]})
    return {GRAPH: {"heat": heat, "axes": {"xaxis2": ticks, "xaxis3": ticks},
                    "patch": neuron_patch(view, run, got[-1][0], state)}}


# ---------------------------------------------------------------------------------------------
# the panel's component interface (app.dashboard.panels)
# ---------------------------------------------------------------------------------------------
NAME = "circuit"
TITLE = "The circuit: one neuron and the whole network"
TAB = "Circuit"
NOTES = (
    "One unit (the first chosen) as the paper draws it: the soma and basal dendrites "
    "coloured by its basal voltage V, the apical tuft by its apical voltage U. Arrows are "
    "the synapses: input and recurrent (basal W), apical A, the learned Jacobian J~ and "
    "the readout; an arrow glows while its synapses learn in this phase, is grey when "
    "frozen, and is as thick as its last update (log scale). Right: V and U of every "
    "unit over the last frames.",
    "Look for: in a phased schedule the arrows taking turns; the U strip filling with "
    "structure as the apical synapses learn.",
)


def tools() -> list[Any]:
    return []


def slots(view: common.View) -> list[str]:
    # the two heatmaps (they grow by the "heat" op, not by extend), then the drawing (patched)
    return ["V", "U", *NEURON_TRACES]


def figure(view: common.View, histories: Mapping[str, Mapping[str, Any]] | None,
           recent: Mapping[str, Sequence[Mapping[str, Any]]] | None,
           carry: dict[str, Any]) -> common.Figure:
    return circuit_figure(view, recent, carry)


def tick(view: common.View, frames_by_run: Mapping[str, Sequence[Mapping[str, Any]]],
         carry: dict[str, Any], ext: _Extend) -> dict[str, Any]:
    return dict(circuit_ops(view, frames_by_run, carry).get(GRAPH) or {})


__all__ = ["ARROWS", "GRAPH", "HISTORY", "NEURON_TRACES", "arrow_widths", "circuit_figure",
           "circuit_ops", "diverging_color", "head_size", "neuron_patch", "nice_range",
           "step_ticks", "update_sizes"]
