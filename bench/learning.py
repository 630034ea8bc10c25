"""Learning quality of the rules (issues 2 and 3): final held-out loss per rule, next to
the task's reference levels, and (with --align) the mean alignment of each rule's W_rec
update with the exact gradient (a shadow RTRL for n <= 64, truncated BPTT beyond).

    python bench/learning.py                       # the "core" grid (issue 2)
    python bench/learning.py --grid jmlr --align   # every rule on the JMLR grid (issue 3)
    python bench/learning.py --grid jmlr --steps 2000 --seeds 0-1     # a quick smoke run
    python bench/learning.py --grid jmlr --rules rflo,kernl --lr 3e-4 --json-out out.json
    python bench/learning.py --grid jmlr --align passive --driver rtrl --window 50000-99999

Grids (network lr 1e-3, n = 32, plain SGD, one update per step, 100,000 steps, seeds 0-4
batched in one run, 5,000 held-out steps with learning frozen):

  core  Add(5,9), alpha = 1; rules bptt (T = 10), rtrl, dni, dni-b, output-only
  add59 / add35  all fourteen rules on Add(5,9) / Add(3,5), alpha = 1
  jmlr  all fourteen rules on Add(5,9) alpha = 1; Add(2,4) tau_task = 2, alpha = 0.5;
        Mimic (n_in = n_out = 32, teacher of the same alpha) with alpha = 1 and 0.5

Columns: mean / min / max final test loss over seeds; align = mean over steps and seeds
of the cosine with the exact gradient; ratio = mean ||G_rule|| / ||G_exact||; steps/s;
status (finished, or where it diverged). DNI's apical and J~ rates follow docs/model.md section 3
(0.05 / 0.01 on Add with alpha = 1, 1e-3 elsewhere). Progress goes to stderr (tqdm), the
tables to stdout. A benchmark, not a test: it prints figures and judges nothing.

--align passive is the JMLR protocol instead: per setting, ONE run (seeds batched) whose
network is trained by --driver (default rtrl); every rule of the grid that makes a basal
update rides along as a comparison rule (RunConfig.compare), computing its update on that
same network every step without applying it (its own populations learn, with its default
settings). The table gives each rule's cosine with the exact gradient averaged over the
steps of --window (default: the second half of the run) and over seeds (min / max over
seeds beside it): how well each rule's update points on one trajectory, not how well it
trains its own network (what the default --align measures).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

if importlib.util.find_spec("simulator") is None:  # a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from simulator.alignment import AlignmentMeans, comparable_rules
from simulator.config import RunConfig, parse_seeds
from simulator.engine import Run
from simulator.rules import RULES
from simulator.settings import ConfigError

torch.set_num_threads(1)  # tiny ops spin-wait with more threads on small machines


@dataclass(frozen=True)
class Setting:
    """One task setting of a grid."""

    label: str
    task: str
    task_args: dict[str, Any]
    alpha: float
    apical_rates: tuple[float, float]  # DNI's (lr_apical, lr_jacobian) here (docs/model.md section 3)


ADD_59 = Setting("Add(5,9), alpha=1", "add", {"t1": 5, "t2": 9}, 1.0, (0.05, 0.01))
ADD_35 = Setting("Add(3,5), alpha=1", "add", {"t1": 3, "t2": 5}, 1.0, (0.05, 0.01))
ADD_24 = Setting("Add(2,4), tau_task=2, alpha=0.5", "add", {"t1": 2, "t2": 4, "tau_task": 2},
                 0.5, (1e-3, 1e-3))


def mimic(alpha: float) -> Setting:
    args = {"n_in": 32, "n_out": 32, "teacher_alpha": alpha}
    return Setting(f"Mimic(32), alpha={alpha:g}", "mimic", args, alpha, (1e-3, 1e-3))


EXACT_FIRST = ("rtrl", "bptt", "f-bptt", "e-bptt", "uoro", "kf-rtrl", "r-kf-rtrl", "snap-1", "rflo",
               "kernl", "dni", "dni-b", "node-perturbation", "output-only")
GRIDS: dict[str, tuple[tuple[Setting, ...], tuple[str, ...]]] = {
    "core": ((ADD_59,), ("bptt", "rtrl", "dni", "dni-b", "output-only")),
    "jmlr": ((ADD_59, ADD_24, mimic(1.0), mimic(0.5)), EXACT_FIRST),
    "add59": ((ADD_59,), EXACT_FIRST),   # every rule on Add(5,9) (issue 13's table)
    "add35": ((ADD_35,), EXACT_FIRST),   # every rule on Add(3,5)
}


@dataclass
class Result:
    grid: str
    setting: str
    task: str
    task_args: dict[str, Any]
    alpha: float
    rule: str
    rule_args: dict[str, Any]
    lr: float
    steps: int
    seeds: list[int]
    test_loss: list[float]
    status: str
    seconds: float
    reference_levels: dict[str, float]
    align: str | None = None
    mean_alignment: list[float] = field(default_factory=list)
    mean_norm_ratio: list[float] = field(default_factory=list)


def rule_args(rule: str, setting: Setting) -> dict[str, Any]:
    """The grid's settings for a rule: BPTT's window, DNI's rates for this task."""
    known = {s.name for s in RULES[rule].settings}
    args: dict[str, Any] = {"T": 10} if rule == "bptt" else {}
    lr_apical, lr_jacobian = setting.apical_rates
    args.update({k: v for k, v in (("lr_apical", lr_apical), ("lr_jacobian", lr_jacobian))
                 if k in known})
    return args


