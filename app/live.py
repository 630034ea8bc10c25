"""The live path: what a browser receives for (runs, view), computed once per new frame and
shared by every browser that shows the same view (the lecturer's dashboard and a whole class
of viewer links alike).

    hub = LiveHub(backend)
    key = hub.join(view, cursors, carry)        # show() registers the figures it just built
    status, body, seq = hub.poll(key, since=7)  # GET {base}_plab/live/<key>?since=7

A **channel** is one view (figures.View without its per-client ``epoch``): its runs' cursors,
its smoothing state (``carry``) and a ring of the last ``keep`` *items*, each the per-graph
operations (figures.tick_ops) for new frames, one per run but after a long gap. Polls drive it:
the first poll at least ``min_interval`` after the last read asks the backend for new frames
(under the channel's lock; concurrent polls wait for that one read and then share its result)
and, when there are any, computes their items (``computed`` counts them; frame_groups: a run's
frames read together become items of their own, at most SPLIT_MAX per read, so that a worker
that fell behind and caught up still gets an update per frame): numbers rounded to DIGITS
significant digits, the weight heatmap's contents at most every SET_EVERY_S. Every poll then
answers from the ring:

- ``since`` equal to the newest item's number: nothing new, ``{"seq": N, "items": []}``
  (20 bytes of body), or **304 Not Modified** with no body to a client that sends
  If-None-Match (the ETag is the item number). The page sends no If-None-Match: waitress
  closes the connection after every 304 (it sends no Content-Length there), which cost the
  client a new connection per poll (an RTT on a phone) and the server 0.39 ms of CPU per
  poll against 0.25 ms for the kept-alive 200 (1,000 polls, 2-core shared machine);
- an older ``since`` still in the ring: 200 with every item after it, encoded once per
  (since, newest) pair and shared (gzip-compressed once, too, for clients that accept it); a
  heatmap's contents only from the newest item that has them; the client draws them one
  redraw each while it keeps up and merges the rest once they have waited 120 ms
  (assets/plab.js), so a viewer who fell behind jumps to the newest frame instead of
  replaying a queue;
- ``since`` = -1 (a client that just built its figures) with its cursors ``c``: the items after
  those cursors;
- anything older than the ring (a tab in the background for a while): ``{"resync": true}``:
  the client rebuilds its figures from the run's history (the dashboard's rebuild), then joins.

**Status rides along.** An item also carries each run's newest step (``steps``: the status
chips' counters) and, when a run's status changed (looked at every STATUS_EVERY_S while the
channel is polled), the runs' status (``status``): such an item goes out even without frames
(a pause, the end). The page then refreshes its chips, play button and run table through Dash
once (assets/plab.js sets ``status-tick``), so no page needs a clock for them: a viewer
link's page runs none (it fired three Dash callbacks every 3 s per viewer), the dashboard's
ticks every 5 s for the steps/s and the table.

An answer with items carries ``X-Plab-Wall``: the creation time (worker clock, seconds since
the epoch, to the ms) of the newest frame in it, so a client measures its lag without parsing
the body (bench/audience.py's simulated viewers).

Every answer carries ``X-Plab-Next``: the milliseconds until the next frame of any of the
view's runs is due, from the frames' own creation times (each run's median gap between
consecutive frames, averaged); assets/plab.js polls just after it, so most polls bring a frame.
A viewer link's client is told VIEWER_AFTER_MS (25 ms) later than the presenter's dashboard:
after each frame the lecturer's poll finds the server idle and the class's polls follow (at
100 viewers the lecturer's poll waited 15 ms at the server, median, instead of queueing
behind about 100 others; bench/audience.py, 2-core shared machine).

**Cheap polls.** The dashboard's route (app/dashboard/callbacks.py) checks that the client
may read every run of the channel and then *grants* its credentials (cookies, Authorization,
Host) that channel for GRANT_S; :class:`LiveFront`, WSGI middleware in front of Flask, answers
the granted clients' polls itself, without Flask, Dash or the sign-in guard. Revoking a
viewer link therefore stops its live answers within GRANT_S (5 s); everything else it asks
goes through the guard at once.

**Why polling and not server-sent events** (measured, bench/audience.py and
tests/test_audience.py): waitress (the default server) runs each request on one of
``--threads`` (16) threads for its whole life, so a never-ending SSE response holds a thread
per viewer: 100 viewers would need 100 threads, and a 17th would wait behind the others. A
poll answered by LiveFront costs 0.25-0.35 ms of server CPU and holds a thread that long; with
the hint a viewer polls about once per frame, so polling sends what SSE would push (one
answer per frame per viewer) plus one small request each; at 100 viewers the server process
used 35% of one core (2-core shared machine).

**Several server processes** (Celery mode, gunicorn): with ``shared`` (by default a
flask-caching RedisCache on the Celery backend's Redis) a channel's state and items live in
Redis, ``{prefix}plab:live:{key}:state`` and ``:item:{N}``; the process that takes
``:lock`` (SET NX, 2 s) reads the frames and publishes the item, the others take it from
Redis (``pulled``), so each frame's view is computed once between them and every process
can answer every client of the channel. The local backend (one process) keeps them in
memory. Idle channels (no poll for ``idle_s``) are dropped.
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import json
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from app.dashboard import figures
from app.encoding import dumps

#: items kept per channel (about 6 s of frames at 10 frames/s)
KEEP = 64
#: the frames of one read become at most this many items (frame_groups)
SPLIT_MAX = 3
#: frames are read from the backend at most this often per channel (s)
MIN_INTERVAL = 0.03
#: a channel nobody polled for this long is dropped (s)
IDLE_S = 120.0
#: a client whose credentials the dashboard checked for a channel is answered by the WSGI
#: front (LiveFront) for this long without Flask; its next check then goes through Flask (s)
GRANT_S = 5.0
#: the hint X-Plab-Next (ms until the next frame is expected) is at most this
NEXT_MAX_MS = 1000.0
#: a viewer link's hint is this much later than the presenter's: after a frame the presenter's
#: poll comes first and finds the server idle, then the class's polls (ms)
VIEWER_AFTER_MS = 25.0
#: a channel looks at its runs' status at most this often (s); a change goes out as an item
STATUS_EVERY_S = 0.25
#: answers at least this long go out gzip-compressed to clients that accept it (once per body)
GZIP_MIN = 1024
#: the headers every live answer carries (Flask's after-request hooks are skipped on the fast
#: path: these are theirs that matter for a JSON answer)
BASE_HEADERS = [("Content-Type", "application/json"), ("Cache-Control", "no-cache"),
                ("X-Content-Type-Options", "nosniff"), ("X-Frame-Options", "DENY"),
                ("Referrer-Policy", "no-referrer")]


#: each run's new frames and its cursor after them, as backend.frames gives them
Read = Mapping[str, tuple[list[dict[str, Any]], int]]


def read_frames(backend: Any, view: Mapping[str, Any], cursors: Mapping[str, int]
                ) -> dict[str, tuple[list[dict[str, Any]], int]]:
    """Each reachable run's frames after its cursor, and its new cursor (backend.frames)."""
    ids = [run["id"] for run in view.get("runs") or []]
    return per_run(ids, lambda rid: backend.frames(rid, after=int(cursors.get(rid, -1))))


