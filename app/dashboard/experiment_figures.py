"""Pure functions from an experiment's tables (results.csv, series.csv) to summaries and Plotly
figures for the Experiments page: no Dash, no service, no I/O.

Bands are 95% confidence intervals of the mean over seeds, t-based:
``mean +- t(0.975, k-1) * sd / sqrt(k)`` over the k seeds whose value is finite (a diverged
seed is left out and counted); with one seed there is no band.

    rows = parse_csv(results_text)
    stats = curve_stats(parse_csv(series_text), rows, axes, "test_loss")
    fig = curves_figure(stats, refs)                   # one line per setting, band over seeds
    fig = final_figure(final_stats(rows, axes, "lr"), "lr", refs)   # one line per rule
    fig = heatmap_figure(heatmap_stats(rows, axes, "lr", "rule_args.lr_apical"), ...)
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Sequence
from typing import Any

import plotly.graph_objects as go

VALUE = "final_test_loss"
#: Plotly's toImage at slide resolution: 1280 x 720 at scale 2 (2560 x 1440 pixels)
EXPORT = {"width": 1280, "height": 720, "scale": 2}
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b",
           "#e377c2", "#7f7f7f", "#bcbd22")


def parse_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
    """Rows (dicts with the same keys) as CSV text, floats in full precision."""
    if not rows:
        return ""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: repr(v) if isinstance(v, float) else v for k, v in row.items()})
    return out.getvalue()


def number(text: Any) -> float:
    """A CSV cell as float64 (nan for empty, "nan" or text)."""
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def t_quantile(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(0.975, df))


def mean_band(values: Iterable[float]) -> dict[str, Any]:
    """Mean, 95% t-interval (lo, hi), the number of finite values and of non-finite ones."""
    values = list(values)
    finite = [v for v in values if math.isfinite(v)]
    bad = len(values) - len(finite)
    k = len(finite)
    if k == 0:
        return {"mean": math.nan, "lo": math.nan, "hi": math.nan, "n": 0, "nonfinite": bad}
    mean = math.fsum(finite) / k
    if k == 1:
        return {"mean": mean, "lo": mean, "hi": mean, "n": 1, "nonfinite": bad}
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in finite) / (k - 1))
    half = t_quantile(k - 1) * sd / math.sqrt(k)
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "n": k, "nonfinite": bad}


def _sort_key(value: str) -> tuple[int, float, str]:
    x = number(value)
    return (0, x, "") if math.isfinite(x) else (1, 0.0, value)


def label(row: dict[str, str], axes: Sequence[str]) -> str:
    """A setting's name from its axis values: ``rule=dni-b, lr=0.001``."""
    return ", ".join(f"{a}={row[a]}" for a in axes) or "all"


def members(rows: Sequence[dict[str, str]], axes: Sequence[str]) -> dict[int, dict[str, str]]:
    """Member index -> its axis values (from results rows)."""
    return {int(r["member"]): {a: r[a] for a in axes} for r in rows}


def curve_stats(series: Sequence[dict[str, str]], rows: Sequence[dict[str, str]],
                axes: Sequence[str], name: str = "test_loss") -> list[dict[str, Any]]:
    """Per member and step: mean and 95% band over seeds of the series ``name``."""
    values = members(rows, axes)
    groups: dict[tuple[int, int], list[float]] = {}
    for r in series:
        if r["name"] == name:
            groups.setdefault((int(r["member"]), int(r["step"])), []).append(number(r["value"]))
    out = []
    for (member, step), vals in sorted(groups.items()):
        if member in values:
            out.append({"member": member, "setting": label(values[member], axes), "step": step,
                        **mean_band(vals)})
    return out


def _band(x: list[Any], lo: list[float], hi: list[float], color: str, group: str) -> go.Scatter:
    return go.Scatter(x=[*x, *x[::-1]], y=[*hi, *lo[::-1]], fill="toself", mode="lines",
                      line={"width": 0}, fillcolor=_alpha(color, 0.18), hoverinfo="skip",
                      showlegend=False, legendgroup=group)


