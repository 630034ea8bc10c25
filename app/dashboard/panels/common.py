"""What every panel shares: the view (what is on screen), colours, fonts and axes, phase
shading, the carry that ticks continue from, and the per-graph extend operation.

Pure functions over plain JSON dicts: nothing here talks to a backend, a browser or Dash.
A *view* (a JSON dict in the browser's ``view-store``, made by :func:`make_view`) says what
is on screen: which runs (each with a colour and a label), which units, which panels, log-y,
presenter scale. Every panel has a *slot list* (``panel.slots(view)``) that fixes the order of
its traces, so a tick's update can name traces by index.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from html import escape
from typing import Any, TypedDict

from app.dashboard.panels.binning import new_series_carry
from app.dashboard.rulefacts import rule_populations
from app.service.status import is_moving

Figure = dict[str, Any]
Ops = dict[str, Any]

#: points kept in the scrolling panels (voltages, task view)
WINDOW = 200
#: target points per loss-like trace over a whole run (the stride is chosen from this)
LOSS_POINTS = 1500
#: bins asked of a run's history for a rebuild: more than the history keeps at its finest
#: covering level, so the panels fold its bins into their own blocks (one binning)
HISTORY_POINTS = 4 * LOSS_POINTS
#: hard cap per growing trace (runs that go on past their target)
MAX_POINTS = 6000
#: at most this many runs show their faint raw loss (beyond that, smoothed only)
RAW_MAX_RUNS = 3
#: (run, unit) pairs in the voltage panel: 3 compartments x 4 = 12 traces at most
MAX_VOLTAGE_PAIRS = 4

POP_ORDER = ("basal", "apical", "jacobian", "readout")
POP_TITLES = {"basal": "basal W", "apical": "apical A", "jacobian": "Jacobian J̃",
              "readout": "readout"}
POP_HOVER = {
    "basal": "basal [W_rec | W_in | b]",
    "apical": "apical [A | A_fb | c]",
    "jacobian": "learned Jacobian J̃",
    "readout": "readout [W_out | b_out]",
}
POP_COLORS = {"basal": "#1f5fa8", "apical": "#c0392b", "jacobian": "#7d3c98", "readout": "#1e8449"}
POP_DASH = {"basal": "solid", "apical": "dot", "jacobian": "dash", "readout": "dashdot"}

#: fixed colours per rule (Okabe-Ito based, readable on a projector); unknown rules get
#: the next free colour of EXTRA_COLORS
RULE_COLORS = {
    "bptt": "#222222",
    "rtrl": "#882255",
    "dni": "#E69F00",
    "dni-b": "#0072B2",
    "output-only": "#9a9a9a",
    "uoro": "#CC79A7",
    "kf-rtrl": "#009E73",
    "r-kf-rtrl": "#44AA99",
    "rflo": "#D55E00",
    "kernl": "#6a3d9a",
}
EXTRA_COLORS = ("#117733", "#AA4499", "#332288", "#999933", "#3B9AB2", "#661100", "#A6761D",
                "#6699CC", "#CC6677", "#44AA99")
UNIT_COLORS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7")
UNIT_DASH = ("solid", "dot", "dash", "dashdot")
PHASE_RGB = ((230, 159, 0), (0, 114, 178), (0, 158, 115), (204, 121, 167), (120, 120, 120),
             (213, 94, 0))
PHASE_COLORS = tuple(f"rgba({r},{g},{b},0.14)" for r, g, b in PHASE_RGB)
DIAG_DASH = ("solid", "dot", "dash", "dashdot")
DIAG_LABELS = {"apical_loss": "apical prediction loss", "jacobian_loss": "J̃ prediction loss"}

FONT = "Inter, 'Segoe UI', 'Helvetica Neue', Arial, sans-serif"
GRID = "#e6e8ec"
INK = "#1d2330"
MUTED = "#6b7280"


class RunView(TypedDict):
    id: str
    rule: str
    label: str
    color: str
    target: int
    stride: int
    tau: float
    n: int
    seeds: list[int]
    pops: list[str]
    diagnostics: list[str]
    alignment: bool
    status: str
    compare: list[str]  # comparison rules measured passively on this run's network


class View(TypedDict, total=False):
    epoch: int
    runs: list[RunView]
    units: list[int]
    seed_index: int
    panels: list[str] | None  # None: every panel (app.dashboard.panels.PANELS)
    log_y: bool
    scale: float
    refs: dict[str, float]
    loss_kind: str
    task_view: dict[str, Any]
    phase_names: list[str]
    phase_run: str | None
    window: int
    align_supported: bool
    phase_steps: list[int]  # the schedule's phase lengths (decides stripes or a strip)
    heat_run: str | None  # the run the weight-change heatmap shows (the picker beside it)


# ---------------------------------------------------------------------------------------------
# colours, labels, strides
# ---------------------------------------------------------------------------------------------
def assign_colors(rules: Sequence[str]) -> list[str]:
    """One colour per run: its rule's colour the first time, a free extra colour after."""
    used: set[str] = set()
    spare = [c for c in EXTRA_COLORS if c not in RULE_COLORS.values()]
    out = []
    for i, rule in enumerate(rules):
        color = RULE_COLORS.get(rule)
        if color is None or color in used:
            free = [c for c in spare if c not in used]
            color = free[0] if free else EXTRA_COLORS[i % len(EXTRA_COLORS)]
        used.add(color)
        out.append(color)
    return out


