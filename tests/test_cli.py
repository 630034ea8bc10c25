"""The command lines a newcomer meets first: ``python -m simulator run --help`` lists every
setting from the one schema, ``--out`` writes integer step and seed columns, ``rules`` and the
docstrings cite the repository's own docs/model.md, and ``plasticity-lab worker`` without the
Celery extra ends in a one-line hint, not a traceback."""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from pathlib import Path

import pytest

from simulator.cli import _parser, main
from simulator.config import SCALARS
from simulator.rules import RULES
from simulator.tasks import TASKS

ROOT = Path(__file__).resolve().parents[1]


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_run_help_lists_every_setting_with_help_default_and_range(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        _parser().parse_args(["run", "--help"])
    assert done.value.code == 0
    text = _flat(capsys.readouterr().out)
    for s in SCALARS:
        option = f"--{s.name.replace('_', '-')}"
        assert f"{option} " in text, option
        assert _flat(f"{s.help} (default {s.default}; {s.allowed()})") in text, s.name
    for registry in (RULES, TASKS):
        for name, cls in registry.items():
            assert f"{name}: {_flat(cls.summary)}" in text, name
            for s in cls.settings:
                assert _flat(s.describe()) in text, (name, s.name)
    for other in ("--phases", "--seeds", "--align", "--compare"):
        assert other in text


def test_out_writes_step_and_seed_as_integers(tmp_path: Path) -> None:
    code = main(["run", "--rule", "output-only", "--n", "4", "--steps", "7", "--test-steps",
                 "1", "--seeds", "3,5", "--no-progress", "--json", "--out", str(tmp_path)])
    assert code == 0
    with open(tmp_path / "history.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0][:3] == ["step", "seed", "train_loss"]
    assert [r[:2] for r in rows[1:]] == [[str(t), str(s)] for t in range(7) for s in (3, 5)]
    losses = [float(r[2]) for r in rows[1:]]
    assert all(loss > 0 for loss in losses)


def test_rules_and_docstrings_cite_docs_model_md(capsys: pytest.CaptureFixture[str]) -> None:
    model = (ROOT / "docs" / "model.md").read_text()
    sections = set(re.findall(r"^## (\d+)\. ", model, flags=re.M))
    assert {"1", "2", "3", "4", "5"} <= sections
    assert main(["rules"]) == 0
    out = capsys.readouterr().out
    assert "docs/model.md" in out
    cited = 0
    for path in [*ROOT.glob("simulator/**/*.py"), *ROOT.glob("app/**/*.py")]:
        text = path.read_text()
        assert "MODEL.md" not in text, path  # not in the repository: cite docs/model.md
        for section in re.findall(r"docs/model\.md,? section (\d+)", text):
            assert section in sections, (path, section)
            cited += 1
    assert cited >= 5


@pytest.mark.parametrize("argv", [["worker"], ["serve", "--backend", "celery", "--port", "1"]])
def test_worker_without_the_celery_extra_prints_a_one_line_hint(argv: list[str]) -> None:
    """Celery not installed (hidden from the import system): exit 2 with the pip command."""
    code = ("import sys; sys.modules['celery'] = None; from app.__main__ import main; "
            f"sys.exit(main({argv!r}))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines == ["the Celery backend needs: pip install -e '.[celery]' (celery is not "
                     "installed)"]
