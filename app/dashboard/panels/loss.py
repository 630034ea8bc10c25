"""The loss panel: train loss (smoothed bold, raw faint), held-out test loss, the task's
reference levels, phase shading and the run's setting changes.

Read on a projector: decimal ticks at fixed values on the log axis; the y-range follows the
SMOOTHED curves and the reference levels (a raw spike does not squash the plot, and the
shading and marks do not enter the range); learning-rate and setting changes are vertical
lines with a label (from the run's recorded ``events``); the raw trace is binned once, in
blocks of the run's stride, live and after a rebuild alike (panels.binning).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from dash import dcc, html

from app.dashboard.panels.binning import (
    _finite,
    _mean,
    bin_points,
    fold,
    fold_history,
    merge_spans,
    new_series_carry,
)
from app.dashboard.panels.common import (
    MAX_POINTS,
    RAW_MAX_RUNS,
    Figure,
    View,
    _axis,
    _base_layout,
    _carry,
    _empty_note,
    _esc,
    _Extend,
    _font,
    _line,
    _phase_legend,
    _runs_by_id,
    _shade,
    initial_carry,
    moving,
    phase_colors,
    phase_shapes,
    shaded,
)

NAME = "loss"
GRAPH = "loss-graph"
TITLE = "Loss"
TAB = "Loss"
NOTES = (
    "Train loss of each run (bold: smoothed; faint: raw) and held-out test loss (◆). "
    "Dashed lines are the task's reference levels: for Add, a network that learned "
    "nothing sits at 0.66 nats, one that learned the t1 dependency at 0.52, the optimum "
    "is 0.45. Shaded bands are circuit phases; a vertical line marks a setting changed "
    "mid-run (a learning rate, the phases).",
    "Look for: which rules cross the t1 line, and where each one plateaus.",
)

#: tick values of a log loss axis: decimals at fixed values, so 0.7 never reads as "7"
LOG_TICKS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8,
             1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0, 100.0)
REF_MARGIN = 128  # px on the right of the loss plot for the reference labels
#: the y-range's margin around the smoothed curves and reference levels, as a fraction of
#: their span (in decades on a log axis)
Y_PAD = 0.08
MARK_COLOR = "#374151"


def tools() -> list[Any]:
    """The panel head's tools: test now, log y."""
    return [html.Div([
        html.Button("test now", id="btn-test", n_clicks=0, className="small",
                    title="evaluate the held-out test loss of the live runs now (◆)"),
        dcc.Checklist(id="log-y", options=[{"label": " log y", "value": "on"}], value=["on"],
                      className="check inline")], className="tools-row")]


def show_raw(view: View) -> bool:
    return len(view["runs"]) <= RAW_MAX_RUNS


def loss_slots(view: View) -> list[str]:
    slots = []
    for run in view["runs"]:
        if show_raw(view):
            slots.append(f"raw:{run['id']}")
        slots += [f"smooth:{run['id']}", f"test:{run['id']}"]
    if view.get("refs"):
        slots.append("refs")  # no points: it makes Plotly draw the reference-level axis
    return slots


slots = loss_slots


def log_ticks() -> dict[str, Any]:
    """Fixed decimal ticks for a log axis (Plotly shows those inside its range)."""
    return {"tickmode": "array", "tickvals": list(LOG_TICKS),
            "ticktext": [f"{v:g}" for v in LOG_TICKS]}


# ---- the y-range: from the smoothed curves --------------------------------------------------
def track_range(state: dict[str, Any], values: Sequence[float | None]) -> bool:
    """Widen the run's extent (``lo``/``hi`` in its loss carry) by ``values`` (smoothed
    points and held-out test losses, never raw bins); True when it changed."""
    finite = [v for v in values if v is not None and math.isfinite(v) and v > 0]
    if not finite:
        return False
    lo, hi = state.get("lo"), state.get("hi")
    new_lo = min(finite) if lo is None else min(lo, *finite)
    new_hi = max(finite) if hi is None else max(hi, *finite)
    changed = (new_lo, new_hi) != (lo, hi)
    state["lo"], state["hi"] = new_lo, new_hi
    return changed


