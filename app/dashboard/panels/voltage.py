"""The voltage panel: basal V, apical U and rate r of the chosen units (of the seed picked
beside them), one row each, a scrolling window of the last WINDOW steps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dash import dcc, html

from app.dashboard.panels.common import (
    MAX_VOLTAGE_PAIRS,
    UNIT_COLORS,
    UNIT_DASH,
    WINDOW,
    Figure,
    View,
    _append,
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
    _window_steps,
    initial_carry,
    shown_seed,
)

NAME = "voltage"
GRAPH = "voltage-graph"
TITLE = "Compartment voltages"
TAB = "Voltages"
NOTES = (
    "Each unit is a neuron with two compartments. The basal voltage V drives its rate "
    "r = tanh(V). The apical voltage U does not drive the cell: it is a synthetic "
    "gradient, the unit's prediction of how its rate affects future loss. U is the "
    "learning signal of the basal synapses: ΔW ∝ −U · gain · presynaptic rate.",
    "Look for: U starting flat and growing as the apical synapses learn. Rules "
    "without an apical compartment show U = 0.",
)


def tools() -> list[Any]:
    """The panel head's tools: which units, which seed."""
    units = dcc.Dropdown(id="units", options=[{"label": f"unit {i}", "value": i} for i in range(32)],
                         value=[0, 1, 2], multi=True, className="dropdown units",
                         placeholder="units", searchable=True)
    # which seed of an ensemble the voltage and task panels show (losses average over seeds)
    seed = dcc.Dropdown(id="seed-index", options=[{"label": "seed 0", "value": 0}], value=0,
                        clearable=False, searchable=False, className="dropdown seed")
    return [html.Span("units", className="tlabel"), units, html.Span("seed", className="tlabel"),
            seed]


def voltage_pairs(view: View) -> list[tuple[str, int]]:
    """(run id, unit) pairs drawn: all chosen units of one run, fewer per run in a race."""
    runs = view["runs"]
    if not runs:
        return []
    units = view.get("units") or [0]
    per_run = max(1, MAX_VOLTAGE_PAIRS // len(runs))
    pairs = [(run["id"], u) for run in runs for u in units[:per_run] if u < max(run["n"], 1)]
    return pairs[:MAX_VOLTAGE_PAIRS]


def voltage_cap_note(view: View) -> str:
    """"showing 1 of 3 units per run" when a race leaves room for fewer units than chosen."""
    runs, units = view["runs"], list(view.get("units") or [0])
    if not runs:
        return ""
    per_run = max(1, MAX_VOLTAGE_PAIRS // len(runs))
    if per_run >= len(units):
        return ""
    return (f"showing {per_run} of {len(units)} units per run "
            f"(at most {MAX_VOLTAGE_PAIRS} lines)")


COMPARTMENTS = (("V", "basal V"), ("U", "apical U"), ("r", "rate r"))


def voltage_slots(view: View) -> list[str]:
    return [f"{comp}:{rid}:{u}" for comp, _ in COMPARTMENTS for rid, u in voltage_pairs(view)]


def voltage_figure(view: View, recent: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
                   carry: dict[str, Any] | None = None) -> Figure:
    """Basal V, apical U and rate r of the chosen units, one row each, a scrolling window."""
    pairs = voltage_pairs(view)
    runs = _runs_by_id(view)
    single = len(view["runs"]) == 1
    data = []
    pre = _traces_points(view, recent or {}, carry)
    domains = _stack_domains([1, 1, 1], 0.06)
    for row, (comp, title) in enumerate(COMPARTMENTS):
        ax = "" if row == 0 else str(row + 1)
        for k, (rid, unit) in enumerate(pairs):
            run = runs[rid]
            color = UNIT_COLORS[k % 4] if single else run["color"]
            dash = "solid" if single else UNIT_DASH[view["units"].index(unit) % 4]
            name = f"unit {unit}" if single else f"{run['label']} · unit {unit}"
            xs, ys = pre.get(f"{comp}:{rid}:{unit}", ([], []))
            data.append(_line(name, color, width=1.8 if comp != "U" else 2.2, dash=dash, x=xs, y=ys,
                              legend=row == 0, group=f"{rid}:{unit}", xaxis=f"x{ax}",
                              yaxis=f"y{ax}", hovertemplate=f"{title} %{{y:.3f}}<extra>{_esc(name)}</extra>"))
    layout = _base_layout(view, height=380)
    for row, (_comp, title) in enumerate(COMPARTMENTS):
        ax = "" if row == 0 else str(row + 1)
        extra: dict[str, Any] = {"domain": domains[row], "anchor": f"x{ax}"}
        if _comp == "r":
            extra["range"] = [-1.05, 1.05]
        layout[f"yaxis{ax}"] = _axis(view, title, zeroline=True, **extra)
        layout[f"xaxis{ax}"] = _axis(view, "step" if row == 2 else "", anchor=f"y{ax}",
                                     showticklabels=row == 2,
                                     **({"matches": "x"} if row else {}))
    layout["meta"].update(window=view.get("window", WINDOW),
                          shade=_shade(view, "x", 0.0, 1.0, whole_run=False))
    layout["annotations"] += _phase_legend(view)
    if not pairs:
        layout["annotations"].append(_empty_note(view, "voltages appear when a run steps"))
    capped = voltage_cap_note(view)
    if capped:
        layout["annotations"].append({
            "xref": "paper", "x": 1.0, "xanchor": "right", "yref": "paper", "y": 1.0,
            "yanchor": "bottom", "showarrow": False, "text": capped, "name": "cap",
            "font": {**_font(view, 11), "color": "#b54708"}})
    return {"data": data, "layout": layout}


def _traces_points(view: View, frames_by_run: Mapping[str, Sequence[Mapping[str, Any]]],
                   carry: dict[str, Any] | None) -> dict[str, tuple[list, list]]:
    points: dict[str, tuple[list, list]] = {}
    pairs = voltage_pairs(view)
    runs = _runs_by_id(view)
    for rid, frames in frames_by_run.items():
        state = _carry(carry).setdefault(rid, initial_carry())
        units = [u for r, u in pairs if r == rid]
        seed = shown_seed(view, runs.get(rid))
        for frame in frames:
            tr = frame.get("traces")
            if not tr or not tr.get("step") or (seed is not None and tr.get("seed", seed) != seed):
                continue  # nothing, or another seed's (frames made before a seed change)
            steps, gap = _window_steps(tr["step"], state.get("trace_t"))
            state["trace_t"] = steps[-1]
            for unit in units:
                if unit not in tr.get("units", []):
                    continue
                j = tr["units"].index(unit)
                for comp, _ in COMPARTMENTS:
                    _append(points, f"{comp}:{rid}:{unit}", steps, tr[comp][j], gap)
    return points


slots = voltage_slots


def figure(view: View, histories: Mapping[str, Mapping[str, Any]] | None,
           recent: Mapping[str, Sequence[Mapping[str, Any]]] | None,
           carry: dict[str, Any]) -> Figure:
    return voltage_figure(view, recent, carry)


def tick(view: View, frames_by_run: Mapping[str, Sequence[Mapping[str, Any]]],
         carry: dict[str, Any], ext: _Extend) -> dict[str, Any]:
    for key, (xs, ys) in _traces_points(view, frames_by_run, carry).items():
        ext.add(key, xs, ys, view.get("window", WINDOW))
    return {}
