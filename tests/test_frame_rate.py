"""Max speed delivers frames at the frame rate (issue 12 item 6: a panel can only update as
often as frames come): each chunk's steps are what fits until its frame is due on a schedule,
at a rate that counts the chunk's whole busy time (the steps, then its rows and frame)."""

from __future__ import annotations

import random

import pytest

from app.service.pacing import ema_rate, frame_due, max_speed_chunk

FRAME_RATE = 10.0


def frames_per_s(step_s: float, frame_s: float, *, busy: bool, schedule: bool,
                 jitter: float = 0.0, chunks: int = 400) -> float:
    """Frames/s of the worker's max-speed loop in a model: a chunk of k steps takes
    k * step_s (times a random slowdown up to ``jitter``: the browser beside it) to compute,
    then frame_s for its rows and frame. ``busy``: the rate counts the frame work too;
    ``schedule``: chunks aim at due times, else at a fixed 1/frame_rate."""
    rng = random.Random(0)
    rate = busy_rate = 2000.0
    now, due, start = 0.0, None, 0.0
    for i in range(chunks):
        if i == 50:
            start = now  # after the estimates settle
        rate_now = busy_rate if busy else rate
        if schedule:
            due = frame_due(due, now, FRAME_RATE)
            k = max_speed_chunk(rate_now, due - now, 100_000, floor=0.5 / FRAME_RATE)
        else:
            k = max_speed_chunk(rate_now, 1.0 / FRAME_RATE, 100_000)
        compute = k * step_s * (1.0 + jitter * rng.random())
        rate = ema_rate(rate, k, compute)
        busy_rate = ema_rate(busy_rate, k, compute + frame_s)
        now += compute + frame_s
    return (chunks - 50) / (now - start)


@pytest.mark.parametrize("step_s, frame_s", [(1 / 27_000, 0.012), (1 / 3_000, 0.025),
                                             (1 / 200, 0.004)])
@pytest.mark.parametrize("jitter", [0.0, 0.6])
def test_frames_come_at_the_frame_rate_however_long_a_frame_takes(step_s: float,
                                                                  frame_s: float,
                                                                  jitter: float) -> None:
    got = frames_per_s(step_s, frame_s, busy=True, schedule=True, jitter=jitter)
    assert got == pytest.approx(FRAME_RATE, rel=0.03)


def test_sizing_chunks_from_the_steps_alone_falls_short_of_the_frame_rate() -> None:
    # the defect: dni-b at n = 32 made 8.9 frames/s at max speed, so no panel could reach 9
    assert frames_per_s(1 / 27_000, 0.012, busy=False, schedule=False) < 9.0


def test_a_late_frame_shortens_the_next_chunk_by_half_at_most() -> None:
    assert max_speed_chunk(10_000.0, -0.3, 100_000, floor=0.05) == 500
    assert max_speed_chunk(0.5, 0.1, 100) == 1
    assert max_speed_chunk(1e9, 0.1, 100) == 100
    assert frame_due(None, 5.0, FRAME_RATE) == pytest.approx(5.1)
    assert frame_due(5.1, 5.12, FRAME_RATE) == pytest.approx(5.2)  # on schedule
    assert frame_due(3.0, 5.0, FRAME_RATE) == pytest.approx(5.1)  # long behind: from now
