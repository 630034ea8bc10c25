"""Learning quality of the rules (issues 2 and 3): final held-out loss per rule, next to
the task's reference levels, and (with --align) the mean alignment of each rule's W_rec
update with the exact gradient (a shadow RTRL for n <= 64, truncated BPTT beyond).

    python bench/learning.py                       # the "core" grid (issue 2)
    python bench/learning.py --grid jmlr --align   # all ten rules on the JMLR grid (issue 3)
    python bench/learning.py --grid jmlr --steps 2000 --seeds 0-1     # a quick smoke run
    python bench/learning.py --grid jmlr --rules rflo,kernl --lr 3e-4 --json-out out.json

Grids (network lr 1e-3, n = 32, plain SGD, one update per step, 100,000 steps, seeds 0-4
batched in one run, 5,000 held-out steps with learning frozen):

  core  Add(5,9), alpha = 1; rules bptt (T = 10), rtrl, dni, dni-b, output-only
  jmlr  all ten rules on Add(5,9) alpha = 1; Add(2,4) tau_task = 2, alpha = 0.5;
        Mimic (n_in = n_out = 32, teacher of the same alpha) with alpha = 1 and 0.5

Columns: mean / min / max final test loss over seeds; align = mean over steps and seeds
of the cosine with the exact gradient; ratio = mean ||G_rule|| / ||G_exact||; steps/s;
status (finished, or where it diverged). DNI's apical and J~ rates follow MODEL.md
(0.05 / 0.01 on Add with alpha = 1, 1e-3 elsewhere). Progress goes to stderr (tqdm), the
tables to stdout. A benchmark, not a test: it prints figures and judges nothing.
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

from simulator.alignment import AlignmentMeans
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
    apical_rates: tuple[float, float]  # DNI's (lr_apical, lr_jacobian) here (MODEL.md)


ADD_59 = Setting("Add(5,9), alpha=1", "add", {"t1": 5, "t2": 9}, 1.0, (0.05, 0.01))
ADD_24 = Setting("Add(2,4), tau_task=2, alpha=0.5", "add", {"t1": 2, "t2": 4, "tau_task": 2},
                 0.5, (1e-3, 1e-3))


def mimic(alpha: float) -> Setting:
    args = {"n_in": 32, "n_out": 32, "teacher_alpha": alpha}
    return Setting(f"Mimic(32), alpha={alpha:g}", "mimic", args, alpha, (1e-3, 1e-3))


EXACT_FIRST = ("rtrl", "bptt", "uoro", "kf-rtrl", "r-kf-rtrl", "rflo", "kernl", "dni", "dni-b",
               "output-only")
GRIDS: dict[str, tuple[tuple[Setting, ...], tuple[str, ...]]] = {
    "core": ((ADD_59,), ("bptt", "rtrl", "dni", "dni-b", "output-only")),
    "jmlr": ((ADD_59, ADD_24, mimic(1.0), mimic(0.5)), EXACT_FIRST),
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
                   help="shadow exact gradient: auto (default), rtrl or bptt:T")
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
