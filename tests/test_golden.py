"""Step for step with the published algorithms (issue 13): golden arrays from the authors' code.

Each ``tests/golden/<rule>.npz`` was made once by running the authors' published NumPy code
(omarschall/vanilla-rtrl: ``core.RNN``, ``core.Simulation.run`` in train mode with
``optimizers.Stochastic_Gradient_Descent``) in float64 on a small fixed case, by a driver
script kept outside this repository (only the numbers are committed):

- network: n = 8, n_in = n_out = 2, alpha = 0.7, tanh units, softmax cross-entropy;
  W_rec = Q of NumPy's QR of an N(0, 1) matrix (no sign correction), W_in ~ N(0, 1/n_in),
  W_out ~ N(0, 1/n), b_rec, b_out ~ N(0, 0.01) (``init_*``); network SGD rate ``lr`` = 0.05;
  the state starts at zero (``Simulation.run``'s default a_initial), set before the
  algorithm was built (so KeRNL's perturbed copy starts there too);
- stream: 40 steps, x = [b, 1 - b] with b ~ Bernoulli(0.5), y = [p, 1 - p] with
  p ~ U(0.1, 0.9) (``x``, ``y``), one update per step;
- ``step_<name>[t]``: every weight array after step t (the network's five, plus the rule's
  own), recorded by the simulation's monitors (copied each step).

Per rule: ``dni``: ``DNI`` with the exact Jacobian, W_out feedback (W_FB None), identity
label, A = ``init_apical`` ~ N(0, 1/(n + n_out + 1)), A's SGD rate 0.05, fix_A_interval 5.
``dni-b``: ``DNI`` with use_approx_J (J_lr 0.01, J~ starting at W_rec), W_FB =
``init_feedback`` ~ N(0, 1/n_out), tanh label activation, otherwise as dni. ``rflo``: ``RFLO``
with alpha 0.7, W_out feedback. ``kernl``: ``KeRNL`` with sigma_noise 1e-3, its A and alpha
trained by SGD at rate 5, W_FB = ``init_feedback``; its Gaussian draws were replaced by
sigma times the rows of ``noise`` (41 x n standard normal: one at construction, one per step).
``uoro``: ``UORO`` started at A = ``init_s_tilde``, B = ``init_theta_tilde`` (N(0, 1)), its
sign vectors nu taken from the rows of ``signs`` (+-1). ``kf-rtrl``: ``KF_RTRL`` started at
A = ``init_u``, B = ``init_A`` (N(0, 1)), its sign pairs taken from ``signs``.
``r-kf-rtrl``: ``Reverse_KF_RTRL`` started at A = ``init_A``, B = ``init_B``, signs from
``signs``. ``rtrl``: ``RTRL`` (influence from zero). (bptt is not comparable: the authors'
truncated BPTT variants are future-facing or windowed, ours past-facing.)

Here the same arrays go into a Run (``load_arrays``, ``reset_state``, ``feed`` and the rule's
``feed_noise`` seam) at the rules' default settings, and every step's weights must agree to
1e-12. The ``simultaneous`` order must not (it is a different algorithm).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from simulator.config import RunConfig
from simulator.engine import Run

GOLDEN = Path(__file__).parent / "golden"
TOL = 1e-12
#: rule -> settings that differ from the rule's defaults in the golden case
CASES: dict[str, dict[str, Any]] = {
    "dni": {}, "dni-b": {}, "rflo": {}, "uoro": {}, "kf-rtrl": {}, "r-kf-rtrl": {}, "rtrl": {},
    "kernl": {"feedback": "random"},
}


def golden_run(rule: str, **rule_args: Any) -> tuple[Run, Any]:
    g = np.load(GOLDEN / f"{rule}.npz")
    config = RunConfig(task="add", rule=rule, n=8, alpha=float(g["alpha"]), lr=float(g["lr"]),
                       dtype="float64", rule_args={**CASES[rule], **rule_args})
    run = Run(config)
    run.load_arrays({k.removeprefix("init_"): g[k] for k in g.files if k.startswith("init_")})
    run.reset_state()
    run.feed(g["x"], g["y"])
    for key in ("signs", "noise"):
        if key in g.files:
            run.rule.feed_noise(g[key][:, None, :])
    return run, g


def worst_step_errors(run: Run, g: Any) -> list[float]:
    """Max abs difference over every golden array, after each step."""
    worst = []
    for t in range(g["x"].shape[0]):
        run.advance(1, record="scalars")
        got = run.state_arrays()
        worst.append(max(float(np.abs(got[k.removeprefix("step_")] - g[k][t]).max())
                         for k in g.files if k.startswith("step_")))
    return worst


@pytest.mark.parametrize("rule", list(CASES))
def test_every_step_matches_the_published_algorithm(rule):
    run, g = golden_run(rule)
    worst = worst_step_errors(run, g)
    assert len(worst) == 40
    bad = [(t, e) for t, e in enumerate(worst) if not e <= TOL]
    assert not bad, f"{rule}: steps differing by more than {TOL}: {bad[:5]}"


@pytest.mark.parametrize("rule", ["dni", "dni-b", "kernl"])
def test_the_simultaneous_order_is_a_different_algorithm(rule):
    """Every update from the state before the step differs from the authors' at step 0."""
    run, g = golden_run(rule, order="simultaneous")
    worst = worst_step_errors(run, g)
    assert worst[0] > 1e-8


def test_kernl_rate_in_sigma_units_is_the_authors_rate_times_sigma_squared():
    g = np.load(GOLDEN / "kernl.npz")
    defaults = RunConfig(rule="kernl").validated().rule_args
    assert defaults["sigma"] == float(g["sigma"])
    assert defaults["lr_kernel"] == pytest.approx(float(g["lr_kernel_authors"]) * defaults["sigma"] ** 2,
                                                  rel=1e-12)
    assert defaults["gamma0"] == 0.8
