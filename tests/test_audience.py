"""A class watching one live run (issue 15), against a real ``python -m app serve`` (sign-in on,
the test token) and, for the pages, headless Chromium.

- 20 viewer clients poll the live path of one view: the per-frame work (app.live: one item
  per new frame) is done once for all of them, unchanged polls are 304s without a body, and a
  client that fell behind gets every missed item in one answer;
- a viewer link cannot change anything: every control answers 403;
- a phone (390x844, mobile emulation, touch) opens the viewer link: one panel at full width,
  the run's name and status, text >= 14 px, the loss panel updates; tabs change the panel.
  The screenshot goes to artifacts/phone-viewer.png (copied to docs/phone-viewer.png).
"""

from __future__ import annotations

import contextlib
import gzip
import http.client
import json
import os
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import AUTH, TOKEN, free_port, wait_for

from app.service.base import ACTIONS

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
#: 150,000 steps: a loss point per 100 steps, i.e. one a second at 100 steps/s
RUN = {"task": "add", "rule": "dni-b", "n": 8, "steps": 150_000, "test_steps": 100}
LOSS_POINTS = ("(() => { const gd = document.querySelector('#loss-graph .js-plotly-plot');"
               " return gd && gd.data ? gd.data.reduce((n, t) => n + (t.x || []).length, 0) : 0 })()")
#: the newest step the loss graph shows (its provisional last point moves every update)
LOSS_LAST = ("(() => { const gd = document.querySelector('#loss-graph .js-plotly-plot');"
             " return gd && gd.data ? Math.max(0, ...gd.data.map((t) => (t.x || []).length ?"
             " t.x[t.x.length - 1] : 0)) : 0 })()")
#: every visible piece of text on the page (HTML and the figures' SVG) with its font size
TEXT_SIZES = """(() => {
  const out = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    const el = n.parentElement;
    if (!el || !n.textContent.trim()) continue;
    const r = el.getBoundingClientRect();
    if (r.width === 0 || r.height === 0 || r.bottom < 0 || r.top > innerHeight) continue;
    const style = getComputedStyle(el);
    if (style.visibility === 'hidden' || +style.opacity === 0) continue;
    out.push([n.textContent.trim().slice(0, 30), parseFloat(style.fontSize)]);
  }
  return out;
})()"""


@dataclass
class Answer:
    status: int
    body: bytes
    headers: http.client.HTTPMessage

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def size(self) -> int:
        """Bytes on the wire: status line, headers and body."""
        return len(b"HTTP/1.1 200 OK\r\n") + len(self.headers.as_bytes()) + len(self.body)


