"""Experiments: grids of runs, batched into one tensor computation per shape.

An experiment is a TOML (or JSON) spec::

    [base]                       # any RunConfig field; seeds, steps and test_steps too
    task = "add"
    task_args = { t1 = 5, t2 = 9 }
    rule = "dni-b"
    steps = 20000
    test_steps = 1000
    seeds = "0-3"

    [axes]                       # the product of these lists; a dotted name reaches into
    rule = ["dni", "dni-b"]      # rule_args or task_args
    lr = [1e-3, 3e-3]
    "rule_args.lr_apical" = [0.02, 0.05]

    [rule_args.dni]              # optional: settings for the members of one rule only
    lr_apical = 1e-3             # (before the axes; an axis value wins)

    [record]
    every = 1000                 # test loss (and mean train loss) every K steps; 0: off
    alignment = false            # also the mean cosine with the exact gradient per K steps

Members are the product of the axes; each runs for every seed. Members that share a shape
(everything but the seed, the network rate ``lr`` and the rule's own population rates such as
``lr_apical``/``lr_jacobian``/``lr_kernel``: see ``Rule.rate_settings``) run as ONE
:class:`~simulator.engine.Run` whose batch axis holds members x seeds, the rates held as
tensors (members x seeds,). Each member equals the same config run alone (float64: to
~1e-15; tests/test_sweep.py). Batches run in a process pool, one torch thread each.

Output directory: ``spec.json`` (the validated spec, the code version), ``plan.json`` (the
batches), ``batches/NNNN.json`` (one per finished batch: ``--resume`` skips those),
``batches/NNNN.ckpt`` (a running batch's checkpoint: a resume continues from it), ``results.csv``
(one row per member and seed) and ``series.csv`` (long table: member, seed, step, name, value).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import itertools
import json
import math
import os
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simulator.config import MAX_SEEDS, RunConfig
from simulator.settings import ConfigError, quote

CHUNK = 1000  # steps per advance() call
MAX_MEMBERS = 10_000
#: batch slots (members x seeds) per run: more than this splits a shape group
DEFAULT_BATCH = MAX_SEEDS
RESULT_COLUMNS = ("seed", "final_test_loss", "train_loss_last", "status")
SERIES_COLUMNS = ("member", "seed", "step", "name", "value")
_SPEC_KEYS = ("name", "description", "base", "axes", "rule_args", "record")


@dataclass(frozen=True)
class Member:
    """One point of the grid: its index, the axis values and the validated config."""

    index: int
    values: dict[str, Any]
    config: RunConfig


@dataclass(frozen=True)
class Experiment:
    spec: dict[str, Any]  # the spec as given (normalized: plain JSON types)
    axes: dict[str, list[Any]]
    members: list[Member]
    seeds: list[int]
    steps: int
    test_steps: int
    every: int
    alignment: bool

    def key(self) -> str:
        """A stable hash of the spec: a resume must continue the same experiment."""
        text = json.dumps(self.spec, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _set_dotted(target: dict[str, Any], name: str, value: Any) -> None:
    head, dot, tail = name.partition(".")
    if dot:
        if head not in ("rule_args", "task_args"):
            raise ConfigError(f"axes.{quote(name)[1:-1]}", "a dotted name reaches into "
                                                         "rule_args or task_args only")
        sub = dict(target.get(head) or {})
        sub[tail] = value
        target[head] = sub
    else:
        target[name] = value


def load_spec(path: str | Path) -> dict[str, Any]:
    """Read a TOML (or .json) experiment file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError("experiment", f"cannot read {quote(str(path))}: {err.strerror}") from None
    try:
        return json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as err:
        raise ConfigError("experiment", f"not valid {'JSON' if path.suffix == '.json' else 'TOML'}:"
                                        f" {str(err)[:100]}") from None


