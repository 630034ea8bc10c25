"""Issue 12, the pure half: pacing, presets, run names, loss axis, validation, divergence."""

from __future__ import annotations

from app.dashboard import layout, presets, urlstate
from simulator.rules import RULES


def test_paced_by_default_and_the_speed_travels_in_the_url() -> None:
    assert layout.SPEEDS[layout.DEFAULT_SPEED] == 100
    setup = urlstate.default_setup()
    assert "speed" not in urlstate.encode(setup)  # the default stays out of the link
    query = urlstate.encode({**setup, "speed": 0})
    assert "speed=max" in query
    assert urlstate.decode(query)[0]["speed"] == 0
    assert urlstate.decode("speed=300")[0]["speed"] == 300
    assert urlstate.decode("speed=250")[0]["speed"] == 300  # snapped to the nearest choice
    assert urlstate.decode("speed=fast")[0]["speed"] == 100


def test_all_rules_race_says_how_many_of_how_many_it_runs() -> None:
    race = presets.preset_by_id("race", max_runs=4)
    assert race is not None and len(race["setup"]["rules"]) == 4
    assert race["note"] == f"All rules race: 4 of {len(RULES)} (limit 4): pick which in Rules"
    assert presets.preset_by_id("race", max_runs=None)["note"] == ""
