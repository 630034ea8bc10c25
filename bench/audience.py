"""A class watching one live run: N viewers of one dni-b run on the default server (issue 15).

    python bench/audience.py                        # N = 10, 50, 100; 60 s each
    python bench/audience.py --viewers 100 --seconds 20 --json
    python bench/audience.py --root /path/to/old/checkout   # the same against other code

Starts ``python -m app serve`` (sign-in on, a random token; waitress) from ``--root`` on a free
port with a temporary data directory, one dni-b run (n=32) paced at 100 steps/s, and a viewer
link to it. Then:

1. the **lecturer**: headless Chromium signed in as the admin, the run on screen (all panels on,
   at 1920x1080 by default, ``--lecturer WxH``);
   its update rate is what assets/plab.js counts (``plab.stats()``: redraws per second);
2. a **probe viewer** (Chromium, laptop size) opens the viewer link once; the bench records
   what that page requests while it runs: the live loop (``GET _plab/live/<key>`` with
   ``since``, and If-None-Match where the page sends it; on older code ``POST _plab/tick``
   with view, cursors and carry) and the Dash callbacks its clock fires (run status, run
   table), with their periods;
3. **N simulated viewers** (threads, one keep-alive connection each, the viewer's cookies;
   HTTP/1.1 spoken on the socket, see Wire) replay exactly that: the live loop with the page's
   intervals (``plab.pollMs`` after an answer while frames arrive: 100 ms on a viewer page, 50
   ms on older code; and, where the server sends the hint X-Plab-Next, not before the expected
   next frame + SLACK_MS; 1 s after 3 s without), gzip accepted as a browser does, the clock's
   callbacks at the period the probe saw (3 s; 1 s on older code).

First ``--seconds`` with no viewers (the run's and the lecturer's unwatched speed), then each
N for ``--seconds`` after a 3 s join. Per N: updates per second each viewer received (median
and 5th percentile; an update is an answer that carries new frames), lag from a frame's
creation in the worker (``wall``) to its arrival (p50, p95), the server process's CPU (%% of
one core) and RSS, the run worker's CPU, errors (non-2xx/304 answers, failed connections),
the lecturer's update rate and the run's steps/s; and where the CPU went: the simulated
clients' own process, the lecturer's Chromium, the whole machine (busy %% of both cores, load
average), and the lecturer's live polls as its browser timed them (round trip; request sent
to first byte, the server's part, from Resource Timing). A viewer reads every answer whole but
takes the newest frame's time from ``X-Plab-Wall`` and its item number from the ETag instead
of decompressing and parsing the body (a phone does that on its own CPU, not the server's);
on code without that header it parses the body as before. ``--json`` prints, as the last line,
``{"viewers", "p5_updates_per_s", "p95_lag_ms", "errors", "run_speed_ratio", ...}`` for the
largest N (``run_speed_ratio``: steps/s watched / unwatched).
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import http.client
import itertools
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from _common import AUTH, TOKEN, free_port, pct
from load import cpu_seconds, group_pids, machine_cpu

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
CONFIG = {"task": "add", "rule": "dni-b", "n": 32, "steps": 10**9}
IDLE_S, IDLE_AFTER_S, CLOCK_S = 1.0, 3.0, 1.0  # assets/plab.js; the layout's clock (default)
SLACK_MS = 8  # assets/plab.js: a poll goes this long after the frame the server's hint expects
MAX_VIEWERS, MAX_SECONDS = 200, 600


def chromium_pids() -> list[int]:
    """This process's descendants whose name says Chromium (the lecturer's browser; the
    probe viewer's context closed before any measurement)."""
    parent: dict[int, int] = {}
    names: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError), \
                    open(f"/proc/{entry}/stat") as f:
                text = f.read()
                names[int(entry)] = text[text.index("(") + 1:text.rindex(")")]
                parent[int(entry)] = int(text.rsplit(")", 1)[1].split()[1])
    me, out = os.getpid(), []
    for pid in parent:
        up, seen = pid, 0
        while up in parent and up != me and seen < 64:
            up, seen = parent[up], seen + 1
        if up == me and "chrom" in names.get(pid, "").lower():
            out.append(pid)
    return out


def rss(pid: int) -> int:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
    return 0


