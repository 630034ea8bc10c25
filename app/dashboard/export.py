"""Exports from the dashboard: the run table's CSV / JSON buttons, images of a panel (PNG or
SVG at 2x or 3x, titled with the setup) and the "slide" (every visible panel in one PNG).

Data files come from the API's streamed export routes (``app.exports``): a callback turns the
ticked runs into a URL, and the browser fetches it as a download (assets/export.js), so a
long run's table never passes through a callback. Images are composed in the browser
(assets/export.js, ``Plotly.toImage`` per graph plus a canvas for the slide) from what is on
screen; the server only supplies the names and the setup line (``export-meta``). The title
line goes on the exported image only, never on the screen. Nothing goes to a cloud service.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote as url_quote

import dash
from dash import ClientsideFunction, Input, Output, State, ctx, dcc, html, no_update

from app.dashboard import names
from app.exports import export_name, setup_line, zip_files
from app.service.base import ServiceError
from simulator.settings import ConfigError

if TYPE_CHECKING:
    from app.dashboard.callbacks import Service

__all__ = ["export_bar", "export_name", "image_config", "register", "zip_files"]

SCALES = (2, 3)
FORMATS = ("png", "svg")
#: the slide: CSS pixels (drawn at 2x: 3840 x 2160), the setup text underneath
SLIDE = {"width": 1920, "height": 1080, "scale": 2}
#: runs named in a title at most (then "+ N more")
TITLE_RUNS = 4


def image_config(panel: str, labels: Sequence[str], ids: Sequence[str],
                 scale: int = 2) -> dict[str, Any]:
    """A graph's toolbar: its camera saves a PNG at ``scale`` named by panel and run(s); no
    cloud buttons (the titled PNG/SVG is the export bar's)."""
    if len(ids) == 1:
        filename = export_name(labels[0] if labels else "", ids[0], "png", panel)[:-4]
    else:
        filename = f"plasticity-{panel}-{len(ids)}-runs" if ids else f"plasticity-{panel}"
    return {"displaylogo": False, "responsive": True, "showSendToCloud": False,
            "showEditInChartStudio": False, "modeBarButtonsToRemove": ["lasso2d", "select2d"],
            "toImageButtonOptions": {"format": "png", "scale": scale, "filename": filename}}


def export_meta(infos: Sequence[dict[str, Any]], panels: Sequence[str]) -> dict[str, Any]:
    """What the browser needs to name and title images: {"title": setup lines, "files":
    panel -> file stem, "slide": the slide's file stem}."""
    named = names.names_by_id(infos)
    ids = [str(i["id"]) for i in infos]
    lines = [setup_line(named[rid], info.get("config") or {}) for rid, info in zip(
        ids, infos, strict=True)][:TITLE_RUNS]
    if len(infos) > TITLE_RUNS:
        lines.append(f"+ {len(infos) - TITLE_RUNS} more runs")

    def stem(panel: str) -> str:
        if len(ids) == 1:
            return export_name(named[ids[0]], ids[0], "x", panel)[:-2]
        return f"plasticity-{panel}-{len(ids)}-runs" if ids else f"plasticity-{panel}"

    return {"title": lines, "files": {p: stem(p) for p in panels}, "slide": stem("slide")}


def export_bar() -> html.Div:
    """The image export controls (below the panels) and the stores the exports use."""
    from app.dashboard import urlstate

    return html.Div([
        html.Span("image", className="tlabel"),
        dcc.Dropdown(id="export-panel", options=[{"label": p, "value": p}
                                                 for p in urlstate.PANELS],
                     value=urlstate.PANELS[0], clearable=False, searchable=False,
                     className="dropdown export-panel"),
        dcc.RadioItems(id="export-format", options=[{"label": f.upper(), "value": f}
                                                    for f in FORMATS],
                       value="png", inline=True, className="toggle"),
        dcc.RadioItems(id="export-scale", options=[{"label": f"{s}x", "value": s}
                                                   for s in SCALES],
                       value=SCALES[0], inline=True, className="toggle"),
        html.Button("Save image", id="btn-image", n_clicks=0, className="small",
                    title="the chosen panel as PNG or SVG, titled with the setup, named by "
                          "run and panel"),
        html.Button("Slide", id="btn-slide", n_clicks=0, className="small",
                    title="every visible panel in one 1920x1080 PNG (at 2x) with the setup "
                          "underneath"),
        html.Span(id="export-msg", className="table-msg", role="status"),
        dcc.Store(id="export-meta"),
        dcc.Store(id="export-link"),
        html.Div(id="export-sink", style={"display": "none"}),
        html.Div(id="export-link-sink", style={"display": "none"}),
        html.Div(id="export-toolbar-sink", style={"display": "none"}),
    ], className="export-bar tools-row", id="export-bar")


def data_link(kind: str, selected: Sequence[str], infos: Sequence[dict[str, Any]],
              has_events: bool) -> tuple[str, str]:
    """(URL, message) of the ticked runs' CSV or JSON: one run, its file (a CSV with settings
    changes: a zip of it and its events CSV); several, one zip with a file per run."""
    named = names.names_by_id(infos)
    ids = [str(i["id"]) for i in infos] or list(selected)
    what = "CSV" if kind == "csv" else "JSON"
    if len(ids) == 1 and not (kind == "csv" and has_events):
        rid = ids[0]
        path = "scalars.csv" if kind == "csv" else "run.json"
        return (f"/api/runs/{url_quote(rid)}/export/{path}",
                f"{what} of {named.get(rid, rid)}: every scalar the run has")
    query = ",".join(url_quote(r) for r in ids)
    if len(ids) == 1:
        return (f"/api/export.zip?ids={query}&kind=csv",
                f"CSV of {named.get(ids[0], ids[0])} and its settings changes, in a zip")
    return (f"/api/export.zip?ids={query}&kind={kind}",
            f"{what} of {len(ids)} runs, one file each, in a zip")


def register(app: dash.Dash, svc: Service) -> None:
    """The export callbacks (the run table's CSV / JSON, the images' names and titles)."""
    from app.dashboard.callbacks import GRAPHS, PANEL_OF, error_text

    backend = svc.backend

    @app.callback(*[Output(gid, "config") for gid in GRAPHS], Output("export-meta", "data"),
                  Input("view-store", "data"), Input("export-scale", "value"),
                  prevent_initial_call=True)
    def image_names(view: dict | None, scale: int | None) -> tuple:
        runs = (view or {}).get("runs") or []
        labels, ids = [r["label"] for r in runs], [r["id"] for r in runs]
        scale = scale if scale in SCALES else SCALES[0]
        meta = export_meta(svc.infos(ids), [PANEL_OF[gid] for gid in GRAPHS])
        meta["graphs"] = {PANEL_OF[gid]: gid for gid in GRAPHS}
        meta["slide_size"] = SLIDE
        configs = [image_config(PANEL_OF[gid], labels, ids, scale) for gid in GRAPHS]
        # dcc.Graph applies a new config only when it redraws its figure itself, which the
        # live loop rarely lets it do: the browser applies it now (plab_export.toolbar)
        meta["toolbar"] = {PANEL_OF[gid]: c for gid, c in zip(GRAPHS, configs, strict=True)}
        return (*configs, meta)

    @app.callback(
        Output("export-link", "data"), Output("table-msg", "children", allow_duplicate=True),
        Input("tbl-csv", "n_clicks"), Input("tbl-json", "n_clicks"),
        State("run-table", "selected_row_ids"), prevent_initial_call=True)
    def table_export(_c: int, _j: int, selected: list | None) -> tuple:
        selected = list(selected or [])
        if not selected:
            return no_update, "tick one or more runs first"
        kind = "csv" if ctx.triggered_id == "tbl-csv" else "json"
        try:
            infos = svc.infos(selected)
            if not infos:
                return no_update, "the ticked runs are gone (deleted?)"
            events = kind == "csv" and len(infos) == 1 and bool(
                backend.history(infos[0]["id"], 1).get("events"))
            url, message = data_link(kind, selected, infos, events)
        except (ServiceError, ConfigError, LookupError) as err:
            return no_update, error_text(err)
        return {"url": url, "n": ctx.triggered[0]["value"] if ctx.triggered else 0}, message

    app.clientside_callback(
        ClientsideFunction(namespace="plab_export", function_name="image"),
        Output("export-sink", "children"),
        Input("btn-image", "n_clicks"), Input("btn-slide", "n_clicks"),
        State("export-panel", "value"), State("export-format", "value"),
        State("export-scale", "value"), State("export-meta", "data"),
        prevent_initial_call=True,
    )
    app.clientside_callback(
        ClientsideFunction(namespace="plab_export", function_name="toolbar"),
        Output("export-toolbar-sink", "children"),
        Input("export-meta", "data"),
        prevent_initial_call=True,
    )
    app.clientside_callback(
        ClientsideFunction(namespace="plab_export", function_name="download"),
        Output("export-link-sink", "children"),
        Input("export-link", "data"),
        prevent_initial_call=True,
    )