def _int(section: dict[str, Any], key: str, where: str, default: int, lo: int, hi: int) -> int:
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(f"{where}.{key}", f"got {quote(value)}; allowed: an integer in "
                                            f"[{lo}, {hi}]")
    return value


def parse_experiment(spec: Any) -> Experiment:
    """Validate a whole experiment up front; every refusal names its field, e.g.
    ``axes.rule_args.lr_apical[1]: got 20.0; allowed: ...``."""
    if not isinstance(spec, dict):
        raise ConfigError("experiment", "must be a table with [base] and [axes]")
    for key in spec:
        if key not in _SPEC_KEYS:
            raise ConfigError(quote(key)[1:-1], f"unknown section; allowed: {', '.join(_SPEC_KEYS)}")
    base = spec.get("base", {})
    axes = spec.get("axes", {})
    record = spec.get("record", {})
    per_rule = spec.get("rule_args", {})
    for name, section in (("base", base), ("axes", axes), ("record", record),
                          ("rule_args", per_rule)):
        if not isinstance(section, dict):
            raise ConfigError(name, "must be a table")
    from simulator.rules import RULES

    for rule, section in per_rule.items():
        if rule not in RULES:
            raise ConfigError(f"rule_args.{quote(rule)[1:-1]}",
                              f"unknown rule; allowed: {', '.join(RULES)}")
        if not isinstance(section, dict):
            raise ConfigError(f"rule_args.{rule}", "must be a table of the rule's settings")
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    for key in base:
        if key not in fields:
            raise ConfigError(f"base.{quote(key)[1:-1]}",
                              f"unknown field; allowed: {', '.join(sorted(fields))}")
    for key in record:
        if key not in ("every", "alignment"):
            raise ConfigError(f"record.{quote(key)[1:-1]}", "unknown; allowed: every, alignment")
    try:
        base_config = RunConfig.from_dict(dict(base))
    except ConfigError as err:
        raise ConfigError(f"base.{err.field}", err.message) from None
    count = 1
    for name, values in axes.items():
        where = f"axes.{quote(name)[1:-1]}"
        head = name.partition(".")[0]
        if name in ("seeds", "steps", "test_steps") or head not in fields:
            raise ConfigError(where, "allowed: a config field other than seeds, steps and "
                                     "test_steps (those are the experiment's own), or "
                                     "rule_args.NAME / task_args.NAME")
        if not isinstance(values, list) or not values:
            raise ConfigError(where, f"got {quote(values)}; allowed: a non-empty list of values")
        count *= len(values)
        if count > MAX_MEMBERS:
            raise ConfigError("axes", f"the product of the axes has over {MAX_MEMBERS:,} "
                                      f"members; allowed: at most {MAX_MEMBERS:,}")
    every = _int(record, "every", "record", 0, 0, 10**9)
    alignment = record.get("alignment", False)
    if not isinstance(alignment, bool):
        raise ConfigError("record.alignment", f"got {quote(alignment)}; allowed: true or false")
    names = list(axes)
    members: list[Member] = []
    for index, combo in enumerate(itertools.product(*(range(len(axes[a])) for a in names))):
        data = dict(base)
        data["seeds"] = base_config.seeds[:1]  # seeds are the experiment's, not the member's
        rule = next((axes["rule"][i] for a, i in zip(names, combo, strict=True) if a == "rule"),
                    base.get("rule", RunConfig.rule))
        if isinstance(rule, str) and rule in per_rule:
            data["rule_args"] = {**(data.get("rule_args") or {}), **per_rule[rule]}
        for name, i in zip(names, combo, strict=True):
            _set_dotted(data, name, axes[name][i])
        if alignment and data.get("align") is None:
            data["align"] = "auto"
        try:
            config = RunConfig.from_dict(data)
        except ConfigError as err:
            key = err.field.partition(".")[2]
            if (err.field.startswith("rule_args.") and isinstance(rule, str)
                    and key in per_rule.get(rule, {}) and f"rule_args.{key}" not in axes):
                raise ConfigError(f"rule_args.{rule}.{key}", err.message) from None
            raise _axis_error(err, names, combo, axes) from None
        config = dataclasses.replace(config, seeds=base_config.seeds)
        members.append(Member(index, {a: axes[a][i] for a, i in zip(names, combo, strict=True)},
                              config))
    if not members:
        raise ConfigError("axes", "no members")
    normalized = {"name": spec.get("name", ""), "description": spec.get("description", ""),
                  "base": base, "axes": axes, "rule_args": per_rule,
                  "record": {"every": every, "alignment": alignment}}
    return Experiment(json.loads(json.dumps(normalized, default=str)), dict(axes), members,
                      base_config.seeds, base_config.steps, base_config.test_steps, every,
                      alignment)


