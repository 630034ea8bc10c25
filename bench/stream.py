"""Streaming benchmark: one dni-b run (n=32) in a real server subprocess, watched through the
REST API by a client polling frames every 100 ms.

Prints: frames/s delivered; lag p50/p95 from a frame's creation in the worker (wall clock,
stamped right after the frame's last step was simulated) to its arrival at the client, and the
same plus the frame's own span (a bound for the frame's first step); steps/s watched relative
to the same run unwatched (interleaved windows, medians; goal >= 90%); server RSS
sampled every 100k steps up to --steps (default 1,000,000; goal < 500 MB and flat over the last
half), with the client still watching and frames of --spf steps carrying traces and matrices.

    python bench/stream.py                  # the full run (a few minutes on 2 cores)
    python bench/stream.py --steps 200000   # shorter
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import AUTH, TOKEN, free_port, pct

ROOT = Path(__file__).resolve().parents[1]
CONFIG = {"task": "add", "rule": "dni-b", "n": 32, "steps": 10**9}


class Client:
    """A keep-alive JSON client for the server's REST API."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body)
        headers = {**AUTH, **({"Content-Type": "application/json"} if data else {})}
        for attempt in range(2):
            try:
                self.conn.request(method, "/api" + path, body=data, headers=headers)
                answer = self.conn.getresponse()
                payload = answer.read()
                if answer.status >= 400:
                    raise RuntimeError(f"{method} {path}: {answer.status} {payload[:300]!r}")
                return json.loads(payload)
            except (http.client.HTTPException, ConnectionError):
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def get(self, path: str) -> Any:
        return self.call("GET", path)

    def post(self, path: str, body: Any) -> Any:
        return self.call("POST", path, body)


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def start_server(data_dir: str) -> tuple[subprocess.Popen, Client]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PLASTICITY_TOKEN": TOKEN}
    proc = subprocess.Popen([sys.executable, "-m", "app", "serve", "--no-dashboard", "--port",
                             str(port), "--data-dir", data_dir, "--max-runs", "2"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = Client(port)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            client.get("/openapi.json")
            return proc, client
        except (OSError, RuntimeError):
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("server did not start")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def steps_per_second(client: Client, rid: str, seconds: float) -> tuple[float, float]:
    """Unwatched: two looks at the step counter, nothing else. (steps/s, worker CPU share)."""
    info = client.get(f"/runs/{rid}")
    a, t_a, c_a = info["step"], time.perf_counter(), cpu_seconds(info["pid"])
    time.sleep(seconds)
    b, t_b, c_b = client.get(f"/runs/{rid}")["step"], time.perf_counter(), cpu_seconds(info["pid"])
    return (b - a) / (t_b - t_a), (c_b - c_a) / (t_b - t_a)


def watch(client: Client, rid: str, seconds: float, cursor: int, period: float = 0.1,
          until_step: int | None = None, on_poll: Any = None) -> dict[str, Any]:
    """Poll frames after the cursor every ``period`` s; lags and counts."""
    lags, spans, frames, polls, nbytes = [], [], 0, 0, 0
    info = client.get(f"/runs/{rid}")
    first_step, pid = info["step"], info["pid"]
    began, cpu_began = time.perf_counter(), cpu_seconds(pid)
    step = first_step
    while True:
        tick = time.perf_counter()
        page = client.get(f"/runs/{rid}/frames?after={cursor}")
        now = time.time()
        polls += 1
        for frame in page["frames"]:
            lags.append(now - frame["wall"])
            rate = frame.get("steps_per_second") or 0
            spans.append((frame["t1"] - frame["t0"]) / rate if rate else 0.0)
            step = frame["t1"]
        frames += len(page["frames"])
        nbytes += len(json.dumps(page))
        cursor = page["cursor"]
        if on_poll is not None:
            on_poll(step)
        elapsed = time.perf_counter() - began
        if (until_step is None and elapsed >= seconds) or (until_step is not None and step >= until_step):
            break
        time.sleep(max(0.0, period - (time.perf_counter() - tick)))
    last_step = client.get(f"/runs/{rid}")["step"]
    elapsed = time.perf_counter() - began
    cpu = (cpu_seconds(pid) - cpu_began) / elapsed
    return {"cpu": cpu, "cursor": cursor, "frames": frames, "polls": polls, "seconds": elapsed, "lags": lags,
            "spans": spans, "steps_per_second": (last_step - first_step) / elapsed,
            "kb_per_s": nbytes / 1024 / elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1_000_000,
                        help="steps for the memory run (0: skip it)")
    parser.add_argument("--seconds", type=float, default=5.0, help="each speed-comparison window")
    parser.add_argument("--rounds", type=int, default=3, help="unwatched/watched window pairs")
    parser.add_argument("--spf", type=int, default=500, help="steps per frame in the memory run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as data_dir:
        proc, client = start_server(data_dir)
        try:
            run(client, proc.pid, args)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


def run(client: Client, server_pid: int, args: argparse.Namespace) -> None:
    rid = client.post("/runs", CONFIG)["id"]
    print(f"server pid {server_pid}, run {rid}: {CONFIG['rule']} n={CONFIG['n']}, 2 cores shared "
          f"by server, worker and client", flush=True)
    while client.get(f"/runs/{rid}")["step"] < 2000:
        time.sleep(0.2)
    time.sleep(1.0)  # warm-up

    unwatched_rates, watched_rates, lags, spans, cpu_u, cpu_w = [], [], [], [], [], []
    frames = polls = 0
    seconds = kb = 0.0
    for _ in range(args.rounds):  # interleaved, so that load from elsewhere hits both alike
        rate, cpu = steps_per_second(client, rid, args.seconds)
        unwatched_rates.append(rate)
        cpu_u.append(cpu)
        watched = watch(client, rid, args.seconds, client.get(f"/runs/{rid}")["cursor"])
        watched_rates.append(watched["steps_per_second"])
        cpu_w.append(watched["cpu"])
        lags += watched["lags"]
        spans += watched["spans"]
        frames, polls = frames + watched["frames"], polls + watched["polls"]
        seconds, kb = seconds + watched["seconds"], kb + watched["kb_per_s"] * watched["seconds"]
    unwatched = statistics.median(unwatched_rates)
    watched_rate = statistics.median(watched_rates)
    lags_ms = [1000 * x for x in lags]
    bound_ms = [1000 * (x + s) for x, s in zip(lags, spans, strict=True)]
    print(f"frames delivered     {frames / seconds:.1f} /s ({polls / seconds:.1f} polls/s, "
          f"{kb / seconds:.0f} KiB/s)")
    print(f"lag frame -> client  p50 {pct(lags_ms, 0.5):.0f} ms, p95 {pct(lags_ms, 0.95):.0f} ms "
          f"({len(lags_ms)} frames)")
    print(f"lag first step of a frame -> client  p50 {pct(bound_ms, 0.5):.0f} ms, "
          f"p95 {pct(bound_ms, 0.95):.0f} ms")
    print(f"steps/s unwatched    {', '.join(f'{r:.0f}' for r in unwatched_rates)} "
          f"(median {unwatched:.0f})")
    print(f"steps/s watched      {', '.join(f'{r:.0f}' for r in watched_rates)} "
          f"(median {watched_rate:.0f}) = {100 * watched_rate / unwatched:.1f}% of unwatched "
          f"(goal >= 90%); load average {os.getloadavg()[0]:.2f}")
    print(f"worker CPU share     unwatched {', '.join(f'{c:.0%}' for c in cpu_u)}; watched "
          f"{', '.join(f'{c:.0%}' for c in cpu_w)} (below 100%: the worker waited for a core)")
    print(f"steps per worker CPU-second: unwatched "
          f"{statistics.median(r / c for r, c in zip(unwatched_rates, cpu_u, strict=True)):.0f}, "
          f"watched {statistics.median(r / c for r, c in zip(watched_rates, cpu_w, strict=True)):.0f}",
          flush=True)

    ff_rate = fast_forward_rate(client, rid, unwatched, args.seconds)
    print(f"steps/s with no frames at all (fast-forward): {ff_rate:.0f}", flush=True)
    if args.steps > 0:
        memory(client, rid, server_pid, args, client.get(f"/runs/{rid}")["cursor"])


def fast_forward_rate(client: Client, rid: str, rate: float, seconds: float) -> float:
    """Steps/s while fast-forwarding (scalars only: no traces, no frames) for ~seconds."""
    start = client.get(f"/runs/{rid}")["step"]
    target = start + int(rate * seconds)
    began = time.perf_counter()
    client.post(f"/runs/{rid}/control", {"action": "fast_forward", "to": target})
    while client.get(f"/runs/{rid}")["step"] < target:
        time.sleep(0.05)
    return (client.get(f"/runs/{rid}")["step"] - start) / (time.perf_counter() - began)


def memory(client: Client, rid: str, server_pid: int, args: argparse.Namespace, cursor: int) -> None:
    """Run to --steps with frames of --spf steps, watched; RSS every 10% of the way."""
    client.post(f"/runs/{rid}/control", {"action": "speed", "steps_per_frame": args.spf})
    start_step = client.get(f"/runs/{rid}")["step"]
    if args.steps < start_step * 1.5:  # the speed comparison already went far: go further
        args.steps = start_step + args.steps
    every = max(1, args.steps // 10)
    samples: list[tuple[int, float]] = [(start_step, rss_mb(server_pid))]
    began = time.perf_counter()
    print(f"memory run: to step {args.steps}, {args.spf} steps per frame, watched; server RSS "
          f"{samples[0][1]:.0f} MB at step {start_step}", flush=True)

    def on_poll(step: int) -> None:
        if step >= samples[-1][0] + every or (step >= args.steps > samples[-1][0]):
            samples.append((step, rss_mb(server_pid)))
            print(f"  step {step:>9,}  server RSS {samples[-1][1]:6.1f} MB  "
                  f"({time.perf_counter() - began:5.0f} s)", flush=True)

    result = watch(client, rid, 0, cursor, until_step=args.steps, on_poll=on_poll)
    info = client.get(f"/runs/{rid}")
    history = client.get(f"/runs/{rid}/history?max_points=500")
    worker = info.get("pid")
    half = [mb for step, mb in samples if step >= args.steps / 2]
    print(f"reached step {info['step']:,} in {result['seconds']:.0f} s "
          f"({result['steps_per_second']:.0f} steps/s watched, {result['frames']} frames)")
    print(f"server RSS after {info['step']:,} steps: {samples[-1][1]:.1f} MB (goal < 500 MB); "
          f"over the last half: min {min(half, default=float('nan')):.1f}, "
          f"max {max(half, default=float('nan')):.1f} MB "
          f"(spread {max(half, default=0) - min(half, default=0):.1f} MB)")
    if worker:
        print(f"worker RSS {rss_mb(worker):.1f} MB")
    print(f"history: {len(history['step'])} bins covering steps "
          f"{history['step'][0] if history['step'] else '-'}..{history['t']}, "
          f"{len(history['test_loss']['step'])} test-loss points; "
          f"test loss now {statistics.fmean(x for x in info['last_test_loss'] if x is not None):.4f}"
          if info.get("last_test_loss") else "")


if __name__ == "__main__":
    main()