def compare_color(rule: str) -> str:
    """A comparison rule's line colour: its rule colour, else a fixed extra one."""
    if rule in RULE_COLORS:
        return RULE_COLORS[rule]
    spare = [c for c in EXTRA_COLORS if c not in RULE_COLORS.values()]
    return spare[sum(map(ord, rule)) % len(spare)]



def loss_stride(target_steps: int | None) -> int:
    """Steps per loss point so that a whole run has about LOSS_POINTS points."""
    target = int(target_steps or 0)
    return max(1, target // LOSS_POINTS)


def smoothing_tau(target_steps: int | None) -> float:
    """EMA time constant (steps) of the smoothed loss: ~1/40 of the run, within [20, 5000]."""
    return float(min(5000.0, max(20.0, (target_steps or 0) / 40)))


def run_label(rule: str, run_id: str, variant: str = "") -> str:
    short = run_id[-4:] if len(run_id) > 4 else run_id
    return f"{rule}{' · ' + variant if variant else ''} #{short}"


def guess_populations(rule: str, rule_args: Mapping[str, Any] | None) -> list[str]:
    """The sub-populations a run reports before its first frame (corrected on the first
    frame), from the rule class (app.dashboard.rulefacts)."""
    return rule_populations(rule, rule_args)


def ordered_pops(pops: Iterable[str]) -> list[str]:
    pops = list(dict.fromkeys(pops))
    known = [p for p in POP_ORDER if p in pops]
    return known + [p for p in pops if p not in POP_ORDER]


# ---------------------------------------------------------------------------------------------
# the view
# ---------------------------------------------------------------------------------------------
def make_run_view(info: Mapping[str, Any], color: str, *, variant: str = "",
                  pops: Sequence[str] | None = None,
                  diagnostics: Sequence[str] = (), alignment: bool = False,
                  name: str = "") -> RunView:
    """``name``: the run's name among those shown (app.dashboard.names); without it, the
    rule, the variant and the short id."""
    config = info.get("config") or {}
    target = int(info.get("target_steps") or config.get("steps") or 0)
    rule = str(config.get("rule", "?"))
    return RunView(
        id=str(info["id"]), rule=rule, label=name or run_label(rule, str(info["id"]), variant),
        color=color, target=target, stride=loss_stride(target), tau=smoothing_tau(target),
        n=int(config.get("n", 0) or 0), seeds=[int(s) for s in config.get("seeds") or [0]],
        pops=ordered_pops(pops or guess_populations(rule, config.get("rule_args"))),
        diagnostics=list(diagnostics), alignment=bool(alignment),
        status=str(info.get("status", "")), compare=[str(r) for r in config.get("compare") or []],
    )


def make_view(runs: Sequence[RunView], *, epoch: int, units: Sequence[int] = (0, 1, 2),
              seed_index: int = 0, panels: Sequence[str] | None = None, log_y: bool = True,
              scale: float = 1.0,
              refs: Mapping[str, float] | None = None, loss_kind: str = "cross_entropy",
              task_view: Mapping[str, Any] | None = None,
              phase_names: Sequence[str] = (), phase_run: str | None = None,
              align_supported: bool = True, phase_steps: Sequence[int] = (),
              heat_run: str | None = None) -> View:
    return View(epoch=epoch, runs=list(runs), units=[int(u) for u in units][:4] or [0],
                seed_index=max(0, int(seed_index)),
                panels=None if panels is None else list(panels), log_y=bool(log_y), scale=float(scale),
                refs=dict(refs or {}), loss_kind=loss_kind, task_view=dict(task_view or {}),
                phase_names=list(dict.fromkeys(phase_names)), window=WINDOW,
                phase_run=phase_run or (runs[0]["id"] if runs else None),
                align_supported=bool(align_supported),
                phase_steps=[int(k) for k in phase_steps], heat_run=heat_run)


#: the plot width a stripe is judged at (a 1280-px projector's panel) and the narrowest
#: stripe that still reads as one; narrower phases are drawn as a thin strip at the bottom
PLOT_PX = 800
MIN_STRIPE_PX = 4
STRIP = 0.035  # the strip's height, as a fraction of the shaded height


def phase_strip(view: View) -> bool:
    """True when the shortest phase would be a stripe narrower than MIN_STRIPE_PX on a
    whole-run time axis (100-step phases over 20,000 steps: 4 px; over 50,000: 1.6 px)."""
    lengths = [k for k in view.get("phase_steps") or [] if k > 0]
    target = max((int(r["target"]) for r in view["runs"]), default=0)
    if not lengths or not target:
        return False
    return min(lengths) * PLOT_PX / target < MIN_STRIPE_PX


def _shade(view: View, xref: str, y0: float, y1: float, whole_run: bool = True
           ) -> dict[str, Any]:
    """Where phases are shaded (layout.meta.shade, which plab.js also follows)."""
    if whole_run and phase_strip(view):
        y1 = y0 + STRIP * (y1 - y0)
    return {"xref": xref, "y0": y0, "y1": y1}


def clamp_seed_index(seed_index: Any, seeds: int) -> int:
    """A seed index (the picker's value, None included) within a run of ``seeds`` seeds."""
    return min(max(int(seed_index or 0), 0), max(seeds, 1) - 1)


def shown_seed_index(view: View, run: RunView) -> int:
    """The index (into the run's seeds) of the seed whose voltages and task the panels show."""
    return clamp_seed_index(view.get("seed_index"), len(run.get("seeds") or [0]))


def shown_seed(view: View, run: RunView | None) -> int | None:
    """The seed number shown for a run (None: a view without seeds, show what arrives)."""
    if not run or not run.get("seeds"):
        return None
    return run["seeds"][shown_seed_index(view, run)]


def phase_colors(view: View) -> dict[str, str]:
    return {name: PHASE_COLORS[i % len(PHASE_COLORS)]
            for i, name in enumerate(view.get("phase_names", []))}


def shaded(view: View) -> bool:
    """Phases are shaded only when the schedule has more than one phase."""
    return len(view.get("phase_names", [])) > 1


# ---------------------------------------------------------------------------------------------
# layout helpers
# ---------------------------------------------------------------------------------------------
def _font(view: View, size: float = 13) -> dict[str, Any]:
    return {"family": FONT, "size": round(size * view.get("scale", 1.0)), "color": INK}


def _axis(view: View, title: str = "", **extra: Any) -> dict[str, Any]:
    """An axis as every panel draws it. Redrawn about 10 times a second per panel, so the
    costly parts of Plotly's redraw are off: no automargin (the margins are fixed), no check
    for tick labels past the edge, at most 6 ticks (fewer labels to measure; legible)."""
    axis = {"title": {"text": title, "font": _font(view, 12), "standoff": 6}, "gridcolor": GRID,
            "zerolinecolor": "#c9ccd3", "linecolor": "#c9ccd3", "showline": True,
            "tickfont": _font(view, 11), "automargin": False, "ticklabeloverflow": "allow",
            "nticks": 6}
    axis.update(extra)
    return axis


def _base_layout(view: View, *, height: int, legend: bool = True, **extra: Any) -> dict[str, Any]:
    s = view.get("scale", 1.0)
    layout: dict[str, Any] = {
        "autosize": True,
        "margin": {"l": round(56 * s), "r": round(16 * s), "t": round(30 * s), "b": round(40 * s)},
        "paper_bgcolor": "#ffffff",
        "plot_bgcolor": "#ffffff",
        "font": _font(view),
        # the legend is drawn in HTML by assets/plab.js (meta.legend), once per change of the
        # traces: Plotly would redraw its own at every frame (2-3 ms a graph); exports turn
        # Plotly's back on (assets/export.js), with these settings
        "showlegend": False,
        "legend": {"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 0, "xanchor": "left",
                   "font": _font(view, 11), "bgcolor": "rgba(255,255,255,0.6)"},
        "hovermode": "x",
        "uirevision": f"epoch-{view.get('epoch', 0)}",
        "shapes": [],
        "annotations": [],
        "meta": {"epoch": view.get("epoch", 0), "window": None, "shade": None,
                 "phase_colors": phase_colors(view), "legend": legend},
    }
    layout.update(extra)
    return layout


def phase_shapes(spans: Iterable[Sequence[Any]], colors: Mapping[str, str], shade: Mapping[str, Any]
                 ) -> list[dict[str, Any]]:
    """Background rectangles for phase spans (the same shapes plab.js appends live); spans
    of phases outside the current schedule (before a mid-run change) stay unshaded."""
    return [{"type": "rect", "name": f"phase:{name}", "layer": "below", "line": {"width": 0},
             "fillcolor": colors[name], "xref": shade["xref"],
             "yref": "paper", "x0": start - 0.5, "x1": stop - 0.5, "y0": shade["y0"],
             "y1": shade["y1"]}
            for start, stop, name in spans if name in colors]


def _esc(text: Any) -> str:
    """Text for Plotly's labels, which render a subset of HTML (links, styles): escaped, so a
    run label or a phase name shows as typed. Plotly decodes the entities back."""
    return escape(str(text), quote=True)


def _phase_legend(view: View, y: float = 1.0) -> list[dict[str, Any]]:
    if not shaded(view):
        return []
    names = view.get("phase_names", [])
    parts = [f"<span style='color:rgb{PHASE_RGB[i % len(PHASE_RGB)]}'>■</span> {_esc(name)}"
             for i, name in enumerate(names)]
    return [{"xref": "paper", "yref": "paper", "x": 1, "y": y, "xanchor": "right",
             "yanchor": "bottom", "showarrow": False, "text": "phases: " + "  ".join(parts),
             "font": _font(view, 11)}]


def _empty_note(view: View, text: str) -> dict[str, Any]:
    return {"xref": "paper", "yref": "paper", "x": 0.5, "y": 0.5, "showarrow": False,
            "text": text, "font": {**_font(view, 13), "color": MUTED}}


def _line(name: str, color: str, *, width: float = 2.0, dash: str = "solid", opacity: float = 1.0,
          x: list | None = None, y: list | None = None, legend: bool = True, group: str = "",
          xaxis: str = "x", yaxis: str = "y", shape: str = "linear", mode: str = "lines",
          **extra: Any) -> dict[str, Any]:
    trace = {"type": "scatter", "mode": mode, "name": _esc(name), "x": list(x or []), "y": list(y or []),
             "line": {"color": color, "width": width, "dash": dash, "shape": shape},
             "opacity": opacity, "showlegend": legend, "xaxis": xaxis, "yaxis": yaxis,
             "hoverlabel": {"namelength": -1}}
    if group:
        trace["legendgroup"] = group
    trace.update(extra)
    return trace


def _runs_by_id(view: View) -> dict[str, RunView]:
    return {run["id"]: run for run in view["runs"]}


def _stack_domains(weights: Sequence[float], gap: float = 0.07) -> list[list[float]]:
    """Vertical domains (top to bottom) for rows with relative heights ``weights``."""
    total = 1.0 - gap * (len(weights) - 1)
    out, top = [], 1.0
    for w in weights:
        h = total * w / sum(weights)
        out.append([max(0.0, top - h), top])
        top -= h + gap
    return out


def _carry(carry: dict[str, Any] | None) -> dict[str, Any]:
    """The caller's carry dict (even when empty), or a throwaway one."""
    return carry if carry is not None else {}


def initial_carry() -> dict[str, Any]:
    return {"loss": new_series_carry(), "align": new_series_carry(), "diag": {},
            "trace_t": None, "task_t": None, "norm_b": None, "spans": None}


def _close_block(state: dict[str, Any]) -> None:
    """After a history back-fill no block is open; the next point starts a new one."""
    state["b"], state["s"], state["w"] = None, 0.0, 0.0


# ---------------------------------------------------------------------------------------------
# per-frame extraction (shared by figure back-fill and ticks)
# ---------------------------------------------------------------------------------------------
def _append(points: dict[str, tuple[list, list]], key: str, xs: Iterable[Any], ys: Iterable[Any],
            restart: bool = False) -> None:
    """Add points to a trace; ``restart``: the steps jumped (frames skipped steps), so the
    scrolling window starts over (key ``!key`` marks that for the client)."""
    if restart:
        points[key] = ([], [])
        points["!" + key] = ([], [])
    px, py = points.setdefault(key, ([], []))
    px.extend(xs)
    py.extend(ys)


def _window_steps(steps: Sequence[int], last: int | None) -> tuple[list[Any], bool]:
    """Steps of a trace window, and whether a gap (a None point) must precede them."""
    gap = last is not None and bool(steps) and steps[0] != last + 1
    return list(steps), gap


# ---------------------------------------------------------------------------------------------
# ticks
# ---------------------------------------------------------------------------------------------
class _Extend:
    """Collects new points per trace index for one graph."""

    def __init__(self, slots: Sequence[str]) -> None:
        self.index = {key: i for i, key in enumerate(slots)}
        self.points: dict[int, tuple[list, list, int]] = {}
        self.restart: set[int] = set()
        self.tails: set[int] = set()

    def add(self, key: str, xs: Sequence[Any], ys: Sequence[Any], limit: int) -> None:
        if key.startswith("!"):
            if key[1:] in self.index:
                self.restart.add(self.index[key[1:]])
            return
        i = self.index.get(key)
        if i is None or not xs:
            return
        px, py, _ = self.points.setdefault(i, ([], [], limit))
        px.extend(xs)
        py.extend(ys)

    def add_tail(self, key: str, xs: list[int], ys: list[float],
                 tail: tuple[int, float] | None, limit: int) -> None:
        """Completed points, then the provisional tail point (replaced next tick)."""
        if tail is not None:
            xs, ys = [*xs, tail[0]], [*ys, tail[1]]
        self.add(key, xs, ys, limit)
        if tail is not None and key in self.index:
            self.tails.add(self.index[key])

    def op(self) -> dict[str, Any] | None:
        if not self.points:
            return None
        idx = sorted(self.points)
        op = {"idx": idx, "x": [self.points[i][0][-self.points[i][2]:] for i in idx],
              "y": [self.points[i][1][-self.points[i][2]:] for i in idx],
              "max": [self.points[i][2] for i in idx]}
        if self.restart:
            op["restart"] = [i in self.restart for i in idx]
        if self.tails:
            op["tail"] = [i in self.tails for i in idx]
        return op


def moving(run: RunView) -> bool:
    """The run can still produce frames (its block still filling); the one place the
    panels read a run's status (the service's typed status)."""
    return is_moving(run.get("status", ""))
