"""Speed of every registered rule (issues 2 and 3), one CPU thread unless told otherwise.

    python bench/speed.py                    # CPU: n = 32 and n = 256, 1 and 32 seeds
    python bench/speed.py --rules rtrl,dni-b --repeats 7
    python bench/speed.py --device cuda      # n = 1024 x 64 seeds and n = 32 x 64 seeds,
                                             # eager and replayed from CUDA graphs

For each rule and size: steps per second (one seed) or seed-steps per second (S seeds
batched: steps/s x S), the median of --repeats timed calls of Run.advance(k,
record="scalars") after a warm-up, k chosen so one call takes about --seconds. The Add task
(t1 = 5, t2 = 9), alpha = 1, float32, every learning rate (network and the rules' own populations)
1e-5: each update is applied, as in a real run, but no rule diverges while being timed
(NaNs would skew the figures, and dni's default apical rate diverges at n = 256).
Rules whose cost is absurd at a size are
skipped with a note (RTRL keeps an n x n x (n + n_in + 1) influence tensor per seed and
costs n^4 per step). On the CPU a last table times RTRL alone against n (one seed), to
show where it stops being usable live. A benchmark: it prints figures and judges nothing.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

import torch

if importlib.util.find_spec("simulator") is None:  # a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from simulator.config import RunConfig
from simulator.engine import Diverged, Run
from simulator.fused import plan as fused_plan
from simulator.rules import RULES

torch.set_num_threads(1)  # tiny ops spin-wait with more threads on small machines

LR = 1e-5
CPU_SIZES = ((32, 1), (32, 32), (256, 1), (256, 32))
CUDA_SIZES = ((32, 64), (1024, 64))
#: rules not timed from this many units on: their cost (n^4 per step) makes it pointless
TOO_COSTLY = {"rtrl": 129}
RTRL_SIZES = (16, 32, 48, 64, 96, 128)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def rate(rule: str, n: int, seeds: int, device: str, repeats: int, seconds: float,
         cuda_graph: bool = False) -> float:
    """Median seed-steps per second of advance(k, record="scalars") (steps/s when S = 1)."""
    config = RunConfig(task="add", task_args={"t1": 5, "t2": 9}, rule=rule,
                       rule_args={"T": 10} if rule == "bptt" else {}, n=n, alpha=1.0,
                       lr=LR, seeds=list(range(seeds)), device=device, test_steps=0)
    run = Run(config, cuda_graph=cuda_graph)
    run.set_learning_rates(**dict.fromkeys(run.lr, LR))  # the rules' own populations too

    def timed(k: int) -> float:
        _sync(device)
        start = time.perf_counter()
        run.advance(k, record="scalars")
        _sync(device)
        return time.perf_counter() - start

    timed(20)  # warm-up: allocations, the first data prefetch, CUDA kernels, graph capture
    k = max(5, min(100_000, int(seconds * 20 / max(timed(20), 1e-9))))
    timings = [timed(k) for _ in range(repeats)]
    return k * seeds / statistics.median(timings)


def sizes_for(device: str) -> tuple[tuple[int, int], ...]:
    return CUDA_SIZES if device == "cuda" else CPU_SIZES


def table(rules: list[str], device: str, repeats: int, seconds: float,
          results: dict[str, dict[str, float | None]]) -> list[str]:
    """Time every rule at every size; returns the printed notes."""
    sizes = sizes_for(device)
    columns = [f"n={n} S={s}" for n, s in sizes]
    print(f"{'rule':<16}" + "".join(f"{c:>16}" for c in columns), flush=True)
    notes = []
    # on a GPU, rules that can be captured are timed a second time replayed from CUDA graphs
    rows = [(rule, False) for rule in rules] + [
        (rule, True) for rule in rules if device == "cuda" and RULES[rule].compilable]
    for rule, graphed in rows:
        label = f"{rule}+graph" if graphed else rule
        cells = []
        results[label] = {}
        for (n, seeds), column in zip(sizes, columns, strict=True):
            value: float | None = None
            if n >= TOO_COSTLY.get(rule, 10**9):
                notes.append(f"note: {rule} not timed at n={n} (n^4 per step and seed)")
                cells.append(f"{'skipped':>16}")
            else:
                try:
                    value = rate(rule, n, seeds, device, repeats, seconds, cuda_graph=graphed)
                    cells.append(f"{value:>16,.0f}")
                except Diverged:
                    cells.append(f"{'diverged':>16}")
            results[label][column] = value
        print(f"{label:<16}" + "".join(cells), flush=True)
        if graphed and results.get(rule):
            ratios = [f"{g / e:.1f}x" if g and e else "-" for g, e in
                      zip(results[label].values(), results[rule].values(), strict=True)]
            print(f"{'  graph/eager':<16}" + "".join(f"{r:>16}" for r in ratios), flush=True)
    print("(one seed: steps/s; S seeds: seed-steps/s = steps/s x S; +graph: Run(cuda_graph=True))")
    for note in dict.fromkeys(notes):
        print(note)
    return notes


def rtrl_scaling(repeats: int, seconds: float, live: float) -> dict[int, float]:
    """RTRL steps/s against n, one seed, CPU: where does it stop being usable live?"""
    print(f"\nrtrl alone, one seed, steps/s against n (live: >= {live:,.0f} steps/s)")
    out: dict[int, float] = {}
    for n in RTRL_SIZES:
        out[n] = rate("rtrl", n, 1, "cpu", repeats, seconds)
        print(f"  n={n:<4} {out[n]:>10,.0f}  {'live' if out[n] >= live else 'too slow'}",
              flush=True)
    live_ns = [n for n, v in out.items() if v >= live]
    print(f"rtrl is usable live up to n = {max(live_ns) if live_ns else 'none'} on this machine")
    return out


def paired(repeats: int, steps: int = 1000) -> dict[str, float]:
    """n = 32, one seed: each rule's default step (the fused loops of simulator.fused for
    dni, dni-b, uoro, kernl) and its generic step (Run(fused=False)), timed round-robin in
    one process so that a busy machine slows them alike; speed against dni's generic step
    as the median of the per-round ratios."""
    def config(rule: str) -> RunConfig:
        return RunConfig(task="add", task_args={"t1": 5, "t2": 9}, rule=rule, n=32, lr=LR,
                         seeds=[0], test_steps=0)

    runs = {}
    for rule in ("dni", "dni-b", "uoro", "kernl", "rflo"):
        runs[f"{rule} (generic step)"] = Run(config(rule), fused=False)
        if fused_plan(Run(config(rule))) is not None:
            runs[f"{rule} (default: fused)"] = Run(config(rule))
    times: dict[str, list[float]] = {name: [] for name in runs}
    for run in runs.values():
        run.advance(100, record="scalars")
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run.advance(steps, record="scalars")
            times[name].append(time.perf_counter() - start)
    base = times["dni (generic step)"]
    print(f"\nn=32, one seed, round-robin x {repeats}: {'steps/s':>9}   speed / dni generic step")
    out = {}
    for name, values in times.items():
        out[name] = steps / statistics.median(values)
        ratio = statistics.median([b / v for b, v in zip(base, values, strict=True)])
        print(f"  {name:26s} {out[name]:9,.0f}   {ratio:.2f}")
    return out


def matmul_peak(repeats: int, size: int = 1024) -> float:
    """This core's float32 GFLOP/s on a big matrix product (one thread): the roof."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times) / 1e9