def frame_groups(read: Read, cursors: Mapping[str, int], most: int = SPLIT_MAX) -> list[Read]:
    """The frames of one read as the items they become, each ``{run: (frames, cursor after
    them)}``: in creation order (``wall``), a new item whenever a run already has a frame in
    the current one, so that two frames of a run read together (a worker that fell behind
    and caught up) are drawn one after the other rather than as one update. Frames of
    different runs that came together share an item (one redraw). At most ``most`` items:
    the oldest frames of a longer read (a poll after a pause) go together in the first."""
    order = sorted((f.get("wall") or 0.0, rid, k) for rid, (frames, _) in read.items()
                   for k, f in enumerate(frames))
    groups: list[dict[str, list[dict[str, Any]]]] = [{}]
    for _, rid, k in order:
        if rid in groups[-1]:
            groups.append({})
        groups[-1].setdefault(rid, []).append(read[rid][0][k])
    if len(groups) > most:  # the oldest become one (in one pass: a long read is hundreds)
        cut = len(groups) - max(1, most) + 1
        oldest: dict[str, list[dict[str, Any]]] = {}
        for group in groups[:cut]:
            for rid, frames in group.items():
                oldest.setdefault(rid, []).extend(frames)
        groups = [oldest, *groups[cut:]]
    out, at = [], {rid: int(cursors.get(rid, -1)) for rid in read}
    for k, group in enumerate(groups):
        for rid, frames in group.items():
            at[rid] = int(frames[-1]["seq"])
        if k == len(groups) - 1:  # the backend's cursors (never lower than the frames')
            at = {rid: new for rid, (_, new) in read.items()}
        out.append({rid: (group.get(rid, []), at[rid]) for rid in read})
    return out


