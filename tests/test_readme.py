"""The README's promises: it opens with exactly the two set-up commands, and its curl example
(create, watch the frames after a cursor, change a rate, stop, delete) runs as written, with
the Bearer token, against a real ``python -m app serve``; so is the cost example's body."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from helpers import TOKEN, http_json, real_server, wait_for

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def _bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def _section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end if end > 0 else None]


def _values(text: str) -> list[Any]:
    """The JSON values printed one after another (curl prints no newline after a body)."""
    decoder, out, i = json.JSONDecoder(), [], 0
    while i < len(text):
        if text[i].isspace():
            i += 1
            continue
        value, i = decoder.raw_decode(text, i)
        out.append(value)
    return out


def test_readme_opens_with_the_two_setup_commands() -> None:
    assert _bash_blocks(README)[:2] == ["pip install -e . && plasticity-lab serve\n",
                                        "bash scripts/install-test-deps.sh && python -m pytest\n"]
    details = _section("Install details")
    for fact in ("3.11", "venv", "--index-url https://download.pytorch.org/whl/cpu",
                 "torch==2.13.0", "Debian or Ubuntu", "root or with sudo"):
        assert fact in details, fact


def test_readme_curl_example_runs_against_a_real_server(tmp_path: Path) -> None:
    assert shutil.which("curl"), "the README's example needs curl"
    (block,) = _bash_blocks(_section("The REST API with curl"))
    create, watch = block.split("# watch:")
    env = {**os.environ, "PLASTICITY_TOKEN": TOKEN}
    with real_server(tmp_path, "--max-runs", "2") as (base, _):
        port = base.rsplit(":", 1)[1].split("/")[0]
        create = create.replace("127.0.0.1:8050", f"127.0.0.1:{port}")
        assert f":{port}/api" in create
        made = subprocess.run(["bash", "-euo", "pipefail", "-c", create + 'echo "$API $AUTH"'],
                              env=env, capture_output=True, text=True, timeout=120)
        assert made.returncode == 0, made.stderr[-2000:]
        first, api_auth = made.stdout.splitlines()
        rid = first.removeprefix("run ")
        status, run = http_json(f"{base}/runs/{rid}")
        assert status == 200 and run["config"]["seeds"] == [0, 1, 2, 3]
        assert run["config"]["rule"] == "dni-b" and run["target_steps"] == 200_000
        wait_for(lambda: http_json(f"{base}/runs/{rid}/frames")[1]["frames"], timeout=60,
                 what="the run's first frames")

        api, auth = api_auth.split(" ", 1)
        rest = subprocess.run(["bash", "-euo", "pipefail", "-c", "# watch:" + watch],
                              env={**env, "API": api, "AUTH": auth, "RUN": rid},
                              capture_output=True, text=True, timeout=120)
        assert rest.returncode == 0, rest.stderr[-2000:]
        *pages, changed, stopped, deleted = _values(rest.stdout)
        assert len(pages) == 3
        steps = [frame["step"] for page in pages for frame in page]
        assert steps and steps == sorted(set(steps))  # each poll only the new frames
        assert all(isinstance(frame["loss"], float) for page in pages for frame in page)
        assert changed["ok"] is True
        assert stopped["ok"] is True and stopped["status"] == "stopped"
        assert deleted == {"ok": True, "id": rid}
        assert http_json(f"{base}/runs/{rid}")[0] == 404

        # the cost section's example: its body is accepted and over this server's budget
        (example,) = _bash_blocks(_section("What a run costs, and what the server refuses"))
        assert "Authorization: Bearer $PLASTICITY_TOKEN" in example
        body = json.loads(re.search(r"-d '(\{.*?\})'", example).group(1))
        status, answer = http_json(f"{base}/estimate", body)
        assert status == 200 and answer["fits"] is False and answer["memory_bytes"] > 10**10
