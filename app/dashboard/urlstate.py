"""The whole setup in the URL's query string and back, and from a setup to run configs.

A *setup* is what the control panel shows, as a JSON dict of the strings typed into it
(so a bad value survives the round trip and gets its message):

    task, task_args {name: text}, rules [names], rule_args {rule: {name: text}},
    n, alpha, lr, seeds, steps (text), phases (schedule string), phase_race (bool),
    align (bool), units [ints], panels [names], log_y (bool), present (bool), focus (panel)

Query string (only what differs from the defaults, besides the core fields):

    ?task=add&t.t1=5&rules=dni,dni-b&r.dni.feedback=random&n=32&alpha=1&lr=0.001&seeds=0
    &steps=10000&phases=all&race_phases=1&align=1&units=0,1,2&panels=loss,voltage&log=0
    &present=1&focus=loss&run=ID   (run=ID or runs=ID,ID opens existing runs, starts nothing)
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode

from app.dashboard.panels import NAMES
from simulator.config import SCALARS, RunConfig, parse_seeds
from simulator.phases import POPULATIONS, PRESETS, parse_schedule
from simulator.rules import RULES
from simulator.settings import ConfigError, Setting, quote
from simulator.tasks import TASKS

CORE_FIELDS = ("n", "alpha", "lr", "seeds", "steps")
PANELS = NAMES  # the panel registry's names (app.dashboard.panels), in screen order
SCALAR_SETTINGS = {s.name: s for s in SCALARS}
DEFAULT_STEPS = "20000"
#: "narrate" (``speed=narrate``): 100 steps/s, slowed to 10 around phase switches and setting
#: changes (app.service.pacing); a sentinel among the speeds
NARRATE = -1
#: the transport's speeds in steps per second (0: as fast as the CPU runs; NARRATE)
SPEEDS = (10, 30, 100, 300, 1000, 0, NARRATE)
#: paced for teaching: 100 steps/s unless a preset or the URL says otherwise
DEFAULT_SPEED = 100

DEFAULT_SETUP: dict[str, Any] = {
    "task": "add",
    "task_args": {},
    "rules": ["dni-b"],
    "rule_args": {},
    "n": "32",
    "alpha": "1",
    "lr": "0.001",
    "seeds": "0",
    "steps": DEFAULT_STEPS,
    "phases": "all",
    "phase_race": False,
    "align": False,
    "compare": [],  # comparison rules measured passively on each run's network
    "units": [0, 1, 2],
    "seed_index": 0,  # which seed of the ensemble the voltage and task panels show
    "panels": list(PANELS),
    "log_y": True,
    "present": False,
    "focus": "loss",
    "speed": DEFAULT_SPEED,  # steps/s, one of SPEEDS (0: max)
}


def default_setup() -> dict[str, Any]:
    return copy.deepcopy(DEFAULT_SETUP)


def text(value: Any) -> str:
    """How a setting value is shown in a text field."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def task_defaults(task: str) -> dict[str, str]:
    cls = TASKS.get(task)
    return {s.name: text(s.default) for s in (cls.settings if cls else ())}


def rule_defaults(rule: str) -> dict[str, str]:
    cls = RULES.get(rule)
    return {s.name: text(s.default) for s in (cls.settings if cls else ())}


def task_args_of(setup: Mapping[str, Any]) -> dict[str, str]:
    """The selected task's settings: defaults overlaid with what the user typed."""
    given = (setup.get("task_args") or {})
    defaults = task_defaults(setup.get("task", ""))
    return {k: text(given.get(k, v)) for k, v in defaults.items()}


def rule_args_of(setup: Mapping[str, Any], rule: str) -> dict[str, str]:
    given = (setup.get("rule_args") or {}).get(rule) or {}
    return {k: text(given.get(k, v)) for k, v in rule_defaults(rule).items()}