def tick_payload(backend: Any, view: Mapping[str, Any], cursors: Mapping[str, int],
                 carry: dict[str, Any]) -> dict[str, Any]:
    """One tick: every frame after each run's cursor -> per-graph ops (figures.tick_ops)."""
    return payload_of(view, cursors, read_frames(backend, view, cursors), carry)


def payload_of(view: Mapping[str, Any], cursors: Mapping[str, int], read: Read,
               carry: dict[str, Any]) -> dict[str, Any]:
    """The item for frames ``read`` ({run: (frames, new cursor)}) after ``cursors``."""
    built = time.time()
    before = {str(k): int(v) for k, v in (cursors or {}).items()}
    after = dict(before)
    frames_by_run: dict[str, list[dict[str, Any]]] = {}
    walls = []
    run_walls: dict[str, list[float]] = {}
    steps: dict[str, int] = {}  # each run's newest step (the status chips' counters)
    for rid, (frames, new) in read.items():
        frames_by_run[rid] = frames
        after[rid] = new
        if frames and frames[-1].get("t1") is not None:
            steps[rid] = int(frames[-1]["t1"])
        run_walls[rid] = sorted(f["wall"] for f in frames if f.get("wall"))
        walls += run_walls[rid]
    gap = figures.loss_gap(view, frames_by_run, carry)  # type: ignore[arg-type]
    ops, carry = figures.tick_ops(view, frames_by_run, carry)  # type: ignore[arg-type]
    return {
        "epoch": view.get("epoch"), "from": before, "to": after, "carry": carry, "graphs": ops,
        "wall": max(walls) if walls else None, "walls": run_walls, "built": built, "steps": steps,
        "has_frames": any(frames_by_run.values()),
        "rebuild": gap or figures.needs_rebuild(view, frames_by_run),  # type: ignore[arg-type]
        "server_ms": round((time.time() - built) * 1000, 2),
    }


def per_run(ids: Iterable[str], call: Callable[[str], Any]) -> dict[str, Any]:
    """``call(rid)`` for each run, leaving out the runs it cannot reach (gone, or a backend
    hiccup: a ServiceError); anything else raises."""
    out = {}
    for rid in ids:
        try:
            out[rid] = call(rid)
        except LookupError:
            continue
        except Exception as err:
            if getattr(err, "http_status", None) is None:
                raise
    return out


def to_json(payload: Any) -> bytes:
    """JSON bytes for browsers, NaN/inf (never expected, but never fatal) as null: the app's
    one encoder (app.encoding)."""
    return dumps(payload)


