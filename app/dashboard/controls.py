"""The control panel's pure logic, shared by the callbacks: a setup <-> the form's fields,
what changes live in a running run, validation and cost messages, status chips and table
rows. No Dash callback here, no backend call (unit-tested in tests/test_figures.py).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from app.dashboard import layout, names, urlstate
from app.dashboard.rulefacts import live_rule_settings
from app.service.base import ACTIONS, ServiceError
from app.service.status import MOVING_KINDS, is_moving, is_terminal  # noqa: F401
from simulator.config import RunConfig, parse_seeds
from simulator.rules import RULES
from simulator.settings import ConfigError, quote
from simulator.tasks import TASKS

log = logging.getLogger(__name__)

#: statuses of a run that can move on (the run service's typed status, app.service.status)
ACTIVE = tuple(str(k) for k in MOVING_KINDS)


# ---------------------------------------------------------------------------------------------
# pure helpers (unit-tested in tests/test_figures.py)
# ---------------------------------------------------------------------------------------------
def is_active(status: str) -> bool:
    """The run can move on (ready, running, paused, parked)."""
    return is_moving(status)


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
        # the step counter follows the live frames between refreshes (assets/plab.js)
        step = html.Span(f"{info.get('step', 0):,}/{target:,}", className="chip-step",
                         **{"data-run": info["id"], "data-target": f"{target:,}"})
        parked = info.get("status") == "parked"
        chips.append(html.Span([html.Span("●", style={"color": colors.get(info["id"], "#555")}),
                                f" {named[info['id']]} · {info.get('status', '')} · step ", step,
                                f" · {sps:,.0f}/s" if sps else ""],
                               className="chip chip-parked" if parked else "chip",
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
        for name, pop in live_rule_settings(rule, cfg.get("rule_args")).items():
            if name not in args or pop not in allowed:
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



def error_text(err: Exception) -> str:
    if isinstance(err, ConfigError):
        return f"{err.field}: {err.message}"
    if isinstance(err, ServiceError):
        return err.message
    return str(err)



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

