"""The Experiments page (``/experiments/``): describe a grid (TOML, or a preset), watch it run
(progress bar and ETA, views refreshed as batches finish), and show it: learning curves with
95% t-bands over seeds, final loss against an axis (one line per rule, the task's reference
levels), a heatmap of two axes, and a table sortable by any column whose rows open as normal
runs. Every view exports as PNG/SVG at slide resolution (1280 x 720 at scale 2) and as CSV.
The URL holds the experiment: ``/experiments/?id=ID``.

A Dash app of its own on the server's Flask app (the main dashboard is untouched); it talks to
the experiment service (``app.experiments``) with the caller's identity, like the REST API.
Figures come from the pure functions of ``app.dashboard.experiment_figures``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

import dash
from dash import ALL, MATCH, ClientsideFunction, Input, Output, State, ctx, dash_table, dcc, html
from flask import Flask, current_app, redirect

from app import experiments as xp_api
from app.api import BACKEND_KEY
from app.dashboard import experiment_figures as xf
from app.service.base import ServiceError
from simulator import presets
from simulator.settings import ConfigError

BASE_PATH = "/experiments/"
ASSETS = Path(__file__).resolve().parents[2] / "assets"
VIEWS = ("curves", "final", "heat")
SERIES_NAMES = ("test_loss", "train_loss", "alignment")
EXAMPLE = """name = "my grid"

[base]
task = "add"
task_args = { t1 = 5, t2 = 9 }
rule = "dni-b"
n = 32
steps = 20000
test_steps = 1000
seeds = "0-3"

[axes]
rule = ["dni", "dni-b"]
lr = [1e-3, 3e-3]

[record]
every = 2000
"""


def _graph(view: str, title: str, controls: list[Any]) -> html.Section:
    exports = [html.Button(fmt.upper(), id={"type": "xp-img", "view": view, "fmt": fmt},
                           n_clicks=0, className="xp-btn", title=f"{fmt.upper()} at 2560 x 1440")
               for fmt in ("png", "svg")]
    exports.append(html.Button("CSV", id={"type": "xp-csv", "view": view}, n_clicks=0,
                               className="xp-btn", title="the numbers of this view"))
    return html.Section([
        html.Div([html.H3(title), *controls, html.Div(exports, className="xp-exports")],
                 className="xp-view-head"),
        dcc.Graph(id=f"xp-{view}", config={
            "displaylogo": False,
            "toImageButtonOptions": {"format": "png", "filename": f"experiment-{view}",
                                     **xf.EXPORT}}, style={"height": "420px"}),
        dcc.Store(id={"type": "xp-img-done", "view": view, "fmt": "png"}),
        dcc.Store(id={"type": "xp-img-done", "view": view, "fmt": "svg"}),
    ], className="xp-view", id=f"xp-view-{view}")


def layout() -> html.Div:
    names = presets.names()
    form = html.Aside([
        html.H3("New experiment"),
        html.Label("Preset"),
        dcc.Dropdown(id="xp-preset", options=[{"label": n, "value": n} for n in names],
                     placeholder="pick a preset (fills the spec)", clearable=True),
        html.Label("Spec (TOML: [base], [axes] with value lists, [record])"),
        dcc.Textarea(id="xp-spec", value=EXAMPLE, style={"width": "100%", "height": "300px",
                                                         "fontFamily": "monospace"}),
        html.Div([html.Label(["Seeds ", dcc.Input(id="xp-seeds", type="text",
                                                  placeholder="e.g. 0-9", debounce=True)]),
                  html.Label(["Steps ", dcc.Input(id="xp-steps", type="number", min=1,
                                                  placeholder="from the spec")])],
                 className="xp-overrides"),
        html.Button("Run experiment", id="xp-submit", n_clicks=0, className="xp-btn"),
        html.Div(id="xp-msg", role="alert", className="xp-msg"),
        html.H3("Experiments"),
        dcc.Dropdown(id="xp-list", placeholder="open one of yours", clearable=False),
    ], className="xp-form")
    main = html.Main([
        html.Div([
            html.Div(id="xp-status", children="no experiment open", className="xp-status"),
            html.Div(html.Div(id="xp-bar-fill", className="xp-bar-fill",
                              style={"width": "0%"}), id="xp-bar", className="xp-bar"),
            html.Span(id="xp-eta", className="xp-eta"),
            html.Button("Cancel", id="xp-cancel", n_clicks=0, className="xp-btn"),
        ], className="xp-progress"),
        _graph("curves", "Learning curves", [dcc.Dropdown(
            id="xp-series", options=list(SERIES_NAMES), value="test_loss", clearable=False,
            className="xp-select")]),
        _graph("final", "Final loss against an axis", [dcc.Dropdown(
            id="xp-x", clearable=False, className="xp-select")]),
        _graph("heat", "Two axes", [dcc.Dropdown(id="xp-hx", clearable=False,
                                                 className="xp-select"),
                                    dcc.Dropdown(id="xp-hy", clearable=False,
                                                 className="xp-select")]),
        html.Section([
            html.Div([html.H3("Every member and seed"),
                      html.Div(html.Button("CSV", id={"type": "xp-csv", "view": "table"},
                                           n_clicks=0, className="xp-btn"),
                               className="xp-exports")], className="xp-view-head"),
            html.Div(id="xp-open", className="xp-note"),
            dash_table.DataTable(id="xp-table", sort_action="native", sort_mode="multi",
                                 page_size=25, style_table={"overflowX": "auto"},
                                 style_cell={"fontFamily": "inherit", "fontSize": "13px"}),
        ], className="xp-view", id="xp-view-table"),
        dcc.Download(id="xp-download"),
        dcc.Interval(id="xp-tick", interval=1000, disabled=True),
        dcc.Store(id="xp-state"),
    ], className="xp-main")
    return html.Div([
        dcc.Location(id="xp-url", refresh=False),
        html.Header([
            html.Div([html.Span("Plasticity", className="brand-a"),
                      html.Span(" Lab", className="brand-b")], className="brand"),
            html.H2("Experiments", className="xp-title"),
            html.A("Runs", href="/", className="hbtn", id="xp-runs-link"),
        ], className="header"),
        html.Div([form, main], className="xp-body"),
    ], className="xp-page")


# ---- data ----------------------------------------------------------------------------------
def _exp_id(search: str | None) -> str | None:
    values = parse_qs((search or "").lstrip("?")).get("id")
    return values[0][:40] if values else None


def _info(exp_id: str) -> dict[str, Any]:
    xp_api._mine(exp_id)
    return xp_api.service().get(exp_id)


def _tables(exp_id: str) -> tuple[list[str], list[dict[str, str]], list[dict[str, str]]]:
    """(axes, results rows, series rows) of an experiment the caller may see."""
    info = _info(exp_id)
    svc = xp_api.service()
    results = xf.parse_csv(svc.table(exp_id, "results.csv").read_text())
    series = xf.parse_csv(svc.table(exp_id, "series.csv").read_text())
    return list(info["spec"]["axes"]), results, series


def _refs(exp_id: str) -> dict[str, float]:
    """The task's reference levels (none when the task is an axis)."""
    from simulator.tasks import make_task

    exp = xp_api.service().experiment(exp_id)
    tasks = {(m.config.task, repr(sorted(m.config.task_args.items()))) for m in exp.members}
    if len(tasks) != 1:
        return {}
    config = exp.members[0].config
    return make_task(config.task, config.task_args).reference_levels()


