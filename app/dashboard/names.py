"""Runs named by what differs between them: "dni · random fb · learned J̃", "dni-b · lr 3e-3".

One source for the names in legends, status chips, the run table and export file names.
A name is the rule, then the settings in which the run differs from the others shown:
rule settings (among runs of the same rule) where the run departs from the rule's default,
and network/task settings (lr, n, α, seeds, the task's settings, phases) wherever they are
not the same for every run. Runs that still share a name get their short id.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from simulator.rules import RULES

#: short words for rule settings in a name ("random fb", "learned J̃")
SHORT = {"feedback": "fb", "jacobian": "J̃", "lr_apical": "lr A", "lr_jacobian": "lr J̃"}
CORE = (("lr", "lr"), ("n", "n"), ("alpha", "α"), ("seeds", "seeds"))


def num(value: Any) -> str:
    """A compact number: 0.003 -> 3e-3, 0.05 -> 0.05, 32 -> 32."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if value and abs(value) < 0.01:
        mantissa, exp = f"{value:.2e}".split("e")
        mantissa = mantissa.rstrip("0").rstrip(".")
        return f"{mantissa}e{int(exp)}"
    return f"{value:g}"


def _seeds(value: Any) -> str:
    seeds = list(value) if isinstance(value, list | tuple) else [value]
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"{seeds[0]}-{seeds[-1]}"
    return ",".join(map(str, seeds[:4])) + ("…" if len(seeds) > 4 else "")


def _rule_part(name: str, value: Any, choices: Sequence[str] | None) -> str:
    word = SHORT.get(name, name)
    return f"{value} {word}" if choices else f"{word} {num(value)}"


def run_names(configs: Sequence[Mapping[str, Any]], ids: Sequence[str] = ()) -> list[str]:
    """The name of each run (``configs``: their RunConfig dicts; ``ids``: their ids, used
    only to tell identical setups apart)."""
    rules = [str(c.get("rule", "?")) for c in configs]
    parts: list[list[str]] = [[r] for r in rules]
    for i, config in enumerate(configs):
        cls = RULES.get(rules[i])
        same_rule = [c for c, r in zip(configs, rules, strict=True) if r == rules[i]]
        for s in (cls.settings if cls else ()):
            values = {str((c.get("rule_args") or {}).get(s.name, s.default)) for c in same_rule}
            value = (config.get("rule_args") or {}).get(s.name, s.default)
            if len(values) > 1 and str(value) != str(s.default):
                parts[i].append(_rule_part(s.name, value, s.choices))
    for key, word in CORE:
        values = [str(c.get(key)) for c in configs]
        if len(set(values)) > 1:
            for i, config in enumerate(configs):
                shown = _seeds(config.get(key)) if key == "seeds" else num(config.get(key))
                parts[i].append(f"{word} {shown}")
    task_keys = sorted({k for c in configs for k in (c.get("task_args") or {})})
    for key in task_keys:
        values = [str((c.get("task_args") or {}).get(key)) for c in configs]
        if len(set(values)) > 1:
            for i, config in enumerate(configs):
                parts[i].append(f"{key} {num((config.get('task_args') or {}).get(key))}")
    phases = [str(c.get("phases", "all")) for c in configs]
    if len(set(phases)) > 1:
        for i, p in enumerate(phases):
            parts[i].append("no phases" if p == "all" else "phases")
    names = [" · ".join(p) for p in parts]
    for i, name in enumerate(names):
        if names.count(name) > 1 and i < len(ids):
            parts[i].append(f"#{str(ids[i])[-4:]}")
    return [" · ".join(p) if not p[-1].startswith("#") else " · ".join(p[:-1]) + " " + p[-1]
            for p in parts]


def names_by_id(infos: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """{run id: name} for backend infos (each with "id" and "config")."""
    ids = [str(i["id"]) for i in infos]
    return dict(zip(ids, run_names([i.get("config") or {} for i in infos], ids), strict=True))