def rtrl_roofline(repeats: int, seconds: float, n: int = 32, seeds: int = 32) -> dict[str, float]:
    """The 32-seed RTRL step at n = 32 against the core's peak: flops per step (the cost
    model's count, forward pass included) x steps/s, over a big matmul's GFLOP/s."""
    from simulator.cost import estimate

    config = RunConfig(task="add", task_args={"t1": 5, "t2": 9}, rule="rtrl", n=n, lr=LR,
                       seeds=list(range(seeds)), test_steps=0, steps=1)
    flops = estimate(config).flops_per_step  # all seeds
    peak = matmul_peak(repeats)
    steps = rate("rtrl", n, seeds, "cpu", repeats, seconds) / seeds
    achieved = flops * steps / 1e9
    print(f"\nrtrl, n={n}, {seeds} seeds: {flops / 1e6:,.1f} MFLOP per step x {steps:,.0f} "
          f"steps/s = {achieved:.2f} GFLOP/s; a 1024^2 float32 matmul on this core: "
          f"{peak:.1f} GFLOP/s; RTRL reaches {achieved / peak:.0%} of it")
    return {"flops_per_step": flops, "steps_per_s": steps, "gflops": achieved, "peak": peak}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--rules", default=",".join(RULES), help="comma-separated rules")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per figure (median)")
    p.add_argument("--seconds", type=float, default=0.3, help="target length of one timed call")
    p.add_argument("--live", type=float, default=1000.0,
                   help="steps/s a live demo needs (for the RTRL scaling note)")
    p.add_argument("--no-scaling", action="store_true", help="skip the RTRL-against-n table")
    p.add_argument("--paired", action="store_true",
                   help="only the round-robin table: fused against generic steps at n = 32")
    p.add_argument("--no-roofline", action="store_true",
                   help="skip RTRL (n = 32, 32 seeds) against the core's matmul peak")
    p.add_argument("--json-out", default=None, metavar="FILE", help="write the figures as JSON")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    rules = [r.strip() for r in opts.rules.split(",") if r.strip()]
    unknown = [r for r in rules if r not in RULES]
    if unknown:
        print(f"error: unknown rule(s) {', '.join(unknown)}; allowed: {', '.join(RULES)}",
              file=sys.stderr)
        return 2
    if opts.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no GPU is available here", file=sys.stderr)
        return 2
    where = torch.cuda.get_device_name() if opts.device == "cuda" else \
        f"CPU, {torch.get_num_threads()} thread(s)"
    print(f"speed on {where}, torch {torch.__version__}, float32, Add(5,9), alpha=1")
    if opts.paired:
        paired(opts.repeats)
        return 0
    results: dict[str, dict[str, float | None]] = {}
    table(rules, opts.device, opts.repeats, opts.seconds, results)
    scaling = {}
    if opts.device == "cpu" and not opts.no_scaling and "rtrl" in rules:
        scaling = rtrl_scaling(opts.repeats, opts.seconds, opts.live)
    roofline = {}
    if opts.device == "cpu" and not opts.no_roofline and "rtrl" in rules:
        roofline = rtrl_roofline(opts.repeats, opts.seconds)
    if opts.json_out:
        Path(opts.json_out).write_text(json.dumps(
            {"device": where, "rules": results, "rtrl_scaling": scaling,
             "rtrl_roofline": roofline}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
