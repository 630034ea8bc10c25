"""Gradient alignment (docs/model.md section 5): how close a rule's update of W_rec is to the
exact gradient, and how close two rules' updates are to each other.

A :class:`Shadow` rides along a run and, every step, feeds the run's own
:class:`StepContext` to an exact rule: RTRL (the exact online gradient of L(t), kept with
the run's changing weights) for n <= 64, truncated BPTT over a window T otherwise. The
exact rule only reads the context and its own state, and the shadow runs after the run's
rule and before any weight changes, so the run's numbers are bit-identical with or without
it. Per step and seed it records

    alignment  = <G_rule, G_exact> / (||G_rule|| ||G_exact||)     (cosine, W_rec block only)
    norm_ratio = ||G_rule|| / ||G_exact||

where G is the [:, :, :n] (W_rec) block of the basal update. A rule that makes no basal
update (output-only) has alignment 0 by definition and norm_ratio NaN; an update that is
exactly zero has alignment 0 and norm_ratio 0; where the exact gradient is zero, alignment
is 0 and norm_ratio NaN.

A :class:`Passive` set (``RunConfig.compare``, the JMLR protocol) rides along the same way:
each comparison rule steps on the run's own context every step, on the network the run's
rule trains, and its basal update is compared with the same exact gradient but never
applied (its own populations, e.g. DNI's apical weights, do learn, by its own rates).

:func:`pairwise_alignment` runs several rules in lockstep on the same input stream, seeds
and initial weights and returns the per-step cosine between each pair's W_rec updates.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from itertools import combinations
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from simulator.network import Network, vecmat
from simulator.rules.base import Rank1, Rule, RuleOutput, StepContext, Update, apply_update
from simulator.rules.bptt import BPTT
from simulator.rules.rtrl import RTRL
from simulator.settings import ConfigError, quote

if TYPE_CHECKING:
    from simulator.config import RunConfig

#: "auto" uses RTRL up to this many units (its cost grows as n^4), truncated BPTT beyond
AUTO_RTRL_MAX_N = 64
#: the BPTT window "auto" uses beyond AUTO_RTRL_MAX_N
AUTO_WINDOW = 50

ALLOWED = "rtrl, bptt:T (T an integer in [1, 10000]), auto"


def parse_align(spec: str, n: int) -> tuple[str, int]:
    """("rtrl", 0) or ("bptt", T) from "rtrl", "bptt:T" or "auto" (which picks by n)."""
    if not isinstance(spec, str):
        raise ConfigError("align", f"got {quote(spec)}; allowed: {ALLOWED}")
    text = spec.strip().lower()
    if text == "auto":
        return ("rtrl", 0) if n <= AUTO_RTRL_MAX_N else ("bptt", AUTO_WINDOW)
    if text == "rtrl":
        return "rtrl", 0
    kind, colon, window = text.partition(":")
    if kind == "bptt" and colon and window.strip().isdigit() and 1 <= int(window) <= 10_000:
        return "bptt", int(window)
    raise ConfigError("align", f"got {quote(spec)}; allowed: {ALLOWED}")


def recurrent_block(update: Update, n: int) -> Tensor:
    """The W_rec block (S, n, n) of a basal update, dense."""
    if isinstance(update, Rank1):
        return update.post.unsqueeze(2) * update.pre[:, None, :n]
    return update.dense()[:, :, :n]


def compare(update: Update | None, exact: Tensor) -> tuple[Tensor, Tensor]:
    """(cosine, norm ratio), each (S,), of a rule's update against the exact W_rec block
    ``exact`` (S, n, n). Rank-one updates are compared without forming the dense matrix."""
    n = exact.shape[1]
    exact_norm = torch.linalg.vector_norm(exact.flatten(1), dim=1)
    if update is None:
        return exact_norm.new_zeros(exact_norm.shape), torch.full_like(exact_norm, float("nan"))
    if isinstance(update, Rank1):
        pre = update.pre[:, :n]
        dot = (vecmat(update.post, exact) * pre).sum(1)  # post^T G pre
        rule_norm = (torch.linalg.vector_norm(update.post, dim=1)
                     * torch.linalg.vector_norm(pre, dim=1))
    else:
        block = update.dense()[:, :, :n].flatten(1)
        dot = (block * exact.flatten(1)).sum(1)
        rule_norm = torch.linalg.vector_norm(block, dim=1)
    both = (rule_norm > 0) & (exact_norm > 0)
    cosine = torch.where(both, dot / (rule_norm * exact_norm).clamp_min(1e-300), 0.0)
    ratio = torch.where(exact_norm > 0, rule_norm / exact_norm.clamp_min(1e-300), float("nan"))
    return cosine, ratio


class Shadow:
    """An exact gradient computed beside a run, never touching it (see the module doc)."""

    def __init__(self, spec: str, net: Network, n_out: int, seeds: list[int]) -> None:
        kind, window = parse_align(spec, net.n)
        self.spec = "rtrl" if kind == "rtrl" else f"bptt:{window}"
        self.exact: Rule = (RTRL(net, n_out, {}, seeds) if kind == "rtrl"
                            else BPTT(net, n_out, {"T": window}, seeds))
        self.alignment = self.norm_ratio = net.W.new_empty(0, net.seeds)
        self.exact_block: Tensor | None = None  # this step's exact W_rec gradient

    def begin(self, k: int, like: Tensor) -> None:
        """Make room for the next k steps (NaN until measured)."""
        S = self.alignment.shape[1]
        self.alignment = like.new_full((k, S), float("nan"))
        self.norm_ratio = like.new_full((k, S), float("nan"))

    def step(self, i: int, ctx: StepContext, out: RuleOutput) -> None:
        """Step the exact rule on the run's context and compare; call after the run's rule
        stepped and before the updates are applied (the exact rule reads W at step t)."""
        exact = self.exact.step(ctx).updates["basal"].dense()[:, :, : ctx.net.n]
        self.exact_block = exact
        self.alignment[i], self.norm_ratio[i] = compare(out.updates.get("basal"), exact)

    def finish(self) -> tuple[Tensor, Tensor]:
        return self.alignment, self.norm_ratio


# ---- passive comparison rules (the JMLR protocol) ----------------------------------------

def comparable_rules() -> list[str]:
    """Rules that can ride along passively: they make a basal update and do not need
    their own noise in the network's forward pass (node perturbation does)."""
    from simulator.rules import RULES

    return [n for n, c in RULES.items() if c.trains_basal and not c.perturbs_state]


