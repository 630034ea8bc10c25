"""The run registry, telemetry streams, commands, checkpoints and histories in Redis.

Why Redis (with AOF persistence) and not PostgreSQL
---------------------------------------------------
Redis is already required: it is Celery's broker in this mode. Putting the registry there too
means one service to install, start, back up and reason about, and every part of the design
uses a native Redis structure instead of emulating one:

- telemetry frames are a **Redis Stream** per run (``XADD ... MAXLEN ~ N``): bounded memory,
  ``XRANGE`` after a cursor is O(log N + new frames), entries are ordered by an id that *is*
  the frame's ``seq`` (``"{seq+1}-0"``), so cursors cost nothing to map;
- control commands are a **list** per run that the running task pops between chunks, with a
  reply list per command (``BLPOP``): no polling of a table;
- liveness is a **key with a TTL** (the lease): a dead worker simply stops refreshing it;
  fencing (a stale task may not write) is one ``GET`` compared inside each write script;
- the registry is a **hash** per run and a sorted set by creation time; multi-key updates
  that must be atomic (create under the run limit, claim, requeue, fenced writes) are short
  Lua scripts, atomic by construction.

PostgreSQL would give richer queries over past runs and stronger durability, but the frames,
commands and liveness would still need Redis (LISTEN/NOTIFY and polling a table at 10 Hz per
client do not replace a stream), so it would add a second stateful service for the part of
the data that is small. With ``appendonly yes`` (``appendfsync everysec``) a Redis crash
loses at most about a second of writes; a clean restart loses nothing. Trade-off, stated:
the full-resolution scalar history lives in Redis memory (zlib-compressed CSV blocks, about
12 bytes per step and seed), so Redis memory grows with the total steps of all kept runs,
while the live frames stay bounded by MAXLEN. Deleting runs frees it.

Key layout (prefix ``pl:`` by default; every value in a run hash is JSON):

    pl:runs                    ZSET   run id -> created (unix time)
    pl:active                  SET    runs that have, or wait for, a task (the run limit)
    pl:run:{id}                HASH   config, status, step, ... and attempt, placement, owner
    pl:run:{id}:frames         STREAM "{seq+1}-0" frames, "{next_seq}-{j}" scalar summaries;
                                      field "z": zlib(JSON)
    pl:run:{id}:cmd            LIST   JSON commands {"id", "action", "params"} (task pops)
    pl:reply:{cmd_id}          LIST   the task's JSON reply (expires after a minute)
    pl:run:{id}:lease          STRING the owning task's token, PX heartbeat TTL
    pl:run:{id}:csv            LIST   zlib blocks of the scalar CSV, in step order
    pl:run:{id}:hist           STRING npz of the decimated history pyramid (<= ~2 MB)
    pl:run:{id}:ckpts          HASH   checkpoint name -> JSON {step, auto, csv_chunks, seq, created}
    pl:run:{id}:ckpt:{name}    STRING torch.save'd Run.state_dict()
    pl:run:{id}:ckpthist:{name} STRING the history pyramid as of that checkpoint
    plasticity:drain:{host}    STRING a worker host that is shutting down (its tasks hand off;
                                      not namespaced: workers serve every namespace)
"""

from __future__ import annotations

import io
import json
import time
import uuid
import zlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import BusyLoadingError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

__all__ = ["REDIS_ERRORS", "Fenced", "RedisStore", "decode_frame", "enc", "encode_frame", "npz_arrays",
           "npz_bytes"]

#: What a lost or restarting Redis raises (after the client's own retries).
REDIS_ERRORS = (RedisConnectionError, RedisTimeoutError, BusyLoadingError, OSError)

BLOCK_MIN = 0.3    # seconds: shorter command waits poll instead of blocking (see pop_command)
POLL_SLICE = 0.025

#: Values of the run hash's "placement" field.
QUEUED, CLAIMED, NONE = "queued", "claimed", ""


class Fenced(Exception):
    """This task no longer owns the run (its lease expired and another task took over, or the
    run was deleted): it must stop without writing anything more."""


