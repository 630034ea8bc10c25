"""Pure functions: run info, whole-run history and telemetry frames -> Plotly figures and
per-tick updates. Nothing here talks to a backend, a browser or Dash.

Figures are plain JSON dicts (``{"data": [...], "layout": {...}}``): building them is fast,
they are easy to test, and Dash sends them as they are.

A *view* (a JSON dict in the browser's ``view-store``, made by :func:`make_view`) says what
is on screen: which runs (each with a colour and a label), which units, which panels, log-y,
presenter scale. Every panel has a *slot list* (``loss_slots(view)`` ...) that fixes the
order of its traces, so a tick's update can name traces by index.

A tick (:func:`tick_ops`) turns the frames that arrived since the client's cursor into
small per-graph operations that ``assets/plab.js`` applies with one redraw per graph:

    {"extend": {"idx": [...], "x": [[...]], "y": [[...]], "max": [...]},   new points
     "set": [{"i": trace, "z": ..., "zmin": ..., "zmax": ...}],            heatmap contents
     "spans": [[start, stop, phase], ...]}                                 phase shading

Work per tick is proportional to the new frames, never to the run's history. Long runs stay
light: the loss is re-binned to a stride that keeps a whole run near ``LOSS_POINTS`` points
per trace, and the scrolling panels keep the last ``WINDOW`` points.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from html import escape
from typing import Any, TypedDict

Figure = dict[str, Any]
Ops = dict[str, Any]

#: points kept in the scrolling panels (voltages, task view)
WINDOW = 200
#: target points per loss-like trace over a whole run (the stride is chosen from this)
LOSS_POINTS = 1500
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
EXTRA_COLORS = ("#117733", "#AA4499", "#332288", "#999933", "#88CCEE", "#661100", "#DDCC77",
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
    panels: list[str]
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


def alignment_protocol(run: RunView, steps: Sequence[int]) -> str:
    """What the alignment panel shows for a run: its own training, and, for comparison
    rules, a passive measurement on its network over the steps shown."""
    text = f"{run['label']}: own training"
    if run.get("compare"):
        live = run["status"] in ("ready", "running", "paused") or not steps
        span = "now" if live else f"{steps[-1]:,}"
        text += (f" · {', '.join(run['compare'])}: passive on {run['rule']}'s network, "
                 f"steps 0–{span}")
    return text


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
    frame): basal and readout always, apical for apical rules, J̃ when it is learned."""
    args = dict(rule_args or {})
    pops = ["basal"]
    if "lr_apical" in args:
        pops.append("apical")
    if args.get("jacobian") == "learned":
        pops.append("jacobian")
    pops.append("readout")
    return pops


def ordered_pops(pops: Iterable[str]) -> list[str]:
    pops = list(dict.fromkeys(pops))
    known = [p for p in POP_ORDER if p in pops]
    return known + [p for p in pops if p not in POP_ORDER]


