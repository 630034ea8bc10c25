"""What a run will cost before it is built: peak memory, disk per 1,000 steps of history and
floating-point work per step, from formulas (no tensors are allocated).

    from simulator.cost import estimate
    cost = estimate(RunConfig(rule="dni-b", n=4096, seeds=list(range(64))).validated())
    cost.memory_bytes, cost.human          # 77 GB ...

Each rule states its own part (``Rule.state_numel``, ``step_flops``, ``population_numel``,
``temp_numel``, floats per seed); this module adds what the engine and a service worker hold
around it, per seed:

- the network: W (n x m, m = n + n_in + 1), W_out (n_out x (n + 1)), r;
- the rule's state and, with ``align``, the exact rule of the alignment shadow (RTRL or BPTT);
- the working set of one chunk of steps, whichever of these is largest:
  a step (one copy of every population, taken by ``Run.advance`` to report weight changes,
  plus the rule's and the shadow's temporaries), the end of a live chunk (a service worker
  holds the weight changes of a scalars-only head, the copy and the difference of its traced
  tail, and their sum: four copies), a checkpoint (a copy of the network and the rule's
  state), or a held-out evaluation (inputs and targets drawn in float64, the input drive
  and the rates over test_steps);
- the chunk's recorded scalars and traces and the task-data prefetch;

all times the seeds and the dtype's size (float64 doubles everything). The process's own
baseline (Python, torch) is not included: the estimate is what the run adds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from simulator.config import RunConfig

#: steps of traces (V, U, r) a live chunk records (the service's TRACE_TAIL)
TRACE_STEPS = 200
#: steps of task data prefetched at a time (the engine's PREFETCH)
PREFETCH_STEPS = 1024
#: copies of the populations alive at the end of a live chunk (see the module doc)
CHUNK_COPIES = 4
#: bytes of one CSV history row per float column ("%.7g" and a comma) and of step + seed
CSV_FLOAT_BYTES = 12
CSV_KEY_BYTES = 12


@dataclass(frozen=True)
class Cost:
    """A run's estimated cost. memory_bytes: peak, beyond the process's own baseline;
    disk_bytes_per_1000_steps: CSV history (all seeds); checkpoint_bytes: one checkpoint;
    flops_per_step: all seeds; work_flops: flops_per_step x steps."""

    memory_bytes: int
    disk_bytes_per_1000_steps: int
    checkpoint_bytes: int
    flops_per_step: int
    work_flops: int
    human: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _scaled(value: float, units: tuple[tuple[str, float], ...], base: str) -> str:
    for unit, scale in units:
        if value >= scale:
            x = value / scale
            return f"{x:.2g} {unit}" if x < 10 else f"{x:,.0f} {unit}"
    return f"{int(value)} {base}"


def size_text(nbytes: float) -> str:
    """Bytes as text: "512 B", "3.4 MB", "47 GB", "2.1 TB" (decimal units)."""
    return _scaled(nbytes, (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)), "B")


def flops_text(flops: float) -> str:
    """Work as text: "24 kFLOP", "2.3 GFLOP", "1.5 PFLOP", "360,000 PFLOP"."""
    return _scaled(flops, (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6),
                           ("kFLOP", 1e3)), "FLOP")


def _shadow_parts(config: RunConfig, n: int, n_in: int, n_out: int) -> tuple[int, int, int]:
    """(state, temporaries, flops) per seed of the alignment shadow's exact rule."""
    if config.align is None:
        return 0, 0, 0
    from simulator.alignment import parse_align
    from simulator.rules import RULES

    kind, window = parse_align(config.align, n)
    exact = RULES[kind]
    args = {"T": window} if kind == "bptt" else {}
    temp = exact.temp_numel(n, n_in, n_out, args) + n * (n + n_in + 1) + 4 * n  # dense + compare
    return (exact.state_numel(n, n_in, n_out, args), temp,
            exact.step_flops(n, n_in, n_out, args) + 4 * n * n)


def estimate(config: RunConfig, *, trace_steps: int = TRACE_STEPS) -> Cost:
    """The cost of ``config`` (validated, or validated here) from the rules' formulas, for a
    worker whose live chunks record traces over ``trace_steps`` steps."""
    from simulator.rules import rule_class
    from simulator.tasks import make_task

    if not isinstance(config.seeds, list) or not isinstance(config.n, int):
        config = config.validated()
    task = make_task(config.task, config.task_args)
    n, n_in, n_out, S = config.n, task.n_in, task.n_out, len(config.seeds)
    rule = rule_class(config.rule)
    args = config.rule_args
    m = n + n_in + 1
    itemsize = 8 if config.dtype == "float64" else 4

    network = n * m + n_out * (n + 1) + n
    pops = n * m + n_out * (n + 1) + rule.population_numel(n, n_in, n_out, args)
    state = rule.state_numel(n, n_in, n_out, args)
    shadow_state, shadow_temp, shadow_flops = _shadow_parts(config, n, n_in, n_out)
    diagnostics = len(rule.diagnostic_names) + (2 if config.align is not None else 0)
    chunk = (trace_steps * (3 * n + n_in + 2 * n_out)  # V, U, r, x, y, z of the traced tail
             + PREFETCH_STEPS * (3 * (n_in + n_out) + 2 + diagnostics))  # data, loss, diags
    step_peak = pops + rule.temp_numel(n, n_in, n_out, args) + shadow_temp
    frame_peak = CHUNK_COPIES * pops
    checkpoint_peak = network + state
    test = config.test_steps
    eval_peak = test * (2 * n + 2 * n_out) + 2 * test * (n_in + n_out) * 8 // itemsize
    floats = (network + state + shadow_state + chunk
              + max(step_peak, frame_peak, checkpoint_peak, eval_peak))
    memory = floats * S * itemsize

    forward = 2 * n * m + 6 * n + 7 * n_out * (n + 1)  # V = W p, tanh, gain, readout, delta rule
    flops_seed = forward + rule.step_flops(n, n_in, n_out, args) + shadow_flops
    flops = flops_seed * S
    work = flops * config.steps
    columns = 1 + diagnostics
    disk = 1000 * S * (CSV_KEY_BYTES + CSV_FLOAT_BYTES * columns)
    checkpoint = (network + state) * S * itemsize
    human = (f"about {size_text(memory)} of memory, {size_text(disk)} of history per 1,000 "
             f"steps, {flops_text(flops)} per step ({flops_text(work)} for {config.steps:,} "
             f"steps)")
    return Cost(memory_bytes=int(memory), disk_bytes_per_1000_steps=int(disk),
                checkpoint_bytes=int(checkpoint), flops_per_step=int(flops),
                work_flops=int(work), human=human)
