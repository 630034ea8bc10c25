"""f-bptt, e-bptt, snap-1 and node-perturbation: each formula against autograd / RTRL in
float64, and f-bptt, e-bptt and node-perturbation step for step against the authors' code.

Golden data (tests/golden/bptt_reinforce_n8.npz, numbers only) was made once by running the
authors' NumPy code (omarschall/vanilla-rtrl: core.RNN, core.Simulation, Future_BPTT(rnn, 10),
Efficient_BPTT(rnn, 10), REINFORCE(rnn, sigma=0.1, loss_decay=0.05) with
Simulation.run(sigma=0.1), Stochastic_Gradient_Descent(lr=0.05), tanh, softmax cross-entropy,
a_initial = 0) on n = 8, n_in = n_out = 2, alpha = 1 and 0.6, a 40-step stream: from
numpy RandomState(1234), W_rec = Q of QR(N(0,1)), W_in ~ N(0, 1/2), W_out ~ N(0, 1/8),
b_rec, b_out ~ N(0, 0.1^2), x one-hot Bernoulli(0.5) bits, y = [p, 1-p] with p ~ U(0.1, 0.9).
The file holds the initial arrays, X, Y, and every step's W_rec, W_in, b_rec, W_out, b_out
after the update; for REINFORCE also each step's injected noise (np.random.seed(7)) and
rec_grads. REINFORCE's sigma also switches on the authors' Learning_Algorithm gradient noise
(N(0, sigma^2) added to every gradient); that was switched off for the golden run, as the
project's rule leaves it out.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_rules_family import drive, random_network, step_context

from simulator import Run, RunConfig
from simulator.losses import error_signal, loss_value
from simulator.network import Network, matvec
from simulator.rules import RULES
from simulator.rules.base import StepContext
from simulator.rules.rflo import RFLO
from simulator.rules.rtrl import RTRL
from simulator.rules.snap1 import SnAp1

F64 = torch.float64
GOLDEN = Path(__file__).parent / "golden" / "bptt_reinforce_n8.npz"
NEW = ("f-bptt", "e-bptt", "snap-1", "node-perturbation")


# ---- step for step with the authors' code ----------------------------------------------

def golden_run(rule: str, alpha: float, rule_args: dict | None = None) -> tuple[Run, dict]:
    """A float64 Run on the golden network and stream (tensors set directly, r(0) = 0)."""
    g = dict(np.load(GOLDEN))
    run = Run(RunConfig(task="add", rule=rule, rule_args=rule_args or {}, n=8, alpha=alpha,
                        lr=0.05, seeds=[0], dtype="float64"))
    t = lambda a: torch.from_numpy(np.asarray(a, dtype=np.float64))  # noqa: E731
    run.net.W.copy_(torch.cat([t(g["W_rec0"]), t(g["W_in0"]), t(g["b_rec0"])[:, None]], 1)[None])
    run.net.W_out.copy_(torch.cat([t(g["W_out0"]), t(g["b_out0"])[:, None]], 1)[None])
    run.r = torch.zeros(1, 8, dtype=F64)
    run._xb, run._yb, run._i = t(g["X"])[:, None], t(g["Y"])[:, None], 0  # the next 40 steps
    return run, g


def assert_weights_match(run: Run, g: dict, prefix: str, step: int) -> None:
    W, W_out = run.net.W[0], run.net.W_out[0]
    for name, ours in (("W_rec", W[:, :8]), ("W_in", W[:, 8:10]), ("b_rec", W[:, -1]),
                       ("W_out", W_out[:, :8]), ("b_out", W_out[:, -1])):
        theirs = torch.from_numpy(g[f"{prefix}_{name}"][step])
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12,
                                   msg=lambda m, n=name: f"{prefix} {n} step {step}: {m}")


@pytest.mark.parametrize("alpha", [1.0, 0.6])
@pytest.mark.parametrize("rule,prefix", [("f-bptt", "fbptt"), ("e-bptt", "ebptt")])
def test_truncated_bptt_matches_the_authors_every_step(rule, prefix, alpha):
    run, g = golden_run(rule, alpha)
    tag = f"{prefix}_{'a1' if alpha == 1.0 else 'a06'}"
    for step in range(40):
        run.advance(1, record="scalars")
        assert_weights_match(run, g, tag, step)
    # the first update of the basal weights comes at step T - 1 = 9 (earlier ones are zero)
    assert np.array_equal(g[f"{tag}_b_rec"][8], g["b_rec0"])
    assert not np.array_equal(g[f"{tag}_b_rec"][9], g["b_rec0"])


class FedNoise:
    """Stands in for the rule's NoiseStream: the authors' standard-normal draws, in order."""

    def __init__(self, draws: np.ndarray) -> None:
        self.draws, self.i = torch.from_numpy(draws), 0

    def next(self) -> torch.Tensor:
        self.i += 1
        return self.draws[self.i - 1][None]


@pytest.mark.parametrize("alpha", [1.0, 0.6])
def test_node_perturbation_matches_the_authors_reinforce_every_step(alpha):
    run, g = golden_run("node-perturbation", alpha, {"sigma": 0.1, "loss_decay": 0.05})
    tag = f"reinforce_{'a1' if alpha == 1.0 else 'a06'}"
    run.rule.noise = FedNoise(g[f"{tag}_noise"] / (0.1 * alpha))  # theirs: sigma N(0, alpha)
    for step in range(40):
        tel = run.advance(1, record="scalars", record_updates=True)
        torch.testing.assert_close(tel.estimates["basal"][0, 0],
                                   torch.from_numpy(g[f"{tag}_rec_grads"][step]),
                                   rtol=0, atol=1e-12)
        assert_weights_match(run, g, tag, step)


# ---- against autograd ------------------------------------------------------------------

def autograd_credit(net: Network, r0: torch.Tensor, xs: list, ys: list, wrt: list[int],
                    losses: range) -> torch.Tensor:
    """d/dW of sum_{s in losses} L(s) where only the steps in ``wrt`` see W as a variable
    (the others use the same values as constants), the state before step losses[0] fixed.
    Seed 0 of the batch, squared-error loss, (n, m)."""
    W = net.W[:1].clone().requires_grad_(True)
    r, total = r0[:1], torch.zeros((), dtype=F64)
    for s in range(losses.start, losses.stop):
        Ws = W if s in wrt else W.detach()
        h = torch.tanh(matvec(Ws, torch.cat([r, xs[s][:1], r.new_ones(1, 1)], 1)))
        r = (1 - net.alpha) * r + net.alpha * h
        z = matvec(net.W_out[:1], torch.cat([r, r.new_ones(1, 1)], 1))
        total = total + loss_value("mse", z, ys[s][:1]).sum()
    (grad,) = torch.autograd.grad(total, W)
    return grad[0]


def recorded_drive(rule, net: Network, r: torch.Tensor, steps: int):
    """Drive ``rule`` on fixed weights; returns per step (r(t-1), x, y, basal update)."""
    rows = []

    def hook(t, ctx, outs):
        rows.append((ctx.r_prev.clone(), ctx.x.clone(), ctx.y.clone(),
                     outs[0].updates["basal"].dense()[0].clone()))

    drive([rule], net, r, steps, hook=hook)
    return rows


@pytest.mark.parametrize("alpha", [1.0, 0.7])
def test_f_bptt_update_is_the_future_credit_of_step_t_minus_T_plus_1(alpha):
    T, steps = 4, 11
    net, r = random_network(5, 2, 3, alpha, 1)
    rows = recorded_drive(RULES["f-bptt"](net, 3, {"T": T}, [0]), net, r, steps)
    xs, ys = [row[1] for row in rows], [row[2] for row in rows]
    for t in range(steps):
        u = t - T + 1
        if u < 0:
            assert torch.count_nonzero(rows[t][3]) == 0
            continue
        expected = autograd_credit(net, rows[u][0], xs, ys, [u], range(u, t + 1))
        torch.testing.assert_close(rows[t][3], expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("alpha", [1.0, 0.7])
def test_e_bptt_update_is_the_window_gradient_once_per_window(alpha):
    T, steps = 4, 12
    net, r = random_network(5, 2, 3, alpha, 1)
    rows = recorded_drive(RULES["e-bptt"](net, 3, {"T": T}, [0]), net, r, steps)
    xs, ys = [row[1] for row in rows], [row[2] for row in rows]
    for t in range(steps):
        if (t + 1) % T:
            assert torch.count_nonzero(rows[t][3]) == 0
            continue
        window = range(t - T + 1, t + 1)
        expected = autograd_credit(net, rows[window.start][0], xs, ys, list(window), window)
        torch.testing.assert_close(rows[t][3], expected, rtol=1e-12, atol=1e-14)


def test_f_bptt_with_T_1_is_one_step_bptt():
    net, r = random_network(5, 2, 3, 0.5, 2)
    fb, bp = RULES["f-bptt"](net, 3, {"T": 1}, [0, 1]), RULES["bptt"](net, 3, {"T": 1}, [0, 1])

    def check(t, ctx, outs):
        torch.testing.assert_close(outs[0].updates["basal"].dense(),
                                   outs[1].updates["basal"].dense(), rtol=1e-13, atol=1e-15)

    drive([fb, bp], net, r, 6, hook=check)


# ---- snap-1 ------------------------------------------------------------------------------

@pytest.mark.parametrize("alpha", [1.0, 0.6])
def test_snap1_is_one_rtrl_step_from_its_own_influence_restricted_to_the_diagonal(alpha):
    """Every step: RTRL's recursion applied to SnAp-1's previous influence (embedded on the
    k = i diagonal), then restricted to k = i, equals SnAp-1's influence; the gradient is
    credit times it; at the first step (M = 0) that is RTRL's full, exact influence."""
    n, m = 5, 8
    net, r = random_network(n, 2, 3, alpha, 2)
    snap, rtrl = SnAp1(net, 3, {}, [0, 1]), RTRL(net, 3, {}, [0, 1])
    eye = torch.eye(n, dtype=F64)[None, :, :, None]

    def embed(M: torch.Tensor) -> torch.Tensor:  # (S, n, m) -> (S, n, n, m) on k = i
        return eye * M[:, None]

    def check(t, ctx, outs):
        full = rtrl.M
        if t == 0:
            torch.testing.assert_close(embed(snap.M), full, rtol=1e-13, atol=1e-15)
        restricted = full.diagonal(dim1=1, dim2=2).permute(0, 2, 1)  # (S, i, j) = M[k=i]
        torch.testing.assert_close(snap.M, restricted, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(outs[0].updates["basal"].dense(),
                                   ctx.credit[:, :, None] * snap.M, rtol=1e-12, atol=1e-14)
        assert not torch.equal(full, embed(restricted)) or t == 0  # SnAp drops the rest
        rtrl.M = embed(snap.M.clone())  # the next RTRL step starts from SnAp's influence

    drive([snap, rtrl], net, r, 7, hook=check)
    assert snap.M.shape == (2, n, m)


def test_snap1_diagonal_jacobian_is_autograds_and_without_self_connections_it_is_rflo():
    net, r = random_network(5, 2, 3, 0.6, 1)
    x, y = torch.randn(1, 2, dtype=F64), torch.randn(1, 3, dtype=F64)
    ctx, _ = step_context(net, r, x, y, 0)

    def one_step(r_prev: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(matvec(net.W, torch.cat([r_prev, x, r_prev.new_ones(1, 1)], 1)))
        return (1 - net.alpha) * r_prev + net.alpha * h

    J = torch.autograd.functional.jacobian(one_step, r)[0, :, 0, :]
    snap = SnAp1(net, 3, {}, [0])
    torch.testing.assert_close(snap.diagonal_jacobian(ctx)[0], J.diagonal(), rtol=1e-13, atol=0)
    # with W_ii = 0 the kept Jacobian is the leak alone: SnAp-1 becomes RFLO (symmetric)
    net.W_rec.diagonal(dim1=1, dim2=2).zero_()
    snap, rflo = SnAp1(net, 3, {}, [0]), RFLO(net, 3, {"feedback": "symmetric"}, [0])

    def same(t, ctx, outs):
        torch.testing.assert_close(outs[0].updates["basal"].dense(),
                                   outs[1].updates["basal"].dense(), rtol=1e-13, atol=1e-15)

    drive([snap, rflo], net, r, 6, hook=same)


# ---- node perturbation ------------------------------------------------------------------

@pytest.mark.parametrize("decay", [1.0, 0.3])
def test_node_perturbation_update_is_its_formula_term_by_term(decay):
    sigma, rate, alpha = 0.05, 0.1, 0.8
    run = Run(RunConfig(task="add", rule="node-perturbation", n=6, alpha=alpha, lr=0.01,
                        seeds=[0, 1], dtype="float64",
                        rule_args={"sigma": sigma, "loss_decay": rate, "decay": decay}))
    baseline = torch.zeros(2, dtype=F64)
    loss_prev = torch.zeros(2, dtype=F64)
    trace = torch.zeros_like(run.net.W)
    for _ in range(25):
        r_prev, W, W_out = run.r.clone(), run.net.W.clone(), run.net.W_out.clone()
        tel = run.advance(1, record_updates=True)
        xi = run.rule.xi
        p = torch.cat([r_prev, tel.x[0], torch.ones(2, 1, dtype=F64)], 1)
        h = torch.tanh(matvec(W, p))
        clean = (1 - alpha) * r_prev + alpha * h
        torch.testing.assert_close(tel.r[0], clean + xi, rtol=0, atol=1e-15)  # noise is in r
        assert float(xi.std()) == pytest.approx(sigma * alpha, rel=0.6)
        z = matvec(W_out, torch.cat([clean + xi, torch.ones(2, 1, dtype=F64)], 1))
        loss = loss_value("cross_entropy", z, tel.y[0])
        torch.testing.assert_close(tel.loss[0], loss, rtol=1e-14, atol=0)
        baseline = (1 - rate) * baseline + rate * loss_prev
        loss_prev = loss
        eligibility = (alpha * (1 - h * h) * xi / sigma**2)[:, :, None] * p[:, None, :]
        trace = (1 - decay) * trace + decay * eligibility
        expected = (loss - baseline)[:, None, None] * trace
        torch.testing.assert_close(tel.estimates["basal"][0], expected, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(tel.diagnostics["loss_baseline"][0], baseline, rtol=1e-14,
                                   atol=0)


def test_node_perturbation_averages_to_the_immediate_gradient():
    """Over many noise draws at one state, with the baseline at the clean loss, the mean
    update points along dL(t)/dW through r(t) (the one-step gradient)."""
    draws, sigma = 16384, 1e-3
    net, r = random_network(5, 2, 3, 1.0, draws, seed=4)
    rule = RULES["node-perturbation"](net, 3, {"sigma": sigma, "loss_decay": 0.0, "decay": 1.0},
                                      [0])
    x = torch.randn(2, dtype=F64, generator=torch.Generator().manual_seed(5)).expand(draws, -1)
    y = torch.randn(3, dtype=F64, generator=torch.Generator().manual_seed(6)).expand(draws, -1)
    clean, _ = step_context(net, r, x, y, 0)
    clean.loss_kind = "mse"
    L0 = clean.loss
    rule.loss, rule.loss_avg = L0.clone(), L0.clone()  # baseline = the clean loss
    zeta = torch.randn(draws, 5, dtype=F64, generator=torch.Generator().manual_seed(7))
    rule.noise = SimpleNamespace(next=lambda: zeta)  # one draw per copy of the network
    r_noisy = rule.perturb_state(clean.r)
    z = matvec(net.W_out, torch.cat([r_noisy, r.new_ones(draws, 1)], 1))
    ctx = StepContext(0, net, clean.p, clean.V, clean.gain, r, r_noisy, x, y, z,
                      error_signal("mse", z, y), frozenset({"basal"}), loss_kind="mse")
    mean = rule.step(ctx).updates["basal"].dense().mean(0)
    exact = (clean.credit * clean.gain)[0][:, None] * clean.p[0][None, :]
    cosine = float((mean * exact).sum() / (mean.norm() * exact.norm()))
    assert cosine > 0.97, cosine
    assert float(mean.norm() / exact.norm()) == pytest.approx(1.0, abs=0.15)


# ---- all four behind the rule interface ----------------------------------------------------

@pytest.mark.parametrize("name", NEW)
def test_new_rules_run_in_both_precisions_and_checkpoint_bit_for_bit(name):
    for dtype in ("float32", "float64"):
        run = Run(RunConfig(task="add", task_args={"t1": 2, "t2": 4}, rule=name, n=6,
                            seeds=[0, 1], alpha=0.7, lr=0.01, dtype=dtype,
                            rule_args={"T": 3} if "bptt" in name else {}))
        tel = run.advance(25)
        assert torch.isfinite(tel.loss).all() and torch.isfinite(run.net.W).all()
    copy = Run.from_state(run.state_dict())
    a, b = run.advance(20), copy.advance(20)
    assert torch.equal(a.loss, b.loss) and torch.equal(run.net.W, copy.net.W)


@pytest.mark.parametrize("name", NEW)
def test_new_rules_report_their_state_size_and_step_cost(name):
    cls = RULES[name]
    args = {"T": 10} if "bptt" in name else {}
    small, big = (cls.step_flops(n, 2, 2, args) for n in (8, 64))
    assert 0 < small < big
    numel = cls.state_numel(32, 2, 2, args)
    assert numel > 0
    run = Run(RunConfig(rule=name, n=32, seeds=[0], rule_args=args))
    held = sum(v.numel() for v in run.rule.state_dict().values() if isinstance(v, torch.Tensor))
    assert held == numel
