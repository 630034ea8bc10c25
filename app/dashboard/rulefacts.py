"""What the dashboard reads from the rule classes (simulator.rules): which settings change
live, and which sub-populations a run reports. One small function per fact, each reading
the rule class (``getattr`` with a fallback), so a new rule, or a registry the run service
adds later, drives the form, the set action and the panels with no line here.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

from simulator.rules import RULES


def _args(rule: str, args: Mapping[str, Any] | None) -> dict[str, Any]:
    """The rule's settings: its defaults, overridden by ``args``."""
    cls = RULES.get(rule)
    base = {s.name: s.default for s in getattr(cls, "settings", ())}
    return {**base, **dict(args or {})}


def live_rule_settings(rule: str, args: Mapping[str, Any] | None = None) -> dict[str, str]:
    """{setting name: population} of a rule's learning rates that change mid-run (the set
    action's parameter): dni-b {"lr_apical": "apical", "lr_jacobian": "jacobian"} with a
    learned J~, kernl {"lr_kernel": "jacobian"}. Declared by the rule class
    (``Rule.live_rates``, the same registry the run service checks a set action against)."""
    cls = RULES.get(rule)
    if cls is None:
        return {}
    try:
        return dict(cls.live_rates(_args(rule, args)))
    except (KeyError, TypeError, ValueError):  # a half-typed form: every one it may have
        return dict(cls.live_rates())


def live_form_settings(rule: str) -> dict[str, str]:
    """The settings the form marks LIVE for a rule: live under any choice of its two-way and
    multiple-choice settings (dni's lr_jacobian is live when J̃ is learned)."""
    cls = RULES.get(rule)
    choices = [[(s.name, c) for c in s.choices] for s in getattr(cls, "settings", ())
               if s.choices]
    out: dict[str, str] = {}
    for combo in itertools.islice(itertools.product(*choices), 64):
        out.update(live_rule_settings(rule, dict(combo)))
    return out


def rule_populations(rule: str, args: Mapping[str, Any] | None = None) -> list[str]:
    """The sub-populations a run of ``rule`` reports before its first frame (which corrects
    them): basal, the rule's own learning populations, the readout."""
    own = list(dict.fromkeys(live_rule_settings(rule, args).values()))
    return ["basal", *[p for p in own if p not in ("basal", "readout")], "readout"]
