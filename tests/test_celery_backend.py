"""The Celery + Redis backend against a real redis-server and real Celery workers, all started
(and stopped) by these tests on 127.0.0.1: the REST API suite run on this backend, runs shared
by several servers, the bounded frame stream, and the faults: a worker host killed mid-run, a
pool process killed, workers that keep dying (failed with the reason), a warm worker shutdown
(hand-off), Redis restarted, one server process killed while another serves its clients.

Skipped, saying why, where redis-server or the celery/redis packages are missing.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import TOKEN, free_port, http_json, wait_for

REDIS_SERVER = shutil.which("redis-server")
try:
    import celery  # noqa: F401
    import redis
except ImportError:  # pragma: no cover - CI installs them with .[dev]
    redis = None  # type: ignore[assignment]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed "
                       "(apt-get install redis-server); the Celery backend needs a real one"),
    pytest.mark.skipif(redis is None, reason="celery[redis] is not installed (pip install -e .[dev])"),
]

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"task": "add", "rule": "dni-b", "n": 8, "steps": 10**7, "test_steps": 200}
TTL = 3.0  # heartbeat TTL in these tests: a dead worker is noticed within ~4 s


# ---- processes started by the tests ------------------------------------------------------------
class RedisServer:
    """redis-server on 127.0.0.1:<free port>, AOF on (restarts keep the data), no RDB."""

    def __init__(self, directory: Path) -> None:
        self.dir, self.port = directory, free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
             "--save", "", "--appendonly", "yes", "--appendfsync", "everysec",
             "--logfile", str(self.dir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)

        def up() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"redis-server exited: {(self.dir / 'redis.log').read_text()[-2000:]}")
            with contextlib.suppress(redis.exceptions.RedisError):
                return bool(client.ping())
            return False

        wait_for(up, 15, "redis-server")
        client.close()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


class CeleryWorker:
    """``celery -A app.service.celery_app worker`` in its own session (a "host" to kill)."""

    def __init__(self, name: str, url: str, directory: Path, concurrency: int = 3) -> None:
        self.name, self.url, self.concurrency = name, url, concurrency
        self.log_path = directory / f"{name}.log"
        self.proc: subprocess.Popen | None = None
        self._offset = 0

    def start(self) -> None:
        env = {**os.environ, "PLASTICITY_REDIS_URL": self.url, "PYTHONPATH": str(ROOT),
               "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, "-m", "celery", "-A", "app.service.celery_app", "worker",
               "-Q", "plasticity", "-P", "prefork", "-c", str(self.concurrency), "-Ofair",
               "--without-gossip", "--without-mingle", "--without-heartbeat",
               "-n", f"{self.name}@%h", "--loglevel", "INFO"]
        self._offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def log(self) -> str:
        with open(self.log_path, "rb") as f:
            f.seek(self._offset)
            return f.read().decode(errors="replace")

    def ready(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise AssertionError(f"worker {self.name} exited: {self.log()[-3000:]}")
        return " ready." in self.log()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole process group: the host dies, children and all."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 20.0) -> None:
        """Warm shutdown (SIGTERM to the main process, as ``kill PID`` or systemd's
        KillMode=mixed do), then SIGKILL what is left."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(5)