def parse_compare(value: Any) -> list[str]:
    """Comparison rule names from a list or "rflo,kernl,dni-b" text (None/"" -> [])."""
    from simulator.rules import RULES

    allowed = ", ".join(comparable_rules())
    shown = repr(value)
    shown = shown if len(shown) <= 100 else shown[:97] + "..."
    if value is None:
        return []
    if isinstance(value, str):
        names = [part.strip() for part in value.split(",") if part.strip()]
    elif isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        names = [v.strip() for v in value]
    else:
        raise ConfigError("compare", f"got {shown}; allowed: a list of rule names or text "
                                     f"like 'rflo,kernl,dni-b' from: {allowed}")
    for name in names:
        cls = RULES.get(name)
        if cls is None or not cls.trains_basal or cls.perturbs_state:
            why = ("" if cls is None else " (it makes no basal update)" if not cls.trains_basal
                   else " (its noise must drive the network, so it cannot ride along)")
            got = name if len(name) <= 100 else name[:97] + "..."
            raise ConfigError("compare", f"got {got!r}{why}; allowed: rule names from: {allowed}")
    if len(set(names)) != len(names):
        raise ConfigError("compare", f"got {shown}; allowed: each rule name at most once")
    return names


class Passive:
    """Comparison rules measured on a run's network without changing it (module doc).

    Per step and seed: the cosine of each rule's W_rec update with the shadow's exact
    gradient, and its norm ratio. Each rule starts with its default settings.
    """

    def __init__(self, names: Sequence[str], net: Network, n_out: int, seeds: list[int]) -> None:
        from simulator.rules import make_rule

        self.rules = {name: make_rule(name, net, n_out, {}, seeds) for name in names}
        self.lr = {name: rule.learning_rates() for name, rule in self.rules.items()}
        self.alignment: dict[str, Tensor] = {}
        self.norm_ratio: dict[str, Tensor] = {}

    def begin(self, k: int, like: Tensor) -> None:
        S = like.shape[1]
        self.alignment = {name: like.new_full((k, S), float("nan")) for name in self.rules}
        self.norm_ratio = {name: like.new_full((k, S), float("nan")) for name in self.rules}

    def step(self, i: int, ctx: StepContext, exact: Tensor) -> None:
        """Step every comparison rule on the run's context; compare its basal update with
        ``exact`` (S, n, n); apply only its own populations' updates (phase-gated), at its own
        rates, inside the step where the rule's order asks for that (Rule.apply_now)."""
        for name, rule in self.rules.items():
            own = rule.populations()
            rates = self.lr[name]
            out = rule.step(dataclasses.replace(ctx, lr=rates))
            self.alignment[name][i], self.norm_ratio[name][i] = compare(
                out.updates.get("basal"), exact)
            for pop, update in out.updates.items():
                lr = rates.get(pop, 0.0)
                if pop in own and pop not in out.applied and pop in ctx.plastic and lr:
                    apply_update(own[pop], update, lr)

    def after_update(self, t: int) -> None:
        for rule in self.rules.values():
            rule.after_update(t)

    def state_dict(self) -> dict[str, Any]:
        return {name: rule.state_dict() for name, rule in self.rules.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, rule_state in state.items():
            if name in self.rules:
                self.rules[name].load_state_dict(rule_state)


# ---- pairwise alignment between rules ------------------------------------------------------

RuleSpec = str | tuple[str, dict[str, Any]]


def _labels(specs: Sequence[tuple[str, dict[str, Any]]]) -> list[str]:
    """Rule names, made unique with their settings (or a position) where they repeat."""
    names = [name for name, _ in specs]
    out = []
    for i, (name, args) in enumerate(specs):
        if names.count(name) == 1:
            out.append(name)
        else:
            detail = ",".join(f"{k}={v}" for k, v in sorted(args.items())) or str(i)
            out.append(f"{name}[{detail}]")
    return out if len(set(out)) == len(out) else [f"{label}#{i}" for i, label in enumerate(out)]


def _tap(rule: Rule, sink: list[Update | None]) -> None:
    """Record each step's basal update of ``rule`` (the instance's step is wrapped)."""
    step = rule.step

    def tapped(ctx: StepContext) -> RuleOutput:
        out = step(ctx)
        sink.append(out.updates.get("basal"))
        return out

    rule.step = tapped  # type: ignore[method-assign]


def _cosine(a: Tensor, b: Tensor) -> Tensor:
    """Per-seed cosine of two (S, ...) tensors, 0 where either is zero."""
    a, b = a.flatten(1), b.flatten(1)
    na, nb = torch.linalg.vector_norm(a, dim=1), torch.linalg.vector_norm(b, dim=1)
    ok = (na > 0) & (nb > 0)
    return torch.where(ok, (a * b).sum(1) / (na * nb).clamp_min(1e-300), 0.0)


def pairwise_alignment(config: RunConfig, rules: Sequence[RuleSpec], steps: int, *,
                       driver: int | None = None) -> dict[tuple[str, str], Tensor]:
    """Per-step cosine (steps, S) between the W_rec updates of each pair of ``rules``.

    Each rule gets its own Run built from ``config`` with that rule (a name, or
    (name, rule_args)); runs with the same seeds start from the same weights and see the
    same input stream. With ``driver=None`` every run learns by its own rule, so the
    networks drift apart as they learn. With ``driver=j`` only rule j's updates change the
    network: the other runs share its weights (network learning rates 0; their own
    populations, e.g. DNI's apical weights, still learn), so every rule is measured at the
    same state on the same trajectory, as in the JMLR paper. A rule without a basal update
    (output-only) has cosine 0 with everything.
    """
    from simulator.engine import Run  # the engine imports this module

    specs = [(r, {}) if isinstance(r, str) else (r[0], dict(r[1])) for r in rules]
    if len(specs) < 2:
        raise ConfigError("rules", "give at least two rules to compare")
    if driver is not None and not 0 <= driver < len(specs):
        raise ConfigError("driver", f"got {quote(driver)}; allowed: None or 0..{len(specs) - 1}")
    runs = [Run(config.replace(rule=name, rule_args=args)) for name, args in specs]
    sinks: list[list[Update | None]] = [[] for _ in runs]
    for run, sink in zip(runs, sinks, strict=True):
        _tap(run.rule, sink)
    order = list(range(len(runs)))
    if driver is not None:
        for j, run in enumerate(runs):
            if j != driver:
                run.net = runs[driver].net  # same tensors: followers read, never write
                run.set_learning_rates(lr=0.0)
        order = [j for j in order if j != driver] + [driver]  # the driver updates last
    labels = _labels(specs)
    n, S = config.n, len(runs[0].seeds)
    pairs = list(combinations(range(len(runs)), 2))
    out = {(labels[a], labels[b]): torch.empty(steps, S, dtype=torch.float64) for a, b in pairs}
    for t in range(steps):
        for j in order:
            runs[j].advance(1, record="scalars")
        blocks = [None if sink[-1] is None else recurrent_block(sink[-1], n) for sink in sinks]
        for sink in sinks:
            sink.clear()
        for a, b in pairs:
            ba, bb = blocks[a], blocks[b]
            cos = torch.zeros(S) if ba is None or bb is None else _cosine(ba, bb)
            out[(labels[a], labels[b])][t] = cos.cpu()
    return out


class AlignmentMeans:
    """Per-seed running means over steps of ``Telemetry.alignment`` and ``.norm_ratio``
    (NaN steps skipped), for summaries of long runs."""

    def __init__(self) -> None:
        self._sums: list[Tensor] | None = None  # [alignment sum, count, ratio sum, count]

    def add(self, alignment: Tensor, norm_ratio: Tensor) -> None:
        parts = []
        for values in (alignment, norm_ratio):
            values = values.double().cpu()
            finite = ~values.isnan()
            parts += [torch.where(finite, values, 0.0).sum(0), finite.sum(0).double()]
        self._sums = parts if self._sums is None else [a + b for a, b in
                                                       zip(self._sums, parts, strict=True)]

    def means(self) -> tuple[list[float], list[float]]:
        """(mean alignment, mean norm ratio) per seed; NaN where nothing was measured."""
        if self._sums is None:
            return [], []
        a_sum, a_n, r_sum, r_n = self._sums
        return (torch.where(a_n > 0, a_sum / a_n.clamp_min(1), float("nan")).tolist(),
                torch.where(r_n > 0, r_sum / r_n.clamp_min(1), float("nan")).tolist())