# ---------------------------------------------------------------------------------------------
# the view
# ---------------------------------------------------------------------------------------------
DEFAULT_PANELS = ("loss", "voltage", "weights", "alignment", "task")


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
              seed_index: int = 0, panels: Sequence[str] = DEFAULT_PANELS, log_y: bool = True,
              scale: float = 1.0,
              refs: Mapping[str, float] | None = None, loss_kind: str = "cross_entropy",
              task_view: Mapping[str, Any] | None = None,
              phase_names: Sequence[str] = (), phase_run: str | None = None,
              align_supported: bool = True, phase_steps: Sequence[int] = (),
              heat_run: str | None = None) -> View:
    return View(epoch=epoch, runs=list(runs), units=[int(u) for u in units][:4] or [0],
                seed_index=max(0, int(seed_index)),
                panels=list(panels), log_y=bool(log_y), scale=float(scale),
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
# slots: the trace order of each panel
# ---------------------------------------------------------------------------------------------
def show_raw(view: View) -> bool:
    return len(view["runs"]) <= RAW_MAX_RUNS


def loss_slots(view: View) -> list[str]:
    slots = []
    for run in view["runs"]:
        if show_raw(view):
            slots.append(f"raw:{run['id']}")
        slots += [f"smooth:{run['id']}", f"test:{run['id']}"]
    return slots


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


def alignment_slots(view: View) -> list[str]:
    slots = [f"align:{run['id']}" for run in view["runs"]]
    for run in view["runs"]:
        slots += [f"cmp:{run['id']}:{rule}" for rule in run.get("compare") or []]
    for run in view["runs"]:
        slots += [f"diag:{run['id']}:{name}" for name in run["diagnostics"]]
    return slots


def task_channels(view: View) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """(input (index, name) pairs, output pairs) to draw, from the task's view hints; the
    frames carry at most 4 channels of each."""
    tv = view.get("task_view") or {}

    def pick(names_key: str, index_key: str) -> list[tuple[int, str]]:
        names = tv.get(names_key)
        count = names if isinstance(names, int) else len(names or []) or 1
        labels = list(names) if isinstance(names, list) else [f"{names_key[:-1]} {i}"
                                                              for i in range(count)]
        index = tv.get(index_key) or list(range(min(count, 4)))
        limit = 4 if names_key == "inputs" else (4 if len(view["runs"]) <= 1 else 2)
        index = [i for i in index if 0 <= i < 4][:limit]
        return [(i, labels[i] if i < len(labels) else f"{names_key[:-1]} {i}") for i in index]

    return pick("inputs", "input_index"), pick("outputs", "output_index")


def task_slots(view: View) -> list[str]:
    if not view["runs"]:
        return []
    ins, outs = task_channels(view)
    slots = [f"x:{i}" for i, _ in ins] + [f"y:{o}" for o, _ in outs]
    slots += [f"pred:{run['id']}:{o}" for run in view["runs"] for o, _ in outs]
    return slots


SLOTS = {
    "loss-graph": loss_slots,
    "voltage-graph": voltage_slots,
    "weight-change-graph": weight_slots,
    "alignment-graph": alignment_slots,
    "task-graph": task_slots,
}
PANEL_GRAPHS = {"loss": "loss-graph", "voltage": "voltage-graph", "weights": "weight-change-graph",
                "alignment": "alignment-graph", "task": "task-graph"}


# ---------------------------------------------------------------------------------------------
# binning and smoothing (pure, carried across ticks in the client's cursor store)
# ---------------------------------------------------------------------------------------------
def new_series_carry() -> dict[str, Any]:
    return {"b": None, "s": 0.0, "w": 0.0, "t": None, "ema": None, "ew": 0.0, "et": None}


def bin_points(series: Mapping[str, Any] | None, t0: int) -> list[tuple[int, float, float]]:
    """(last step, mean, weight in steps) of each bin of a frame's binned series; empty or
    non-finite bins are skipped."""
    if not series:
        return []
    out, prev = [], t0 - 1
    for step, mean in zip(series.get("step", []), series.get("mean", []), strict=False):
        weight = max(1, int(step) - prev)
        prev = int(step)
        if mean is not None and math.isfinite(mean):
            out.append((int(step), float(mean), float(weight)))
    return out


def ema_update(carry: dict[str, Any], step: int, value: float, tau: float) -> float:
    """Time-aware, debiased exponential moving average (TensorBoard-style smoothing)."""
    last = carry.get("et")
    gap = 1.0 if last is None else max(1.0, step - last)
    a = 1.0 - math.exp(-gap / max(tau, 1e-9))
    ema = carry.get("ema") or 0.0
    ema = ema * (1 - a) + a * value
    carry["ema"], carry["ew"], carry["et"] = ema, carry.get("ew", 0.0) * (1 - a) + a, step
    return ema / carry["ew"]


def fold(points: Iterable[tuple[int, float, float]], stride: int, tau: float,
         carry: dict[str, Any]) -> tuple[list[int], list[float], list[float],
                                         tuple[int, float, float] | None]:
    """Re-bin (step, mean, weight) points into blocks of ``stride`` steps and smooth them.

    Returns the blocks completed by these points: x (last step of each block), the block
    means (the raw curve) and their EMA (the smoothed curve), and the *tail*: the unfinished
    block as a provisional (x, raw, smooth) point that the client replaces on the next tick
    (so the curve moves every tick while a whole run stays near LOSS_POINTS points). The
    unfinished block stays in ``carry``.
    """
    xs: list[int] = []
    raw: list[float] = []
    smooth: list[float] = []
    for step, mean, weight in points:
        block = step // stride
        if carry["b"] is not None and block != carry["b"] and carry["w"] > 0:
            value = carry["s"] / carry["w"]
            xs.append(int(carry["t"]))
            raw.append(value)
            smooth.append(ema_update(carry, int(carry["t"]), value, tau))
            carry["s"], carry["w"] = 0.0, 0.0
        carry["b"] = block
        carry["s"] += mean * weight
        carry["w"] += weight
        carry["t"] = step
    tail = None
    if carry["w"] > 0:
        value = carry["s"] / carry["w"]
        preview = {k: carry.get(k) for k in ("ema", "ew", "et")}
        tail = (int(carry["t"]), value, ema_update(preview, int(carry["t"]), value, tau))
    return xs, raw, smooth, tail


def smooth_history(steps: Sequence[int], means: Sequence[float | None], tau: float,
                   carry: dict[str, Any]) -> list[float | None]:
    """EMA over a whole-run history (bins of any width), leaving the EMA state in carry."""
    out: list[float | None] = []
    for step, mean in zip(steps, means, strict=False):
        if mean is None or not math.isfinite(mean):
            out.append(None)
            continue
        out.append(ema_update(carry, int(step), float(mean), tau))
        carry["t"] = int(step)
    return out


def merge_spans(spans: Iterable[Sequence[Any]]) -> list[list[Any]]:
    """Join touching [start, stop, name] spans of the same phase."""
    out: list[list[Any]] = []
    for start, stop, name in spans:
        if out and out[-1][2] == name and out[-1][1] >= start:
            out[-1][1] = max(out[-1][1], stop)
        else:
            out.append([int(start), int(stop), str(name)])
    return out


def _finite(values: Iterable[Any]) -> list[float | None]:
    return [None if v is None or not math.isfinite(v) else float(v) for v in values]


def _mean(values: Iterable[Any]) -> float | None:
    vals = [float(v) for v in values if v is not None and math.isfinite(v)]
    return sum(vals) / len(vals) if vals else None


# ---------------------------------------------------------------------------------------------
# layout helpers
# ---------------------------------------------------------------------------------------------
def _font(view: View, size: float = 13) -> dict[str, Any]:
    return {"family": FONT, "size": round(size * view.get("scale", 1.0)), "color": INK}


def _axis(view: View, title: str = "", **extra: Any) -> dict[str, Any]:
    axis = {"title": {"text": title, "font": _font(view, 12), "standoff": 6}, "gridcolor": GRID,
            "zerolinecolor": "#c9ccd3", "linecolor": "#c9ccd3", "showline": True,
            "tickfont": _font(view, 11), "automargin": True}
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
        "showlegend": legend,
        "legend": {"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 0, "xanchor": "left",
                   "font": _font(view, 11), "bgcolor": "rgba(255,255,255,0.6)"},
        "hovermode": "x",
        "uirevision": f"epoch-{view.get('epoch', 0)}",
        "shapes": [],
        "annotations": [],
        "meta": {"epoch": view.get("epoch", 0), "window": None, "shade": None,
                 "phase_colors": phase_colors(view)},
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


# ---------------------------------------------------------------------------------------------
# figures
# ---------------------------------------------------------------------------------------------
def _log10(v: float) -> float:
    return math.log10(v) if v > 0 else 0.0


#: tick values of a log loss axis: decimals at fixed values, so 0.7 never reads as "7"
LOG_TICKS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8,
             1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0, 100.0)