def enc(value: Any) -> str:
    """A run-hash value: compact JSON."""
    return json.dumps(value, separators=(",", ":"), default=_jsonable)


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON: {type(value).__name__}")


def _dec(raw: bytes | str | None) -> Any:
    return None if raw is None else json.loads(raw)


def _dec_hash(raw: dict[bytes, bytes]) -> dict[str, Any]:
    """A run hash decoded field by field: fields that do not parse are left out and named in
    "unreadable" (one damaged field must not hide the run, nor break a list of runs)."""
    out: dict[str, Any] = {}
    bad: list[str] = []
    for key, value in raw.items():
        try:
            out[key.decode()] = _dec(value)
        except (ValueError, UnicodeDecodeError):
            bad.append(key.decode(errors="replace"))
    if not isinstance(out.get("config", {}), dict):
        bad.append("config")
        out.pop("config")
    if bad:
        out["unreadable"] = f"its field(s) {', '.join(sorted(bad))[:100]} do not parse"
    return out


def encode_frame(frame: dict[str, Any]) -> bytes:
    """A frame (or summary) as a stream payload: zlib level 1 of compact JSON (~3.5x smaller)."""
    return zlib.compress(json.dumps(frame, separators=(",", ":")).encode(), 1)


def decode_frame(blob: bytes) -> dict[str, Any]:
    return json.loads(zlib.decompress(blob))


def parse_id(entry_id: bytes | str) -> tuple[int, int]:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    major, _, minor = text.partition("-")
    return int(major), int(minor or 0)


# ---- Lua scripts ------------------------------------------------------------------------------
# Create a run unless the active-run limit is reached (0) or the id is taken (-1).
# KEYS: active, runs index, run hash. ARGV: max_runs, id, created, field, value, ...
_CREATE = """
if redis.call('EXISTS', KEYS[3]) == 1 then return -1 end
if tonumber(ARGV[1]) > 0 and redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('HSET', KEYS[3], unpack(ARGV, 4))
redis.call('SADD', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
return 1
"""

# Make an inactive run active again (resume) under the limit: attempt + 1, queued.
# KEYS: active, run hash. ARGV: max_runs, id, now, status json. Returns the attempt, 0 at the
# limit, -1 if the run is gone or already active.
_ACTIVATE = """
if redis.call('EXISTS', KEYS[2]) == 0 or redis.call('SISMEMBER', KEYS[1], ARGV[2]) == 1 then
  return -1
end
if tonumber(ARGV[1]) > 0 and redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
local a = redis.call('HINCRBY', KEYS[2], 'attempt', 1)
redis.call('HSET', KEYS[2], 'placement', '"queued"', 'queued_at', ARGV[3], 'status', ARGV[4],
           'recoveries', '0', 'owner', 'null')
redis.call('SADD', KEYS[1], ARGV[2])
return a
"""

# A task takes a run: only the current attempt, only an active run, only if no live lease.
# A run still marked claimed has lost its previous task (its lease lapsed: a pool process
# killed, redelivered by Celery): that counts as a recovery, failing the run past the limit.
# KEYS: run hash, lease, active. ARGV: id, attempt, token, ttl_ms, owner json, now
_CLAIM = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 'gone' end
if redis.call('SISMEMBER', KEYS[3], ARGV[1]) == 0 then return 'inactive' end
if redis.call('HGET', KEYS[1], 'attempt') ~= ARGV[2] then return 'stale' end
if redis.call('EXISTS', KEYS[2]) == 1 then return 'busy' end
if redis.call('HGET', KEYS[1], 'placement') == '"claimed"' then
  local ok, settings = pcall(cjson.decode, redis.call('HGET', KEYS[1], 'settings') or '{}')
  if not ok or type(settings) ~= 'table' then settings = {} end
  local owner = cjson.decode(redis.call('HGET', KEYS[1], 'owner') or 'null')
  if type(owner) ~= 'string' then owner = 'an unknown worker' end
  local rec = redis.call('HINCRBY', KEYS[1], 'recoveries', 1)
  redis.call('HSET', KEYS[1], 'lost_at', ARGV[6], 'lost_owner', cjson.encode(owner))
  if rec > (tonumber(settings['max_recoveries']) or 3) then
    local reason = 'failed: worker lost: ' .. owner .. ' died (' .. rec ..
                   ' times) (resumable)'
    redis.call('HSET', KEYS[1], 'status', cjson.encode(reason), 'placement', '""',
               'steps_per_second', '0', 'resumable', 'true', 'alive', 'false')
    redis.call('SREM', KEYS[3], ARGV[1])
    return 'failed'
  end