def _empty(text: str) -> dict[str, Any]:
    return {"data": [], "layout": {"annotations": [{"text": text, "showarrow": False,
                                                    "xref": "paper", "yref": "paper",
                                                    "x": 0.5, "y": 0.5}],
                                   "xaxis": {"visible": False}, "yaxis": {"visible": False},
                                   "template": "plotly_white"}}


def _message(err: Exception) -> str:
    if isinstance(err, ServiceError):
        return err.message
    if isinstance(err, ConfigError):
        return str(err)
    raise err


def _duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return ""
    seconds = int(seconds)
    return f"ETA {seconds // 3600}h {seconds % 3600 // 60:02d}m" if seconds >= 3600 else \
        f"ETA {seconds // 60}m {seconds % 60:02d}s"


def _cell(value: str) -> Any:
    x = xf.number(value)
    return x if math.isfinite(x) or value.lower() == "nan" else value


# ---- callbacks -----------------------------------------------------------------------------
def register(app: dash.Dash) -> None:
    _register_submit(app)
    _register_progress(app)
    _register_views(app)
    _register_exports(app)


def _register_submit(app: dash.Dash) -> None:
    """The form: a preset fills the spec; submit starts it."""
    @app.callback(Output("xp-spec", "value"), Input("xp-preset", "value"),
                  prevent_initial_call=True)
    def fill_preset(name: str | None) -> str:
        if not name or name not in presets.names():
            return dash.no_update
        return presets.resolve_experiment(name).read_text()

    @app.callback(Output("xp-url", "search"), Output("xp-msg", "children"),
                  Input("xp-submit", "n_clicks"), Input("xp-list", "value"),
                  State("xp-spec", "value"), State("xp-seeds", "value"),
                  State("xp-steps", "value"), State("xp-url", "search"),
                  prevent_initial_call=True)
    def submit(_n: int, picked: str | None, text: str | None, seeds: str | None,
               steps: int | None, search: str | None) -> tuple[Any, Any]:
        if ctx.triggered_id == "xp-list":
            if not picked or picked == _exp_id(search):
                return dash.no_update, dash.no_update
            return "?" + urlencode({"id": picked}), ""
        body: dict[str, Any] = {"toml": text or ""}
        if seeds:
            body["seeds"] = seeds
        if steps is not None:
            body["steps"] = steps
        try:
            owner, admin = xp_api._caller()
            exp_id = xp_api.service().submit(body, owner=owner, admin=admin)
        except (ServiceError, ConfigError) as err:
            return dash.no_update, _message(err)
        return "?" + urlencode({"id": exp_id}), f"experiment {exp_id} queued"



