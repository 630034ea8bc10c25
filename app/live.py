"""The live path: what a browser receives for (runs, view), computed once per new frame and
shared by every browser that shows the same view (the lecturer's dashboard and a whole class
of viewer links alike).

    hub = LiveHub(backend)
    key = hub.join(view, cursors, carry)        # show() registers the figures it just built
    status, body, seq = hub.poll(key, since=7)  # GET {base}_plab/live/<key>?since=7

A **channel** is one view (figures.View without its per-client ``epoch``): its runs' cursors,
its smoothing state (``carry``) and a ring of the last ``keep`` *items*, each the per-graph
operations (figures.tick_ops) for the frames that arrived since the item before it. Polls
drive it: the first poll at least ``min_interval`` after the last read asks the backend for new
frames (under the channel's lock; concurrent polls wait for that one read and then share its
result) and, when there are any, computes one item (``computed`` counts them): numbers rounded
to DIGITS significant digits, the weight heatmap's contents at most every SET_EVERY_S. Every
poll then answers from the ring:

- ``since`` equal to the newest item's number: **304 Not Modified** with an empty body (the
  ETag is the item number; If-None-Match is honoured too);
- an older ``since`` still in the ring: 200 with every item after it, encoded once per
  (since, newest) pair and shared; a heatmap's contents only from the newest item that has
  them; the client merges them and draws once, so a viewer who fell behind jumps to the
  newest frame instead of replaying a queue;
- ``since`` = -1 (a client that just built its figures) with its cursors ``c``: the items after
  those cursors;
- anything older than the ring (a tab in the background for a while): ``{"resync": true}``:
  the client rebuilds its figures from the run's history (the dashboard's rebuild), then joins.

Why polling with validators and not server-sent events: waitress (the default server) runs
each request on one of ``--threads`` (16) worker threads for its whole life, so a
never-ending SSE response holds a thread per viewer: 100 viewers would need 100 threads, and
a 17th viewer would wait for a free thread behind the others. A 304 poll holds a thread for
well under a millisecond and then frees it; measured in bench/audience.py.

Channels live in the server process (the local backend has one). With several server
processes (Celery mode) each process keeps its own channels: the work is done once per
process per frame. Idle channels (no poll for ``idle_s``) are dropped.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from app.dashboard import figures
from app.dashboard.panels import circuit

#: items kept per channel (about 6 s of frames at 10 frames/s)
KEEP = 64
#: frames are read from the backend at most this often per channel (s)
MIN_INTERVAL = 0.03
#: a channel nobody polled for this long is dropped (s)
IDLE_S = 120.0


def tick_payload(backend: Any, view: Mapping[str, Any], cursors: Mapping[str, int],
                 carry: dict[str, Any]) -> dict[str, Any]:
    """One tick: the frames after each run's cursor -> per-graph ops (figures.tick_ops)."""
    built = time.time()
    before = {str(k): int(v) for k, v in (cursors or {}).items()}
    after = dict(before)
    frames_by_run: dict[str, list[dict[str, Any]]] = {}
    walls = []
    for run in view.get("runs") or []:
        rid = run["id"]
        try:
            frames, new = backend.frames(rid, after=int(before.get(rid, -1)))
        except LookupError:
            continue
        except Exception as err:  # a ServiceError (run gone, backend hiccup): skip this run
            if getattr(err, "http_status", None) is None:
                raise
            continue
        frames_by_run[rid] = frames
        after[rid] = new
        walls += [f["wall"] for f in frames if f.get("wall")]
    gap = figures.loss_gap(view, frames_by_run, carry)  # type: ignore[arg-type]
    ops, carry = figures.tick_ops(view, frames_by_run, carry)  # type: ignore[arg-type]
    ops.update(circuit.circuit_ops(view, frames_by_run, carry))  # type: ignore[arg-type]
    return {
        "epoch": view.get("epoch"), "from": before, "to": after, "carry": carry, "graphs": ops,
        "wall": max(walls) if walls else None, "built": built,
        "has_frames": any(frames_by_run.values()),
        "rebuild": gap or figures.populations_changed(view, frames_by_run),  # type: ignore[arg-type]
        "server_ms": round((time.time() - built) * 1000, 2),
    }