def _alpha(color: str, a: float) -> str:
    r, g, b = (int(color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{a})"


def _refs(fig: go.Figure, refs: dict[str, float]) -> None:
    for i, (name, level) in enumerate(refs.items()):
        fig.add_hline(y=level, line={"dash": "dash", "color": "#888", "width": 1},
                      annotation_text=f"{name} ({level:.3f})", annotation_position=(
                          "top left" if i % 2 == 0 else "bottom left"),
                      annotation_font_size=11)


def _layout(fig: go.Figure, title: str, x: str, y: str) -> go.Figure:
    fig.update_layout(title={"text": title, "x": 0.01}, xaxis_title=x, yaxis_title=y,
                      template="plotly_white", margin={"l": 60, "r": 20, "t": 50, "b": 50},
                      legend={"font": {"size": 11}}, hovermode="closest")
    return fig


def curves_figure(stats: Sequence[dict[str, Any]], refs: dict[str, float] | None = None,
                  name: str = "test_loss") -> go.Figure:
    """Learning curves: one line per setting (mean over seeds), its 95% band shaded."""
    fig = go.Figure()
    settings: dict[str, list[dict[str, Any]]] = {}
    for s in stats:
        settings.setdefault(s["setting"], []).append(s)
    for i, (setting, points) in enumerate(settings.items()):
        color = PALETTE[i % len(PALETTE)]
        x = [p["step"] for p in points]
        fig.add_trace(_band(x, [p["lo"] for p in points], [p["hi"] for p in points], color,
                            setting))
        fig.add_trace(go.Scatter(x=x, y=[p["mean"] for p in points], mode="lines+markers",
                                 name=setting, legendgroup=setting, line={"color": color},
                                 customdata=[[p["n"], p["lo"], p["hi"]] for p in points],
                                 hovertemplate="%{y:.4f} (95% CI %{customdata[1]:.4f} to "
                                               "%{customdata[2]:.4f}, %{customdata[0]} seeds)"
                                               "<extra>" + setting + "</extra>"))
    _refs(fig, refs or {})
    return _layout(fig, f"{name.replace('_', ' ')}: mean over seeds, 95% t-band", "step", name)


def final_stats(rows: Sequence[dict[str, str]], axes: Sequence[str], x_axis: str,
                value: str = VALUE) -> list[dict[str, Any]]:
    """Per line (the other axes' values: one line per rule when rule is the other axis) and
    x value: mean and 95% band of ``value`` over seeds."""
    others = [a for a in axes if a != x_axis]
    groups: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        groups.setdefault((label(r, others), r[x_axis]), []).append(number(r[value]))
    out = []
    for (line, x), vals in sorted(groups.items(), key=lambda kv: (kv[0][0], _sort_key(kv[0][1]))):
        out.append({"line": line, x_axis: x, **mean_band(vals)})
    return out


def final_figure(stats: Sequence[dict[str, Any]], x_axis: str,
                 refs: dict[str, float] | None = None, value: str = VALUE) -> go.Figure:
    """Final loss against an axis: one line per rule (per setting of the other axes), bands
    and error bars over seeds, the task's reference levels dashed."""
    fig = go.Figure()
    lines: dict[str, list[dict[str, Any]]] = {}
    for s in stats:
        lines.setdefault(s["line"], []).append(s)
    numeric = all(math.isfinite(number(s[x_axis])) for s in stats)
    for i, (line, points) in enumerate(lines.items()):
        color = PALETTE[i % len(PALETTE)]
        x = [number(p[x_axis]) if numeric else p[x_axis] for p in points]
        if numeric:
            fig.add_trace(_band(x, [p["lo"] for p in points], [p["hi"] for p in points], color,
                                line))
        fig.add_trace(go.Scatter(
            x=x, y=[p["mean"] for p in points], mode="lines+markers", name=line,
            legendgroup=line, line={"color": color},
            error_y={"type": "data", "symmetric": False, "color": color,
                     "array": [p["hi"] - p["mean"] for p in points],
                     "arrayminus": [p["mean"] - p["lo"] for p in points]}))
    _refs(fig, refs or {})
    if numeric and len({s[x_axis] for s in stats}) > 2:
        xs = [number(s[x_axis]) for s in stats]
        if min(xs) > 0 and max(xs) / min(xs) >= 20:
            fig.update_xaxes(type="log")
    return _layout(fig, f"{value.replace('_', ' ')} against {x_axis} (mean, 95% t-band)",
                   x_axis, value)


def heatmap_stats(rows: Sequence[dict[str, str]], x_axis: str, y_axis: str,
                  value: str = VALUE) -> list[dict[str, Any]]:
    """Per (x, y) cell: mean and band of ``value`` over seeds and the remaining axes."""
    groups: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        groups.setdefault((r[x_axis], r[y_axis]), []).append(number(r[value]))
    return [{x_axis: x, y_axis: y, **mean_band(vals)} for (x, y), vals in sorted(
        groups.items(), key=lambda kv: (_sort_key(kv[0][1]), _sort_key(kv[0][0])))]


def heatmap_figure(stats: Sequence[dict[str, Any]], x_axis: str, y_axis: str,
                   value: str = VALUE) -> go.Figure:
    """Mean ``value`` over seeds per cell of two axes (text: the mean)."""
    xs = sorted({s[x_axis] for s in stats}, key=_sort_key)
    ys = sorted({s[y_axis] for s in stats}, key=_sort_key)
    cell = {(s[x_axis], s[y_axis]): s for s in stats}
    z = [[cell[(x, y)]["mean"] if (x, y) in cell else None for x in xs] for y in ys]
    text = [[f"{v:.4f}" if v is not None and math.isfinite(v) else "" for v in row] for row in z]
    fig = go.Figure(go.Heatmap(x=[str(x) for x in xs], y=[str(y) for y in ys], z=z, text=text,
                               texttemplate="%{text}", colorscale="Viridis_r",
                               colorbar={"title": {"text": value}},
                               hovertemplate=f"{x_axis}=%{{x}}<br>{y_axis}=%{{y}}<br>"
                                             "mean %{z:.4f}<extra></extra>"))
    fig.update_xaxes(type="category")
    fig.update_yaxes(type="category")
    return _layout(fig, f"mean {value.replace('_', ' ')} over seeds", x_axis, y_axis)


def member_summary(rows: Sequence[dict[str, str]], axes: Sequence[str]) -> list[dict[str, Any]]:
    """One row per member: its axis values, seeds, mean final test loss with its 95% band,
    mean train loss over the last 10% of steps, and how many seeds diverged."""
    by: dict[int, list[dict[str, str]]] = {}
    for r in rows:
        by.setdefault(int(r["member"]), []).append(r)
    out = []
    for member, group in sorted(by.items()):
        test = mean_band([number(r[VALUE]) for r in group])
        train = mean_band([number(r["train_loss_last"]) for r in group])
        out.append({"member": member, **{a: group[0][a] for a in axes}, "seeds": len(group),
                    "test_mean": test["mean"], "test_lo": test["lo"], "test_hi": test["hi"],
                    "train_mean": train["mean"],
                    "diverged": sum(1 for r in group if r["status"] != "finished")})
    return out