end
redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4])
redis.call('HSET', KEYS[1], 'placement', '"claimed"', 'owner', ARGV[5], 'claimed_at', ARGV[6])
return 'ok'
"""

# Heartbeat: extend the lease if it is still ours. KEYS: lease. ARGV: token, ttl_ms
_REFRESH = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

# Fenced writes: every write of a task goes through here, so a task that lost its lease
# cannot write. Idempotent under client retries: XADDX skips an id that is not newer than the
# stream's last entry, RPUSHAT pushes only if the list is not already longer than the index.
# KEYS: lease. ARGV: token, ttl_ms (0: leave), then ops: n, cmd, arg1 .. arg(n-1), n, ...
_FENCED = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return redis.error_reply('FENCED lease lost') end
if tonumber(ARGV[2]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
local function newer(key, id)
  local last = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)
  if #last == 0 then return true end
  local a, b = string.match(last[1][1], '(%d+)-(%d+)')
  local c, d = string.match(id, '(%d+)-(%d+)')
  a, b, c, d = tonumber(a), tonumber(b), tonumber(c), tonumber(d)
  return c > a or (c == a and d > b)
end
local i = 3
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  local cmd = ARGV[i + 1]
  if cmd == 'XADDX' then
    -- XADDX key maxlen id field value
    if newer(ARGV[i + 2], ARGV[i + 4]) then
      redis.call('XADD', ARGV[i + 2], 'MAXLEN', '~', ARGV[i + 3], ARGV[i + 4], ARGV[i + 5],
                 ARGV[i + 6])
    end
  elseif cmd == 'RPUSHAT' then
    -- RPUSHAT key index value
    if redis.call('LLEN', ARGV[i + 2]) <= tonumber(ARGV[i + 3]) then
      redis.call('RPUSH', ARGV[i + 2], ARGV[i + 4])
    end
  else
    redis.call(unpack(ARGV, i + 1, i + n))
  end
  i = i + n + 1
end
return 1
"""

