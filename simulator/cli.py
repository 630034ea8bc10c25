"""Headless command line: ``python -m simulator run|sweep|presets|rules|tasks``.

    python -m simulator run --task add --task-arg t1=5 --task-arg t2=9 --rule dni-b \\
        --steps 100000 --test-steps 5000 --seeds 0-4 --json

shows a progress bar on stderr and prints one JSON summary as the last line of stdout.
Bad settings exit with status 2 and a one-line message naming the field.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from simulator.settings import ConfigError, Setting, finite, parse_key_values

CHUNK = 1000  # steps per advance() call: amortizes bookkeeping, keeps the bar lively
SWEEP_WORKERS = Setting("workers", 1, "processes", int, 1, 1024)
SWEEP_BATCH = Setting("batch_size", 256, "members x seeds in one batch", int, 1, None)
SWEEP_MEMORY = Setting("max_batch_memory", 0, "bytes (0: no limit)", float, 0, None)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m simulator",
                                     description="Plasticity Lab simulator (headless)")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train one run (an ensemble of seeds) and summarize",
                         formatter_class=argparse.RawDescriptionHelpFormatter,
                         epilog=_settings_epilog())
    _add_config_options(run)
    run.add_argument("--threads", type=int, default=None, help="torch threads (default 1)")
    run.add_argument("--compile", action="store_true",
                     help="capture the step with torch.compile (dni, dni-b, output-only): "
                          "about 2x faster for small networks after a few seconds of compiling")
    run.add_argument("--background-compile", action="store_true",
                     help="start stepping eagerly at once and switch to the torch.compile'd "
                          "step (dni, dni-b, output-only) when a background compile finishes: "
                          "same numbers to rounding (the compiling thread shares the GIL: "
                          "the first steps run slower until it is done)")
    run.add_argument("--cuda-graph", action="store_true",
                     help="replay the step from captured CUDA graphs (needs --device cuda; dni, "
                          "dni-b, output-only): one launch per step instead of dozens")
    run.add_argument("--out", default=None, metavar="DIR",
                     help="write config.json, history.csv (every step) and summary.json")
    run.add_argument("--json", action="store_true", help="print only the JSON summary")
    run.add_argument("--no-progress", action="store_true")
    sweep = sub.add_parser("sweep", help="run an experiment: a grid of configs x seeds, "
                                          "batched by shape, over a process pool")
    sweep.add_argument("experiment", help="experiment file (TOML, or .json): [base], [axes], "
                                          "[record]; or a preset name (python -m simulator "
                                          "presets)")
    sweep.add_argument("--out", required=True, metavar="DIR",
                       help="writes spec.json, plan.json, batches/, results.csv, series.csv")
    sweep.add_argument("--resume", action="store_true",
                       help="continue an interrupted sweep in DIR (finished batches are kept)")
    sweep.add_argument("--workers", type=int, default=None,
                       help="processes, one torch thread each (default: the core count)")
    sweep.add_argument("--steps", type=int, default=None,
                       help="override base.steps (e.g. a short trial of a preset)")
    sweep.add_argument("--seeds", default=None, help="override base.seeds, e.g. 0-9")
    sweep.add_argument("--batch-size", type=int, default=None, metavar="SLOTS",
                       help="most members x seeds in one batch (default 256)")
    sweep.add_argument("--max-batch-memory", type=float, default=None, metavar="BYTES",
                       help="refuse a batch whose estimated peak memory is above this "
                            "(default: a quarter of the RAM; 0: no limit)")
    sweep.add_argument("--no-progress", action="store_true")
    sub.add_parser("presets", help="list the experiment presets (python -m simulator sweep NAME)")
    sub.add_parser("rules", help="list learning rules and their settings")
    sub.add_parser("tasks", help="list tasks and their settings")
    return parser


def _add_config_options(run: argparse.ArgumentParser) -> None:
    """One option per config field, its help, default and range from the one schema
    (simulator.schema): the run's settings, then task, rule and the other fields."""
    from simulator.config import SCALARS
    from simulator.rules import RULES
    from simulator.schema import OTHER_FIELDS, help_text, run_config_model
    from simulator.tasks import TASKS

    fields = run_config_model().model_fields
    run.add_argument("--task", default=fields["task"].default,
                     help=f"{fields['task'].description}: one of {', '.join(TASKS)} "
                          f"(default {fields['task'].default})")
    run.add_argument("--task-arg", action="append", default=[], metavar="KEY=VALUE",
                     help="a setting of the task (repeatable; listed below)")
    run.add_argument("--rule", default=fields["rule"].default,
                     help=f"{fields['rule'].description}: one of {', '.join(RULES)} "
                          f"(default {fields['rule'].default})")
    run.add_argument("--rule-arg", action="append", default=[], metavar="KEY=VALUE",
                     help="a setting of the rule (repeatable; listed below)")
    for setting in SCALARS:
        run.add_argument(f"--{setting.name.replace('_', '-')}", default=str(setting.default),
                         help=help_text(setting))
    for name in ("phases", "seeds"):
        default = fields[name].default
        text = default if isinstance(default, str) else ",".join(map(str, default))
        run.add_argument(f"--{name}", default=text, help=f"{fields[name].description} "
                                                         f"(default {text})".replace("%", "%%"))
    run.add_argument("--align", nargs="?", const="auto", default=None, metavar="EXACT",
                     help=f"{fields['align'].description}; --align alone: auto. Adds "
                          "mean_alignment and mean_norm_ratio (per seed) to the summary")
    run.add_argument("--compare", default=None, metavar="RULES",
                     help=f"{fields['compare'].description}. Adds mean_alignment_compare (rule "
                          "-> per seed) to the summary and alignment_RULE columns to "
                          "history.csv")
    assert set(OTHER_FIELDS) == {"phases", "seeds", "align", "compare"}  # each has its option


