"""The run configuration: typed, validated settings with limits (their one schema, for the
REST API's document and the CLI's help too: ``simulator.schema``).

``RunConfig.from_dict`` accepts the same keys as the CLI and the REST API (task, task_args,
rule, rule_args, n, alpha, lr, phases, seeds, steps, test_steps, device, dtype, w_rec_init,
init_state, align, compare) and refuses
bad input with a :class:`ConfigError` naming the field and what is allowed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from simulator.phases import parse_schedule
from simulator.settings import MAX_SEEDS, ConfigError, Setting, quote

SCALARS = (
    Setting("n", 32, "recurrent units", int, 1, 4096),
    Setting("alpha", 1.0, "leak: r = (1 - alpha) r + alpha tanh(V)", float, 1e-3, 1.0),
    Setting("lr", 1e-3, "network learning rate (basal W and readout)", float, 0.0, 10.0),
    Setting("steps", 10_000, "training steps (a run needs at least one)", int, 1, 10**9),
    Setting("test_steps", 1_000, "held-out steps for the test loss", int, 0, 10**7),
    Setting("device", "cpu", "where tensors live", str, choices=("cpu", "cuda")),
    Setting("dtype", "float32", "floating-point precision", str, choices=("float32", "float64")),
    Setting("w_rec_init", "qr", "initial W_rec: qr (the Q of the QR of a Gaussian matrix, no sign "
            "correction: the authors' and the default) or haar (signs fixed: uniformly "
            "distributed orthogonal)", str, choices=("qr", "haar")),
    Setting("init_state", "zeros", "initial network state r: zeros (the authors' training and "
            "tests start there: their Simulation.run default) or tanh-normal (tanh of an "
            "N(0, 1) draw per unit)", str, choices=("zeros", "tanh-normal")),
)
_DEFAULT = {s.name: s.default for s in SCALARS}


def parse_seeds(value: Any) -> list[int]:
    """Seeds as a list, an int, or text like ``0-4`` / ``0,3,7`` / ``0-3,10``."""
    bad = ConfigError("seeds", f"got {quote(value)}; allowed: integers in [0, 2^31-1] as a list, "
                               f"'A-B' or 'A,B,C', at most {MAX_SEEDS}, no repeats")
    if isinstance(value, bool):
        raise bad
    if isinstance(value, int):
        items: list[Any] = [value]
    elif isinstance(value, str):
        if len(value) > 16 * MAX_SEEDS:
            raise bad
        items = []
        for part in value.split(","):
            lo, dash, hi = part.strip().partition("-")
            try:
                first, last = int(lo), int(hi) if dash else int(lo)
            except ValueError:
                raise bad from None
            if last - first + 1 > MAX_SEEDS - len(items):  # counted, never expanded
                raise bad
            items.extend(range(first, last + 1))
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        raise bad
    if not items or len(items) > MAX_SEEDS or len(set(map(repr, items))) != len(items):
        raise bad
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int) or not 0 <= item < 2**31:
            raise bad
    return list(items)


@dataclass(frozen=True)
class RunConfig:
    task: str = "add"
    task_args: dict[str, Any] = field(default_factory=dict)
    rule: str = "dni-b"
    rule_args: dict[str, Any] = field(default_factory=dict)
    n: int = _DEFAULT["n"]
    alpha: float = _DEFAULT["alpha"]
    lr: float = _DEFAULT["lr"]
    phases: str = "all"
    seeds: list[int] = field(default_factory=lambda: [0])
    steps: int = _DEFAULT["steps"]
    test_steps: int = _DEFAULT["test_steps"]
    device: str = _DEFAULT["device"]
    dtype: str = _DEFAULT["dtype"]
    w_rec_init: str = _DEFAULT["w_rec_init"]
    init_state: str = _DEFAULT["init_state"]
    #: shadow exact gradient for alignment: None (off), "auto", "rtrl" or "bptt:T"
    align: str | None = None
    #: comparison rules measured passively on this run's network (JMLR protocol): a list of
    #: rule names or "rflo,kernl,dni-b" text; each computes its update every step without
    #: applying it (simulator.alignment.Passive); needs an exact gradient (align, else auto)
    compare: list[str] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: Any) -> RunConfig:
        """Validate a JSON-like mapping; every refusal names its field."""
        if not isinstance(data, dict):
            raise ConfigError("config", "must be a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        for key in data:
            if key not in known:
                raise ConfigError(str(key), f"unknown field; allowed: {', '.join(sorted(known))}")
        return cls(**data).validated()

    def validated(self) -> RunConfig:
        """Parse and range-check every field (task and rule settings included)."""
        from simulator.rules import make_rule_args
        from simulator.schema import validate_settings
        from simulator.tasks import make_task

        values = validate_settings(SCALARS, {s.name: getattr(self, s.name) for s in SCALARS}, "")
        for name in ("task", "rule", "phases"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(name, "must be a string")
        for name in ("task_args", "rule_args"):
            if not isinstance(getattr(self, name), dict):
                raise ConfigError(name, "must be a mapping of setting names to values")
        task = make_task(self.task, self.task_args)
        rule_args = make_rule_args(self.rule, self.rule_args)
        parse_schedule(self.phases)
        from simulator.alignment import parse_compare

        compare = parse_compare(self.compare)
        align = None if self.align in (None, "", "off", "none") else self.align
        if align is None and compare:
            align = "auto"  # comparison rules are measured against the exact gradient
        if align is not None:
            from simulator.alignment import parse_align

            parse_align(align, int(values["n"]))  # refuses a bad spec, naming "align"
        if values["device"] == "cuda" and not torch.cuda.is_available():
            raise ConfigError("device", "cuda is not available on this machine; allowed: cpu")
        return dataclasses.replace(
            self, **values, task_args=dict(task.args), rule_args=rule_args,
            seeds=parse_seeds(self.seeds), align=align, compare=compare,
        )

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes).validated()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def torch_dtype(self) -> torch.dtype:
        return torch.float64 if self.dtype == "float64" else torch.float32
