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

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import dash
from dash import ALL, ClientsideFunction, Input, Output, State, ctx, html, no_update
from dash.exceptions import PreventUpdate

from app import live, security
from app.dashboard import figures, layout, names, presets, urlstate
from app.dashboard.panels import circuit
from app.service import pacing
from app.service.base import ACTIONS, Backend, RunNotFound, ServiceError
from simulator.config import RunConfig, parse_seeds
from simulator.phases import PRESETS as PHASE_PRESETS
from simulator.rules import RULES
from simulator.settings import ConfigError, quote
from simulator.tasks import TASKS

log = logging.getLogger(__name__)

TERMINAL = ("finished", "stopped", "failed", "diverged", "interrupted")
ACTIVE = ("ready", "running", "paused", "parked")  # parked: ▶ (or any action) resumes it
GRAPHS = (*figures.BUILDERS, circuit.GRAPH)
PANEL_OF = {"loss-graph": "loss", "voltage-graph": "voltage", "weight-change-graph": "weights",
            "alignment-graph": "alignment", "task-graph": "task", circuit.GRAPH: "circuit"}
#: live-settable rule settings -> the "set" action's parameter
LIVE_RULE_ARGS = {name: pop for name, pop in layout.LIVE_RULE_ARGS.items()
                  if pop in ACTIONS.get("set", ())}


# ---------------------------------------------------------------------------------------------
# pure helpers (unit-tested in tests/test_figures.py)
# ---------------------------------------------------------------------------------------------
def is_terminal(status: str) -> bool:
    return any(str(status).startswith(s) for s in TERMINAL)


def is_active(status: str) -> bool:
    return str(status) in ACTIVE


def fmt_loss(values: Any) -> float | None:
    """Mean over seeds, a number (so the table sorts it as one); None when there is none."""
    if not values:
        return None
    vals = [v for v in (values if isinstance(values, list) else [values]) if v is not None]
    return round(sum(vals) / len(vals), 6) if vals else None


def seed_options(seeds: Any) -> list[dict[str, Any]]:
    """The seed picker's choices: one per seed of the setup (value: its index), at most 64."""
    try:
        parsed = parse_seeds(seeds if seeds not in (None, "") else "0")
    except ConfigError:
        parsed = [0]
    return [{"label": f"seed {s}", "value": i} for i, s in enumerate(parsed[:64])]


def table_row(info: Mapping[str, Any], live: Sequence[str], name: str = "") -> dict[str, Any]:
    cfg = info.get("config") or {}
    seeds = cfg.get("seeds") or []
    return {
        "id": info["id"], "rule": name or cfg.get("rule", "?"), "task": cfg.get("task", "?"),
        "status": info.get("status", ""), "step": info.get("step", 0),
        "best": fmt_loss(info.get("best_test_loss")), "last": fmt_loss(info.get("last_test_loss")),
        "phases": info.get("phases") or cfg.get("phases", ""),
        "setup": f"{cfg.get('n')} · {cfg.get('alpha')} · {cfg.get('lr')} · "
                 f"{','.join(map(str, seeds[:4]))}{'…' if len(seeds) > 4 else ''}",
        "parent": info.get("parent") or "", "live": 1 if info["id"] in live else 0,
    }


def status_chips(infos: Sequence[Mapping[str, Any]], colors: Mapping[str, str]) -> list[Any]:
    from dash import html

    chips = []
    named = names.names_by_id(infos)
    for info in infos:
        cfg = info.get("config") or {}
        target = info.get("target_steps") or cfg.get("steps") or 0
        sps = info.get("steps_per_second") or 0
        text = (f"{named[info['id']]} · {info.get('status', '')} · step "
                f"{info.get('step', 0):,}/{target:,}" + (f" · {sps:,.0f}/s" if sps else ""))
        parked = info.get("status") == "parked"
        chips.append(html.Span([html.Span("●", style={"color": colors.get(info["id"], "#555")}),
                                " " + text], className="chip chip-parked" if parked else "chip",
                               title=f"{info['id']}: idle, so its worker was released; ▶ "
                                     "resumes it from its checkpoint" if parked else info["id"],
                               **{"data-status": str(info.get("status", ""))}))
    return chips or ["no run yet — press ▶"]


