"""The JMLR family (uoro, kf-rtrl, r-kf-rtrl, rflo, kernl) and gradient alignment.

Float64, tight tolerances. The stochastic rules are checked for unbiasedness against RTRL
by averaging many independent random-sign draws (one "seed" of the batch per draw, all
driven by the same network and inputs).
"""

from __future__ import annotations

import math

import pytest
import torch

from simulator import ConfigError, Run, RunConfig
from simulator.alignment import AUTO_WINDOW, AlignmentMeans, compare, pairwise_alignment, parse_align
from simulator.losses import error_signal
from simulator.network import Network, matvec
from simulator.rules import RULES, Dense, Rank1, make_rule
from simulator.rules.base import StepContext
from simulator.rules.dni import DNI
from simulator.rules.family import NoiseStream
from simulator.rules.kernl import KeRNL
from simulator.rules.rflo import RFLO
from simulator.rules.rtrl import RTRL
from simulator.seeding import seed_generator

torch.set_num_threads(1)  # tiny ops spin-wait with more threads (conftest sets it too)

F64 = torch.float64
FAMILY = ("uoro", "kf-rtrl", "r-kf-rtrl", "rflo", "kernl")


def small(rule: str, **kw) -> RunConfig:
    base = {"task": "add", "task_args": {"t1": 2, "t2": 4}, "rule": rule, "n": 6, "seeds": [0],
            "dtype": "float64"}
    base.update(kw)
    return RunConfig(**base)


# ---- a hand-driven network (the engine's forward pass, without the engine) ----------------

def step_context(net: Network, r: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                 t: int) -> tuple[StepContext, torch.Tensor]:
    """One forward step exactly as the engine does it; returns (context, r(t))."""
    ones = r.new_ones(r.shape[0], 1)
    p = torch.cat([r, x, ones], 1)
    V = matvec(net.W, p)
    h = torch.tanh(V)
    r_new = h if net.alpha == 1.0 else torch.lerp(r, h, net.alpha)
    gain = (1 - h * h) * net.alpha
    z = matvec(net.W_out, torch.cat([r_new, ones], 1))
    e = error_signal("mse", z, y)
    return StepContext(t, net, p, V, gain, r, r_new, x, y, z, e, frozenset({"basal"})), r_new