REF_MARGIN = 128  # px on the right of the loss plot for the reference labels


def log_ticks() -> dict[str, Any]:
    """Fixed decimal ticks for a log axis (Plotly shows those inside its range)."""
    return {"tickmode": "array", "tickvals": list(LOG_TICKS),
            "ticktext": [f"{v:g}" for v in LOG_TICKS]}


def loss_figure(view: View, histories: Mapping[str, Mapping[str, Any]] | None = None,
                carry: dict[str, Any] | None = None) -> Figure:
    """Train loss (smoothed, raw faint), test loss, reference levels, phase shading.

    ``histories`` (run id -> backend history) back-fills a run that already has steps;
    ``carry`` (run id -> state) receives the EMA state to continue from.
    """
    histories = histories or {}
    runs = _runs_by_id(view)
    log_y = view.get("log_y", True)
    s = view.get("scale", 1.0)
    data = []
    for slot in loss_slots(view):
        kind, rid = slot.split(":", 1)
        run = runs[rid]
        hist = histories.get(rid) or {}
        steps = list(hist.get("step") or [])
        means = _finite((hist.get("loss") or {}).get("mean") or [])
        if kind == "raw":
            data.append(_line(f"{run['label']} raw", run["color"], width=1, opacity=0.28,
                              x=steps, y=means, legend=False, group=rid,
                              hovertemplate="%{y:.4f}<extra>raw</extra>"))
        elif kind == "smooth":
            state = _carry(carry).setdefault(rid, initial_carry()).setdefault(
                "loss", new_series_carry())
            smooth = smooth_history(steps, means, run["tau"], state)
            data.append(_line(run["label"], run["color"], width=2.6 * min(s, 1.4), x=steps,
                              y=smooth, group=rid,
                              hovertemplate="%{y:.4f}<extra>" + _esc(run["label"]) + "</extra>"))
        else:
            test = hist.get("test_loss") or {}
            data.append(_line(f"{run['label']} test", run["color"], width=1.5, dash="dot",
                              x=list(test.get("step") or []), y=_finite(test.get("mean") or []),
                              mode="lines+markers", legend=False, group=rid,
                              marker={"size": 8 * min(s, 1.4), "symbol": "diamond",
                                      "line": {"color": "white", "width": 1}},
                              hovertemplate="test %{y:.4f}<extra>" + _esc(run["label"]) + "</extra>"))
    unit = "nats" if view.get("loss_kind", "cross_entropy") == "cross_entropy" else "squared error"
    layout = _base_layout(
        view, height=340,
        xaxis=_axis(view, "step", rangemode="tozero"),
        yaxis=_axis(view, f"loss ({unit})", type="log" if log_y else "linear",
                    **(log_ticks() if log_y else {})),
    )
    # reference labels in the right margin, beside their dashed line, never over the curve
    layout["margin"]["r"] = round((REF_MARGIN if view.get("refs") else 16) * s)
    layout["meta"]["shade"] = _shade(view, "x", 0.0, 1.0)
    refs = view.get("refs") or {}
    for label, level in sorted(refs.items(), key=lambda kv: -kv[1]):
        layout["shapes"].append({
            "type": "line", "name": "ref", "xref": "paper", "x0": 0, "x1": 1, "yref": "y",
            "y0": level, "y1": level, "layer": "above",
            "line": {"color": "#5b6270", "width": 1.2, "dash": "dash"}})
        layout["annotations"].append({
            "xref": "paper", "x": 1.0, "xanchor": "left", "xshift": 4, "yref": "y",
            "y": _log10(level) if log_y else level, "yanchor": "middle", "showarrow": False,
            "text": f"{_esc(label)} {level:.2f}", "name": "ref",
            "font": {**_font(view, 10.5), "color": "#4b5260"}})
    source = histories.get(view.get("phase_run") or "") or {}
    spans = merge_spans(source.get("phases") or []) if shaded(view) else []
    layout["shapes"] += phase_shapes(spans, phase_colors(view), layout["meta"]["shade"])
    layout["annotations"] += _phase_legend(view)
    if not view["runs"]:
        layout["annotations"].append(_empty_note(view, "Press ▶ Play to start a run"))
    return {"data": data, "layout": layout}