def setup_changes_for_branch(setup: Mapping[str, Any], config: Mapping[str, Any]
                             ) -> dict[str, Any]:
    """Config changes a branch takes from the control panel: the first rule (with its
    settings), the learning rate and the phase schedule, where they differ."""
    changes: dict[str, Any] = {}
    rules = list(setup.get("rules") or [])
    if rules:
        rule = rules[0]
        args = urlstate.rule_args_of(setup, rule)
        if rule != config.get("rule"):
            changes["rule"] = rule
            changes["rule_args"] = args
        elif {k: urlstate.text(v) for k, v in (config.get("rule_args") or {}).items()} != args:
            changes["rule_args"] = args
    if str(setup.get("lr")) != urlstate.text(config.get("lr")):
        changes["lr"] = str(setup.get("lr"))
    if str(setup.get("phases")) != str(config.get("phases")):
        changes["phases"] = str(setup.get("phases"))
    if changes:
        merged = {**config, **changes}
        typed = RunConfig.from_dict({k: v for k, v in merged.items()
                                     if k in {f.name for f in dataclasses.fields(RunConfig)}})
        changes = {k: typed.to_dict()[k] for k in changes}
    return changes


def live_updates(setup: Mapping[str, Any], info: Mapping[str, Any], variant: str
                 ) -> dict[str, Any]:
    """The "set" parameters that bring a live run to the control panel's rates and phases."""
    params: dict[str, Any] = {}
    allowed = set(ACTIONS.get("set", ()))
    rates = info.get("learning_rates") or {}
    cfg = info.get("config") or {}
    try:
        lr = float(str(setup.get("lr", "")).strip())
        current = rates.get("basal", cfg.get("lr"))
        if "lr" in allowed and current is not None and abs(lr - float(current)) > 1e-15:
            params["lr"] = lr
    except ValueError:
        pass
    rule = cfg.get("rule")
    if rule in (setup.get("rules") or []):
        args = urlstate.rule_args_of(setup, rule)
        for name, pop in LIVE_RULE_ARGS.items():
            if name not in args:
                continue
            try:
                value = float(args[name])
            except ValueError:
                continue
            current = rates.get(pop, (cfg.get("rule_args") or {}).get(name))
            if current is not None and abs(value - float(current)) > 1e-15:
                params[pop] = value
    phases = str(setup.get("phases", ""))
    if ("phases" in allowed and variant != "no phases" and phases and phases != info.get("phases")
            and not urlstate.validate({**urlstate.default_setup(), "phases": phases}).get("phases")):
        params["phases"] = phases
    return params


def run_has_alignment(info: Mapping[str, Any], history: Mapping[str, Any] | None) -> bool:
    cfg = info.get("config") or {}
    return bool(cfg.get("align") or info.get("align") or (history or {}).get("alignment"))


def field_for(key: str, task: str) -> str:
    """The message slot of a validation key: task_args.t1 -> task_args.<task>.t1."""
    if key.startswith("task_args."):
        return f"task_args.{task}.{key.split('.', 1)[1]}"
    return key


def field_values(setup: Mapping[str, Any], keys: Sequence[str]) -> list[Any]:
    """The value of every field component (ids in ``keys``) for a setup."""
    out = []
    for key in keys:
        if key.startswith("task_args."):
            _, task, name = key.split(".", 2)
            if task == setup.get("task"):
                value = urlstate.task_args_of(setup).get(name)
            else:
                value = urlstate.task_defaults(task).get(name)
            out.append(_field_value(TASKS[task].settings, name, value))
        elif key.startswith("rule_args."):
            _, rule, name = key.split(".", 2)
            value = urlstate.rule_args_of(setup, rule).get(name)
            out.append(_field_value(RULES[rule].settings, name, value))
        else:
            out.append(str(setup.get(key, urlstate.DEFAULT_SETUP.get(key, ""))))
    return out


def _field_value(settings: Sequence[Any], name: str, value: Any) -> Any:
    for s in settings:
        if s.name == name and s.kind is bool and not s.choices:
            return ["on"] if str(value).lower() in ("true", "1", "on", "yes") else []
    return value


def setup_from_fields(keys: Sequence[str], values: Sequence[Any], base: Mapping[str, Any]
                      ) -> dict[str, Any]:
    """Inverse of :func:`field_values`: fold field values into a setup."""
    setup = dict(base)
    task_args: dict[str, str] = {}
    rule_args: dict[str, dict[str, str]] = {}
    for key, value in zip(keys, values, strict=True):
        if isinstance(value, list):  # a switch
            value = "true" if value else "false"
        value = "" if value is None else str(value)
        if key.startswith("task_args."):
            _, task, name = key.split(".", 2)
            if task == setup.get("task"):
                task_args[name] = value
        elif key.startswith("rule_args."):
            _, rule, name = key.split(".", 2)
            rule_args.setdefault(rule, {})[name] = value
        else:
            setup[key] = value
    setup["task_args"] = task_args
    setup["rule_args"] = {r: a for r, a in rule_args.items() if r in (setup.get("rules") or [])}
    return setup