def y_range(view: View, carry: Mapping[str, Any]) -> list[float] | None:
    """The loss axis's range (axis units: decades on a log axis) spanning every run's smoothed
    curve, its test losses and the reference levels, padded by Y_PAD; None before any point."""
    lows, highs = [], []
    for run in view["runs"]:
        state = (carry.get(run["id"]) or {}).get("loss") or {}
        if state.get("lo") is not None:
            lows.append(state["lo"])
            highs.append(state["hi"])
    if not lows:
        return None
    levels = [v for v in (view.get("refs") or {}).values() if v and v > 0]
    lo, hi = min(lows + levels), max(highs + levels)
    if view.get("log_y", True):
        lo, hi = math.log10(lo), math.log10(hi)
    span = max(hi - lo, 0.05 if view.get("log_y", True) else 1e-3 * max(abs(hi), 1e-9))
    return range_grid(lo - Y_PAD * span, hi + Y_PAD * span, span)


def range_grid(lo: float, hi: float, span: float) -> list[float]:
    """``[lo, hi]`` widened outward to multiples of a 1-2-5 step of about span / 8: a curve
    that creeps past its extent moves the axis once per step, not at every frame (a range
    that holds lets a live frame redraw the lines alone, assets/plab.js quickLines)."""
    raw = span / 8
    mag = 10.0 ** math.floor(math.log10(raw))
    step = max(m * mag for m in (1, 2, 5) if m * mag <= raw * (1 + 1e-9))
    # rounded to the step's decimals, so that equal ranges compare equal
    digits = max(0, -math.floor(math.log10(step)) + 1)
    return [round(math.floor(lo / step + 1e-9) * step, digits),
            round(math.ceil(hi / step - 1e-9) * step, digits)]


# ---- setting changes: vertical lines with a label --------------------------------------------
def run_events(view: View, histories: Mapping[str, Mapping[str, Any]]) -> list[list[Any]]:
    """[step, label] of every setting change of the runs shown (a change sent to a whole
    race is one mark), oldest first."""
    seen: dict[tuple[int, str], None] = {}
    for run in view["runs"]:
        for event in (histories.get(run["id"]) or {}).get("events") or []:
            seen[(int(event["step"]), str(event.get("label") or event.get("action", "")))] = None
    return [[step, label] for step, label in sorted(seen)]


def event_marks(view: View, events: Sequence[Sequence[Any]]) -> tuple[list[dict], list[dict]]:
    """(shapes, annotations) for setting changes: a dotted vertical line at the step and its
    label at the top of the plot (yref paper: outside the y autorange)."""
    shapes, notes = [], []
    for k, (step, label) in enumerate(events):
        shapes.append({"type": "line", "name": "event", "xref": "x", "x0": step, "x1": step,
                       "yref": "paper", "y0": 0, "y1": 1, "layer": "above",
                       "line": {"color": MARK_COLOR, "width": 1.4, "dash": "dot"}})
        notes.append({"xref": "x", "x": step, "yref": "paper", "y": 1.0 - 0.07 * (k % 3),
                      "xanchor": "left", "yanchor": "top", "xshift": 3, "showarrow": False,
                      "name": "event", "text": _esc(label), "bgcolor": "rgba(255,255,255,0.8)",
                      "font": {**_font(view, 10.5), "color": MARK_COLOR}})
    return shapes, notes


