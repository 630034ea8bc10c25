"""Single runs without a start-up price (issue 14): the DNI family steps through the fused,
TorchScript-scripted k-step loop of simulator.fused by default; it gives the generic step's
numbers to rounding (float64, 1e-12), also when a run switches between the two mid-run,
and the default applies only where it may."""

from __future__ import annotations

import pytest
import torch

from simulator import Run, RunConfig
from simulator import fused as fused_module
from simulator.engine import set_threads

TOL = 1e-12
CASES = {
    "dni-b": {"rule": "dni-b"},
    "dni-b, phases": {"rule": "dni-b", "phases": "listen=apical+jacobian:3,act=basal+readout:4"},
    "dni, exact J, alpha 0.6": {"rule": "dni", "alpha": 0.6},
    "dni, random B, tanh": {"rule": "dni", "rule_args": {"feedback": "random", "label": "tanh"}},
    "dni-b, refresh 1, mimic": {"rule": "dni-b", "task": "mimic",
                                "rule_args": {"refresh": 1}},
    "uoro": {"rule": "uoro"},
    "uoro, gaussian signs, alpha 0.7, phases": {
        "rule": "uoro", "alpha": 0.7, "rule_args": {"signs": "gaussian", "start": "zeros"},
        "phases": "a=basal:5,b=readout:3"},
    "kernl": {"rule": "kernl", "rule_args": {"lr_kernel": 0.01}},
    "kernl, random B, alpha 0.5, phases": {
        "rule": "kernl", "alpha": 0.5, "rule_args": {"feedback": "random", "lr_kernel": 0.003},
        "phases": "a=basal+jacobian:4,b=readout:3"},
}


def close(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    torch.testing.assert_close(a, b, rtol=0, atol=TOL, equal_nan=True, msg=what)


def same_values(a: object, b: object, what: str) -> None:
    """Rule state: float tensors to TOL, anything else (noise generators' states, stream
    positions) exactly."""
    if isinstance(a, torch.Tensor) and a.is_floating_point():
        assert isinstance(b, torch.Tensor)
        close(b, a, what)
    elif isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), what
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), what
        for key in a:
            same_values(a[key], b[key], f"{what}.{key}")
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b), what
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            same_values(x, y, f"{what}[{i}]")
    else:
        assert a == b, what


def same_state(a: Run, b: Run) -> None:
    for name, w in a.populations().items():
        close(b.populations()[name], w, name)
    close(b.r, a.r, "r")
    same_values(a.rule.state_dict(), b.rule.state_dict(), "rule state")


@pytest.mark.parametrize("case", list(CASES))
def test_fused_loop_switches_mid_run_with_the_generic_step(case: str) -> None:
    cfg = RunConfig(n=12, dtype="float64", seeds=[0, 3], **CASES[case])
    generic, switched = Run(cfg, fused=False), Run(cfg)
    assert switched.fused and fused_module.applies(switched)  # the default takes the loop
    for k, fused, record in ((37, True, "traces"), (150, False, "scalars"),
                             (413, True, "scalars"), (1, True, "traces"), (99, False, "traces")):
        switched.fused = fused
        want, got = generic.advance(k, record=record), switched.advance(k, record=record)
        close(got.loss, want.loss, f"loss, {k} steps, fused={fused}")
        assert got.phase == want.phase
        assert set(got.diagnostics) == set(want.diagnostics)
        for name, value in want.diagnostics.items():
            close(got.diagnostics[name], value, name)
        for name, value in want.weight_change.items():
            close(got.weight_change[name], value, f"weight change {name}")
        if record == "traces":
            for name in ("V", "U", "r", "z"):
                close(getattr(got, name), getattr(want, name), name)
        same_state(generic, switched)
    assert generic.t == switched.t == 700
    close(switched.evaluate(60), generic.evaluate(60), "held-out loss")
    again = Run.from_state(switched.state_dict())  # a checkpoint of a fused run continues
    close(again.advance(20).loss, generic.advance(20).loss, "after a checkpoint")


def test_fused_loop_with_per_member_rates_equals_scalar_rates() -> None:
    """A sweep batch holds rates as tensors (S,): the loop's tensor-rate branch."""
    cfg = RunConfig(rule="dni-b", n=10, dtype="float64", seeds=[0, 1], lr=2e-3)
    scalar, batch = Run(cfg), Run(cfg)
    for pop in batch.lr:
        batch.lr[pop] = torch.full((2,), float(scalar.lr[pop]), dtype=torch.float64)
    close(batch.advance(300).loss, scalar.advance(300).loss, "loss")
    same_state(scalar, batch)


def test_fused_loop_applies_only_where_it_may() -> None:
    cfg = RunConfig(rule="dni-b", n=6, dtype="float64", seeds=[0])
    assert not fused_module.applies(Run(cfg.replace(rule_args={"order": "simultaneous"})))
    assert not fused_module.applies(Run(cfg.replace(rule="rflo")))
    tapped = Run(cfg)
    step = tapped.rule.step
    tapped.rule.step = lambda ctx: step(ctx)  # type: ignore[method-assign]  # a wrapped step
    assert not fused_module.applies(tapped)  # runs the wrapper, through the generic step
    # an alignment shadow (a per-step hook) takes the generic step, with the same numbers
    aligned, plain = Run(cfg, align="rtrl"), Run(cfg)
    close(aligned.advance(50, record="scalars").loss, plain.advance(50, record="scalars").loss,
          "with alignment")


def test_fused_loop_is_scripted_and_the_python_fallback_agrees(
        monkeypatch: pytest.MonkeyPatch) -> None:
    set_threads(1)
    assert isinstance(fused_module.loop(), torch.jit.ScriptFunction)  # no silent fallback
    cfg = RunConfig(rule="dni-b", n=8, dtype="float64", seeds=[2])
    scripted = Run(cfg).advance(120).loss
    monkeypatch.setattr(fused_module, "_LOOP", fused_module._dni_loop)
    close(Run(cfg).advance(120).loss, scripted, "plain Python loop")
