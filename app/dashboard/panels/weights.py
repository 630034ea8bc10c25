"""The weight panel: one heatmap of a run's weight change per sub-population over the last
window (the run picked beside it, by name), and the weight norms of every run over time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dash import dcc, html

from app.dashboard.panels.common import (
    MAX_POINTS,
    POP_COLORS,
    POP_DASH,
    POP_TITLES,
    Figure,
    RunView,
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
    initial_carry,
    ordered_pops,
)

NAME = "weights"
GRAPH = "weight-change-graph"
TITLE = "Weight changes"
TAB = "Weights"
NOTES = (
    "How each synaptic sub-population changed over the last update window (red: grew, "
    "blue: shrank; each map has its own symmetric colour range; hover for values). "
    "Basal: recurrent | input | bias columns. Below: the size ‖W‖ of each population.",
    "Look for: during a phase only that phase's populations change; apical A and J̃ "
    "settle while the basal weights keep moving.",
)


def tools() -> list[Any]:
    """The panel head's tools: whose weight changes the heatmap shows."""
    return [html.Span("run", className="tlabel"),
            dcc.Dropdown(id="heat-run", options=[], value=None, clearable=False,
                         searchable=False, className="dropdown heat-run",
                         placeholder="first run")]


def focus_run(view: View) -> RunView | None:
    """The run whose weight changes the heatmap shows: the one picked, else the first."""
    for run in view["runs"]:
        if run["id"] == view.get("heat_run"):
            return run
    return view["runs"][0] if view["runs"] else None


def norm_pops(view: View, run: RunView) -> list[str]:
    if len(view["runs"]) == 1:
        return list(run["pops"])
    return [p for p in run["pops"] if p != "readout"]


def weight_slots(view: View) -> list[str]:
    focus = focus_run(view)
    if focus is None:
        return []
    slots = ["hm"]
    for run in view["runs"]:
        slots += [f"norm:{run['id']}:{pop}" for pop in norm_pops(view, run)]
    return slots


def _splits(pop: str, cols: int, n: int) -> list[int]:
    """Column widths of a population's blocks: [W_rec | W_in | b] for basal, [A | A_fb | c]
    for apical, [W_out | b] for the readout (exact only when the matrix was not shrunk)."""
    if n <= 0 or cols > 64 or pop == "jacobian":
        return [cols]
    if cols == n + 1:
        return [n, 1]
    if cols > n + 1:
        return [n, cols - n - 1, 1]
    return [cols]


