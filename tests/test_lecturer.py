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


def _loss_view(target: int = 20000, phase_steps: tuple[int, ...] = (), refs: dict | None = None,
               phase_names: tuple[str, ...] = ()) -> dict:
    from app.dashboard import figures

    run = figures.make_run_view({"id": "r1", "config": {"rule": "dni-b", "n": 32,
                                                        "steps": target}}, "#000")
    return figures.make_view([run], epoch=1, refs=refs or {}, phase_steps=phase_steps,
                             phase_names=phase_names)


def test_the_log_loss_axis_has_decimal_ticks_and_reference_labels_sit_outside_the_plot() -> None:
    from app.dashboard import figures

    fig = figures.loss_figure(_loss_view(refs={"nothing learned": 0.66, "t1 learned": 0.52,
                                               "optimum": 0.45}))
    y = fig["layout"]["yaxis"]
    assert y["type"] == "log" and y["tickmode"] == "array"
    labels = dict(zip(y["tickvals"], y["ticktext"], strict=True))
    assert labels[0.7] == "0.7" and labels[0.5] == "0.5" and labels[1.0] == "1"
    # the reference labels are the tick labels of a right-hand axis: in the right margin
    refs = fig["layout"]["yaxis2"]
    assert refs["side"] == "right" and refs.get("ticklabelposition", "outside") == "outside"
    assert len(refs["tickvals"]) == 3 and refs["matches"] == "y"
    assert fig["layout"]["margin"]["r"] >= figures.REF_MARGIN  # room for them
    assert "nothing learned 0.66" in refs["ticktext"]


def test_short_phases_over_a_long_run_are_a_thin_strip_not_hatching() -> None:
    from app.dashboard import figures

    names = ("a", "b")
    hatching = _loss_view(20000 * 3, (100, 100), phase_names=names)  # 1.3 px stripes
    shade = figures.loss_figure(hatching)["layout"]["meta"]["shade"]
    assert shade["y1"] - shade["y0"] == figures.STRIP
    wide = _loss_view(20000, (2000, 2000), phase_names=names)  # 80 px stripes
    assert figures.loss_figure(wide)["layout"]["meta"]["shade"] == {"xref": "x", "y0": 0.0,
                                                                     "y1": 1.0}
    # the scrolling windows keep full-height stripes (200 steps wide)
    assert figures.voltage_figure(hatching)["layout"]["meta"]["shade"]["y1"] == 1.0


def test_weights_past_the_bound_are_diverged_not_finished() -> None:
    """Apical weights at 2e5 with a finite loss were reported "finished"; now any rule's
    run whose weights pass the bound is "diverged at step N"."""
    import torch

    from simulator.config import RunConfig
    from simulator.engine import WEIGHT_BOUND, Run

    run = Run(RunConfig(task="add", rule="dni", n=8, seeds=[0], steps=100, dtype="float64"))
    run.advance(5)
    assert run.status == "running"
    with torch.no_grad():
        run.populations()["apical"].fill_(2e5)
    tel = run.advance(5)
    assert tel.diverged_at == 9
    assert bool(torch.isfinite(tel.loss).all())  # the loss alone would not have said so
    assert run.status.startswith("diverged at step 9: the apical weights reached |w| = ")
    assert float(run.status.split("|w| = ")[1].split()[0]) > WEIGHT_BOUND
    assert f"bound {WEIGHT_BOUND:g}" in run.status
    rtrl = Run(RunConfig(task="add", rule="rtrl", n=8, seeds=[0], steps=100, dtype="float64"))
    with torch.no_grad():
        rtrl.populations()["basal"][0, 0, 0] = float("inf")
    assert rtrl.advance(3).diverged_at is not None


def test_zero_steps_is_refused_with_a_message() -> None:
    setup = {**urlstate.default_setup(), "steps": "0"}
    assert urlstate.validate(setup)["steps"] == "got '0'; allowed: an integer in [1, 1e+09]"


