"""Experiment presets: TOML files beside this module, each runnable with one command,
``python -m simulator sweep NAME --out DIR`` (``python -m simulator presets`` lists them)."""

from __future__ import annotations

import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent


def names() -> list[str]:
    return sorted(p.stem for p in HERE.glob("*.toml"))


def resolve_experiment(name_or_path: str) -> Path:
    """A preset's file for its name; anything else is a path."""
    preset = HERE / f"{name_or_path}.toml"
    return preset if "/" not in name_or_path and preset.is_file() else Path(name_or_path)


def describe() -> str:
    lines = []
    for name in names():
        spec = tomllib.loads((HERE / f"{name}.toml").read_text())
        lines.append(f"{name:14s} {spec.get('description', '')}")
    return "\n".join(lines)