#: a heatmap's whole contents (the "set" op, ~34 KB at n=32) go out at most this often (s); its
#: lines (extend) every frame
SET_EVERY_S = 1.0
#: significant digits of the numbers drawn (a plot shows no more; JSON shrinks about 3x)
DIGITS = 5
#: ... and of a heatmap's contents (a colour scale resolves far less; its ~34 KB become ~22 KB)
DIGITS_SET = 3


def _rounded(x: Any, digits: int = DIGITS) -> Any:
    """``x`` (per-graph ops) with every float rounded to DIGITS significant digits (a
    heatmap's contents, the "set" op, to DIGITS_SET)."""
    if isinstance(x, float):
        return float(f"{x:.{digits}g}") if math.isfinite(x) else x
    if isinstance(x, dict):
        return {k: _rounded(v, DIGITS_SET if k == "set" else digits) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_rounded(v, digits) for v in x]
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
    gzipped: dict[int, bytes] = field(default_factory=dict)  # since -> gzip(body), this seq
    read_at: float = 0.0
    set_at: float = 0.0
    wall: float = 0.0    # the newest frame's creation time (worker clock, time.time())
    period: float = 0.0  # seconds between frames, the fastest run's (moving average)
    due: float = 0.0     # when the next frame of any run is expected (time.time())
    pace: dict[str, list[float]] = field(default_factory=dict)  # run -> [last wall, period]
    used_at: float = field(default_factory=time.monotonic)
    status: dict[str, str] = field(default_factory=dict)  # run -> status, as last published
    status_at: float = 0.0  # when the runs' status was last looked at (time.monotonic())
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def runs(self) -> list[str]:
        return [r["id"] for r in self.view.get("runs") or []]


