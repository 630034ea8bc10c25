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
import http.client
import json
import os
import subprocess
import sys
import threading
import time
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
    # unchanged polls cost a 304 without a body
    assert len(sizes[304]) >= 20 and max(sizes[304]) < 1200 < min(sizes[200])
    print(f"\n20 viewers, 4 s: {polls} polls, {len(sizes[304])} answered 304 "
          f"(median {sorted(sizes[304])[len(sizes[304]) // 2]} bytes in all), "
          f"{len(sizes[200])} with items (median {sorted(sizes[200])[len(sizes[200]) // 2]} "
          f"bytes); {computed} items computed, {delivered} delivered")


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
                        "#btn-present", "#log-y"):
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