class Server:
    def __init__(self, root: Path, tmp: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(root), "PLASTICITY_TOKEN": TOKEN,
               "PYTHONUNBUFFERED": "1"}
        self.log = open(tmp / "server.log", "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app", "serve", "--port", str(self.port), "--data-dir",
             str(tmp / "data")], cwd=root, env=env, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if self.call("GET", "/api/openapi.json")[0] == 200:
                    return
            if self.proc.poll() is not None:
                raise RuntimeError((tmp / "server.log").read_text()[-2000:])
            time.sleep(0.2)
        raise RuntimeError("the server did not start")

    def call(self, method: str, path: str, body: Any = None,
             headers: dict[str, str] | None = None) -> tuple[int, Any, http.client.HTTPMessage]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            data = None if body is None else json.dumps(body).encode()
            conn.request(method, path, body=data, headers={
                **({"Content-Type": "application/json"} if data is not None else {}),
                **(headers or AUTH)})
            answer = conn.getresponse()
            raw = answer.read()
            with contextlib.suppress(ValueError):
                return answer.status, json.loads(raw or b"null"), answer.headers
            return answer.status, raw, answer.headers
        finally:
            conn.close()

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, payload, _ = self.call(method, path, body)
        if status >= 300:
            raise RuntimeError(f"{method} {path}: {status} {str(payload)[:300]}")
        return payload

    def workers(self) -> list[int]:
        return [p for p in group_pids(self.proc.pid) if p != self.proc.pid]

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()


class Wire:
    """One keep-alive HTTP/1.1 connection, spoken directly on the socket: the same requests
    as http.client sends (request line, Host, the given headers, Content-Length), the whole
    answer read (Content-Length or chunked), but about a third of http.client's CPU per
    request (no email.parser on every answer): the simulated viewers stand in for a class's
    phones, whose CPU is not this machine's, so their client work here should be small."""

    def __init__(self, port: int) -> None:
        self.port, self.sock, self.buf = port, None, b""

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock, self.buf = None, b""

    def _fill(self) -> None:
        chunk = self.sock.recv(262144)
        if not chunk:
            raise ConnectionError("closed by the server")
        self.buf += chunk

    def _take(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _line(self) -> bytes:
        while (end := self.buf.find(b"\r\n")) < 0:
            self._fill()
        out, self.buf = self.buf[:end], self.buf[end + 2:]
        return out

    def request(self, method: str, path: str, body: bytes | None,
                headers: dict[str, str]) -> tuple[int, bytes, dict[str, str]]:
        if self.sock is None:
            self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{self.port}",
                 *(f"{k}: {v}" for k, v in headers.items())]
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b""))
        while (end := self.buf.find(b"\r\n\r\n")) < 0:
            self._fill()
        head, self.buf = self.buf[:end].decode("latin-1").split("\r\n"), self.buf[end + 4:]
        status = int(head[0].split(" ", 2)[1])
        got = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            got[name.strip().lower()] = value.strip()
        if "content-length" in got:
            raw = self._take(int(got["content-length"]))
        elif got.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while size := int(self._line().split(b";")[0], 16):
                parts.append(self._take(size))
                self._line()
            self._line()
            raw = b"".join(parts)
        elif status in (204, 304):
            raw = b""
        else:  # delimited by the end of the connection
            with contextlib.suppress(ConnectionError):
                while True:
                    self._fill()
            raw, self.buf = self.buf, b""
            got["connection"] = "close"
        if got.get("connection", "").lower() == "close":
            self.close()
        return status, raw, got