class LiveHub:
    """Channels of live views, shared by every client of the same view (see the module doc)."""

    def __init__(self, backend: Any, *, min_interval: float = MIN_INTERVAL, keep: int = KEEP,
                 idle_s: float = IDLE_S, shared: Any = None) -> None:
        self.backend = backend
        self.min_interval, self.keep, self.idle_s = min_interval, keep, idle_s
        self._channels: dict[str, Channel] = {}
        self._lock = threading.Lock()
        #: (credentials, channel) -> (until, a viewer link's)
        self._grants: dict[tuple[tuple[str, str, str], str], tuple[float, bool]] = {}
        #: channels shared by the server processes (a flask-caching cache: RedisCache on the
        #: backend's Redis in Celery mode), or None (one process: the local backend)
        self.shared = shared if shared is not None else shared_cache(backend)
        self.counts = {"computed": 0, "reads": 0, "polls": 0, "not_modified": 0,
                       "bytes": 0, "resync": 0, "joins": 0, "fast": 0, "pulled": 0}

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
        if self.shared is not None:
            return self._join_shared(key, view, cursors, carry)
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
                chan.gzipped.clear()
                chan.seq += 1  # older numbers are not in the ring any more: those clients resync
            chan.used_at = now
        return key

    def channel(self, key: str) -> Channel | None:
        return self._channels.get(key)

    def poll(self, key: str, since: int, cursors: Mapping[str, int] | None = None
             ) -> tuple[int, bytes, int]:
        """(HTTP status, body, newest item number) for a client at item ``since``."""
        chan = self._channels.get(key)
        if chan is None and self.shared is not None:
            chan = self._from_shared(key)  # seated by another server process
        if chan is None:
            self.counts["resync"] += 1
            return 200, b'{"resync":true,"seq":-1}', -1
        now = time.monotonic()
        chan.used_at = now
        self.counts["polls"] += 1
        if now - chan.read_at >= self.min_interval:
            with chan.lock:
                if time.monotonic() - chan.read_at >= self.min_interval:
                    if self.shared is None:
                        self._advance(chan)
                    else:
                        self._advance_shared(chan)
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
            body = to_json({"resync": True, "seq": seq})
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
        return to_json({"seq": seq, "items": out})

    # ---- the shared work ----------------------------------------------------------------------
    def _advance(self, chan: Channel) -> int:
        """Read the frames after the channel's cursors: the number of new items (frame_groups:
        a run's frames read together are items of their own, up to SPLIT_MAX)."""
        chan.read_at = time.monotonic()
        self.counts["reads"] += 1
        read = read_frames(self.backend, chan.view, chan.cursors)
        status = self._status(chan)
        groups = frame_groups(read, chan.cursors)
        made = 0
        for k, group in enumerate(groups):
            last = k == len(groups) - 1
            # the heatmap's contents only from the newest (items of one read go out together)
            made += self._add_item(chan, payload_of(chan.view, chan.cursors, group, chan.carry),
                                   status if last else None, sets=last)
        return made

    def _add_item(self, chan: Channel, payload: dict[str, Any],
                  status: dict[str, str] | None, sets: bool = True) -> bool:
        """``payload`` as the channel's next item, when it has anything to say."""
        if not payload["has_frames"] and not payload["rebuild"] and status is None:
            return False
        chan.carry = payload["carry"]
        chan.cursors = payload["to"]
        item = {k: payload[k] for k in ("from", "to", "wall", "built", "has_frames", "rebuild",
                                        "server_ms")}
        if payload["steps"]:
            item["steps"] = payload["steps"]
        if status is not None:
            item["status"] = status
        graphs = _rounded(payload["graphs"])
        now = time.time()
        if not sets or now - chan.set_at < SET_EVERY_S:  # a heatmap's contents: once a second
            graphs = {gid: {op: v for op, v in ops.items() if op not in ("set", "titles")}
                      for gid, ops in graphs.items()}
            graphs = {gid: ops for gid, ops in graphs.items() if ops}
        elif any("set" in ops for ops in graphs.values()):
            chan.set_at = now
        item["graphs"] = graphs
        chan.seq += 1
        chan.items.append((chan.seq, item, dict(payload["to"])))
        chan.encoded, chan.gzipped = {}, {}
        _pace(chan, payload["walls"])
        if payload["wall"]:
            chan.wall = max(chan.wall, payload["wall"])
        self.counts["computed"] += 1
        return True

    def _status(self, chan: Channel) -> dict[str, str] | None:
        """The runs' status when it changed since the channel last published it (looked at
        at most every STATUS_EVERY_S), else None. An item that carries it makes every client
        refresh its status chips and run table (assets/plab.js): one Dash round trip per
        change per client, instead of a clock's three every second or few."""
        now = time.monotonic()
        if now - chan.status_at < STATUS_EVERY_S:
            return None
        chan.status_at = now
        status = per_run(chan.runs, lambda rid: str(self.backend.get(rid).get("status", "")))
        if status == chan.status:
            return None
        chan.status = status
        return status

    # ---- several server processes: the channels in Redis ------------------------------------------
    # {key}:state  {view, cursors, carry, seq, read, set_at, wall, period, rebuild}
    # {key}:item:N (item N, its cursors), {key}:lock (the process reading frames right now)
    def _state(self, chan: Channel, read: float) -> dict[str, Any]:
        last = chan.items[-1][1] if chan.items else {}
        return {"view": chan.view, "cursors": chan.cursors, "carry": chan.carry, "seq": chan.seq,
                "read": read, "set_at": chan.set_at, "wall": chan.wall, "period": chan.period,
                "due": chan.due, "pace": chan.pace, "rebuild": bool(last.get("rebuild")),
                "status": chan.status}

    def _pull(self, chan: Channel, state: dict[str, Any]) -> None:
        """Bring ``chan`` up to ``state`` (another process's items): the items it lacks from
        Redis; where some expired, the ring restarts at the state (its clients resync)."""
        first = max(chan.seq + 1, state["seq"] - self.keep + 1)
        wanted = list(range(first, state["seq"] + 1))
        got = self.shared.get_many(*[f"{chan.key}:item:{n}" for n in wanted]) if wanted else []
        if any(g is None for g in got):
            got = []  # expired meanwhile: the ring restarts at the state
        if not got or first != chan.seq + 1:
            chan.items.clear()
        for n, (item, to) in zip(wanted, got, strict=False):
            chan.items.append((n, item, to))
        self.counts["pulled"] += len(got)
        chan.seq, chan.cursors, chan.carry = state["seq"], state["cursors"], state["carry"]
        chan.set_at, chan.wall, chan.period = state["set_at"], state["wall"], state["period"]
        chan.due, chan.pace = state["due"], state["pace"]
        chan.status = state.get("status", chan.status)
        chan.encoded, chan.gzipped = {}, {}

    def _seat(self, chan: Channel) -> None:
        self.shared.set(f"{chan.key}:state", self._state(chan, time.time()), timeout=int(IDLE_S))

    def _advance_shared(self, chan: Channel) -> None:
        """As _advance, once between all server processes: the one holding the channel's lock
        in Redis reads the frames and publishes the item; the others take it from Redis."""
        chan.read_at = time.monotonic()
        state = self.shared.get(f"{chan.key}:state")
        if state is not None and state["seq"] > chan.seq:
            self._pull(chan, state)
        if state is not None and time.time() - state["read"] < self.min_interval:
            return  # another process read the frames just now
        if not self.shared.add(f"{chan.key}:lock", 1, timeout=2):
            return  # another process is reading them: its item comes with a later poll
        try:
            state = self.shared.get(f"{chan.key}:state")
            if state is not None and state["seq"] > chan.seq:
                self._pull(chan, state)
            made = self._advance(chan)
            if made:
                self.shared.set_many({f"{chan.key}:item:{seq}": (item, to)
                                      for seq, item, to in list(chan.items)[-made:]},
                                     timeout=int(IDLE_S))
            self._seat(chan)
        finally:
            self.shared.delete(f"{chan.key}:lock")

    def _from_shared(self, key: str) -> Channel | None:
        state = self.shared.get(f"{key}:state")
        if state is None:
            return None
        with self._lock:
            chan = self._channels.get(key)
            if chan is None:
                chan = self._channels[key] = Channel(key, state["view"], {}, {}, seq=-1,
                                                     items=deque(maxlen=self.keep))
        with chan.lock:
            if state["seq"] > chan.seq:
                self._pull(chan, state)
        return chan

    def _join_shared(self, key: str, view: Mapping[str, Any], cursors: Mapping[str, int],
                     carry: dict[str, Any]) -> str:
        """join() across processes: a channel some process served within the last 2 s is
        joined as it is; otherwise it is (re)seated on this client's state, numbered on."""
        self.counts["joins"] += 1
        with self._lock:
            self._expire(time.monotonic())
        state = self.shared.get(f"{key}:state")
        if state is not None and time.time() - state["read"] <= 2.0 and not state["rebuild"]:
            self._from_shared(key)
            return key
        with self._lock:
            chan = self._channels.get(key)
            if chan is None:
                chan = self._channels[key] = Channel(key, {k: v for k, v in view.items()
                                                           if k != "live"}, {}, {},
                                                     items=deque(maxlen=self.keep))
        with chan.lock:
            chan.cursors = {str(k): int(v) for k, v in cursors.items()}
            chan.carry = json.loads(json.dumps(carry))
            chan.items.clear()
            chan.encoded, chan.gzipped = {}, {}
            chan.seq = max(chan.seq, state["seq"] if state else 0) + 1
            chan.used_at = time.monotonic()
            self._seat(chan)
        return key

    # ---- answers (the Flask route and the WSGI front share them) --------------------------------
    def respond(self, key: str, since: int, cursors: Mapping[str, int] | None = None, *,
                conditional: bool = False, gzip_ok: bool = False, viewer: bool = False
                ) -> tuple[int, bytes, list[tuple[str, str]]]:
        """(status, body, headers) of a poll: hub.poll's answer with its ETag, the hint
        ``X-Plab-Next`` (ms until the next frame is expected: the client polls then) and,
        for a client that accepts it, the body gzip-compressed once per (since, newest).

        Nothing new: 304 to a ``conditional`` request (If-None-Match), else 200 with
        ``{"seq": N, "items": []}``, because waitress closes the connection after every 304
        (it has no Content-Length), so each 304 costs the client a new connection (an RTT
        on a phone) and the server a new channel: 0.39 ms of server CPU per poll against
        0.25 ms for the 200 that keeps the connection alive (1,000 polls, 2-core machine).

        A ``viewer`` (a viewer link's client) is told VIEWER_AFTER_MS later than the
        presenter, so that the presenter's poll after each frame is not queued behind a
        class's (the lecturer is never slowed by the audience)."""
        status, body, seq = self.poll(key, since, cursors)
        if status == 304 and not conditional:
            status, body = 200, b'{"seq":%d,"items":[]}' % seq
        headers = [*BASE_HEADERS, ("ETag", f'"{seq}"')]
        chan = self._channels.get(key)
        if status == 200 and since < seq and chan is not None:  # items up to item ``seq``
            wall = next((it.get("wall") for s, it, _ in reversed(chan.items) if s == seq), None)
            if wall and not body.startswith(b'{"resync"'):
                headers.append(("X-Plab-Wall", f"{wall:.3f}"))
        if chan is not None and chan.due:
            wait = (chan.due - time.time()) * 1000 + (VIEWER_AFTER_MS if viewer else 0.0)
            headers.append(("X-Plab-Next", str(int(min(max(wait, 0.0), NEXT_MAX_MS)))))
        if gzip_ok and len(body) >= GZIP_MIN and status == 200:
            packed = chan.gzipped.get(since) if chan is not None and chan.seq == seq else None
            if packed is None:
                packed = gzip.compress(body, 5, mtime=0)
                if chan is not None and chan.seq == seq:
                    chan.gzipped[since] = packed
            body = packed
            headers += [("Content-Encoding", "gzip"), ("Vary", "Accept-Encoding")]
        if status != 304:
            headers.append(("Content-Length", str(len(body))))
        return status, body, headers

    # ---- who may be answered without Flask ------------------------------------------------------
    def grant(self, who: tuple[str, str, str], key: str, *, viewer: bool = False) -> None:
        """``who`` (credentials(environ)) may read channel ``key`` for the next GRANT_S;
        ``viewer``: as a viewer link's client (its hint comes VIEWER_AFTER_MS later)."""
        now = time.monotonic()
        if len(self._grants) > 10_000:
            self._grants = {k: g for k, g in self._grants.items() if g[0] > now}
        self._grants[who, key] = (now + GRANT_S, viewer)

    def granted(self, who: tuple[str, str, str], key: str) -> bool | None:
        """None unless ``who`` may read ``key`` now; else whether as a viewer link's client."""
        until, viewer = self._grants.get((who, key), (0.0, False))
        return viewer if until > time.monotonic() else None

    def _expire(self, now: float) -> None:
        for key in [k for k, c in self._channels.items() if now - c.used_at > self.idle_s]:
            del self._channels[key]

    def stats(self) -> dict[str, Any]:
        return {**self.counts, "channels": len(self._channels),
                "items": {k: c.seq for k, c in self._channels.items()}}