def phase_source(infos: Sequence[Mapping[str, Any]]) -> tuple[str | None, list[str]]:
    """The run whose phases are shaded (the first with more than one phase; in a race of
    schedules against no phases, the one with phases) and its phase names."""
    for info in infos:
        names = urlstate.phase_names(str(info.get("phases") or
                                         (info.get("config") or {}).get("phases", "all")))
        if len(names) > 1:
            return info["id"], names
    return (infos[0]["id"] if infos else None), []


def phase_row_error(rows: Sequence[Mapping[str, Any]]) -> str:
    """The first phase row whose steps are not a whole number >= 1, as a message."""
    for i, row in enumerate(rows):
        text = str(row.get("steps") if row.get("steps") is not None else "").strip()
        if not (text.isdigit() and 1 <= int(text) <= 10**9):
            return (f"phase {i + 1} steps: got {quote(text)}; allowed: an "
                    "integer in [1, 1e9]")
    return ""


#: from this many units on, the cost line warns and suggests a smaller apical rate
LARGE_N = 256


def large_n_advice(setup: Mapping[str, Any]) -> str:
    """For large n: a warning, and for rules with an apical rate (dni, dni-b) a rate scaled
    down with n (their apical step grows with n; the defaults suit n = 32)."""
    try:
        n = int(str(setup.get("n", "")).strip())
    except ValueError:
        return ""
    if n < LARGE_N:
        return ""
    text = f"n = {n:,} is large: each step is slow and the default rates may diverge"
    tips = []
    for rule in setup.get("rules") or []:
        args = urlstate.rule_args_of(setup, rule)
        if "lr_apical" in args:
            try:
                rate = float(args["lr_apical"])
            except ValueError:
                continue
            tips.append(f"{rule}: lr_apical ≈ {names.num(rate * 32 / n)} "
                        f"(now {names.num(rate)}; its step grows with n)")
    return text + ("; try " + ", ".join(tips) if tips else "")


def stale_message(message: str, infos: Sequence[Mapping[str, Any]]) -> bool:
    """True when a transport message no longer holds: a fast-forward that has arrived (or
    whose runs ended), "ready at step 0" once the runs move."""
    if message.startswith("fast-forwarding to step "):
        try:
            to = int(message.removeprefix("fast-forwarding to step ").split()[0].replace(",", ""))
        except ValueError:
            return True
        return all(int(i.get("step", 0)) >= to or not is_active(i.get("status", ""))
                   for i in infos)
    if message.startswith("ready at step 0"):
        return any(int(i.get("step", 0)) > 0 or not is_active(i.get("status", ""))
                   for i in infos)
    return False


def phase_lengths(infos: Sequence[Mapping[str, Any]], run_id: str | None) -> list[int]:
    """The phase lengths (steps) of the shaded run's schedule."""
    for info in infos:
        if info["id"] == run_id:
            phases = str(info.get("phases") or (info.get("config") or {}).get("phases", "all"))
            return [int(r["steps"]) for r in urlstate.schedule_rows(phases) or []]
    return []


