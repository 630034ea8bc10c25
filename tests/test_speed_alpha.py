"""Per-member alpha in sweeps (issue 14): members that differ only in the leak alpha (and
rates) share one batch, alpha held as a tensor (slots, 1); each member equals its run alone
(float64, 1e-12). Rules that read alpha as a number keep one batch per alpha."""

from __future__ import annotations

import pytest
import torch

from simulator import Run
from simulator.sweep import make_batch_run, parse_experiment, plan_batches
from tests.test_sweep import spec

TOL = 1e-12
ALPHAS = [1.0, 0.6, 0.25]


@pytest.mark.parametrize("rule", ["dni-b", "dni", "rtrl", "uoro", "kf-rtrl", "rflo"])
def test_members_differing_in_alpha_share_a_batch_and_equal_solo_runs(rule: str) -> None:
    exp = parse_experiment(spec({"alpha": ALPHAS, "lr": [1e-3, 4e-3]}, rule=rule, n=6))
    batches = plan_batches(exp)
    assert batches == [list(range(len(exp.members)))]  # one batch: alpha does not split it
    batch = make_batch_run(exp, batches[0])
    seeds = len(exp.seeds)
    alpha = batch.net.alpha
    assert isinstance(alpha, torch.Tensor) and alpha.shape == (len(exp.members) * seeds, 1)
    tel = batch.advance(90, record="scalars")
    test = batch.evaluate(40)
    pops = batch.populations()
    for j, member in enumerate(exp.members):
        solo = Run(member.config)
        assert solo.net.alpha == member.config.alpha
        solo_tel = solo.advance(90, record="scalars")
        sl = slice(j * seeds, (j + 1) * seeds)
        what = f"{rule}, alpha={member.config.alpha}, lr={member.config.lr}"
        torch.testing.assert_close(tel.loss[:, sl], solo_tel.loss, rtol=0, atol=TOL, msg=what)
        for name, w in solo.populations().items():
            torch.testing.assert_close(pops[name][sl], w, rtol=0, atol=TOL, msg=f"{what} {name}")
        torch.testing.assert_close(batch.r[sl], solo.r, rtol=0, atol=TOL, msg=what)
        torch.testing.assert_close(test[sl], solo.evaluate(40), rtol=0, atol=TOL, msg=what)
    if rule == "dni-b":  # the solo runs took the fused loop, the batch the generic step
        assert not isinstance(Run(exp.members[0].config).net.alpha, torch.Tensor)


def test_rules_reading_alpha_as_a_number_keep_one_batch_per_alpha() -> None:
    exp = parse_experiment(spec({"alpha": ALPHAS}, rule="snap-1", n=6))
    assert len(plan_batches(exp)) == len(ALPHAS)
    aligned = parse_experiment({**spec({"alpha": ALPHAS}, rule="dni-b", n=6),
                                "record": {"every": 40, "alignment": True}})
    assert len(plan_batches(aligned)) == len(ALPHAS)  # the exact-gradient shadow reads alpha


def test_alphas_must_fit_the_slots_and_the_rule() -> None:
    exp = parse_experiment(spec({"alpha": ALPHAS}, rule="snap-1", n=6))
    with pytest.raises(ValueError, match="alphas"):
        Run(exp.members[0].config, ensemble=[0, 1], alphas=[1.0, 0.5])
    with pytest.raises(ValueError, match="alphas"):
        Run(exp.members[0].config.replace(rule="dni"), ensemble=[0, 1], alphas=[1.0])
