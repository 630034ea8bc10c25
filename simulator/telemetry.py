"""Telemetry frames: the narrow seam between a running simulation and any viewer.

A frame summarizes the steps [t0, t1) of one ``Run.advance`` call as a small, JSON-ready
dict (plain lists and floats). Everything a live view needs is in it, decimated so that its
size does not grow with the number of steps it covers:

    t0, t1              the steps covered
    phase, phases       phase at t1 - 1; [start, stop, name] spans inside [t0, t1)
    loss                {"step", "mean", "min", "max"}: at most ``max_points`` bins; mean over
                        seeds and steps, min/max envelope (a spike is never averaged away)
    loss_seeds          mean train loss of each seed over the frame
    diagnostics         name -> binned series like ``loss`` (apical_loss, jacobian_loss, ...)
    alignment           binned cosine with the exact gradient (or None); with comparison
                        rules (RunConfig.compare) also "compare": rule -> binned cosine of
                        that rule's passive update on this run's network
    traces              {"seed", "units", "step", "V", "U", "r"}: the last ``max_trace_points``
                        steps of the chosen units of one seed (one list per unit)
    task                {"seed", "step", "x", "y", "pred"}: the same window of inputs, targets and
                        predictions (chosen channels)
    weight_change       population -> {"norm": mean over seeds of ||W(t1) - W(t0)||_F,
                        "max_abs", "matrix": that change for one seed, at most 64 x 64}; basal
                        also "parts": {"recurrent": norm of the W_rec block, "input": of W_in}
    plastic             the sub-populations plastic in the phase at t1 - 1 (sorted)
    snapshot            {"seed", "step", "n", "V", "U"}: basal and apical voltage of every unit
                        (the first SNAPSHOT_UNITS of n) of the traces' seed at step t1 - 1, 4
                        significant digits (the circuit panel's whole-network strip)
    weight_norm         population -> mean over seeds of ||W||_F
    test_loss           per-seed held-out loss when the producer evaluated one (else absent)
    status              the run's status after these steps
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from simulator.engine import Run, Telemetry

MAX_MATRIX = 64
#: units a frame's snapshot carries at most (the circuit panel says when n is larger)
SNAPSHOT_UNITS = 256

#: Telemetry fields that are not a steps-first series, and how two consecutive calls combine
#: them: the first call's start, the later divergence, the summed weight change
_FIRST, _LATER, _SUMMED = ("start",), ("diverged_at",), ("weight_change",)


def concat(head: Telemetry, tail: Telemetry) -> Telemetry:
    """One Telemetry for two consecutive ``advance`` calls (``tail`` right after ``head``),
    covering every field: steps-first series (tensors, dicts of them, the phase list) joined,
    weight changes summed, the start of ``head``, the divergence of either. A series only
    one side recorded (traces of a scalars-only call) is None: it would not line up with the
    steps. A field of a kind not listed here raises TypeError, so a new field is never
    silently dropped."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(head):
        a, b = getattr(head, f.name), getattr(tail, f.name)
        if f.name in _FIRST:
            values[f.name] = a
        elif f.name in _LATER:
            values[f.name] = b if b is not None else a
        elif f.name in _SUMMED:
            values[f.name] = {k: v + b[k] for k, v in a.items() if k in b}
        elif isinstance(a, list) and isinstance(b, list):
            values[f.name] = a + b
        elif isinstance(a, dict) and isinstance(b, dict):
            values[f.name] = {k: torch.cat([v, b[k]]) for k, v in a.items() if k in b}
        elif isinstance(a, Tensor | None) and isinstance(b, Tensor | None):
            values[f.name] = None if a is None or b is None else torch.cat([a, b])
        else:
            raise TypeError(f"Telemetry.{f.name}: cannot join {type(a).__name__} and "
                            f"{type(b).__name__}; add it to simulator.telemetry.concat")
    return type(head)(**values)