# ---- the figure ------------------------------------------------------------------------------
def _traces(view: View, histories: Mapping[str, Mapping[str, Any]],
            carry: dict[str, Any] | None) -> list[dict[str, Any]]:
    runs = _runs_by_id(view)
    s = view.get("scale", 1.0)
    folded: dict[str, tuple[list, list, list]] = {}
    data = []
    for slot in loss_slots(view):
        if slot == "refs":
            # Plotly draws an axis only when a trace uses it: this one (no points) makes it
            # draw the reference-level axis (see _references)
            data.append({"type": "scatter", "x": [], "y": [], "yaxis": "y2",
                         "name": "reference levels", "showlegend": False, "hoverinfo": "skip"})
            continue
        kind, rid = slot.split(":", 1)
        run = runs[rid]
        hist = histories.get(rid) or {}
        if rid not in folded:  # the same blocks as the ticks (panels.binning.fold)
            state = _carry(carry).setdefault(rid, initial_carry()).setdefault(
                "loss", new_series_carry())
            folded[rid] = fold_history(hist.get("step") or [],
                                       _finite((hist.get("loss") or {}).get("mean") or []),
                                       run["stride"], run["tau"], state, final=not moving(run))
            track_range(state, folded[rid][2])
        xs, raw, smooth = folded[rid]
        if kind == "raw":
            data.append(_line(f"{run['label']} raw", run["color"], width=1, opacity=0.28,
                              x=xs, y=raw, legend=False, group=rid,
                              hovertemplate="%{y:.4f}<extra>raw</extra>"))
        elif kind == "smooth":
            data.append(_line(run["label"], run["color"], width=2.6 * min(s, 1.4), x=xs,
                              y=smooth, group=rid,
                              hovertemplate="%{y:.4f}<extra>" + _esc(run["label"]) + "</extra>"))
        else:
            test = hist.get("test_loss") or {}
            track_range(carry[rid]["loss"], _finite(test.get("mean") or []))
            data.append(_line(f"{run['label']} test", run["color"], width=1.5, dash="dot",
                              x=list(test.get("step") or []), y=_finite(test.get("mean") or []),
                              mode="lines+markers", legend=False, group=rid,
                              marker={"size": 8 * min(s, 1.4), "symbol": "diamond",
                                      "line": {"color": "white", "width": 1}},
                              hovertemplate="test %{y:.4f}<extra>" + _esc(run["label"]) + "</extra>"))
    return data


REF_COLOR = "#5b6270"


def _references(view: View, layout: dict[str, Any]) -> None:
    """The task's reference levels: a right-hand axis over the loss axis (same range) whose
    ticks are the levels, labelled in the right margin, and whose dashed grid lines are the
    levels' lines. An axis rather than shapes and annotations: Plotly rebuilds every
    annotation at each redraw (about 0.8 ms each, ten times a second), while an axis's labels
    are measured once and cached."""
    refs = sorted((view.get("refs") or {}).items(), key=lambda kv: -kv[1])
    if not refs:
        return
    layout["yaxis2"] = {
        "overlaying": "y", "matches": "y", "anchor": "x", "side": "right",
        "type": layout["yaxis"].get("type", "linear"), "tickmode": "array",
        "tickvals": [level for _label, level in refs],
        "ticktext": [f"{_esc(label)} {level:.2f}" for label, level in refs],
        "showgrid": True, "griddash": "dash", "gridcolor": REF_COLOR, "gridwidth": 1.2,
        "zeroline": False, "showline": False, "ticks": "", "automargin": False,
        "ticklabeloverflow": "allow", "tickfont": {**_font(view, 10.5), "color": "#4b5260"}}