def _register_progress(app: dash.Dash) -> None:
    """The experiment picker, progress with its ETA, and cancel."""
    @app.callback(Output("xp-list", "options"), Output("xp-list", "value"),
                  Input("xp-url", "search"), Input("xp-state", "data"))
    def experiment_list(search: str | None, _state: Any) -> tuple[Any, Any]:
        try:
            owner, admin = xp_api._caller()
        except ServiceError:
            return [], None
        items = xp_api.service().list(None if admin else owner)
        options = [{"label": f"{e['name'] or e['id']} ({e['id']}, {e['status']})",
                    "value": e["id"]} for e in items]
        return options, _exp_id(search)

    @app.callback(Output("xp-status", "children"), Output("xp-bar-fill", "style"),
                  Output("xp-eta", "children"), Output("xp-tick", "disabled"),
                  Output("xp-state", "data"), Output("xp-x", "options"),
                  Output("xp-x", "value"), Output("xp-hx", "options"), Output("xp-hx", "value"),
                  Output("xp-hy", "options"), Output("xp-hy", "value"),
                  Input("xp-url", "search"), Input("xp-tick", "n_intervals"),
                  State("xp-state", "data"), State("xp-x", "value"), State("xp-hx", "value"),
                  State("xp-hy", "value"))
    def refresh(search: str | None, _tick: int, state: dict | None, x: str | None,
                hx: str | None, hy: str | None) -> tuple[Any, ...]:
        exp_id = _exp_id(search)
        if exp_id is None:
            return ("no experiment open: describe one on the left, or pick a preset",
                    {"width": "0%"}, "", True, None, [], None, [], None, [], None)
        try:
            info = _info(exp_id)
        except (ServiceError, ConfigError) as err:
            return (_message(err), {"width": "0%"}, "", True, None, [], None, [], None, [],
                    None)
        axes = list(info["spec"]["axes"])
        running = info["status"] in ("queued", "running")
        version = {"id": exp_id, "batches_done": info["batches_done"], "status": info["status"]}
        status = (f"{info['name'] or exp_id}: {info['status']}, {info['batches_done']}/"
                  f"{info['batches']} batches, {info['members']} members x "
                  f"{len(info['seeds'])} seeds ({info['progress']:.0%})")
        if info.get("error"):
            status += f": {info['error']}"
        x = x if x in axes else (next((a for a in axes if a != "rule"), axes[0]) if axes
                                 else None)
        hx = hx if hx in axes else (axes[0] if axes else None)
        hy = hy if hy in axes and hy != hx else next((a for a in axes if a != hx), None)
        return (status, {"width": f"{100 * info['progress']:.1f}%"},
                _duration(info.get("eta_seconds")) if running else "", not running,
                version if version != state else dash.no_update, axes, x, axes, hx,
                [a for a in axes if a != hx], hy)

    @app.callback(Output("xp-msg", "children", allow_duplicate=True),
                  Input("xp-cancel", "n_clicks"), State("xp-url", "search"),
                  prevent_initial_call=True)
    def cancel(_n: int, search: str | None) -> str:
        exp_id = _exp_id(search)
        if exp_id is None:
            return "no experiment open"
        try:
            xp_api._mine(exp_id)
            return f"experiment {exp_id}: {xp_api.service().cancel(exp_id)['status']}"
        except (ServiceError, ConfigError) as err:
            return _message(err)



