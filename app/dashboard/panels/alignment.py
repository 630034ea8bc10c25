"""The alignment panel: the cosine of each run's update with the exact gradient (and of the
comparison rules measured passively on its network), and the rule's own prediction losses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from app.dashboard.panels.binning import _finite, bin_points, fold, fold_history, new_series_carry
from app.dashboard.panels.common import (
    DIAG_DASH,
    DIAG_LABELS,
    MAX_POINTS,
    MUTED,
    UNIT_COLORS,
    Figure,
    RunView,
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
    _stack_domains,
    compare_color,
    initial_carry,
    moving,
)

NAME = "alignment"
GRAPH = "alignment-graph"
TITLE = "Gradient alignment & rule signals"
TAB = "Alignment"
NOTES = (
    "Top: cosine between the rule's update and the exact gradient (1: the same direction, "
    "0: unrelated). Bottom: the rule's own prediction errors: the apical loss (how far U "
    "is from its bootstrapped target) and the J̃ loss (how well the learned Jacobian "
    "predicts the next rates).",
    "Look for: alignment far below 1 but clearly above 0 is enough to learn.",
)


def tools() -> list[Any]:
    return []


def alignment_protocol(run: RunView, steps: Sequence[int]) -> str:
    """What the alignment panel shows for a run: its own training, and, for comparison
    rules, a passive measurement on its network over the steps shown."""
    text = f"{run['label']}: own training"
    if run.get("compare"):
        live = moving(run) or not steps
        span = "now" if live else f"{steps[-1]:,}"
        text += (f" · {', '.join(run['compare'])}: passive on {run['rule']}'s network, "
                 f"steps 0–{span}")
    return text


def alignment_slots(view: View) -> list[str]:
    slots = [f"align:{run['id']}" for run in view["runs"]]
    for run in view["runs"]:
        slots += [f"cmp:{run['id']}:{rule}" for rule in run.get("compare") or []]
    for run in view["runs"]:
        slots += [f"diag:{run['id']}:{name}" for name in run["diagnostics"]]
    return slots


def _series(hist: Mapping[str, Any], kind: str, name: str) -> Mapping[str, Any]:
    """A slot's series in a run's history (or frame): alignment, a comparison rule's, or a
    diagnostic."""
    if kind == "align":
        return hist.get("alignment") or {}
    if kind == "cmp":
        return ((hist.get("alignment") or {}).get("compare") or {}).get(name) or {}
    return (hist.get("diagnostics") or {}).get(name) or {}


def _state(state: dict[str, Any], kind: str, name: str) -> dict[str, Any]:
    """A slot's binning state in a run's carry."""
    if kind == "align":
        return state.setdefault("align", new_series_carry())
    return state.setdefault(kind, {}).setdefault(name, new_series_carry())


def _trace(view: View, run: RunView, kind: str, name: str, xs: list, ys: list
           ) -> dict[str, Any]:
    many = len(view["runs"]) > 1
    if kind == "align":
        return _line(run["label"], run["color"], width=2.4, x=xs, y=ys, group=run["id"],
                     hovertemplate="cos %{y:.3f}<extra>" + _esc(run["label"]) + "</extra>")
    if kind == "cmp":
        label = f"{name} (passive on {run['label']})" if many else f"{name} (passive)"
        return _line(label, compare_color(name), width=1.8, dash="dot", x=xs, y=ys,
                     group=run["id"],
                     hovertemplate="cos %{y:.3f}<extra>" + _esc(label) + "</extra>")
    k = run["diagnostics"].index(name)
    label = DIAG_LABELS.get(name, name.replace("_", " "))
    return _line(f"{run['label']} {label}" if many else label,
                 run["color"] if many else UNIT_COLORS[k % 4], width=1.8,
                 dash=DIAG_DASH[k % 4] if many else "solid", x=xs, y=ys, xaxis="x2", yaxis="y2",
                 group=run["id"],
                 hovertemplate=label + " %{y:.3g}<extra>" + _esc(run["label"]) + "</extra>")


def alignment_figure(view: View, histories: Mapping[str, Mapping[str, Any]] | None = None,
                     carry: dict[str, Any] | None = None) -> Figure:
    """Top: cosine of each rule's update with the exact gradient. Bottom: the rule's own
    prediction losses (apical, J̃), log scale. Smoothed in the loss's blocks."""
    histories = histories or {}
    runs = _runs_by_id(view)
    data = []
    for slot in alignment_slots(view):
        kind, rid, *rest = slot.split(":")
        name = rest[0] if rest else ""
        run = runs[rid]
        hist = histories.get(rid) or {}
        series = _series(hist, kind, name)
        state = _state(_carry(carry).setdefault(rid, initial_carry()), kind, name)
        xs, _raw, smooth = fold_history(hist.get("step") or [], _finite(series.get("mean") or []),
                                        run["stride"], run["tau"], state,
                                        final=not moving(run)) if series else ([], [], [])
        data.append(_trace(view, run, kind, name, xs, smooth))
    layout = _base_layout(view, height=360)
    top, bottom = _stack_domains([1, 1], 0.14)
    layout["yaxis"] = _axis(view, "cos(update, exact)", domain=top, range=[-0.25, 1.05],
                            anchor="x", zeroline=True, zerolinewidth=1.5)
    layout["xaxis"] = _axis(view, "", anchor="y", matches="x2", showticklabels=False)
    layout["yaxis2"] = _axis(view, "rule's prediction loss", domain=bottom, type="log", anchor="x2")
    layout["xaxis2"] = _axis(view, "step", anchor="y2")
    layout["meta"]["shade"] = _shade(view, "x2", 0.0, 1.0)
    if view["runs"] and not any(run["alignment"] for run in view["runs"]):
        how = ("Tick <b>measure alignment</b> under Network and press ↺ Reset:<br>an exact "
               "gradient (RTRL) then runs beside the rule." if view.get("align_supported", True)
               else "This server's run service does not offer it yet (the simulator's "
                    "<br><i>python -m simulator run --align</i> does); the panel fills in "
                    "once it does.")
        layout["annotations"].append({
            **_empty_note(view, "Gradient alignment is off for these runs.<br>" + how),
            "y": sum(top) / 2})
    if view["runs"] and not any(run["diagnostics"] for run in view["runs"]):
        layout["annotations"].append({
            **_empty_note(view, "this rule reports no prediction losses<br>"
                                "(DNI-family rules report apical and J̃ losses)"),
            "y": sum(bottom) / 2})
    if not view["runs"]:
        layout["annotations"].append(_empty_note(view, "alignment appears when a run steps"))
    protocols = [alignment_protocol(run, list((histories.get(run["id"]) or {}).get("step") or []))
                 for run in view["runs"] if run["alignment"]]
    if protocols:
        layout["annotations"].append({
            "xref": "paper", "yref": "paper", "x": 0.0, "y": top[1], "xanchor": "left",
            "yanchor": "bottom", "showarrow": False, "align": "left", "name": "protocol",
            "text": "<br>".join(protocols), "font": {**_font(view, 11), "color": MUTED}})
    layout["annotations"] += _phase_legend(view)
    return {"data": data, "layout": layout}


slots = alignment_slots


def figure(view: View, histories: Mapping[str, Mapping[str, Any]] | None,
           recent: Mapping[str, Sequence[Mapping[str, Any]]] | None,
           carry: dict[str, Any]) -> Figure:
    return alignment_figure(view, histories, carry)


def tick(view: View, frames_by_run: Mapping[str, Sequence[Mapping[str, Any]]],
         carry: dict[str, Any], ext: _Extend) -> dict[str, Any]:
    """New smoothed points of every alignment, comparison and diagnostic trace."""
    runs = _runs_by_id(view)
    for slot in alignment_slots(view):
        kind, rid, *rest = slot.split(":")
        name = rest[0] if rest else ""
        frames = frames_by_run.get(rid) or []
        if not frames:
            continue
        run = runs[rid]
        state = _state(carry.setdefault(rid, initial_carry()), kind, name)
        pts = [p for f in frames for p in bin_points(_series(f, kind, name), int(f.get("t0", 0)))]
        xs, _raw, smooth, tail = fold(pts, run["stride"], run["tau"], state)
        ext.add_tail(slot, xs, smooth, tail and (tail[0], tail[2]), MAX_POINTS)
    return {}