def combine_matrices(pops: Sequence[str], mats: Mapping[str, tuple[list, float]], n: int
                     ) -> tuple[list[list[float | None]], list[tuple[str, float, float]]]:
    """One heatmap of every population's weight change, side by side, each divided by its
    own max |ΔW| (so each block spans the colour scale) with blank columns between blocks
    (and between the recurrent, input and bias parts); thin matrices (the readout) repeat
    their rows to fill the height. Returns (z, [(pop, centre column, max |ΔW|)])."""
    present = [p for p in pops if p in mats and mats[p][0] and mats[p][0][0]]
    if not present:
        return [[None]], []
    height = max(len(mats[p][0]) for p in present)
    columns: list[list[float | None]] = []  # column-major while building
    blocks = []
    for k, pop in enumerate(present):
        m, a = mats[pop]
        scale = 1.0 / a if a else 0.0
        rows = len(m)
        rep = max(1, height // rows)
        first = len(columns)
        col = 0
        for j, width in enumerate(_splits(pop, len(m[0]), n)):
            if j:
                columns.append([None] * height)
            for c in range(col, col + width):
                values = [m[r // rep][c] * scale if r // rep < rows and m[r // rep][c] is not None
                          else None for r in range(height)]
                columns.append([None if v is None else round(v, 3) for v in values])
            col += width
        blocks.append((pop, (first + len(columns) - 1) / 2, a))
        if k < len(present) - 1:
            columns.append([None] * height)
            columns.append([None] * height)
    z = [[columns[c][r] for c in range(len(columns))] for r in range(height)]
    return z, blocks


def _block_titles(blocks: Sequence[tuple[str, float, float]]) -> list[tuple[str, float]]:
    return [(f"<b>{POP_TITLES.get(pop, pop)}</b>  {a:.1e}", centre) for pop, centre, a in blocks]


HEAT_DOMAIN = [0.50, 0.90]


def block_title_ticks(titles: Sequence[tuple[str, float]]) -> dict[str, Any]:
    """The heatmap's top axis: a tick label per block (its title) at the block's centre."""
    return {"tickmode": "array", "tickvals": [x for _text, x in titles],
            "ticktext": [text for text, _x in titles]}


def weight_figure(view: View, recent: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
                  carry: dict[str, Any] | None = None) -> Figure:
    """One heatmap of the focus run's weight change per sub-population over the last
    window (each block scaled to its own max |ΔW|, shown in its title), and the weight norms
    of every run over time."""
    focus = focus_run(view)
    recent = recent or {}
    data: list[dict[str, Any]] = []
    layout = _base_layout(view, height=400)
    if focus is None:
        layout["annotations"].append(_empty_note(view, "weight changes appear when a run steps"))
        layout["xaxis"], layout["yaxis"] = _axis(view), _axis(view)
        return {"data": data, "layout": layout}
    mats = _last_matrices(recent.get(focus["id"], []))
    z, blocks = combine_matrices(focus["pops"], mats, focus["n"])
    data.append({
        "type": "heatmap", "name": "ΔW", "z": z, "zmin": -1, "zmax": 1, "zmid": 0,
        "colorscale": "RdBu", "reversescale": True, "showscale": False, "hoverongaps": False,
        "showlegend": False, "xgap": 0, "ygap": 0,
        "hovertemplate": "ΔW / max|ΔW| of its block: %{z:.2f}<br>post %{y}<extra></extra>"})
    # whose weights these are (the axis title, in the run's colour) and each block's title
    # (its tick labels) on the heatmap's top axis: annotations would be rebuilt at every redraw
    layout["xaxis"] = _axis(view, f"<b>ΔW of {_esc(focus['label'])}</b>", anchor="y",
                            side="top", showgrid=False, zeroline=False, ticks="", showline=False,
                            **block_title_ticks(_block_titles(blocks)),
                            tickfont=_font(view, 11.5))
    layout["xaxis"]["title"]["font"] = {**_font(view, 12.5), "color": focus["color"]}
    layout["yaxis"] = _axis(view, "", domain=HEAT_DOMAIN, anchor="x", autorange="reversed",
                            showticklabels=False, showgrid=False, zeroline=False, ticks="",
                            showline=False)
    single = len(view["runs"]) == 1
    pre = _norm_points(view, recent, carry)
    for run in view["runs"]:
        for pop in norm_pops(view, run):
            color = POP_COLORS.get(pop, "#555") if single else run["color"]
            dash = "solid" if single else POP_DASH.get(pop, "solid")
            name = f"‖{pop}‖" if single else f"{run['label']} ‖{pop}‖"
            xs, ys = pre.get(f"norm:{run['id']}:{pop}", ([], []))
            data.append(_line(name, color, width=2, dash=dash, x=xs, y=ys, xaxis="x2",
                              yaxis="y2", group=run["id"],
                              hovertemplate=f"‖{pop}‖ %{{y:.3f}}<extra>{_esc(run['label'])}</extra>"))
    # no axis lines on the norm subplot: Plotly drew them from NaN ("MNaN,NaNHNaN", a console
    # error at every run start) while the subplot had no point yet; the grid marks the axes
    layout["xaxis2"] = _axis(view, "step", anchor="y2", showline=False)
    layout["yaxis2"] = _axis(view, "‖W‖", domain=[0, 0.36], anchor="x2", showline=False)
    layout["legend"].update(orientation="h", y=-0.16, yanchor="top", x=0.0)
    layout["margin"]["b"] = round(70 * view.get("scale", 1.0))
    layout["meta"]["shade"] = _shade(view, "x2", 0.0, 0.36)
    layout["annotations"] += _phase_legend(view, y=0.37)
    return {"data": data, "layout": layout}


def _norm_points(view: View, frames_by_run: Mapping[str, Sequence[Mapping[str, Any]]],
                 carry: dict[str, Any] | None) -> dict[str, tuple[list, list]]:
    """Weight norms, at most one point per loss stride per run."""
    points: dict[str, tuple[list, list]] = {}
    runs = _runs_by_id(view)
    for rid, frames in frames_by_run.items():
        run = runs.get(rid)
        if run is None:
            continue
        state = _carry(carry).setdefault(rid, initial_carry())
        pops = norm_pops(view, run)
        for frame in frames:
            norms = frame.get("weight_norm") or {}
            t1 = int(frame.get("t1", frame.get("step", 0)))
            block = t1 // run["stride"]
            if state.get("norm_b") is not None and block == state["norm_b"]:
                continue
            state["norm_b"] = block
            for pop in pops:
                if pop in norms and norms[pop] is not None:
                    _append(points, f"norm:{rid}:{pop}", [t1], [norms[pop]])
    return points


def _last_matrices(frames: Sequence[Mapping[str, Any]]) -> dict[str, tuple[list, float]]:
    """Sum of the weight-change matrices over these frames (the change over their window),
    per population, with the largest absolute entry (for a symmetric colour range)."""
    sums: dict[str, list[list[float]]] = {}
    for frame in frames:
        for pop, entry in (frame.get("weight_change") or {}).items():
            m = entry.get("matrix")
            if not m:
                continue
            acc = sums.get(pop)
            if acc is None or len(acc) != len(m) or len(acc[0]) != len(m[0]):
                sums[pop] = [[v or 0.0 for v in row] for row in m]
            else:
                for ra, rm in zip(acc, m, strict=True):
                    for j, v in enumerate(rm):
                        if v is not None:
                            ra[j] += v
    out = {}
    for pop, m in sums.items():
        a = max((abs(v) for row in m for v in row), default=0.0)
        out[pop] = (m, a)
    return out


def populations_changed(view: View, frames_by_run: Mapping[str, Sequence[Mapping[str, Any]]]
                        ) -> bool:
    """True when a frame reports sub-populations the view did not expect (rebuild)."""
    runs = _runs_by_id(view)
    for rid, frames in frames_by_run.items():
        run = runs.get(rid)
        for frame in frames[-1:]:
            pops = frame.get("weight_change")
            if run is not None and pops and ordered_pops(pops) != run["pops"]:
                return True
    return False


slots = weight_slots


def figure(view: View, histories: Mapping[str, Mapping[str, Any]] | None,
           recent: Mapping[str, Sequence[Mapping[str, Any]]] | None,
           carry: dict[str, Any]) -> Figure:
    return weight_figure(view, recent, carry)


def tick(view: View, frames_by_run: Mapping[str, Sequence[Mapping[str, Any]]],
         carry: dict[str, Any], ext: _Extend) -> dict[str, Any]:
    """New norm points; the picked run's latest weight change and its block titles."""
    for key, (xs, ys) in _norm_points(view, frames_by_run, carry).items():
        ext.add(key, xs, ys, MAX_POINTS)
    focus = focus_run(view)
    if focus is None or not frames_by_run.get(focus["id"]):
        return {}
    z, blocks = combine_matrices(focus["pops"], _last_matrices(frames_by_run[focus["id"]]),
                                 focus["n"])
    if not blocks:
        return {}
    return {"set": [{"i": 0, "z": z}],
            "titles": [{"i": k, "text": text, "x": x}
                       for k, (text, x) in enumerate(_block_titles(blocks))]}
