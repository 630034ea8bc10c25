"""The task panel: the input stream (top), the target and each run's prediction (bottom),
of the seed picked, over a scrolling window of the last WINDOW steps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from app.dashboard.panels.common import (
    MUTED,
    UNIT_COLORS,
    UNIT_DASH,
    WINDOW,
    Figure,
    View,
    _append,
    _axis,
    _base_layout,
    _carry,
    _empty_note,
    _esc,
    _Extend,
    _font,
    _line,
    _phase_legend,
    _runs_by_id,
    _shade,
    _stack_domains,
    _window_steps,
    initial_carry,
    shown_seed,
)

NAME = "task"
GRAPH = "task-graph"
TITLE = "Task: input, target, prediction"
TAB = "Task"
NOTES = (
    "The input stream, the target and each run's prediction over the recent window.",
    "Look for: the prediction following the target's jumps a few steps after the input.",
)


def tools() -> list[Any]:
    return []


def task_channels(view: View) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """(input (index, name) pairs, output pairs) to draw, from the task's view hints; the
    frames carry at most 4 channels of each."""
    tv = view.get("task_view") or {}

    def pick(names_key: str, index_key: str) -> list[tuple[int, str]]:
        names = tv.get(names_key)
        count = names if isinstance(names, int) else len(names or []) or 1
        labels = list(names) if isinstance(names, list) else [f"{names_key[:-1]} {i}"
                                                              for i in range(count)]
        index = tv.get(index_key) or list(range(min(count, 4)))
        limit = 4 if names_key == "inputs" else (4 if len(view["runs"]) <= 1 else 2)
        index = [i for i in index if 0 <= i < 4][:limit]
        return [(i, labels[i] if i < len(labels) else f"{names_key[:-1]} {i}") for i in index]

    return pick("inputs", "input_index"), pick("outputs", "output_index")


def task_slots(view: View) -> list[str]:
    if not view["runs"]:
        return []
    ins, outs = task_channels(view)
    slots = [f"x:{i}" for i, _ in ins] + [f"y:{o}" for o, _ in outs]
    slots += [f"pred:{run['id']}:{o}" for run in view["runs"] for o, _ in outs]
    return slots


def task_figure(view: View, recent: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
                carry: dict[str, Any] | None = None) -> Figure:
    """Input (top), target and prediction (bottom) over the recent window."""
    ins, outs = task_channels(view)
    runs = _runs_by_id(view)
    pre = _task_points(view, recent or {}, carry)
    data = []
    tv = view.get("task_view") or {}
    for k, (i, name) in enumerate(ins):
        xs, ys = pre.get(f"x:{i}", ([], []))
        data.append(_line(f"input: {name}", UNIT_COLORS[(k + 2) % 4] if k else "#4b5563",
                          width=1.6, x=xs, y=ys, shape="hv", legend=True,
                          hovertemplate=f"{_esc(name)} %{{y:.2f}}<extra></extra>"))
    for k, (o, name) in enumerate(outs):
        xs, ys = pre.get(f"y:{o}", ([], []))
        data.append(_line(f"target: {name}", "#111111", width=2.2, dash=UNIT_DASH[k % 4],
                          opacity=0.55, x=xs, y=ys, shape="hv", xaxis="x2", yaxis="y2",
                          hovertemplate=f"target {_esc(name)} %{{y:.3f}}<extra></extra>"))
    for slot in task_slots(view):
        if not slot.startswith("pred:"):
            continue
        _, rid, o = slot.split(":")
        run = runs[rid]
        name = dict(outs)[int(o)]
        xs, ys = pre.get(slot, ([], []))
        label = f"prediction: {name}" if len(runs) == 1 else f"{run['label']}: {name}"
        data.append(_line(label, run["color"], width=2.2,
                          dash=UNIT_DASH[[oo for oo, _ in outs].index(int(o)) % 4],
                          x=xs, y=ys, xaxis="x2", yaxis="y2", group=rid,
                          hovertemplate=f"pred {_esc(name)} %{{y:.3f}}<extra>{_esc(run['label'])}</extra>"))
    layout = _base_layout(view, height=320)
    top, bottom = _stack_domains([1, 2.4], 0.08)
    layout["yaxis"] = _axis(view, "input", domain=top, anchor="x")
    layout["xaxis"] = _axis(view, "", anchor="y", matches="x2", showticklabels=False)
    extra = {"range": tv["y_range"]} if tv.get("y_range") else {}
    layout["yaxis2"] = _axis(view, "target / prediction", domain=bottom, anchor="x2", **extra)
    layout["xaxis2"] = _axis(view, "step", anchor="y2")
    layout["meta"].update(window=view.get("window", WINDOW),
                          shade=_shade(view, "x2", 0.0, 1.0, whole_run=False))
    if tv.get("kind") not in (None, "lines"):
        layout["annotations"].append({
            "xref": "paper", "yref": "paper", "x": 0, "y": -0.18, "xanchor": "left",
            "showarrow": False, "text": f"showing the first channels ({tv.get('kind')} task)",
            "font": {**_font(view, 10), "color": MUTED}})
    layout["annotations"] += _phase_legend(view)
    if not view["runs"]:
        layout["annotations"].append(_empty_note(view, "input, target and prediction appear here"))
    return {"data": data, "layout": layout}


def _task_points(view: View, frames_by_run: Mapping[str, Sequence[Mapping[str, Any]]],
                 carry: dict[str, Any] | None) -> dict[str, tuple[list, list]]:
    points: dict[str, tuple[list, list]] = {}
    if not view["runs"]:
        return points
    ins, outs = task_channels(view)
    first = view["runs"][0]["id"]
    runs = _runs_by_id(view)
    for rid, frames in frames_by_run.items():
        state = _carry(carry).setdefault(rid, initial_carry())
        seed = shown_seed(view, runs.get(rid))
        for frame in frames:
            task = frame.get("task")
            if not task or not task.get("step") or (seed is not None and
                                                    task.get("seed", seed) != seed):
                continue
            steps, gap = _window_steps(task["step"], state.get("task_t"))
            state["task_t"] = steps[-1]
            series: list[tuple[str, list]] = []
            if rid == first:
                series += [(f"x:{i}", task["x"][i]) for i, _ in ins if i < len(task["x"])]
                series += [(f"y:{o}", task["y"][o]) for o, _ in outs if o < len(task["y"])]
            series += [(f"pred:{rid}:{o}", task["pred"][o]) for o, _ in outs
                       if o < len(task["pred"])]
            for key, ys in series:
                _append(points, key, steps, ys, gap)
    return points


slots = task_slots


def figure(view: View, histories: Mapping[str, Mapping[str, Any]] | None,
           recent: Mapping[str, Sequence[Mapping[str, Any]]] | None,
           carry: dict[str, Any]) -> Figure:
    return task_figure(view, recent, carry)


def tick(view: View, frames_by_run: Mapping[str, Sequence[Mapping[str, Any]]],
         carry: dict[str, Any], ext: _Extend) -> dict[str, Any]:
    for key, (xs, ys) in _task_points(view, frames_by_run, carry).items():
        ext.add(key, xs, ys, view.get("window", WINDOW))
    return {}
