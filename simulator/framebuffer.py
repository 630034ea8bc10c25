"""A bounded in-memory telemetry buffer: a live window of frames plus a multi-resolution
min/max history of the scalars, so that memory stays flat for runs of millions of steps.

Two parts, both fed by :meth:`FrameBuffer.push` (one telemetry frame from
``simulator.telemetry.make_frame``) or :meth:`FrameBuffer.fold` (scalars only, e.g. while
fast-forwarding):

- the **live window**: the last ``live_frames`` frames, each stamped with a strictly increasing
  ``seq``. A reader asks for the frames after its cursor (:meth:`since`) and gets only those,
  with work proportional to the new frames. Only the newest ``detail_frames`` keep their bulky
  parts (traces, task window, weight-change matrices); older ones keep their scalars (re-binned
  to at most 16 bins, min/max exact) and are marked ``"detail": False``.
- the **history pyramid**: ``levels`` levels of min/max/mean envelopes of every scalar series
  (train loss, each rule diagnostic, alignment, weight norms). Level 0 holds the frames' own
  bins; level k+1 merges ``fan`` bins of level k; each level keeps at most ``bins`` bins
  (dropping its oldest), except the top one, which covers the whole run and coarsens by pairs
  when full. A min/max envelope never averages a spike away. :meth:`history` answers from the
  finest level that still covers the requested range, re-binned to ``max_points``.

Held-out test-loss points and phase spans are kept too (thinned / capped). Nothing here knows
about Dash or processes; the class is thread-safe (one writer, many readers).
"""

from __future__ import annotations

import json
import math
import threading
from collections import deque
from typing import Any

import numpy as np

#: Frame keys dropped from frames older than the detail window.
BULKY_KEYS = ("traces", "task")
STRIPPED_BINS = 16  # bins per series kept in frames older than the detail window
MAX_TEST_POINTS = 4096
MAX_SPANS = 4096
#: setting changes kept (mid-run learning-rate or phase changes: [step, label])
MAX_EVENTS = 256

#: history series name prefix of a comparison rule's alignment
COMPARE = "alignment.compare."

# Columns of a level row: first step, last step, then per series: weighted sum, weight, min, max.
_FIRST, _LAST, _HEAD = 0, 1, 2


def _as_array(values: Any) -> np.ndarray:
    """A list of numbers (None for NaN, as in JSON frames) as float64."""
    return np.array([math.nan if v is None else v for v in values], dtype=np.float64)


def _merge_groups(rows: np.ndarray, fan: int, series: int) -> np.ndarray:
    """Merge consecutive groups of ``fan`` rows (len(rows) divisible by fan) into one each."""
    g = rows.reshape(-1, fan, rows.shape[1])
    out = np.empty((g.shape[0], rows.shape[1]))
    out[:, _FIRST] = g[:, 0, _FIRST]
    out[:, _LAST] = g[:, -1, _LAST]
    for j in range(series):
        c = _HEAD + 4 * j
        out[:, c] = g[:, :, c].sum(1)
        out[:, c + 1] = g[:, :, c + 1].sum(1)
        out[:, c + 2] = np.fmin.reduce(g[:, :, c + 2], axis=1)
        out[:, c + 3] = np.fmax.reduce(g[:, :, c + 3], axis=1)
    return out