def to_json(payload: Any) -> str:
    """JSON for browsers: NaN/inf (never expected, but never fatal) become null."""
    try:
        return json.dumps(payload, allow_nan=False, separators=(",", ":"))
    except ValueError:
        return json.dumps(_finite(payload), allow_nan=False, separators=(",", ":"))


def _finite(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


#: a heatmap's whole contents (the "set" op, ~34 KB at n=32) go out at most this often (s); its
#: lines (extend) every frame
SET_EVERY_S = 1.0
#: significant digits of the numbers drawn (a plot shows no more; JSON shrinks about 3x)
DIGITS = 5


def _rounded(x: Any) -> Any:
    """``x`` (per-graph ops) with every float rounded to DIGITS significant digits."""
    if isinstance(x, float):
        return float(f"{x:.{DIGITS}g}") if math.isfinite(x) else x
    if isinstance(x, dict):
        return {k: _rounded(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_rounded(v) for v in x]
    return x


def view_key(view: Mapping[str, Any]) -> str:
    """The channel of a view: everything in it but the client's epoch, its font scale (the
    figures' look, not their data) and this key."""
    shared = {k: v for k, v in view.items() if k not in ("epoch", "live", "scale")}
    text = json.dumps(shared, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


@dataclass
class Channel:
    key: str
    view: dict[str, Any]
    cursors: dict[str, int]
    carry: dict[str, Any]
    seq: int = 0
    items: deque = field(default_factory=lambda: deque(maxlen=KEEP))  # (seq, item, to)
    encoded: dict[int, bytes] = field(default_factory=dict)  # since -> body, for this seq
    read_at: float = 0.0
    set_at: float = 0.0
    used_at: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def runs(self) -> list[str]:
        return [r["id"] for r in self.view.get("runs") or []]


class LiveHub:
    """Channels of live views, shared by every client of the same view (see the module doc)."""

    def __init__(self, backend: Any, *, min_interval: float = MIN_INTERVAL, keep: int = KEEP,
                 idle_s: float = IDLE_S) -> None:
        self.backend = backend
        self.min_interval, self.keep, self.idle_s = min_interval, keep, idle_s
        self._channels: dict[str, Channel] = {}
        self._lock = threading.Lock()
        self.counts = {"computed": 0, "reads": 0, "polls": 0, "not_modified": 0,
                       "bytes": 0, "resync": 0, "joins": 0}

    # ---- clients ------------------------------------------------------------------------------
    def join(self, view: Mapping[str, Any], cursors: Mapping[str, int],
             carry: dict[str, Any]) -> str:
        """The channel key for ``view`` (figures just built at ``cursors`` with ``carry``).

        A new channel starts from this client's state; an existing one is re-seated on it when
        nobody has polled it lately or it asked its clients to rebuild (a gap, new
        sub-populations), so that the rebuilt figures and the shared stream continue each other.
        """
        key = view_key(view)
        now = time.monotonic()
        with self._lock:
            self.counts["joins"] += 1
            self._expire(now)
            chan = self._channels.get(key)
            if chan is None:
                chan = self._channels[key] = Channel(
                    key, {k: v for k, v in view.items() if k != "live"},
                    {str(k): int(v) for k, v in cursors.items()}, json.loads(json.dumps(carry)),
                    items=deque(maxlen=self.keep))
                return key
        with chan.lock:
            stale = now - chan.used_at > 2.0
            rebuilt = bool(chan.items) and bool(chan.items[-1][1].get("rebuild"))
            if stale or rebuilt:
                chan.cursors = {str(k): int(v) for k, v in cursors.items()}
                chan.carry = json.loads(json.dumps(carry))
                chan.items.clear()
                chan.encoded.clear()
                chan.seq += 1  # older numbers are not in the ring any more: those clients resync
            chan.used_at = now
        return key

    def channel(self, key: str) -> Channel | None:
        return self._channels.get(key)

    def poll(self, key: str, since: int, cursors: Mapping[str, int] | None = None
             ) -> tuple[int, bytes, int]:
        """(HTTP status, body, newest item number) for a client at item ``since``."""
        chan = self._channels.get(key)
        if chan is None:
            self.counts["resync"] += 1
            return 200, b'{"resync":true,"seq":-1}', -1
        now = time.monotonic()
        chan.used_at = now
        self.counts["polls"] += 1
        if now - chan.read_at >= self.min_interval:
            with chan.lock:
                if time.monotonic() - chan.read_at >= self.min_interval:
                    self._advance(chan)
        seq = chan.seq
        if since == seq:
            self.counts["not_modified"] += 1
            return 304, b"", seq
        items = list(chan.items)
        if since < 0:
            have = {str(k): int(v) for k, v in (cursors or {}).items()}
            news = [it for s, it, to in items
                    if any(int(to.get(r, -1)) > have.get(r, -1) for r in to)]
            body = self._encode(seq, news)
        elif items and items[0][0] <= since + 1 and since < seq:
            body = chan.encoded.get(since) if chan.seq == seq else None
            if body is None:
                body = self._encode(seq, [it for s, it, _ in items if s > since])
                if chan.seq == seq:
                    chan.encoded[since] = body
        else:
            self.counts["resync"] += 1
            body = to_json({"resync": True, "seq": seq}).encode()
        self.counts["bytes"] += len(body)
        return 200, body, seq

    @staticmethod
    def _encode(seq: int, items: list[dict[str, Any]]) -> bytes:
        """The answer with ``items``; a heatmap's contents and block titles (``set``,
        ``titles``: each replaces the last) only from the newest item that has them."""
        newest: dict[tuple[str, str], int] = {}
        for k, item in enumerate(items):
            for gid, ops in (item.get("graphs") or {}).items():
                for op in ("set", "titles"):
                    if op in ops:
                        newest[gid, op] = k
        out = []
        for k, item in enumerate(items):
            graphs = {gid: {op: v for op, v in ops.items()
                            if op not in ("set", "titles") or newest[gid, op] == k}
                      for gid, ops in (item.get("graphs") or {}).items()}
            out.append({**item, "graphs": {gid: ops for gid, ops in graphs.items() if ops}})
        return to_json({"seq": seq, "items": out}).encode()

    # ---- the shared work ----------------------------------------------------------------------
    def _advance(self, chan: Channel) -> None:
        """Read the frames after the channel's cursors; one new item when there are any."""
        chan.read_at = time.monotonic()
        self.counts["reads"] += 1
        payload = tick_payload(self.backend, chan.view, chan.cursors, chan.carry)
        if not payload["has_frames"] and not payload["rebuild"]:
            return
        chan.carry = payload["carry"]
        chan.cursors = payload["to"]
        item = {k: payload[k] for k in ("from", "to", "wall", "built", "has_frames", "rebuild",
                                        "server_ms")}
        graphs = _rounded(payload["graphs"])
        now = time.monotonic()
        if now - chan.set_at < SET_EVERY_S:  # a heatmap's contents: at most once a second
            graphs = {gid: {op: v for op, v in ops.items() if op not in ("set", "titles")}
                      for gid, ops in graphs.items()}
            graphs = {gid: ops for gid, ops in graphs.items() if ops}
        elif any("set" in ops for ops in graphs.values()):
            chan.set_at = now
        item["graphs"] = graphs
        chan.seq += 1
        chan.items.append((chan.seq, item, dict(payload["to"])))
        chan.encoded = {}
        self.counts["computed"] += 1

    def _expire(self, now: float) -> None:
        for key in [k for k, c in self._channels.items() if now - c.used_at > self.idle_s]:
            del self._channels[key]

    def stats(self) -> dict[str, Any]:
        return {**self.counts, "channels": len(self._channels),
                "items": {k: c.seq for k, c in self._channels.items()}}


__all__ = ["LiveHub", "tick_payload", "to_json", "view_key"]
