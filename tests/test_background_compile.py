"""Single runs without a start-up price (issue 14): Run(compile="background") steps eagerly
at once while a twin compiles the step in a thread, then switches between two advance()
calls; the numbers equal the eager run's to rounding (float64)."""

from __future__ import annotations

import pytest
import torch

from simulator import ConfigError, Run, RunConfig
from tests.helpers import wait_for


@pytest.mark.parametrize("phases", ["listen=apical+jacobian:3,act=basal+readout:2"])
def test_background_compile_switches_mid_run(phases: str) -> None:
    cfg = RunConfig(rule="dni-b", n=8, dtype="float64", seeds=[0, 1], phases=phases)
    eager, bg = Run(cfg), Run(cfg, compile="background")
    first, first_bg = eager.advance(40), bg.advance(40)  # eager at once, while compiling
    assert bg._compiled_step is None and bg._learn_step_owner is None
    torch.testing.assert_close(first_bg.loss, first.loss, rtol=0, atol=0)  # the same eager step
    wait_for(lambda: bg.compiled or bg.compile_note, timeout=300, what="the background compile",
             every=0.1)
    assert bg.compile_note == ""
    later, later_bg = eager.advance(120), bg.advance(120)
    assert bg._compiled_step is not None and bg._learn_step_owner is not None  # switched
    torch.testing.assert_close(later_bg.loss, later.loss, rtol=1e-12, atol=1e-13)
    for name, w in eager.populations().items():
        torch.testing.assert_close(bg.populations()[name], w, rtol=1e-12, atol=1e-13, msg=name)
        torch.testing.assert_close(later_bg.weight_change[name], later.weight_change[name],
                                   rtol=1e-9, atol=1e-13, msg=name)
    torch.testing.assert_close(bg.r, eager.r, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(bg.evaluate(50), eager.evaluate(50), rtol=1e-12, atol=1e-13)
    again = Run.from_state(bg.state_dict())  # a checkpoint of the switched run continues
    torch.testing.assert_close(again.advance(5).loss, eager.advance(5).loss, rtol=1e-12,
                               atol=1e-13)


def test_background_compile_is_refused_for_rules_with_python_counters() -> None:
    with pytest.raises(ConfigError) as err:
        Run(RunConfig(rule="bptt", n=4), compile="background")
    assert err.value.field == "compile"
    with pytest.raises(ConfigError) as err:
        Run(RunConfig(rule="dni", n=4), compile="sometimes")
    assert err.value.field == "compile" and "background" in err.value.message
