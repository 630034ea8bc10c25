"""Output only: the readout learns by the delta rule, the recurrent network never does.

The reservoir (echo-state) baseline: what a fixed random network already offers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from simulator.rules.base import Rule, RuleOutput, StepContext


class OutputOnly(Rule):
    name = "output-only"
    summary = "readout learns (delta rule), recurrent weights frozen: the reservoir baseline"
    trains_basal = False
    compilable = True

    @classmethod
    def state_numel(cls, n: int, n_in: int, n_out: int, args: Mapping[str, Any]) -> int:
        return 0

    @classmethod
    def temp_numel(cls, n: int, n_in: int, n_out: int, args: Mapping[str, Any]) -> int:
        return 0

    @classmethod
    def step_flops(cls, n: int, n_in: int, n_out: int, args: Mapping[str, Any]) -> int:
        return 0

    def step(self, ctx: StepContext) -> RuleOutput:
        return RuleOutput()
