"""The setup callbacks: the URL or a preset -> the form; the form -> the setup store (with a
message beside each bad field), the URL, live changes to running runs; the cost line."""

from __future__ import annotations

import time
from typing import Any

import dash
from dash import ALL, Input, Output, State, ctx, html, no_update
from dash.exceptions import PreventUpdate

from app.dashboard import layout, urlstate
from app.dashboard.controls import (
    _speed_index,
    cost_text,
    error_text,
    field_for,
    field_values,
    is_active,
    large_n_advice,
    live_updates,
    phase_row_error,
    seed_options,
    setup_from_fields,
    stale_message,
)
from app.dashboard.service import Service
from app.service.base import ServiceError
from simulator.phases import PRESETS as PHASE_PRESETS
from simulator.rules import RULES
from simulator.settings import ConfigError
from simulator.tasks import TASKS


def register_estimate(app: dash.Dash, svc: Service) -> None:
    settings = getattr(svc.backend, "settings", None)

    @app.callback(Output("cost-estimate", "children"), Input("setup-store", "data"))
    def estimate(setup: dict | None) -> Any:
        if not setup:
            return ""
        text = cost_text(setup, settings) if settings is not None else ""
        advice = large_n_advice(setup)
        return [text, html.Div(advice, className="cost-warning", role="alert")] if advice \
            else text

    @app.callback(
        Output("transport-msg", "children", allow_duplicate=True),
        Input("slow-clock", "n_intervals"), Input("status-tick", "data"),
        State("transport-msg", "children"), State("live-store", "data"),
        prevent_initial_call=True,
    )
    def clear_stale(_n: int, _tick: Any, message: Any, live: dict | None) -> str:
        if not isinstance(message, str) or not message:
            raise PreventUpdate
        if not stale_message(message, svc.infos((live or {}).get("group") or [])):
            raise PreventUpdate
        return ""


def _ids_of(group: Any) -> list[str]:
    return [item["id"]["key"] for item in group]


# ---- setup: URL/preset -> controls -> setup-store -> messages, URL ------------------------------
#: the form's controls that a URL or a preset sets, by name (the load callback's outputs)
LOAD_OUTPUTS = {
    "task": Output("task", "value"), "rules": Output("rules", "value"),
    "fields": Output({"type": "field", "key": ALL}, "value"),
    "phase_names": Output({"type": "ph-name", "i": ALL}, "value"),
    "phase_steps": Output({"type": "ph-steps", "i": ALL}, "value"),
    "phase_pops": Output({"type": "ph-pops", "i": ALL}, "value"),
    "phase_count": Output("phase-count", "data"),
    "phase_race": Output("phase-race", "value"), "align": Output("align", "value"),
    "units": Output("units", "value"), "seed_index": Output("seed-index", "value"),
    # with the value, or the picker drops a value its old options lack
    "seed_options": Output("seed-index", "options", allow_duplicate=True),
    "panels": Output("panels", "value"), "log_y": Output("log-y", "value"),
    "present": Output("present-store", "data"), "focus": Output("focus-store", "data"),
    "live": Output("live-store", "data", allow_duplicate=True),
    "autostart": Output("autostart", "data"),
    "message": Output("transport-msg", "children", allow_duplicate=True),
    "compare": Output("compare", "value"), "speed": Output("speed", "value"),
}


def register_setup(app: dash.Dash, svc: Service, keys: list[str]) -> None:
    _register_load(app, svc)
    _register_phase_count(app)
    _register_collect(app)
    _register_query(app)
    _register_apply_live(app, svc)


def _from_preset(svc: Service, trigger: dict, clicks: list, current: dict | None
                 ) -> tuple[dict[str, Any], dict[str, Any]]:
    """A preset's setup and the autostart request that starts it."""
    if not any(clicks):
        raise PreventUpdate
    preset = next((p for p in svc.presets() if p["id"] == trigger["id"]), None)
    if preset is None:
        raise PreventUpdate
    setup = dict(preset["setup"])
    setup["present"] = bool((current or {}).get("present"))
    return setup, {"setup": setup, "stamp": time.time(), "preset": preset["title"],
                   "note": preset.get("note", "")}


