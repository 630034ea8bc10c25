"""Live-panel performance in headless Chromium: panel updates per second, lag from the
frame's creation in the worker (``wall``) to the end of its redraw, redraw time, and how
responsive the page stays (timer delay on the main thread).

    python bench/browser.py                 # dni-b on Add, 100 steps/s then max speed
    python bench/browser.py --seconds 20 --race
    python bench/browser.py --scenarios one,race3 --speeds max    # issue 12 item 6 (1920x1080)

Starts ``python -m app serve`` on a free port with a temporary data dir, drives the page
with Playwright (Debian's /usr/bin/chromium), starts a run from the controls and reads the
counters that assets/plab.js keeps (``window.plab.stats()``). Prints medians.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from _common import AUTH, TOKEN, free_port

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SPEED_INDEX = {"10/s": 0, "30/s": 1, "100/s": 2, "300/s": 3, "1k/s": 4, "max": 5}

#: timer-delay probe: how late a 50 ms setTimeout fires (main-thread blocking)
PROBE_JS = """
() => { window.__delays = []; const tick = () => { const t = performance.now();
  setTimeout(() => { window.__delays.push(performance.now() - t - 50); if (window.__probe) tick(); }, 50); };
  window.__probe = true; tick(); }
"""


def start_server(data_dir: str, port: int, max_runs: int = 4) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PLASTICITY_TOKEN": TOKEN}
    proc = subprocess.Popen([sys.executable, "-m", "app", "serve", "--port", str(port),
                             "--data-dir", data_dir, "--max-runs", str(max_runs)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/api/runs",
                                                          headers=AUTH), timeout=2)
            return proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(proc.stdout.read().decode() if proc.stdout else
                                   "server died") from None
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("server did not start")


def until(page, expression: str, timeout: float = 60.0) -> None:
    """Wait for a JS expression (the page's CSP allows no string-eval'd wait_for_function)."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {expression}")
        page.wait_for_timeout(100)


def set_speed(page, label: str) -> None:
    page.click(f"#speed label:has-text('{label}')")


def measure(page, seconds: float) -> dict:
    page.evaluate(PROBE_JS)
    time.sleep(seconds)
    stats = page.evaluate(f"window.plab.stats({int(seconds * 1000)})")
    delays = page.evaluate("window.__probe = false, window.__delays")
    stats["timer_delay_ms_median"] = statistics.median(delays) if delays else None
    stats["timer_delay_ms_p95"] = (sorted(delays)[int(0.95 * (len(delays) - 1))]
                                   if delays else None)
    return stats


def report(name: str, stats: dict) -> None:
    print(f"\n== {name}")
    print(f"{'graph':<22}{'updates/s':>10}{'lag ms':>10}{'draw ms':>10}")
    for gid, g in sorted(stats["graphs"].items()):
        lag = g.get("lag_ms")
        draw = g.get("draw_ms")
        print(f"{gid:<22}{g['ups']:>10.1f}{(lag or 0):>10.0f}{(draw or 0):>10.1f}")
    print(f"median over panels: {stats['ups']:.1f} updates/s, lag {stats.get('lag_ms') or 0:.0f} ms; "
          f"main-thread timer delay median {stats['timer_delay_ms_median'] or 0:.1f} ms, "
          f"p95 {stats['timer_delay_ms_p95'] or 0:.1f} ms; ticks applied {stats['applied']}, "
          f"dropped {stats['dropped']}")


def first_frames(page, clicked_ms: float, graphs: int = 3, timeout_s: float = 20.0) -> dict:
    """Seconds from the play click to each visible panel's first redraw with new data (the
    first ``graphs`` of them)."""
    deadline = time.time() + timeout_s
    js = ("(t) => { const out = {}; for (const p of window.plab.paintLog) "
          "if (p.t >= t && !(p.gid in out)) out[p.gid] = (p.t - t) / 1000; return out; }")
    seen: dict = {}
    while time.time() < deadline:
        seen = page.evaluate(js, clicked_ms)
        if len(seen) >= graphs:
            break
        page.wait_for_timeout(50)
    return seen