# ---------------------------------------------------------------------------------------------
# URL
# ---------------------------------------------------------------------------------------------
def encode(setup: Mapping[str, Any], runs: Sequence[str] = ()) -> str:
    """The query string (without '?') that reproduces ``setup`` (and opens ``runs``)."""
    items: list[tuple[str, str]] = [("task", str(setup.get("task", "add")))]
    defaults = task_defaults(setup.get("task", ""))
    for key, value in task_args_of(setup).items():
        if value != defaults.get(key):
            items.append((f"t.{key}", value))
    rules = list(setup.get("rules") or [])
    items.append(("rules", ",".join(rules)))
    for rule in rules:
        rdefaults = rule_defaults(rule)
        for key, value in rule_args_of(setup, rule).items():
            if value != rdefaults.get(key):
                items.append((f"r.{rule}.{key}", value))
    for key in CORE_FIELDS:
        items.append((key, str(setup.get(key, DEFAULT_SETUP[key]))))
    items.append(("phases", str(setup.get("phases", "all"))))
    if setup.get("phase_race"):
        items.append(("race_phases", "1"))
    if setup.get("align"):
        items.append(("align", "1"))
    if setup.get("compare"):
        items.append(("compare", ",".join(setup["compare"])))
    units = [int(u) for u in setup.get("units") or []]
    if units != DEFAULT_SETUP["units"]:
        items.append(("units", ",".join(map(str, units))))
    if int(setup.get("seed_index") or 0):
        items.append(("seed_index", str(int(setup["seed_index"]))))
    panels = list(setup.get("panels") or [])
    if panels != list(PANELS):
        items.append(("panels", ",".join(panels)))
    if not setup.get("log_y", True):
        items.append(("log", "0"))
    if setup.get("present"):
        items.append(("present", "1"))
    if setup.get("focus", "loss") != "loss":
        items.append(("focus", str(setup["focus"])))
    if int(setup.get("speed", DEFAULT_SPEED)) != DEFAULT_SPEED:
        items.append(("speed", speed_text(int(setup["speed"]))))
    if runs:
        items.append(("runs" if len(runs) > 1 else "run", ",".join(runs)))
    return urlencode(items, safe=",:=")


def speed_text(sps: int) -> str:
    return "max" if sps == 0 else "narrate" if sps == NARRATE else str(sps)


def parse_speed(value: str) -> int:
    """A URL's speed (steps/s, or "max") -> the nearest of SPEEDS."""
    value = value.strip().lower()
    if value in ("max", "0"):
        return 0
    if value == "narrate":
        return NARRATE
    try:
        sps = float(value)
    except ValueError:
        return DEFAULT_SPEED
    return min((s for s in SPEEDS if s > 0), key=lambda s: abs(s - sps))


def speed_index(sps: Any) -> int:
    """The transport's radio value (an index into SPEEDS) for a speed in steps/s."""
    try:
        return SPEEDS.index(int(sps))
    except (TypeError, ValueError):
        return SPEEDS.index(DEFAULT_SPEED)