class _Level:
    """Rows in step order, at most ``cap``. ``coarsen``: when full, merge pairs and double the
    group size of what comes in (the whole-run top level); else drop the oldest half."""

    def __init__(self, cap: int, width: int, series: int, coarsen: bool) -> None:
        self.data = np.empty((cap, width))
        self.len = 0
        self.series = series
        self.coarsen = coarsen
        self.group = 1  # incoming rows merged per stored row (top level only)
        self.inbox = np.empty((0, width))

    def rows(self) -> np.ndarray:
        return self.data[: self.len]

    def add(self, rows: np.ndarray) -> None:
        if self.group > 1:
            rows = np.concatenate([self.inbox, rows])
            full = len(rows) // self.group * self.group
            self.inbox = rows[full:]
            rows = _merge_groups(rows[:full], self.group, self.series) if full else rows[:0]
        for start in range(0, len(rows), max(1, len(self.data) // 2)):
            self._store(rows[start : start + max(1, len(self.data) // 2)])

    def _store(self, rows: np.ndarray) -> None:
        cap = len(self.data)
        if self.len + len(rows) > cap:
            if self.coarsen:
                even = self.len // 2 * 2
                merged = _merge_groups(self.data[:even], 2, self.series)
                tail = self.data[even : self.len].copy()
                self.len = len(merged) + len(tail)
                self.data[: len(merged)] = merged
                self.data[len(merged) : self.len] = tail
                self.group *= 2
                pairs = len(rows) // 2 * 2
                rows = np.concatenate([_merge_groups(rows[:pairs], 2, self.series), rows[pairs:]])
            else:
                keep = max(0, cap - len(rows) - cap // 4)
                self.data[:keep] = self.data[self.len - keep : self.len].copy()
                self.len = keep
        self.data[self.len : self.len + len(rows)] = rows
        self.len += len(rows)


class FrameBuffer:
    """Live frame window + multi-resolution scalar history for one run (see module doc)."""

    def __init__(self, live_frames: int = 600, detail_frames: int = 100, bins: int = 2048,
                 levels: int = 4, fan: int = 8, first_seq: int = 0) -> None:
        if live_frames < 1 or detail_frames < 0 or bins < 16 or levels < 1 or fan < 2:
            raise ValueError("FrameBuffer: live_frames >= 1, bins >= 16, levels >= 1, fan >= 2")
        self.live_frames, self.detail_frames = live_frames, detail_frames
        self.bins, self.n_levels, self.fan = bins, levels, fan
        self._lock = threading.Lock()
        self._ring: list[dict[str, Any] | None] = [None] * live_frames
        self._next_seq = first_seq
        self._first_seq = first_seq  # oldest seq ever held (after a restore: the next one)
        self.series: list[str] = []
        self._levels: list[_Level] = []
        self._pending: list[np.ndarray] = []
        self._tests: list[tuple[int, list[float | None]]] = []
        self._test_stride = 1
        self._test_seen = 0
        self._spans: deque[list[Any]] = deque(maxlen=MAX_SPANS)
        self._events: deque[list[Any]] = deque(maxlen=MAX_EVENTS)
        self.t = 0  # steps covered so far

    # ---- writing -------------------------------------------------------------------------
    def push(self, frame: dict[str, Any]) -> int:
        """Stamp ``frame`` with the next seq, keep it in the live window and fold its scalars
        into the history. The dict is owned by the buffer afterwards; returns its seq."""
        with self._lock:
            seq = self._next_seq
            frame["seq"] = seq
            frame.setdefault("detail", True)
            self._ring[seq % self.live_frames] = frame
            self._next_seq += 1
            old = seq - self.detail_frames
            if old >= max(self._first_seq, seq - self.live_frames + 1) and self.detail_frames:
                stale = self._ring[old % self.live_frames]
                if stale is not None and stale.get("detail"):
                    self._ring[old % self.live_frames] = strip_frame(stale)
            self._fold(frame)
            return seq

    def fold(self, summary: dict[str, Any]) -> None:
        """Fold a scalars-only summary (same keys as a frame's loss, diagnostics, alignment,
        weight_norm, test_loss, phases, t0, t1) into the history, not the live window."""
        with self._lock:
            self._fold(summary)

    def _fold(self, frame: dict[str, Any]) -> None:
        loss = frame.get("loss")
        t0, t1 = int(frame.get("t0", self.t)), int(frame.get("t1", self.t))
        if loss and loss.get("step"):
            self._fold_bins(frame, t0)
        if frame.get("test_loss") is not None:
            self._add_test(max(0, int(frame.get("test_step", t1)) - 1), frame["test_loss"])
        for span in frame.get("phases") or ():
            if self._spans and self._spans[-1][2] == span[2] and self._spans[-1][1] == span[0]:
                self._spans[-1][1] = span[1]
            else:
                self._spans.append(list(span))
        for step, label in frame.get("events") or ():
            self._events.append([int(step), str(label)[:100]])
        self.t = max(self.t, t1)

    def _init_series(self, frame: dict[str, Any]) -> None:
        names = ["loss", *sorted(frame.get("diagnostics") or {}), "alignment"]
        names += [f"{COMPARE}{rule}" for rule in _compared(frame)]
        names += [f"weight_norm.{p}" for p in sorted(frame.get("weight_norm") or {})]
        self.series = names
        width = _HEAD + 4 * len(names)
        self._levels = [_Level(self.bins, width, len(names), coarsen=(k == self.n_levels - 1))
                        for k in range(self.n_levels)]
        self._pending = [np.empty((0, width)) for _ in range(self.n_levels)]

    def _fold_bins(self, frame: dict[str, Any], t0: int) -> None:
        if not self.series:
            self._init_series(frame)
        last = np.asarray(frame["loss"]["step"], dtype=np.float64)
        first = np.concatenate([[t0], last[:-1] + 1])
        rows = np.full((len(last), _HEAD + 4 * len(self.series)), np.nan)
        rows[:, _FIRST], rows[:, _LAST] = first, last
        counts = last - first + 1
        diagnostics = frame.get("diagnostics") or {}
        for j, name in enumerate(self.series):
            if name == "loss":
                binned = frame["loss"]
            elif name == "alignment":
                binned = frame.get("alignment")
            elif name.startswith(COMPARE):
                binned = ((frame.get("alignment") or {}).get("compare") or {}).get(
                    name[len(COMPARE):])
            elif name.startswith("weight_norm."):
                value = (frame.get("weight_norm") or {}).get(name[12:])
                binned = None
                if value is not None:
                    binned = {"mean": [math.nan] * (len(last) - 1) + [value]}
            else:
                binned = diagnostics.get(name)
            self._fill(rows, j, binned, counts)
        self._add_rows(0, rows)

    @staticmethod
    def _fill(rows: np.ndarray, j: int, binned: dict | None, counts: np.ndarray) -> None:
        c = _HEAD + 4 * j
        rows[:, c + 1] = 0.0
        if not binned or len(binned.get("mean", ())) != len(rows):
            return
        mean = _as_array(binned["mean"])
        ok = np.isfinite(mean)
        weight = counts if "min" in binned else np.ones_like(counts)
        rows[:, c] = np.where(ok, mean * weight, 0.0)
        rows[:, c + 1] = np.where(ok, weight, 0.0)
        rows[:, c + 2] = _as_array(binned.get("min", binned["mean"]))
        rows[:, c + 3] = _as_array(binned.get("max", binned["mean"]))

    def _add_rows(self, k: int, rows: np.ndarray) -> None:
        self._levels[k].add(rows)
        if k + 1 >= self.n_levels:
            return
        pend = np.concatenate([self._pending[k], rows])
        full = len(pend) // self.fan * self.fan
        self._pending[k] = pend[full:]
        if full:
            self._add_rows(k + 1, _merge_groups(pend[:full], self.fan, len(self.series)))

    def _add_test(self, step: int, losses: list[float | None]) -> None:
        self._test_seen += 1
        if self._test_seen % self._test_stride:
            return
        self._tests.append((step, list(losses)))
        if len(self._tests) > MAX_TEST_POINTS:
            self._tests = self._tests[::2]
            self._test_stride *= 2

    # ---- reading -------------------------------------------------------------------------
    @property
    def cursor(self) -> int:
        """The seq of the newest frame (-1 before the first)."""
        return self._next_seq - 1

    def since(self, after: int = -1) -> tuple[list[dict[str, Any]], int]:
        """Frames with seq > ``after`` still in the live window, oldest first, and the new
        cursor (never lower than ``after``). O(number of frames returned)."""
        with self._lock:
            oldest = max(self._first_seq, self._next_seq - self.live_frames)
            begin = max(after + 1, oldest)
            out = [self._ring[s % self.live_frames] for s in range(begin, self._next_seq)]
            frames = [f for f in out if f is not None]
            return frames, (frames[-1]["seq"] if frames else after)

    def continue_from(self, next_seq: int) -> None:
        """Empty the live window and number the next frame ``next_seq`` (if that is higher),
        so that cursors stay monotone when a run resumes in a new worker."""
        with self._lock:
            self._next_seq = max(self._next_seq, next_seq)
            self._first_seq = self._next_seq
            self._ring = [None] * self.live_frames

    def latest(self) -> dict[str, Any] | None:
        """The newest frame, or None."""
        with self._lock:
            if self._next_seq == self._first_seq:
                return None
            return self._ring[(self._next_seq - 1) % self.live_frames]

    def history(self, max_points: int = 500, start: int | None = None,
                stop: int | None = None) -> dict[str, Any]:
        """Decimated scalar history over steps [start, stop] (default: the whole run), at most
        ``max_points`` bins per series, from the finest level that covers the range."""
        max_points = max(1, int(max_points))
        with self._lock:
            out: dict[str, Any] = {"t": self.t, "cursor": self._next_seq - 1, "level": None,
                                   "step": [], "loss": _empty(), "diagnostics": {},
                                   "alignment": None, "weight_norm": {}}
            lo = 0 if start is None else int(start)
            hi = self.t if stop is None else int(stop)
            out["test_loss"] = self._test_points(lo, hi)
            out["phases"] = [s for s in self._spans if s[1] > lo and s[0] <= hi][-2 * max_points:]
            out["events"] = [e for e in self._events if lo <= e[0] <= hi]
            if not self.series:
                return out
            level, rows = self._rows_covering(lo)
            rows = rows[(rows[:, _LAST] >= lo) & (rows[:, _FIRST] <= hi)]
            out["level"] = level
            self._rebin_into(out, rows, max_points)
            return out

    def _rows_covering(self, lo: int) -> tuple[int, np.ndarray]:
        """The rows of the finest level whose oldest retained step is <= lo (else the top),
        completed with the not-yet-merged rows of the levels below it."""
        for k in range(self.n_levels):
            rows = self._levels[k].rows()
            if k == self.n_levels - 1 or (len(rows) and rows[0, _FIRST] <= max(lo, 0)):
                parts = [rows]
                if self._levels[k].group > 1:
                    parts.append(self._levels[k].inbox)
                parts += [self._pending[j] for j in range(k - 1, -1, -1)]
                return k, np.concatenate(parts) if len(parts) > 1 else rows
        raise AssertionError("unreachable")

    def _rebin_into(self, out: dict[str, Any], rows: np.ndarray, max_points: int) -> None:
        if not len(rows):
            return
        if len(rows) > max_points:
            first, last = rows[0, _FIRST], rows[-1, _LAST]
            edges = np.linspace(first, last + 1, max_points + 1)[1:-1]
            idx = np.unique(np.concatenate([[0], np.searchsorted(rows[:, _LAST], edges)]))
            idx = idx[idx < len(rows)]
            merged = np.empty((len(idx), rows.shape[1]))
            merged[:, _LAST] = np.maximum.reduceat(rows[:, _LAST], idx)
            for j in range(len(self.series)):
                c = _HEAD + 4 * j
                merged[:, c] = np.add.reduceat(rows[:, c], idx)
                merged[:, c + 1] = np.add.reduceat(rows[:, c + 1], idx)
                merged[:, c + 2] = np.fmin.reduceat(rows[:, c + 2], idx)
                merged[:, c + 3] = np.fmax.reduceat(rows[:, c + 3], idx)
            rows = merged
        out["step"] = rows[:, _LAST].astype(np.int64).tolist()
        for j, name in enumerate(self.series):
            c = _HEAD + 4 * j
            weight = rows[:, c + 1]
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = np.where(weight > 0, rows[:, c] / np.where(weight > 0, weight, 1), np.nan)
            env = {"mean": _json(mean), "min": _json(rows[:, c + 2]), "max": _json(rows[:, c + 3])}
            if name == "loss":
                out["loss"] = env
            elif name == "alignment":
                out["alignment"] = env if (weight > 0).any() else None
            elif name.startswith(COMPARE):
                if out["alignment"] is not None and (weight > 0).any():
                    out["alignment"].setdefault("compare", {})[name[len(COMPARE):]] = env
            elif name.startswith("weight_norm."):
                out["weight_norm"][name[12:]] = env
            else:
                out["diagnostics"][name] = env

    def _test_points(self, lo: int, hi: int) -> dict[str, list]:
        points = [(s, v) for s, v in self._tests if lo <= s <= hi]
        means = []
        for _, values in points:
            finite = [x for x in values if x is not None and math.isfinite(x)]
            means.append(sum(finite) / len(finite) if finite else None)
        return {"step": [s for s, _ in points], "mean": means, "seeds": [v for _, v in points]}

    # ---- persistence -----------------------------------------------------------------------
    def snapshot(self) -> dict[str, np.ndarray]:
        """The history (not the live frames) as arrays for ``np.savez``; see :meth:`restore`."""
        with self._lock:
            meta = {"t": self.t, "next_seq": self._next_seq, "series": self.series,
                    "groups": [lv.group for lv in self._levels], "tests": self._tests,
                    "test_stride": self._test_stride, "test_seen": self._test_seen,
                    "spans": list(self._spans), "events": list(self._events), "bins": self.bins,
                    "levels": self.n_levels, "fan": self.fan}
            arrays = {"meta": np.array(json.dumps(meta))}
            for k, level in enumerate(self._levels):
                arrays[f"level{k}"] = level.rows().copy()
                arrays[f"inbox{k}"] = level.inbox.copy()
                arrays[f"pending{k}"] = self._pending[k].copy()
            return arrays

    @classmethod
    def restore(cls, arrays: Any, live_frames: int = 600, detail_frames: int = 100) -> FrameBuffer:
        """Rebuild from :meth:`snapshot` (an ``np.load`` result works); the live window starts
        empty and seqs continue after the saved ones, so cursors stay monotone."""
        meta = json.loads(str(arrays["meta"]))
        buf = cls(live_frames, detail_frames, meta["bins"], meta["levels"], meta["fan"],
                  first_seq=meta["next_seq"])
        buf.t = meta["t"]
        buf._tests = [(s, v) for s, v in meta["tests"]]
        buf._test_stride, buf._test_seen = meta["test_stride"], meta["test_seen"]
        buf._spans.extend(meta["spans"])
        buf._events.extend(meta.get("events") or [])
        if meta["series"]:
            buf.series = meta["series"]
            width = _HEAD + 4 * len(buf.series)
            buf._levels = [_Level(buf.bins, width, len(buf.series), k == buf.n_levels - 1)
                           for k in range(buf.n_levels)]
            for k, level in enumerate(buf._levels):
                rows = np.asarray(arrays[f"level{k}"], dtype=np.float64).reshape(-1, width)
                level.data[: len(rows)] = rows
                level.len = len(rows)
                level.group = meta["groups"][k]
                level.inbox = np.asarray(arrays[f"inbox{k}"], dtype=np.float64).reshape(-1, width)
            buf._pending = [np.asarray(arrays[f"pending{k}"], dtype=np.float64).reshape(-1, width)
                            for k in range(buf.n_levels)]
        return buf

    def nbytes(self) -> int:
        """Rough size of the history arrays (the frames themselves are not counted)."""
        return sum(lv.data.nbytes for lv in self._levels)


def strip_frame(frame: dict[str, Any]) -> dict[str, Any]:
    """A shallow copy without traces, task window and weight-change matrices, its binned
    series re-binned to at most STRIPPED_BINS (min/max envelopes kept exact)."""
    out = {k: v for k, v in frame.items() if k not in BULKY_KEYS}
    t0 = int(frame.get("t0", 0))
    for key in ("loss", "alignment"):
        if isinstance(out.get(key), dict):
            out[key] = _coarsen(out[key], t0)
    compared = _compared(frame)
    if compared and isinstance(out.get("alignment"), dict):
        out["alignment"] = {**out["alignment"], "compare": {
            rule: _coarsen(binned, t0) for rule, binned in frame["alignment"]["compare"].items()}}
    if isinstance(out.get("diagnostics"), dict):
        out["diagnostics"] = {k: _coarsen(v, t0) for k, v in out["diagnostics"].items()}
    changes = frame.get("weight_change")
    if isinstance(changes, dict):
        out["weight_change"] = {name: {k: v for k, v in entry.items() if k != "matrix"}
                                for name, entry in changes.items()}
    out["detail"] = False
    return out


def _coarsen(binned: Any, t0: int) -> Any:
    """Re-bin a frame's {"step", "mean", "min", "max"} to at most STRIPPED_BINS bins."""
    try:
        steps = np.asarray(binned["step"], dtype=np.float64)
        if len(steps) <= STRIPPED_BINS:
            return binned
        counts = np.diff(np.concatenate([[t0 - 1], steps]))
        mean = _as_array(binned["mean"])
        ok = np.isfinite(mean)
        idx = np.linspace(0, len(steps), STRIPPED_BINS + 1).astype(int)[:-1]
        weight = np.add.reduceat(np.where(ok, counts, 0.0), idx)
        total = np.add.reduceat(np.where(ok, mean * counts, 0.0), idx)
        with np.errstate(invalid="ignore", divide="ignore"):
            means = np.where(weight > 0, total / np.where(weight > 0, weight, 1), np.nan)
        return {"step": np.maximum.reduceat(steps, idx).astype(np.int64).tolist(),
                "mean": _json(means),
                "min": _json(np.fmin.reduceat(_as_array(binned["min"]), idx)),
                "max": _json(np.fmax.reduceat(_as_array(binned["max"]), idx))}
    except (KeyError, TypeError, ValueError):
        return binned


def _compared(frame: dict[str, Any]) -> list[str]:
    """The comparison rules of a frame's alignment (RunConfig.compare), in order."""
    alignment = frame.get("alignment")
    compared = alignment.get("compare") if isinstance(alignment, dict) else None
    return list(compared) if isinstance(compared, dict) else []


def _json(a: np.ndarray) -> list[float | None]:
    """Floats with NaN/inf as None (valid JSON)."""
    return [x if math.isfinite(x) else None for x in a.tolist()]


def _empty() -> dict[str, list]:
    return {"mean": [], "min": [], "max": []}
