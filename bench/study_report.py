"""Summaries and a figure for docs/experiments.md from sweep output directories.

    python bench/study_report.py DIR [DIR ...] [--svg docs/dnib-study.svg] [--top 4]

For every member of every directory (``python -m simulator sweep ... --out DIR``): the mean
final test loss over seeds with a 95% confidence interval (Student t), the number of seeds
that finished, and the settings; then the learning curves (test loss every K steps, from
series.csv) of the best few as mean and 95% band, written as a plain SVG (no plotting
library needed) with the task's reference levels. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

if importlib.util.find_spec("simulator") is None:  # a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: two-sided 95% Student t quantiles by degrees of freedom (1.96 beyond)
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
       9: 2.262, 10: 2.228, 14: 2.145, 19: 2.093, 29: 2.045}


def t95(dof: int) -> float:
    if dof <= 0:
        return math.nan
    keys = [k for k in T95 if k <= dof]
    return T95[max(keys)] if dof <= 29 else 1.96


def mean_ci(values: list[float]) -> tuple[float, float]:
    """(mean, half-width of the 95% interval); nan half-width for one value."""
    if not values:
        return math.nan, math.nan
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan
    return mean, t95(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))


def load(directory: Path) -> list[dict[str, Any]]:
    """One entry per member of the finished batches (a stopped sweep counts too): settings,
    final test losses of the finished seeds, curves."""
    from simulator.sweep import parse_experiment

    spec = json.loads((directory / "spec.json").read_text())["spec"]
    exp = parse_experiment(spec)
    base = spec["base"]
    settings = {k: v for k, v in base.items() if k not in ("task", "task_args", "seeds",
                                                          "steps", "test_steps", "n", "rule")}
    members: dict[int, dict[str, Any]] = {}
    for path in sorted((directory / "batches").glob("*.json")):
        result = json.loads(path.read_text())
        for m, _seed, test, _train, status in result["rows"]:
            entry = members.setdefault(m, {"dir": directory.name, "member": m,
                                           "settings": {**settings, **exp.members[m].values},
                                           "final": [], "seeds": 0, "curves": {}})
            entry["seeds"] += 1
            if status == "finished" and test is not None and math.isfinite(test):
                entry["final"].append(test)
        for m, _seed, step, name, value in result["series"]:
            if name == "test_loss" and value is not None and math.isfinite(value):
                members[m]["curves"].setdefault(step, []).append(value)
    return list(members.values())


def label(entry: dict[str, Any]) -> str:
    s = dict(entry["settings"])
    args = s.pop("rule_args", {}) or {}
    for key in list(s):
        if key.startswith("rule_args."):
            args[key.split(".", 1)[1]] = s.pop(key)
    phases = str(s.pop("phases", "all"))
    if phases != "all":
        phases = "blocks of " + phases.split(":")[1].split(",")[0]
    parts = [f"lr_A={args.get('lr_apical', 0.05)}", f"lr_J={args.get('lr_jacobian', 0.01)}",
             f"lr={s.get('lr', 1e-3)}", f"refresh={args.get('refresh', 5)}",
             f"label={args.get('label', 'tanh')}", f"phases={phases}"]
    return ", ".join(parts)


COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def svg(entries: list[dict[str, Any]], levels: dict[str, float], path: Path) -> None:
    """Learning curves (mean, 95% band) as a self-contained SVG, 900 x 520."""
    width, height, left, right, top, bottom = 900, 520, 70, 20, 30, 170
    steps = sorted({s for e in entries for s in e["curves"]})
    lo, hi = 0.44, 0.70
    x0, x1 = 0, max(steps)

    def X(step: float) -> float:
        return left + (step - x0) / (x1 - x0) * (width - left - right)

    def Y(v: float) -> float:
        v = min(max(v, lo), hi)
        return top + (hi - v) / (hi - lo) * (height - top - bottom)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{left}" y="18" font-size="14">DNI-b on Add(5,9), n = 32: held-out loss '
           f'(mean and 95% band over seeds)</text>']
    for v in (0.45, 0.5, 0.55, 0.6, 0.65, 0.7):
        out.append(f'<line x1="{left}" x2="{width - right}" y1="{Y(v):.1f}" y2="{Y(v):.1f}" '
                   f'stroke="#eee"/><text x="{left - 8}" y="{Y(v) + 4:.1f}" '
                   f'text-anchor="end">{v:.2f}</text>')
    for s in range(0, x1 + 1, 20000):
        out.append(f'<text x="{X(s):.1f}" y="{height - bottom + 16}" text-anchor="middle">'
                   f'{s // 1000}k</text>')
    out.append(f'<text x="{(left + width) / 2}" y="{height - bottom + 32}" '
               f'text-anchor="middle">training step</text>')
    for name, v in levels.items():
        out.append(f'<line x1="{left}" x2="{width - right}" y1="{Y(v):.1f}" y2="{Y(v):.1f}" '
                   f'stroke="#888" stroke-dasharray="4 3"/><text x="{width - right - 4}" '
                   f'y="{Y(v) - 3:.1f}" text-anchor="end" fill="#555">{name} {v:.4f}</text>')
    for i, entry in enumerate(entries):
        colour = COLOURS[i % len(COLOURS)]
        pts = []
        for s in sorted(entry["curves"]):
            mean, half = mean_ci(entry["curves"][s])
            pts.append((s, mean, 0.0 if math.isnan(half) else half))
        upper = " ".join(f"{X(s):.1f},{Y(m + h):.1f}" for s, m, h in pts)
        lower = " ".join(f"{X(s):.1f},{Y(m - h):.1f}" for s, m, h in reversed(pts))
        out.append(f'<polygon points="{upper} {lower}" fill="{colour}" fill-opacity="0.18" '
                   f'stroke="none"/>')
        line = " ".join(f"{X(s):.1f},{Y(m):.1f}" for s, m, _ in pts)
        out.append(f'<polyline points="{line}" fill="none" stroke="{colour}" stroke-width="2"/>')
        y = height - bottom + 56 + 18 * i
        mean, half = mean_ci(entry["final"])
        out.append(f'<line x1="{left}" x2="{left + 24}" y1="{y - 4}" y2="{y - 4}" '
                   f'stroke="{colour}" stroke-width="3"/><text x="{left + 30}" y="{y}">'
                   f'{label(entry)}: final {mean:.4f} &#177; {half:.4f} '
                   f'({len(entry["final"])} seeds)</text>')
    out.append("</svg>")
    path.write_text("\n".join(out) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path)
    parser.add_argument("--svg", type=Path, default=None)
    parser.add_argument("--top", type=int, default=4, help="curves in the figure")
    parser.add_argument("--also", action="append", default=[], metavar="DIRNAME",
                        help="also draw the members of this directory (e.g. a reference)")
    parser.add_argument("--min-seeds", type=int, default=1,
                        help="members with fewer finished seeds are listed, not ranked")
    args = parser.parse_args()
    from simulator.tasks import make_task

    levels = make_task("add", {"t1": 5, "t2": 9}).reference_levels()
    entries = [e for d in args.dirs for e in load(d)]
    ranked = sorted(entries, key=lambda e: (len(e["final"]) < max(args.min_seeds, e["seeds"]),
                                            mean_ci(e["final"])[0]
                                            if e["final"] else math.inf))
    print("| rank | settings | seeds finished | final test loss, mean | 95% CI | source |")
    print("|---|---|---|---|---|---|")
    for i, e in enumerate(ranked, 1):
        mean, half = mean_ci(e["final"])
        print(f"| {i} | {label(e)} | {len(e['final'])}/{e['seeds']} | {mean:.4f} | "
              f"&#177;{half:.4f} | {e['dir']} #{e['member']} |")
    print("reference levels:", json.dumps(levels))
    if args.svg:
        chosen = [e for e in ranked if e["curves"] and len(e["final"]) == e["seeds"]
                  and e["dir"] not in args.also][:args.top]
        chosen += [e for e in ranked if e["dir"] in args.also and e["curves"]]
        svg(chosen, {**levels, "threshold for both": 0.48}, args.svg)
        print(f"wrote {args.svg}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
