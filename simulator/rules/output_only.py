"""Output only: the readout learns by the delta rule, the recurrent network never does.

The reservoir (echo-state) baseline: what a fixed random network already offers.
"""

from __future__ import annotations

from simulator.rules.base import Rule, RuleOutput, StepContext


class OutputOnly(Rule):
    name = "output-only"
    summary = "readout learns (delta rule), recurrent weights frozen: the reservoir baseline"
    trains_basal = False
    compilable = True

    def step(self, ctx: StepContext) -> RuleOutput:
        return RuleOutput()