def _pace(chan: Channel, walls: Mapping[str, list[float]]) -> None:
    """Each run's frame period from the creation times of its frames (the gaps between
    consecutive frames, not between reads: polls must not slow their own hint down), and
    when the next frame of any run is due."""
    for rid, ws in walls.items():
        if not ws:
            continue
        last, period = chan.pace.get(rid, [0.0, 0.0])
        seq = [last, *ws] if last and 0 < ws[0] - last < 5 else list(ws)
        gaps = sorted(b - a for a, b in itertools.pairwise(seq) if b > a)
        if gaps:
            gap = gaps[len(gaps) // 2]
            period = gap if not period else 0.7 * period + 0.3 * gap
        chan.pace[rid] = [max(last, ws[-1]), period]
    paced = [(last, period) for last, period in chan.pace.values() if period]
    if paced:
        chan.period = min(period for _, period in paced)
        chan.due = min(last + period for last, period in paced)


def shared_cache(backend: Any) -> Any:
    """A flask-caching RedisCache on the backend's Redis (``redis_url``: the Celery backend),
    keys under the backend's prefix; None for a backend without one (the local backend)."""
    url = getattr(backend, "redis_url", None)
    if not url:
        return None
    import redis
    from flask_caching.backends.rediscache import RedisCache

    prefix = getattr(getattr(backend, "store", None), "prefix", "") or ""
    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    return RedisCache(host=client, key_prefix=f"{prefix}plab:live:", default_timeout=int(IDLE_S))


def credentials(environ: Mapping[str, Any]) -> tuple[str, str, str]:
    """What identifies a client's sign-in on a request: its cookies, Authorization and Host
    (the guard checks all three; a grant holds for exactly these)."""
    return (str(environ.get("HTTP_COOKIE", "")), str(environ.get("HTTP_AUTHORIZATION", "")),
            str(environ.get("HTTP_HOST", "")))


def parse_since(if_none_match: str, query_since: str) -> int:
    """The item a client has: its If-None-Match ("N") or else ``since`` (ValueError if bad)."""
    match = if_none_match.strip().removeprefix("W/").strip('"')
    return int(match if match.lstrip("-").isdigit() else query_since)


class LiveFront:
    """WSGI middleware in front of the Flask app for ``GET {prefix}<key>?since=N``.

    A poll from a client whose credentials (cookies, Authorization, Host) the dashboard's
    route checked for that channel within the last GRANT_S is answered here, from the shared
    channel, without Flask, Dash or the sign-in guard: a 304 costs a dictionary look-up and
    a comparison. Everything else (a first poll with cursors, other credentials, a bad
    ``since``, an unknown channel) goes to the app, whose route checks and grants again.
    """

    def __init__(self, app: Callable[..., Iterable[bytes]], hub: LiveHub, prefix: str) -> None:
        self.app, self.hub, self.prefix = app, hub, prefix

    def __call__(self, environ: dict[str, Any],
                 start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if environ.get("REQUEST_METHOD") != "GET" or not path.startswith(self.prefix):
            return self.app(environ, start_response)
        key = path[len(self.prefix):]
        viewer = self.hub.granted(credentials(environ), key) if key and "/" not in key else None
        if viewer is None:
            return self.app(environ, start_response)
        query = environ.get("QUERY_STRING", "")
        raw = next((part[6:] for part in query.split("&") if part.startswith("since=")), "-1")
        try:
            since = parse_since(environ.get("HTTP_IF_NONE_MATCH", ""), raw)
        except ValueError:
            return self.app(environ, start_response)
        if since < 0 or self.hub.channel(key) is None:
            return self.app(environ, start_response)
        self.hub.counts["fast"] += 1
        status, body, headers = self.hub.respond(
            key, since, conditional=bool(environ.get("HTTP_IF_NONE_MATCH")),
            gzip_ok="gzip" in environ.get("HTTP_ACCEPT_ENCODING", ""), viewer=viewer)
        start_response("304 Not Modified" if status == 304 else f"{status} OK", headers)
        return [body]


__all__ = ["LiveFront", "LiveHub", "credentials", "frame_groups", "parse_since", "payload_of",
           "per_run", "read_frames", "tick_payload", "to_json", "view_key"]
