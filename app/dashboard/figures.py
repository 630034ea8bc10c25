"""Pure functions: run info, whole-run history and telemetry frames -> Plotly figures and
per-tick updates. Nothing here talks to a backend, a browser or Dash.

The work is done per panel in app/dashboard/panels/ (one module each: loss, voltage,
weights, alignment, task; shared parts in panels/common.py and panels/binning.py); this
module is the stable entry point that app.live, the callbacks, benchmarks and tests use.

Figures are plain JSON dicts (``{"data": [...], "layout": {...}}``). A tick
(:func:`tick_ops`) turns the frames that arrived since the client's cursor into small
per-graph operations that ``assets/plab.js`` applies with one redraw per graph:

    {"extend": {"idx": [...], "x": [[...]], "y": [[...]], "max": [...]},   new points
     "set": [{"i": trace, "z": ..., "zmin": ..., "zmax": ...}],            heatmap contents
     "axes": {"yaxis": {"range": [...]}},                                  axis properties
     "spans": [[start, stop, phase], ...]}                                 phase shading

Work per tick is proportional to the new frames, never to the run's history. Long runs stay
light: loss-like traces are re-binned to a stride that keeps a whole run near
``LOSS_POINTS`` points per trace, and the scrolling panels keep the last ``WINDOW`` points.
"""

from __future__ import annotations

from app.dashboard.panels import (
    BY_GRAPH,
    GRAPHS,
    NAMES,
    PANEL_GRAPHS,
    PANELS,
    SLOTS,
    build_figures,
    needs_rebuild,
    tick_ops,
)
from app.dashboard.panels.alignment import alignment_figure, alignment_protocol, alignment_slots
from app.dashboard.panels.binning import (
    bin_points,
    ema_update,
    fold,
    fold_history,
    merge_spans,
    new_series_carry,
)
from app.dashboard.panels.common import *  # noqa: F403  (the shared vocabulary)
from app.dashboard.panels.common import _line, _phase_legend
from app.dashboard.panels.loss import (
    LOG_TICKS,
    REF_MARGIN,
    Y_PAD,
    event_marks,
    log_ticks,
    loss_figure,
    loss_gap,
    loss_slots,
    range_grid,
    show_raw,
    y_range,
)
from app.dashboard.panels.task import task_channels, task_figure, task_slots
from app.dashboard.panels.voltage import (
    COMPARTMENTS,
    voltage_cap_note,
    voltage_figure,
    voltage_pairs,
    voltage_slots,
)
from app.dashboard.panels.weights import (
    combine_matrices,
    focus_run,
    norm_pops,
    populations_changed,
    weight_figure,
    weight_slots,
)

#: every panel in screen order (the registry's names)
DEFAULT_PANELS = NAMES
#: graph id -> figure builder of an empty or back-filled view
BUILDERS = {gid: (lambda view, _p=p: _p.figure(view, {}, {}, {})) for gid, p in BY_GRAPH.items()}

__all__ = [
    "BUILDERS", "COMPARTMENTS", "DEFAULT_PANELS", "GRAPHS", "LOG_TICKS", "PANELS", "PANEL_GRAPHS",
    "REF_MARGIN", "SLOTS", "Y_PAD", "_line", "_phase_legend", "alignment_figure", "alignment_protocol",
    "alignment_slots", "bin_points", "build_figures", "combine_matrices", "ema_update",
    "event_marks", "focus_run", "fold", "fold_history", "log_ticks", "loss_figure", "loss_gap",
    "loss_slots", "merge_spans", "needs_rebuild", "new_series_carry", "norm_pops",
    "populations_changed", "range_grid", "show_raw", "task_channels", "task_figure", "task_slots",
    "tick_ops", "voltage_cap_note", "voltage_figure", "voltage_pairs", "voltage_slots",
    "weight_figure", "weight_slots", "y_range",
]