def _floats(a: Any, digits: int = 5) -> list:
    """Nested lists of Python floats rounded to ``digits`` significant digits relative to
    the largest magnitude (short JSON), NaN/inf as None (valid JSON)."""
    arr = np.asarray(a, dtype=np.float64)
    finite = np.abs(arr[np.isfinite(arr)])
    if finite.size and finite.max() > 0:
        arr = np.round(arr, int(digits - 1 - math.floor(math.log10(finite.max()))))
    out = arr.tolist()
    if np.isfinite(arr).all():
        return out
    return _clean(out)


def _clean(x: Any) -> Any:
    if isinstance(x, list):
        return [_clean(v) for v in x]
    return x if math.isfinite(x) else None


def binned(values: Tensor, start: int, max_points: int) -> dict[str, list]:
    """Decimate (k, S) per-step values into at most ``max_points`` bins over steps.

    Each bin reports its last step, the mean over its steps and seeds (NaNs ignored), and
    the min and max (the envelope). Bins hold whole steps, so no step is dropped. Vectorized
    with ``reduceat``: frames are built ~10 times a second per run.
    """
    k = values.shape[0]
    v = values.detach().double().cpu().reshape(k, -1).numpy()
    bins = min(k, max_points)
    edges = np.linspace(0, k, bins + 1).astype(int)  # strictly increasing: bins <= k
    first = edges[:-1]
    finite = np.isfinite(v)
    counts = np.add.reduceat(finite.sum(1), first)
    sums = np.add.reduceat(np.where(finite, v, 0.0).sum(1), first)
    mins = np.minimum.reduceat(np.where(finite, v, np.inf).min(1), first)
    maxs = np.maximum.reduceat(np.where(finite, v, -np.inf).max(1), first)
    empty = counts == 0
    means = np.where(empty, np.nan, sums / np.maximum(counts, 1))
    mins[empty] = np.nan
    maxs[empty] = np.nan
    steps = (start + edges[1:] - 1).tolist()
    return {"step": steps, "mean": _floats(means), "min": _floats(mins), "max": _floats(maxs)}


def shrink_matrix(m: Tensor, limit: int = MAX_MATRIX) -> Tensor:
    """Block-average a matrix down to at most ``limit`` x ``limit`` for heatmaps."""
    if m.shape[0] <= limit and m.shape[1] <= limit:
        return m
    pooled = torch.nn.functional.adaptive_avg_pool2d(
        m.double().unsqueeze(0), (min(limit, m.shape[0]), min(limit, m.shape[1]))
    )
    return pooled[0]


def default_units(n: int, count: int = 4) -> list[int]:
    return list(range(min(n, count)))


