"""Dash callbacks: controls -> backend actions, backend frames -> figure updates.

No callback simulates or computes a rule: every run lives in the backend; callbacks read
frames after the client's cursor and call ``backend.control``.

The live loop (one request in flight, O(new frames) per tick, about 20 polls/s):

    show() -> figures + view-store + cursor-store (cursors, smoothing state after history)
    plab.follow (JS) takes the view and cursors; plab.js then loops:
        GET _plab/live/<view key>?since=N -> 304, or the shared items after N (app.live:
        computed once per new frame for every client of that view) -> merged per graph,
        drawn from requestAnimationFrame (one Plotly.react per graph)

The loop runs outside Dash's callback machinery on purpose: at 20 ticks/s, routing every
tick through dcc.Interval and stores cost about a third of the browser's main thread in
dash-renderer (measured; see bench/browser.py), and Dash drops an in-flight callback when
its interval fires again, which starves slow ticks. ``show()`` rebuilds every figure
(history back-filled) whenever what is shown changes and bumps the view's epoch; the client
drops ticks of another epoch, so a stale tick never draws.

Stores: setup-store (the control panel as a setup, see urlstate), live-store (runs shown:
``runs``; the transport's group: ``group``; variant labels), view-store (figures.View),
cursor-store ({epoch, cursors, carry}), present-store, focus-store.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

import dash
from dash import ClientsideFunction, Input, Output, State, ctx, no_update
from dash.exceptions import PreventUpdate

from app import live, security
from app.dashboard import layout, names, setup_callbacks, urlstate, view_callbacks
from app.dashboard import panels as registry
from app.dashboard.controls import (  # noqa: F401  (the helpers' names, as tests use them)
    ACTIVE,
    LARGE_N,
    _quiet,
    _refusal,
    _speed_index,
    _steps,
    cost_text,
    error_text,
    field_for,
    field_values,
    fmt_loss,
    is_active,
    is_terminal,
    large_n_advice,
    live_updates,
    phase_lengths,
    phase_row_error,
    phase_source,
    run_has_alignment,
    seed_options,
    setup_changes_for_branch,
    setup_from_fields,
    stale_message,
    status_chips,
    table_row,
)
from app.dashboard.service import Service
from app.service.base import Backend, ServiceError
from app.service.pacing import NARRATE_BASE
from simulator.settings import ConfigError

GRAPHS = registry.GRAPHS
PANEL_OF = {p.GRAPH: p.NAME for p in registry.PANELS}


# ---------------------------------------------------------------------------------------------
# registration
# ---------------------------------------------------------------------------------------------
def register(app: dash.Dash, backend: Backend, cache: Any) -> Service:
    svc = Service(backend, cache)
    keys = layout.field_keys()
    setup_callbacks.register_setup(app, svc, keys)
    _register_transport(app, svc)
    view_callbacks.register_view(app, svc)
    _register_table(app, svc)
    _register_clientside(app)
    _register_live_route(app, backend, svc.hub)
    app.server.extensions["plasticity_live"] = svc.hub
    setup_callbacks.register_estimate(app, svc)
    return svc


# ---- transport ----------------------------------------------------------------------------------
#: disabled while a transport action is in flight (see ``transport``'s ``running``)
TRANSPORT_BUTTONS = ("btn-play", "btn-reset", "btn-step", "btn-stop", "btn-ff", "btn-test")


def start_group(svc: Service, setup: Mapping[str, Any], start: bool, speed: int | None
                ) -> dict[str, Any]:
    """New runs (one per rule, variant and seed group of the setup), paced, started or not;
    none left behind when one cannot be created."""
    configs = urlstate.validated_configs(setup)
    if svc.max_runs and len(configs) > svc.max_runs:
        raise ServiceError(f"this race needs {len(configs)} runs; the server allows "
                           f"{svc.max_runs} at once (--max-runs): tick fewer rules")
    created: list[str] = []
    variants: dict[str, str] = {}
    try:
        for variant in configs:
            rid = svc.create(variant["config"], start=False, units=setup.get("units") or [0],
                             align=bool(setup.get("align")),
                             seed_index=int(setup.get("seed_index") or 0))
            created.append(rid)
            variants[rid] = variant["label"]
    except Exception:
        for rid in created:
            _quiet(lambda r=rid: svc.backend.delete(r))
        raise
    if speed is not None:
        for rid in created:
            _quiet(lambda r=rid: set_speed(svc, r, speed))
    if start:
        for rid in created:
            svc.backend.control(rid, "resume")
    return {"runs": created, "group": created, "variants": variants, "n": time.time()}

def set_speed(svc: Service, rid: str, speed: int) -> None:
    sps = layout.SPEEDS[_speed_index(speed)]
    if sps == urlstate.NARRATE:  # 100 steps/s, slowed to 10 around events (the worker's pacing)
        svc.backend.control(rid, "speed", steps_per_second=NARRATE_BASE, narrate=True)
    elif sps:
        svc.backend.control(rid, "speed", steps_per_second=float(sps))
    else:
        svc.backend.control(rid, "speed", steps_per_frame=0)

def stop_group(svc: Service, ids: Sequence[str]) -> None:
    for info in svc.infos(ids):
        if is_active(info.get("status", "")):
            _quiet(lambda r=info["id"]: svc.backend.control(r, "stop"))



#: one action at a time per tab: Dash drops the answer of a callback that is fired again
#: while in flight, so a play pressed during a reset lost the reset's group (and its runs
#: held slots unseen); now the buttons wait, with a spinner
BUSY = [(Output("transport", "className"), "transport busy", "transport"),
        (Output("presets", "className"), "preset-grid busy", "preset-grid"),
        *[(Output(b, "disabled"), True, False) for b in TRANSPORT_BUTTONS]]


def _register_transport(app: dash.Dash, svc: Service) -> None:
    @app.callback(
        Output("live-store", "data", allow_duplicate=True),
        Output("transport-msg", "children", allow_duplicate=True),
        Input("btn-play", "n_clicks"), Input("btn-reset", "n_clicks"),
        Input("btn-step", "n_clicks"), Input("btn-ff", "n_clicks"),
        Input("speed", "value"), Input("autostart", "data"), Input("btn-test", "n_clicks"),
        Input("btn-stop", "n_clicks"),
        State("setup-store", "data"), State("live-store", "data"),
        State("step-k", "value"), State("ff-to", "value"),
        prevent_initial_call=True,
        running=BUSY,
    )
    def transport(_play: int, _reset: int, _step: int, _ff: int, speed: int, auto: dict | None,
                  _test: int, _stop: int, setup: dict | None, live: dict | None, k: Any,
                  ff_to: Any) -> tuple:
        # a preset sets the speed and starts at once: the start wins over the speed change
        trigger = "autostart" if "autostart.data" in ctx.triggered_prop_ids else ctx.triggered_id
        live = live or {"runs": [], "group": []}
        group = list(live.get("group") or [])
        infos = svc.infos(group)
        active = [i for i in infos if is_active(i.get("status", ""))]
        try:
            if trigger == "autostart":
                if not auto:
                    raise PreventUpdate
                errors = urlstate.validate(auto["setup"])
                if errors:
                    return no_update, _refusal(errors)
                stop_group(svc, group)
                speed = urlstate.speed_index(auto["setup"].get("speed", urlstate.DEFAULT_SPEED))
                return (start_group(svc, auto["setup"], True, speed),
                        auto.get("note") or "")
            if trigger == "btn-stop":
                if not active:
                    return no_update, "nothing to stop"
                stop_group(svc, group)
                return {**live, "n": time.time()}, f"stopped {len(active)} run(s) at step " \
                    f"{max(int(i.get('step', 0)) for i in active):,}; ↺ or ▶ starts anew"
            if trigger == "speed":
                for info in active:  # quiet: a viewer's page may not pace the runs
                    _quiet(lambda r=info["id"]: set_speed(svc, r, speed))
                raise PreventUpdate
            if trigger in ("btn-play", "btn-reset", "btn-step") and (
                    trigger == "btn-reset" or not active):
                setup = setup or urlstate.default_setup()
                if setup.get("errors"):
                    return no_update, _refusal(setup["errors"])
                stop_group(svc, group)
                start = trigger == "btn-play"
                new = start_group(svc, setup, start, speed)
                if trigger == "btn-step":
                    for rid in new["group"]:
                        svc.backend.control(rid, "step", k=_steps(k))
                return new, "" if start else "ready at step 0: ▶ to play, Step to step"
            if trigger == "btn-play":
                running = any(i.get("status") == "running" for i in active)
                for info in active:
                    svc.backend.control(info["id"], "pause" if running else "resume")
                return no_update, ""
            if trigger == "btn-step":
                for info in active:
                    svc.backend.control(info["id"], "step", k=_steps(k))
                return no_update, ""
            if trigger == "btn-test":
                if not active:
                    return no_update, "no live run to test: press ▶ first"
                for info in active:
                    svc.backend.control(info["id"], "evaluate")
                return no_update, "held-out test loss: the ◆ appears with the next frame"
            if trigger == "btn-ff":
                if not active:
                    return no_update, "nothing to fast-forward: press ▶ first"
                to = _steps(ff_to, default=0)
                for info in active:
                    if to > int(info.get("step", 0)):
                        svc.backend.control(info["id"], "fast_forward", to=to)
                return no_update, f"fast-forwarding to step {to:,}" if to else ""
        except PreventUpdate:
            raise
        except (ServiceError, ConfigError) as err:
            return no_update, error_text(err)
        raise PreventUpdate


def _register_live_route(app: dash.Dash, backend: Backend, hub: live.LiveHub) -> None:
    """GET {url_base}_plab/live/<key>?since=N: the live loop's endpoint (assets/plab.js).

    ``key`` is the channel show() joined (view["live"]); ``since`` the last item the client
    applied (-1 right after show(), with its cursors as ``c``, JSON). 304 when nothing is new
    (If-None-Match: "N" works too); otherwise the items after N (app.live). Only clients that
    may read every run of the channel get an answer (404 otherwise, as for the REST API).
    """
    from flask import jsonify, request

    base = app.config.routes_pathname_prefix or "/"

    def live_route(key: str) -> Any:
        chan = hub.channel(key)
        if chan is not None and hasattr(backend, "readable"):
            try:
                for rid in chan.runs:
                    backend.readable(rid)
            except (ServiceError, LookupError):
                return jsonify({"error": "live: no such view (sign in, or open the link "
                                         "again)", "field": "live"}), 404
        raw_since = request.args.get("since", "-1")
        try:
            since = live.parse_since(request.headers.get("If-None-Match", ""), raw_since)
            cursors = json.loads(request.args["c"]) if since < 0 and "c" in request.args else {}
            if not isinstance(cursors, dict):
                raise ValueError("c: expected an object of run id -> cursor")
            cursors = {str(k): int(v) for k, v in cursors.items()}
        except (ValueError, TypeError) as err:
            return jsonify({"error": f"live: since: got {raw_since[:100]!r} ({err}); allowed: "
                                     "an integer >= -1", "field": "since"}), 400
        who = security.current()
        viewer = who is not None and who.name is None  # a viewer link's: polls after the lecturer
        if chan is not None:  # checked: its next polls may be answered by live.LiveFront
            hub.grant(live.credentials(request.environ), key, viewer=viewer)
        status, body, headers = hub.respond(
            key, since, cursors, conditional=bool(request.headers.get("If-None-Match")),
            gzip_ok="gzip" in request.headers.get("Accept-Encoding", ""), viewer=viewer)
        response = app.server.response_class(body, status=status)
        for name, value in headers:
            response.headers[name] = value
        return response

    def live_stats() -> Any:
        who = security.current()
        if who is not None and not who.admin:
            return jsonify({"error": "auth: the live statistics are for the admin",
                            "field": "auth"}), 403
        return jsonify(hub.stats())

    app.server.add_url_rule(f"{base}_plab/live/<key>", "plab_live", live_route, methods=["GET"])
    # polls from clients checked above skip Flask, Dash and the guard (app.live.LiveFront)
    app.server.wsgi_app = live.LiveFront(app.server.wsgi_app, hub,  # type: ignore[method-assign]
                                         f"{base}_plab/live/")
    app.server.add_url_rule(f"{base}_plab/live-stats", "plab_live_stats", live_stats,
                            methods=["GET"])


# ---- the run table ------------------------------------------------------------------------------
def _register_table(app: dash.Dash, svc: Service) -> None:
    backend = svc.backend

    def finished_row(rid: str, status: str, step: int) -> dict[str, Any]:
        """A finished run's row does not change: shared by every client via the cache."""
        return table_row(backend.get(rid), [])

    row_cache = svc.cache.memoize(timeout=3600)(finished_row)

    @app.callback(
        Output("run-table", "data"),
        Input("slow-clock", "n_intervals"), Input("status-tick", "data"),
        Input("live-store", "data"),
    )
    def table(_n: int, _tick: Any, live: dict | None) -> list[dict[str, Any]]:
        who = security.current()
        if who is not None and who.name is None:
            raise PreventUpdate  # a viewer link's page has no run table (share.decorate)
        shown = set((live or {}).get("runs") or [])
        rows = []
        infos = backend.list_runs()
        named = names.names_by_id(infos)
        for info in infos:
            if is_terminal(info.get("status", "")):
                row = dict(row_cache(info["id"], info["status"], info.get("step", 0)))
                row["live"] = 1 if info["id"] in shown else 0
                row["id"] = info["id"]
                row["rule"] = named[info["id"]]
                rows.append(row)
            else:
                rows.append(table_row(info, list(shown), named[info["id"]]))
        return rows

    @app.callback(
        Output("live-store", "data", allow_duplicate=True),
        Output("download", "data"),
        Output("table-msg", "children", allow_duplicate=True),
        Output("run-table", "selected_row_ids"),
        Output("delete-armed", "data"),
        Input("tbl-open", "n_clicks"), Input("tbl-overlay", "n_clicks"),
        Input("tbl-branch", "n_clicks"), Input("tbl-delete", "n_clicks"),
        State("run-table", "selected_row_ids"), State("live-store", "data"),
        State("setup-store", "data"), State("delete-armed", "data"),
        prevent_initial_call=True,
    )
    def act(_o: int, _v: int, _b: int, _d: int, selected: list | None,
            live: dict | None, setup: dict | None, armed: dict | None) -> tuple:
        out = _act(ctx.triggered_id, list(selected or []),
                   dict(live or {"runs": [], "group": [], "variants": {}}), setup or {}, armed)
        return out if len(out) == 5 else (*out, None)

    def _act(trigger: Any, selected: list[str], live: dict, setup: dict, armed: dict | None
             ) -> tuple:
        if not selected:
            return no_update, no_update, "tick one or more runs first", no_update
        try:
            if trigger == "tbl-open":
                return ({"runs": selected, "group": selected, "variants": {}, "n": time.time()},
                        no_update, f"showing {len(selected)} run(s)", no_update)
            if trigger == "tbl-overlay":
                runs = list(dict.fromkeys([*live.get("runs", []), *selected]))
                return ({**live, "runs": runs, "n": time.time()}, no_update,
                        f"overlaying {len(runs)} run(s)", no_update)
            if trigger == "tbl-branch":
                new = []
                for rid in selected:
                    info = backend.get(rid)
                    changes = setup_changes_for_branch(setup or {}, info.get("config") or {})
                    result = backend.control(rid, "branch", changes=changes)
                    new.append(result["id"])
                return ({"runs": new, "group": new, "variants": {}, "n": time.time()}, no_update,
                        f"branched {', '.join(selected)} → {', '.join(new)}", [])
            if trigger == "tbl-delete":
                if not armed or armed.get("ids") != selected or time.time() - armed["t"] > 8:
                    return (no_update, no_update, f"click Delete again to delete "
                            f"{', '.join(selected)} and their files", no_update,
                            {"ids": selected, "t": time.time()})
                for rid in selected:
                    backend.delete(rid)
                keep = [r for r in live.get("runs", []) if r not in selected]
                group = [r for r in live.get("group", []) if r not in selected]
                return ({**live, "runs": keep, "group": group, "n": time.time()}, no_update,
                        f"deleted {', '.join(selected)}", [])
        except (ServiceError, ConfigError, LookupError) as err:
            return no_update, no_update, error_text(err), no_update
        raise PreventUpdate


