"""Plasticity Lab's simulator: a compartmental leaky RNN trained online by local rules.

Knows nothing of Dash. Usable alone from a notebook::

    from simulator import Run, RunConfig
    run = Run(RunConfig(task="add", rule="dni-b", seeds=[0, 1]))
    telemetry = run.advance(1000)        # loss, V, U, r, diagnostics, weight changes
    run.evaluate(5000)                   # held-out loss per seed, learning frozen
"""

import os

# Tiny matrix ops spin-wait with more than one OpenMP thread on small machines; this
# must be set before torch loads its OpenMP runtime. Users may override it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from simulator.config import RunConfig
from simulator.engine import Run, Telemetry
from simulator.settings import ConfigError

__all__ = ["ConfigError", "Run", "RunConfig", "Telemetry"]