def _axis_error(err: ConfigError, names: list[str], combo: tuple[int, ...],
                axes: dict[str, list[Any]]) -> ConfigError:
    """Name the axis value that a member's refusal comes from (else the base field)."""
    field = err.field
    for name, i in zip(names, combo, strict=True):
        if field == name or field.startswith(name + ".") or (
                name.startswith(field + ".") and field in ("rule_args", "task_args")):
            return ConfigError(f"axes.{name}[{i}]", err.message)
    related = [f"{n}={axes[n][i]!r}" for n, i in zip(names, combo, strict=True)]
    where = f" (member {', '.join(related)})"[:120] if related else ""
    return ConfigError(f"base.{field}", err.message + where)


# ---- batches ----------------------------------------------------------------------------
def per_slot_alpha(config: RunConfig) -> bool:
    """Whether members differing in alpha may share a batch: the rule reads the leak only
    through Network's helpers, and no exact-gradient shadow or comparison rule runs beside."""
    from simulator.rules import rule_class

    return (rule_class(config.rule).per_slot_alpha and config.align is None
            and not config.compare)


def shape_key(config: RunConfig) -> str:
    """What must be shared to batch: everything but seeds, lr, the rule's rate settings and
    (where :func:`per_slot_alpha`) alpha."""
    from simulator.rules import rule_class

    rates = set(rule_class(config.rule).rate_settings(config.rule_args).values())
    data = config.to_dict()
    data.pop("seeds")
    data.pop("lr")
    if per_slot_alpha(config):
        data.pop("alpha")
    data["rule_args"] = {k: v for k, v in config.rule_args.items() if k not in rates}
    return json.dumps(data, sort_keys=True, default=str)