def loss_figure(view: View, histories: Mapping[str, Mapping[str, Any]] | None = None,
                carry: dict[str, Any] | None = None) -> Figure:
    """Train loss (smoothed, raw faint), test loss, reference levels, phase shading, marks.

    ``histories`` (run id -> backend history) back-fills a run that already has steps;
    ``carry`` (run id -> state) receives the binning and EMA state to continue from.
    """
    histories = histories or {}
    carry = _carry(carry)
    data = _traces(view, histories, carry)
    log_y = view.get("log_y", True)
    unit = "nats" if view.get("loss_kind", "cross_entropy") == "cross_entropy" else "squared error"
    rng = y_range(view, carry)
    layout = _base_layout(
        view, height=340,
        xaxis=_axis(view, "step", rangemode="tozero"),
        yaxis=_axis(view, f"loss ({unit})", type="log" if log_y else "linear",
                    **(log_ticks() if log_y else {}),
                    **({"range": rng, "autorange": False} if rng else {})),
    )
    # reference labels in the right margin, beside their dashed line, never over the curve
    layout["margin"]["r"] = round((REF_MARGIN if view.get("refs") else 16) * view.get("scale", 1.0))
    layout["meta"]["shade"] = _shade(view, "x", 0.0, 1.0)
    # live frames that only append points redraw the lines alone (assets/plab.js quickLines);
    # the step axis grows in round steps up to the runs' length
    layout["meta"]["quick"] = {"xmax": max((run["target"] for run in view["runs"]), default=0)}
    _references(view, layout)
    source = histories.get(view.get("phase_run") or "") or {}
    spans = merge_spans(source.get("phases") or []) if shaded(view) else []
    layout["shapes"] += phase_shapes(spans, phase_colors(view), layout["meta"]["shade"])
    shapes, notes = event_marks(view, run_events(view, histories))
    layout["shapes"] += shapes
    layout["annotations"] += notes + _phase_legend(view)
    if not view["runs"]:
        layout["annotations"].append(_empty_note(view, "Press ▶ Play to start a run"))
    return {"data": data, "layout": layout}


def figure(view: View, histories: Mapping[str, Mapping[str, Any]] | None,
           recent: Mapping[str, Sequence[Mapping[str, Any]]] | None,
           carry: dict[str, Any]) -> Figure:
    return loss_figure(view, histories, carry)


# ---- live ------------------------------------------------------------------------------------
def tick(view: View, frames_by_run: Mapping[str, Sequence[Mapping[str, Any]]],
         carry: dict[str, Any], ext: _Extend) -> dict[str, Any]:
    """New loss points of every run (the stride's blocks, a provisional tail), and the
    y-range when the smoothed curves left it."""
    runs = _runs_by_id(view)
    before = y_range(view, carry)
    widened = False
    for rid, frames in frames_by_run.items():
        run = runs.get(rid)
        if run is None or not frames:
            continue
        state = carry.setdefault(rid, initial_carry())["loss"]
        pts = [p for f in frames for p in bin_points(f.get("loss"), int(f.get("t0", 0)))]
        xs, raw, smooth, tail = fold(pts, run["stride"], run["tau"], state)
        ext.add_tail(f"raw:{rid}", xs, raw, tail and (tail[0], tail[1]), MAX_POINTS)
        ext.add_tail(f"smooth:{rid}", xs, smooth, tail and (tail[0], tail[2]), MAX_POINTS)
        widened |= track_range(state, [*smooth, *([tail[2]] if tail else [])])
        tests = [(int(f.get("test_step", f.get("t1", 0))), _mean(f["test_loss"]))
                 for f in frames if f.get("test_loss")]
        tests = [(t, v) for t, v in tests if v is not None]
        widened |= track_range(state, [v for _, v in tests])
        ext.add(f"test:{rid}", [t for t, _ in tests], [v for _, v in tests], MAX_POINTS)
    rng = y_range(view, carry) if widened else None
    # sent only when it moved to another step of its grid
    return {"axes": {"yaxis": {"range": rng, "autorange": False}}} if rng and rng != before else {}


def loss_gap(view: View, frames_by_run: Mapping[str, Sequence[Mapping[str, Any]]],
             carry: Mapping[str, Any]) -> bool:
    """True when frames skip steps the loss plot has not seen (after a fast-forward, or a
    client that fell behind the live window): the view is rebuilt from the history then.
    Call before tick_ops (which moves the carry on)."""
    for run in view["runs"]:
        frames = frames_by_run.get(run["id"]) or []
        last = ((carry.get(run["id"]) or {}).get("loss") or {}).get("t")
        if (frames and last is not None
                and int(frames[0].get("t0", 0)) > int(last) + max(2 * run["stride"], 50)):
            return True
    return False


def has_events(frames_by_run: Mapping[str, Sequence[Mapping[str, Any]]]) -> bool:
    """True when a frame carries a setting change: the view is rebuilt, so the change's
    mark comes from the history (where the run recorded it) like every earlier one."""
    return any(f.get("events_changed") for frames in frames_by_run.values() for f in frames)
