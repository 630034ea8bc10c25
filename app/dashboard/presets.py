"""One-click presets: setups (see :mod:`app.dashboard.urlstate`) built from the registries,
so a task or rule added to the simulator gets its preset without a change here.

Each preset is {"id", "title", "blurb", "setup"}; ``setup`` is complete (defaults filled).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from app.dashboard.urlstate import default_setup
from simulator.phases import PRESETS as PHASE_PRESETS
from simulator.rules import RULES
from simulator.tasks import TASKS

#: race order when the server allows fewer runs than there are rules: the references first
RACE_PRIORITY = ("bptt", "dni-b", "output-only", "rflo", "uoro", "kf-rtrl", "dni", "rtrl",
                 "r-kf-rtrl", "kernl")

#: per-task overrides of the per-task presets (the paper's standard settings)
TASK_SETUPS: dict[str, dict[str, Any]] = {
    "add": {"task_args": {"t1": "5", "t2": "9"}, "steps": "20000"},
}


def _setup(**changes: Any) -> dict[str, Any]:
    setup = default_setup()
    for key, value in changes.items():
        setup[key] = copy.deepcopy(value)
    return setup


def race_rules(rules: Sequence[str] | None = None, limit: int | None = None) -> list[str]:
    """Rules of an all-rules race in priority order, at most ``limit`` of them."""
    pool = list(rules if rules is not None else RULES)
    ordered = [r for r in RACE_PRIORITY if r in pool] + [r for r in pool if r not in RACE_PRIORITY]
    return ordered[:limit] if limit else ordered


def presets(max_runs: int | None = None) -> list[dict[str, Any]]:
    """All presets (cheap to build; the dashboard caches the list)."""
    chosen = race_rules(limit=max_runs)
    race_note = (f"All rules race: {len(chosen)} of {len(RULES)} (limit {max_runs}): pick which "
                 "in Rules" if len(chosen) < len(RULES) else "")
    out = [
        {"id": "paper", "title": "The paper's rule on Add(5,9)",
         "blurb": "DNI-b: apical synthetic gradient, learned J̃, random feedback, tanh label",
         "setup": _setup(rules=["dni-b"], task="add", task_args={"t1": "5", "t2": "9"},
                         steps="20000")},
        {"id": "dni-to-dnib", "title": "DNI → DNI-b",
         "blurb": "exact DNI against the paper's local version: the price of locality",
         "setup": _setup(rules=["dni", "dni-b"], steps="20000")},
        {"id": "race", "title": "All rules race",
         "blurb": "every rule, same seed, same input stream, same initial weights",
         "setup": _setup(rules=chosen, n="16", steps="10000", units=[0]),
         "note": race_note},
    ]
    if "apical-then-basal" in PHASE_PRESETS:
        out.append({
            "id": "phases", "title": "Phases or no phases",
            "blurb": "apical learns, then basal learns, in turns; against every rule every step",
            "setup": _setup(rules=["dni-b"], phases=PHASE_PRESETS["apical-then-basal"],
                            phase_race=True, steps="20000")})
    for name, cls in TASKS.items():
        extra = TASK_SETUPS.get(name, {})
        out.append({"id": f"task-{name}", "title": f"Task: {name}",
                    "blurb": cls.summary, "setup": _setup(task=name, rules=["dni-b"], **extra)})
    if "add" in TASKS:
        out.append({
            "id": "add-slow", "title": "Add(2,4), τ=2, α=0.5",
            "blurb": "the paper's second Add setting: slow units, each input held 2 steps",
            "setup": _setup(task="add", task_args={"t1": "2", "t2": "4", "tau_task": "2"},
                            alpha="0.5", rules=["dni-b"], steps="20000")})
    return out


def preset_by_id(preset_id: str, max_runs: int | None = None) -> dict[str, Any] | None:
    for preset in presets(max_runs):
        if preset["id"] == preset_id:
            return preset
    return None