def _stack_domains(weights: Sequence[float], gap: float = 0.07) -> list[list[float]]:
    """Vertical domains (top to bottom) for rows with relative heights ``weights``."""
    total = 1.0 - gap * (len(weights) - 1)
    out, top = [], 1.0
    for w in weights:
        h = total * w / sum(weights)
        out.append([max(0.0, top - h), top])
        top -= h + gap
    return out


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
    layout["xaxis"] = _axis(view, "", anchor="y", showticklabels=False, showgrid=False,
                            zeroline=False, ticks="", showline=False)
    layout["yaxis"] = _axis(view, "", domain=HEAT_DOMAIN, anchor="x", autorange="reversed",
                            showticklabels=False, showgrid=False, zeroline=False, ticks="",
                            showline=False)
    layout["annotations"].append({  # whose weights these are, in the run's colour
        "xref": "paper", "yref": "paper", "x": 0.0, "y": 1.0, "xanchor": "left",
        "yanchor": "bottom", "showarrow": False, "name": "heat-run",
        "text": f"<b>ΔW of {_esc(focus['label'])}</b>",
        "font": {**_font(view, 12.5), "color": focus["color"]}})
    titles = _block_titles(blocks)
    for k in range(len(focus["pops"])):
        text, x = titles[k] if k < len(titles) else ("", 0.0)
        layout["annotations"].append({
            "xref": "x", "yref": "paper", "x": x, "y": HEAT_DOMAIN[1] + 0.01, "xanchor": "center",
            "yanchor": "bottom", "showarrow": False, "text": text, "font": _font(view, 11.5),
            "name": f"title:{k}"})
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