def _flag(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


def _ints(value: str) -> list[int]:
    out = []
    for part in value.split(","):
        part = part.strip()
        if part.lstrip("-").isdigit():
            out.append(int(part))
    return out


def decode(query: str) -> tuple[dict[str, Any], list[str]]:
    """(setup, run ids to open) from a query string; unknown keys are ignored, bad values
    are kept as typed so the control panel can show what is wrong with them."""
    setup = default_setup()
    runs: list[str] = []
    pairs = parse_qsl(query.lstrip("?"), keep_blank_values=True)
    given = {k for k, _ in pairs}
    for key, value in pairs:
        if key == "task":
            setup["task"] = value
        elif key.startswith("t."):
            setup["task_args"][key[2:]] = value
        elif key == "rules":
            setup["rules"] = [r for r in (v.strip() for v in value.split(",")) if r]
        elif key.startswith("r."):
            rule, _, name = key[2:].rpartition(".")
            if rule and name:
                setup["rule_args"].setdefault(rule, {})[name] = value
        elif key in CORE_FIELDS:
            setup[key] = value
        elif key == "phases":
            setup["phases"] = value
        elif key == "race_phases":
            setup["phase_race"] = _flag(value)
        elif key == "align":
            setup["align"] = _flag(value)
        elif key == "compare":
            setup["compare"] = [r for r in (v.strip() for v in value.split(",")) if r]
        elif key == "units":
            setup["units"] = _ints(value)[:4]
        elif key == "seed_index":
            setup["seed_index"] = (_ints(value) or [0])[0]
        elif key == "panels":
            setup["panels"] = [p for p in value.split(",") if p in PANELS]
        elif key == "log":
            setup["log_y"] = _flag(value)
        elif key == "present":
            setup["present"] = _flag(value)
        elif key == "focus" and value in PANELS:
            setup["focus"] = value
        elif key == "speed":
            setup["speed"] = parse_speed(value)
        elif key in ("run", "runs"):
            runs += [r.strip() for r in value.split(",") if r.strip()]
    if "rules" in given and not setup["rules"]:
        setup["rules"] = []
    return setup, runs


# ---------------------------------------------------------------------------------------------
# phases <-> editor rows
# ---------------------------------------------------------------------------------------------
def schedule_rows(phases: str) -> list[dict[str, Any]] | None:
    """Editor rows [{name, steps, pops}] for a schedule string (None if it does not parse)."""
    try:
        schedule = parse_schedule(phases)
    except ConfigError:
        return None
    return [{"name": p.name, "steps": str(p.steps),
             "pops": [pop for pop in POPULATIONS if pop in p.plastic]} for p in schedule.phases]


def rows_schedule(rows: Sequence[Mapping[str, Any]]) -> str:
    """The schedule string of editor rows (invalid rows stay visible to validation)."""
    parts = []
    for row in rows:
        pops = "+".join(p for p in POPULATIONS if p in (row.get("pops") or [])) or "none"
        name = str(row.get("name") or "").strip().replace(",", " ").replace("=", " ")
        steps = str(row.get("steps") or "").strip()
        parts.append(f"{name + '=' if name else ''}{pops}:{steps}")
    return ",".join(parts) or "all"


def phase_names(phases: str) -> list[str]:
    try:
        return [p.name for p in parse_schedule(phases).phases]
    except ConfigError:
        return []


# ---------------------------------------------------------------------------------------------
# setup -> validated run configs
# ---------------------------------------------------------------------------------------------
def field_key(error: ConfigError, rule: str | None = None) -> str:
    """The control-panel field of a ConfigError: n, task_args.t1, rule_args.<rule>.<name>..."""
    field = error.field
    if field.startswith("rule_args.") and rule:
        return f"rule_args.{rule}.{field.split('.', 1)[1]}"
    return field


def _check(setting: Setting, value: Any, where: str, field: str, errors: dict[str, str]) -> None:
    try:
        setting.parse(value, where)
    except ConfigError as err:
        errors.setdefault(field, err.message)


def validate(setup: Mapping[str, Any]) -> dict[str, str]:
    """Every bad field of the setup with its message (field keys as in :func:`field_key`).

    Each field is checked on its own (so all mistakes show at once), then each complete
    run config with ``RunConfig.from_dict`` for what depends on several fields.
    """
    errors: dict[str, str] = {}
    task = setup.get("task")
    if task not in TASKS:
        errors["task"] = f"unknown task {quote(task)}; allowed: {', '.join(TASKS)}"
    else:
        for s in TASKS[task].settings:
            _check(s, task_args_of(setup).get(s.name), "task_args", f"task_args.{s.name}", errors)
    rules = list(setup.get("rules") or [])
    if not rules:
        errors["rules"] = "pick at least one rule"
    for rule in rules:
        if rule not in RULES:
            errors["rules"] = f"unknown rule {quote(rule)}; allowed: {', '.join(RULES)}"
            continue
        args = rule_args_of(setup, rule)
        for s in RULES[rule].settings:
            _check(s, args.get(s.name), "rule_args", f"rule_args.{rule}.{s.name}", errors)
    for key in CORE_FIELDS:
        if key == "seeds":
            try:
                parse_seeds(str(setup.get("seeds", "")).strip())
            except ConfigError as err:
                errors["seeds"] = err.message
        else:
            _check(SCALAR_SETTINGS[key], str(setup.get(key, "")).strip(), "", key, errors)
    try:
        parse_schedule(str(setup.get("phases", "")))
    except ConfigError as err:
        errors["phases"] = err.message
    if errors:
        return errors
    for variant in variants(setup):
        try:
            RunConfig.from_dict(variant["config"])
        except ConfigError as err:
            errors.setdefault(field_key(err, variant["config"]["rule"]), err.message)
    return errors


def variants(setup: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One {"label", "config"} per run of the setup: one per rule (a race: the same task,
    seeds and so the same initial weights and input stream), twice per rule when racing the
    phase schedule against no phases. Values are the typed text; ``RunConfig`` parses it."""
    base = {
        "task": setup.get("task"),
        "task_args": task_args_of(setup),
        **{key: str(setup.get(key, DEFAULT_SETUP[key])).strip() for key in CORE_FIELDS},
        "phases": str(setup.get("phases", "all")),
        "compare": list(setup.get("compare") or []),
    }
    schedules = [("", base["phases"])]
    if setup.get("phase_race") and base["phases"] != "all":
        schedules = [("phases", base["phases"]), ("no phases", "all")]
    return [{"label": label, "config": {**base, "rule": rule, "rule_args": rule_args_of(setup, rule),
                                        "phases": phases}}
            for rule in setup.get("rules") or [] for label, phases in schedules]


def validated_configs(setup: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The setup's variants with typed, validated configs (raises ConfigError)."""
    return [{"label": v["label"], "config": RunConfig.from_dict(v["config"]).to_dict()}
            for v in variants(setup)]


def restart_fields(setup: Mapping[str, Any], config: Mapping[str, Any]) -> list[str]:
    """Fields where the setup differs from a live run's config and that only a restart can
    change (everything but the learning rates and the phase schedule)."""
    diff = []
    if setup.get("task") != config.get("task"):
        diff.append("task")
    for key in ("n", "alpha"):
        try:
            if SCALAR_SETTINGS[key].parse(str(setup.get(key, "")).strip(), "") != config.get(key):
                diff.append(key)
        except ConfigError:
            pass
    try:
        if parse_seeds(str(setup.get("seeds", "")).strip()) != list(config.get("seeds") or []):
            diff.append("seeds")
    except ConfigError:
        pass
    if list(setup.get("compare") or []) != list(config.get("compare") or []):
        diff.append("compare")
    return diff


def setup_from_config(config: Mapping[str, Any], base: Mapping[str, Any] | None = None
                      ) -> dict[str, Any]:
    """The control-panel setup that reproduces a run's config (for ?run=ID)."""
    setup = copy.deepcopy(dict(base or DEFAULT_SETUP))
    setup["task"] = config.get("task", "add")
    setup["task_args"] = {k: text(v) for k, v in (config.get("task_args") or {}).items()}
    rule = config.get("rule", "dni-b")
    setup["rules"] = [rule]
    setup["rule_args"] = {rule: {k: text(v) for k, v in (config.get("rule_args") or {}).items()}}
    for key in ("n", "alpha", "lr", "steps"):
        if key in config:
            setup[key] = text(config[key])
    seeds = config.get("seeds") or [0]
    setup["seeds"] = ",".join(map(str, seeds)) if isinstance(seeds, list) else str(seeds)
    phases = str(config.get("phases", "all"))
    setup["phases"] = phases
    setup["phase_race"] = False
    setup["compare"] = list(config.get("compare") or [])
    return setup


__all__ = ["DEFAULT_SETUP", "PANELS", "PRESETS", "decode", "default_setup", "encode",
           "phase_names", "restart_fields", "rows_schedule", "schedule_rows", "setup_from_config",
           "validate", "variants"]