class Lab:
    """A real server with the dashboard, sign-in on (the tests' token)."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = tmp / "server.log"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PLASTICITY_TOKEN": TOKEN,
               "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "app", "serve", "--port", str(self.port), "--data-dir",
                 str(tmp / "data"), "--max-runs", "3"],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        wait_for(self._up, 90, "the server to answer")

    def _up(self) -> bool:
        assert self.proc.poll() is None, self.log.read_text()[-3000:]
        with contextlib.suppress(OSError):
            return self.call("GET", "/api/openapi.json").status == 200
        return False

    def call(self, method: str, path: str, body: Any = None, *, headers: dict | None = None,
             conn: http.client.HTTPConnection | None = None) -> Answer:
        own = conn is None
        conn = conn or http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
        try:
            data = None if body is None else json.dumps(body).encode()
            hdrs = {**({"Content-Type": "application/json"} if data is not None else {}),
                    **(headers or {})}
            conn.request(method, path, body=data, headers=hdrs)
            answer = conn.getresponse()
            return Answer(answer.status, answer.read(), answer.headers)
        finally:
            if own:
                conn.close()

    def admin(self, method: str, path: str, body: Any = None) -> Any:
        answer = self.call(method, path, body, headers=AUTH)
        assert answer.status < 300, (answer.status, answer.body[:300])
        return answer.json()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@dataclass
class Shared:
    run: str
    url: str  # the viewer link
    headers: dict[str, str]  # a viewer's credentials: the viewer cookie (+ anti-forgery pair)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    server = Lab(tmp_path_factory.mktemp("aud"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def shared(lab: Lab) -> Shared:
    """One dni-b run paced at 100 steps/s, shared with a viewer link; a viewer's cookies."""
    rid = lab.admin("POST", "/api/runs", RUN)["id"]
    lab.admin("POST", f"/api/runs/{rid}/control", {"action": "speed", "steps_per_second": 100})
    link = lab.admin("POST", f"/api/runs/{rid}/share", {})  # ("{}" was a 400 at a7b1d7e)
    opened = lab.call("GET", f"/view/{link['token']}")
    assert opened.status == 303
    cookies = dict(c.split(";")[0].split("=", 1) for c in opened.headers.get_all("Set-Cookie"))
    assert "plab_view" in cookies and "_csrf_token" in cookies
    headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in cookies.items()),
               "X-CSRFToken": cookies["_csrf_token"]}
    wait_for(lambda: lab.admin("GET", f"/api/runs/{rid}")["step"] > 0, 60, "the run to step")
    return Shared(rid, link["url"], headers)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        pytest.skip("needs Debian's chromium at /usr/bin/chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


def _viewer_page(browser: Any, shared: Shared, **context: Any) -> tuple[Any, Any, list[str]]:
    ctx = browser.new_context(**context)
    page = ctx.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto(shared.url)
    page.wait_for_selector("#viewer-banner")
    wait_for(lambda: page.evaluate(LOSS_POINTS) > 0, 60, "the shared run's loss on the page")
    wait_for(lambda: page.evaluate("!!(window.plab.view && window.plab.view.live)"), 20,
             "the page following the live channel")
    return ctx, page, problems


# ---- many viewers, one computation -----------------------------------------------------------
@pytest.mark.browser
def test_twenty_viewers_share_one_computation_per_frame_and_get_304s(lab: Lab, shared: Shared,
                                                                      browser: Any) -> None:
    ctx, page, _ = _viewer_page(browser, shared, viewport={"width": 1400, "height": 1000})
    try:
        key = page.evaluate("window.plab.view.live")
        assert isinstance(key, str) and key
        before = lab.admin("GET", "/_plab/live-stats")
        stop = time.monotonic() + 4.0
        logs: list[list[tuple[int, int, int, int]]] = [[] for _ in range(20)]  # status, since, seq, n
        sizes: dict[int, list[int]] = {200: [], 304: []}
        errors: list[str] = []
        lock = threading.Lock()

        def viewer(i: int) -> None:
            conn = http.client.HTTPConnection("127.0.0.1", lab.port, timeout=20)
            since = -1
            try:
                while time.monotonic() < stop:
                    extra = {"If-None-Match": f'"{since}"'} if since >= 0 else {}
                    path = f"/_plab/live/{key}?since={since}" + ("&c=%7B%7D" if since < 0 else "")
                    answer = lab.call("GET", path, headers={**shared.headers, **extra}, conn=conn)
                    with lock:
                        sizes.setdefault(answer.status, []).append(answer.size)
                    if answer.status == 304:
                        assert answer.body == b""
                        logs[i].append((304, since, since, 0))
                    elif answer.status == 200:
                        body = answer.json()
                        assert not body.get("resync"), body
                        logs[i].append((200, since, body["seq"], len(body["items"])))
                        since = body["seq"]
                    else:
                        errors.append(f"{answer.status} {answer.body[:200]!r}")
                        return
                    time.sleep(0.05)  # the lecturer page's poll interval while frames arrive
            finally:
                conn.close()

        threads = [threading.Thread(target=viewer, args=(i,)) for i in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    finally:
        ctx.close()  # the page polls no more: the channel stops where the viewers left it
    after = lab.admin("GET", "/_plab/live-stats")
    assert not errors, errors[:3]
    computed = after["computed"] - before["computed"]
    seqs = after["items"][key] - before["items"][key]
    assert seqs >= 10, (before, after)  # the run streamed frames all along (about 10/s)
    # one computation per new frame, whatever the number of viewers (the page polled too)
    assert computed == seqs, (computed, seqs)
    delivered = 0
    for log in logs:
        joined = [entry for entry in log if entry[0] == 200]
        assert len(joined) >= 10, log[:5]
        for _status, since, seq, n in joined[1:]:
            assert n == seq - since, (since, seq, n)  # every item after since, none twice
            delivered += n
        assert joined[-1][2] >= after["items"][key] - 3  # and kept up with the newest
    assert delivered >= 15 * computed  # the same items went to (almost) every viewer
    # backend reads are bounded by time (at most one per 30 ms per channel), not by viewers
    polls = after["polls"] - before["polls"]
    assert after["reads"] - before["reads"] <= 4.5 / 0.03 + 10 < polls
    # unchanged polls cost a 304 without a body, answered before Flask (live.LiveFront): no
    # Content-Security-Policy or cookies, about 260 bytes on the wire (544 at 23664c2)
    assert len(sizes[304]) >= 20 and max(sizes[304]) < 400 < 1200 < min(sizes[200])
    assert after["fast"] - before["fast"] >= polls - 3 * 20, (polls, after, before)
    print(f"\n20 viewers, 4 s: {polls} polls, {len(sizes[304])} answered 304 "
          f"(median {sorted(sizes[304])[len(sizes[304]) // 2]} bytes in all), "
          f"{len(sizes[200])} with items (median {sorted(sizes[200])[len(sizes[200]) // 2]} "
          f"bytes); {computed} items computed, {delivered} delivered")


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.browser
def test_an_unchanged_poll_is_cheap_and_keeps_its_connection(lab: Lab, shared: Shared,
                                                             browser: Any) -> None:
    """What the page sends (since=N, no If-None-Match): nothing new is a small 200 on the same
    connection (a 304 makes waitress close it); checked clients skip Flask; a client without
    those credentials still gets nothing."""
    ctx, page, _ = _viewer_page(browser, shared, viewport={"width": 1400, "height": 1000})
    try:
        key = page.evaluate("window.plab.view.live")
    finally:
        ctx.close()
    conn = http.client.HTTPConnection("127.0.0.1", lab.port, timeout=20)
    try:
        first = lab.call("GET", f"/_plab/live/{key}?since=-1&c=%7B%7D", headers=shared.headers,
                         conn=conn)
        assert first.status == 200, first.body[:200]
        since = first.json()["seq"]
        before, cpu0 = lab.admin("GET", "/_plab/live-stats"), _cpu_seconds(lab.proc.pid)
        sock = conn.sock
        empty, hints, polls = [], [], 0
        # as fast as it answers (most polls find nothing new): 400 polls, and on until a hint
        # counts from a fresh frame (a loaded machine can stall the run's worker for 0.5 s)
        deadline = time.monotonic() + 10
        while polls < 400 or (min(hints) >= 150 and time.monotonic() < deadline):
            polls += 1
            answer = lab.call("GET", f"/_plab/live/{key}?since={since}", headers=shared.headers,
                              conn=conn)
            assert answer.status == 200 and answer.headers.get("Connection") != "close"
            body = answer.json()
            if not body["items"]:
                assert body == {"seq": since, "items": []}
                empty.append(answer.size)
            since = body["seq"]
            hints.append(int(answer.headers["X-Plab-Next"]))
        cpu = (_cpu_seconds(lab.proc.pid) - cpu0) / polls
        after = lab.admin("GET", "/_plab/live-stats")
        assert conn.sock is sock  # one connection all along
    finally:
        conn.close()
    assert len(empty) >= polls // 2 and max(empty) < 320, (len(empty), max(empty))
    assert after["fast"] - before["fast"] == polls  # none went through Flask, Dash or the guard
    assert all(0 <= h <= 2000 for h in hints) and min(hints) < 150  # frames ~10/s at 100 steps/s
    assert cpu < 0.0006, f"{cpu * 1000:.2f} ms of server CPU per poll"  # 0.8 ms at 23664c2
    print(f"\nunchanged poll: {max(empty)} bytes, {cpu * 1000:.2f} ms of server CPU")
    # the grant is for those credentials only: others go through the guard as before
    assert lab.call("GET", f"/_plab/live/{key}?since={since}").status == 401
    other = {**shared.headers, "Cookie": shared.headers["Cookie"].replace("plab_view=", "x=")}
    assert lab.call("GET", f"/_plab/live/{key}?since={since}", headers=other).status == 401
    assert lab.call("GET", f"/_plab/live/{key}?since={since}",
                    headers={**shared.headers, "Host": "evil.example"}).status == 400


def test_a_viewer_link_changes_nothing(lab: Lab, shared: Shared) -> None:
    rid = shared.run
    for action, params in ACTIONS.items():
        body = {"action": action, **{p: 1 for p in params[:1]}}
        answer = lab.call("POST", f"/api/runs/{rid}/control", body, headers=shared.headers)
        assert answer.status == 403, (action, answer.status, answer.body[:200])
        assert "read-only viewer link" in answer.json()["error"]
    changes = [("POST", "/api/runs", RUN), ("DELETE", f"/api/runs/{rid}", None),
               ("POST", f"/api/runs/{rid}/share", {"runs": [rid]}),
               ("POST", f"/api/runs/{rid}/copy", {"changes": {}}),
               ("GET", f"/api/runs/{rid}/export.csv", None),
               ("GET", f"/api/runs/{rid}/config.json", None),
               ("GET", "/_plab/live-stats", None)]
    for method, path, body in changes:
        answer = lab.call(method, path, body, headers=shared.headers)
        assert answer.status == 403, (method, path, answer.status, answer.body[:200])
    assert lab.admin("GET", f"/api/runs/{rid}")["status"] == "running"
    # no credentials at all: nothing from the live path either
    assert lab.call("GET", "/_plab/live/abc?since=-1").status == 401


def test_a_bad_since_is_refused_naming_the_field(lab: Lab, shared: Shared) -> None:
    answer = lab.call("GET", "/_plab/live/abc?since=soon", headers=shared.headers)
    assert answer.status == 400 and answer.json()["field"] == "since"
    assert answer.json()["error"].startswith("live: since: got 'soon'")
    unknown = lab.call("GET", "/_plab/live/abc?since=3", headers=shared.headers)
    assert unknown.status == 200 and unknown.json()["resync"] is True  # rebuild, then join


# ---- the phone ---------------------------------------------------------------------------------
@pytest.mark.browser
def test_a_phone_shows_one_live_panel_at_full_width(lab: Lab, shared: Shared,
                                                    browser: Any) -> None:
    ctx, page, problems = _viewer_page(
        browser, shared, viewport={"width": 390, "height": 844}, device_scale_factor=2,
        is_mobile=True, has_touch=True,
        user_agent="Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like "
                   "Gecko) Chrome/126.0 Mobile Safari/537.36")
    try:
        wait_for(lambda: page.evaluate("document.body.classList.contains('phone')"), 20,
                 "the phone layout")
        wait_for(lambda: page.is_visible("#panel-loss") and not page.is_visible("#panel-voltage"),
                 30, "one panel at a time")
        box = page.locator("#panel-loss").bounding_box()
        assert box["width"] >= 0.9 * 390 and box["x"] + box["width"] <= 391, box
        assert page.evaluate("document.documentElement.scrollWidth") <= 390  # no sideways scroll
        # the run's name (rule) and status; no controls beyond the panel tabs
        wait_for(lambda: "running" in page.inner_text("#live-status"), 30, "the run's status")
        assert "dni-b" in page.inner_text("#live-status")
        for control in ("#btn-play", "#controls", "#btn-own-copy", "#panels", "#units",
                        "#btn-present", "#log-y", "#export-bar"):
            assert not page.is_visible(control), control
        tabs = page.locator("#panel-tabs .tab")
        assert tabs.count() == 6 and page.is_visible("#panel-key-weights")  # 6: the circuit
        # legible: every visible text, figures included, at least 14 px
        wait_for(lambda: page.evaluate("(document.querySelector('#loss-graph .xtick text') || "
                                       "{}).textContent"), 30, "the loss axis")
        small = [t for t in page.evaluate(TEXT_SIZES) if t[1] < 14]
        assert not small, small[:10]
        # live: the loss panel keeps updating
        first, points = page.evaluate(LOSS_LAST), page.evaluate(LOSS_POINTS)
        wait_for(lambda: page.evaluate(LOSS_LAST) > first, 30, "the loss panel to move on")
        wait_for(lambda: page.evaluate(LOSS_POINTS) > points, 30, "a new loss point")
        # the plot itself gets most of the width: the reference labels' right margin (128 px
        # at presenter type) left it 90 px of 390
        plot_w = ("document.querySelector('#loss-graph .js-plotly-plot')._fullLayout._size.w")
        wait_for(lambda: page.evaluate(plot_w) >= 0.55 * 390, 10, "a wide loss plot")
        page.screenshot(path=str(_artifacts() / "phone-viewer.png"))
        # a tap on a tab shows that panel instead
        page.tap("#panel-key-voltage")
        wait_for(lambda: page.is_visible("#panel-voltage") and not page.is_visible("#panel-loss"),
                 30, "the voltage panel after a tap")
        assert page.locator("#panel-voltage").bounding_box()["width"] >= 0.9 * 390
        assert not problems, problems
    finally:
        ctx.close()


@pytest.mark.browser
def test_a_laptop_viewer_gets_the_presenter_layout(lab: Lab, shared: Shared,
                                                   browser: Any) -> None:
    ctx, page, problems = _viewer_page(browser, shared, viewport={"width": 1400, "height": 900})
    try:
        assert not page.evaluate("document.body.classList.contains('phone')")
        for panel in ("loss", "voltage", "weights", "alignment"):
            assert page.is_visible(f"#panel-{panel}"), panel
        assert not page.is_visible("#btn-play") and not page.is_visible("#controls")
        assert not problems, problems
    finally:
        ctx.close()


@pytest.mark.browser
def test_a_viewer_page_asks_nothing_of_dash_between_status_changes(lab: Lab, shared: Shared,
                                                                   browser: Any) -> None:
    """A class of viewers costs the server no Dash callbacks while the run goes on (the page
    once fired three every 3 s per viewer); the chip's step still follows the frames, and a
    pause reaches the chip through the live answers."""
    ctx, page, problems = _viewer_page(browser, shared, viewport={"width": 1400, "height": 900})
    calls: list[str] = []
    page.on("request", lambda r: calls.append(r.url) if "_dash-update-component" in r.url
            else None)
    chip = "document.querySelector('#live-status .chip-step').textContent"
    try:
        wait_for(lambda: page.evaluate(f"!!{chip.split('.textContent')[0]}"), 30, "a chip")
        first = page.evaluate(chip)
        wait_for(lambda: page.evaluate(chip) != first, 30, "the chip's step to move")
        calls.clear()
        before = page.evaluate(chip)
        deadline = time.monotonic() + 7.0  # two periods of the old 3 s clock
        while time.monotonic() < deadline:
            page.wait_for_timeout(250)
        assert calls == [], calls
        assert page.evaluate(chip) != before  # live all the while
        lab.admin("POST", f"/api/runs/{shared.run}/control", {"action": "pause"})
        try:
            wait_for(lambda: "paused" in page.inner_text("#live-status"), 30,
                     "the viewer's chip to say paused")
            assert len(calls) <= 3, calls  # one status change: its three callbacks, once
        finally:
            lab.admin("POST", f"/api/runs/{shared.run}/control", {"action": "resume"})
        wait_for(lambda: "running" in page.inner_text("#live-status"), 30,
                 "the viewer's chip to say running again")
        assert not problems, problems
    finally:
        ctx.close()


def _artifacts() -> Path:
    out = ROOT / "artifacts"
    out.mkdir(exist_ok=True)
    return out


# ---- the shared channel, without a server ---------------------------------------------------------
def test_a_late_client_gets_every_missed_item_once_and_only_the_newest_heatmap() -> None:
    from app.live import LiveHub, view_key

    items = [{"from": {"r": k}, "to": {"r": k + 1}, "wall": 1.7e9 + k, "has_frames": True,
              "graphs": {"loss-graph": {"extend": {"idx": [0], "x": [[k]], "y": [[0.1]]}},
                         "weight-change-graph": {"set": [{"i": 0, "z": [[k]]}]}}}
             for k in range(3)]
    body = json.loads(LiveHub._encode(3, items))
    assert [it["graphs"]["loss-graph"]["extend"]["x"] for it in body["items"]] == [[[0]], [[1]],
                                                                                 [[2]]]
    sets = [it["graphs"].get("weight-change-graph") for it in body["items"]]
    assert sets == [None, None, {"set": [{"i": 0, "z": [[2]]}]}]  # the newest contents only
    assert body["items"][2]["wall"] == 1.7e9 + 2  # times are not rounded

    class Frames:  # one new frame per read
        def __init__(self) -> None:
            self.t = 0

        def frames(self, rid: str, after: int = -1) -> tuple[list, int]:
            self.t += 1
            return [{"seq": after + 1, "t0": self.t, "t1": self.t + 1, "wall": 1.7e9 + self.t,
                     "loss": {"t": [self.t], "mean": [0.123456789]}}], after + 1

        def get(self, rid: str) -> dict:
            return {"id": rid, "status": "running"}

    from app.dashboard import figures

    run = figures.make_run_view({"id": "r", "config": {"rule": "dni-b", "steps": 1000, "n": 4}},
                                "#000")
    view = figures.make_view([run], epoch=7, panels=["loss"])
    hub = LiveHub(Frames(), min_interval=0.0, keep=4)
    key = hub.join(view, {"r": 0}, {})
    assert key == view_key({**view, "epoch": 99})  # the epoch is per page, not per channel
    status, raw, seq = hub.poll(key, -1, {"r": 0})
    assert status == 200 and seq == 1 and len(json.loads(raw)["items"]) == 1
    for _ in range(3):
        hub.poll(key, 1)  # others poll meanwhile: items 2, 3, 4
    status, raw, seq = hub.poll(key, 1)
    assert seq == 5 and [it["to"]["r"] for it in json.loads(raw)["items"]] == [2, 3, 4, 5]
    assert hub.counts["computed"] == 5 == hub.counts["reads"]
    status, raw, seq = hub.poll(key, 5)  # item 6; the ring keeps 3 to 6
    assert seq == 6 and [it["to"]["r"] for it in json.loads(raw)["items"]] == [6]
    status, raw, _ = hub.poll(key, 1)  # fell further behind than the ring: rebuild, then join
    assert json.loads(raw)["resync"] is True


# ---- the WSGI front, without a server -----------------------------------------------------------
class _Stream:
    """A run's frames: one new frame per read while ``on``, stamped now (worker clock)."""

    def __init__(self) -> None:
        self.on, self.n, self.status = True, 0, "running"

    def frames(self, rid: str, after: int = -1) -> tuple[list, int]:
        if not self.on:
            return [], after
        self.n += 1
        return [{"seq": after + 1, "t0": self.n, "t1": self.n + 1, "wall": time.time(),
                 "loss": {"t": [self.n], "mean": [0.5]}}], after + 1

    def get(self, rid: str) -> dict:
        return {"id": rid, "status": self.status}


def _hub_and_key(stream: _Stream) -> tuple[Any, str]:
    from app.dashboard import figures
    from app.live import LiveHub

    run = figures.make_run_view({"id": "r", "config": {"rule": "dni-b", "steps": 1000, "n": 4}},
                                "#000")
    hub = LiveHub(stream, min_interval=0.0)
    return hub, hub.join(figures.make_view([run], epoch=1, panels=["loss"]), {"r": 0}, {})


def test_the_front_answers_only_clients_the_route_checked(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    from app import live

    stream = _Stream()
    hub, key = _hub_and_key(stream)
    to_app: list[str] = []

    def app(environ: dict, start_response: Any) -> list[bytes]:
        to_app.append(environ["PATH_INFO"] + "?" + environ.get("QUERY_STRING", ""))
        start_response("401 UNAUTHORIZED", [])
        return [b"app"]

    front = live.LiveFront(app, hub, "/_plab/live/")
    viewer = {"REQUEST_METHOD": "GET", "PATH_INFO": f"/_plab/live/{key}",
              "QUERY_STRING": "since=1", "HTTP_COOKIE": "plab_view=v|abc", "HTTP_HOST": "lab:80"}
    got: list[tuple[str, dict]] = []

    def start(status: str, headers: list) -> None:
        got.append((status, dict(headers)))

    def ask(**changes: Any) -> bytes:
        return b"".join(front({**viewer, **changes}, start))

    assert ask() == b"app"  # not checked yet
    hub.grant(live.credentials(viewer), key)  # what the route does after its checks
    body = json.loads(ask(QUERY_STRING="since=0"))
    assert got[-1][0] == "200 OK" and body["seq"] == 1 and len(body["items"]) == 1
    stream.on = False
    assert json.loads(ask()) == {"seq": 1, "items": []}  # nothing new: a 200, kept alive
    assert got[-1][1]["Content-Length"] == "20"
    assert ask(HTTP_IF_NONE_MATCH='"1"') == b"" and got[-1][0].startswith("304")
    assert "Content-Length" not in got[-1][1]
    n = len(to_app)
    for changes in ({"HTTP_COOKIE": "plab_view=v|abd"}, {"HTTP_HOST": "evil:80"},
                    {"HTTP_AUTHORIZATION": "Bearer x"}, {"REQUEST_METHOD": "POST"},
                    {"QUERY_STRING": "since=-1&c=%7B%7D"}, {"QUERY_STRING": "since=soon"},
                    {"PATH_INFO": "/_plab/live/other"}, {"PATH_INFO": "/_plab/live-stats"}):
        assert ask(**changes) == b"app", changes
    assert len(to_app) == n + 8
    monkeypatch.setattr(live, "GRANT_S", 0.0)  # a grant runs out: the route checks again
    hub.grant(live.credentials(viewer), key)
    assert ask() == b"app"


def test_answers_say_when_the_next_frame_is_due_and_gzip_once() -> None:
    from app.live import GZIP_MIN

    stream = _Stream()
    hub, key = _hub_and_key(stream)
    status, _, headers = hub.respond(key, -1, {"r": 0})
    assert "X-Plab-Next" not in dict(headers)  # one frame: no period yet
    # the period comes from the frames' own times, not from when they were read: three
    # frames 50 ms apart read at once say 50 ms
    from app.live import Channel, _pace

    paced = Channel("k", {}, {}, {})
    _pace(paced, {"a": [100.0, 100.05, 100.1], "b": []})
    assert abs(paced.period - 0.05) < 1e-9 and abs(paced.due - 100.15) < 1e-9
    _pace(paced, {"a": [103.0]})  # one frame 2.9 s later (a pause): the average moves a bit
    assert abs(paced.period - (0.7 * 0.05 + 0.3 * 2.9)) < 1e-9
    wait_for(lambda: time.time() - hub.channel(key).wall >= 0.1, 5, "100 ms", every=0.01)
    hub.respond(key, 1)  # the second frame, ~100 ms after the first
    chan = hub.channel(key)
    assert 0.1 <= chan.period < 1.0
    stream.on = False
    assert chan.due == chan.wall + chan.period  # one run: its newest frame + its period
    due = (chan.due - time.time()) * 1000
    hint = int(dict(hub.respond(key, chan.seq)[2])["X-Plab-Next"])
    assert 0 <= hint <= max(due, 0) + 1
    stream.on = True
    for _ in range(40):  # enough items for an answer over GZIP_MIN
        hub.respond(key, chan.seq)
    stream.on = False
    plain = hub.respond(key, 1)[1]
    assert len(plain) >= GZIP_MIN
    status, packed, headers = hub.respond(key, 1, gzip_ok=True)
    assert status == 200 and dict(headers)["Content-Encoding"] == "gzip"
    assert gzip.decompress(packed) == plain and len(packed) < len(plain) / 3
    assert hub.respond(key, 1, gzip_ok=True)[1] is packed  # compressed once, shared


def test_an_answer_with_frames_says_its_newest_frame_time_in_a_header() -> None:
    """X-Plab-Wall: the newest frame's creation time in the answer (the bench's viewers measure
    their lag from it without parsing the body); none on an answer without frames."""
    stream = _Stream()
    hub, key = _hub_and_key(stream)
    hub.respond(key, -1, {"r": 0})
    for _ in range(3):
        hub.respond(key, hub.channel(key).seq)
    stream.on = False
    chan = hub.channel(key)
    newest = max(it["wall"] for _, it, _ in chan.items)
    assert chan.seq == 4 and newest == chan.items[-1][1]["wall"]
    for since in (1, 3):  # one item or several: the newest frame of them
        status, body, headers = hub.respond(key, since, gzip_ok=True)
        walls = [it["wall"] for it in json.loads(body)["items"]]
        assert status == 200 and len(walls) == 4 - since
        assert dict(headers)["X-Plab-Wall"] == f"{newest:.3f}"
        assert abs(float(dict(headers)["X-Plab-Wall"]) - max(walls)) <= 5e-4
        assert dict(headers)["ETag"] == '"4"'
    chan.items = deque(list(chan.items)[-2:], maxlen=2)  # the ring keeps items 3 and 4
    for since, cond in ((4, False), (4, True), (1, False)):  # nothing new; a 304; a resync
        status, body, headers = hub.respond(key, since, conditional=cond)
        assert "X-Plab-Wall" not in dict(headers), (since, cond, body)
        assert body in (b'{"seq":4,"items":[]}', b"", b'{"resync":true,"seq":4}'), body


def test_a_viewer_link_is_told_to_poll_after_the_presenter() -> None:
    """After each frame the presenter's poll comes first (X-Plab-Next), the class's
    VIEWER_AFTER_MS later, so the lecturer's poll does not queue behind a hundred viewers'."""
    from app import live

    stream = _Stream()
    hub, key = _hub_and_key(stream)
    hub.respond(key, -1, {"r": 0})
    stream.on = False
    front = live.LiveFront(lambda environ, start: [b"app"], hub, "/_plab/live/")
    base = {"REQUEST_METHOD": "GET", "PATH_INFO": f"/_plab/live/{key}", "QUERY_STRING": "since=1",
            "HTTP_HOST": "lab:80"}
    lecturer = {**base, "HTTP_COOKIE": "plab_session=s|abc"}
    viewer = {**base, "HTTP_COOKIE": "plab_view=v|abc"}
    hub.grant(live.credentials(lecturer), key)
    hub.grant(live.credentials(viewer), key, viewer=True)
    assert hub.granted(live.credentials(lecturer), key) is False
    assert hub.granted(live.credentials(viewer), key) is True
    assert hub.granted(live.credentials({**viewer, "HTTP_HOST": "x:80"}), key) is None
    hints = {}
    for name, environ in (("lecturer", lecturer), ("viewer", viewer)):
        got: list[dict] = []
        hub.channel(key).due = time.time() + 0.5  # the next frame in 500 ms
        assert b"".join(front(environ, lambda s, h, got=got: got.append(dict(h)))) == \
            b'{"seq":1,"items":[]}'
        hints[name] = int(got[0]["X-Plab-Next"])
    assert 490 <= hints["lecturer"] <= 500
    assert live.VIEWER_AFTER_MS - 10 <= hints["viewer"] - hints["lecturer"] <= live.VIEWER_AFTER_MS
    assert hub.counts["fast"] == 2


def test_a_status_change_reaches_every_client_as_an_item_and_frames_carry_their_step(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The viewer pages run no clock: a run's status comes with the live answers, once per
    change, and each frame's item carries the run's newest step (the chips' counters)."""
    import app.live

    monkeypatch.setattr(app.live, "STATUS_EVERY_S", 0.0)
    stream = _Stream()
    hub, key = _hub_and_key(stream)
    _, raw, seq = hub.poll(key, -1, {"r": 0})
    first = json.loads(raw)["items"][-1]
    assert first["status"] == {"r": "running"} and first["steps"] == {"r": stream.n + 1}
    _, raw, seq = hub.poll(key, seq)
    assert "status" not in json.loads(raw)["items"][-1]  # unchanged: not repeated
    stream.on, stream.status = False, "paused"  # paused: no frames, a new status
    _, raw, seq = hub.poll(key, seq)
    item = json.loads(raw)["items"][-1]
    assert item["status"] == {"r": "paused"} and not item["has_frames"]
    assert "steps" not in item
    assert hub.poll(key, seq)[0] == 304  # nothing new since
