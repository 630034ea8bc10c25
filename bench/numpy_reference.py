"""The issue's yardstick: a plain NumPy implementation of DNI-b (one seed, n = 32) against the
torch simulator on the same machine, steps per second, median of repeats, and their ratio.

The NumPy step is written the straightforward way (no batching, float32, preallocated
nothing special): forward pass, apical voltage, bootstrapped target with the learned J~ and a
tanh label, the three local rules and the readout delta rule. It also checks that it learns
the same thing: both start from the simulator's initial weights and input stream, in float64,
and their losses agree to 1e-9 over the first steps.

    python bench/numpy_reference.py [--steps 20000] [--repeats 5]
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
    a_prev = e_prev = None
    start = time.perf_counter()
    for t in range(steps):
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
        U = A @ a
        dA = None
        if a_prev is not None:
            g = np.tanh(A_frozen @ a)
            target = B @ e_prev + J.T @ g
            dA = np.outer(A @ a_prev - target, a_prev)
        dJ = np.outer(J @ r - r_new, r)
        dW = np.outer(U * gain, p)
        W_out -= lr * np.outer(e, q)
        W -= lr * dW
        J -= lr_j * dJ
        if dA is not None:
            A -= lr_a * dA
        if (t + 1) % refresh == 0:
            A_frozen = A.copy()
        a_prev, e_prev, r = a, e, r_new
    assert n == r.shape[0]
    return losses, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    config = RunConfig(task="add", rule="dni-b", n=32, seeds=[0])

    # same numbers first: float64 NumPy against the float64 simulator
    ref = Run(RunConfig(task="add", rule="dni-b", n=32, seeds=[0], dtype="float64"))
    np_losses, _ = numpy_dni_b(ref, 300, np.float64)
    sim_losses = ref.advance(300, record="scalars").loss[:, 0].numpy()
    worst = float(np.abs(np_losses - sim_losses).max())
    print(f"agreement over 300 steps (float64): max |loss difference| = {worst:.2e}")

    numpy_rates, torch_rates = [], []
    for _ in range(args.repeats):
        _, seconds = numpy_dni_b(Run(config), args.steps)
        numpy_rates.append(args.steps / seconds)
        run = Run(config)
        run.advance(200, record="scalars")
        start = time.perf_counter()
        run.advance(args.steps, record="scalars")
        torch_rates.append(args.steps / (time.perf_counter() - start))
    np_med, torch_med = statistics.median(numpy_rates), statistics.median(torch_rates)
    print(f"dni-b, n=32, one seed, float32, {args.steps:,} steps, median of {args.repeats} "
          f"(torch threads: {torch.get_num_threads()})")
    print(f"  plain NumPy      {np_med:10,.0f} steps/s")
    print(f"  simulator (torch){torch_med:10,.0f} steps/s")
    print(f"  ratio torch / NumPy: {torch_med / np_med:.2f}")


if __name__ == "__main__":
    main()
