"""Circuit phases (docs/model.md section 4): a cycle of named phases, each with a duration in
steps and the set of synaptic sub-populations that are plastic during it.

String form (CLI, REST, URL):  ``[NAME=]POP+POP:STEPS,...``  or a preset name, e.g.
``apical+readout:50,basal+readout:50`` or ``listen=apical+jacobian:100,act=basal+readout:100``.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass

from simulator.settings import ConfigError, quote

POPULATIONS = ("basal", "apical", "jacobian", "readout")

PRESETS = {
    "all": "all=basal+apical+jacobian+readout:1",
    "apical-then-basal": "apical=apical+jacobian:100,basal=basal+readout:100",
}

MAX_PHASES = 64
#: a phase name is shown in every panel of every viewer: plain text, short
MAX_NAME = 40
NAME_RE = re.compile(rf"^[A-Za-z0-9_.+ -]{{1,{MAX_NAME}}}$")
#: the whole schedule string at most (64 phases of a long name and duration)
MAX_TEXT = 64 * 80


@dataclass(frozen=True)
class Phase:
    name: str
    steps: int
    plastic: frozenset[str]


@dataclass(frozen=True)
class Schedule:
    phases: tuple[Phase, ...]

    def __post_init__(self) -> None:
        ends, total = [], 0
        for phase in self.phases:
            total += phase.steps
            ends.append(total)
        object.__setattr__(self, "_ends", ends)
        object.__setattr__(self, "period", total)

    def index_at(self, t: int) -> int:
        """Which phase step t (0-based, counted from the start of the run) falls in."""
        if len(self.phases) == 1:
            return 0
        return bisect.bisect_right(self._ends, t % self.period)  # type: ignore[attr-defined]

    def at(self, t: int) -> Phase:
        return self.phases[self.index_at(t)]

    def spans(self, start: int, stop: int) -> list[tuple[int, int, str]]:
        """(first, last_exclusive, phase name) intervals covering [start, stop): for shading."""
        if len(self.phases) == 1:
            return [(start, stop, self.phases[0].name)]
        out, t = [], start
        while t < stop:
            i = self.index_at(t)
            end = min(stop, t - t % self.period + self._ends[i])  # type: ignore[attr-defined]
            out.append((t, end, self.phases[i].name))
            t = end
        return out

    def to_string(self) -> str:
        return ",".join(f"{p.name}={'+'.join(sorted(p.plastic)) or 'none'}:{p.steps}"
                        for p in self.phases)


def parse_schedule(text: str, field: str = "phases") -> Schedule:
    """Parse a preset name or ``[NAME=]POP+POP:STEPS,...``; ``none`` freezes everything."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(field, f"expected a preset ({', '.join(PRESETS)}) or "
                                 "'[NAME=]POP+POP:STEPS,...'")
    if len(text) > MAX_TEXT:
        raise ConfigError(field, f"got {quote(text)}; allowed: at most {MAX_TEXT} characters")
    text = PRESETS.get(text.strip(), text.strip())
    phases = []
    for i, part in enumerate(text.split(",")):
        spec, colon, steps_text = part.strip().rpartition(":")
        if not colon:
            raise ConfigError(field, f"phase {i + 1} ({quote(part.strip())}) needs ':STEPS'; "
                                     f"format '[NAME=]POP+POP:STEPS', presets: {', '.join(PRESETS)}")
        name, eq, pops_text = spec.rpartition("=")
        pops = [p.strip() for p in pops_text.split("+") if p.strip()]
        if pops == ["none"]:
            pops = []
        for pop in pops:
            if pop not in POPULATIONS:
                raise ConfigError(field, f"unknown population {quote(pop)} in phase {i + 1}; "
                                         f"allowed: {', '.join(POPULATIONS)} (or none)")
        try:
            steps = int(steps_text)
        except ValueError:
            steps = -1
        if not 1 <= steps <= 10**9:
            raise ConfigError(field, f"phase {i + 1} duration {quote(steps_text)} must be an integer "
                                     "in [1, 1e9]")
        name = name.strip() if eq else "+".join(pops) or "none"
        if not NAME_RE.match(name):
            raise ConfigError(field, f"phase {i + 1} name {quote(name)}: allowed: 1-{MAX_NAME} "
                                     "letters, digits, spaces, '_', '-', '.', '+'")
        phases.append(Phase(name, steps, frozenset(pops)))
    if len(phases) > MAX_PHASES:
        raise ConfigError(field, f"at most {MAX_PHASES} phases per cycle")
    return Schedule(tuple(phases))