# ---------------------------------------------------------------------------------------------
# registration
# ---------------------------------------------------------------------------------------------
class Service:
    """The dashboard's access to the backend, with flask-caching for shareable things."""

    def __init__(self, backend: Backend, cache: Any) -> None:
        self.backend = backend
        self.cache = cache
        self.align = True  # runs ask for alignment through RunConfig.align
        self.max_runs = getattr(getattr(backend, "settings", None), "max_runs", None)
        self._presets = cache.memoize(timeout=3600)(self._presets_uncached)
        self._finished_history = cache.memoize(timeout=3600)(self._history_uncached)
        #: the live channels (app.live): frames are read with the server's own rights; each
        #: poll is checked against the caller's (see _register_live_route)
        self.hub = live.LiveHub(getattr(backend, "inner", backend))

    def presets(self) -> list[dict[str, Any]]:
        return self._presets(self.max_runs)

    @staticmethod
    def _presets_uncached(max_runs: int | None) -> list[dict[str, Any]]:
        """Presets whose setup is valid here (a task family that needs a name is left out)."""
        return [p for p in presets.presets(max_runs) if not urlstate.validate(p["setup"])]

    def _history_uncached(self, run_id: str, status: str, step: int) -> dict[str, Any]:
        return self.backend.history(run_id)

    def history(self, info: Mapping[str, Any]) -> dict[str, Any]:
        """Whole-run overview; cached (shared by every client) once the run has ended."""
        if is_terminal(info.get("status", "")):
            return self._finished_history(info["id"], info.get("status", ""), info.get("step", 0))
        return self.backend.history(info["id"])

    def infos(self, ids: Sequence[str]) -> list[dict[str, Any]]:
        out = []
        for rid in ids:
            try:
                out.append(self.backend.get(rid))
            except RunNotFound:
                continue
        return out

    def create(self, config: dict[str, Any], *, start: bool, units: Sequence[int], align: bool,
               seed_index: int = 0) -> str:
        config = dict(config)
        kwargs: dict[str, Any] = {}
        if align:
            config["align"] = "auto"
        n = int(config.get("n", 32))
        view = {"units": [u for u in units if 0 <= u < n] or [0],
                "seed_index": figures.clamp_seed_index(seed_index,
                                                       len(seed_options(config.get("seeds"))))}
        return self.backend.create(config, start=start, view=view, **kwargs)


def error_text(err: Exception) -> str:
    if isinstance(err, ConfigError):
        return f"{err.field}: {err.message}"
    if isinstance(err, ServiceError):
        return err.message
    return str(err)


def register(app: dash.Dash, backend: Backend, cache: Any) -> Service:
    svc = Service(backend, cache)
    keys = layout.field_keys()
    _register_setup(app, svc, keys)
    _register_transport(app, svc)
    _register_view(app, svc)
    _register_table(app, svc)
    _register_clientside(app)
    _register_live_route(app, backend, svc.hub)
    app.server.extensions["plasticity_live"] = svc.hub
    _register_estimate(app, svc)
    return svc


def cost_text(setup: Mapping[str, Any], settings: Any) -> str:
    """One line beside the Network settings: what the setup's run(s) will cost, and whether
    this server's per-run budgets take it ("" while the setup does not validate)."""
    from app.service.admission import estimate_dict
    from simulator.cost import flops_text, size_text

    try:
        configs = [v["config"] for v in urlstate.validated_configs(setup)]
        align = {"align": "auto"} if setup.get("align") else {}
        costs = [estimate_dict(RunConfig.from_dict({**c, **align}), settings) for c in configs]
    except (ConfigError, ServiceError):
        return ""
    if not costs:
        return ""
    memory = sum(c["memory_bytes"] for c in costs)
    disk = sum(c["disk_bytes_per_1000_steps"] for c in costs)
    flops = sum(c["flops_per_step"] for c in costs)
    runs = f"{len(costs)} runs: " if len(costs) > 1 else ""
    text = (f"cost: {runs}about {size_text(memory)} of memory, {size_text(disk)} of history "
            f"per 1,000 steps, {flops_text(flops)} per step")
    worst = max(costs, key=lambda c: c["memory_bytes"])
    if not all(c["fits"] for c in costs):
        limit = worst["budgets"]["run_memory"]
        text += (f" — over this server's budget ({size_text(limit)} of memory per run): "
                 "the run will be refused" if limit and worst["memory_bytes"] > limit
                 else " — over this server's work budget per run: the run will be refused")
    return text


def _register_estimate(app: dash.Dash, svc: Service) -> None:
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
        Input("slow-clock", "n_intervals"),
        State("transport-msg", "children"), State("live-store", "data"),
        prevent_initial_call=True,
    )
    def clear_stale(_n: int, message: Any, live: dict | None) -> str:
        if not isinstance(message, str) or not message:
            raise PreventUpdate
        if not stale_message(message, svc.infos((live or {}).get("group") or [])):
            raise PreventUpdate
        return ""


def _ids_of(group: Any) -> list[str]:
    return [item["id"]["key"] for item in group]


