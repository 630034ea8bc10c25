"""The issue's yardstick: a plain NumPy implementation of DNI-b (one seed, n = 32) against the
torch simulator on the same machine, steps per second, median of repeats, and their ratio.

The NumPy step is written the straightforward way (no batching, float32, preallocated
nothing special): forward pass, apical voltage, bootstrapped target with the learned J~ and a
tanh label, the three local rules and the readout delta rule. It also checks that it learns
the same thing: both start from the simulator's initial weights and input stream, in float64,
and their losses agree to 1e-9 over the first steps.

    python bench/numpy_reference.py [--steps 100000] [--repeats 3] [--background-compile]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from simulator import Run, RunConfig


def numpy_dni_b(run: Run, steps: int, dtype: type = np.float32) -> tuple[np.ndarray, float]:
    """Run DNI-b for ``steps`` on seed 0 of ``run``'s initial state; (losses, seconds)."""
    rule, net = run.rule, run.net
    W = net.W[0].double().numpy().astype(dtype)
    W_out = net.W_out[0].double().numpy().astype(dtype)
    A = rule.A[0].double().numpy().astype(dtype)
    A_frozen = A.copy()
    J = rule.J[0].double().numpy().astype(dtype)
    B = rule.B[0].double().numpy().astype(dtype)
    r = run.r[0].double().numpy().astype(dtype)
    x_all, y_all = run.task.stream(run.seeds, "train").next(steps)
    xs, ys = x_all[:, 0].numpy().astype(dtype), y_all[:, 0].numpy().astype(dtype)
    lr, lr_a, lr_j = run.lr["basal"], run.lr["apical"], run.lr["jacobian"]
    refresh = rule.args["refresh"]
    n = r.shape[0]
    one = np.ones(1, dtype)
    losses = np.empty(steps)
    a_prev = None
    q_prev = np.zeros(n, dtype)
    start = time.perf_counter()
    for t in range(steps):  # the authors' sequential order (simulator.rules.dni)
        x, y = xs[t], ys[t]
        p = np.concatenate([r, x, one])
        h = np.tanh(W @ p)
        r_new = h
        gain = 1 - h * h
        q = np.concatenate([r_new, one])
        z = W_out @ q
        ez = np.exp(z - z.max())
        soft = ez / ez.sum()
        losses[t] = -(y * np.log(soft)).sum()
        e = soft - y
        a = np.concatenate([r_new, y, one])
        if a_prev is None:  # the first step: a~(-1) = [r(-1); y(0); 1], q(-1) = 0
            a_prev = np.concatenate([r, y, one])
        J -= lr_j * np.outer(J @ r - r_new, r)  # J~ first
        target = q_prev + J.T @ np.tanh(A_frozen @ a)  # with the updated J~
        A -= lr_a * np.outer(A @ a_prev - target, a_prev)
        U = A @ a  # from the updated A
        W_out -= lr * np.outer(e, q)
        W -= lr * np.outer(U * gain, p)
        if (t + 1) % refresh == 0:
            A_frozen = A.copy()
        a_prev, q_prev, r = a, B @ e, r_new
    assert n == r.shape[0]
    return losses, time.perf_counter() - start


def torch_run(config: RunConfig, steps: int, chunk: int, **kwargs: object) -> float:
    """Seconds for a whole run as the CLI does it: build the Run, advance in chunks (the
    scripted fused loop, or a background compile, included: nothing is warmed up)."""
    from simulator import fused

    fused._LOOP = None  # the TorchScript scripting of the fused loop counts, every time
    start = time.perf_counter()
    run = Run(config, **kwargs)  # type: ignore[arg-type]
    done = 0
    while done < steps:
        k = min(chunk, steps - done)
        run.advance(k, record="scalars")
        done += k
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=1000,
                        help="steps per advance() call (the CLI's frame)")
    parser.add_argument("--background-compile", action="store_true",
                        help="also time Run(compile='background') (slow on a busy core)")
    args = parser.parse_args()
    config = RunConfig(task="add", rule="dni-b", n=32, seeds=[0])

    # same numbers first: float64 NumPy against the float64 simulator, both step paths
    for fused in (False, True):
        ref = Run(RunConfig(task="add", rule="dni-b", n=32, seeds=[0], dtype="float64"),
                  fused=fused)
        np_losses, _ = numpy_dni_b(ref, 300, np.float64)
        sim_losses = ref.advance(300, record="scalars").loss[:, 0].numpy()
        worst = float(np.abs(np_losses - sim_losses).max())
        print(f"agreement over 300 steps (float64, fused={fused}): max |loss difference| = "
              f"{worst:.2e}")

    modes: dict[str, dict[str, object]] = {"generic step (fused=False)": {"fused": False},
                                           "default (fused loop)": {}}
    if args.background_compile:
        modes["compile='background'"] = {"fused": False, "compile": "background"}
    numpy_s: list[float] = []
    torch_s: dict[str, list[float]] = {name: [] for name in modes}
    ratios: dict[str, list[float]] = {name: [] for name in modes}
    for _ in range(args.repeats):  # side by side: each repeat times every contender once
        _, seconds = numpy_dni_b(Run(config), args.steps)
        numpy_s.append(seconds)
        for name, kwargs in modes.items():
            took = torch_run(config, args.steps, args.chunk, **kwargs)
            torch_s[name].append(took)
            ratios[name].append(seconds / took)
    print(f"dni-b, n=32, one seed, float32, a {args.steps:,}-step run including start-up, "
          f"median of {args.repeats} (torch threads: {torch.get_num_threads()})")
    print(f"  {'plain NumPy':28s} {statistics.median(numpy_s):7.2f} s "
          f"{args.steps / statistics.median(numpy_s):10,.0f} steps/s")
    for name in modes:
        med = statistics.median(torch_s[name])
        print(f"  {name:28s} {med:7.2f} s {args.steps / med:10,.0f} steps/s   speed / NumPy "
              f"(median of per-repeat ratios): {statistics.median(ratios[name]):.2f}")


if __name__ == "__main__":
    main()