# Requeue a run whose task is gone. Modes:
#   reap     claimed, but the lease expired (the worker died): attempt + 1, or fail after the
#            run's max_recoveries; or queued for longer than its lost_after while the broker
#            queue is empty (the message was lost with a worker that had reserved it).
#   handoff  the owning task gives the run back (its worker is shutting down).
# Limits come from the run's own settings (heartbeat_ttl, max_recoveries, lost_after).
# KEYS: run hash, lease, active, broker queue. ARGV: id, mode, token, now.
# Returns nil (nothing to do), {'requeue', attempt} or {'failed', reason}.
_REQUEUE = """
if redis.call('SISMEMBER', KEYS[3], ARGV[1]) == 0 then return nil end
local placement = redis.call('HGET', KEYS[1], 'placement')
local now = tonumber(ARGV[4])
local ok, settings = pcall(cjson.decode, redis.call('HGET', KEYS[1], 'settings') or '{}')
if not ok or type(settings) ~= 'table' then settings = {} end
local ttl = tonumber(settings['heartbeat_ttl']) or 10
local max_rec = tonumber(settings['max_recoveries']) or 3
local lost_after = tonumber(settings['lost_after']) or 30
if ARGV[2] == 'handoff' then
  if redis.call('GET', KEYS[2]) ~= ARGV[3] then return nil end
  redis.call('DEL', KEYS[2])
elseif placement == '"claimed"' then
  if redis.call('EXISTS', KEYS[2]) == 1 then return nil end
  local owner = cjson.decode(redis.call('HGET', KEYS[1], 'owner') or 'null')
  if type(owner) ~= 'string' then owner = 'an unknown worker' end
  local rec = redis.call('HINCRBY', KEYS[1], 'recoveries', 1)
  redis.call('HSET', KEYS[1], 'lost_at', ARGV[4], 'lost_owner', cjson.encode(owner))
  if rec > max_rec then
    local reason = 'failed: worker lost: no heartbeat from ' .. owner .. ' for ' .. ttl ..
                   ' s (' .. rec .. ' times) (resumable)'
    redis.call('HSET', KEYS[1], 'status', cjson.encode(reason), 'placement', '""',
               'steps_per_second', '0', 'resumable', 'true', 'alive', 'false')
    redis.call('SREM', KEYS[3], ARGV[1])
    redis.call('DEL', KEYS[2])
    return {'failed', reason}
  end
elseif placement == '"queued"' then
  local since = tonumber(redis.call('HGET', KEYS[1], 'queued_at') or '0') or 0
  if now - since < lost_after or redis.call('LLEN', KEYS[4]) > 0 then return nil end
else
  return nil
end
local a = redis.call('HINCRBY', KEYS[1], 'attempt', 1)
redis.call('HSET', KEYS[1], 'placement', '"queued"', 'queued_at', ARGV[4])
return {'requeue', tostring(a)}
"""

# Fence out and forget a run. KEYS: run hash, lease, active, runs index. ARGV: id
_FORGET = """
redis.call('HINCRBY', KEYS[1], 'attempt', 1)
redis.call('DEL', KEYS[2])
redis.call('SREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
return 1
"""

# A server-side status change of a run whose task is not running (stop a queued run...):
# fences any task that would still start. KEYS: run hash, lease, active. ARGV: id, status json
_SETTLE = """
redis.call('HINCRBY', KEYS[1], 'attempt', 1)
redis.call('DEL', KEYS[2])
redis.call('SREM', KEYS[3], ARGV[1])
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'placement', '""', 'steps_per_second', '0')
return 1
"""


def connect(url: str, *, retry_seconds: float = 3.0, socket_timeout: float = 5.0) -> redis.Redis:
    """A client that reconnects by itself: each command is retried with backoff (capped at
    0.5 s) for about ``retry_seconds`` while Redis is unreachable or loading its AOF."""
    retries = max(1, round(retry_seconds / 0.35))
    return redis.Redis.from_url(
        url, retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries),
        retry_on_error=[RedisConnectionError, RedisTimeoutError, BusyLoadingError],
        socket_timeout=socket_timeout, socket_connect_timeout=2.0, health_check_interval=5,
        socket_keepalive=True)


