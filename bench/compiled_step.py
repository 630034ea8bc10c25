"""Where the per-step time goes, and what would close the gap to plain NumPy.

DNI-b at n = 32 with one seed is bound by per-op overhead, not arithmetic. This script times
the same DNI-b step three ways on one thread:

  engine        the simulator's generic step, Run(fused=False) (rule objects, telemetry)
  engine, default    Run.advance as it is by default: the fused, TorchScript-scripted k-step
                loop of simulator.fused (no compile, no start-up price)
  engine, compiled   Run(compile=True, fused=False): the step captured by torch.compile
  fused eager   one hand-fused torch function per step (the same ops, no framework)
  fused, compiled    that function through torch.compile (inductor, C++ wrapper)

    python bench/compiled_step.py [--steps 5000]

Run(compile=True) (CLI --compile) is opt-in: the first steps compile for a few seconds, and
only rules whose state is all tensors (dni, dni-b, output-only) can be captured. The fused
loop is the default for dni, dni-b, uoro and kernl (bench/numpy_reference.py times whole
runs against NumPy).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from simulator import Run, RunConfig
from simulator.network import matvec, vecmat

Tensor = torch.Tensor


def dni_b_step(r: Tensor, x: Tensor, y: Tensor, a_prev: Tensor, e_prev: Tensor, W: Tensor,
               W_out: Tensor, A: Tensor, A_frozen: Tensor, J: Tensor, B: Tensor,
               ) -> tuple[Tensor, Tensor, Tensor]:
    """One DNI-b step (alpha = 1), the same equations as simulator.rules.dni, fused."""
    ones = r.new_ones(r.shape[0], 1)
    p = torch.cat([r, x, ones], 1)
    h = torch.tanh(matvec(W, p))
    gain = 1 - h * h
    q = torch.cat([h, ones], 1)
    e = torch.softmax(matvec(W_out, q), -1) - y
    a = torch.cat([h, y, ones], 1)
    U = matvec(A, a)
    target = matvec(B, e_prev) + vecmat(torch.tanh(matvec(A_frozen, a)), J)
    apical_residual = matvec(A, a_prev) - target
    jacobian_residual = matvec(J, r) - h
    W.addcmul_((U * gain).unsqueeze(2), p.unsqueeze(1), value=-1e-3)
    W_out.addcmul_(e.unsqueeze(2), q.unsqueeze(1), value=-1e-3)
    A.addcmul_(apical_residual.unsqueeze(2), a_prev.unsqueeze(1), value=-0.05)
    J.addcmul_(jacobian_residual.unsqueeze(2), r.unsqueeze(1), value=-0.01)
    return h, a, e


def rate(step: Callable[..., tuple[Tensor, Tensor, Tensor]], run: Run, xs: Tensor, ys: Tensor,
         steps: int) -> float:
    net, rule = run.net, run.rule
    weights = (net.W, net.W_out, rule.A, rule.A_frozen, rule.J, rule.B)
    r, a, e = run.r.clone(), torch.zeros(1, net.n + 3), torch.zeros(1, 2)
    with torch.no_grad():
        for i in range(50):
            r, a, e = step(r, xs[i], ys[i], a, e, *weights)
        start = time.perf_counter()
        for i in range(steps):
            r, a, e = step(r, xs[i], ys[i], a, e, *weights)
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    config = RunConfig(task="add", rule="dni-b", n=32, seeds=[0])
    run = Run(config)
    x, y = run.stream.next(args.steps + 50)
    xs, ys = x.float(), y.float()

    engine, default = [], []
    for _ in range(args.repeats):
        fresh = Run(config)
        fresh.advance(200, record="scalars")
        start = time.perf_counter()
        fresh.advance(args.steps, record="scalars")
        default.append(args.steps / (time.perf_counter() - start))
        fresh = Run(config, fused=False)
        fresh.advance(200, record="scalars")
        start = time.perf_counter()
        fresh.advance(args.steps, record="scalars")
        engine.append(args.steps / (time.perf_counter() - start))
    captured = []
    for _ in range(args.repeats):
        fresh = Run(config, compile=True, fused=False)
        fresh.advance(200, record="scalars")  # compiles (first step, then the steady step)
        start = time.perf_counter()
        fresh.advance(args.steps, record="scalars")
        captured.append(args.steps / (time.perf_counter() - start))
    eager = [rate(dni_b_step, Run(config), xs, ys, args.steps) for _ in range(args.repeats)]
    import torch._inductor.config as inductor

    inductor.cpp_wrapper = True  # the Python wrapper's own overhead is most of a tiny step
    compiled_fn = torch.compile(dni_b_step, dynamic=False)
    start = time.perf_counter()
    rate(compiled_fn, Run(config), xs, ys, 10)
    compile_s = time.perf_counter() - start
    compiled = [rate(compiled_fn, Run(config), xs, ys, args.steps) for _ in range(args.repeats)]
    print(f"dni-b, n=32, one seed, float32, one thread, {args.steps:,} steps, median of "
          f"{args.repeats}")
    for name, values in (("engine, generic step", engine), ("engine, default (fused)", default),
                         ("engine, compile=True", captured), ("fused eager", eager),
                         ("fused, torch.compile", compiled)):
        print(f"  {name:22s} {statistics.median(values):10,.0f} steps/s")
    print(f"  (first compiled call: {compile_s:.1f} s)")


if __name__ == "__main__":
    main()