def random_network(n: int, n_in: int, n_out: int, alpha: float, copies: int,
                   seed: int = 1) -> tuple[Network, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(n, n + n_in + 1, generator=g, dtype=F64) / n**0.5
    W_out = torch.randn(n_out, n + 1, generator=g, dtype=F64) / n**0.5
    r0 = torch.tanh(torch.randn(n, generator=g, dtype=F64))
    net = Network(W.expand(copies, -1, -1).clone(), W_out.expand(copies, -1, -1).clone(), alpha)
    return net, r0.expand(copies, -1).clone()


def drive(rules: list, net: Network, r: torch.Tensor, steps: int, seed: int = 2,
          hook=None) -> torch.Tensor:
    """Run ``steps`` steps of random input through ``net`` (weights fixed), stepping each
    rule; hook(t, ctx, outputs) sees every step. Returns the final state."""
    g = torch.Generator().manual_seed(seed)
    S, n_in, n_out = net.seeds, net.n_in, net.n_out
    for t in range(steps):
        x = torch.randn(n_in, generator=g, dtype=F64).expand(S, -1)
        y = torch.randn(n_out, generator=g, dtype=F64).expand(S, -1)
        ctx, r = step_context(net, r, x, y, t)
        outs = [rule.step(ctx) for rule in rules]
        if hook is not None:
            hook(t, ctx, outs)
    return r


# ---- unbiasedness of the stochastic rules --------------------------------------------------

DRAWS = 16384


@pytest.mark.parametrize("name,signs", [("uoro", "rademacher"), ("uoro", "gaussian"),
                                        ("kf-rtrl", "rademacher"), ("kf-rtrl", "gaussian"),
                                        ("r-kf-rtrl", "rademacher")])
def test_stochastic_influence_is_unbiased_and_error_shrinks_as_one_over_sqrt_draws(name, signs):
    n, n_in, n_out, alpha, steps = 5, 2, 2, 0.8, 6
    many, r_many = random_network(n, n_in, n_out, alpha, DRAWS)
    one, r_one = random_network(n, n_in, n_out, alpha, 1)
    rule = RULES[name](many, n_out, {"signs": signs, "start": "zeros"},
                       list(range(DRAWS)))  # one draw per seed
    exact = RTRL(one, n_out, {}, [0])
    drive([rule], many, r_many, steps)
    drive([exact], one, r_one, steps)
    M = exact.M[0].flatten()
    est = rule.influence().flatten(1)  # (draws, n * n * m)

    def rms_error(group: int) -> float:
        """RMS over disjoint groups of the relative error of the group mean."""
        means = est.view(DRAWS // group, group, -1).mean(1)
        return float((means - M).norm(dim=1).square().mean().sqrt() / M.norm())

    # 16x more draws: the error of an unbiased estimate shrinks 4x (a bias would stall it)
    ratio = rms_error(64) / rms_error(1024)
    assert 3.0 < ratio < 5.3, ratio
    # all draws: the mean sits within the noise predicted from the per-draw spread
    spread = float((est - est.mean(0)).norm(dim=1).square().mean().sqrt())
    predicted = spread / math.sqrt(DRAWS) / float(M.norm())
    error = rms_error(DRAWS)
    assert error < 3.5 * predicted, (error, predicted)
    assert error < 0.05


@pytest.mark.parametrize("name", ["uoro", "kf-rtrl", "r-kf-rtrl"])
def test_stochastic_gradient_is_credit_times_the_influence_estimate(name):
    net, r = random_network(5, 2, 2, 0.7, 3)
    rule = RULES[name](net, 2, {"signs": "rademacher", "start": "normal"}, [0, 1, 2])

    def check(t, ctx, outs):
        expected = torch.einsum("sk,skij->sij", ctx.credit, rule.influence())
        torch.testing.assert_close(outs[0].updates["basal"].dense(), expected, rtol=1e-12,
                                   atol=1e-14)

    drive([rule], net, r, 8, hook=check)


def test_signs_have_the_chosen_distribution_and_depend_only_on_the_seed():
    like = torch.zeros(1, dtype=F64)

    def sample(kind: str, seeds: list[int], purpose: str = "uoro") -> torch.Tensor:
        stream = NoiseStream(purpose, seeds, 50, kind, like)
        return torch.stack([stream.next() for _ in range(400)])  # (400, S, 50)

    signs = sample("rademacher", [5])
    assert set(signs.unique().tolist()) == {-1.0, 1.0} and abs(float(signs.mean())) < 0.03
    # zero mean, unit variance, and the shape of each law: kurtosis 3 (Gaussian), 9/5
    # (uniform on [-sqrt 3, sqrt 3]); 4.55 % of Gaussian draws beyond 2
    for kind, kurtosis in (("gaussian", 3.0), ("uniform", 1.8)):
        x = sample(kind, [3])
        assert abs(float(x.mean())) < 0.03 and abs(float(x.var()) - 1.0) < 0.03, kind
        assert abs(float((x**4).mean() / x.var() ** 2) - kurtosis) < 0.15, kind
    gauss = sample("gaussian", [3])
    assert abs(float((gauss.abs() > 2).double().mean()) - 0.0455) < 0.006
    assert float(sample("uniform", [3]).abs().max()) <= math.sqrt(3) + 1e-12
    # seeding: the same (purpose, seed) repeats exactly; another seed or purpose does not
    assert torch.equal(sample("gaussian", [3]), gauss)
    assert not torch.equal(sample("gaussian", [4]), gauss)
    assert not torch.equal(sample("gaussian", [3], purpose="kernl"), gauss)
    pair = sample("gaussian", [3, 4])
    assert torch.equal(pair[:, 0], gauss[:, 0])
    assert abs(float(torch.corrcoef(pair.reshape(-1, 2).T)[0, 1])) < 0.02  # independent seeds
    for width, steps in ((7, 1500), (3000, 25)):  # across block boundaries, small and wide
        alone = NoiseStream("uoro", [9], width, "gaussian", like)
        together = NoiseStream("uoro", [5, 9, 11], width, "gaussian", like)
        for _ in range(steps):
            assert torch.equal(alone.next()[0], together.next()[1])


# ---- RFLO ------------------------------------------------------------------------------------

def test_rflo_with_alpha_1_and_symmetric_feedback_is_one_step_truncated_bptt():
    runs = [Run(small(rule, rule_args=args, alpha=1.0, seeds=[0, 1], lr=0.01))
            for rule, args in (("rflo", {"feedback": "symmetric"}), ("bptt", {"T": 1}))]
    tels = [run.advance(300, record_updates=True) for run in runs]
    torch.testing.assert_close(tels[0].estimates["basal"], tels[1].estimates["basal"],
                               rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(runs[0].net.W, runs[1].net.W, rtol=1e-12, atol=1e-14)
    assert float(tels[0].estimates["basal"].abs().max()) > 1e-3  # not trivially zero


@pytest.mark.parametrize("feedback", ["symmetric", "random"])
def test_rflo_trace_follows_its_recursion_with_alpha_below_1(feedback):
    alpha = 0.6
    net, r = random_network(6, 2, 3, alpha, 2)
    seeds = [4, 7]
    rule = RFLO(net, 3, {"feedback": feedback}, seeds)
    if feedback == "random":
        B = torch.stack([torch.randn(6, 3, generator=seed_generator("feedback", s), dtype=F64)
                         / 3**0.5 for s in seeds])
        assert torch.equal(rule.B, B)
        assert torch.equal(rule.B, DNI(net, 3, _dni_args(feedback="random"), seeds).B)
    trace = torch.zeros_like(net.W)

    def check(t, ctx, outs):
        nonlocal trace
        trace = (1 - alpha) * trace + ctx.gain.unsqueeze(2) * ctx.p.unsqueeze(1)
        torch.testing.assert_close(rule.trace, trace, rtol=1e-13, atol=1e-15)
        q = ctx.credit if feedback == "symmetric" else matvec(rule.B, ctx.e)
        torch.testing.assert_close(outs[0].updates["basal"].dense(), q.unsqueeze(2) * trace,
                                   rtol=1e-13, atol=1e-15)
        torch.testing.assert_close(outs[0].signal, q, rtol=1e-13, atol=1e-15)

    drive([rule], net, r, 25, hook=check)


def _dni_args(**changes) -> dict:
    return {**{s.name: s.default for s in DNI.settings}, **changes}


def test_rflo_is_rtrl_when_the_only_memory_is_the_leak():
    """With W_rec = 0 the Jacobian is exactly (1 - alpha) I: RFLO's trace is RTRL's
    influence (its diagonal) and the two updates agree."""
    net, r = random_network(5, 2, 2, 0.4, 2)
    net.W[:, :, :5] = 0.0
    rflo, rtrl = RFLO(net, 2, {"feedback": "symmetric"}, [0, 1]), RTRL(net, 2, {}, [0, 1])

    def check(t, ctx, outs):
        torch.testing.assert_close(outs[0].updates["basal"].dense(),
                                   outs[1].updates["basal"].dense(), rtol=1e-12, atol=1e-15)

    drive([rflo, rtrl], net, r, 20, hook=check)


# ---- KeRNL -------------------------------------------------------------------------------------

def test_kernl_trace_and_kernel_updates_match_their_formulas():
    """Hand-driven (nothing applied inside the step): the noise drawn at step t - 1 enters the
    perturbed copy before step t, kernels are max(0, 1 - gamma), gamma is not clamped."""
    alpha, sigma, lr = 0.7, 1e-3, 0.05
    net, r = random_network(6, 2, 3, alpha, 3)
    seeds = [0, 1, 2]
    rule = KeRNL(net, 3, {"feedback": "symmetric", "sigma": sigma, "lr_kernel": lr,
                          "gamma0": alpha, "order": "sequential", "perturb": "before"}, seeds)
    n = net.n
    noise = NoiseStream("kernl", seeds, n, "gaussian", net.W)  # an independent replica
    assert torch.equal(rule.beta, torch.eye(n, dtype=F64).expand(3, n, n))
    assert torch.equal(rule.gamma, torch.full((3, n), alpha, dtype=F64))
    state = {"r_pert": None, "zeta": noise.next(), "Omega": torch.zeros(3, n, dtype=F64),
             "Gamma": torch.zeros(3, n, dtype=F64), "e": torch.zeros_like(net.W)}

    def snapshot():
        state["beta"], state["gamma"] = rule.beta.clone(), rule.gamma.clone()

    def check(t, ctx, outs):
        beta, gamma = state["beta"], state["gamma"]
        kappa = (1 - gamma).clamp(min=0)
        r_prev = ctx.r_prev if state["r_pert"] is None else state["r_pert"]
        s = r_prev + sigma * state["zeta"]  # the previous step's noise, before the step
        pre = torch.cat([s, ctx.x, torch.ones(3, 1, dtype=F64)], 1)
        r_pert = (1 - alpha) * s + alpha * torch.tanh(torch.einsum("sij,sj->si", net.W, pre))
        zeta = noise.next()
        assert torch.equal(rule.zeta, zeta)
        Gamma = kappa * state["Gamma"] - state["Omega"]
        Omega = kappa * state["Omega"] + zeta
        eps = torch.einsum("ski,si->sk", beta, Omega) - (r_pert - ctx.r) / sigma
        d_beta = eps[:, :, None] * Omega[:, None, :]
        d_gamma = torch.einsum("sk,ski->si", eps, beta) * Gamma
        e = kappa[:, :, None] * state["e"] + ctx.gain[:, :, None] * ctx.p[:, None, :]
        credit = torch.einsum("sk,ski->si", ctx.credit, beta)
        out = outs[0]
        tight = {"rtol": 1e-10, "atol": 1e-12}
        torch.testing.assert_close(rule.r_pert, r_pert, **tight)
        torch.testing.assert_close(rule.Omega, Omega, **tight)
        torch.testing.assert_close(rule.Gamma, Gamma, **tight)
        torch.testing.assert_close(rule.e, e, **tight)
        torch.testing.assert_close(out.updates["jacobian"].dense()[:, :, :n], d_beta, **tight)
        torch.testing.assert_close(out.updates["jacobian"].dense()[:, :, n], d_gamma, **tight)
        torch.testing.assert_close(out.updates["basal"].dense(), credit[:, :, None] * e, **tight)
        torch.testing.assert_close(out.signal, credit, **tight)
        torch.testing.assert_close(out.diagnostics["perturbation_loss"], eps.square().mean(1),
                                   **tight)
        state.update(r_pert=r_pert, Omega=Omega, Gamma=Gamma, e=e, zeta=zeta)
        # the engine's step: K <- K - lr G (gamma unclamped, as the authors')
        rule.K.add_(out.updates["jacobian"].dense(), alpha=-lr)
        rule.after_update(t)
        torch.testing.assert_close(rule.gamma, gamma - lr * d_gamma, **tight)
        snapshot()

    snapshot()
    drive([rule], net, r, 30, hook=check)
    assert not torch.equal(rule.beta, torch.eye(n, dtype=F64).expand(3, n, n))  # it learned


def test_kernl_decay_gradient_is_the_derivative_of_the_prediction_loss():
    """Gamma = dOmega/dgamma: the reported d_gamma equals a finite difference of
    1/2 ||beta Omega(gamma) - deviation||^2, with gamma held fixed (lr_kernel = 0)."""
    alpha, sigma, steps = 0.5, 1e-3, 12
    net, r = random_network(4, 2, 2, alpha, 1)
    rule = KeRNL(net, 2, {"feedback": "symmetric", "sigma": sigma, "lr_kernel": 0.0,
                          "gamma0": 0.8, "order": "sequential", "perturb": "after"}, [3])
    with torch.no_grad():  # a non-trivial kernel model to differentiate through
        rule.K[:, :, :4] += 0.3 * torch.randn(1, 4, 4, generator=torch.Generator().manual_seed(0),
                                              dtype=F64)
        rule.K[:, :, 4] = torch.tensor([0.2, 0.5, 0.7, 0.9], dtype=F64)
    zetas, last = [], {}

    def record(t, ctx, outs):
        zetas.append(rule.zeta.clone())
        last.update(deviation=(rule.r_pert - ctx.r) / sigma, out=outs[0])

    drive([rule], net, r, steps, hook=record)
    beta, gamma = rule.beta[0], rule.gamma[0]

    def loss(g: torch.Tensor) -> float:
        Omega = torch.zeros(4, dtype=F64)
        for zeta in zetas:
            Omega = (1 - g) * Omega + zeta[0]
        return 0.5 * float((beta @ Omega - last["deviation"][0]).square().sum())

    h = 1e-6
    numeric = torch.tensor([(loss(gamma + h * torch.eye(4, dtype=F64)[i])
                             - loss(gamma - h * torch.eye(4, dtype=F64)[i])) / (2 * h)
                            for i in range(4)], dtype=F64)
    reported = last["out"].updates["jacobian"].dense()[0, :, 4]
    torch.testing.assert_close(reported, numeric, rtol=1e-6, atol=1e-8)


def test_kernl_with_frozen_kernels_is_rflo():
    """beta = I and gamma = alpha at the start: with lr_kernel = 0 KeRNL stays RFLO."""
    cfg = {"alpha": 0.6, "seeds": [0, 1], "lr": 0.01}
    a = Run(small("kernl", rule_args={"lr_kernel": 0.0, "gamma0": 0.6}, **cfg))
    b = Run(small("rflo", rule_args={"feedback": "symmetric"}, **cfg))
    ta, tb = a.advance(200, record_updates=True), b.advance(200, record_updates=True)
    torch.testing.assert_close(ta.estimates["basal"], tb.estimates["basal"], rtol=1e-11,
                               atol=1e-14)


def test_kernl_learns_the_true_kernel_where_one_exists():
    """With W_rec = 0 a perturbation decays exactly as (1 - alpha)^lag on its own unit:
    beta = I, gamma = alpha is the exact model. From a wrong start, learning finds it
    (with the noise added after the step, perturb=after: the authors' timing is biased)."""
    n, alpha = 8, 0.5
    run = Run(small("kernl", alpha=alpha, lr=0.0, n=n,
                    rule_args={"lr_kernel": 0.01, "perturb": "after"}))
    run.net.W[:, :, :n] = 0.0
    g = torch.Generator().manual_seed(0)
    run.rule.K[:, :, :n] = 0.5 * torch.eye(n, dtype=F64) + 0.1 * torch.randn(n, n, generator=g,
                                                                               dtype=F64)
    run.rule.K[:, :, n] = 0.2
    loss = run.advance(2000, record="scalars").diagnostics["perturbation_loss"][:, 0]
    torch.testing.assert_close(run.rule.beta[0], torch.eye(n, dtype=F64), rtol=0, atol=1e-6)
    torch.testing.assert_close(run.rule.gamma[0], torch.full((n,), alpha, dtype=F64), rtol=0,
                               atol=1e-6)
    assert float(loss[-100:].max()) < 1e-10 < float(loss[:100].mean())
    assert "jacobian" in run.populations() and run.lr["jacobian"] == 0.01


# ---- the family behind the rule interface --------------------------------------------------

def test_all_rules_are_registered():
    assert set(RULES) == {"bptt", "rtrl", "dni", "dni-b", "output-only", *FAMILY, "f-bptt",
                          "e-bptt", "snap-1", "node-perturbation"}


@pytest.mark.parametrize("name", FAMILY)
def test_family_rules_run_in_float32_and_float64_with_finite_numbers(name):
    for dtype in ("float32", "float64"):
        for alpha in (1.0, 0.5):
            run = Run(small(name, dtype=dtype, alpha=alpha, seeds=[0, 1]))
            tel = run.advance(60)
            assert run.net.W.dtype == (torch.float32 if dtype == "float32" else F64)
            assert torch.isfinite(tel.loss).all() and torch.isfinite(run.net.W).all()
            assert tel.U is not None and torch.isfinite(tel.U).all()
            for values in tel.diagnostics.values():
                assert torch.isfinite(values).all()


@pytest.mark.parametrize("name", FAMILY)
def test_a_seed_alone_equals_that_seed_in_an_ensemble(name):
    alone = Run(small(name, seeds=[3], lr=0.01)).advance(150, record="scalars")
    both = Run(small(name, seeds=[1, 3], lr=0.01)).advance(150, record="scalars")
    torch.testing.assert_close(alone.loss[:, 0], both.loss[:, 1], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", FAMILY)
def test_checkpoint_continues_bit_for_bit(name):
    run = Run(small(name, seeds=[0, 1], lr=0.01, alpha=0.7))
    run.advance(130)
    copy = Run.from_state(run.state_dict())
    a, b = run.advance(70), copy.advance(70)
    assert torch.equal(a.loss, b.loss) and torch.equal(run.net.W, copy.net.W)


def test_settings_that_shape_the_state_cannot_change_mid_run():
    for name, key, value in (("uoro", "signs", "gaussian"), ("rflo", "feedback", "random"),
                             ("kernl", "sigma", 0.1)):
        run = Run(small(name))
        with pytest.raises(ConfigError):
            run.rule.set_args(**{key: value})
    run = Run(small("kernl"))
    run.rule.set_args(lr_kernel=0.5)
    with pytest.raises(ConfigError):
        make_rule("uoro", run.net, 2, {"signs": "cauchy"}, [0])


# ---- alignment -------------------------------------------------------------------------------

def test_rtrl_against_itself_is_1():
    # from a non-zero state: at r(-1) = 0 the first W_rec gradient is zero (alignment 0)
    tel = Run(small("rtrl", seeds=[0, 1], lr=0.01, init_state="tanh-normal"),
              align="rtrl").advance(200)
    torch.testing.assert_close(tel.alignment, torch.ones_like(tel.alignment), rtol=0, atol=1e-12)
    torch.testing.assert_close(tel.norm_ratio, torch.ones_like(tel.norm_ratio), rtol=0,
                               atol=1e-10)


def test_output_only_against_anything_is_0():
    for spec in ("rtrl", "bptt:5"):
        tel = Run(small("output-only", seeds=[0, 1]), align=spec).advance(50)
        assert torch.equal(tel.alignment, torch.zeros_like(tel.alignment))
        assert tel.norm_ratio.isnan().all()


def test_bptt_shadow_and_rtrl_agree_within_the_window_and_truncation_shows():
    steps = 30
    full = Run(small("rtrl", lr=0.0, init_state="tanh-normal"), align="bptt:64").advance(steps)
    torch.testing.assert_close(full.alignment, torch.ones_like(full.alignment), rtol=0, atol=1e-10)
    short = Run(small("bptt", lr=0.0, rule_args={"T": 1}), align="rtrl").advance(steps)
    assert float(short.alignment[5:].max()) < 0.9999  # the measure sees the truncation
    assert float(short.alignment.min()) > -1.0


def test_shadow_leaves_the_run_bit_identical():
    for name in ("dni-b", "kernl", "uoro", "rflo"):
        for spec in ("rtrl", "bptt:7"):
            cfg = RunConfig(task="add", rule=name, n=8, seeds=[0, 1], alpha=0.8)  # float32
            # the same step code (a shadow's per-step hook takes the generic step, not the
            # DNI family's fused loop, which rounds differently in float32)
            a, b = Run(cfg, align=spec), Run(cfg, fused=False)
            ta, tb = a.advance(300), b.advance(300)
            assert ta.alignment is not None and tb.alignment is None
            assert torch.equal(ta.loss, tb.loss) and torch.equal(ta.U, tb.U)
            for pop, weights in a.populations().items():
                assert torch.equal(weights, b.populations()[pop]), (name, pop)
            assert torch.equal(a.evaluate(100), b.evaluate(100))


def test_align_specs():
    assert parse_align("auto", 64) == ("rtrl", 0)
    assert parse_align("auto", 65) == ("bptt", AUTO_WINDOW)
    assert parse_align("bptt:12", 500) == ("bptt", 12)
    for bad in ("bptt", "bptt:0", "bptt:x", "rtrl:3", "exact"):
        with pytest.raises(ConfigError, match="align"):
            parse_align(bad, 8)
    assert Run(small("rflo", n=70), align="auto").shadow.spec == f"bptt:{AUTO_WINDOW}"


def test_compare_rank_one_and_dense_agree():
    g = torch.Generator().manual_seed(0)
    post, pre = torch.randn(3, 5, generator=g, dtype=F64), torch.randn(3, 8, generator=g, dtype=F64)
    exact = torch.randn(3, 5, 5, generator=g, dtype=F64)
    c1, r1 = compare(Rank1(post, pre), exact)
    c2, r2 = compare(Dense(Rank1(post, pre).dense()), exact)
    torch.testing.assert_close(c1, c2, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(r1, r2, rtol=1e-12, atol=1e-14)
    c3, r3 = compare(Dense(exact.mul(2.5)), exact)  # scale: cosine 1, ratio 2.5
    torch.testing.assert_close(c3, torch.ones(3, dtype=F64), rtol=0, atol=1e-14)
    torch.testing.assert_close(r3, torch.full((3,), 2.5, dtype=F64), rtol=1e-14, atol=0)
    c4, _ = compare(Dense(-exact), exact)
    torch.testing.assert_close(c4, -torch.ones(3, dtype=F64), rtol=0, atol=1e-14)


def test_pairwise_alignment_of_identical_and_empty_rules():
    cfg = small("rtrl", seeds=[0, 1], lr=0.01, init_state="tanh-normal")
    pairs = pairwise_alignment(cfg, ["rtrl", "rtrl", "output-only"], 40)
    assert set(pairs) == {("rtrl[0]", "rtrl[1]"), ("rtrl[0]", "output-only"),
                          ("rtrl[1]", "output-only")}
    torch.testing.assert_close(pairs[("rtrl[0]", "rtrl[1]")], torch.ones(40, 2, dtype=F64),
                               rtol=0, atol=1e-12)
    assert torch.equal(pairs[("rtrl[0]", "output-only")], torch.zeros(40, 2, dtype=F64))


def test_pairwise_alignment_with_a_driver_measures_every_rule_on_its_trajectory():
    """dni drives; an rtrl follower on the shared weights computes the same gradient as the
    shadow RTRL of a dni run, so the pairwise cosine equals that run's alignment."""
    cfg = small("dni", seeds=[0, 1], lr=0.05, n=8)
    pairs = pairwise_alignment(cfg, ["dni", "rtrl"], 120, driver=0)
    shadowed = Run(cfg, align="rtrl").advance(120)
    torch.testing.assert_close(pairs[("dni", "rtrl")], shadowed.alignment, rtol=1e-9, atol=1e-12)
    assert float(shadowed.alignment[20:].abs().mean()) > 0.05  # a real signal, not zeros
    with pytest.raises(ConfigError):
        pairwise_alignment(cfg, ["dni"], 5)


def test_alignment_means_skip_nan_steps():
    means = AlignmentMeans()
    means.add(torch.tensor([[1.0, float("nan")], [0.5, float("nan")]]),
              torch.tensor([[2.0, float("nan")], [float("nan"), float("nan")]]))
    alignment, ratio = means.means()
    assert alignment[0] == 0.75 and math.isnan(alignment[1])
    assert ratio[0] == 2.0 and math.isnan(ratio[1])
