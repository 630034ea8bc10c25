"""Server memory over many finished runs (issue 10, defect 9): flat, not ~20 MB per run.

Starts a real ``python -m app serve --no-dashboard`` on 127.0.0.1 (data in a temporary
directory, ``--max-runs 4``), then runs ``--runs`` short runs to completion, four at a time,
each as the dashboard starts one (created ready, ``speed steps_per_frame``, ``resume``) with
a small frame interval so that each fills a frame window with detailed frames (traces and
weight-change matrices), while a client polls the frames of the runs in flight. Prints the
server process's resident memory (VmRSS) before the first run and after 20, 100 and 200
finished runs (the ``--report`` points), then stops the server.

    python bench/memory.py                    # 200 runs (several minutes on 2 cores)
    python bench/memory.py --runs 40 --report 10,20,40
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from _common import free_port

ROOT = Path(__file__).resolve().parents[1]
PARALLEL = 4


def call(url: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST" if body is not None else "GET",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200, help="runs to finish (default 200)")
    parser.add_argument("--report", default="20,100,200", help="print RSS after these many")
    parser.add_argument("--n", type=int, default=32, help="units per run (default 32)")
    parser.add_argument("--steps", type=int, default=3000, help="steps per run (default 3000)")
    parser.add_argument("--steps-per-frame", type=int, default=10,
                        help="steps per frame (default 10: 300 frames per run)")
    args = parser.parse_args()
    if not 1 <= args.runs <= 1000:
        parser.error(f"runs: got {args.runs}; allowed: 1 to 1000")
    report = sorted({int(x) for x in args.report.split(",") if x.strip()})
    config = {"task": "add", "rule": "dni-b", "n": args.n, "seeds": "0-3",
              "steps": args.steps, "test_steps": 100}

    workdir = Path(tempfile.mkdtemp(prefix="plab-memory-"))
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "app", "serve", "--no-dashboard", "--port", str(port),
         "--data-dir", str(workdir / "data"), "--max-runs", str(PARALLEL)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError):
                if call(f"{base}/openapi.json")[0] == 200:
                    break
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit("the server did not come up")
            time.sleep(0.2)
        print(f"server pid {server.pid}; {args.runs} runs of {config['rule']} n={args.n}, "
              f"4 seeds, {args.steps} steps, a frame every {args.steps_per_frame} steps",
              flush=True)
        print(f"RSS before any run: {rss_mb(server.pid):7.1f} MB", flush=True)
        began = time.monotonic()
        cursors: dict[str, int] = {}
        created = finished = 0
        while finished < args.runs:
            while len(cursors) < PARALLEL and created < args.runs:
                code, body = call(f"{base}/runs", {**config, "start": False})
                if code != 201:
                    break  # a slot frees when the worker has exited
                rid = body["id"]
                call(f"{base}/runs/{rid}/control",
                     {"action": "speed", "steps_per_frame": args.steps_per_frame})
                call(f"{base}/runs/{rid}/control", {"action": "resume"})
                cursors[rid] = -1
                created += 1
            for rid in list(cursors):
                _, page = call(f"{base}/runs/{rid}/frames?after={cursors[rid]}")
                cursors[rid] = page["cursor"]
                _, info = call(f"{base}/runs/{rid}")
                if not info["alive"] and info["status"] not in ("running", "paused", "ready"):
                    del cursors[rid]
                    finished += 1
                    if finished in report:
                        print(f"RSS after {finished:4d} finished runs: {rss_mb(server.pid):7.1f} MB"
                              f"  ({time.monotonic() - began:5.0f} s)", flush=True)
            time.sleep(0.1)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
