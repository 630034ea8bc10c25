"""Max speed delivers frames at the frame rate (issue 12 item 6: a panel can only update as
often as frames come): each chunk's steps are sized from the chunk's whole busy time (the
steps, then its CSV rows and frame), not from the steps alone."""

from __future__ import annotations

import pytest

from app.service.pacing import ema_rate, max_speed_chunk


def frames_per_s(step_s: float, frame_s: float, frame_rate: float, *, busy: bool,
                 chunks: int = 200) -> float:
    """Frames/s of the worker's max-speed loop in a model: a chunk of k steps takes
    k * step_s to compute, then frame_s for its rows and frame."""
    rate = busy_rate = 2000.0
    k = 1
    for _ in range(chunks):
        k = max_speed_chunk(busy_rate if busy else rate, frame_rate, 100_000)
        rate = ema_rate(rate, k, k * step_s)
        busy_rate = ema_rate(busy_rate, k, k * step_s + frame_s)
    return 1.0 / (k * step_s + frame_s)


@pytest.mark.parametrize("step_s, frame_s", [(1 / 27_000, 0.012), (1 / 3_000, 0.025),
                                             (1 / 200, 0.004)])
def test_frames_come_at_the_frame_rate_however_long_a_frame_takes(step_s: float,
                                                                  frame_s: float) -> None:
    assert frames_per_s(step_s, frame_s, 10.0, busy=True) == pytest.approx(10.0, rel=0.03)


def test_sizing_chunks_from_the_steps_alone_falls_short_of_the_frame_rate() -> None:
    # the defect: dni-b at n = 32 made 8.9 frames/s at max speed, so no panel could reach 9
    assert frames_per_s(1 / 27_000, 0.012, 10.0, busy=False) < 9.0


def test_a_chunk_is_at_least_one_step_and_at_most_the_cap() -> None:
    assert max_speed_chunk(0.5, 10.0, 100) == 1
    assert max_speed_chunk(1e9, 10.0, 100) == 100