def test_phase_steps_below_one_get_a_message_even_in_a_single_all_row() -> None:
    from app.dashboard.callbacks import phase_row_error

    assert phase_row_error([{"name": "all", "steps": "100"}]) == ""
    assert phase_row_error([{"name": "all", "steps": "0"}]) == (
        "phase 1 steps: got '0'; allowed: an integer in [1, 1e9]")
    assert phase_row_error([{"steps": "5"}, {"steps": ""}]).startswith("phase 2 steps: got ''")


def test_large_n_warns_and_suggests_an_apical_rate_for_dni() -> None:
    from app.dashboard.callbacks import large_n_advice

    assert large_n_advice({**urlstate.default_setup(), "n": "64"}) == ""
    advice = large_n_advice({**urlstate.default_setup(), "n": "4000", "rules": ["dni", "bptt"]})
    assert advice == ("n = 4,000 is large: each step is slow and the default rates may "
                      "diverge; try dni: lr_apical ≈ 4e-4 (now 0.05; its step grows with n)")


def test_stale_transport_messages_are_recognised() -> None:
    from app.dashboard.callbacks import stale_message

    running = [{"status": "running", "step": 5000}]
    assert not stale_message("fast-forwarding to step 12,000", running)
    assert stale_message("fast-forwarding to step 12,000", [{"status": "running",
                                                             "step": 12000}])
    assert stale_message("fast-forwarding to step 12,000", [{"status": "stopped", "step": 9}])
    assert stale_message("ready at step 0: ▶ to play", running)
    assert not stale_message("max_runs: 4 runs are active", running)


def test_exports_are_named_by_run_and_panel_at_2x_without_cloud_buttons(tmp_path) -> None:
    import io
    import zipfile

    from app.dashboard.export import export_name, image_config, zip_files

    assert export_name("dni · random fb · learned J̃", "ab12cd34", "csv") == (
        "plasticity-dni_random-fb_learned-J-ab12cd34.csv")
    assert export_name("dni-b · lr 3e-3", "ab12", "png", "loss") == (
        "plasticity-loss-dni-b_lr-3e-3-ab12.png")
    config = image_config("loss", ["dni-b · lr 3e-3"], ["ab12"])
    assert config["toImageButtonOptions"] == {"format": "png", "scale": 2,
                                              "filename": "plasticity-loss-dni-b_lr-3e-3-ab12"}
    assert config["showSendToCloud"] is False and config["showEditInChartStudio"] is False
    assert image_config("task", ["a", "b"], ["1", "2"])["toImageButtonOptions"]["filename"] == (
        "plasticity-task-2-runs")
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text("step,loss\n0,1\n")
    b.write_text("step,loss\n0,2\n")
    with zipfile.ZipFile(io.BytesIO(zip_files({"x.csv": a, "y.csv": b}))) as zf:
        assert zf.namelist() == ["x.csv", "y.csv"]
        assert zf.read("y.csv") == b"step,loss\n0,2\n"


def test_the_heatmap_shows_the_picked_run_titled_with_its_name() -> None:
    from app.dashboard import figures

    runs = [figures.make_run_view({"id": rid, "config": {"rule": r, "n": 8}}, color, name=r)
            for rid, r, color in (("a", "dni", "#111111"), ("b", "dni-b", "#222222"))]
    first = figures.weight_figure(figures.make_view(runs, epoch=1))
    picked = figures.weight_figure(figures.make_view(runs, epoch=1, heat_run="b"))

    def title(fig: dict) -> dict:
        return fig["layout"]["xaxis"]["title"]  # the heatmap's (top) axis title

    assert title(first)["text"] == "<b>ΔW of dni</b>"
    assert title(picked)["text"] == "<b>ΔW of dni-b</b>"
    assert title(picked)["font"]["color"] == "#222222"
    assert figures.focus_run(figures.make_view(runs, epoch=1, heat_run="gone"))["id"] == "a"