# ---- clientside ---------------------------------------------------------------------------------
def _register_clientside(app: dash.Dash) -> None:
    app.clientside_callback(
        ClientsideFunction(namespace="plab", function_name="follow"),
        Output("tick-sink", "children"),
        Input("view-store", "data"), Input("cursor-store", "data"),
        prevent_initial_call=True,
    )
    app.clientside_callback(
        ClientsideFunction(namespace="plab", function_name="url"),
        Output("copy-link", "content"),
        Input("url-query", "data"),
        prevent_initial_call=True,
    )
    app.clientside_callback(
        ClientsideFunction(namespace="plab", function_name="present"),
        Output("present-sink", "children"),
        Input("present-store", "data"), Input("focus-store", "data"),
    )

    @app.callback(
        Output("present-store", "data", allow_duplicate=True),
        Input("btn-present", "n_clicks"), State("present-store", "data"),
        prevent_initial_call=True,
    )
    def toggle_present(_n: int, present: bool) -> bool:
        return not present

    @app.callback(
        Output("focus-store", "data", allow_duplicate=True),
        *[Input(f"panel-key-{p}", "n_clicks") for p in urlstate.PANELS],
        prevent_initial_call=True,
    )
    def focus(*_clicks: int) -> str:
        return str(ctx.triggered_id).removeprefix("panel-key-")
