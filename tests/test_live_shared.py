"""Several server processes share each live channel through Redis (app.live, Celery mode): the
frames of a view are read and turned into an item once between them, numbered alike, and
every process answers every client; against a real redis-server (and, for the servers, real
Celery workers and two real ``python -m app serve --backend celery`` processes).

Skipped, saying why, where redis-server or the redis package are missing.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import AUTH, TOKEN, free_port, wait_for
from test_celery_backend import REDIS_SERVER, SMALL, Cluster, RedisServer, redis

pytestmark = [
    pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed "
                       "(apt-get install redis-server)"),
    pytest.mark.skipif(redis is None, reason="the redis package is not installed "
                       "(pip install -e .[dev])"),
]

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


class _Stream:
    """A run's frames, as the Celery backend gives them to every server: one new frame per
    ``tick()``; ``reads`` counts what the hubs asked for."""

    def __init__(self) -> None:
        self.n, self.reads = 1, 0
        self.lock = threading.Lock()

    def tick(self) -> None:
        with self.lock:
            self.n += 1

    def frames(self, rid: str, after: int = -1) -> tuple[list, int]:
        with self.lock:
            self.reads += 1
            return [{"seq": s, "t0": s, "t1": s + 1, "wall": 1.7e9 + s,
                     "loss": {"t": [s], "mean": [1.0 / (s + 1)]}}
                    for s in range(after + 1, self.n)], self.n - 1


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server.url
    server.stop()


def test_two_hubs_on_one_redis_compute_each_item_once(redis_url: str) -> None:
    """Two hubs (two server processes' worth) polled in turn: every item is computed by one of
    them, and both hand out the same items under the same numbers."""
    from app.dashboard import figures
    from app.live import LiveHub, shared_cache

    class Backend:  # the Celery backend's facts the hub uses: its Redis and key prefix
        redis_url = ""

        class store:
            prefix = f"t{os.getpid()}:"

        def __init__(self, stream: _Stream, url: str) -> None:
            self.stream, self.redis_url = stream, url

        def frames(self, rid: str, after: int = -1) -> tuple[list, int]:
            return self.stream.frames(rid, after)

        def get(self, rid: str) -> dict:
            return {"id": rid, "status": "running"}

    stream = _Stream()
    hubs = [LiveHub(Backend(stream, redis_url), min_interval=0.0) for _ in range(2)]
    assert all(h.shared is not None for h in hubs)
    assert shared_cache(object()) is None  # the local backend: one process, no Redis
    run = figures.make_run_view({"id": "r", "config": {"rule": "dni-b", "steps": 10**6,
                                                       "n": 4}}, "#000")
    view = figures.make_view([run], epoch=1, panels=["loss"])
    key = hubs[0].join(view, {"r": 0}, {})
    seen: list[dict[int, Any]] = [{}, {}]
    since = [-1, -1]
    for k in range(90):
        if k % 3 == 0:
            stream.tick()  # a new frame every third poll: first seen by either hub in turn
        i = k % 2
        status, body, seq = hubs[i].poll(key, since[i], {"r": 0})
        if status == 304:
            continue
        assert status == 200, status
        got = json.loads(body)
        assert not got.get("resync"), (k, got)
        first = since[i] + 1 if since[i] >= 0 else seq - len(got["items"]) + 1
        for n, item in zip(range(first, seq + 1), got["items"], strict=True):
            seen[i][n] = item["to"]
        since[i] = seq
    computed = [h.counts["computed"] for h in hubs]
    pulled = [h.counts["pulled"] for h in hubs]
    newest = max(since)
    assert newest >= 29  # about one item per new frame
    assert sum(computed) == newest - 1, (computed, newest)  # each item once between them
    assert min(computed) > 0 and min(pulled) > 0, (computed, pulled)  # both did some
    common = set(seen[0]) & set(seen[1])
    assert len(common) >= 25 and all(seen[0][n] == seen[1][n] for n in common)


# ---- two real server processes ------------------------------------------------------------------
@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    made = Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        yield made
    finally:
        made.close()


def _serve(cluster: Cluster, tmp: Path, name: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "PLASTICITY_TOKEN": TOKEN, "PYTHONUNBUFFERED": "1"}
    with open(tmp / f"server-{name}.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app", "serve", "--backend", "celery", "--redis-url",
             cluster.redis.url, "--port", str(port), "--data-dir", str(tmp / "data"),
             "--max-runs", "4"],
            cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, port


def _get(port: int, path: str, conn: http.client.HTTPConnection | None = None,
         body: Any = None) -> tuple[int, Any]:
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        data = None if body is None else json.dumps(body).encode()
        conn.request("POST" if data else "GET", path, body=data,
                     headers={**AUTH, "Content-Type": "application/json"})
        answer = conn.getresponse()
        raw = answer.read()
        return answer.status, json.loads(raw) if raw else None
    finally:
        if own:
            conn.close()


@pytest.mark.slow
@pytest.mark.browser
def test_two_server_processes_compute_each_frame_once_between_them(cluster: Cluster,
                                                                    tmp_path: Path) -> None:
    if not os.path.exists(CHROMIUM):
        pytest.skip("needs Debian's chromium at /usr/bin/chromium")
    from playwright.sync_api import sync_playwright

    cluster.ensure()
    servers = [_serve(cluster, tmp_path, name) for name in ("a", "b")]
    ports = [port for _, port in servers]
    rid = None
    try:
        for proc, port in servers:
            def up(proc: subprocess.Popen = proc, port: int = port) -> bool:
                assert proc.poll() is None, (tmp_path / "server-a.log").read_text()[-2000:]
                with contextlib.suppress(OSError):
                    return _get(port, "/api/openapi.json")[0] == 200
                return False

            wait_for(up, 90, "both servers up", every=0.2)
        status, created = _get(ports[0], "/api/runs", body={**SMALL, "n": 8})
        assert status == 201, created
        rid = created["id"]
        _get(ports[0], f"/api/runs/{rid}/control", body={"action": "speed",
                                                         "steps_per_second": 100})
        wait_for(lambda: _get(ports[1], f"/api/runs/{rid}")[1]["step"] > 0, 60, "the run")
        with sync_playwright() as p:  # the lecturer's page on server a seats the channel
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                        args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"http://127.0.0.1:{ports[0]}/?run={rid}&token={TOKEN}")
            wait_for(lambda: page.evaluate("!!(window.plab && window.plab.view && "
                                           "window.plab.view.live && window.plab.state)"),
                     60, "the page's live channel")
            key = page.evaluate("window.plab.view.live")
            browser.close()
        before = [_get(port, "/_plab/live-stats")[1] for port in ports]
        stop = time.monotonic() + 5.0
        logs: list[list[tuple[int, list]]] = [[] for _ in range(10)]
        errors: list[str] = []

        def viewer(i: int) -> None:  # 5 clients on each server, the same view
            port = ports[i % 2]
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
            since = -1
            try:
                while time.monotonic() < stop:
                    path = f"/_plab/live/{key}?since={since}" + ("&c=%7B%7D" if since < 0
                                                                  else "")
                    status, body = _get(port, path, conn)
                    if status != 200 or body.get("resync"):
                        errors.append(f"{port}: {status} {str(body)[:200]}")
                        return
                    if since >= 0:
                        logs[i].append((body["seq"], [it["to"] for it in body["items"]]))
                    since = body["seq"]
                    time.sleep(0.05)
            finally:
                conn.close()

        threads = [threading.Thread(target=viewer, args=(i,)) for i in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        after = [_get(port, "/_plab/live-stats")[1] for port in ports]
        assert not errors, errors[:3]
        computed = [a["computed"] - b["computed"] for a, b in zip(after, before, strict=True)]
        pulled = [a["pulled"] - b["pulled"] for a, b in zip(after, before, strict=True)]
        newest = max(seq for log in logs for seq, _ in log)
        first = max(b["items"].get(key, 0) for b in before)  # b: no channel before
        assert newest - first >= 20, (first, newest)  # ~10 frames/s for 5 s
        # each item computed once between the two processes (+1: one may be in flight when
        # the counters were read), and each process took the other's from Redis
        assert newest - first <= sum(computed) <= newest - first + 1, (computed, first, newest)
        assert min(computed) > 0 and min(pulled) > 0, (computed, pulled)
        # the same numbers mean the same items on both servers
        by_seq: dict[int, Any] = {}
        for log in logs:
            for seq, tos in log:
                if tos:
                    assert by_seq.setdefault(seq, tos[-1]) == tos[-1], seq
        assert all(len([s for s, t in log if t]) >= 10 for log in logs)
    finally:
        for proc, _ in servers:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        if rid is not None:
            from app.service.redis_store import RedisStore

            store = RedisStore(cluster.redis.url)
            store.delete_run(rid)
            store.close()
