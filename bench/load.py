"""Load benchmark of the run service (Celery + Redis, or the embedded local default), loopback
only, bounded in count and time.

``--backend local`` measures the embedded default as a user starts it: one ``plasticity-lab
serve`` (waitress; its worker processes, one per run, with ``--max-runs`` = the clients), the
same clients and the same report. The rest of this note is the Celery setup (the default).

Starts everything itself on 127.0.0.1 and stops it afterwards: a redis-server (AOF on, in a
temporary directory), 2 Celery workers (``plasticity-lab worker``: prefork, 10 run processes
each, so that 20 runs fit) and 2 server processes behind gunicorn (``plasticity-lab serve
--backend celery --processes 2``, i.e. ``gunicorn -w 2 -k gthread 'app.server:wsgi_app()'``).
Then 20 simulated clients (threads), each with its own run (dni-b, n=32) paced at 1,000
steps/s (``speed steps_per_second``), each polling its frames every 100 ms through the REST
API for ``--seconds``.

Prints, per client and overall: frames/s delivered, lag p50/p95 from a frame's ``wall``
(stamped by the worker right after the frame's last step) to its arrival, HTTP errors, lost
frames (gaps in ``seq``), steps/s each run achieved against its 1,000 target, request
latency, bytes/s; and the CPU each part used (workers, servers, Redis, the clients), which
says what limits the figures on this machine.

    python bench/load.py                       # 20 clients, 30 s (about 1.5 min in all)
    python bench/load.py --clients 8 --seconds 10
    python bench/load.py --backend local       # the embedded default (waitress)

A server with sign-in takes the token from ``--token`` or the PLASTICITY_TOKEN environment
variable (sent as ``Authorization: Bearer TOKEN``).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import AUTH, TOKEN, free_port, pct

ROOT = Path(__file__).resolve().parents[1]
CONFIG = {"task": "add", "rule": "dni-b", "n": 32, "steps": 10**9}
MAX_CLIENTS, MAX_SECONDS = 64, 300  # bounded, whatever the arguments


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, RuntimeError, http.client.HTTPException):
            value = predicate()
            if value:
                return value
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what}")


class Client:
    """A keep-alive JSON client for the REST API (with a bearer token when one is set)."""

    token: str | None = os.environ.get("PLASTICITY_TOKEN") or None

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any, int]:
        data = None if body is None else json.dumps(body)
        headers = {**AUTH, **({"Content-Type": "application/json"} if data else {})}
        if self.token:  # a server started elsewhere, with its own token
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            self.conn.request(method, "/api" + path, body=data, headers=headers)
            answer = self.conn.getresponse()
            payload = answer.read()
        except (http.client.HTTPException, OSError):
            self.conn.close()
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            raise
        return answer.status, json.loads(payload), len(payload)

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, payload, _ = self.call(method, path, body)
        if status >= 400:
            raise RuntimeError(f"{method} {path}: {status} {payload}")
        return payload


def cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(x) for x in f.readline().split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values) - idle) / tick, sum(values) / tick


def group_pids(pgid: int) -> list[int]:
    """Every live process in a process group (a worker and its pool, gunicorn and its workers)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError), \
                    open(f"/proc/{entry}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[2]) == pgid:
                    out.append(int(entry))
    return out


class Stack:
    """redis-server, Celery workers, gunicorn: started in their own sessions, all stopped."""

    def __init__(self, tmp: Path, workers: int, concurrency: int, servers: int) -> None:
        self.tmp, self.procs = tmp, {}
        self.workers, self.servers = workers, servers
        self.redis_port, self.http_port = free_port(), free_port()
        self.url = f"redis://127.0.0.1:{self.redis_port}/0"
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
        self.env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1",
                    "PLASTICITY_TOKEN": TOKEN}
        self._start("redis", [shutil.which("redis-server") or "redis-server", "--port",
                              str(self.redis_port), "--bind", "127.0.0.1", "--dir", str(tmp),
                              "--save", "", "--appendonly", "yes"])
        for i in range(workers):
            self._start(f"worker{i + 1}", [
                sys.executable, "-m", "app", "worker", "--redis-url", self.url,
                "--concurrency", str(concurrency), "--name", f"load{i + 1}",
                "--loglevel", "WARNING"])
        self._start("servers", [
            sys.executable, "-m", "app", "serve", "--backend", "celery", "--redis-url", self.url,
            "--processes", str(servers), "--port", str(self.http_port), "--data-dir",
            str(tmp / "data"), "--max-runs", "100", "--no-dashboard"])

    def describe(self, concurrency: int) -> str:
        return (f"{self.servers} gunicorn server processes (gthread), {self.workers} Celery "
                f"workers x {concurrency} prefork run slots; redis-server")

    def _start(self, name: str, cmd: list[str]) -> None:
        log = open(self.tmp / f"{name}.log", "wb")  # noqa: SIM115 - the process owns it
        self.procs[name] = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)

    def log_tail(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")[-2000:]

    def check(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise SystemExit(f"{name} exited:\n{self.log_tail(name)}")

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far of each part (process groups: workers include their pools)."""
        parts: dict[str, float] = {"workers": 0.0, "servers": 0.0, "redis": 0.0}
        for name, proc in self.procs.items():
            part = "workers" if name.startswith("worker") else name
            parts[part] += sum(cpu_seconds(pid) for pid in group_pids(proc.pid))
        parts["clients (this process)"] = cpu_seconds(os.getpid())
        busy, total = machine_cpu()
        parts["machine busy"], parts["machine total"] = busy, total
        return parts

    def stop(self) -> None:
        for name in sorted(self.procs, key=lambda n: n == "redis"):  # redis last
            proc = self.procs[name]
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM if name != "redis" else signal.SIGKILL)
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


class LocalStack(Stack):
    """The embedded default: one ``plasticity-lab serve`` (waitress, default settings but
    ``--max-runs``), its run worker processes in its process group."""

    def __init__(self, tmp: Path, max_runs: int) -> None:
        self.tmp, self.procs = tmp, {}
        self.http_port = free_port()
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
        self.env = {**os.environ, "PYTHONPATH": path}
        self.max_runs = max_runs
        self._start("servers", [sys.executable, "-m", "app", "serve", "--port", str(self.http_port),
                                "--data-dir", str(tmp / "data"), "--max-runs", str(max_runs),
                                "--no-dashboard"])

    def describe(self, concurrency: int) -> str:
        return (f"plasticity-lab serve (waitress, default settings, --max-runs {self.max_runs}); "
                "each run in its own worker process")

    def cpu(self) -> dict[str, float]:
        busy, total = machine_cpu()
        return {"server and run workers": sum(cpu_seconds(pid) for pid in
                                              group_pids(self.procs["servers"].pid)),
                "clients (this process)": cpu_seconds(os.getpid()),
                "machine busy": busy, "machine total": total}


class Watcher(threading.Thread):
    """One simulated client: its own run, polled every ``period`` s after its cursor."""

    def __init__(self, port: int, rid: str, seconds: float, period: float,
                 start_at: float) -> None:
        super().__init__(daemon=True)
        self.client, self.rid = Client(port), rid
        self.seconds, self.period, self.start_at = seconds, period, start_at
        self.lags: list[float] = []
        self.latencies: list[float] = []
        self.seqs: list[int] = []
        self.errors: list[str] = []
        self.bytes = 0
        self.steps = (0, 0)

    def run(self) -> None:
        time.sleep(max(0.0, self.start_at - time.monotonic()))
        with contextlib.suppress(Exception):
            _, info, _ = self.client.call("GET", f"/runs/{self.rid}")
            cursor, first = info["cursor"], info["step"]
        end = time.monotonic() + self.seconds
        while time.monotonic() < end:
            tick = time.monotonic()
            try:
                status, page, size = self.client.call("GET", f"/runs/{self.rid}/frames?after={cursor}")
                arrived = time.time()
                self.latencies.append(time.monotonic() - tick)
                if status != 200:
                    self.errors.append(f"{status} {page}")
                else:
                    self.bytes += size
                    for frame in page["frames"]:
                        self.lags.append(arrived - frame["wall"])
                        self.seqs.append(frame["seq"])
                    cursor = page["cursor"]
            except Exception as exc:  # counted, never fatal
                self.errors.append(repr(exc))
            time.sleep(max(0.0, self.period - (time.monotonic() - tick)))
        with contextlib.suppress(Exception):
            last = self.client.ok("GET", f"/runs/{self.rid}")["step"]
            self.steps = (first, last)

    def lost(self) -> int:
        return sum(b - a - 1 for a, b in zip(self.seqs, self.seqs[1:], strict=False) if b > a + 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=20, help="clients, one run each (<= 64)")
    parser.add_argument("--seconds", type=float, default=30.0, help="measured window (<= 300)")
    parser.add_argument("--pace", type=float, default=1000.0, help="steps/s of each run")
    parser.add_argument("--period", type=float, default=0.1, help="seconds between polls")
    parser.add_argument("--workers", type=int, default=2, help="Celery worker processes")
    parser.add_argument("--concurrency", type=int, default=None,
                        help="run slots per worker (default: enough for every client)")
    parser.add_argument("--servers", type=int, default=2, help="gunicorn server processes")
    parser.add_argument("--backend", choices=("celery", "local"), default="celery",
                        help="celery (default): the Celery + Redis stack; local: the embedded "
                             "default server")
    parser.add_argument("--runs", type=int, default=None,
                        help="runs the clients share (client i polls run i mod RUNS; default: "
                             "one per client); --backend local serves with --max-runs RUNS")
    parser.add_argument("--token", default=None,
                        help="sign-in token, sent as a bearer header (default: $PLASTICITY_TOKEN)")
    args = parser.parse_args()
    if args.token:
        Client.token = args.token
    clients = max(1, min(args.clients, MAX_CLIENTS))
    seconds = max(1.0, min(args.seconds, MAX_SECONDS))
    concurrency = args.concurrency or -(-clients // args.workers)
    if args.backend == "celery" and not shutil.which("redis-server"):
        raise SystemExit("redis-server is not installed")
    tmp = Path(tempfile.mkdtemp(prefix="plasticity-load-"))
    began = time.monotonic()
    args.runs = max(1, min(args.runs or clients, clients))
    stack = (LocalStack(tmp, args.runs) if args.backend == "local"
             else Stack(tmp, args.workers, concurrency, args.servers))
    try:
        measure(stack, clients, seconds, args, concurrency)
    finally:
        stack.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"total wall time {time.monotonic() - began:.0f} s (start-up, warm-up, window, stop)")


def measure(stack: Stack, clients: int, seconds: float, args: argparse.Namespace,
            concurrency: int) -> None:
    admin = Client(stack.http_port)

    def up() -> bool:
        stack.check()
        return admin.call("GET", "/openapi.json")[0] == 200

    wait_for(up, 90, "the servers")
    runs = args.runs or clients
    print(f"{clients} clients on {runs} {CONFIG['rule']} n={CONFIG['n']} runs paced at "
          f"{args.pace:g} steps/s, polled every {args.period * 1000:.0f} ms; "
          f"{stack.describe(concurrency)}; {os.cpu_count()} cores", flush=True)
    rids = []
    for _ in range(runs):
        rid = admin.ok("POST", "/runs", CONFIG)["id"]
        rids.append(rid)

    def all_claimed() -> bool:
        stack.check()
        infos = admin.ok("GET", "/runs")["runs"]
        return sum(r["status"] == "running" and r["step"] > 0 for r in infos) >= len(rids)

    wait_for(all_claimed, 180, "every run to start")  # then each worker answers at once
    for rid in rids:
        admin.ok("POST", f"/runs/{rid}/control", {"action": "speed",
                                                  "steps_per_second": args.pace})
    time.sleep(3.0)  # warm-up: every run paced
    cpu0, t0 = stack.cpu(), time.monotonic()
    watchers = [Watcher(stack.http_port, rids[i % len(rids)], seconds, args.period,
                        time.monotonic() + 0.2) for i in range(clients)]
    for w in watchers:
        w.start()
    for w in watchers:
        w.join(seconds + 60)
    elapsed = time.monotonic() - t0 - 0.2
    cpu1 = stack.cpu()
    report(watchers, elapsed, args.pace, {k: cpu1[k] - cpu0.get(k, 0.0) for k in cpu1},
           time.monotonic() - t0)
    for rid in rids:  # fences each task out: the slots free at once
        with contextlib.suppress(Exception):
            admin.call("DELETE", f"/runs/{rid}")


def report(watchers: list[Watcher], elapsed: float, pace: float, cpu: dict[str, float],
           wall: float) -> None:
    fps = [len(w.seqs) / elapsed for w in watchers]
    sps = [(w.steps[1] - w.steps[0]) / elapsed for w in watchers]
    lags = [x for w in watchers for x in w.lags]
    latencies = [x for w in watchers for x in w.latencies]
    errors = [e for w in watchers for e in w.errors]
    lost = sum(w.lost() for w in watchers)
    print(f"\n{'client':>6} {'frames/s':>9} {'lag p50':>8} {'lag p95':>8} {'lost':>5} "
          f"{'errors':>6} {'steps/s':>8}")
    for i, w in enumerate(watchers):
        print(f"{i + 1:>6} {fps[i]:>9.2f} {1000 * pct(w.lags, 0.5):>6.0f}ms "
              f"{1000 * pct(w.lags, 0.95):>6.0f}ms {w.lost():>5} {len(w.errors):>6} {sps[i]:>8.0f}")
    total_bytes = sum(w.bytes for w in watchers)
    print(f"\nframes/s per client: mean {statistics.mean(fps):.2f}, min {min(fps):.2f}, max "
          f"{max(fps):.2f} (a paced run makes ~10/s); all clients {sum(fps):.0f}/s, "
          f"{total_bytes / elapsed / 1e6:.1f} MB/s of JSON")
    print(f"lag frame wall -> arrival: p50 {1000 * pct(lags, 0.5):.0f} ms, p95 "
          f"{1000 * pct(lags, 0.95):.0f} ms, max {1000 * max(lags, default=float('nan')):.0f} ms "
          f"(includes up to one {1000 * (watchers[0].period if watchers else 0.1):.0f} ms poll "
          f"interval)")
    print(f"request latency: p50 {1000 * pct(latencies, 0.5):.0f} ms, p95 "
          f"{1000 * pct(latencies, 0.95):.0f} ms over {len(latencies)} requests")
    print(f"errors: {len(errors)}{' e.g. ' + errors[0][:200] if errors else ''}; lost frames "
          f"(seq gaps): {lost}")
    print(f"steps/s per run: mean {statistics.mean(sps):.0f}, min {min(sps):.0f} (target {pace:g}); "
          f"all runs {sum(sps):.0f} steps/s")
    machine_busy, machine_total = cpu.pop("machine busy"), cpu.pop("machine total")
    ours = sum(cpu.values())
    others = max(0.0, machine_busy - ours)
    print(f"CPU over the window, in core-seconds ({machine_total:.0f} available): " + ", ".join(
        f"{k} {v:.1f}" for k, v in cpu.items())
        + f"; this benchmark {100 * ours / machine_total:.0f}% of the machine, other processes "
        f"{100 * others / machine_total:.0f}%, idle {100 * (1 - machine_busy / machine_total):.0f}%")


if __name__ == "__main__":
    main()
