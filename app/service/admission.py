"""Admission control: a run's cost (``simulator.cost.estimate``) against the server's budgets,
checked before any worker starts or any tensor is allocated (create, branch, resume).

Budgets (BackendSettings; None: derived from this machine, 0: no limit):

    max_run_memory    peak memory of one run            default: a quarter of the RAM
    max_total_memory  summed over active runs           default: half of the RAM
    max_run_work      flops_per_step x steps of a run   default: DEFAULT_MAX_RUN_WORK

A run over a per-run budget is refused with :class:`OverBudget` (422) naming the config field
that drives the cost, the estimate and the limit; a run that fits alone but not beside the
active runs is refused with :class:`LimitReached` (409, like the max_runs limit: it clears
when runs end).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from typing import Any

from app.service.base import BackendSettings, LimitReached, ServiceError
from simulator.config import RunConfig
from simulator.cost import Cost, estimate, flops_text, size_text

#: 1 PFLOP: the paper's longest runs (RTRL, n=32, 10^6 steps x 20 seeds: 49 TFLOP) fit 20
#: times over; about a day of one CPU core
DEFAULT_MAX_RUN_WORK = 10**15


class OverBudget(ServiceError):
    """The run alone exceeds a per-run budget of this server."""

    http_status = 422


def machine_memory() -> int:
    """Physical memory of this machine in bytes (8 GiB when it cannot be read)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


@dataclasses.dataclass(frozen=True)
class Budgets:
    run_memory: int  # 0: no limit
    total_memory: int
    run_work: int

    @classmethod
    def of(cls, settings: BackendSettings) -> Budgets:
        ram = machine_memory()

        def pick(value: int | None, default: int) -> int:
            return default if value is None else int(value)

        return cls(run_memory=pick(settings.max_run_memory, ram // 4),
                   total_memory=pick(settings.max_total_memory, ram // 2),
                   run_work=pick(settings.max_run_work, DEFAULT_MAX_RUN_WORK))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _blame(config: RunConfig, memory: int) -> str:
    """The config field that drives the memory estimate: of the cheap knobs (test_steps,
    align, dtype, seeds), the one whose change alone saves the most, if it saves at least
    a third; "n" otherwise."""
    trials = (("test_steps", {"test_steps": min(config.test_steps, 1000)}),
              ("align", {"align": None}), ("dtype", {"dtype": "float32"}),
              ("seeds", {"seeds": config.seeds[:1]}))
    best, field = memory * 2 // 3, "n"
    for name, change in trials:
        if all(getattr(config, k) == v for k, v in change.items()):
            continue
        after = estimate(dataclasses.replace(config, **change)).memory_bytes
        if after < best:
            best, field = after, name
    return field


def _what(config: RunConfig) -> str:
    extras = "".join((f" in {config.dtype}" if config.dtype != "float32" else "",
                      f" with align={config.align}" if config.align else "",
                      f" and {config.test_steps:,} test steps" if config.test_steps > 1000 else ""))
    return (f"n={config.n} x {len(config.seeds)} seed{'s' if len(config.seeds) != 1 else ''} "
            f"for {config.rule}{extras}")


def admit(config: RunConfig, settings: BackendSettings,
          active: Iterable[int] = ()) -> Cost:
    """The run's cost if the server can take it beside the active runs (their memory
    estimates, bytes); raises OverBudget (422) or LimitReached (409) otherwise."""
    budgets = Budgets.of(settings)
    cost = estimate(config)
    if budgets.run_memory and cost.memory_bytes > budgets.run_memory:
        field = _blame(config, cost.memory_bytes)
        raise OverBudget(f"{field}: {_what(config)} needs about {size_text(cost.memory_bytes)}; "
                         f"this server allows {size_text(budgets.run_memory)} per run "
                         "(--max-run-memory)", field=field)
    if budgets.run_work and cost.work_flops > budgets.run_work:
        raise OverBudget(f"steps: {config.steps:,} steps x {flops_text(cost.flops_per_step)} per "
                         f"step ({_what(config)}) is about {flops_text(cost.work_flops)} of work; "
                         f"this server allows {flops_text(budgets.run_work)} per run "
                         "(--max-run-work)", field="steps")
    if budgets.total_memory:
        in_use = sum(active)
        if in_use + cost.memory_bytes > budgets.total_memory:
            raise LimitReached(
                f"max_total_memory: this run needs about {size_text(cost.memory_bytes)} and the "
                f"active runs hold about {size_text(in_use)}; this server allows "
                f"{size_text(budgets.total_memory)} across active runs (--max-total-memory); "
                "stop, delete or let one finish", field="max_total_memory")
    return cost


def estimate_dict(config: RunConfig, settings: BackendSettings) -> dict[str, Any]:
    """``POST /api/estimate``'s answer: the cost, the budgets and whether it fits alone."""
    cost = estimate(config)
    budgets = Budgets.of(settings)
    fits = ((not budgets.run_memory or cost.memory_bytes <= budgets.run_memory)
            and (not budgets.run_work or cost.work_flops <= budgets.run_work))
    return {**cost.to_dict(), "budgets": budgets.to_dict(), "fits": fits}


def cost_of(config: dict[str, Any]) -> dict[str, Any] | None:
    """The cost of a stored run's config as a dict (None when it no longer validates)."""
    try:
        return estimate(RunConfig.from_dict(dict(config))).to_dict()
    except Exception:  # an old config that no longer validates: show the run anyway
        return None
