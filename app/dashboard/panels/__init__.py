"""The dashboard's panels as components (Nengo GUI style): one module per panel, each with

    NAME, GRAPH, TITLE, TAB, NOTES     its name (URL, tabs), graph id, title, tab label, notes
    tools() -> [Dash components]       its layout fragment (the controls in its head)
    slots(view) -> [trace key]         the order of its traces (ticks name traces by index)
    figure(view, histories, recent, carry) -> Plotly figure (history back-filled)
    tick(view, frames_by_run, carry, ext) -> extra ops; new points go to ``ext``

:data:`PANELS` lists them in screen order; the layout (app.dashboard.layout), the view
callback's outputs (app.dashboard.callbacks) and the live operations (:func:`tick_ops`, which
app.live calls through app.dashboard.figures) are all built from it. A sixth panel is one
module and one line in :data:`PANELS`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

from app.dashboard.panels import alignment, circuit, loss, task, voltage, weights
from app.dashboard.panels.binning import merge_spans
from app.dashboard.panels.common import (
    Figure,
    Ops,
    View,
    _Extend,
    _runs_by_id,
    initial_carry,
    shaded,
)

#: the panels, in screen order
PANELS: tuple[ModuleType, ...] = (loss, voltage, weights, alignment, task, circuit)
BY_NAME: dict[str, ModuleType] = {p.NAME: p for p in PANELS}
BY_GRAPH: dict[str, ModuleType] = {p.GRAPH: p for p in PANELS}
NAMES: tuple[str, ...] = tuple(BY_NAME)
GRAPHS: tuple[str, ...] = tuple(BY_GRAPH)
PANEL_GRAPHS: dict[str, str] = {p.NAME: p.GRAPH for p in PANELS}
SLOTS = {p.GRAPH: p.slots for p in PANELS}


def _shown(view: View) -> Sequence[str]:
    panels = view.get("panels")
    return NAMES if panels is None else panels


def build_figures(view: View, histories: Mapping[str, Mapping[str, Any]] | None = None,
                  recent: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
                  ) -> tuple[dict[str, Figure], dict[str, Any]]:
    """Every panel's figure for a view (history back-filled, the latest frames in the
    scrolling panels) and the carry that ticks continue from (blocks still filling stay
    open in it, so the next tick continues them: one binning, live and rebuilt)."""
    carry: dict[str, Any] = {run["id"]: initial_carry() for run in view["runs"]}
    figs = {p.GRAPH: p.figure(view, histories or {}, recent or {}, carry) for p in PANELS}
    return figs, carry


def tick_ops(view: View, frames_by_run: Mapping[str, Sequence[Mapping[str, Any]]],
             carry: dict[str, Any]) -> tuple[dict[str, Ops], dict[str, Any]]:
    """Per-graph operations for the frames that arrived since the last tick.

    ``carry`` (run id -> smoothing/gap state, JSON) is updated in place and returned.
    Graphs of hidden panels get nothing. Each op: ``extend`` (new points per trace index),
    and what the panel adds (``set``/``titles``: heatmap contents, ``axes``: axis
    properties), with ``spans`` (phase shading) on every graph.
    """
    runs = _runs_by_id(view)
    shown = [BY_NAME[p] for p in _shown(view) if p in BY_NAME]
    frames = {rid: fs for rid, fs in frames_by_run.items() if rid in runs and fs}
    for rid in frames:
        carry.setdefault(rid, initial_carry())
    spans: list[list[Any]] = []
    phase_run = view.get("phase_run") or (view["runs"][0]["id"] if view["runs"] else None)
    if shaded(view) and frames.get(phase_run or ""):
        spans = merge_spans(s for f in frames[phase_run or ""] for s in (f.get("phases") or []))
    ops: dict[str, Ops] = {}
    for panel in shown:
        ext = _Extend(panel.slots(view))
        op: Ops = panel.tick(view, frames, carry, ext) if frames else {}
        extend = ext.op()
        if extend:
            op["extend"] = extend
        if spans:
            op["spans"] = spans
        if op:
            ops[panel.GRAPH] = op
    return ops, carry


def needs_rebuild(view: View, frames_by_run: Mapping[str, Sequence[Mapping[str, Any]]]) -> bool:
    """True when the live stream cannot continue the figures: a run reports
    sub-populations the view did not expect, or a frame carries a setting change (its mark
    is drawn from the history)."""
    return weights.populations_changed(view, frames_by_run) or loss.has_events(frames_by_run)