def alignment_figure(view: View, histories: Mapping[str, Mapping[str, Any]] | None = None,
                     carry: dict[str, Any] | None = None) -> Figure:
    """Top: cosine of each rule's update with the exact gradient. Bottom: the rule's own
    prediction losses (apical, J̃), log scale."""
    histories = histories or {}
    runs = _runs_by_id(view)
    data = []
    for slot in alignment_slots(view):
        parts = slot.split(":")
        run = runs[parts[1]]
        hist = histories.get(run["id"]) or {}
        steps = list(hist.get("step") or [])
        state = _carry(carry).setdefault(run["id"], initial_carry())
        if parts[0] == "align":
            series = hist.get("alignment") or {}
            sm = smooth_history(steps, _finite(series.get("mean") or []), run["tau"],
                                state.setdefault("align", new_series_carry())) if series else []
            data.append(_line(run["label"], run["color"], width=2.4, x=steps if sm else [], y=sm,
                              group=run["id"],
                              hovertemplate="cos %{y:.3f}<extra>" + _esc(run["label"]) + "</extra>"))
        elif parts[0] == "cmp":
            rule = parts[2]
            series = ((hist.get("alignment") or {}).get("compare") or {}).get(rule) or {}
            cmp_state = state.setdefault("cmp", {}).setdefault(rule, new_series_carry())
            sm = smooth_history(steps, _finite(series.get("mean") or []), run["tau"],
                                cmp_state) if series else []
            name = (f"{rule} (passive)" if len(view["runs"]) == 1
                    else f"{rule} (passive on {run['label']})")
            data.append(_line(name, compare_color(rule), width=1.8, dash="dot",
                              x=steps if sm else [], y=sm, group=run["id"],
                              hovertemplate="cos %{y:.3f}<extra>" + _esc(name) + "</extra>"))
        else:
            name = parts[2]
            series = (hist.get("diagnostics") or {}).get(name) or {}
            diag_state = state.setdefault("diag", {}).setdefault(name, new_series_carry())
            sm = smooth_history(steps, _finite(series.get("mean") or []), run["tau"],
                                diag_state) if series else []
            k = run["diagnostics"].index(name)
            label = DIAG_LABELS.get(name, name.replace("_", " "))
            data.append(_line(f"{run['label']} {label}" if len(view["runs"]) > 1 else label,
                              run["color"] if len(view["runs"]) > 1 else UNIT_COLORS[k % 4],
                              width=1.8, dash=DIAG_DASH[k % 4] if len(view["runs"]) > 1 else "solid",
                              x=steps if sm else [], y=sm, xaxis="x2", yaxis="y2",
                              group=run["id"],
                              hovertemplate=label + " %{y:.3g}<extra>" + _esc(run["label"]) + "</extra>"))
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


