"""Rule registry: name -> Rule class. A new rule is one module plus one line here."""

from __future__ import annotations

from typing import Any

from simulator.network import Network
from simulator.rules.base import Dense, Rank1, Rule, RuleOutput, StepContext
from simulator.rules.bptt import BPTT
from simulator.rules.dni import DNI
from simulator.rules.dni_b import DNIB
from simulator.rules.e_bptt import EpochBPTT
from simulator.rules.f_bptt import FutureBPTT
from simulator.rules.kernl import KeRNL
from simulator.rules.kf_rtrl import KFRTRL
from simulator.rules.node_perturbation import NodePerturbation
from simulator.rules.output_only import OutputOnly
from simulator.rules.r_kf_rtrl import RKFRTRL
from simulator.rules.rflo import RFLO
from simulator.rules.rtrl import RTRL
from simulator.rules.snap1 import SnAp1
from simulator.rules.uoro import UORO
from simulator.settings import ConfigError, quote, resolve

RULES: dict[str, type[Rule]] = {
    BPTT.name: BPTT,
    RTRL.name: RTRL,
    DNI.name: DNI,
    DNIB.name: DNIB,
    OutputOnly.name: OutputOnly,
    UORO.name: UORO,
    KFRTRL.name: KFRTRL,
    RKFRTRL.name: RKFRTRL,
    RFLO.name: RFLO,
    KeRNL.name: KeRNL,
    FutureBPTT.name: FutureBPTT,
    EpochBPTT.name: EpochBPTT,
    SnAp1.name: SnAp1,
    NodePerturbation.name: NodePerturbation,
}


def rule_class(name: str) -> type[Rule]:
    if name not in RULES:
        raise ConfigError("rule", f"unknown rule {quote(name)}; allowed: {', '.join(RULES)}")
    return RULES[name]


def make_rule_args(name: str, args: dict[str, Any] | None) -> dict[str, Any]:
    """Validate a rule's settings (filling defaults)."""
    return resolve(rule_class(name).settings, args, "rule_args")


def live_settings(name: str, args: dict[str, Any] | None = None) -> dict[str, str]:
    """The rule's settings that can change mid-run (the ``set`` action), each with the
    population whose learning rate it is, e.g. ``{"lr_apical": "apical"}``: for ``args`` (its
    rule_args, validated here) when given, else every one the rule may have."""
    cls = rule_class(name)
    return cls.live_rates(None if args is None else make_rule_args(name, args))


def live_populations() -> dict[str, str]:
    """Every live setting of every rule -> its population (what ``set`` accepts)."""
    return {key: pop for cls in RULES.values() for key, pop in cls.live_rates().items()}


def make_rule(name: str, net: Network, n_out: int, args: dict[str, Any] | None,
              seeds: list[int]) -> Rule:
    return rule_class(name)(net, n_out, make_rule_args(name, args), seeds)


__all__ = ["RULES", "Dense", "Rank1", "Rule", "RuleOutput", "StepContext", "live_populations",
           "live_settings", "make_rule", "make_rule_args", "rule_class"]