# ---- setup: URL/preset -> controls -> setup-store -> messages, URL ------------------------------
def _register_setup(app: dash.Dash, svc: Service, keys: list[str]) -> None:
    rows = range(layout.MAX_PHASE_ROWS)

    @app.callback(
        Output("task", "value"), Output("rules", "value"),
        Output({"type": "field", "key": ALL}, "value"),
        Output({"type": "ph-name", "i": ALL}, "value"),
        Output({"type": "ph-steps", "i": ALL}, "value"),
        Output({"type": "ph-pops", "i": ALL}, "value"),
        Output("phase-count", "data"),
        Output("phase-race", "value"), Output("align", "value"), Output("units", "value"),
        Output("seed-index", "value"),
        # with the value, or the picker drops a value its old options lack
        Output("seed-index", "options", allow_duplicate=True),
        Output("panels", "value"), Output("log-y", "value"),
        Output("present-store", "data"), Output("focus-store", "data"),
        Output("live-store", "data", allow_duplicate=True),
        Output("autostart", "data"),
        Output("transport-msg", "children", allow_duplicate=True),
        Output("compare", "value"),
        Output("speed", "value"),
        Input("url", "search"),
        Input({"type": "preset", "id": ALL}, "n_clicks"),
        Input("phase-preset", "value"),
        State("setup-store", "data"),
        State("live-store", "data"),
        prevent_initial_call="initial_duplicate",
    )
    def load(search: str | None, _clicks: list, phase_preset: str | None, current: dict | None,
             live: dict | None) -> tuple:
        trigger = ctx.triggered_id
        field_ids = _ids_of(ctx.outputs_list[2])
        live_out: Any = no_update
        autostart: Any = no_update
        message: Any = no_update
        if isinstance(trigger, dict) and trigger.get("type") == "preset":
            if not any(_clicks):
                raise PreventUpdate
            preset = next((p for p in svc.presets() if p["id"] == trigger["id"]), None)
            if preset is None:
                raise PreventUpdate
            setup = dict(preset["setup"])
            setup["present"] = bool((current or {}).get("present"))
            autostart = {"setup": setup, "stamp": time.time(), "preset": preset["title"],
                         "note": preset.get("note", "")}
        elif trigger == "phase-preset":
            if not phase_preset:
                raise PreventUpdate
            setup = dict(current or urlstate.default_setup())
            setup["phases"] = PHASE_PRESETS.get(phase_preset, phase_preset)
        else:
            setup, runs = urlstate.decode(search or "")
            if runs:
                found = svc.infos(runs)
                missing = [r for r in runs if r not in {i["id"] for i in found}]
                if found and "rules=" not in (search or ""):
                    setup = urlstate.setup_from_config(found[0]["config"], setup)
                    setup["rules"] = list(dict.fromkeys(i["config"]["rule"] for i in found))
                ids = [i["id"] for i in found]
                live_out = {"runs": ids, "group": ids, "variants": {}, "n": time.time()}
                if missing:
                    message = (f"run {', '.join(missing)} not found; press ▶ to start this "
                               "setup anew")
        # opening runs (?run=ID) leaves their pace alone unless the link names one
        speed_out: Any = urlstate.speed_index(setup.get("speed", urlstate.DEFAULT_SPEED))
        if live_out is not no_update and "speed=" not in (search or ""):
            speed_out = no_update
        rows_ = urlstate.schedule_rows(setup.get("phases", "all")) or [
            {"name": "", "steps": "100", "pops": list(layout.POPULATIONS)}]
        rows_ = rows_[:layout.MAX_PHASE_ROWS]
        pad = [{"name": "", "steps": "100", "pops": list(layout.POPULATIONS)}] * (
            len(rows) - len(rows_))
        all_rows = rows_ + pad
        single = len(rows_) == 1 and set(rows_[0]["pops"]) == set(layout.POPULATIONS)
        return (
            setup.get("task", "add"), list(setup.get("rules") or []),
            field_values(setup, field_ids),
            [r["name"] if not single else "all" for r in all_rows],
            [r["steps"] for r in all_rows],
            [r["pops"] for r in all_rows],
            len(rows_),
            ["on"] if setup.get("phase_race") else [],
            ["on"] if setup.get("align") and svc.align else [],
            list(setup.get("units") or [0]),
            int(setup.get("seed_index") or 0), seed_options(setup.get("seeds")),
            list(setup.get("panels") or urlstate.PANELS),
            ["on"] if setup.get("log_y", True) else [],
            bool(setup.get("present")), setup.get("focus", "loss"),
            live_out, autostart, message,
            list(setup.get("compare") or []),
            speed_out,
        )

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

    @app.callback(
        Output("url-query", "data"),
        Input("setup-store", "data"), Input("live-store", "data"),
    )
    def query(setup: dict | None, live: dict | None) -> str:
        if not setup:
            raise PreventUpdate
        clean = {k: v for k, v in setup.items() if k != "errors"}
        return urlstate.encode(clean, (live or {}).get("group") or [])

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