class RedisStore:
    """Everything the servers and the tasks share, behind small methods (see module doc).

    Server-side methods write without fencing (the registry belongs to the servers until a task
    claims a run); task-side writes go through :meth:`fenced`.
    """

    def __init__(self, url: str, *, prefix: str = "pl:", retry_seconds: float = 3.0,
                 queue: str = "plasticity") -> None:
        self.url, self.prefix, self.queue = url, prefix, queue
        self.r = connect(url, retry_seconds=retry_seconds)
        reg = self.r.register_script
        self._create, self._activate, self._claim = reg(_CREATE), reg(_ACTIVATE), reg(_CLAIM)
        self._refresh, self._fenced, self._requeue = reg(_REFRESH), reg(_FENCED), reg(_REQUEUE)
        self._forget, self._settle = reg(_FORGET), reg(_SETTLE)

    # ---- keys ----------------------------------------------------------------------------
    def key(self, run_id: str, part: str = "") -> str:
        return f"{self.prefix}run:{run_id}" + (f":{part}" if part else "")

    @property
    def k_runs(self) -> str:
        return f"{self.prefix}runs"

    @property
    def k_active(self) -> str:
        return f"{self.prefix}active"

    def k_reply(self, cmd_id: str) -> str:
        return f"{self.prefix}reply:{cmd_id}"

    @staticmethod
    def k_drain(host: str) -> str:
        """Global, not per namespace: worker hosts are shared by every namespace."""
        return f"plasticity:drain:{host}"

    def ping(self) -> bool:
        return bool(self.r.ping())

    def close(self) -> None:
        self.r.close()

    # ---- registry ---------------------------------------------------------------------------
    def create_run(self, run_id: str, fields: dict[str, Any], max_runs: int) -> int:
        """Insert an active run: 1, or 0 at the limit of active runs, -1 if the id is taken."""
        flat: list[Any] = []
        for name, value in fields.items():
            flat += [name, enc(value)]
        return int(self._create(keys=[self.k_active, self.k_runs, self.key(run_id)],
                                args=[max_runs, run_id, fields["created"], *flat]))

    def activate(self, run_id: str, max_runs: int, status: str) -> int:
        """Queue an inactive run again (resume): its new attempt; 0 at the limit; -1 gone or
        already active."""
        return int(self._activate(keys=[self.k_active, self.key(run_id)],
                                  args=[max_runs, run_id, time.time(), enc(status)]))

    def fields(self, run_id: str) -> dict[str, Any] | None:
        raw = self.r.hgetall(self.key(run_id))
        return _dec_hash(raw) if raw else None

    def many_fields(self, run_ids: Sequence[str]) -> list[dict[str, Any] | None]:
        pipe = self.r.pipeline(transaction=False)
        for run_id in run_ids:
            pipe.hgetall(self.key(run_id))
        return [_dec_hash(raw) if raw else None for raw in pipe.execute()]

    def run_ids(self) -> list[str]:
        """Every run id, newest first."""
        return [x.decode() for x in self.r.zrevrange(self.k_runs, 0, -1)]

    def active_ids(self) -> list[str]:
        return [x.decode() for x in self.r.smembers(self.k_active)]

    def update(self, run_id: str, **fields: Any) -> None:
        if fields:
            self.r.hset(self.key(run_id), mapping={k: enc(v) for k, v in fields.items()})

    def settle(self, run_id: str, status: str) -> None:
        """Set a final status server-side, fencing out any task of this run."""
        self._settle(keys=[self.key(run_id), self.key(run_id, "lease"), self.k_active],
                     args=[run_id, enc(status)])

    def delete_run(self, run_id: str) -> None:
        """Fence the run's task out, then remove every key of the run."""
        self._forget(keys=[self.key(run_id), self.key(run_id, "lease"), self.k_active,
                           self.k_runs], args=[run_id])
        names = [n.decode() for n in self.r.hkeys(self.key(run_id, "ckpts"))]
        keys = [self.key(run_id, p) for p in ("frames", "cmd", "csv", "hist", "ckpts", "lease")]
        keys += [self.key(run_id, f"ckpt:{n}") for n in names]
        keys += [self.key(run_id, f"ckpthist:{n}") for n in names]
        self.r.delete(self.key(run_id), *keys)

    # ---- task ownership --------------------------------------------------------------------
    def claim(self, run_id: str, attempt: int, token: str, ttl_ms: int,
              owner: str) -> str:
        """'ok', or why not: 'gone', 'inactive', 'stale' (a newer attempt exists), 'busy', or
        'failed' (its tasks died more than the run's max_recoveries times)."""
        out = self._claim(keys=[self.key(run_id), self.key(run_id, "lease"), self.k_active],
                          args=[run_id, str(attempt), token, ttl_ms, enc(owner), time.time()])
        return out.decode() if isinstance(out, bytes) else str(out)

    def refresh(self, run_id: str, token: str, ttl_ms: int) -> bool:
        """Extend this task's lease; False when it is no longer ours."""
        return bool(self._refresh(keys=[self.key(run_id, "lease")], args=[token, ttl_ms]))

    def lease_holder(self, run_id: str) -> str | None:
        raw = self.r.get(self.key(run_id, "lease"))
        return raw.decode() if raw is not None else None

    def fenced(self, run_id: str, token: str, ops: list[list[Any]], ttl_ms: int = 0) -> None:
        """Apply ``ops`` (Redis commands; XADDX / RPUSHAT as in the script) atomically, only if
        this task still holds the lease (also extends it by ``ttl_ms``). Raises Fenced."""
        args: list[Any] = [token, ttl_ms]
        for op in ops:
            args += [len(op), *op]
        try:
            self._fenced(keys=[self.key(run_id, "lease")], args=args)
        except ResponseError as exc:
            if "FENCED" in str(exc):
                raise Fenced(run_id) from None
            raise

    def requeue(self, run_id: str, mode: str, *, token: str = "") -> tuple[str, Any] | None:
        """See the script: None, ("requeue", new attempt) or ("failed", reason)."""
        out = self._requeue(
            keys=[self.key(run_id), self.key(run_id, "lease"), self.k_active, self.queue],
            args=[run_id, mode, token, time.time()])
        if not out:
            return None
        kind, value = (x.decode() if isinstance(x, bytes) else x for x in out)
        return (kind, int(value)) if kind == "requeue" else (kind, value)

    def set_drain(self, host: str, seconds: int = 600) -> None:
        self.r.set(self.k_drain(host), "1", ex=seconds)

    def is_draining(self, host: str) -> bool:
        return bool(self.r.exists(self.k_drain(host)))

    # ---- frames ------------------------------------------------------------------------------
    def read_frames(self, run_id: str, after: int, count: int) -> tuple[bool, list[tuple]]:
        """(run exists, [(entry id, payload), ...]) for frames with seq > after (summaries are
        skipped). One round trip."""
        pipe = self.r.pipeline(transaction=False)
        pipe.exists(self.key(run_id))
        pipe.xrange(self.key(run_id, "frames"), f"{after + 2}-0", "+", count=count)
        exists, entries = pipe.execute()
        out = [(parse_id(i), fields[b"z"]) for i, fields in entries]
        return bool(exists), [(i, blob) for i, blob in out if i[1] == 0]

    def entries_after(self, run_id: str, last_id: str, count: int = 100_000) -> list[tuple]:
        """Stream entries (frames and summaries) after ``last_id``: [(id str, (a, b), blob)]."""
        entries = self.r.xrange(self.key(run_id, "frames"), f"({last_id}", "+", count=count)
        return [(i.decode(), parse_id(i), fields[b"z"]) for i, fields in entries]

    def last_entry(self, run_id: str) -> tuple[int, int]:
        entries = self.r.xrevrange(self.key(run_id, "frames"), "+", "-", count=1)
        return parse_id(entries[0][0]) if entries else (0, 0)

    # ---- history snapshots -------------------------------------------------------------------
    def snapshot_version(self, run_id: str) -> tuple[bool, Any]:
        exists, version = self.r.pipeline(transaction=False).exists(self.key(run_id)).hget(
            self.key(run_id), "hist_version").execute()
        return bool(exists), _dec(version)

    def load_snapshot(self, run_id: str) -> tuple[Any, str, bytes | None]:
        """(version, stream id folded into it, npz blob or None), read atomically."""
        pipe = self.r.pipeline(transaction=True)
        pipe.hmget(self.key(run_id), ["hist_version", "hist_id"])
        pipe.get(self.key(run_id, "hist"))
        (version, hist_id), blob = pipe.execute()
        return _dec(version), _dec(hist_id) or "0-0", blob

    # ---- commands ----------------------------------------------------------------------------
    def send_command(self, run_id: str, action: str, params: dict[str, Any]) -> tuple[str, bytes]:
        cmd_id = uuid.uuid4().hex
        payload = enc({"id": cmd_id, "action": action, "params": params}).encode()
        self.r.rpush(self.key(run_id, "cmd"), payload)
        return cmd_id, payload

    def wait_reply(self, cmd_id: str, timeout: float) -> dict[str, Any] | None:
        """The task's reply, waiting up to ``timeout`` s (in 1 s blocking slices)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            got = self.r.blpop([self.k_reply(cmd_id)], timeout=max(0.01, min(1.0, left)))
            if got is not None:
                return _dec(got[1])

    def withdraw_command(self, run_id: str, payload: bytes) -> bool:
        """Take back a command nobody popped (True) or learn that it was taken (False)."""
        return bool(self.r.lrem(self.key(run_id, "cmd"), 1, payload))

    def pop_command(self, run_id: str, timeout: float) -> dict[str, Any] | None:
        """The run's next command, waiting up to ``timeout`` s. Long waits (an idle run) block
        in BLPOP, woken at once by a command; short ones (pacing between chunks) poll LPOP in
        25 ms slices, because Redis times blocked clients out in its cron (hz 10): a 60 ms
        BLPOP can take 200 ms, which would stretch every paced chunk."""
        key = self.key(run_id, "cmd")
        if timeout >= BLOCK_MIN:
            got = self.r.blpop([key], timeout=timeout)
            return _dec(got[1]) if got else None
        end = time.monotonic() + max(0.0, timeout)
        while True:
            raw = self.r.lpop(key)
            left = end - time.monotonic()
            if raw is not None or left <= 0:
                return _dec(raw)
            time.sleep(min(POLL_SLICE, left))

    def reply(self, cmd_id: str, result: dict[str, Any]) -> None:
        key = self.k_reply(cmd_id)
        self.r.pipeline(transaction=False).rpush(key, enc(result)).expire(key, 60).execute()

    # ---- checkpoints -------------------------------------------------------------------------
    def checkpoints(self, run_id: str) -> list[dict[str, Any]]:
        """Checkpoint metadata, oldest first (by creation time, then step), with "name"."""
        raw = self.r.hgetall(self.key(run_id, "ckpts"))
        out = [{**_dec(v), "name": k.decode()} for k, v in raw.items()]
        return sorted(out, key=lambda c: (c.get("created", 0), c.get("step", 0)))

    def checkpoint_blob(self, run_id: str, name: str) -> bytes | None:
        return self.r.get(self.key(run_id, f"ckpt:{name}"))

    def checkpoint_history(self, run_id: str, name: str) -> bytes | None:
        return self.r.get(self.key(run_id, f"ckpthist:{name}"))

    def adopt_checkpoint(self, src: str, name: str, dst: str, step: int) -> bool:
        """Copy ``src``'s checkpoint ``name`` to run ``dst`` as "origin" (a branch's start)."""
        if not self.r.copy(self.key(src, f"ckpt:{name}"), self.key(dst, "ckpt:origin"),
                           replace=True):
            return False
        meta = {"step": step, "auto": False, "csv_chunks": 0, "seq": -1, "created": time.time()}
        self.r.hset(self.key(dst, "ckpts"), "origin", enc(meta))
        return True

    # ---- the scalar CSV ------------------------------------------------------------------------
    def csv_blocks(self, run_id: str, batch: int = 256) -> Iterator[bytes]:
        """The CSV's blocks, decompressed, in order."""
        key, start = self.key(run_id, "csv"), 0
        while True:
            blobs = self.r.lrange(key, start, start + batch - 1)
            for blob in blobs:
                yield zlib.decompress(blob)
            if len(blobs) < batch:
                return
            start += batch

    def csv_header(self, run_id: str) -> bytes | None:
        first = self.r.lindex(self.key(run_id, "csv"), 0)
        if first is None:
            return None
        text = zlib.decompress(first)
        return text[: text.find(b"\n") + 1] or None


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """A FrameBuffer snapshot as npz bytes (not compressed: float64 envelopes barely compress,
    and zlib would cost ~50 ms for a full 2 MB pyramid instead of ~2 ms)."""
    out = io.BytesIO()
    np.savez(out, **arrays)
    return out.getvalue()


def npz_arrays(blob: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(blob), allow_pickle=False) as data:
        return {k: data[k] for k in data.files}
