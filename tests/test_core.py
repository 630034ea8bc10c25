"""Simulator core: exact rules against autograd, the paper's local rules term by term,
phases, ensembles, checkpoints and bad settings. Float64 throughout, tight tolerances."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from simulator import ConfigError, Run, RunConfig
from simulator.losses import error_signal, loss_value
from simulator.network import Network
from simulator.rules.dni import apical_target, basal_signal

F64 = {"dtype": "float64"}


def small(rule: str, **kw) -> RunConfig:
    base = {"task": "add", "task_args": {"t1": 2, "t2": 4}, "rule": rule, "n": 6, "seeds": [0],
            **F64}
    base.update(kw)
    return RunConfig(**base)


def unroll(net: Network, r0: torch.Tensor, xs: torch.Tensor, W: torch.Tensor,
           kind: str, ys: torch.Tensor, detach_before: int | None = None):
    """Differentiable forward pass (seed 0) returning per-step losses and states."""
    n = net.n
    r = r0[0]
    losses, rs = [], []
    for t in range(xs.shape[0]):
        if detach_before is not None and t == detach_before:
            r = r.detach()
        p = torch.cat([r, xs[t, 0], torch.ones(1, dtype=r.dtype)])
        h = torch.tanh(W @ p)
        r = (1 - net.alpha) * r + net.alpha * h
        r.retain_grad()
        rs.append(r)
        z = net.W_out[0, :, :n] @ r + net.W_out[0, :, n]
        losses.append(loss_value(kind, z, ys[t, 0]))
    return losses, rs


def record(rule: str, steps: int, **kw):
    run = Run(small(rule, lr=0.0, **kw))
    r0 = run.r.clone()
    tel = run.advance(steps, record_updates=True)
    return run, r0, tel


@pytest.mark.parametrize("alpha", [1.0, 0.6])
def test_rtrl_equals_autograd_through_the_whole_sequence(alpha):
    run, r0, tel = record("rtrl", 12, alpha=alpha)
    W = run.net.W[0].clone().requires_grad_(True)
    losses, _ = unroll(run.net, r0, tel.x, W, run.task.loss, tel.y)
    for t in (0, 5, 11):
        (grad,) = torch.autograd.grad(losses[t], W, retain_graph=True)
        torch.testing.assert_close(tel.estimates["basal"][t, 0], grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_truncated_bptt_equals_autograd_over_its_window(alpha):
    T = 4
    run, r0, tel = record("bptt", 10, alpha=alpha, rule_args={"T": T})
    W = run.net.W[0].clone().requires_grad_(True)
    for t in (2, 7, 9):
        losses, _ = unroll(run.net, r0, tel.x[: t + 1], W, run.task.loss, tel.y,
                           detach_before=max(0, t - T + 1))
        (grad,) = torch.autograd.grad(losses[t], W)
        torch.testing.assert_close(tel.estimates["basal"][t, 0], grad, rtol=1e-10, atol=1e-12)


def test_bptt_with_long_window_equals_rtrl():
    _, _, a = record("bptt", 15, rule_args={"T": 50})
    _, _, b = record("rtrl", 15)
    torch.testing.assert_close(a.estimates["basal"], b.estimates["basal"], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("alpha", [1.0, 0.7])
def test_dni_basal_update_with_true_credit_is_the_true_gradient(alpha):
    """With the apical voltage equal to the true credit dL_total/dr(t), the basal rule
    U * gain (x) p, summed over the sequence, is the gradient of the summed loss."""
    run, r0, tel = record("dni", 10, alpha=alpha)
    W = run.net.W[0].clone().requires_grad_(True)
    losses, rs = unroll(run.net, r0, tel.x, W, run.task.loss, tel.y)
    total = torch.stack(losses).sum()
    (grad,) = torch.autograd.grad(total, [W], retain_graph=True)
    credit = torch.autograd.grad(total, rs)
    ours = torch.zeros_like(grad)
    for t, c in enumerate(credit):
        p = torch.cat([r0[0] if t == 0 else tel.r[t - 1, 0], tel.x[t, 0], torch.ones(1, dtype=W.dtype)])
        gain = alpha * (1 - torch.tanh(tel.V[t, 0]) ** 2)
        ours += torch.outer(basal_signal(c, gain), p)
    torch.testing.assert_close(ours, grad, rtol=1e-10, atol=1e-12)


def test_bootstrapped_apical_target_reproduces_true_credit():
    """Exact J and symmetric feedback: B e(t-1) + J(t)^T c(t) = c(t-1) (the TD identity)."""
    run, r0, tel = record("dni", 8, alpha=0.8)
    W = run.net.W[0].clone().requires_grad_(True)
    losses, rs = unroll(run.net, r0, tel.x, W, run.task.loss, tel.y)
    credit = torch.autograd.grad(torch.stack(losses).sum(), rs)
    net = run.net
    for t in range(1, 8):
        e_prev = error_signal(run.task.loss, tel.z[t - 1], tel.y[t - 1])
        q_prev = torch.bmm(e_prev.unsqueeze(1), net.readout).squeeze(1)  # W_out^T e
        gain = net.alpha * (1 - torch.tanh(tel.V[t]) ** 2)
        back = net.jacobian_t_times(credit[t].unsqueeze(0), gain)
        torch.testing.assert_close(apical_target(q_prev, back)[0], credit[t - 1],
                                   rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("order", ["sequential", "simultaneous"])
def test_dni_b_updates_equal_their_local_formulas_term_by_term(order):
    """sequential (the authors'): J~ first, the apical target with the updated J~, then A,
    then U(t) and the basal update with the updated A; simultaneous: all from before."""
    run = Run(small("dni-b", alpha=0.8, rule_args={"refresh": 3, "order": order}))
    run.advance(7)  # past a frozen-copy refresh, so A_frozen != A
    rule = run.rule
    A, A_fr, J, B = (rule.A.clone(), rule.A_frozen.clone(), rule.J.clone(), rule.B.clone())
    a_prev, q_prev, r_prev = rule.a_prev.clone(), rule.q_prev.clone(), run.r.clone()
    assert not torch.equal(A, A_fr)
    tel = run.advance(1, record_updates=True)
    x, y, V, r = tel.x[0], tel.y[0], tel.V[0], tel.r[0]
    gain = 0.8 * (1 - torch.tanh(V) ** 2)
    a_now = torch.cat([r, y, torch.ones(1, 1, dtype=r.dtype)], 1)
    # J~ delta rule: (J~ r(t-1) - r(t)) r(t-1)^T
    j_resid = torch.einsum("sij,sj->si", J, r_prev) - r
    torch.testing.assert_close(tel.estimates["jacobian"][0],
                               j_resid[:, :, None] * r_prev[:, None, :], rtol=1e-12, atol=1e-14)
    J_used = J - 0.01 * j_resid[:, :, None] * r_prev[:, None, :] if order == "sequential" else J
    # apical delta rule toward q(t-1) + J~^T tanh(A_frozen a~(t)), q(t-1) = B e(t-1)
    g = torch.tanh(torch.einsum("sij,sj->si", A_fr, a_now))
    target = q_prev + torch.einsum("sji,sj->si", J_used, g)
    resid = torch.einsum("sij,sj->si", A, a_prev) - target
    torch.testing.assert_close(tel.estimates["apical"][0], resid[:, :, None] * a_prev[:, None, :],
                               rtol=1e-12, atol=1e-14)
    A_used = A - 0.05 * resid[:, :, None] * a_prev[:, None, :] if order == "sequential" else A
    U = torch.einsum("sij,sj->si", A_used, a_now)
    torch.testing.assert_close(tel.U[0], U, rtol=1e-12, atol=1e-14)
    # basal: apical voltage x somatic gain x presynaptic rate
    p = torch.cat([r_prev, x, torch.ones(1, 1, dtype=r.dtype)], 1)
    expect = (U * gain)[:, :, None] * p[:, None, :]
    torch.testing.assert_close(tel.estimates["basal"][0], expect, rtol=1e-12, atol=1e-14)
    # and the weights moved by exactly -lr times those estimates
    torch.testing.assert_close(rule.A - A, -0.05 * tel.estimates["apical"][0], rtol=1e-12,
                               atol=1e-15)
    torch.testing.assert_close(rule.J - J, -0.01 * tel.estimates["jacobian"][0], rtol=1e-12,
                               atol=1e-15)
    # q(t) = B e(t) for the next step
    e = error_signal(run.task.loss, tel.z[0], y)
    torch.testing.assert_close(rule.q_prev, torch.einsum("sij,sj->si", B, e), rtol=1e-12,
                               atol=1e-15)
    assert tel.diagnostics["apical_loss"][0, 0] == pytest.approx(float(resid.square().mean()))


def test_dni_b_is_local_three_factor_rank_one():
    run = Run(small("dni-b"))
    run.advance(3)
    from simulator.rules.base import Rank1

    ctx_out = run.rule.step
    seen = {}

    def spy(ctx):
        out = ctx_out(ctx)
        seen.update(out.updates)
        return out

    run.rule.step = spy  # observe the rule's own output objects
    run.advance(1)
    assert all(isinstance(u, Rank1) for u in seen.values())
    assert set(seen) == {"basal", "apical", "jacobian"}


def test_a_frozen_population_does_not_change_bit_for_bit():
    run = Run(small("dni-b", phases="apical+jacobian:3,basal+readout:2"))
    for t in range(12):
        before = {k: v.clone() for k, v in run.populations().items()}
        run.advance(1)
        plastic = run.schedule.at(t).plastic
        for name, w in run.populations().items():
            changed = not torch.equal(before[name], w)
            if name not in plastic:
                assert not changed, (t, name)
            elif t > 0:  # the apical rule needs one step of history before its first update
                assert changed, (t, name)


def test_ensemble_seed_equals_that_seed_alone():
    together = Run(small("dni-b", seeds=[0, 3, 5]))
    alone = Run(small("dni-b", seeds=[3]))
    a = together.advance(300)
    b = alone.advance(300)
    torch.testing.assert_close(a.loss[:, 1], b.loss[:, 0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(together.net.W[1], alone.net.W[0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(together.evaluate(200)[1:2], alone.evaluate(200))


def test_checkpoint_continues_bit_for_bit_and_branches_to_another_rule():
    straight = Run(small("dni-b", seeds=[0, 1]))
    straight.advance(50)
    state = straight.state_dict()
    straight.advance(70)
    resumed = Run.from_state(state)
    resumed.advance(70)
    assert torch.equal(straight.net.W, resumed.net.W)
    assert torch.equal(straight.r, resumed.r)
    branch = Run.from_state(state, small("rtrl", seeds=[0, 1]))
    assert branch.t == 50 and torch.equal(branch.net.W, state["W"])
    tel = branch.advance(5)
    assert tel.start == 50 and torch.isfinite(tel.loss).all()


def test_chunking_does_not_change_results():
    a, b = Run(small("bptt")), Run(small("bptt"))
    a.advance(100)
    for _ in range(4):
        b.advance(25)
    assert torch.equal(a.net.W, b.net.W)


def test_evaluate_freezes_learning_and_leaves_the_run_untouched():
    run = Run(small("dni-b"))
    run.advance(20)
    before = {k: v.clone() for k, v in run.populations().items()}
    r = run.r.clone()
    first = run.evaluate(300)
    assert torch.equal(first, run.evaluate(300))  # the same held-out stream each time
    assert all(torch.equal(before[k], v) for k, v in run.populations().items())
    assert torch.equal(r, run.r)


def test_evaluate_matches_the_training_forward_pass():
    """Held-out loss with lr = 0 equals the train loss on the same stream."""
    run = Run(small("output-only", lr=0.0))
    r0 = run.r.clone()
    x, y = run.task.stream(run.seeds, "test").next(40)
    net = run.net
    r, losses = r0, []
    for t in range(40):
        p = torch.cat([r, x[t], torch.ones(1, 1, dtype=r.dtype)], 1)
        r = torch.tanh(torch.einsum("sij,sj->si", net.W, p))
        z = torch.einsum("sij,sj->si", net.W_out, torch.cat([r, torch.ones(1, 1, dtype=r.dtype)], 1))
        losses.append(loss_value(run.task.loss, z, y[t]))
    torch.testing.assert_close(run.evaluate(40), torch.stack(losses).mean(0))


def test_mid_run_learning_rate_and_phase_changes():
    run = Run(small("dni-b"))
    run.advance(5)
    run.set_learning_rates(lr=0.0, apical=0.0, jacobian=0.0)
    before = {k: v.clone() for k, v in run.populations().items()}
    run.advance(5)
    assert all(torch.equal(before[k], v) for k, v in run.populations().items())
    run.set_learning_rates(lr=1e-3)
    run.set_phases("readout:10")
    run.advance(3)
    assert torch.equal(before["basal"], run.net.W)
    assert not torch.equal(before["readout"], run.net.W_out)
    with pytest.raises(ConfigError, match="lr"):
        run.set_learning_rates(lr=-1.0)


def test_divergence_stops_with_a_status_instead_of_crashing():
    run = Run(RunConfig(task="mimic", rule="rtrl", n=8, lr=10.0, seeds=[0], dtype="float64"))
    tel = None
    for _ in range(20):
        tel = run.advance(50)
        if tel.diverged_at is not None:
            break
    assert tel is not None and tel.diverged_at is not None
    assert run.status.startswith(f"diverged at step {tel.diverged_at}")
    # a non-finite loss, or (usually first) weights past the engine's bound
    assert (not torch.isfinite(tel.loss[tel.diverged_at - tel.start]).all()
            or "weights reached" in run.status), run.status
    assert torch.isfinite(tel.loss[: tel.diverged_at - tel.start]).all()


@pytest.mark.parametrize("changes, field", [
    ({"rule": "nope"}, "rule"), ({"task": "nope"}, "task"), ({"lr": -0.1}, "lr"),
    ({"n": 0}, "n"), ({"n": 4097}, "n"), ({"task_args": {"t1": 9, "t2": 9}}, "task_args.t1"),
    ({"phases": "basal:"}, "phases"), ({"phases": "dendrite:5"}, "phases"),
    ({"rule_args": {"lr_apical": -1}}, "rule_args.lr_apical"), ({"seeds": "3-1"}, "seeds"),
    ({"alpha": 0}, "alpha"), ({"bogus": 1}, "bogus"), ({"rule_args": {"T": 3}}, "rule_args.T"),
])
def test_bad_settings_name_the_field(changes, field):
    with pytest.raises(ConfigError) as err:
        RunConfig.from_dict({"rule": "dni-b", **changes})
    assert err.value.field == field
    assert str(err.value).startswith(field + ":")


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "simulator", *args], capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("args, field", [
    (["--rule", "hebb"], "rule"), (["--n", "5000"], "n"), (["--lr", "-1"], "lr"),
    (["--task-arg", "t1=9", "--task-arg", "t2=4"], "task_args.t1"),
    (["--phases", "basal+readout"], "phases"), (["--rule-arg", "oops"], "rule_args"),
])
def test_cli_bad_settings_exit_2_with_one_line(args, field):
    out = cli("run", *args)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {field}:")


def test_cli_run_prints_a_json_summary_and_writes_history(tmp_path):
    out = cli("run", "--task", "add", "--task-arg", "t1=2", "--task-arg", "t2=4", "--rule",
              "dni-b", "--steps", "400", "--test-steps", "100", "--seeds", "0-2", "--n", "8",
              "--json", "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    for key in ("rule", "task", "steps", "seeds", "final_test_loss", "train_loss_last",
                "steps_per_second"):
        assert key in summary
    assert summary["seeds"] == [0, 1, 2] and len(summary["final_test_loss"]) == 3
    assert "step/s" in out.stderr  # the progress bar
    rows = (tmp_path / "history.csv").read_text().splitlines()
    assert rows[0].startswith("step,seed,train_loss") and len(rows) == 1 + 400 * 3
    assert json.loads((tmp_path / "config.json").read_text())["rule"] == "dni-b"
    # train_loss_last is the mean of the last 10% of steps, per seed
    last = [[float(c) for c in row.split(",")] for row in rows[1 + 360 * 3:]]
    for i in range(3):
        vals = [row[2] for row in last if row[1] == i]
        assert summary["train_loss_last"][i] == pytest.approx(sum(vals) / len(vals), rel=1e-6)


def test_cli_lists_rules_and_tasks():
    rules = cli("rules").stdout
    for name in ("bptt", "rtrl", "dni", "dni-b", "output-only", "feedback=", "lr_apical=0.05"):
        assert name in rules
    assert "add" in cli("tasks").stdout


def test_add_reference_levels_match_direct_computation():
    run = Run(RunConfig(task="add", rule="output-only", seeds=[0], **F64))
    _, y = run.task.stream([0], "test").next(200_000)
    p = y[:, 0, 0]
    levels = run.task.reference_levels()
    # the constant predictor 0.625 scores "nothing learned"; the true p scores the optimum
    q = torch.full_like(p, 0.625)
    ce = -(p * q.log() + (1 - p) * (1 - q).log()).mean()
    assert float(ce) == pytest.approx(levels["nothing learned"], abs=3e-3)
    ent = -(p * p.clamp_min(1e-12).log() + (1 - p) * (1 - p).clamp_min(1e-12).log()).mean()
    assert float(ent) == pytest.approx(levels["both (optimum)"], abs=3e-3)
    assert list(levels.values()) == pytest.approx([0.6616, 0.6277, 0.5192, 0.4544], abs=1e-4)


def test_add_task_lags_and_holding():
    task = RunConfig(task="add", task_args={"t1": 2, "t2": 4, "tau_task": 3}).validated()
    from simulator.tasks import make_task

    t = make_task(task.task, task.task_args)
    x, y = t.stream([0], "train").next(300)
    xs = x[:, 0, 0]
    samples = xs[::3]
    assert torch.equal(xs, samples.repeat_interleave(3))  # held for tau steps
    idx = torch.arange(4, len(samples))
    assert len(idx) == 96
    expected = 0.5 + 0.5 * samples[idx - 2] - 0.25 * samples[idx - 4]
    assert torch.equal(y[::3, 0, 0][4:], expected)


def test_threads_are_pinned_to_one_unless_asked():
    """conftest pins one thread already: start from three so that the pin is observable."""
    try:
        torch.set_num_threads(3)
        Run(small("output-only"))
        assert torch.get_num_threads() == 1
        Run(small("output-only"), threads=2)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)


def test_concat_of_two_advances_equals_one_advance_in_every_field():
    """simulator.telemetry.concat covers every Telemetry field: advance(a) + advance(b)
    joined equals advance(a + b) on a twin run, field by field (iterating the dataclass, so
    a new field is checked too). Every field is populated here (alignment, norm_ratio,
    comparison rules, updates, traces), except diverged_at."""
    import dataclasses

    from simulator.engine import Telemetry
    from simulator.telemetry import concat

    cfg = small("dni-b", seeds=[0, 1], align="rtrl", compare=["rflo"])
    whole_run, split_run = Run(cfg), Run(cfg)
    whole = whole_run.advance(7, record_updates=True)
    joined = concat(split_run.advance(4, record_updates=True),
                    split_run.advance(3, record_updates=True))
    assert joined.steps == 7 and joined.start == 0 and joined.phase == whole.phase
    for f in dataclasses.fields(Telemetry):
        want, got = getattr(whole, f.name), getattr(joined, f.name)
        if f.name == "diverged_at":
            assert want is None and got is None
            continue
        assert want is not None and (not isinstance(want, dict) or want), f.name
        if isinstance(want, torch.Tensor):
            torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True, msg=f.name)
        elif isinstance(want, dict):
            assert set(got) == set(want), f.name
            for key, value in want.items():  # weight_change: a sum of two differences
                torch.testing.assert_close(got[key], value, rtol=1e-12, atol=1e-14, equal_nan=True,
                                           msg=f"{f.name}.{key}")
        else:
            assert got == want, f.name
    traced = concat(split_run.advance(2, record="scalars"), split_run.advance(2))
    assert traced.V is None and traced.loss.shape == (4, 2) and traced.alignment.shape == (4, 2)


def test_alignment_is_a_config_setting():
    run = Run(small("dni", align="auto"))
    tel = run.advance(20)
    assert tel.alignment is not None and tel.alignment.shape == (20, 1)
    assert run.config.align == "auto"
    assert Run(small("dni")).advance(5).alignment is None
    with pytest.raises(ConfigError) as err:
        RunConfig.from_dict({"align": "bptt:0"})
    assert err.value.field == "align"


@pytest.mark.slow
def test_compiled_step_matches_the_eager_step():
    """Run(compile=True) captures the same step: float64 results agree to rounding, across
    phase switches (one captured graph per phase) and with the first-step branch."""
    cfg = small("dni-b", seeds=[0, 1], phases="apical+jacobian:7,basal+readout:5")
    eager, compiled = Run(cfg), Run(cfg, compile=True)
    a, b = eager.advance(120), compiled.advance(120)
    torch.testing.assert_close(b.loss, a.loss, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(b.U, a.U, rtol=1e-12, atol=1e-13)
    for name, w in eager.populations().items():
        torch.testing.assert_close(compiled.populations()[name], w, rtol=1e-12, atol=1e-13)
    # recording updates or alignment needs the step's objects: those calls run eagerly
    assert compiled.advance(3, record_updates=True).updates["basal"].shape[0] == 3


def test_compile_is_refused_for_rules_with_python_counters():
    with pytest.raises(ConfigError) as err:
        Run(small("bptt"), compile=True)
    assert err.value.field == "compile" and "dni-b" in err.value.message