# ---- transport ----------------------------------------------------------------------------------
#: disabled while a transport action is in flight (see ``transport``'s ``running``)
TRANSPORT_BUTTONS = ("btn-play", "btn-reset", "btn-step", "btn-stop", "btn-ff", "btn-test")


def _register_transport(app: dash.Dash, svc: Service) -> None:
    def start_group(setup: Mapping[str, Any], start: bool, speed: int | None) -> dict[str, Any]:
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
                _quiet(lambda r=rid: set_speed(r, speed))
        if start:
            for rid in created:
                svc.backend.control(rid, "resume")
        return {"runs": created, "group": created, "variants": variants, "n": time.time()}

    def set_speed(rid: str, speed: int) -> None:
        sps = layout.SPEEDS[_speed_index(speed)]
        if sps == urlstate.NARRATE:
            svc.backend.control(rid, "speed", steps_per_second=pacing.NARRATE_BASE, narrate=True)
        elif sps:
            svc.backend.control(rid, "speed", steps_per_second=float(sps))
        else:
            svc.backend.control(rid, "speed", steps_per_frame=0)

    def stop_group(ids: Sequence[str]) -> None:
        for info in svc.infos(ids):
            if is_active(info.get("status", "")):
                _quiet(lambda r=info["id"]: svc.backend.control(r, "stop"))

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
        # one action at a time per tab: Dash drops the answer of a callback that is fired
        # again while in flight, so a play pressed during a reset lost the reset's group
        # (and its runs held slots unseen); now the buttons wait, with a spinner
        running=[(Output("transport", "className"), "transport busy", "transport"),
                 (Output("presets", "className"), "preset-grid busy", "preset-grid"),
                 *[(Output(b, "disabled"), True, False) for b in TRANSPORT_BUTTONS]],
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
                stop_group(group)
                speed = urlstate.speed_index(auto["setup"].get("speed", urlstate.DEFAULT_SPEED))
                return (start_group(auto["setup"], True, speed),
                        auto.get("note") or "")
            if trigger == "btn-stop":
                if not active:
                    return no_update, "nothing to stop"
                stop_group(group)
                return {**live, "n": time.time()}, f"stopped {len(active)} run(s) at step " \
                    f"{max(int(i.get('step', 0)) for i in active):,}; ↺ or ▶ starts anew"
            if trigger == "speed":
                for info in active:  # quiet: a viewer's page may not pace the runs
                    _quiet(lambda r=info["id"]: set_speed(r, speed))
                raise PreventUpdate
            if trigger in ("btn-play", "btn-reset", "btn-step") and (
                    trigger == "btn-reset" or not active):
                setup = setup or urlstate.default_setup()
                if setup.get("errors"):
                    return no_update, _refusal(setup["errors"])
                stop_group(group)
                start = trigger == "btn-play"
                new = start_group(setup, start, speed)
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


def _speed_index(value: Any) -> int:
    """The transport's radio value, clamped to an index into SPEEDS."""
    try:
        return max(0, min(int(value), len(layout.SPEEDS) - 1))
    except (TypeError, ValueError):
        return layout.DEFAULT_SPEED


def _steps(value: Any, default: int = 10) -> int:
    try:
        return max(1, int(value))
    except (TypeError, ValueError):
        return default


def _refusal(errors: Mapping[str, str]) -> str:
    first = next(iter(errors.items()))
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"Nothing started: fix {first[0]} — {first[1]}{more}"


def _quiet(fn: Callable[[], Any]) -> None:
    try:
        fn()
    except (ServiceError, ConfigError, LookupError) as err:
        log.info("ignored: %s", err)