def make_frame(tel: Telemetry, run: Run, *, units: list[int] | None = None, seed_index: int = 0,
               channels: int = 4, max_points: int = 100, max_trace_points: int = 200,
               matrices: bool = True, test_loss: Tensor | None = None) -> dict[str, Any]:
    """Summarize one ``advance`` call as a JSON-ready frame (see the module docstring)."""
    k, t0 = tel.steps, tel.start
    units = [u for u in (units or default_units(run.net.n)) if 0 <= u < run.net.n]
    seed_index = min(max(seed_index, 0), run.net.seeds - 1)
    frame: dict[str, Any] = {
        "t0": t0,
        "t1": t0 + k,
        "phase": run.schedule.phases[tel.phase[-1]].name if k else run.phase_at(t0),
        "phases": [list(span) for span in run.schedule.spans(t0, t0 + k)],
        "plastic": sorted(run.schedule.at(t0 + k - 1 if k else t0).plastic),
        "loss": binned(tel.loss, t0, max_points),
        "loss_seeds": _floats(tel.loss.double().nanmean(0).cpu()),
        "diagnostics": {name: binned(v, t0, max_points) for name, v in tel.diagnostics.items()},
        "alignment": None,
        "status": run.status,
    }
    alignment = getattr(tel, "alignment", None)
    if alignment is not None:
        frame["alignment"] = binned(alignment, t0, max_points)
        compared = getattr(tel, "compare", None)
        if compared:
            frame["alignment"]["compare"] = {name: binned(v, t0, max_points)
                                             for name, v in compared.items()}
    if tel.V is not None and k:
        w = min(k, max_trace_points)
        window = slice(k - w, k)
        steps = list(range(t0 + k - w, t0 + k))

        def unit_series(a: Tensor) -> list:
            return _floats(a[window, seed_index][:, units].T.cpu())

        frame["traces"] = {"seed": run.seeds[seed_index], "units": units, "step": steps,
                           "V": unit_series(tel.V), "U": unit_series(tel.U), "r": unit_series(tel.r)}
        cap = min(run.net.n, SNAPSHOT_UNITS)
        frame["snapshot"] = {"seed": run.seeds[seed_index], "step": t0 + k - 1, "n": run.net.n,
                             "V": _floats(tel.V[-1, seed_index, :cap].cpu(), digits=4),
                             "U": _floats(tel.U[-1, seed_index, :cap].cpu(), digits=4)}
        pred = run.task.prediction(tel.z[window, seed_index])
        frame["task"] = {
            "seed": run.seeds[seed_index],
            "step": steps,
            "x": _floats(tel.x[window, seed_index, :channels].T.cpu()),
            "y": _floats(tel.y[window, seed_index, :channels].T.cpu()),
            "pred": _floats(pred[:, :channels].T.cpu()),
        }
    changes: dict[str, Any] = {}
    for name, dw in tel.weight_change.items():
        entry: dict[str, Any] = {
            "norm": float(torch.linalg.vector_norm(dw.flatten(1), dim=1).mean()),
            "max_abs": float(dw.abs().max()) if dw.numel() else 0.0,
        }
        if name == "basal" and dw.dim() == 3:  # [W_rec | W_in | b]: the circuit's two arrows
            n, n_in = run.net.n, run.net.n_in
            entry["parts"] = {part: float(torch.linalg.vector_norm(block.flatten(1), dim=1).mean())
                              for part, block in (("recurrent", dw[:, :, :n]),
                                                  ("input", dw[:, :, n:n + n_in]))}
        if matrices:
            entry["matrix"] = _floats(shrink_matrix(dw[seed_index]).cpu(), digits=3)
        changes[name] = entry
    frame["weight_change"] = changes
    frame["weight_norm"] = {name: float(torch.linalg.vector_norm(w.flatten(1), dim=1).mean())
                            for name, w in run.populations().items()}
    if test_loss is not None:
        frame["test_loss"] = _floats(test_loss)
    return frame


def scalar_history(tel: Telemetry, seeds: list[int]) -> tuple[list[str], np.ndarray]:
    """Full-resolution per-step scalars as (columns, rows): step, seed, train_loss, then
    each diagnostic (and alignment, norm_ratio when present, then alignment_RULE for each
    comparison rule). For export to disk/CSV."""
    k, S = tel.loss.shape
    cols = ["step", "seed", "train_loss", *tel.diagnostics]
    parts = [np.repeat(np.arange(tel.start, tel.start + k), S).astype(np.float64),
             np.tile(np.asarray(seeds, dtype=np.float64), k),
             tel.loss.double().cpu().reshape(-1).numpy()]
    parts += [v.double().cpu().reshape(-1).numpy() for v in tel.diagnostics.values()]
    for extra in ("alignment", "norm_ratio"):
        value = getattr(tel, extra, None)
        if value is not None:
            cols.append(extra)
            parts.append(value.double().cpu().reshape(-1).numpy())
    for name, value in (getattr(tel, "compare", None) or {}).items():
        cols.append(f"alignment_{name}")
        parts.append(value.double().cpu().reshape(-1).numpy())
    return cols, np.stack(parts, 1)
