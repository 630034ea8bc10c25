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


def _dni(**args: str) -> dict:
    return {"rule": "dni", "rule_args": {"feedback": "symmetric", "jacobian": "exact", **args},
            "lr": 0.001, "n": 32, "alpha": 1.0, "seeds": [0], "task_args": {"t1": 5},
            "phases": "all"}


def test_runs_are_named_by_what_differs() -> None:
    from app.dashboard.names import run_names

    walk = [_dni(), _dni(feedback="random"), _dni(feedback="random", jacobian="learned"),
            {**_dni(), "rule": "dni-b", "rule_args": {}}]
    assert run_names(walk, ["a1", "b2", "c3", "d4"]) == [
        "dni", "dni · random fb", "dni · random fb · learned J̃", "dni-b"]
    assert run_names([{**walk[3], "lr": 0.003}, walk[3]]) == ["dni-b · lr 3e-3",
                                                               "dni-b · lr 1e-3"]
    assert run_names([_dni(), {**_dni(), "phases": "a=apical:10,b=basal:10"}]) == [
        "dni · no phases", "dni · phases"]
    # the same setup twice: told apart by the short id
    assert run_names([_dni(), _dni()], ["run-aaaa", "run-bbbb"]) == ["dni #aaaa", "dni #bbbb"]
    assert run_names([{**_dni(), "seeds": [0, 1, 2]}, _dni()])[0] == "dni · seeds 0-2"


def test_the_voltage_panel_says_when_it_caps_the_units_per_run() -> None:
    from app.dashboard import figures

    def view(rules: list[str], units: list[int]) -> dict:
        runs = [figures.make_run_view({"id": f"r{i}", "config": {"rule": r, "n": 32}}, "#000")
                for i, r in enumerate(rules)]
        return figures.make_view(runs, epoch=1, units=units)

    capped = figures.voltage_figure(view(["dni", "dni-b", "bptt"], [0, 1, 2]))
    notes = [a["text"] for a in capped["layout"]["annotations"] if a.get("name") == "cap"]
    assert notes == ["showing 1 of 3 units per run (at most 4 lines)"]
    whole = figures.voltage_figure(view(["dni"], [0, 1, 2]))
    assert not [a for a in whole["layout"]["annotations"] if a.get("name") == "cap"]
    assert len(whole["data"]) == 9  # 3 units x V, U, r