# ---- the view and the live loop -------------------------------------------------------------------
def _register_view(app: dash.Dash, svc: Service) -> None:
    backend = svc.backend

    @app.callback(
        *[Output(gid, "figure") for gid in GRAPHS],
        Output("view-store", "data"),
        Output("cursor-store", "data", allow_duplicate=True),
        Input("live-store", "data"), Input("units", "value"), Input("seed-index", "value"),
        Input("panels", "value"),
        Input("log-y", "value"), Input("present-store", "data"), Input("rebuild-req", "data"),
        Input("heat-run", "value"),
        State("view-store", "data"),
        prevent_initial_call="initial_duplicate",
    )
    def show(live: dict | None, units: list | None, seed_index: int | None, panels: list | None,
             log_y: list | None, present: bool, _rebuild: Any, heat_run: str | None,
             old: dict | None) -> tuple:
        epoch = int((old or {}).get("epoch", 0)) + 1
        ids = list((live or {}).get("runs") or [])
        infos = svc.infos(ids)
        units = sorted(int(u) for u in (units or [0]))[:4] or [0]
        histories: dict[str, dict[str, Any]] = {}
        recent: dict[str, list[dict[str, Any]]] = {}
        cursors: dict[str, int] = {}
        for info in infos:
            rid = info["id"]
            try:
                hist = svc.history(info)
                cursor = int(hist.get("cursor", -1))
                frames, _ = backend.frames(rid, after=max(-1, cursor - 4))
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
                _quiet(lambda r=rid, i=index: backend.control(r, "view", units=units,
                                                              seed_index=i))
        colors = figures.assign_colors([(i.get("config") or {}).get("rule", "?") for i in infos])
        variants = (live or {}).get("variants") or {}
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
        first = infos[0] if infos else {}
        task = (first.get("config") or {}).get("task", "add")
        phase_run, phase_names = phase_source(infos)
        view = figures.make_view(
            runs, epoch=epoch, units=units, seed_index=int(seed_index or 0),
            panels=[p for p in urlstate.PANELS if p in (panels or urlstate.PANELS)],
            log_y=bool(log_y), scale=1.55 if present else 1.0,
            refs=first.get("reference_levels") or {},
            loss_kind=getattr(TASKS.get(task), "loss", "cross_entropy"),
            task_view=first.get("task_view") or {}, phase_names=phase_names,
            phase_run=phase_run, align_supported=svc.align is not None,
            phase_steps=phase_lengths(infos, phase_run), heat_run=heat_run)
        figs, carry = figures.build_figures(view, histories, recent)
        figs[circuit.GRAPH] = circuit.circuit_figure(view, recent, carry)
        view["live"] = svc.hub.join(view, cursors, carry)  # the shared live channel (app.live)
        cursor_store = {"epoch": epoch, "cursors": cursors}
        return (*[figs[g] for g in GRAPHS], view, cursor_store)

    @app.callback(
        Output("heat-run", "options"), Output("heat-run", "value"),
        Input("live-store", "data"), State("heat-run", "value"),
    )
    def heat_runs(live: dict | None, current: str | None) -> tuple:
        """The heatmap's run picker: every run shown, by name; keeps the pick while shown."""
        named = names.names_by_id(svc.infos((live or {}).get("runs") or []))
        options = [{"label": name, "value": rid} for rid, name in named.items()]
        value = current if current in named else next(iter(named), None)
        return options, value

    @app.callback(
        Output("live-status", "children"), Output("btn-play", "children"),
        Output("btn-play", "className"),
        Input("slow-clock", "n_intervals"), Input("view-store", "data"),
        State("live-store", "data"),
    )
    def status(_n: int, view: dict | None, live: dict | None) -> tuple:
        infos = svc.infos((live or {}).get("runs") or [])
        colors = {r["id"]: r["color"] for r in (view or {}).get("runs", [])}
        group = set((live or {}).get("group") or [])
        running = any(i.get("status") == "running" for i in infos if i["id"] in group)
        return (status_chips(infos, colors), "❚❚" if running else "▶",
                "tbtn play running" if running else "tbtn play")


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
        match = request.headers.get("If-None-Match", "").strip().strip('W/"')
        try:
            since = int(match if match.lstrip("-").isdigit() else raw_since)
            cursors = json.loads(request.args["c"]) if since < 0 and "c" in request.args else {}
            if not isinstance(cursors, dict):
                raise ValueError("c: expected an object of run id -> cursor")
            cursors = {str(k): int(v) for k, v in cursors.items()}
        except (ValueError, TypeError) as err:
            return jsonify({"error": f"live: since: got {raw_since[:100]!r} ({err}); allowed: "
                                     "an integer >= -1", "field": "since"}), 400
        status, body, seq = hub.poll(key, since, cursors)
        response = app.server.response_class(body, status=status, mimetype="application/json")
        response.headers["ETag"] = f'"{seq}"'
        response.headers["Cache-Control"] = "no-cache"
        return response

    def live_stats() -> Any:
        who = security.current()
        if who is not None and not who.admin:
            return jsonify({"error": "auth: the live statistics are for the admin",
                            "field": "auth"}), 403
        return jsonify(hub.stats())

    app.server.add_url_rule(f"{base}_plab/live/<key>", "plab_live", live_route, methods=["GET"])
    app.server.add_url_rule(f"{base}_plab/live-stats", "plab_live_stats", live_stats,
                            methods=["GET"])


