"""Grid throughput (issue 14): an experiment batched by the sweep tool against a shell loop.

    python bench/grid.py --steps 2000               # the JMLR preset on Add(5,9), 10 seeds
    python bench/grid.py --preset dnib-rates --steps 1000 --seeds 0-3
    python bench/grid.py --steps 2000 --baseline per-member   # one process per member, its
                                                              # seeds batched by `run`

Both sides run the same members with the same settings, each as real processes:

  batched   ``python -m simulator sweep PRESET --workers W``: members of one shape as one
            Run (members x seeds on the batch axis), batches over a pool of W processes
  looped    ``python -m simulator run ...`` once per member and seed (``per-seed``, the
            default: the shell loop of one process per run the issue describes) or once per
            member with its seeds (``per-member``), W processes at a time

and prints both wall times, their ratio, and the largest difference between the two sides'
final test losses (the same numbers, up to float32 rounding). A benchmark: it prints figures
and judges nothing. ``--steps`` shortens the preset's 100k steps so it finishes in minutes.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's simulator

from simulator.config import RunConfig
from simulator.presets import resolve_experiment
from simulator.sweep import load_spec, parse_experiment

ROOT = Path(__file__).resolve().parents[1]


def run_args(config: RunConfig, seeds: str) -> list[str]:
    """The `python -m simulator run` command line of one config (its seeds given apart)."""
    args = [sys.executable, "-m", "simulator", "run", "--task", config.task, "--rule",
            config.rule, "--n", str(config.n), "--alpha", repr(config.alpha), "--lr",
            repr(config.lr), "--phases", config.phases, "--steps", str(config.steps),
            "--test-steps", str(config.test_steps), "--dtype", config.dtype, "--seeds", seeds,
            "--w-rec-init", config.w_rec_init, "--init-state", config.init_state,
            "--json", "--no-progress"]
    for key, value in config.task_args.items():
        args += ["--task-arg", f"{key}={value}"]
    for key, value in config.rule_args.items():
        args += ["--rule-arg", f"{key}={value}"]
    return args


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", default="jmlr-add", help="a preset name or an experiment file")
    p.add_argument("--steps", type=int, default=2000, help="override the preset's steps")
    p.add_argument("--seeds", default=None, help="override the preset's seeds (e.g. 0-9)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="processes on each side (default: the core count)")
    p.add_argument("--baseline", choices=("per-seed", "per-member"), default="per-seed")
    p.add_argument("--json-out", default=None, metavar="FILE")
    opts = p.parse_args()

    spec = load_spec(resolve_experiment(opts.preset))
    spec["base"] = {**spec.get("base", {}), "steps": opts.steps,
                    **({"seeds": opts.seeds} if opts.seeds else {})}
    exp = parse_experiment(spec)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryDirectory(prefix="grid-bench-") as tmp:
        path = Path(tmp) / "experiment.json"
        path.write_text(json.dumps(spec))
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "simulator", "sweep", str(path), "--out",
                        str(Path(tmp) / "out"), "--workers", str(opts.workers), "--no-progress"],
                       check=True, env=env, stdout=subprocess.DEVNULL)
        batched = time.perf_counter() - started
        sweep_loss = {(int(r["member"]), int(r["seed"])): float(r["final_test_loss"])
                      for r in csv.DictReader((Path(tmp) / "out" / "results.csv").open())}
        batches = len(json.loads((Path(tmp) / "out" / "plan.json").read_text())["batches"])

    jobs: list[tuple[int, list[int]]] = []
    for member in exp.members:
        if opts.baseline == "per-seed":
            jobs += [(member.index, [s]) for s in exp.seeds]
        else:
            jobs.append((member.index, list(exp.seeds)))

    def one(job: tuple[int, list[int]]) -> tuple[int, list[int], list[float | None]]:
        index, seeds = job
        out = subprocess.run(run_args(exp.members[index].config, ",".join(map(str, seeds))),
                             capture_output=True, text=True, env=env)
        summary = json.loads(out.stdout.splitlines()[-1])
        return index, seeds, summary["final_test_loss"] or [None] * len(seeds)

    started = time.perf_counter()
    with ThreadPoolExecutor(opts.workers) as pool:
        looped_results = list(pool.map(one, jobs))
    looped = time.perf_counter() - started

    diff = 0.0
    for index, seeds, losses in looped_results:
        for seed, loss in zip(seeds, losses, strict=True):
            a, b = sweep_loss[(index, seed)], loss
            if b is not None and math.isfinite(a) and math.isfinite(b):
                diff = max(diff, abs(a - b))
    figures = {
        "preset": opts.preset, "members": len(exp.members), "seeds": len(exp.seeds),
        "steps": exp.steps, "test_steps": exp.test_steps, "workers": opts.workers,
        "cores": os.cpu_count(), "batches": batches, "baseline": opts.baseline,
        "processes_looped": len(jobs), "batched_s": round(batched, 2),
        "looped_s": round(looped, 2), "speedup": round(looped / batched, 2),
        "max_abs_diff_final_test_loss": diff,
    }
    print(f"{opts.preset}: {len(exp.members)} members x {len(exp.seeds)} seeds, {exp.steps:,} "
          f"steps + {exp.test_steps:,} test steps, {opts.workers} processes at a time")
    print(f"  batched (sweep, {batches} batches): {batched:8.1f} s")
    print(f"  looped  ({len(jobs)} `run` processes, {opts.baseline}): {looped:8.1f} s")
    print(f"  speed-up: {looped / batched:.1f}x; largest difference of a final test loss: "
          f"{diff:.2g}")
    if opts.json_out:
        Path(opts.json_out).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
