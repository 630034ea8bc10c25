"""The "narrate" pace: the chosen base pace, slowed to NARRATE_SLOW steps/s around events a
class should see happen (issue 12: paced for teaching).

An event is
- a phase switch, known ahead from the phase schedule: the NARRATE_N steps before it and the
  NARRATE_N steps after it are slow (the class sees it coming and sees what it changes); with
  phases shorter than 4 x NARRATE_N steps, a quarter of the shortest phase on each side
  (100-step phases: 25 steps), so half of every phase still runs at the base pace (phases
  under 4 steps are not narrated: a switch every step or two is a blur either way);
- a learning-rate or phase-schedule change made mid-run, at the step it took effect: the
  NARRATE_N steps after it are slow (it cannot be seen coming).

Pure functions; the worker (app/service/worker.py) asks ``narrate_chunk`` how many steps its
next live chunk takes and at what rate it is due.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from simulator.phases import Schedule

#: steps slowed on each side of a phase switch and after a setting change
NARRATE_N = 50
#: steps/s around events
NARRATE_SLOW = 10.0
#: the base pace narrate runs at when none is chosen (the dashboard's default speed)
NARRATE_BASE = 100.0
#: setting changes remembered per run (older ones are long past their window)
MAX_EVENTS = 32


def next_switch(schedule: Schedule | None, step: int) -> int | None:
    """The first step at or after ``step`` at which a new phase begins (step 0, the run's
    start, is none); None for a one-phase schedule. O(log phases)."""
    if schedule is None or len(schedule.phases) < 2:
        return None
    starts, total = [], 0
    for phase in schedule.phases:
        starts.append(total)
        total += phase.steps
    step = max(step, 1)
    cycle, offset = divmod(step, total)
    i = bisect.bisect_left(starts, offset)
    return cycle * total + starts[i] if i < len(starts) else (cycle + 1) * total


def switch_window(schedule: Schedule | None, n: int = NARRATE_N) -> int:
    """Steps slowed on each side of a phase switch: ``n``, at most a quarter of the shortest
    phase."""
    if schedule is None or len(schedule.phases) < 2:
        return 0
    return min(n, min(p.steps for p in schedule.phases) // 4)


def rate_at(step: int, schedule: Schedule | None, events: Sequence[int],
            base: float = NARRATE_BASE, *, n: int = NARRATE_N,
            slow: float = NARRATE_SLOW) -> float:
    """Steps/s for ``step``: ``slow`` (never above ``base``) within w = switch_window(schedule,
    n) steps of a phase switch s (s - w <= step < s + w) or in the ``n`` steps from a setting
    change e (e <= step < e + n); ``base`` otherwise."""
    w = switch_window(schedule, n)
    switch = next_switch(schedule, step - w + 1) if w else None
    near = switch is not None and switch <= step + w
    near = near or any(e <= step < e + n for e in events)
    return min(base, slow) if near else base


def narrate_chunk(step: int, schedule: Schedule | None, events: Sequence[int], base: float,
                  frame_rate: float, left: int | None = None) -> tuple[int, float]:
    """(steps, rate) of the next live chunk from ``step``: a frame's worth of steps at the
    rate there, cut where the rate changes, so a slow window starts and ends on time."""
    rate = rate_at(step, schedule, events, base)
    k = max(1, round(rate / frame_rate))
    if left is not None:
        k = max(1, min(k, left))
    for j in range(1, k):
        if rate_at(step + j, schedule, events, base) != rate:
            return j, rate
    return k, rate


def ema_rate(rate: float, steps: int, seconds: float, weight: float = 0.3) -> float:
    """The steps/s estimate after a chunk of ``steps`` that took ``seconds`` (an EMA)."""
    return (1 - weight) * rate + weight * steps / max(seconds, 1e-6)


def frame_due(due: float | None, now: float, frame_rate: float) -> float:
    """When the next frame (or paced chunk) is due: one period after the last one's due time
    (a schedule more than half a second behind, e.g. after a pause, restarts from now)."""
    start = due if due is not None and due > now - 0.5 else now
    return start + 1.0 / frame_rate


def max_speed_chunk(busy_rate: float, seconds: float, cap: int, floor: float = 0.0) -> int:
    """Steps of the next live chunk at max speed: what fits in the ``seconds`` until its
    frame is due (frame_due) at ``busy_rate``, which counts a chunk's whole busy time (the
    steps, then its rows and frame). From the steps' time alone, each frame's own work would
    push every chunk past its period (8.9 frames/s instead of 10 for dni-b at n = 32); from
    a fixed 1/frame_rate, a worker slowed now and then (by the browser beside it) would fall
    behind for good. On a schedule, a late frame makes the next chunk shorter, by half at
    most (``floor``, a fraction of the period), so catching up never floods the viewers."""
    return max(1, min(cap, round(busy_rate * max(seconds, floor))))


def remember(events: list[int], step: int) -> list[int]:
    """``events`` with a setting change at ``step`` (the last MAX_EVENTS)."""
    return [*events, int(step)][-MAX_EVENTS:]


__all__ = ["NARRATE_BASE", "NARRATE_N", "NARRATE_SLOW", "ema_rate", "max_speed_chunk",
           "narrate_chunk", "next_switch", "rate_at", "remember", "switch_window"]