def export_name(name: str, run_id: str, ext: str, panel: str = "") -> str:
    """A file name for a run's export: plasticity-<panel>-<run name>-<id>.<ext>, safe
    characters only ("dni · random fb" -> "dni_random-fb")."""
    import re

    words = [re.sub(r"[^A-Za-z0-9.+-]+", "-", w.strip()).strip("-")
             for w in (name or "").split("·")]
    stem = "_".join(w for w in words if w)[:80]
    parts = ["plasticity", panel, stem, run_id]
    return "-".join(p for p in parts if p) + f".{ext}"


def zip_files(files: Mapping[str, Any]) -> bytes:
    """A zip (in memory) of {name in the zip: path on disk}."""
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, path in files.items():
            zf.write(str(path), arcname=name)
    return buf.getvalue()


def image_config(panel: str, labels: Sequence[str], ids: Sequence[str]) -> dict[str, Any]:
    """A graph's toolbar: PNG at 2x named by panel and run(s), no cloud buttons."""
    if len(ids) == 1:
        filename = export_name(labels[0] if labels else "", ids[0], "png", panel)[:-4]
    else:
        filename = f"plasticity-{panel}-{len(ids)}-runs" if ids else f"plasticity-{panel}"
    return {"displaylogo": False, "responsive": True, "showSendToCloud": False,
            "showEditInChartStudio": False, "modeBarButtonsToRemove": ["lasso2d", "select2d"],
            "toImageButtonOptions": {"format": "png", "scale": 2, "filename": filename}}


# ---- the run table ------------------------------------------------------------------------------
def _register_table(app: dash.Dash, svc: Service) -> None:
    backend = svc.backend

    @app.callback(*[Output(gid, "config") for gid in GRAPHS], Input("view-store", "data"),
                  prevent_initial_call=True)
    def image_names(view: dict | None) -> tuple:
        runs = (view or {}).get("runs") or []
        labels, ids = [r["label"] for r in runs], [r["id"] for r in runs]
        return tuple(image_config(PANEL_OF[gid], labels, ids) for gid in GRAPHS)

    def finished_row(rid: str, status: str, step: int) -> dict[str, Any]:
        """A finished run's row does not change: shared by every client via the cache."""
        return table_row(backend.get(rid), [])

    row_cache = svc.cache.memoize(timeout=3600)(finished_row)

    @app.callback(
        Output("run-table", "data"),
        Input("slow-clock", "n_intervals"), Input("live-store", "data"),
    )
    def table(_n: int, live: dict | None) -> list[dict[str, Any]]:
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
        Output("table-msg", "children"),
        Output("run-table", "selected_row_ids"),
        Output("delete-armed", "data"),
        Input("tbl-open", "n_clicks"), Input("tbl-overlay", "n_clicks"),
        Input("tbl-csv", "n_clicks"), Input("tbl-json", "n_clicks"),
        Input("tbl-branch", "n_clicks"), Input("tbl-delete", "n_clicks"),
        State("run-table", "selected_row_ids"), State("live-store", "data"),
        State("setup-store", "data"), State("delete-armed", "data"),
        prevent_initial_call=True,
    )
    def act(_o: int, _v: int, _c: int, _j: int, _b: int, _d: int, selected: list | None,
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
            if trigger == "tbl-csv":
                named = names.names_by_id(svc.infos(selected))
                files = {export_name(named.get(rid, ""), rid, "csv"): backend.export_csv(rid)
                         for rid in selected}
                if len(files) == 1:
                    (name, path), = files.items()
                    return (no_update, dash.dcc.send_file(str(path), filename=name),
                            f"CSV of {selected[0]}", no_update)
                return (no_update, dash.dcc.send_bytes(zip_files(files), "runs-csv.zip"),
                        f"CSV of {len(files)} runs, one file each, in runs-csv.zip", no_update)
            if trigger == "tbl-json":
                configs = {rid: backend.export_config(rid) for rid in selected}
                body = configs[selected[0]] if len(selected) == 1 else configs
                name = f"run-{selected[0]}.json" if len(selected) == 1 else "runs.json"
                return (no_update, {"content": json.dumps(body, indent=2), "filename": name},
                        f"config of {', '.join(selected)}", no_update)
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
