"""The Experiments page's pure functions (app.dashboard.experiment_figures): the 95% t-band
against hand-computed values (float64), grouping for each view, and the figures' traces."""

from __future__ import annotations

import math

import pytest

from app.dashboard import experiment_figures as xf

AXES = ["rule", "lr"]


def _rows() -> list[dict[str, str]]:
    """2 rules x 2 rates x 3 seeds; member m = 2 * rule + lr index; loss = 0.5 + m/10 + seed/100;
    member 3's seed 2 diverged (nan)."""
    rows = []
    for m, (rule, lr) in enumerate([("dni", "0.001"), ("dni", "0.003"), ("dni-b", "0.001"),
                                    ("dni-b", "0.003")]):
        for seed in range(3):
            bad = m == 3 and seed == 2
            rows.append({"member": str(m), "rule": rule, "lr": lr, "seed": str(seed),
                         "final_test_loss": "nan" if bad else repr(0.5 + m / 10 + seed / 100),
                         "train_loss_last": repr(0.6 + m / 10),
                         "status": "diverged at step 7" if bad else "finished"})
    return rows


def _series() -> list[dict[str, str]]:
    return [{"member": str(m), "seed": str(s), "step": str(step), "name": name,
             "value": repr(1.0 / step + m + s)}
            for m in range(4) for s in range(3) for step in (100, 200)
            for name in ("test_loss", "train_loss")]


def test_mean_band_is_the_t_interval() -> None:
    # values 1, 2, 4: mean 7/3, sd = sqrt(((4/3)^2 + (1/3)^2 + (5/3)^2) / 2) = sqrt(7/3);
    # Student's t with 2 degrees of freedom has the closed form quantile
    # t_p = (2p - 1) sqrt(2 / (4 p (1 - p))): t(0.975, 2) = 0.95 sqrt(2 / 0.0975)
    band = xf.mean_band([1.0, 2.0, 4.0])
    half = 0.95 * math.sqrt(2 / 0.0975) * math.sqrt(7 / 3) / math.sqrt(3)
    assert band["mean"] == pytest.approx(7 / 3, abs=1e-15)
    assert band["lo"] == pytest.approx(7 / 3 - half, abs=1e-12)
    assert band["hi"] == pytest.approx(7 / 3 + half, abs=1e-12)
    assert (band["n"], band["nonfinite"]) == (3, 0)
    one = xf.mean_band([0.5, math.nan])
    assert (one["mean"], one["lo"], one["hi"], one["n"], one["nonfinite"]) == (0.5, 0.5, 0.5, 1, 1)
    none = xf.mean_band([math.inf])
    assert math.isnan(none["mean"]) and none["n"] == 0


def test_curve_stats_group_by_member_and_step() -> None:
    stats = xf.curve_stats(_series(), _rows(), AXES, "test_loss")
    assert len(stats) == 4 * 2
    first = stats[0]
    assert (first["member"], first["setting"], first["step"], first["n"]) == (
        0, "rule=dni, lr=0.001", 100, 3)
    assert first["mean"] == pytest.approx(0.01 + 1.0, abs=1e-14)  # 1/100 + mean(0, 1, 2)
    fig = xf.curves_figure(stats, {"optimum": 0.45})
    assert len(fig.data) == 8  # a band and a mean line per setting
    assert [t.name for t in fig.data if t.showlegend is not False] == [
        "rule=dni, lr=0.001", "rule=dni, lr=0.003", "rule=dni-b, lr=0.001",
        "rule=dni-b, lr=0.003"]
    assert fig.layout.shapes[0].y0 == 0.45


def test_final_stats_one_line_per_rule_with_the_diverged_seed_left_out() -> None:
    stats = xf.final_stats(_rows(), AXES, "lr")
    assert [(s["line"], s["lr"], s["n"], s["nonfinite"]) for s in stats] == [
        ("rule=dni", "0.001", 3, 0), ("rule=dni", "0.003", 3, 0),
        ("rule=dni-b", "0.001", 3, 0), ("rule=dni-b", "0.003", 2, 1)]
    assert stats[3]["mean"] == pytest.approx(0.5 + 0.3 + 0.005, abs=1e-14)
    fig = xf.final_figure(stats, "lr", {"t1": 0.52})
    lines = [t for t in fig.data if t.mode == "lines+markers"]
    assert [t.name for t in lines] == ["rule=dni", "rule=dni-b"]
    assert list(lines[0].x) == [0.001, 0.003]
    assert list(lines[0].error_y.array) == pytest.approx(
        [stats[0]["hi"] - stats[0]["mean"], stats[1]["hi"] - stats[1]["mean"]], abs=1e-15)


def test_heatmap_cells_are_means_over_seeds() -> None:
    stats = xf.heatmap_stats(_rows(), "rule", "lr")
    fig = xf.heatmap_figure(stats, "rule", "lr")
    heat = fig.data[0]
    assert list(heat.x) == ["dni", "dni-b"] and list(heat.y) == ["0.001", "0.003"]
    assert heat.z[0][0] == pytest.approx(0.51, abs=1e-14)  # member 0: 0.5 + mean seed/100
    assert heat.z[1][1] == pytest.approx(0.805, abs=1e-14)  # member 3, two finite seeds


def test_member_summary_and_csv() -> None:
    summary = xf.member_summary(_rows(), AXES)
    assert [(s["member"], s["rule"], s["lr"], s["seeds"], s["diverged"]) for s in summary] == [
        (0, "dni", "0.001", 3, 0), (1, "dni", "0.003", 3, 0), (2, "dni-b", "0.001", 3, 0),
        (3, "dni-b", "0.003", 3, 1)]
    text = xf.to_csv(xf.final_stats(_rows(), AXES, "lr"))
    header, first = text.splitlines()[:2]
    assert header == "line,lr,mean,lo,hi,n,nonfinite"
    assert float(first.split(",")[2]) == pytest.approx(0.51, abs=1e-15)