class Cluster:
    def __init__(self, directory: Path) -> None:
        self.redis = RedisServer(directory)
        self.redis.start()
        self.workers = {name: CeleryWorker(name, self.redis.url, directory) for name in ("w1", "w2")}
        for worker in self.workers.values():
            worker.start()
        self.ensure()

    def ensure(self) -> None:
        """Both workers up (restarting any a test killed)."""
        for worker in self.workers.values():
            if not worker.alive():
                worker.start()
        for worker in self.workers.values():
            wait_for(worker.ready, 90, f"worker {worker.name} ready", every=0.2)

    def worker_of(self, info: dict[str, Any]) -> CeleryWorker:
        host = info["worker"]["host"]
        return self.workers[host.split("@")[0]]

    def close(self) -> None:
        for worker in self.workers.values():
            with contextlib.suppress(Exception):
                worker.kill()
        self.redis.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    made = Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def make_backend(cluster: Cluster, tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """CeleryBackend factory: each test gets its own key namespace on the shared cluster; every
    run it made is deleted afterwards (which fences its task out: the slot frees at once)."""
    from app.service.base import BackendSettings
    from app.service.celery_backend import CeleryBackend

    cluster.ensure()
    made: list[Any] = []
    prefix = f"t{secrets.token_hex(3)}:"

    def make(*, prefix: str = prefix, heartbeat_ttl: float = TTL, max_recoveries: int = 3,
             retry_seconds: float = 3.0, stream_len: int | None = None, **settings: Any) -> Any:
        values = {"data_dir": tmp_path / "data", "max_runs": 8, "eval_every": 500,
                  "checkpoint_every": 1000, "frame_rate": 20.0, **settings}
        backend = CeleryBackend(BackendSettings(**values), redis_url=cluster.redis.url,
                                prefix=prefix, heartbeat_ttl=heartbeat_ttl,
                                max_recoveries=max_recoveries, lost_after=15.0,
                                retry_seconds=retry_seconds, stream_len=stream_len)
        made.append(backend)
        return backend

    yield make
    if made:
        with contextlib.suppress(Exception):
            cleaner = made[0]
            for run_id in cleaner.store.run_ids():
                cleaner.delete(run_id)
    for backend in made:
        backend.shutdown()


def claimed(backend: Any, run_id: str, step_above: int = 0) -> Callable[[], Any]:
    def check() -> Any:
        info = backend.get(run_id)
        ok = info["worker"]["state"] == "claimed" and info["step"] > step_above
        return info if ok else None

    return check


# ---- the REST API suite on this backend -------------------------------------------------------
@pytest.fixture
def celery_client(make_backend: Callable[..., Any]) -> Any:
    from app.server import create_server

    backend = make_backend(max_runs=2, eval_every=500, checkpoint_every=2000, frame_rate=20.0)
    return create_server(backend, auth=False).test_client()  # sign-in: tests/test_security.py


def _api_suite() -> Any:
    import test_api  # tests/ is on sys.path under pytest

    return test_api


def test_api_every_endpoint_on_celery(celery_client: Any) -> None:
    """test_api.test_every_endpoint, unchanged, against the Celery backend."""
    _api_suite().test_every_endpoint(celery_client)


def test_api_bad_requests_on_celery(celery_client: Any) -> None:
    suite = _api_suite()
    marks = [m for m in suite.test_bad_requests_name_the_field.pytestmark if m.name == "parametrize"]
    cases = marks[0].args[1]
    assert len(cases) >= 10
    for case in cases:
        suite.test_bad_requests_name_the_field(celery_client, *case)


def test_api_bad_controls_and_run_limit_on_celery(celery_client: Any) -> None:
    _api_suite().test_bad_controls_and_queries_name_the_field(celery_client)


# ---- shared by several servers; the bounded stream ---------------------------------------------
def test_idle_runs_are_parked_free_their_slots_and_resume(make_backend: Callable[..., Any]
                                                          ) -> None:
    from app.service.base import LimitReached

    backend = make_backend(max_runs=2, idle_release=1.0, checkpoint_every=10**6)
    hog = [backend.create(SMALL) for _ in range(2)]
    for rid in hog:
        wait_for(claimed(backend, rid), 30, "the run to start")
    for rid in hog:
        backend.control(rid, "pause")
    with pytest.raises(LimitReached, match=r"2 runs are active.*after 1 s"):
        backend.create(SMALL)

    def statuses() -> dict[str, str]:  # list_runs is no poll
        return {i["id"]: i["status"] for i in backend.list_runs()}

    wait_for(lambda: all(statuses()[r] == "parked" for r in hog), 30, "both paused runs parked")
    parked = next(i for i in backend.list_runs() if i["id"] == hog[0])
    assert not parked["alive"] and parked["checkpoints"]
    backend.create(SMALL)  # a slot is free for another client
    resumed = backend.control(hog[0], "resume")
    assert resumed["status"] == "running" and resumed["step"] == parked["step"]
    wait_for(claimed(backend, hog[0], parked["step"] + 100), 30, "progress after play")


def test_exports_land_under_the_data_directory_not_the_cwd(
        make_backend: Callable[..., Any], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A relative --data-dir is the one of the server's start: a later working directory
    (a daemon's, gunicorn's) gets no exports."""
    (tmp_path / "start").mkdir()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "start")
    backend = make_backend(data_dir="data")
    monkeypatch.chdir(tmp_path / "elsewhere")
    rid = backend.create(SMALL)
    wait_for(claimed(backend, rid, 300), 30, "the run to start")
    backend.control(rid, "pause")
    path = backend.export_csv(rid)
    assert path == tmp_path / "start" / "data" / "exports" / f"{rid}.csv"
    rows = path.read_text().splitlines()
    assert rows[0].startswith("step,seed,train_loss") and len(rows) > 300
    assert not any((tmp_path / "elsewhere").iterdir())


def test_branch_from_now_starts_a_child_at_that_step(make_backend: Callable[..., Any]) -> None:
    """The shared branch path (app.service.core) over Redis: a checkpoint of this moment, the
    child from it with another rule, the parent going on."""
    backend = make_backend()
    parent = backend.create(SMALL)
    wait_for(claimed(backend, parent, 300), 30, "the parent to start")
    made = backend.control(parent, "branch", changes={"rule": "output-only"})
    assert made["ok"] and made["status"] == "running" and made["step"] >= 300
    assert made["checkpoint"] in backend.get(parent)["checkpoints"]
    child = wait_for(claimed(backend, made["id"], made["step"]), 30, "the child to start")
    assert child["parent"] == parent and child["config"]["rule"] == "output-only"
    assert child["checkpoints"][0] == "origin"
    frames, _ = backend.frames(made["id"])
    assert frames and frames[0]["t0"] == made["step"]


def test_two_servers_see_and_drive_the_same_runs(make_backend: Callable[..., Any]) -> None:
    a = make_backend()
    b = make_backend(prefix=a.store.prefix)
    rid = a.create(SMALL)
    assert rid in [r["id"] for r in b.list_runs()]
    wait_for(claimed(b, rid, 200), 30, "the run to start")
    assert b.control(rid, "pause")["status"] == "paused"
    assert a.get(rid)["status"] == "paused"
    step = a.get(rid)["step"]
    # really paused: one commanded step later it stands exactly one step further
    assert b.control(rid, "step", k=1)["status"] == "running"
    wait_for(lambda: a.get(rid)["status"] == "paused" and a.get(rid)["step"] == step + 1, 20,
             "the single step")
    step += 1
    assert b.get(rid)["step"] == step
    fa, ca = a.frames(rid, -1)
    fb, cb = b.frames(rid, -1)
    assert ca == cb and [f["seq"] for f in fa] == [f["seq"] for f in fb]
    assert [f["seq"] for f in fa] == list(range(fa[0]["seq"], ca + 1))
    ha, hb = a.history(rid, 50), b.history(rid, 50)
    assert ha["t"] == hb["t"] == step and ha["loss"] == hb["loss"] and 0 < len(ha["step"]) <= 50
    a.shutdown()  # one server going away leaves the run to the others
    assert b.control(rid, "resume")["status"] == "running"
    wait_for(lambda: b.get(rid)["step"] > step + 100, 20, "progress after resume")


def test_frame_stream_is_bounded(make_backend: Callable[..., Any]) -> None:
    backend = make_backend(stream_len=40)
    rid = backend.create({**SMALL, "n": 4})
    wait_for(claimed(backend, rid), 30, "the run to start")
    backend.control(rid, "speed", steps_per_frame=20)
    wait_for(lambda: backend.get(rid)["cursor"] > 400, 40, "400 frames")
    length = backend.store.r.xlen(backend.store.key(rid, "frames"))
    assert length <= 40 + 110, length  # MAXLEN ~ 40 trims whole nodes of 100 entries
    frames, cursor = backend.frames(rid, -1)
    seqs = [f["seq"] for f in frames]
    assert seqs == list(range(seqs[0], cursor + 1)) and len(seqs) <= length
    newest = frames[-1]
    assert "traces" in newest and newest["detail"] is True
    later, cursor2 = backend.frames(rid, cursor)
    assert all(f["seq"] > cursor for f in later) and cursor2 >= cursor
    assert backend.frames(rid, 10**12) == ([], 10**12)


# ---- faults -------------------------------------------------------------------------------------
def test_killed_worker_host_run_resumes_from_checkpoint_elsewhere(
        cluster: Cluster, make_backend: Callable[..., Any]) -> None:
    backend = make_backend(checkpoint_every=1000)
    rid = backend.create(SMALL)
    wait_for(claimed(backend, rid), 30, "the run to start")
    backend.control(rid, "speed", steps_per_second=2000)
    info = wait_for(lambda: (i := backend.get(rid))["step"] > 2500 and i["checkpoints"] and i,
                    30, "a checkpoint")
    victim = cluster.worker_of(info)
    _, cursor = backend.frames(rid, -1)
    try:
        victim.kill()
        checkpoint = backend.store.checkpoints(rid)[-1]
        moved = wait_for(lambda: (i := backend.get(rid))["worker"]["state"] == "claimed"
                         and i["worker"]["attempt"] >= 2 and i, 20, "the run on another worker")
        assert cluster.worker_of(moved) is not victim
        assert moved["status"] == "running" and moved["worker"]["recoveries"] == 1
        # resumed at the victim's newest checkpoint: the one read just after the kill, or one
        # it wrote just before and the store indexed a moment later. Waited for as such: the
        # run's step passed the checkpoint + 600 with the victim's own last frame while the
        # new worker was still loading (it failed so in two of three full CI runs here)
        def resumed() -> list[dict[str, Any]]:
            known = {c["step"] for c in backend.store.checkpoints(rid)
                     if c["step"] >= checkpoint["step"]}
            frames, _ = backend.frames(rid, cursor)
            return frames if any(f["t0"] in known for f in frames) else []

        frames = wait_for(resumed, 30, "a frame from the checkpoint")
        seqs = [f["seq"] for f in frames]
        assert seqs and seqs == sorted(set(seqs)) and seqs[0] > cursor  # cursors stay monotone
        csv = backend.export_csv(rid).read_text().splitlines()
        steps = [int(line.split(",")[0]) for line in csv[1:]]
        assert steps == list(range(len(steps)))  # no rows lost or doubled by the resume
    finally:
        victim.start()


def test_killed_pool_process_run_is_requeued(cluster: Cluster,
                                             make_backend: Callable[..., Any]) -> None:
    backend = make_backend(checkpoint_every=1000)
    rid = backend.create(SMALL)
    wait_for(claimed(backend, rid), 30, "the run to start")
    backend.control(rid, "speed", steps_per_second=2000)
    info = wait_for(lambda: (i := backend.get(rid))["checkpoints"] and i, 30, "a checkpoint")
    os.kill(info["pid"], signal.SIGKILL)
    step = backend.get(rid)["step"]
    again = wait_for(lambda: (i := backend.get(rid))["pid"] not in (None, info["pid"])
                     and i["step"] > step + 300 and i, 25, "the run in a new process")
    assert again["status"] == "running" and again["alive"]
    assert again["worker"]["recoveries"] == 1  # counted once, by the reaper or the new claim


def test_workers_that_keep_dying_mark_the_run_failed_with_the_reason(
        cluster: Cluster, make_backend: Callable[..., Any]) -> None:
    from app.service.base import Conflict

    backend = make_backend(max_recoveries=0, checkpoint_every=500)
    rid = backend.create(SMALL)
    info = wait_for(lambda: (i := backend.get(rid))["checkpoints"] and
                    i["worker"]["state"] == "claimed" and i, 30, "a checkpoint")
    victim = cluster.worker_of(info)
    try:
        victim.kill()
        failed = wait_for(lambda: (i := backend.get(rid))["status"].startswith("failed") and i,
                          15, "the run marked failed")
        host = info["worker"]["host"]
        assert failed["status"].startswith("failed: worker lost: no heartbeat from " + host)
        assert not failed["alive"] and rid not in backend.store.active_ids()
        with pytest.raises(Conflict, match=r"allowed: resume, stop, branch\)$"):  # as locally
            backend.control(rid, "pause")
        assert backend.control(rid, "resume")["status"] == "running"  # not stuck: resumable
        wait_for(claimed(backend, rid, failed["step"] - 600), 20, "the resumed run")
    finally:
        victim.start()


def test_warm_worker_shutdown_hands_runs_to_another_worker(
        cluster: Cluster, make_backend: Callable[..., Any]) -> None:
    backend = make_backend(checkpoint_every=10**6)
    rid = backend.create(SMALL)
    info = wait_for(claimed(backend, rid, 500), 30, "the run to start")
    victim = cluster.worker_of(info)
    try:
        victim.stop()
        moved = wait_for(lambda: (i := backend.get(rid))["worker"]["state"] == "claimed"
                         and i["worker"]["attempt"] >= 2 and i, 20, "the hand-off")
        assert cluster.worker_of(moved) is not victim
        assert moved["worker"]["recoveries"] == 0  # handed off, not reaped
        assert moved["step"] >= info["step"]  # checkpointed at the hand-off: no steps lost
    finally:
        victim.start()


def test_redis_restart_servers_and_workers_reconnect(cluster: Cluster,
                                                     make_backend: Callable[..., Any]) -> None:
    from app.service.base import Unavailable

    backend = make_backend(heartbeat_ttl=10.0, retry_seconds=0.5)
    rid = backend.create(SMALL)
    wait_for(claimed(backend, rid), 30, "the run to start")
    backend.control(rid, "speed", steps_per_second=1000)
    _, cursor = backend.frames(rid, -1)
    cluster.redis.stop()  # SIGTERM: Redis writes its AOF and exits
    try:
        with pytest.raises(Unavailable, match="redis"):
            backend.get(rid)  # a 503 naming redis, not a crash
    finally:
        cluster.redis.start()
    step = backend.get(rid)["step"]
    wait_for(lambda: backend.get(rid)["step"] > step + 500, 30, "the run to continue")
    info = backend.get(rid)
    assert info["status"] == "running" and info["worker"]["attempt"] == 1  # continued, no resume
    frames, _ = backend.frames(rid, cursor)
    assert frames and [f["seq"] for f in frames] == sorted({f["seq"] for f in frames})
    fresh = backend.create({**SMALL, "steps": 300})  # workers consume again
    wait_for(lambda: backend.get(fresh)["status"] == "finished", 60, "a new run to finish",
             every=0.2)


# ---- server processes -----------------------------------------------------------------------
def _http(url: str, body: Any = None) -> tuple[int, Any]:
    return http_json(url, body, timeout=5.0)


def _start_server(cluster: Cluster, tmp_path: Path, name: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PLASTICITY_TOKEN": TOKEN}
    log = open(tmp_path / f"server-{name}.log", "wb")  # noqa: SIM115 - the process owns it
    proc = subprocess.Popen(
        [sys.executable, "-m", "app", "serve", "--backend", "celery", "--redis-url",
         cluster.redis.url, "--port", str(port), "--data-dir", str(tmp_path / name),
         "--max-runs", "8", "--no-dashboard"],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, f"http://127.0.0.1:{port}/api"


def test_killing_one_server_leaves_the_other_servers_clients_alone(
        cluster: Cluster, tmp_path: Path) -> None:
    cluster.ensure()
    servers = [_start_server(cluster, tmp_path, name) for name in ("a", "b")]
    (proc_a, api_a), (_, api_b) = servers
    rid = None
    try:
        for proc, api in servers:
            def up(proc: subprocess.Popen = proc, api: str = api) -> bool:
                assert proc.poll() is None, "server exited"
                with contextlib.suppress(OSError):
                    return _http(f"{api}/openapi.json")[0] == 200
                return False

            wait_for(up, 60, "server up", every=0.2)
        status, created = _http(f"{api_a}/runs", {**SMALL, "n": 16})
        assert status == 201
        rid = created["id"]
        wait_for(lambda: _http(f"{api_b}/runs/{rid}")[1]["worker"]["state"] == "claimed", 30,
                 "the run to start")
        assert _http(f"{api_b}/runs/{rid}/control", {"action": "speed",
                                                     "steps_per_second": 1000})[0] == 200
        seen: list[int] = []
        errors: list[str] = []
        killed_at: list[float] = []
        stop = threading.Event()

        def client_of_b() -> None:
            cursor = -1
            while not stop.is_set():
                try:
                    status, page = _http(f"{api_b}/runs/{rid}/frames?after={cursor}")
                    if status != 200:
                        errors.append(f"{status}: {page}")
                    else:
                        seen.extend(f["seq"] for f in page["frames"])
                        cursor = page["cursor"]
                except OSError as exc:
                    errors.append(repr(exc))
                time.sleep(0.1)

        thread = threading.Thread(target=client_of_b, daemon=True)
        thread.start()
        wait_for(lambda: len(seen) > 3 or errors, 30, "the client of b to follow the run")
        before = len(seen)
        os.killpg(proc_a.pid, signal.SIGKILL)
        proc_a.wait(10)
        killed_at.append(time.monotonic())
        # b's client keeps following the run after a's death: 15 more frames, none lost
        wait_for(lambda: len(seen) - before >= 15 or errors, 60, "frames after the kill")
        stop.set()
        thread.join(10)
        assert not errors, errors[:3]
        assert before > 3 and len(seen) - before >= 15, (before, len(seen))
        assert seen == list(range(seen[0], seen[-1] + 1))  # no frame lost across the kill
        status, info = _http(f"{api_b}/runs/{rid}")
        assert status == 200 and info["status"] == "running"
        assert _http(f"{api_b}/runs/{rid}/control", {"action": "stop"})[1]["status"] == "stopped"
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


def test_a_refused_branch_writes_no_checkpoint_and_a_bad_field_lists_unreadable(
        make_backend: Callable[..., Any]) -> None:
    from app.service.base import Conflict, LimitReached

    backend = make_backend(max_runs=1)
    rid = backend.create(SMALL)
    wait_for(claimed(backend, rid, 200), 30, "the run to start")
    before = backend.store.checkpoints(rid)
    with pytest.raises(LimitReached, match="max_runs"):
        backend.control(rid, "branch", changes={"lr": 0.02})
    assert backend.store.checkpoints(rid) == before  # nothing written for a refused branch
    backend.store.r.hset(backend.store.key(rid), "config", b'{"task": ')  # a damaged field
    listed = {r["id"]: r for r in backend.list_runs()}
    assert listed[rid]["status"].startswith("unreadable: its field(s) config do not parse")
    assert backend.get(rid)["status"] == listed[rid]["status"]
    with pytest.raises(Conflict, match="unreadable"):
        backend.control(rid, "pause")
