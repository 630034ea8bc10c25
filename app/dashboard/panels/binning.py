"""Binning and smoothing of loss-like series (pure; the state is carried across ticks).

One binning for every loss-like trace: points are re-binned into blocks of ``stride`` steps
(:func:`fold`), live (from frames) and after a rebuild (from the run's history) alike, so a
trace drawn tick by tick and the same trace rebuilt are the same points.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any


# ---------------------------------------------------------------------------------------------
# binning and smoothing (pure, carried across ticks in the client's cursor store)
# ---------------------------------------------------------------------------------------------
def new_series_carry() -> dict[str, Any]:
    return {"b": None, "s": 0.0, "w": 0.0, "t": None, "ema": None, "ew": 0.0, "et": None}


def bin_points(series: Mapping[str, Any] | None, t0: int) -> list[tuple[int, float, float]]:
    """(last step, mean, weight in steps) of each bin of a frame's binned series; empty or
    non-finite bins are skipped."""
    if not series:
        return []
    out, prev = [], t0 - 1
    for step, mean in zip(series.get("step", []), series.get("mean", []), strict=False):
        weight = max(1, int(step) - prev)
        prev = int(step)
        if mean is not None and math.isfinite(mean):
            out.append((int(step), float(mean), float(weight)))
    return out


def ema_update(carry: dict[str, Any], step: int, value: float, tau: float) -> float:
    """Time-aware, debiased exponential moving average (TensorBoard-style smoothing)."""
    last = carry.get("et")
    gap = 1.0 if last is None else max(1.0, step - last)
    a = 1.0 - math.exp(-gap / max(tau, 1e-9))
    ema = carry.get("ema") or 0.0
    ema = ema * (1 - a) + a * value
    carry["ema"], carry["ew"], carry["et"] = ema, carry.get("ew", 0.0) * (1 - a) + a, step
    return ema / carry["ew"]


def fold(points: Iterable[tuple[int, float, float]], stride: int, tau: float,
         carry: dict[str, Any]) -> tuple[list[int], list[float], list[float],
                                         tuple[int, float, float] | None]:
    """Re-bin (step, mean, weight) points into blocks of ``stride`` steps and smooth them.

    Returns the blocks completed by these points: x (last step of each block), the block
    means (the raw curve) and their EMA (the smoothed curve), and the *tail*: the unfinished
    block as a provisional (x, raw, smooth) point that the client replaces on the next tick
    (so the curve moves every tick while a whole run stays near LOSS_POINTS points). The
    unfinished block stays in ``carry``.
    """
    xs: list[int] = []
    raw: list[float] = []
    smooth: list[float] = []
    for step, mean, weight in points:
        block = step // stride
        if carry["b"] is not None and block != carry["b"] and carry["w"] > 0:
            value = carry["s"] / carry["w"]
            xs.append(int(carry["t"]))
            raw.append(value)
            smooth.append(ema_update(carry, int(carry["t"]), value, tau))
            carry["s"], carry["w"] = 0.0, 0.0
        carry["b"] = block
        carry["s"] += mean * weight
        carry["w"] += weight
        carry["t"] = step
    tail = None
    if carry["w"] > 0:
        value = carry["s"] / carry["w"]
        preview = {k: carry.get(k) for k in ("ema", "ew", "et")}
        tail = (int(carry["t"]), value, ema_update(preview, int(carry["t"]), value, tau))
    return xs, raw, smooth, tail


def fold_history(steps: Sequence[int], means: Sequence[float | None], stride: int, tau: float,
                 carry: dict[str, Any], *, final: bool
                 ) -> tuple[list[int], list[float], list[float]]:
    """A whole-run history (its bins, oldest first, from step 0) folded exactly as ticks
    fold frames: the same blocks of ``stride`` steps, the same smoothing. The unfinished
    block stays open in ``carry`` for the ticks that continue it; ``final`` (a run that will
    not move on) draws it too."""
    points = bin_points({"step": list(steps), "mean": list(means)}, 0)
    xs, raw, smooth, tail = fold(points, stride, tau, carry)
    if final and tail is not None:
        xs, raw, smooth = [*xs, tail[0]], [*raw, tail[1]], [*smooth, tail[2]]
    return xs, raw, smooth


def merge_spans(spans: Iterable[Sequence[Any]]) -> list[list[Any]]:
    """Join touching [start, stop, name] spans of the same phase."""
    out: list[list[Any]] = []
    for start, stop, name in spans:
        if out and out[-1][2] == name and out[-1][1] >= start:
            out[-1][1] = max(out[-1][1], stop)
        else:
            out.append([int(start), int(stop), str(name)])
    return out


def _finite(values: Iterable[Any]) -> list[float | None]:
    return [None if v is None or not math.isfinite(v) else float(v) for v in values]


def _mean(values: Iterable[Any]) -> float | None:
    vals = [float(v) for v in values if v is not None and math.isfinite(v)]
    return sum(vals) / len(vals) if vals else None
