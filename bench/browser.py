"""Live-panel performance in headless Chromium: panel updates per second, lag from the
frame's creation in the worker (``wall``) to the end of its redraw, redraw time, and how
responsive the page stays (timer delay on the main thread).

    python bench/browser.py                 # dni-b on Add, 100 steps/s then max speed
    python bench/browser.py --seconds 20 --race

Starts ``python -m app serve`` on a free port with a temporary data dir, drives the page
with Playwright (Debian's /usr/bin/chromium), starts a run from the controls and reads the
counters that assets/plab.js keeps (``window.plab.stats()``). Prints medians.
"""

from __future__ import annotations

import argparse
import json
import os
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=12.0, help="measuring time per phase")
    parser.add_argument("--race", action="store_true", help="race dni and dni-b (2 runs)")
    parser.add_argument("--speeds", default="100/s,max", help="speeds to measure, comma-separated")
    parser.add_argument("--height", type=int, default=1000,
                        help="viewport height (2100: all five panels on screen at once; panels "
                             "scrolled out of view refresh once a second)")
    parser.add_argument("--json", action="store_true", help="print the raw stats as JSON too")
    args = parser.parse_args()
    if not Path(CHROMIUM).exists():
        print(f"skipped: {CHROMIUM} not found")
        return 0
    from playwright.sync_api import sync_playwright

    port = free_port()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(tmp, port)
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1600, "height": args.height})
                rules = "dni,dni-b" if args.race else "dni-b"
                page.goto(f"http://127.0.0.1:{port}/?token={TOKEN}&task=add&rules={rules}&steps=1000000")
                page.wait_for_selector("#loss-graph .js-plotly-plot")
                page.wait_for_timeout(1500)
                speeds = [s.strip() for s in args.speeds.split(",") if s.strip()]
                set_speed(page, speeds[0])
                page.click("#btn-play")
                page.wait_for_function("window.plab && window.plab.applied > 5", timeout=60000)
                for speed in speeds:
                    set_speed(page, speed)
                    time.sleep(3)  # settle
                    results[speed] = measure(page, args.seconds)
                    report(f"{rules} on Add, speed {speed}, {args.seconds:.0f} s, viewport "
                           f"1600x{args.height}", results[speed])
                browser.close()
        finally:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
    if args.json:
        print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