def _settings_epilog() -> str:
    from simulator.rules import RULES
    from simulator.schema import registry_help
    from simulator.tasks import TASKS

    return (f"{registry_help(TASKS, '--task-arg')}\n\n{registry_help(RULES, '--rule-arg')}\n\n"
            "The model's equations: docs/model.md.")


def _config_from_args(args: argparse.Namespace) -> Any:
    from simulator.config import RunConfig

    return RunConfig(
        task=args.task, task_args=parse_key_values(args.task_arg, "task_args"),
        rule=args.rule, rule_args=parse_key_values(args.rule_arg, "rule_args"),
        n=args.n, alpha=args.alpha, lr=args.lr, phases=args.phases, seeds=args.seeds,
        steps=args.steps, test_steps=args.test_steps, device=args.device, dtype=args.dtype,
        w_rec_init=args.w_rec_init, init_state=args.init_state, align=args.align,
        compare=args.compare or [],
    ).validated()


def _list(registry: dict[str, Any]) -> None:
    for name, cls in registry.items():
        settings = "; ".join(s.describe() for s in cls.settings) or "no settings"
        print(f"{name:14s} {cls.summary}. Settings: {settings}")
    print("The model's equations, the rules and their symbols: docs/model.md")


def run_command(args: argparse.Namespace) -> dict[str, Any]:
    from tqdm import tqdm

    from simulator.alignment import AlignmentMeans
    from simulator.engine import Run
    from simulator.sweep import tail_steps
    from simulator.telemetry import scalar_history

    config = _config_from_args(args)
    compile_mode: bool | str = "background" if args.background_compile else args.compile
    run = Run(config, threads=args.threads, compile=compile_mode, cuda_graph=args.cuda_graph)
    align_means = AlignmentMeans()
    compare_means = {name: AlignmentMeans() for name in config.compare}
    out_dir = Path(args.out) if args.out else None
    writer = handle = None
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
        handle = (out_dir / "history.csv").open("w", newline="")
        writer = csv.writer(handle)
    tail = tail_steps(config.steps)
    tail_sum = [0.0] * len(config.seeds)
    bar = tqdm(total=config.steps, unit="step", file=sys.stderr, disable=args.no_progress,
               dynamic_ncols=True)
    started = time.perf_counter()
    done = 0
    try:
        while done < config.steps:
            k = min(CHUNK, config.steps - done)
            tel = run.advance(k, record="scalars")
            if tel.alignment is not None:
                align_means.add(tel.alignment, tel.norm_ratio)
            for name, cosine in tel.compare.items():
                compare_means[name].add(cosine, cosine)
            overlap = max(0, done + k - (config.steps - tail))
            if overlap:
                sums = tel.loss[-overlap:].double().sum(0).tolist()
                tail_sum = [a + b for a, b in zip(tail_sum, sums, strict=True)]
            if writer:
                cols, rows = scalar_history(tel, config.seeds)
                if done == 0:
                    writer.writerow(cols)
                writer.writerows([int(t), int(seed), *rest] for t, seed, *rest in rows.tolist())
            done += k
            bar.update(k)
            bar.set_postfix(loss=f"{float(tel.loss.mean()):.4f}")
            if tel.diverged_at is not None:
                break
    finally:
        bar.close()
        if handle:
            handle.close()
    elapsed = time.perf_counter() - started
    diverged = run.status.startswith("diverged")
    test = run.evaluate(config.test_steps).tolist() if not diverged else []
    summary = {
        "rule": config.rule, "task": config.task, "steps": done, "seeds": config.seeds,
        "final_test_loss": finite(test) if not diverged else None,
        "train_loss_last": finite([s / tail for s in tail_sum]) if not diverged else None,
        "steps_per_second": done / elapsed if elapsed > 0 else None,
        "status": "finished" if not diverged else run.status,
        "reference_levels": run.task.reference_levels(),
        "compiled": run.compiled,
        "config": config.to_dict(),
    }
    if run.shadow is not None:
        alignment, ratio = align_means.means()
        summary.update(align=run.shadow.spec, mean_alignment=finite(alignment),
                       mean_norm_ratio=finite(ratio))
    if compare_means:
        summary.update(
            compare_protocol=f"passive on {config.rule}'s network, steps 0-{done - 1}",
            mean_alignment_compare={name: finite(m.means()[0])
                                    for name, m in compare_means.items()})
    if out_dir:
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _ram_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def sweep_command(args: argparse.Namespace) -> dict[str, Any]:
    from simulator.presets import resolve_experiment
    from simulator.sweep import DEFAULT_BATCH, load_spec, parse_experiment, sweep

    spec = load_spec(resolve_experiment(args.experiment))
    base = dict(spec.get("base") or {}) if isinstance(spec.get("base", {}), dict) else None
    if base is not None:
        if args.steps is not None:
            base["steps"] = args.steps
        if args.seeds is not None:
            base["seeds"] = args.seeds
        spec = {**spec, "base": base}
    experiment = parse_experiment(spec)
    workers = SWEEP_WORKERS.parse(args.workers if args.workers is not None
                                  else (os.cpu_count() or 1), "")
    batch = SWEEP_BATCH.parse(args.batch_size if args.batch_size is not None
                              else DEFAULT_BATCH, "")
    limit = SWEEP_MEMORY.parse(args.max_batch_memory if args.max_batch_memory is not None
                               else _ram_bytes() // 4, "")
    return sweep(experiment, Path(args.out), workers=workers, resume=args.resume,
                 batch_slots=batch, max_memory=int(limit), show_progress=not args.no_progress)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "rules":
            from simulator.rules import RULES

            _list(RULES)
        elif args.command == "tasks":
            from simulator.tasks import TASKS

            _list(TASKS)
        elif args.command == "presets":
            from simulator.presets import describe

            print(describe())
        elif args.command == "sweep":
            summary = sweep_command(args)
            print(json.dumps(summary))
        else:
            summary = run_command(args)
            if not args.json:
                levels = ", ".join(f"{k} {v:.4f}" for k, v in summary["reference_levels"].items())
                print(f"{summary['rule']} on {summary['task']}: {summary['status']}; "
                      f"test loss per seed {summary['final_test_loss']} (reference: {levels})")
            print(json.dumps(summary))
            return 0 if summary["status"] == "finished" else 1
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