def _register_views(app: dash.Dash) -> None:
    """Learning curves, final loss against an axis, the two-axis heatmap, the table."""
    @app.callback(Output("xp-curves", "figure"), Input("xp-state", "data"),
                  Input("xp-series", "value"))
    def curves(state: dict | None, name: str) -> Any:
        if not state:
            return _empty("no experiment open")
        axes, results, series = _tables(state["id"])
        stats = xf.curve_stats(series, results, axes, name)
        if not stats:
            return _empty(f"no {name} recorded yet (record.every, and alignment for "
                          "alignment)")
        return xf.curves_figure(stats, _refs(state["id"]) if name != "alignment" else {},
                                name)

    @app.callback(Output("xp-final", "figure"), Input("xp-state", "data"),
                  Input("xp-x", "value"))
    def final(state: dict | None, x: str | None) -> Any:
        if not state or not x:
            return _empty("no experiment open")
        axes, results, _ = _tables(state["id"])
        if not results:
            return _empty("no batch finished yet")
        return xf.final_figure(xf.final_stats(results, axes, x), x, _refs(state["id"]))

    @app.callback(Output("xp-heat", "figure"), Input("xp-state", "data"),
                  Input("xp-hx", "value"), Input("xp-hy", "value"))
    def heat(state: dict | None, hx: str | None, hy: str | None) -> Any:
        if not state or not hx or not hy:
            return _empty("a heatmap needs two axes")
        _, results, _ = _tables(state["id"])
        if not results:
            return _empty("no batch finished yet")
        return xf.heatmap_figure(xf.heatmap_stats(results, hx, hy), hx, hy)

    @app.callback(Output("xp-table", "data"), Output("xp-table", "columns"),
                  Input("xp-state", "data"))
    def table(state: dict | None) -> tuple[Any, Any]:
        if not state:
            return [], []
        _, results, _ = _tables(state["id"])
        if not results:
            return [], []
        data = [{k: (_cell(v) if k not in ("status",) else v) for k, v in r.items()}
                | {"open": "open ▸"} for r in results]
        columns = [{"name": k, "id": k, "type": "numeric" if isinstance(data[0][k], float | int)
                    else "text"} for k in data[0]]
        return data, columns

    @app.callback(Output("xp-open", "children"), Input("xp-table", "active_cell"),
                  State("xp-table", "derived_viewport_data"), State("xp-url", "search"),
                  prevent_initial_call=True)
    def open_run(cell: dict | None, rows: list[dict] | None, search: str | None) -> Any:
        exp_id = _exp_id(search)
        if not cell or cell.get("column_id") != "open" or not rows or exp_id is None:
            return dash.no_update
        row = rows[cell["row"]]
        try:
            xp_api._mine(exp_id)
            made = xp_api.open_member(current_app.extensions[BACKEND_KEY], xp_api.service(),
                                      exp_id, int(row["member"]), int(row["seed"]))
        except (ServiceError, ConfigError) as err:
            return _message(err)
        return ["member ", str(row["member"]), ", seed ", str(row["seed"]), " is run ",
                html.A(made["id"], href=made["url"], id="xp-open-link", target="_blank"),
                " (paused; open it to watch, branch or race it)"]



def _register_exports(app: dash.Dash) -> None:
    """Each view as CSV (here) and as PNG / SVG (in the browser: assets/experiments.js)."""
    @app.callback(Output("xp-download", "data"), Input({"type": "xp-csv", "view": ALL},
                                                       "n_clicks"),
                  State("xp-state", "data"), State("xp-series", "value"),
                  State("xp-x", "value"), State("xp-hx", "value"), State("xp-hy", "value"),
                  prevent_initial_call=True)
    def export_csv(clicks: list[int], state: dict | None, name: str, x: str | None,
                   hx: str | None, hy: str | None) -> Any:
        if not state or not any(clicks) or not isinstance(ctx.triggered_id, dict):
            return dash.no_update
        view = ctx.triggered_id["view"]
        axes, results, series = _tables(state["id"])
        if view == "curves":
            text = xf.to_csv(xf.curve_stats(series, results, axes, name))
        elif view == "final" and x:
            text = xf.to_csv(xf.final_stats(results, axes, x))
        elif view == "heat" and hx and hy:
            text = xf.to_csv(xf.heatmap_stats(results, hx, hy))
        else:
            text = xp_api.service().table(state["id"], "results.csv").read_text()
        return {"content": text, "filename": f"experiment-{state['id']}-{view}.csv",
                "type": "text/csv"}

    app.clientside_callback(ClientsideFunction("plabxp", "image"),
                            Output({"type": "xp-img-done", "view": MATCH, "fmt": MATCH}, "data"),
                            Input({"type": "xp-img", "view": MATCH, "fmt": MATCH}, "n_clicks"),
                            State({"type": "xp-img", "view": MATCH, "fmt": MATCH}, "id"),
                            prevent_initial_call=True)


def build(server: Flask) -> dash.Dash | None:
    """Mount the Experiments page at /experiments/ on ``server`` when it has the experiment
    service (app.experiments.install; a server from app.server.create_server does)."""
    if xp_api.SERVICE_KEY not in server.extensions:
        return None
    app = dash.Dash(__name__, server=server, url_base_pathname=BASE_PATH,
                    assets_folder=str(ASSETS), assets_ignore=r"plab\.js",
                    title="Plasticity Lab: experiments", update_title=None, serve_locally=True,
                    meta_tags=[{"name": "viewport",
                                "content": "width=device-width, initial-scale=1"}])
    app.layout = layout
    register(app)
    server.add_url_rule("/experiments", "plab_experiments_slash",
                        lambda: redirect(BASE_PATH, code=308))
    server.extensions["plasticity_experiments_page"] = app
    return app