def run_one(grid: str, setting: Setting, rule: str, opts: argparse.Namespace,
            bar: tqdm) -> Result:
    config = RunConfig(task=setting.task, task_args=setting.task_args, rule=rule,
                       rule_args=rule_args(rule, setting), n=opts.n, alpha=setting.alpha,
                       lr=opts.lr, seeds=parse_seeds(opts.seeds), dtype=opts.dtype)
    run = Run(config, align=opts.align)
    means = AlignmentMeans()
    start = time.perf_counter()
    done = 0
    while done < opts.steps:
        k = min(opts.chunk, opts.steps - done)
        telemetry = run.advance(k, record="scalars")
        if telemetry.alignment is not None:
            means.add(telemetry.alignment, telemetry.norm_ratio)
        done += k
        bar.update(k)
        if telemetry.diverged_at is not None:
            bar.update(opts.steps - done)
            break
    seconds = time.perf_counter() - start
    diverged = run.status.startswith("diverged")
    test = [math.nan] * len(run.seeds) if diverged else run.evaluate(opts.test_steps).tolist()
    alignment, ratio = means.means()
    return Result(grid, setting.label, setting.task, dict(setting.task_args), setting.alpha, rule,
                  dict(run.config.rule_args), opts.lr, done, run.seeds, test,
                  "finished" if not diverged else run.status, seconds,
                  run.task.reference_levels(), run.shadow.spec if run.shadow else None,
                  alignment, ratio)


@dataclass
class PassiveResult:
    setting: str
    driver: str
    exact: str
    window: tuple[int, int]
    seeds: list[int]
    alignment: dict[str, list[float]]  # rule -> mean over the window, per seed
    status: str
    seconds: float


def run_passive(setting: Setting, rules: list[str], opts: argparse.Namespace,
                bar: tqdm) -> PassiveResult:
    """The JMLR protocol: one run trained by opts.driver, the rules measured passively."""
    compare = [r for r in rules if r in comparable_rules()]
    config = RunConfig(task=setting.task, task_args=setting.task_args, rule=opts.driver,
                       rule_args=rule_args(opts.driver, setting), n=opts.n,
                       alpha=setting.alpha, lr=opts.lr, seeds=parse_seeds(opts.seeds),
                       dtype=opts.dtype, align=opts.exact or "auto", compare=compare)
    lo, hi = _window(opts)
    run = Run(config)
    means = {name: AlignmentMeans() for name in compare}
    start = time.perf_counter()
    done = 0
    while done < opts.steps:
        k = min(opts.chunk, opts.steps - done)
        telemetry = run.advance(k, record="scalars")
        inside = slice(max(lo - done, 0), max(min(hi + 1 - done, k), 0))
        if inside.stop > inside.start:
            for name, cosine in telemetry.compare.items():
                means[name].add(cosine[inside], cosine[inside])
        done += k
        bar.update(k)
        if telemetry.diverged_at is not None:
            bar.update(opts.steps - done)
            break
    return PassiveResult(setting.label, opts.driver, run.shadow.spec if run.shadow else "-",
                         (lo, min(hi, done - 1)), run.seeds,
                         {name: m.means()[0] for name, m in means.items()},
                         "finished" if not run.status.startswith("diverged") else run.status,
                         time.perf_counter() - start)


def _window(opts: argparse.Namespace) -> tuple[int, int]:
    """The steps [lo, hi] averaged over (--window A-B; default the second half)."""
    if opts.window:
        lo, _, hi = opts.window.partition("-")
        return int(lo), int(hi)
    return opts.steps // 2, opts.steps - 1


def passive_table(results: list[PassiveResult]) -> str:
    """One block per setting: each rule's mean alignment over the window, best first."""
    lines: list[str] = []
    for r in results:
        lines += ["", f"== {r.setting}: passive on {r.driver}'s network, steps "
                      f"{r.window[0]:,}-{r.window[1]:,}, exact gradient {r.exact}, seeds "
                      f"{r.seeds} ({r.status}, {r.seconds:.0f} s)"]
        head = f"{'rule':<12} {'align':>7} {'min':>7} {'max':>7}"
        lines += [head, "-" * len(head)]
        for name in sorted(r.alignment, key=lambda name: -_mean(r.alignment[name])):
            values = [v for v in r.alignment[name] if math.isfinite(v)]
            stats = (f"{_mean(values):>7.3f} {min(values):>7.3f} {max(values):>7.3f}" if values
                     else f"{'-':>7} {'-':>7} {'-':>7}")
            lines.append(f"{name:<12} {stats}")
    return "\n".join(lines)