def plan_batches(exp: Experiment, batch_slots: int = DEFAULT_BATCH,
                 workers: int = 1) -> list[list[int]]:
    """Member indices per batch: members of one shape together, at most ``batch_slots``
    members x seeds each; groups split further until there are ``workers`` batches (when
    they can be), so every core has one."""
    groups: dict[str, list[int]] = {}
    for member in exp.members:
        groups.setdefault(shape_key(member.config), []).append(member.index)
    per = max(1, batch_slots // len(exp.seeds))
    batches = [g[i : i + per] for g in groups.values() for i in range(0, len(g), per)]
    while len(batches) < workers:
        largest = max(range(len(batches)), key=lambda b: len(batches[b]))
        group = batches[largest]
        if len(group) < 2:
            break
        half = (len(group) + 1) // 2
        batches[largest : largest + 1] = [group[:half], group[half:]]
    return batches


def batch_config(exp: Experiment, members: list[int]) -> tuple[RunConfig, list[int]]:
    """The shared config of a batch and its ensemble (the seed of each slot)."""
    config = exp.members[members[0]].config
    ensemble = [s for _ in members for s in exp.seeds]
    return config, ensemble


def check_costs(exp: Experiment, batches: list[list[int]], max_memory: int,
                flag: str = "--max-batch-memory; or a smaller --batch-size") -> list[Any]:
    """simulator.cost per batch (members x seeds as one ensemble); refuses a batch over
    ``max_memory`` bytes (0: no limit, ``flag``: the setting named) before anything runs."""
    from simulator.cost import estimate, size_text

    costs = []
    for b, members in enumerate(batches):
        config, ensemble = batch_config(exp, members)
        cost = estimate(dataclasses.replace(config, seeds=list(range(len(ensemble))),
                                            steps=exp.steps))
        if max_memory and cost.memory_bytes > max_memory:
            raise ConfigError("batch", f"batch {b} ({config.rule}, n={config.n}, {len(ensemble)} "
                                       f"members x seeds) needs about {size_text(cost.memory_bytes)}"
                                       f"; allowed: {size_text(max_memory)} ({flag})")
        costs.append(cost)
    return costs


def tail_steps(steps: int) -> int:
    """The steps ``train_loss_last`` averages over: the last 10% (at least one); the CLI's
    ``run`` summary and a sweep's table use the same window."""
    return max(1, steps // 10)


def _nan(value: float) -> float | None:
    return value if math.isfinite(value) else None


def make_batch_run(exp: Experiment, members: list[int]) -> Any:
    """One :class:`~simulator.engine.Run` for a batch: slot j holds member
    ``members[j // seeds]`` with seed ``exp.seeds[j % seeds]``; the network rate and the rule's
    rate settings become tensors (slots,) where the members differ, and alpha a tensor
    (slots, 1) where it does."""
    import torch

    from simulator.engine import Run

    config, ensemble = batch_config(exp, members)
    if len({shape_key(exp.members[m].config) for m in members}) != 1:
        raise ValueError("a batch holds members of one shape only (simulator.sweep.shape_key)")
    alphas = [exp.members[m].config.alpha for m in members for _ in exp.seeds]
    run = Run(config, ensemble=ensemble, alphas=alphas if len(set(alphas)) > 1 else None)
    run.halt_on_divergence = False
    rate_keys = run.rule.rate_settings(config.rule_args)
    per_slot: dict[str, list[float]] = {pop: [] for pop in run.lr}
    for index in members:
        cfg = exp.members[index].config
        rates = {"basal": cfg.lr, "readout": cfg.lr,
                 **{pop: float(cfg.rule_args[key]) for pop, key in rate_keys.items()}}
        for pop in per_slot:
            per_slot[pop].extend([rates[pop]] * len(exp.seeds))
    for pop, values in per_slot.items():
        if len(set(values)) > 1:
            run.lr[pop] = torch.tensor(values, dtype=run.dtype, device=run.device)
    return run


class Cancelled(Exception):
    """Raised by a progress callback to stop a batch (its checkpoint stays for a resume)."""


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    import torch

    tmp = path.with_suffix(f"{path.suffix}.{os.getpid()}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _load_checkpoint(path: Path, members: list[int]) -> dict[str, Any] | None:
    """A batch's checkpoint (written by this code for these members), or None when there is
    none or it cannot be read (the batch then starts from step 0)."""
    import torch

    try:
        state = torch.load(path, weights_only=False)  # our own file, in the experiment folder
    except FileNotFoundError:
        return None
    except Exception:  # a torn or damaged checkpoint: start the batch over
        return None
    return state if isinstance(state, dict) and state.get("members") == members else None


def run_batch(exp: Experiment, members: list[int],
              progress: Callable[[int], None] | None = None, *,
              checkpoint: Path | None = None, checkpoint_seconds: float = 10.0) -> dict[str, Any]:
    """Run one batch as one Run: every member's seeds on the batch axis, per-member rates as
    tensors. Returns JSON-able rows and series.

    ``progress(k)`` is told each chunk's seed-steps (it may raise :class:`Cancelled`). With
    ``checkpoint`` (a file), the batch continues from it when it exists and saves it at a chunk
    boundary every ``checkpoint_seconds`` (0: every chunk): run state, the partial series and
    running sums, so a resumed batch gives the same rows as an uninterrupted one. The result's
    ``resumed_from`` is the step it continued from (0: a fresh start)."""
    import torch

    from simulator.alignment import AlignmentMeans
    from simulator.engine import Run

    run = make_batch_run(exp, members)
    ensemble = run.seeds
    S, seeds = len(ensemble), len(exp.seeds)
    steps, every = exp.steps, exp.every
    tail = tail_steps(steps)
    tail_sum = torch.zeros(S, dtype=torch.float64)
    window_loss = torch.zeros(S, dtype=torch.float64)
    window_align = AlignmentMeans()
    diverged: list[int | None] = [None] * S
    series: list[list[Any]] = []
    done = 0
    state = _load_checkpoint(checkpoint, members) if checkpoint is not None else None
    if state is not None:
        run = Run.from_state(state["run"])
        run.halt_on_divergence = False
        done, tail_sum, window_loss = state["done"], state["tail_sum"], state["window_loss"]
        window_align, diverged, series = state["window_align"], state["diverged"], state["series"]
    resumed_from = done
    saved_at = time.monotonic()

    def emit(step: int, name: str, values: list[float]) -> None:
        for slot, value in enumerate(values):
            series.append([members[slot // seeds], ensemble[slot], step, name, _nan(value)])

    while done < steps:
        k = min(CHUNK, steps - done)
        if every:
            k = min(k, every - done % every)
        tel = run.advance(k, record="scalars")
        loss = tel.loss.double()
        bad = ~torch.isfinite(loss)
        for slot in bad.any(0).nonzero()[:, 0].tolist():
            if diverged[slot] is None:
                diverged[slot] = done + int(bad[:, slot].nonzero()[0, 0])
        overlap = max(0, done + k - (steps - tail))
        if overlap:
            tail_sum += loss[-overlap:].sum(0)
        window_loss += loss.sum(0)
        if tel.alignment is not None:
            window_align.add(tel.alignment, tel.norm_ratio)
        done += k
        if every and done % every == 0:
            emit(done, "train_loss", (window_loss / every).tolist())
            window_loss.zero_()
            if exp.test_steps:
                emit(done, "test_loss", run.evaluate(exp.test_steps).double().tolist())
            if tel.alignment is not None:
                emit(done, "alignment", window_align.means()[0])
                window_align = AlignmentMeans()
        if (checkpoint is not None and done < steps
                and time.monotonic() - saved_at >= checkpoint_seconds):
            _save_checkpoint(checkpoint, {
                "members": members, "done": done, "run": run.state_dict(),
                "tail_sum": tail_sum, "window_loss": window_loss, "window_align": window_align,
                "diverged": diverged, "series": series})
            saved_at = time.monotonic()
        if progress is not None:
            progress(k * S)
    test = run.evaluate(exp.test_steps).double().tolist()
    rows = []
    for slot in range(S):
        status = "finished" if diverged[slot] is None else f"diverged at step {diverged[slot]}"
        rows.append([members[slot // seeds], ensemble[slot], _nan(test[slot]),
                     _nan(float(tail_sum[slot]) / tail), status])
    return {"members": members, "rows": rows, "series": series, "resumed_from": resumed_from}


# ---- the whole sweep ----------------------------------------------------------------------
def code_version() -> str:
    """``git describe`` of the checkout the simulator runs from, else the package version."""
    root = Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--tags"], cwd=root,
                             capture_output=True, text=True, timeout=5, check=True)
        if out.stdout.strip():
            return f"git {out.stdout.strip()}"
    except (OSError, subprocess.SubprocessError):
        pass
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"plasticity-lab {version('plasticity-lab')}"
    except PackageNotFoundError:
        return "unknown"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(f"{path.suffix}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


_QUEUE: Any = None


def _worker_init(queue: Any) -> None:
    global _QUEUE
    _QUEUE = queue
    from simulator.engine import set_threads

    set_threads(1)


def _worker_batch(exp: Experiment, index: int, members: list[int], checkpoint: Path | None,
                  checkpoint_seconds: float) -> tuple[int, dict[str, Any]]:
    def progress(n: int) -> None:
        _QUEUE.put(n)

    return index, run_batch(exp, members, progress, checkpoint=checkpoint,
                            checkpoint_seconds=checkpoint_seconds)


def batch_path(out: Path, index: int, suffix: str = ".json") -> Path:
    """A batch's file in an experiment folder: its result (.json) or checkpoint (.ckpt)."""
    return out / "batches" / f"{index:04d}{suffix}"


def prepare(exp: Experiment, out: Path, *, resume: bool = False,
            batch_slots: int = DEFAULT_BATCH, workers: int = 1,
            max_memory: int = 0) -> tuple[list[list[int]], list[Any]]:
    """Plan (or, with ``resume``, reload the plan of) an experiment in ``out`` and check each
    batch's cost (``check_costs``) before anything is written; writes spec.json and plan.json.
    Returns (batches, costs)."""
    spec_path, plan_path = out / "spec.json", out / "plan.json"
    if spec_path.exists():
        old = json.loads(spec_path.read_text())
        if not resume:
            raise ConfigError("out", f"{quote(str(out))} holds an experiment already; "
                                     "allowed: --resume to continue it, or a new directory")
        if old.get("key") != exp.key():
            raise ConfigError("resume", f"{quote(str(out))} holds a different experiment "
                                        f"(spec hash {old.get('key')}; this one {exp.key()})")
        batches = json.loads(plan_path.read_text())["batches"]
    else:
        batches = plan_batches(exp, batch_slots, workers)
    costs = check_costs(exp, batches, max_memory)  # before anything is written
    (out / "batches").mkdir(parents=True, exist_ok=True)
    if not spec_path.exists():
        _write_atomic(plan_path, json.dumps({"batches": batches}))
        _write_atomic(spec_path, json.dumps({"key": exp.key(), "spec": exp.spec,
                                             "code_version": code_version(),
                                             "members": len(exp.members), "seeds": exp.seeds,
                                             "batches": len(batches)}, indent=2))
    return batches, costs


def finish_batch(out: Path, index: int, result: dict[str, Any]) -> None:
    """Store a batch's result atomically (a batch run twice replaces, never appends) and drop
    its checkpoint."""
    _write_atomic(batch_path(out, index), json.dumps(result))
    batch_path(out, index, ".ckpt").unlink(missing_ok=True)


def sweep(exp: Experiment, out: Path, *, workers: int = 1, resume: bool = False,
          batch_slots: int = DEFAULT_BATCH, max_memory: int = 0,
          show_progress: bool = True, progress: Callable[[int], None] | None = None,
          stop: Callable[[], bool] | None = None,
          checkpoint_seconds: float = 10.0) -> dict[str, Any]:
    """Run an experiment into ``out``; with ``resume``, skip the batches already done (a batch
    that was interrupted continues from its checkpoint). ``progress(n)`` hears seed-steps as
    they are done; ``stop()`` true stops the sweep (raises :class:`Cancelled`; checkpoints
    stay, so ``resume`` continues)."""
    from tqdm import tqdm

    batches, costs = prepare(exp, out, resume=resume, batch_slots=batch_slots, workers=workers,
                             max_memory=max_memory)
    todo = [b for b in range(len(batches)) if not batch_path(out, b).exists()]
    slots = {b: len(batches[b]) * len(exp.seeds) for b in range(len(batches))}
    total = sum(slots[b] * exp.steps for b in todo)
    bar = tqdm(total=total, unit="seed-step", unit_scale=True, file=sys.stderr,
               disable=not show_progress, dynamic_ncols=True,
               desc=f"{len(todo)}/{len(batches)} batches")
    started = time.perf_counter()

    def tick(n: int) -> None:
        bar.update(n)
        if progress is not None:
            progress(n)
        if stop is not None and stop():
            raise Cancelled("stopped")

    def finished(index: int, result: dict[str, Any]) -> None:
        finish_batch(out, index, result)

    try:
        if workers <= 1 or len(todo) <= 1:
            for b in todo:
                finished(b, run_batch(exp, batches[b], tick,
                                      checkpoint=batch_path(out, b, ".ckpt"),
                                      checkpoint_seconds=checkpoint_seconds))
        else:
            _pool_run(exp, out, batches, todo, workers, tick, finished, checkpoint_seconds)
    finally:
        bar.close()
    elapsed = time.perf_counter() - started
    write_tables(exp, out, len(batches))
    return {"members": len(exp.members), "seeds": len(exp.seeds), "batches": len(batches),
            "ran": len(todo), "seconds": elapsed, "out": str(out),
            "flops": sum(c.work_flops for c in costs)}


def _pool_run(exp: Experiment, out: Path, batches: list[list[int]], todo: list[int],
              workers: int, tick: Callable[[int], None],
              finished: Callable[[int, dict[str, Any]], None],
              checkpoint_seconds: float) -> None:
    """The batches in ``todo`` over a pool of ``workers`` processes (spawned, one torch thread
    each); ``tick`` may raise (Cancelled): the pool's processes are then terminated."""
    import multiprocessing
    import queue as queue_module

    ctx = multiprocessing.get_context("spawn")
    progress = ctx.Queue()
    pool = ctx.Pool(processes=min(workers, len(todo)), initializer=_worker_init,
                    initargs=(progress,))

    def drain() -> None:
        while True:
            try:
                tick(progress.get_nowait())
            except queue_module.Empty:
                return

    try:
        pending = {b: pool.apply_async(_worker_batch, (exp, b, batches[b],
                                                       batch_path(out, b, ".ckpt"),
                                                       checkpoint_seconds))
                   for b in todo}
        while pending:
            next(iter(pending.values())).wait(0.2)
            drain()
            for b in [b for b, result in pending.items() if result.ready()]:
                finished(*pending.pop(b).get())  # a batch's exception is raised here
        drain()
    finally:
        pool.terminate()
        pool.join()


def write_tables(exp: Experiment, out: Path, count: int, partial: bool = False) -> None:
    """results.csv and series.csv from the batch files, sorted by member and seed (so the
    table does not depend on batching, workers or interruptions); ``partial``: from the
    batches finished so far (an experiment still running)."""
    rows: list[list[Any]] = []
    series: list[list[Any]] = []
    for b in range(count):
        path = batch_path(out, b)
        if partial and not path.exists():
            continue
        result = json.loads(path.read_text())
        rows.extend(result["rows"])
        series.extend(result["series"])
    order = {s: i for i, s in enumerate(exp.seeds)}
    rows.sort(key=lambda r: (r[0], order[r[1]]))
    series.sort(key=lambda r: (r[0], order[r[1]], r[2], r[3]))
    names = list(exp.axes)
    unique = f"{os.getpid()}.{threading.get_ident()}.tmp"  # two writers never share a file
    with (out / f"results.csv.{unique}").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["member", *names, *RESULT_COLUMNS])
        for member, seed, test, train, status in rows:
            values = exp.members[member].values
            writer.writerow([member, *(_cell(values[a]) for a in names), seed, _cell(test),
                             _cell(train), status])
    os.replace(out / f"results.csv.{unique}", out / "results.csv")
    with (out / f"series.csv.{unique}").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(SERIES_COLUMNS)
        writer.writerows([m, s, t, n, _cell(v)] for m, s, t, n, v in series)
    os.replace(out / f"series.csv.{unique}", out / "series.csv")


def _cell(value: Any) -> Any:
    """A CSV cell: floats in full precision (repr round-trips), None as nan."""
    if value is None:
        return "nan"
    if isinstance(value, float):
        return repr(value)
    return value if isinstance(value, int | str) else json.dumps(value)