def _from_url(svc: Service, search: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A URL's setup, and (for ``run=ID``) the runs it opens and a message for missing ones."""
    setup, runs = urlstate.decode(search)
    out: dict[str, Any] = {}
    if runs:
        found = svc.infos(runs)
        missing = [r for r in runs if r not in {i["id"] for i in found}]
        if found and "rules=" not in search:
            setup = urlstate.setup_from_config(found[0]["config"], setup)
            setup["rules"] = list(dict.fromkeys(i["config"]["rule"] for i in found))
        ids = [i["id"] for i in found]
        out["live"] = {"runs": ids, "group": ids, "variants": {}, "n": time.time()}
        if missing:
            out["message"] = f"run {', '.join(missing)} not found; press ▶ to start this setup anew"
        if "speed=" not in search:  # opening runs leaves their pace alone unless it is named
            out["speed"] = no_update
    return setup, out


def _phase_rows(setup: dict[str, Any]) -> dict[str, Any]:
    """The phase table's rows (padded to MAX_PHASE_ROWS) for a setup's schedule."""
    blank = {"name": "", "steps": "100", "pops": list(layout.POPULATIONS)}
    rows_ = (urlstate.schedule_rows(setup.get("phases", "all")) or [blank])[:layout.MAX_PHASE_ROWS]
    all_rows = rows_ + [blank] * (layout.MAX_PHASE_ROWS - len(rows_))
    single = len(rows_) == 1 and set(rows_[0]["pops"]) == set(layout.POPULATIONS)
    return {"phase_names": [r["name"] if not single else "all" for r in all_rows],
            "phase_steps": [r["steps"] for r in all_rows],
            "phase_pops": [r["pops"] for r in all_rows], "phase_count": len(rows_)}


def _form(setup: dict[str, Any], field_ids: list[str], align_offered: bool) -> dict[str, Any]:
    """Every load output for a setup (the form shows it)."""
    return {
        "task": setup.get("task", "add"), "rules": list(setup.get("rules") or []),
        "fields": field_values(setup, field_ids), **_phase_rows(setup),
        "phase_race": ["on"] if setup.get("phase_race") else [],
        "align": ["on"] if setup.get("align") and align_offered else [],
        "units": list(setup.get("units") or [0]), "seed_index": int(setup.get("seed_index") or 0),
        "seed_options": seed_options(setup.get("seeds")),
        "panels": list(setup.get("panels") or urlstate.PANELS),
        "log_y": ["on"] if setup.get("log_y", True) else [],
        "present": bool(setup.get("present")), "focus": setup.get("focus", "loss"),
        "live": no_update, "autostart": no_update, "message": no_update,
        "compare": list(setup.get("compare") or []),
        "speed": urlstate.speed_index(setup.get("speed", urlstate.DEFAULT_SPEED)),
    }


def _register_load(app: dash.Dash, svc: Service) -> None:
    @app.callback(
        output=LOAD_OUTPUTS,
        inputs={"search": Input("url", "search"),
                "clicks": Input({"type": "preset", "id": ALL}, "n_clicks"),
                "phase_preset": Input("phase-preset", "value"),
                "current": State("setup-store", "data")},
        prevent_initial_call="initial_duplicate",
    )
    def load(search: str | None, clicks: list, phase_preset: str | None,
             current: dict | None) -> dict[str, Any]:
        """The URL, a preset or a phase preset -> the whole form (named outputs)."""
        trigger = ctx.triggered_id
        extra: dict[str, Any] = {}
        if isinstance(trigger, dict) and trigger.get("type") == "preset":
            setup, extra["autostart"] = _from_preset(svc, trigger, clicks, current)
        elif trigger == "phase-preset":
            if not phase_preset:
                raise PreventUpdate
            setup = dict(current or urlstate.default_setup())
            setup["phases"] = PHASE_PRESETS.get(phase_preset, phase_preset)
        else:
            setup, extra = _from_url(svc, search or "")
        field_ids = _ids_of(ctx.outputs_grouping["fields"])
        return {**_form(setup, field_ids, bool(svc.align)), **extra}


def _register_phase_count(app: dash.Dash) -> None:
    @app.callback(
        Output("phase-count", "data", allow_duplicate=True),
        Input("ph-add", "n_clicks"), Input("ph-remove", "n_clicks"),
        State("phase-count", "data"),
        prevent_initial_call=True,
    )
    def phase_count(_add: int, _remove: int, count: int) -> int:
        count = int(count or 1)
        if ctx.triggered_id == "ph-add":
            return min(layout.MAX_PHASE_ROWS, count + 1)
        return max(1, count - 1)


def _base_class(key: str) -> str:
    return "text-input" if key in urlstate.CORE_FIELDS or _is_text(key) else "field"

def _is_text(key: str) -> bool:
    if key.startswith(("task_args.", "rule_args.")):
        kind, owner, name = key.split(".", 2)
        registry = TASKS if kind == "task_args" else RULES
        for s in registry[owner].settings:
            if s.name == name:
                return not s.choices and s.kind is not bool
    return False


def _register_collect(app: dash.Dash) -> None:
    rows = range(layout.MAX_PHASE_ROWS)

    @app.callback(
        Output("setup-store", "data"),
        Output({"type": "msg", "key": ALL}, "children"),
        Output({"type": "field", "key": ALL}, "className"),
        Output({"type": "task-block", "task": ALL}, "style"),
        Output({"type": "rule-block", "rule": ALL}, "style"),
        Output({"type": "ph-row", "i": ALL}, "style"),
        Output("phase-string", "children"),
        Output("units", "options"),
        Output("seed-index", "options"),
        Input("task", "value"), Input("rules", "value"),
        Input({"type": "field", "key": ALL}, "value"),
        Input({"type": "ph-name", "i": ALL}, "value"),
        Input({"type": "ph-steps", "i": ALL}, "value"),
        Input({"type": "ph-pops", "i": ALL}, "value"),
        Input("phase-count", "data"),
        Input("phase-race", "value"), Input("align", "value"), Input("units", "value"),
        Input("seed-index", "value"),
        Input("panels", "value"), Input("log-y", "value"),
        Input("present-store", "data"), Input("focus-store", "data"),
        Input("compare", "value"),
        Input("speed", "value"),
    )
    def collect(task: str, rules: list[str], values: list, names: list, steps: list, pops: list,
                count: int, race: list, align: list, units: list, seed_index: int | None,
                panels: list, log_y: list, present: bool, focus: str,
                compare: list | None = None, speed: int | None = None) -> tuple:
        field_ids = _ids_of(ctx.inputs_list[2])
        base = {**urlstate.default_setup(), "task": task, "rules": list(rules or [])}
        count = max(1, min(int(count or 1), layout.MAX_PHASE_ROWS))
        rows_ = [{"name": names[i], "steps": steps[i], "pops": pops[i]} for i in range(count)]
        single_all = (count == 1 and (names[0] or "").strip() in ("", "all")
                      and set(pops[0] or []) == set(layout.POPULATIONS))
        phases = "all" if single_all else urlstate.rows_schedule(rows_)
        setup = setup_from_fields(field_ids, values, base)
        setup.update(phases=phases, phase_race=bool(race), align=bool(align),
                     units=sorted(int(u) for u in (units or [0]))[:4],
                     seed_index=int(seed_index or 0),
                     panels=[p for p in urlstate.PANELS if p in (panels or [])],
                     log_y=bool(log_y), present=bool(present), focus=focus or "loss",
                     compare=list(compare or []),
                     speed=layout.SPEEDS[_speed_index(speed)])
        errors = {field_for(k, task): v for k, v in urlstate.validate(setup).items()}
        row_error = phase_row_error(rows_)
        if row_error:  # a single "all" row hides its steps from the schedule string
            errors.setdefault("phases", row_error)
        msg_keys = _ids_of(ctx.outputs_list[1])
        messages = [errors.get(k, "") for k in msg_keys]
        classes = [("invalid " if k in errors else "") + _base_class(k) for k in field_ids]
        task_styles = [{"display": "block" if item["id"]["task"] == task else "none"}
                       for item in ctx.outputs_list[3]]
        rule_styles = [{"display": "block" if item["id"]["rule"] in (rules or []) else "none"}
                       for item in ctx.outputs_list[4]]
        row_styles = [{"display": "grid" if i < count else "none"} for i in rows]
        try:
            n = int(str(setup.get("n", "32")).strip())
        except ValueError:
            n = 32
        unit_options = [{"label": f"unit {i}", "value": i} for i in range(max(1, min(n, 64)))]
        setup["errors"] = errors
        return (setup, messages, classes, task_styles, rule_styles, row_styles,
                f"schedule: {phases}", unit_options, seed_options(setup.get("seeds")))

def _register_query(app: dash.Dash) -> None:
    @app.callback(
        Output("url-query", "data"),
        Input("setup-store", "data"), Input("live-store", "data"),
    )
    def query(setup: dict | None, live: dict | None) -> str:
        if not setup:
            raise PreventUpdate
        clean = {k: v for k, v in setup.items() if k != "errors"}
        return urlstate.encode(clean, (live or {}).get("group") or [])


def _register_apply_live(app: dash.Dash, svc: Service) -> None:
    @app.callback(
        Output("restart-hint", "children"),
        Output("rebuild-req", "data", allow_duplicate=True),
        Input("setup-store", "data"),
        State("live-store", "data"),
        prevent_initial_call=True,
    )
    def apply_live(setup: dict | None, live: dict | None) -> tuple[Any, Any]:
        """Rates and phases change mid-run; other differences say they need a reset. A new
        schedule rebuilds the view (its phases are shaded from then on)."""
        if not setup or not live or not live.get("group"):
            return "", no_update
        restart: set[str] = set()
        rebuild: Any = no_update
        for info in svc.infos(live["group"]):
            variant = (live.get("variants") or {}).get(info["id"], "")
            if is_active(info.get("status", "")) and not setup.get("errors"):
                params = live_updates(setup, info, variant)
                if params:
                    try:
                        svc.backend.control(info["id"], "set", **params)
                    except (ServiceError, ConfigError) as err:
                        return (f"could not change {', '.join(params)} mid-run: "
                                f"{error_text(err)}", no_update)
                    if "phases" in params:
                        rebuild = time.time()
            restart.update(urlstate.restart_fields(setup, info.get("config") or {}))
            if info.get("config", {}).get("rule") not in (setup.get("rules") or []):
                restart.add("rules")
        if restart:
            return (f"{', '.join(sorted(restart))} changed: press ↺ Reset to restart with the "
                    "new setting (rates and phases change live)", rebuild)
        return "", rebuild