def _mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def table(results: list[Result], with_align: bool) -> str:
    """One block per setting: the reference levels, then a row per rule."""
    lines: list[str] = []
    for label in dict.fromkeys(r.setting for r in results):
        block = [r for r in results if r.setting == label]
        first = block[0]
        levels = " | ".join(f"{k} {v:.4f}" for k, v in first.reference_levels.items())
        lines += ["", f"== {label}: {first.task} {first.task_args}, lr {first.lr:g}, "
                      f"{first.steps:,} steps, seeds {first.seeds}",
                  f"   reference: {levels}"]
        head = f"{'rule':<12} {'mean':>8} {'min':>8} {'max':>8}"
        if with_align:
            head += f" {'align':>7} {'ratio':>8}"
        head += f" {'steps/s':>8}  status"
        lines += [head, "-" * len(head)]
        for r in block:
            test = [v for v in r.test_loss if math.isfinite(v)]
            stats = (f"{_mean(test):>8.4f} {min(test):>8.4f} {max(test):>8.4f}" if test
                     else f"{'-':>8} {'-':>8} {'-':>8}")
            row = f"{r.rule:<12} {stats}"
            if with_align:
                row += f" {_mean(r.mean_alignment):>7.3f} {_mean(r.mean_norm_ratio):>8.3g}"
            row += f" {r.steps / r.seconds if r.seconds > 0 else math.nan:>8.0f}  {r.status}"
            lines.append(row)
    return "\n".join(lines)


def _jsonable(value: Any) -> Any:
    """NaN -> None (JSON has no NaN), recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--grid", choices=tuple(GRIDS), default="core")
    p.add_argument("--rules", default=None, help="comma-separated subset of the grid's rules")
    p.add_argument("--steps", type=int, default=100_000, help="training steps per run")
    p.add_argument("--seeds", default="0-4", help="seeds, batched in one run: 0-4 or 0,3,7")
    p.add_argument("--test-steps", type=int, default=5_000, help="held-out steps at the end")
    p.add_argument("--lr", type=float, default=1e-3, help="network learning rate")
    p.add_argument("--n", type=int, default=32, help="recurrent units")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--align", nargs="?", const="auto", default=None, metavar="EXACT",
                   help="shadow exact gradient: auto (default), rtrl or bptt:T; or 'passive' "
                        "for the JMLR protocol (every rule measured on --driver's network)")
    p.add_argument("--driver", default="rtrl",
                   help="with --align passive: the rule that trains the network")
    p.add_argument("--exact", default=None, metavar="EXACT",
                   help="with --align passive: the exact gradient (auto, rtrl, bptt:T)")
    p.add_argument("--window", default=None, metavar="A-B",
                   help="with --align passive: the steps averaged (default: second half)")
    p.add_argument("--chunk", type=int, default=1000, help="steps per advance() call")
    p.add_argument("--json-out", default=None, metavar="FILE", help="write every result as JSON")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    settings, grid_rules = GRIDS[opts.grid]
    rules = list(grid_rules)
    if opts.rules:
        wanted = [r.strip() for r in opts.rules.split(",") if r.strip()]
        for rule in wanted:
            if rule not in RULES:
                print(f"error: unknown rule {rule!r}; allowed: {', '.join(RULES)}", file=sys.stderr)
                return 2
        rules = wanted
    if opts.align == "passive":
        if opts.driver not in RULES:
            print(f"error: driver: unknown rule {opts.driver!r}; allowed: {', '.join(RULES)}",
                  file=sys.stderr)
            return 2
        passive: list[PassiveResult] = []
        with tqdm(total=len(settings) * opts.steps, unit="step", file=sys.stderr,
                  dynamic_ncols=True) as bar:
            for setting in settings:
                bar.set_description(f"{setting.label} / passive on {opts.driver}")
                try:
                    passive.append(run_passive(setting, rules, opts, bar))
                except (ConfigError, ValueError) as err:
                    print(f"error: {err}", file=sys.stderr)
                    return 2
        print(passive_table(passive))
        if opts.json_out:
            Path(opts.json_out).write_text(json.dumps(_jsonable([asdict(r) for r in passive]),
                                                      indent=1))
        return 0
    results: list[Result] = []
    total = len(settings) * len(rules) * opts.steps
    with tqdm(total=total, unit="step", file=sys.stderr, dynamic_ncols=True) as bar:
        for setting in settings:
            for rule in rules:
                bar.set_description(f"{setting.label} / {rule}")
                try:
                    results.append(run_one(opts.grid, setting, rule, opts, bar))
                except ConfigError as err:
                    print(f"error: {err}", file=sys.stderr)
                    return 2
    print(table(results, opts.align is not None))
    if opts.json_out:
        Path(opts.json_out).write_text(json.dumps(_jsonable([asdict(r) for r in results]),
                                                  indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