def task_figure(view: View, recent: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
                carry: dict[str, Any] | None = None) -> Figure:
    """Input (top), target and prediction (bottom) over the recent window."""
    ins, outs = task_channels(view)
    runs = _runs_by_id(view)
    pre = _task_points(view, recent or {}, carry)
    data = []
    tv = view.get("task_view") or {}
    for k, (i, name) in enumerate(ins):
        xs, ys = pre.get(f"x:{i}", ([], []))
        data.append(_line(f"input: {name}", UNIT_COLORS[(k + 2) % 4] if k else "#4b5563",
                          width=1.6, x=xs, y=ys, shape="hv", legend=True,
                          hovertemplate=f"{_esc(name)} %{{y:.2f}}<extra></extra>"))
    for k, (o, name) in enumerate(outs):
        xs, ys = pre.get(f"y:{o}", ([], []))
        data.append(_line(f"target: {name}", "#111111", width=2.2, dash=UNIT_DASH[k % 4],
                          opacity=0.55, x=xs, y=ys, shape="hv", xaxis="x2", yaxis="y2",
                          hovertemplate=f"target {_esc(name)} %{{y:.3f}}<extra></extra>"))
    for slot in task_slots(view):
        if not slot.startswith("pred:"):
            continue
        _, rid, o = slot.split(":")
        run = runs[rid]
        name = dict(outs)[int(o)]
        xs, ys = pre.get(slot, ([], []))
        label = f"prediction: {name}" if len(runs) == 1 else f"{run['label']}: {name}"
        data.append(_line(label, run["color"], width=2.2,
                          dash=UNIT_DASH[[oo for oo, _ in outs].index(int(o)) % 4],
                          x=xs, y=ys, xaxis="x2", yaxis="y2", group=rid,
                          hovertemplate=f"pred {_esc(name)} %{{y:.3f}}<extra>{_esc(run['label'])}</extra>"))
    layout = _base_layout(view, height=320)
    top, bottom = _stack_domains([1, 2.4], 0.08)
    layout["yaxis"] = _axis(view, "input", domain=top, anchor="x")
    layout["xaxis"] = _axis(view, "", anchor="y", matches="x2", showticklabels=False)
    extra = {"range": tv["y_range"]} if tv.get("y_range") else {}
    layout["yaxis2"] = _axis(view, "target / prediction", domain=bottom, anchor="x2", **extra)
    layout["xaxis2"] = _axis(view, "step", anchor="y2")
    layout["meta"].update(window=view.get("window", WINDOW),
                          shade=_shade(view, "x2", 0.0, 1.0, whole_run=False))
    if tv.get("kind") not in (None, "lines"):
        layout["annotations"].append({
            "xref": "paper", "yref": "paper", "x": 0, "y": -0.18, "xanchor": "left",
            "showarrow": False, "text": f"showing the first channels ({tv.get('kind')} task)",
            "font": {**_font(view, 10), "color": MUTED}})
    layout["annotations"] += _phase_legend(view)
    if not view["runs"]:
        layout["annotations"].append(_empty_note(view, "input, target and prediction appear here"))
    return {"data": data, "layout": layout}