class Viewer(threading.Thread):
    """One viewer page's requests: the live loop and the clock's Dash callbacks."""

    def __init__(self, server: Server, pattern: dict[str, Any], stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.server, self.pattern, self.stop_event = server, pattern, stop
        self.updates: list[float] = []  # arrival times of answers with new frames
        self.lags: list[tuple[float, float]] = []  # (arrival, ms)
        self.errors: list[str] = []
        self.wire = Wire(server.port)

    def request(self, method: str, path: str, body: bytes | None,
                headers: dict[str, str]) -> tuple[int, bytes, dict[str, str]]:
        for attempt in (0, 1):  # a keep-alive connection the server closed: once more
            try:
                return self.wire.request(method, path, body, headers)
            except (OSError, ValueError, IndexError):
                self.wire.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def run(self) -> None:
        p = self.pattern
        cookie = {"Cookie": p["cookie"], "X-CSRFToken": p["csrf"]}
        since, cursors, carry = -1, dict(p["cursors"]), p.get("carry") or {}
        last_data, next_clock = time.time(), time.time() + p["clock_s"] * random.random()
        while not self.stop_event.is_set():
            t0, after = time.time(), 0.0  # after: when to poll next, by the hint (time.time())
            try:
                if p["kind"] == "live":
                    path = f"{p['path']}?since={since}"
                    headers = dict(cookie)
                    if since < 0:
                        path += "&c=" + quote(json.dumps(cursors, separators=(",", ":")))
                    elif p.get("conditional"):  # as the page does (older code: it did)
                        headers["If-None-Match"] = f'"{since}"'
                    status, raw, got = self.request("GET", path, None, {
                        **headers, "Accept-Encoding": "gzip"})
                    now = time.time()
                    hint = got.get("x-plab-next")  # from the answer, as the page counts it
                    after = now + (int(hint) + SLACK_MS) / 1000 if hint is not None else 0.0
                    if status == 200 and ("x-plab-wall" in got or (
                            len(raw) < 40 and raw.startswith(b'{"seq"'))):  # or nothing new
                        # the newest frame's creation time and the item number from the
                        # headers (X-Plab-Wall, ETag): the body read whole, not parsed here
                        since = int(got["etag"].strip('"'))
                        if "x-plab-wall" in got:
                            self.arrived(now, float(got["x-plab-wall"]))
                            last_data = now
                    elif status == 200:  # a resync, or older code without X-Plab-Wall
                        if got.get("content-encoding") == "gzip":
                            raw = gzip.decompress(raw)
                        body = json.loads(raw)
                        if body.get("resync"):
                            self.errors.append("resync")
                        since = body.get("seq", since)
                        walls = [i["wall"] for i in body.get("items") or [] if i.get("wall")]
                        if walls:
                            self.arrived(now, max(walls))
                            last_data = now
                    elif status != 304:
                        self.errors.append(f"live {status}")
                else:  # older code: POST _plab/tick with the whole view, cursors and carry
                    data = json.dumps({"view": p["view"], "cursors": cursors,
                                       "carry": carry}).encode()
                    status, raw, _ = self.request("POST", p["path"], data, {
                        **cookie, "Content-Type": "application/json"})
                    now = time.time()
                    if status == 200:
                        body = json.loads(raw)
                        cursors, carry = body.get("to") or cursors, body.get("carry") or carry
                        if body.get("has_frames") and body.get("wall"):
                            self.arrived(now, body["wall"])
                            last_data = now
                    else:
                        self.errors.append(f"tick {status}")
                if now >= next_clock:  # the page's 1 s clock: its Dash callbacks
                    next_clock = now + p["clock_s"]
                    for path, callback in p["clock"]:
                        status, _, _ = self.request("POST", path, callback.encode(), {
                                                     **cookie, "Content-Type": "application/json"})
                        if status >= 300 and status != 304:
                            self.errors.append(f"callback {status}")
            except (OSError, http.client.HTTPException, ValueError, IndexError) as err:
                self.errors.append(type(err).__name__)
                self.stop_event.wait(1.0)
                continue
            if time.time() - last_data <= IDLE_AFTER_S:
                wait = p["poll_s"]  # and, as the page does, after the next frame's hint
            else:
                wait, after = IDLE_S, 0.0
            self.stop_event.wait(max(after - time.time(), wait - (time.time() - t0)))
        self.wire.close()

    def arrived(self, now: float, wall: float) -> None:
        self.updates.append(now)
        self.lags.append((now, (now - wall) * 1000))


def until(page: Any, expression: str, timeout: float = 60.0) -> None:
    """Wait for a JS expression on the page (the CSP allows no string-eval'd predicates)."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {expression}")
        page.wait_for_timeout(100)


def probe(browser: Any, server: Server, url: str, rid: str) -> dict[str, Any]:
    """What a viewer page requests: its live loop and the Dash callbacks of its clock."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    clock: dict[str, tuple[str, str]] = {}
    fired: dict[str, list[float]] = {}

    conditional: list[bool] = []

    def seen(request: Any) -> None:  # Dash callbacks fired by the page's 1 s clock
        if request.method == "GET" and "/_plab/live/" in request.url and "since=-1" not in \
                request.url:
            conditional.append("if-none-match" in request.headers)
        if request.method != "POST" or not request.post_data:
            return
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            body = json.loads(request.post_data)
            if any(i.get("id") == "slow-clock" for i in body.get("inputs") or []
                   if isinstance(i, dict)) and (body.get("changedPropIds") or []) == [
                    "slow-clock.n_intervals"]:
                path = "/" + request.url.split("/", 3)[3]
                clock.setdefault(json.dumps(body.get("output")), (path, request.post_data))
                fired.setdefault(json.dumps(body.get("output")), []).append(time.monotonic())

    page.on("request", seen)
    page.goto(url)
    until(page, "!!(window.plab && window.plab.view && window.plab.view.runs.length && "
                "window.plab.state)")
    cookies = {c["name"]: c["value"] for c in context.cookies()}
    cookie = "; ".join(f"{k}={v}" for k, v in cookies.items())
    declared = clock_period(server, cookie)
    deadline = time.monotonic() + 15  # until the clock fired twice (its period)
    while declared != 0 and time.monotonic() < deadline and \
            not any(len(t) >= 3 for t in fired.values()):
        page.wait_for_timeout(250)
    periods = [b - a for t in fired.values() for a, b in itertools.pairwise(t[1:])]
    view = page.evaluate("window.plab.view")
    poll = page.evaluate("window.plab.pollMs || 50") / 1000
    state = page.evaluate("window.plab.state")
    context.close()
    if declared == 0:  # no clock on the page (status changes come with the live answers)
        clock, declared = {}, 3600.0
    pattern = {"cookie": cookie,
               "csrf": cookies.get("_csrf_token", ""), "clock": list(clock.values()),
               "cursors": state.get("cursors") or {}, "poll_s": poll,
               "conditional": any(conditional),
               "clock_s": declared or (round(statistics.median(periods), 1) if periods
                                       else CLOCK_S)}
    if view.get("live"):
        pattern.update(kind="live", path=f"/_plab/live/{view['live']}")
    else:
        pattern.update(kind="tick", path="/_plab/tick", view=view, carry=state.get("carry"))
    return pattern


#: the lecturer's live polls (Resource Timing, the browser's own clock): median and p95 of
#: request sent -> first byte of the answer (the server's time, queueing included), and count
LECTURER_SERVER_MS = """(() => {
  const d = performance.getEntriesByType('resource')
    .filter((e) => e.name.includes('/_plab/live/') && e.responseStart > 0)
    .map((e) => e.responseStart - e.requestStart).sort((a, b) => a - b);
  return d.length ? [Math.round(d[d.length >> 1] * 10) / 10,
                     Math.round(d[Math.floor(d.length * 0.95)] * 10) / 10, d.length] : null;
})()"""


def clock_period(server: Server, cookie: str) -> float | None:
    """The viewer page's clock period (s) as its layout declares it (the dcc.Interval
    ``slow-clock``; GET /_dash-layout with the viewer's cookies): the firings the probe sees
    in its first seconds are too few and too noisy on a busy machine (1.8 to 3.7 s measured
    for the 3 s clock), and each is three Dash callbacks per viewer. 0 when the page's
    clocks are disabled (a viewer page since its status came with the live answers)."""
    status, layout, _ = server.call("GET", "/_dash-layout", None, {"Cookie": cookie})
    stack = [layout] if status == 200 else []
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            props = node.get("props")
            if isinstance(props, dict) and props.get("id") == "slow-clock" and \
                    isinstance(props.get("interval"), int | float):
                return 0.0 if props.get("disabled") else props["interval"] / 1000
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return None


def window(server: Server, rid: str, lecturer: Any, seconds: float,
           viewers: list[Viewer]) -> dict[str, Any]:
    """Measure for ``seconds``: CPU, RSS, run speed, the lecturer's and the viewers' rates."""
    pids = [server.proc.pid, *server.workers()]
    cpu0 = {p: cpu_seconds(p) for p in pids}
    lecturer.evaluate("performance.setResourceTimingBufferSize(100000); "
                      "performance.clearResourceTimings()")
    browser = chromium_pids()
    browser0 = sum(cpu_seconds(p) for p in browser)
    own0, machine0 = cpu_seconds(os.getpid()), machine_cpu()
    step0, t0 = server.ok("GET", f"/api/runs/{rid}")["step"], time.time()
    hub0 = hub_stats(server)
    rss_peak = rss(server.proc.pid)
    while (left := seconds - (time.time() - t0)) > 0:
        time.sleep(min(1.0, left))
        rss_peak = max(rss_peak, rss(server.proc.pid))
    t1 = time.time()
    step1 = server.ok("GET", f"/api/runs/{rid}")["step"]
    elapsed = t1 - t0
    cpu = {p: (cpu_seconds(p) - cpu0[p]) / elapsed * 100 for p in pids}
    own = (cpu_seconds(os.getpid()) - own0) / elapsed * 100
    browser_cpu = (sum(cpu_seconds(p) for p in browser) - browser0) / elapsed * 100
    machine1 = machine_cpu()
    busy = (machine1[0] - machine0[0]) / max(machine1[1] - machine0[1], 1e-9) * 100
    hub1 = hub_stats(server)
    lect = lecturer.evaluate(f"window.plab.stats({int(min(seconds, 55) * 1000)})")
    rates = [sum(t0 <= t < t1 for t in v.updates) / elapsed for v in viewers]
    lags = [ms for v in viewers for (t, ms) in v.lags if t0 <= t < t1]
    return {
        "viewers": len(viewers), "seconds": round(elapsed, 1),
        "median_updates_per_s": round(statistics.median(rates), 2) if rates else None,
        "p5_updates_per_s": round(pct(rates, 0.05), 2) if rates else None,
        "p50_lag_ms": round(pct(lags, 0.5), 1) if lags else None,
        "p95_lag_ms": round(pct(lags, 0.95), 1) if lags else None,
        "errors": sum(len(v.errors) for v in viewers),
        "server_cpu_pct": round(cpu[server.proc.pid], 1),
        "worker_cpu_pct": round(sum(c for p, c in cpu.items() if p != server.proc.pid), 1),
        "server_rss_mb": round(rss_peak / 2**20, 1),
        "lecturer_updates_per_s": round(lect.get("ups") or 0.0, 2),
        "lecturer_lag_ms": lect.get("lag_ms"),
        "lecturer_server_ms": lecturer.evaluate(LECTURER_SERVER_MS),
        "lecturer_rtt_ms": lecturer.evaluate(
            "(() => { const r = (window.plab.rtts || []).map((x) => x.rtt).sort((a, b) => a - b);"
            " return r.length ? r[r.length >> 1] : null })()"),
        "clients_cpu_pct": round(own, 1), "chromium_cpu_pct": round(browser_cpu, 1),
        "machine_busy_pct": round(busy, 1), "load": round(os.getloadavg()[0], 1),
        "run_steps_per_s": round((step1 - step0) / elapsed, 1),
        "hub": {k: hub1[k] - hub0.get(k, 0) for k in hub1 if isinstance(hub1[k], int)},
    }


def hub_stats(server: Server) -> dict[str, Any]:
    """The live channels' counters (app.live), where the server has them."""
    status, body, _ = server.call("GET", "/_plab/live-stats")
    return body if status == 200 and isinstance(body, dict) else {}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--viewers", type=int, action="append",
                    help="N simulated viewers (repeatable; default 10, 50, 100)")
    ap.add_argument("--seconds", type=float, default=60.0, help="per measurement (default 60)")
    ap.add_argument("--root", type=Path, default=ROOT, help="the checkout whose server to run")
    ap.add_argument("--json", action="store_true", help="print the largest N as a JSON line")
    ap.add_argument("--lecturer", default="1920x1080",
                    help="the lecturer's window, WxH (default 1920x1080, a projector: the panels "
                         "in view redraw live, those below when scrolled to; 1600x2100 puts "
                         "all six on screen at once)")
    args = ap.parse_args()
    try:
        width, height = (int(v) for v in args.lecturer.lower().split("x"))
        assert 320 <= width <= 4000 and 320 <= height <= 4000
    except (ValueError, AssertionError):
        ap.error(f"--lecturer: got {args.lecturer[:40]!r}; allowed: WxH, 320 to 4000 each")
    counts = sorted(args.viewers or [10, 50, 100])
    if not all(1 <= n <= MAX_VIEWERS for n in counts) or not 1 <= args.seconds <= MAX_SECONDS:
        ap.error(f"--viewers: allowed 1 to {MAX_VIEWERS}; --seconds: allowed 1 to {MAX_SECONDS}")
    from playwright.sync_api import sync_playwright

    rows = []
    with tempfile.TemporaryDirectory(prefix="plab-audience-") as tmp, sync_playwright() as pw:
        server = Server(args.root.resolve(), Path(tmp))
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            rid = server.ok("POST", "/api/runs", CONFIG)["id"]
            server.ok("POST", f"/api/runs/{rid}/control",
                      {"action": "speed", "steps_per_second": 100})
            status, link, _ = server.call("POST", f"/api/runs/{rid}/share", None,
                                          {**AUTH, "Content-Type": "application/json"})
            if status != 201:
                raise RuntimeError(f"share: {status} {str(link)[:300]}")
            lecturer = browser.new_context(viewport={"width": width, "height": height}).new_page()
            lecturer.goto(f"{server.base}/?run={rid}&token={TOKEN}")
            until(lecturer, "!!(window.plab && window.plab.view && window.plab.view.runs.length)")
            pattern = probe(browser, server, link["url"], rid)
            print(f"viewer page: {pattern['kind']} loop ({pattern['path'][:40]}) every "
                  f"{pattern['poll_s'] * 1000:.0f} ms; {len(pattern['clock'])} clock callbacks "
                  f"every {pattern['clock_s']} s; server {args.root}", flush=True)
            rows.append(window(server, rid, lecturer, args.seconds, []))
            for n in counts:
                stop = threading.Event()
                viewers = [Viewer(server, pattern, stop) for _ in range(n)]
                for v in viewers:
                    v.start()
                time.sleep(3.0)  # joined
                rows.append(window(server, rid, lecturer, args.seconds, viewers))
                stop.set()
                for v in viewers:
                    v.join(30)
                errors = [e for v in viewers for e in v.errors]
                if errors:
                    print(f"  N={n} errors: {sorted(set(errors))[:5]}", flush=True)
                time.sleep(2.0)
        finally:
            browser.close()
            server.stop()
    base = rows[0]["run_steps_per_s"] or float("nan")
    head = ("viewers", "ups med", "ups p5", "lag p50", "lag p95", "srv CPU%", "wrk CPU%",
            "RSS MB", "errors", "lect ups", "steps/s", "ratio")
    print(" | ".join(head))
    for r in rows:
        r["run_speed_ratio"] = round(r["run_steps_per_s"] / base, 3)
        print(" | ".join(str(x) for x in (
            r["viewers"], r["median_updates_per_s"], r["p5_updates_per_s"], r["p50_lag_ms"],
            r["p95_lag_ms"], r["server_cpu_pct"], r["worker_cpu_pct"], r["server_rss_mb"],
            r["errors"], r["lecturer_updates_per_s"], r["run_steps_per_s"],
            r["run_speed_ratio"])))
        print(f"    cpu (% of one core): clients {r['clients_cpu_pct']}, lecturer's Chromium "
              f"{r['chromium_cpu_pct']}; machine busy {r['machine_busy_pct']}% of 2 cores, "
              f"load {r['load']}; lecturer poll rtt p50 {r['lecturer_rtt_ms']} ms, "
              f"server part [p50, p95 ms, polls] {r['lecturer_server_ms']}, "
              f"lag p50 {r['lecturer_lag_ms']} ms")
        if r.get("hub"):
            print(f"    live path: {r['hub']}")
    if args.json:
        last = rows[-1]
        print(json.dumps({"viewers": last["viewers"],
                          "p5_updates_per_s": last["p5_updates_per_s"],
                          "p95_lag_ms": last["p95_lag_ms"], "errors": last["errors"],
                          "run_speed_ratio": last["run_speed_ratio"],
                          "median_updates_per_s": last["median_updates_per_s"],
                          "lecturer_updates_per_s": last["lecturer_updates_per_s"],
                          "unwatched_lecturer_updates_per_s": rows[0]["lecturer_updates_per_s"],
                          "server_cpu_pct": last["server_cpu_pct"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
