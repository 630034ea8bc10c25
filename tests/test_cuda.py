"""The GPU path: --device cuda and Run(cuda_graph=True).

The tests marked ``needs_cuda`` run only where a GPU is present (CI has none; they were run
on a lent H100/H200, see the README). The others check, on any machine, the refusals and the
pure part of the capture logic.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import weakref
from types import SimpleNamespace

import pytest
import torch

from simulator import ConfigError, Run, RunConfig
from simulator.cuda_graph import StepGraphs, _copy_back

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
F64 = {"dtype": "float64"}


def config(rule: str, device: str, **kw) -> RunConfig:
    base = {"task": "add", "task_args": {"t1": 2, "t2": 4}, "rule": rule, "n": 12,
            "seeds": [0, 1, 2], "device": device, **F64}
    base.update(kw)
    return RunConfig(**base)


# ---- on any machine -------------------------------------------------------------------------
def test_cuda_graph_needs_a_cuda_device():
    with pytest.raises(ConfigError) as err:
        Run(config("dni-b", "cpu"), cuda_graph=True)
    assert err.value.field == "cuda_graph" and "cuda" in err.value.message


def test_copy_back_keeps_one_address_per_state_tensor():
    """What a captured graph relies on: a value the rule rebinds lands in the old tensor."""
    old_a, new_a = torch.zeros(2, 3), torch.arange(6.0).view(2, 3)
    rule = SimpleNamespace(a_prev=new_a, e_prev=torch.ones(2), fresh=torch.ones(1),
                           other=torch.ones(4))
    _copy_back(rule, {"a_prev": old_a, "e_prev": None, "fresh": torch.zeros(5),
                      "other": rule.other})
    assert rule.a_prev is old_a and torch.equal(old_a, torch.arange(6.0).view(2, 3))
    assert rule.e_prev.shape == (2,)  # new state (None before) is kept as it is
    assert rule.fresh.shape == (1,)  # a changed shape is not forced into the old tensor


def test_graphs_do_not_keep_their_run_alive():
    """No run <-> graphs reference cycle: a dropped run goes at once (reference counting),
    never in a later garbage collection, which might fall inside another run's capture."""

    class Owner:
        def step(self, *args):  # the engine's step, in shape
            raise AssertionError("not called here")

        def populations(self) -> dict:
            return {}

    owner = Owner()
    ref = weakref.ref(owner)
    owner.graphs = StepGraphs(owner.step, SimpleNamespace(), owner.populations, {})
    collecting = gc.isenabled()
    gc.disable()
    try:
        del owner
        assert ref() is None
    finally:
        if collecting:
            gc.enable()


def test_cli_refuses_cuda_graph_on_the_cpu():
    out = subprocess.run([sys.executable, "-m", "simulator", "run", "--cuda-graph", "--steps", "5"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stderr.strip().startswith("error: cuda_graph:")


# ---- on a GPU -------------------------------------------------------------------------------
@needs_cuda
@pytest.mark.parametrize("rule", ["dni-b", "dni", "rtrl", "bptt", "kf-rtrl", "rflo"])
def test_cuda_run_equals_cpu_run_in_float64(rule):
    cpu, gpu = Run(config(rule, "cpu")), Run(config(rule, "cuda"))
    a, b = cpu.advance(200), gpu.advance(200)
    torch.testing.assert_close(b.loss.cpu(), a.loss, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(b.V.cpu(), a.V, rtol=1e-9, atol=1e-11)
    for name, w in cpu.populations().items():
        torch.testing.assert_close(gpu.populations()[name].cpu(), w, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(gpu.evaluate(300), cpu.evaluate(300), rtol=1e-9, atol=1e-11)


@needs_cuda
@pytest.mark.parametrize("rule, rule_args, other", [
    ("dni-b", {}, {}), ("dni", {}, {}), ("dni", {"feedback": "random", "jacobian": "learned"}, {}),
    ("output-only", {}, {}), ("dni-b", {}, {"alpha": 0.5}),
    ("dni", {}, {"task": "mimic", "task_args": {}}),  # squared error instead of cross-entropy
])
def test_cuda_graph_replays_the_eager_step(rule, rule_args, other):
    """Graph replay = eager step, float64, across phase switches (a graph per phase), uneven
    advance() chunks, a learning-rate change mid-run (a new capture), and recorded traces."""
    cfg = config(rule, "cuda", rule_args=rule_args,
                 phases="apical+jacobian+readout:7,basal+readout:5", **other)
    eager, graphed = Run(cfg), Run(cfg, cuda_graph=True)
    for k in (1, 40, 3, 77, 60):
        a, b = eager.advance(k), graphed.advance(k)
        torch.testing.assert_close(b.loss, a.loss, rtol=1e-12, atol=1e-13)
        for field in ("V", "U", "r", "z"):
            torch.testing.assert_close(getattr(b, field), getattr(a, field), rtol=1e-12,
                                       atol=1e-13)
        for name, d in a.diagnostics.items():
            torch.testing.assert_close(b.diagnostics[name], d, rtol=1e-12, atol=1e-13,
                                       equal_nan=True)
        if k == 3:
            eager.set_learning_rates(lr=3e-3)
            graphed.set_learning_rates(lr=3e-3)
    for name, w in eager.populations().items():
        torch.testing.assert_close(graphed.populations()[name], w, rtol=1e-12, atol=1e-13)
    stats = graphed._graphs.state()
    # two phases before and after the rate change: four graphs, and most steps replayed
    assert stats["captures"] == 4 and stats["replays"] > 150, stats
    # a checkpoint of the graphed run continues like the eager one
    resumed = Run.from_state(graphed.state_dict())
    eager.advance(30)
    resumed.advance(30)
    torch.testing.assert_close(resumed.net.W.cpu(), eager.net.W.cpu(), rtol=1e-12, atol=1e-13)


@needs_cuda
def test_runs_come_and_go_while_others_capture():
    """Graphed runs dropped in a loop, each next one capturing while garbage is around: every
    capture succeeds (a collection inside a capture would invalidate it)."""
    keep = []
    for i in range(6):
        run = Run(config("dni-b", "cuda", seeds=[i], phases="apical+readout:3,basal+readout:2"),
                  cuda_graph=True)
        run.advance(25)
        junk = [[j] for j in range(20_000)]  # garbage for the collector to find
        junk.append(junk)
        assert run._graphs.state()["captures"] == 2
        if i % 2:
            keep.append(run)
    assert all(torch.isfinite(r.advance(5).loss).all() for r in keep)


@needs_cuda
def test_cuda_graph_is_refused_for_rules_with_python_counters():
    with pytest.raises(ConfigError) as err:
        Run(config("bptt", "cuda"), cuda_graph=True)
    assert err.value.field == "cuda_graph" and "dni-b" in err.value.message


@needs_cuda
def test_cli_runs_on_cuda_with_a_graph():
    out = subprocess.run([sys.executable, "-m", "simulator", "run", "--device", "cuda",
                          "--cuda-graph", "--steps", "3000", "--test-steps", "500", "--seeds",
                          "0-3", "--json", "--no-progress"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(summary["final_test_loss"]) == 4
    assert all(0 < v < 1.0 for v in summary["final_test_loss"])