BUILDERS = {
    "loss-graph": loss_figure,
    "voltage-graph": voltage_figure,
    "weight-change-graph": weight_figure,
    "alignment-graph": alignment_figure,
    "task-graph": task_figure,
}


def _carry(carry: dict[str, Any] | None) -> dict[str, Any]:
    """The caller's carry dict (even when empty), or a throwaway one."""
    return carry if carry is not None else {}


def initial_carry() -> dict[str, Any]:
    return {"loss": new_series_carry(), "align": new_series_carry(), "diag": {},
            "trace_t": None, "task_t": None, "norm_b": None, "spans": None}


def build_figures(view: View, histories: Mapping[str, Mapping[str, Any]] | None = None,
                  recent: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
                  ) -> tuple[dict[str, Figure], dict[str, Any]]:
    """Every panel's figure for a view (history back-filled, the latest frames in the
    scrolling panels) and the carry that ticks continue from."""
    carry: dict[str, Any] = {run["id"]: initial_carry() for run in view["runs"]}
    figs = {
        "loss-graph": loss_figure(view, histories, carry),
        "voltage-graph": voltage_figure(view, recent, carry),
        "weight-change-graph": weight_figure(view, recent, carry),
        "alignment-graph": alignment_figure(view, histories, carry),
        "task-graph": task_figure(view, recent, carry),
    }
    for run in view["runs"]:
        for key in ("loss", "align"):
            _close_block(carry[run["id"]][key])
        for state in [*carry[run["id"]]["diag"].values(),
                      *carry[run["id"]].get("cmp", {}).values()]:
            _close_block(state)
    return figs, carry


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


def _task_points(view: View, frames_by_run: Mapping[str, Sequence[Mapping[str, Any]]],
                 carry: dict[str, Any] | None) -> dict[str, tuple[list, list]]:
    points: dict[str, tuple[list, list]] = {}
    if not view["runs"]:
        return points
    ins, outs = task_channels(view)
    first = view["runs"][0]["id"]
    runs = _runs_by_id(view)
    for rid, frames in frames_by_run.items():
        state = _carry(carry).setdefault(rid, initial_carry())
        seed = shown_seed(view, runs.get(rid))
        for frame in frames:
            task = frame.get("task")
            if not task or not task.get("step") or (seed is not None and
                                                    task.get("seed", seed) != seed):
                continue
            steps, gap = _window_steps(task["step"], state.get("task_t"))
            state["task_t"] = steps[-1]
            series: list[tuple[str, list]] = []
            if rid == first:
                series += [(f"x:{i}", task["x"][i]) for i, _ in ins if i < len(task["x"])]
                series += [(f"y:{o}", task["y"][o]) for o, _ in outs if o < len(task["y"])]
            series += [(f"pred:{rid}:{o}", task["pred"][o]) for o, _ in outs
                       if o < len(task["pred"])]
            for key, ys in series:
                _append(points, key, steps, ys, gap)
    return points


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


