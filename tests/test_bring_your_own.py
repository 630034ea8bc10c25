"""Your own network and stream (Run.load_arrays / state_arrays / feed / reset_state) and the
initialisation settings (w_rec_init, init_state, the stochastic rules' start)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from simulator.config import RunConfig
from simulator.engine import Run
from simulator.rules import make_rule
from simulator.seeding import orthogonal, seed_generator
from simulator.settings import ConfigError

F64 = torch.float64


def small(rule: str = "dni-b", **kw) -> RunConfig:
    base = {"task": "add", "rule": rule, "n": 6, "seeds": [0, 1], "dtype": "float64"}
    base.update(kw)
    return RunConfig(**base)


def test_state_arrays_round_trip_through_load_arrays_for_every_named_array():
    run = Run(small("dni-b"))
    names = run.state_arrays()
    assert set(names) == {"W_rec", "W_in", "b_rec", "W_out", "b_out", "apical", "jacobian",
                          "feedback"}
    shapes = {"W_rec": (6, 6), "W_in": (6, 2), "b_rec": (6,), "W_out": (2, 6), "b_out": (2,),
              "apical": (6, 6 + 2 + 1), "jacobian": (6, 6), "feedback": (2, 6)}
    assert {k: v.shape for k, v in names.items()} == shapes
    rng = np.random.default_rng(0)
    mine = {k: rng.normal(size=s) for k, s in shapes.items()}
    other_seed = run.state_arrays(seed_index=0)
    run.load_arrays(mine, seed_index=1)
    got = run.state_arrays(seed_index=1)
    for k in shapes:
        np.testing.assert_array_equal(got[k], mine[k])
        np.testing.assert_array_equal(run.state_arrays(seed_index=0)[k], other_seed[k])
    # the conventional shapes sit where the engine keeps them
    torch.testing.assert_close(run.net.W[1, :, :6], torch.as_tensor(mine["W_rec"]))
    torch.testing.assert_close(run.net.W[1, :, -1], torch.as_tensor(mine["b_rec"]))
    torch.testing.assert_close(run.rule.B[1], torch.as_tensor(mine["feedback"]).T)
    torch.testing.assert_close(run.rule.A_frozen[1], torch.as_tensor(mine["apical"]))


def test_rule_arrays_are_listed_per_rule():
    assert "apical" in Run(small("dni")).state_arrays()
    assert "feedback" not in Run(small("dni")).state_arrays()  # symmetric: W_out^T
    assert {"s_tilde", "theta_tilde"} <= set(Run(small("uoro")).state_arrays())
    assert {"u", "A"} <= set(Run(small("kf-rtrl")).state_arrays())
    assert Run(small("kernl")).state_arrays()["jacobian"].shape == (6, 7)  # [beta | gamma]
    assert "feedback" in Run(small("rflo", rule_args={"feedback": "random"})).state_arrays()


@pytest.mark.parametrize("arrays,field,words", [
    ({"W_rec": np.zeros((6, 5))}, "arrays.W_rec", "got shape (6, 5); expected (6, 6)"),
    ({"apical": np.zeros((6, 8))}, "arrays.apical", "expected (6, 9)"),
    ({"W_bogus": np.zeros(3)}, "arrays.W_bogus", "allowed: W_rec, W_in"),
    ({"b_out": [np.nan, 0.0]}, "arrays.b_out", "finite"),
    ({"W_in": "x" * 500}, "arrays.W_in", "numeric array"),
])
def test_bad_arrays_name_the_array_and_change_nothing(arrays, field, words):
    run = Run(small())
    before = run.state_arrays()
    with pytest.raises(ConfigError) as err:
        run.load_arrays({"b_rec": np.ones(6), **arrays})
    assert err.value.field == field and words in err.value.message
    assert len(str(err.value)) < 300
    np.testing.assert_array_equal(run.state_arrays()["b_rec"], before["b_rec"])
    with pytest.raises(ConfigError) as err:
        run.state_arrays(seed_index=2)
    assert err.value.field == "seed_index" and "[0, 1]" in err.value.message


def test_feed_replaces_the_next_steps_of_the_stream_then_the_task_resumes():
    a, b = Run(small()), Run(small())
    x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    y = np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]])
    first = b.advance(4)  # b: the task's own first 4 steps
    a.feed(x, y)
    tel = a.advance(7)
    np.testing.assert_array_equal(tel.x[:3].numpy(), np.broadcast_to(x[:, None], (3, 2, 2)))
    np.testing.assert_array_equal(tel.y[:3].numpy(), np.broadcast_to(y[:, None], (3, 2, 2)))
    torch.testing.assert_close(tel.x[3:], first.x)  # the task's stream, where it was
    # per seed: (T, S, dim)
    per_seed = np.stack([x, 1 - x], 1)
    a.feed(per_seed, np.stack([y, y], 1))
    np.testing.assert_array_equal(a.advance(3).x.numpy(), per_seed)


@pytest.mark.parametrize("x,y,field,words", [
    (np.zeros((3, 3)), np.zeros((3, 2)), "x", "expected (T, 2) or (T, 2, 2)"),
    (np.zeros((3, 2)), np.zeros((3, 5, 2)), "y", "got shape (3, 5, 2)"),
    (np.zeros((3, 2)), np.zeros((4, 2)), "y", "expected as many as x (3)"),
])
def test_bad_streams_name_the_array(x, y, field, words):
    with pytest.raises(ConfigError) as err:
        Run(small()).feed(x, y)
    assert err.value.field == field and words in err.value.message


def test_reset_state():
    run = Run(small(init_state="tanh-normal"))
    assert bool((run.r != 0).all())
    run.reset_state()
    assert bool((run.r == 0).all())
    run.reset_state(np.full(6, 0.25))
    assert bool((run.r == 0.25).all()) and run.r.shape == (2, 6)
    run.reset_state(np.arange(12.0).reshape(2, 6) / 20)
    assert float(run.r[1, 5]) == 0.55
    with pytest.raises(ConfigError) as err:
        run.reset_state(np.zeros(5))
    assert err.value.field == "r" and "expected (6,) or (2, 6)" in err.value.message


def test_w_rec_init_qr_is_the_unsigned_q_and_haar_the_sign_fixed_one():
    for seed in (0, 1, 2, 3):
        qr = Run(small(n=32, seeds=[seed])).net.W_rec[0]
        haar = Run(small(n=32, seeds=[seed], w_rec_init="haar")).net.W_rec[0]
        gauss = torch.randn(32, 32, generator=seed_generator("network", seed), dtype=F64)
        q, r = torch.linalg.qr(gauss)
        torch.testing.assert_close(qr, q, rtol=0, atol=0)
        torch.testing.assert_close(haar, q * torch.sign(torch.diagonal(r)), rtol=0, atol=0)
        torch.testing.assert_close(qr @ qr.T, torch.eye(32, dtype=F64), rtol=0, atol=1e-13)
        # the authors' Q: LAPACK's n - 1 Householder reflections, determinant -1 at n = 32
        assert float(torch.linalg.det(qr)) == pytest.approx(-1.0, abs=1e-10)
    dets = {round(float(torch.linalg.det(orthogonal(32, seed_generator("network", s))))) for s in
            range(8)}
    assert dets == {-1, 1}  # Haar: both signs


def test_initial_state_setting_and_defaults():
    assert RunConfig().validated().init_state == "zeros"
    assert RunConfig().validated().w_rec_init == "qr"
    assert bool((Run(small()).r == 0).all())
    r = Run(small(init_state="tanh-normal")).r
    assert bool((r.abs() < 1).all()) and bool((r != 0).all())
    # the same draws either way: only what the setting names changes
    torch.testing.assert_close(Run(small(init_state="tanh-normal")).net.W, Run(small()).net.W,
                               rtol=0, atol=0)
    with pytest.raises(ConfigError) as err:
        RunConfig(init_state="ones").validated()
    assert err.value.field == "init_state" and "zeros, tanh-normal" in err.value.message


@pytest.mark.parametrize("name,keys", [("uoro", ("s_tilde", "theta_tilde")),
                                       ("kf-rtrl", ("u", "A")), ("r-kf-rtrl", ("A", "B"))])
def test_stochastic_rules_start_from_normal_factors_by_default_or_zeros(name, keys):
    run = Run(small(name, seeds=[3]))
    alone = Run(small(name, seeds=[5, 3]))
    for key in keys:
        start = getattr(run.rule, key)
        assert bool((start != 0).all())
        assert abs(float(start.std()) - 1.0) < 0.5
        torch.testing.assert_close(getattr(alone.rule, key)[1], start[0], rtol=0, atol=0)
    zeros = make_rule(name, run.net, 2, {"start": "zeros"}, [3])
    for key in keys:
        assert bool((getattr(zeros, key) == 0).all())


def test_cli_takes_the_initialisation_settings(capsys):
    out = subprocess.run([sys.executable, "-m", "simulator", "run", "--rule", "output-only",
                          "--steps", "20", "--test-steps", "10", "--n", "4", "--json",
                          "--no-progress", "--w-rec-init", "haar", "--init-state",
                          "tanh-normal"], capture_output=True, text=True, check=True)
    config = json.loads(out.stdout.strip().splitlines()[-1])["config"]
    assert config["w_rec_init"] == "haar" and config["init_state"] == "tanh-normal"
    from simulator.cli import main  # the same entry point, in-process (no second start-up)

    assert main(["run", "--w-rec-init", "eye"]) == 2
    assert "w_rec_init: got 'eye'; allowed: one of qr, haar" in capsys.readouterr().err
    assert main(["rules"]) == 0
    rules = capsys.readouterr().out
    assert "order=sequential (one of sequential, simultaneous)" in rules
    assert "the authors'" in rules and "start=normal" in rules and "gamma0=0.8" in rules


def test_the_initialisation_settings_reach_the_api_schema_and_config():
    from simulator.schema import config_schemas

    props = config_schemas()["RunConfig"]["properties"]
    assert props["w_rec_init"]["enum"] == ["qr", "haar"] and props["w_rec_init"]["default"] == "qr"
    assert props["init_state"]["enum"] == ["zeros", "tanh-normal"]
    config = RunConfig.from_dict({"w_rec_init": "haar", "init_state": "tanh-normal"})
    assert (config.w_rec_init, config.init_state) == ("haar", "tanh-normal")
