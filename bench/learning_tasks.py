"""Which rules learn which tasks of the task library within a step budget?

For every (task, rule) pair this trains a network online for ``--steps`` steps (all seeds
batched in one run) and prints the held-out loss, learning frozen, against the task's
reference levels:

    python bench/learning_tasks.py                    # 100,000 steps, the full table
    python bench/learning_tasks.py --steps 2000       # a quick smoke run
    python bench/learning_tasks.py --tasks copy,pattern --rules bptt,dni-b --seeds 0-4

Columns: test = mean held-out loss over seeds (min..max), chance = the task's "nothing
learned" level, ratio = test / chance, beats = the lowest reference level the mean test
loss is below (other than the optimum), learned = ratio < 0.1 ("well below chance", the
criterion of tests/test_task_library.py). Rules not (yet) in the registry are skipped
with a note. Progress goes to stderr (tqdm); the table to stdout.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

if importlib.util.find_spec("simulator") is None:  # a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from simulator.config import RunConfig, parse_seeds
from simulator.engine import Run
from simulator.rules import RULES
from simulator.settings import ConfigError

# The task settings benchmarked (defaults unless noted): the library's teaching set.
TASKS: dict[str, dict[str, Any]] = {
    "flip-flop": {"bits": 3},
    "delayed-non-match": {},
    "pattern": {"clock": "pulse"},
    "digits": {},
    "copy": {"length": 2, "delay": 2, "symbols": 3},
}
RULE_ARGS: dict[str, dict[str, Any]] = {"bptt": {"T": 10}}
DEFAULT_RULES = ("bptt", "rflo", "dni", "dni-b")
LEARNED = 0.1  # test / chance below this counts as learned


@dataclass
class Result:
    task: str
    rule: str
    test: torch.Tensor  # (S,) held-out loss per seed
    levels: dict[str, float]
    seconds: float
    status: str

    @property
    def chance(self) -> float:
        return max(self.levels.values())

    @property
    def ratio(self) -> float:
        return float(self.test.mean()) / self.chance if self.chance > 0 else float("nan")

    def beats(self) -> str:
        """The lowest non-optimal reference level that the mean test loss is below."""
        mean = float(self.test.mean())
        below = [(v, k) for k, v in self.levels.items() if mean < v and v > 0]
        return min(below)[1] if below else "-"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=100_000, help="training steps per run")
    p.add_argument("--seeds", default="0-2", help="seeds, e.g. 0-2 or 0,3,7 (batched)")
    p.add_argument("--tasks", default=",".join(TASKS),
                   help="comma-separated tasks (also neurogym:ID if the extra is installed)")
    p.add_argument("--rules", default=",".join(DEFAULT_RULES), help="comma-separated rules")
    p.add_argument("--n", type=int, default=32, help="recurrent units")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate (all rules)")
    p.add_argument("--test-steps", type=int, default=4000, help="held-out steps at the end")
    p.add_argument("--chunk", type=int, default=1000, help="steps per advance() call")
    return p.parse_args(argv)


def run_one(task: str, rule: str, args: argparse.Namespace, bar: tqdm) -> Result:
    config = RunConfig(task=task, task_args=TASKS.get(task, {}), rule=rule,
                       rule_args=RULE_ARGS.get(rule, {}), n=args.n, alpha=1.0, lr=args.lr,
                       seeds=parse_seeds(args.seeds))
    run = Run(config)
    start = time.perf_counter()
    done = 0
    while done < args.steps:
        k = min(args.chunk, args.steps - done)
        telemetry = run.advance(k, record="scalars")
        done += k
        bar.update(k)
        if telemetry.diverged_at is not None:
            bar.update(args.steps - done)
            break
    test = run.evaluate(args.test_steps)
    return Result(task, rule, test, run.task.reference_levels(),
                  time.perf_counter() - start, run.status)


def table(results: list[Result], steps: int) -> str:
    head = f"{'task':<18} {'rule':<7} {'test (min..max)':<24} {'chance':>7} {'ratio':>6} " \
           f"{'learned':>7} {'s':>6}  beats"
    lines = [f"held-out loss after {steps:,} steps", head, "-" * len(head)]
    for r in results:
        test = f"{r.test.mean():.4f} ({r.test.min():.4f}..{r.test.max():.4f})"
        learned = "yes" if r.ratio < LEARNED else "no"
        if r.status.startswith("diverged"):
            learned = "DIVERGED"
        lines.append(f"{r.task:<18} {r.rule:<7} {test:<24} {r.chance:>7.4f} {r.ratio:>6.3f} "
                     f"{learned:>7} {r.seconds:>6.1f}  {r.beats()}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    rules = []
    for rule in (r.strip() for r in args.rules.split(",") if r.strip()):
        if rule in RULES:
            rules.append(rule)
        else:
            print(f"note: rule {rule!r} is not in the registry yet; skipped", flush=True)
    results: list[Result] = []
    with tqdm(total=len(tasks) * len(rules) * args.steps, unit="step", file=sys.stderr,
              dynamic_ncols=True) as bar:
        for task in tasks:
            for rule in rules:
                bar.set_description(f"{task} / {rule}")
                try:
                    results.append(run_one(task, rule, args, bar))
                except ConfigError as err:
                    bar.update(args.steps)
                    print(f"note: {task} / {rule} skipped: {err}", flush=True)
    print(table(results, args.steps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