def tick_ops(view: View, frames_by_run: Mapping[str, Sequence[Mapping[str, Any]]],
             carry: dict[str, Any]) -> tuple[dict[str, Ops], dict[str, Any]]:
    """Per-graph operations for the frames that arrived since the last tick.

    ``carry`` (run id -> smoothing/gap state, JSON) is updated in place and returned.
    Graphs of hidden panels get nothing.
    """
    graphs = {PANEL_GRAPHS[p] for p in view.get("panels", DEFAULT_PANELS) if p in PANEL_GRAPHS}
    runs = _runs_by_id(view)
    ext = {gid: _Extend(SLOTS[gid](view)) for gid in graphs}
    ops: dict[str, Ops] = {gid: {} for gid in graphs}
    window = view.get("window", WINDOW)
    spans: list[list[Any]] = []
    for rid, frames in frames_by_run.items():
        run = runs.get(rid)
        if run is None or not frames:
            continue
        state = carry.setdefault(rid, initial_carry())
        if "loss-graph" in graphs:
            pts = [p for f in frames for p in bin_points(f.get("loss"), int(f.get("t0", 0)))]
            xs, raw, smooth, tail = fold(pts, run["stride"], run["tau"], state["loss"])
            ext["loss-graph"].add_tail(f"raw:{rid}", xs, raw, tail and (tail[0], tail[1]),
                                       MAX_POINTS)
            ext["loss-graph"].add_tail(f"smooth:{rid}", xs, smooth, tail and (tail[0], tail[2]),
                                       MAX_POINTS)
            tests = [(int(f.get("test_step", f.get("t1", 0))), _mean(f["test_loss"]))
                     for f in frames if f.get("test_loss")]
            tests = [(t, v) for t, v in tests if v is not None]
            ext["loss-graph"].add(f"test:{rid}", [t for t, _ in tests], [v for _, v in tests],
                                  MAX_POINTS)
        if "alignment-graph" in graphs:
            pts = [p for f in frames for p in bin_points(f.get("alignment"), int(f.get("t0", 0)))]
            xs, _raw, smooth, tail = fold(pts, run["stride"], run["tau"], state["align"])
            ext["alignment-graph"].add_tail(f"align:{rid}", xs, smooth,
                                            tail and (tail[0], tail[2]), MAX_POINTS)
            for rule in run.get("compare") or []:
                pts = [p for f in frames
                       for p in bin_points(((f.get("alignment") or {}).get("compare") or {})
                                           .get(rule), int(f.get("t0", 0)))]
                cstate = state.setdefault("cmp", {}).setdefault(rule, new_series_carry())
                xs, _raw, smooth, tail = fold(pts, run["stride"], run["tau"], cstate)
                ext["alignment-graph"].add_tail(f"cmp:{rid}:{rule}", xs, smooth,
                                                tail and (tail[0], tail[2]), MAX_POINTS)
            for name in run["diagnostics"]:
                pts = [p for f in frames
                       for p in bin_points((f.get("diagnostics") or {}).get(name),
                                           int(f.get("t0", 0)))]
                dstate = state["diag"].setdefault(name, new_series_carry())
                xs, _raw, smooth, tail = fold(pts, run["stride"], run["tau"], dstate)
                ext["alignment-graph"].add_tail(f"diag:{rid}:{name}", xs, smooth,
                                                tail and (tail[0], tail[2]), MAX_POINTS)
        if rid == view.get("phase_run", view["runs"][0]["id"]):
            spans = merge_spans(s for f in frames for s in (f.get("phases") or []))
    one = {rid: frames for rid, frames in frames_by_run.items() if rid in runs}
    if "voltage-graph" in graphs:
        for key, (xs, ys) in _traces_points(view, one, carry).items():
            ext["voltage-graph"].add(key, xs, ys, window)
    if "task-graph" in graphs:
        for key, (xs, ys) in _task_points(view, one, carry).items():
            ext["task-graph"].add(key, xs, ys, window)
    if "weight-change-graph" in graphs:
        for key, (xs, ys) in _norm_points(view, one, carry).items():
            ext["weight-change-graph"].add(key, xs, ys, MAX_POINTS)
        focus = focus_run(view)
        if focus is not None and one.get(focus["id"]):
            z, blocks = combine_matrices(focus["pops"], _last_matrices(one[focus["id"]]),
                                         focus["n"])
            if blocks:
                ops["weight-change-graph"]["set"] = [{"i": 0, "z": z}]
                ops["weight-change-graph"]["titles"] = [
                    {"i": k, "text": text, "x": x} for k, (text, x) in enumerate(_block_titles(blocks))]
    for gid in graphs:
        op = ext[gid].op()
        if op:
            ops[gid]["extend"] = op
        if spans and shaded(view):
            ops[gid]["spans"] = spans
    return {gid: o for gid, o in ops.items() if o}, carry


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
