"""Declarative, validated settings shared by tasks, rules and the run config.

Every user-facing knob is a :class:`Setting` with a type, a default and an allowed
range, so the CLI, the REST API and the dashboard all refuse bad input with the same
one-line message naming the field and what is allowed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: characters of an input value quoted in an error message at most
QUOTE_LIMIT = 100
#: seeds in one run at most (an ensemble is one batched computation)
MAX_SEEDS = 256


def quote(value: Any, limit: int = QUOTE_LIMIT) -> str:
    """``repr(value)`` for an error message, cut to about ``limit`` characters (the value
    came from a client: never echo it whole)."""
    if isinstance(value, str | bytes) and len(value) > 4 * limit:
        value = value[: 2 * limit]  # repr of the head only: no copy of a huge value
        text = repr(value)
        return f"{text[:limit]}... (cut)"
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


class ConfigError(ValueError):
    """A bad setting. ``field`` is a dotted path such as ``rule_args.lr_apical`` (cut to
    QUOTE_LIMIT characters: an unknown key comes from the client)."""

    def __init__(self, field: str, message: str) -> None:
        field = field if len(field) <= QUOTE_LIMIT else f"{field[:QUOTE_LIMIT]}..."
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class Setting:
    """One named setting: ``kind`` is int, float, str or bool; bounds are inclusive."""

    name: str
    default: Any
    help: str
    kind: type = float
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] | None = None

    def allowed(self) -> str:
        if self.choices:
            return "one of " + ", ".join(self.choices)
        if self.kind is bool:
            return "true or false"
        if self.kind is str:
            return "any text"
        lo = "-inf" if self.low is None else f"{self.low:g}"
        hi = "inf" if self.high is None else f"{self.high:g}"
        what = "an integer" if self.kind is int else "a number"
        return f"{what} in [{lo}, {hi}]"

    def describe(self) -> str:
        return f"{self.name}={self.default} ({self.allowed()}): {self.help}"

    def parse(self, value: Any, where: str) -> Any:
        field = f"{where}.{self.name}" if where else self.name
        bad = ConfigError(field, f"got {quote(value)}; allowed: {self.allowed()}")
        if self.kind is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
                return value.strip().lower() in _TRUE
            raise bad
        if self.kind is str:
            if not isinstance(value, str) or (self.choices and value not in self.choices):
                raise bad
            return value
        if isinstance(value, bool):
            raise bad
        try:
            if self.kind is int:
                if isinstance(value, float) and not value.is_integer():
                    raise bad
                number: float = int(value) if not isinstance(value, str) else int(value.strip())
            else:
                number = float(value)
        except (TypeError, ValueError, OverflowError):
            raise bad from None
        if isinstance(number, float) and not math.isfinite(number):
            raise bad
        if (self.low is not None and number < self.low) or (
            self.high is not None and number > self.high
        ):
            raise bad
        return number


def resolve(settings: Sequence[Setting], given: Mapping[str, Any] | None, where: str) -> dict:
    """Fill defaults, parse and range-check ``given``; unknown keys are an error. The checks
    are the model generated from ``settings`` (simulator.schema): one schema for validation,
    the OpenAPI document and the CLI help."""
    if given is not None and not isinstance(given, Mapping):
        raise ConfigError(where, "must be a mapping of setting names to values")
    from simulator.schema import validate_settings

    return validate_settings(settings, given or {}, where)


def finite(x: Any) -> Any:
    """``x`` with every non-finite float (NaN, inf: a diverged run) as None, through dicts,
    lists and tuples: JSON has no NaN."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [finite(v) for v in x]
    return x


def parse_key_values(pairs: Sequence[str], where: str) -> dict[str, str]:
    """Parse CLI ``KEY=VALUE`` pairs (values stay strings; settings parse them)."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(where, f"expected KEY=VALUE, got {quote(pair)}")
        out[key.strip()] = value.strip()
    return out