SCENARIOS = {"one": "dni-b", "race2": "dni,dni-b", "race3": "dni,dni-b,rflo"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=12.0, help="measuring time per phase")
    parser.add_argument("--race", action="store_true", help="race dni and dni-b (2 runs)")
    parser.add_argument("--scenarios", default="",
                        help="comma-separated of " + ", ".join(f"{k} ({v})" for k, v in
                                                                SCENARIOS.items())
                        + "; overrides --race (issue 12 item 6: one,race3 with --speeds max)")
    parser.add_argument("--speeds", default="100/s,max", help="speeds to measure, comma-separated")
    parser.add_argument("--width", type=int, default=1920, help="viewport width (default 1920)")
    parser.add_argument("--height", type=int, default=1080,
                        help="viewport height (default 1080; 2100: all five panels on screen at "
                             "once; panels scrolled out of view refresh once a second)")
    parser.add_argument("--focus", default="",
                        help="presenter mode on this panel (e.g. circuit: issue 12 item 5, the "
                             "circuit at 10 updates/s)")
    parser.add_argument("--json", action="store_true", help="print the raw stats as JSON too")
    args = parser.parse_args()
    if not Path(CHROMIUM).exists():
        print(f"skipped: {CHROMIUM} not found")
        return 0
    from playwright.sync_api import sync_playwright

    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()] or (
        ["race2"] if args.race else ["one"])
    if args.focus and not re.fullmatch(r"[a-z]{1,20}", args.focus):
        parser.error(f"--focus: got {args.focus[:40]!r}; allowed: a panel's name (loss, "
                     "voltage, weights, alignment, task, circuit)")
    present = f"&present=1&focus={args.focus}" if args.focus else ""
    bad = [s for s in scenarios if s not in SCENARIOS]
    if bad:
        parser.error(f"--scenarios: got {bad[0][:100]!r}; allowed: {', '.join(SCENARIOS)}")
    results: dict = {}
    summary = []
    for scenario in scenarios:
        rules = SCENARIOS[scenario]
        port = free_port()
        with tempfile.TemporaryDirectory() as tmp:
            server = start_server(tmp, port)
            try:
                with sync_playwright() as p:
                    browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                    page = browser.new_page(viewport={"width": args.width, "height": args.height})
                    errors: list[str] = []
                    page.on("console", lambda m, errs=errors: errs.append(m.text)
                            if m.type == "error" else None)
                    page.on("pageerror", lambda e, errs=errors: errs.append(str(e)))
                    page.goto(f"http://127.0.0.1:{port}/?token={TOKEN}&task=add&rules={rules}"
                              "&steps=1000000" + present)
                    page.wait_for_selector("#loss-graph .js-plotly-plot", state="attached")
                    until(page, "!!(window.plab && window.plab.stats)")
                    page.wait_for_timeout(1500)
                    speeds = [s.strip() for s in args.speeds.split(",") if s.strip()]
                    # the speed change is a transport callback, which disables the buttons while
                    # in flight: the clock starts when play can be clicked, as for a user
                    with page.expect_response(lambda r: "_dash-update-component" in r.url):
                        set_speed(page, speeds[0])
                    page.wait_for_selector("#btn-play:not([disabled])")
                    clicked = page.evaluate("Date.now()")
                    page.click("#btn-play")
                    first = first_frames(page, clicked, 1 if args.focus else 3)
                    until(page, "!!(window.plab && window.plab.applied > 5)")
                    for speed in speeds:
                        set_speed(page, speed)
                        time.sleep(3)  # settle
                        stats = measure(page, args.seconds)
                        stats["first_frame_s"] = first
                        stats["console_errors"] = list(errors)
                        results[f"{scenario} {speed}"] = stats
                        report(f"{rules} on Add, speed {speed}, {args.seconds:.0f} s, viewport "
                               f"{args.width}x{args.height}", stats)
                        shown = [g for g in stats["graphs"].values()]
                        summary.append((scenario, speed, stats["ups"],
                                        min((g["ups"] for g in shown), default=0.0),
                                        max(first.values()) if first else None,
                                        stats["timer_delay_ms_median"], len(errors)))
                    browser.close()
            finally:
                server.terminate()
                try:
                    server.wait(10)
                except subprocess.TimeoutExpired:
                    server.kill()
    print(f"\n{'scenario':<10}{'speed':>7}{'ups med':>9}{'ups min':>9}{'first s':>9}"
          f"{'timer ms':>10}{'console err':>13}")
    for scenario, speed, med, low, first_s, timer, errs in summary:
        print(f"{scenario:<10}{speed:>7}{med:>9.1f}{low:>9.1f}"
              f"{(first_s if first_s is not None else float('nan')):>9.2f}"
              f"{(timer or 0):>10.1f}{errs:>13}")
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
