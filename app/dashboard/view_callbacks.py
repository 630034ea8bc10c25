"""The view callbacks: what is shown (runs, units, seed, panels, log-y, presenter scale) ->
every registered panel's figure (history back-filled) and the live channel it continues
from; the heatmap's run picker; the status chips and the play button."""

from __future__ import annotations

from typing import Any

import dash
from dash import Input, Output, State

from app.dashboard import figures, names, urlstate
from app.dashboard import panels as registry
from app.dashboard.controls import (
    _quiet,
    is_active,
    phase_lengths,
    phase_source,
    run_has_alignment,
    status_chips,
)
from app.dashboard.service import Service
from app.service.base import ServiceError
from simulator.rules import RULES
from simulator.tasks import TASKS

GRAPHS = registry.GRAPHS


def _read_runs(svc: Service, infos: list[dict[str, Any]], units: list[int],
               seed_index: int | None) -> tuple[dict, dict, dict]:
    """Each run's history, its latest frames (those the history holds) and cursor; a live
    run is told which units and seed to trace when that changed."""
    histories: dict[str, dict[str, Any]] = {}
    recent: dict[str, list[dict[str, Any]]] = {}
    cursors: dict[str, int] = {}
    for info in infos:
        rid = info["id"]
        try:
            hist = svc.history(info)
            cursor = int(hist.get("cursor", -1))
            frames, _ = svc.backend.frames(rid, after=max(-1, cursor - 4))
        except (ServiceError, LookupError):
            hist, cursor, frames = {}, -1, []
        histories[rid] = hist
        recent[rid] = [f for f in frames if int(f.get("seq", -1)) <= cursor]
        cursors[rid] = cursor
        shown = info.get("view") or {}
        index = figures.clamp_seed_index(seed_index,
                                         len((info.get("config") or {}).get("seeds") or []))
        if (units != list(shown.get("units") or []) or index != int(
                shown.get("seed_index") or 0)) and is_active(info.get("status", "")):
            _quiet(lambda r=rid, i=index: svc.backend.control(r, "view", units=units,
                                                              seed_index=i))
    return histories, recent, cursors


def _run_views(infos: list[dict[str, Any]], recent: dict, histories: dict,
               variants: dict[str, str]) -> list[figures.RunView]:
    """Each run as the panels see it: its colour, its name among those shown, its
    populations (from its latest frame, else guessed), diagnostics and alignment."""
    colors = figures.assign_colors([(i.get("config") or {}).get("rule", "?") for i in infos])
    named = names.names_by_id(infos)
    runs = []
    for info, color in zip(infos, colors, strict=True):
        rid = info["id"]
        last = recent[rid][-1] if recent[rid] else {}
        rule = (info.get("config") or {}).get("rule", "?")
        runs.append(figures.make_run_view(
            info, color, variant=variants.get(rid, ""), name=named[rid],
            pops=list((last.get("weight_change") or {}).keys()) or None,
            diagnostics=list(getattr(RULES.get(rule), "diagnostic_names", ())),
            alignment=run_has_alignment(info, histories[rid])))
    return runs


#: the view callback's outputs, by name: every registered panel's figure, the view, cursors
SHOW_OUTPUTS = {
    "figures": {gid: Output(gid, "figure") for gid in GRAPHS},
    "view": Output("view-store", "data"),
    "cursors": Output("cursor-store", "data", allow_duplicate=True),
    # the heatmap's run picker, set here rather than by a callback of its own: show() then
    # waited for that callback after every play (one more round trip before the figures)
    "heat_options": Output("heat-run", "options"),
    "heat_value": Output("heat-run", "value"),
}


def register_view(app: dash.Dash, svc: Service) -> None:
    @app.callback(
        output=SHOW_OUTPUTS,
        inputs={"live": Input("live-store", "data"), "units": Input("units", "value"),
                "seed_index": Input("seed-index", "value"), "panels": Input("panels", "value"),
                "log_y": Input("log-y", "value"), "present": Input("present-store", "data"),
                "_rebuild": Input("rebuild-req", "data"), "heat_run": Input("heat-run", "value"),
                "old": State("view-store", "data")},
        prevent_initial_call="initial_duplicate",
    )
    def show(live: dict | None, units: list | None, seed_index: int | None, panels: list | None,
             log_y: list | None, present: bool, _rebuild: Any, heat_run: str | None,
             old: dict | None) -> dict[str, Any]:
        """What is shown -> every panel's figure (history back-filled) and the live channel."""
        epoch = int((old or {}).get("epoch", 0)) + 1
        infos = svc.infos(list((live or {}).get("runs") or []))
        units = sorted(int(u) for u in (units or [0]))[:4] or [0]
        histories, recent, cursors = _read_runs(svc, infos, units, seed_index)
        runs = _run_views(infos, recent, histories, (live or {}).get("variants") or {})
        first = infos[0] if infos else {}
        task = (first.get("config") or {}).get("task", "add")
        phase_run, phase_names = phase_source(infos)
        options, heat = heat_picker(runs, heat_run)
        view = figures.make_view(
            runs, epoch=epoch, units=units, seed_index=int(seed_index or 0),
            panels=[p for p in urlstate.PANELS if p in (panels or urlstate.PANELS)],
            log_y=bool(log_y), scale=1.55 if present else 1.0,
            refs=first.get("reference_levels") or {},
            loss_kind=getattr(TASKS.get(task), "loss", "cross_entropy"),
            task_view=first.get("task_view") or {}, phase_names=phase_names,
            phase_run=phase_run, align_supported=svc.align is not None,
            phase_steps=phase_lengths(infos, phase_run), heat_run=heat)
        figs, carry = figures.build_figures(view, histories, recent)
        view["live"] = svc.hub.join(view, cursors, carry)  # the shared live channel (app.live)
        # what plab.js needs to follow the channel, in every figure too: the page starts
        # polling as soon as Dash draws the first of them, not after view-store's callbacks
        follow = {"live": view["live"], "epoch": epoch, "runs": [r["id"] for r in runs],
                  "cursors": cursors}
        for fig in figs.values():
            fig["layout"]["meta"]["follow"] = follow
        return {"figures": figs, "view": view, "cursors": {"epoch": epoch, "cursors": cursors},
                "heat_options": options, "heat_value": heat}

    _register_pickers(app, svc)


def heat_picker(runs: list[figures.RunView], current: str | None
                ) -> tuple[list[dict[str, str]], str | None]:
    """The heatmap's run picker: every run shown, by name; keeps the pick while shown."""
    options = [{"label": run["label"], "value": run["id"]} for run in runs]
    ids = [run["id"] for run in runs]
    return options, current if current in ids else next(iter(ids), None)


def _register_pickers(app: dash.Dash, svc: Service) -> None:
    @app.callback(
        Output("live-status", "children"), Output("btn-play", "children"),
        Output("btn-play", "className"),
        Input("slow-clock", "n_intervals"), Input("status-tick", "data"),
        Input("view-store", "data"), State("live-store", "data"),
    )
    def status(_n: int, _tick: Any, view: dict | None, live: dict | None) -> tuple:
        infos = svc.infos((live or {}).get("runs") or [])
        colors = {r["id"]: r["color"] for r in (view or {}).get("runs", [])}
        group = set((live or {}).get("group") or [])
        running = any(i.get("status") == "running" for i in infos if i["id"] in group)
        return (status_chips(infos, colors), "❚❚" if running else "▶",
                "tbtn play running" if running else "tbtn play")

