"""Experiments on the Celery backend (issue 14): each batch a Celery task over all workers; a
worker host killed with SIGKILL mid-batch loses its lease, the server's monitor requeues the
batch, the other worker continues it from its checkpoint, and the table holds every member x
seed exactly once. A real redis-server and two real Celery workers, started here.
"""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import wait_for
from tests.test_celery_backend import REDIS_SERVER, CeleryWorker, RedisServer, redis
from tests.test_experiments import SMALL, _every_member_seed_once, _rows

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed "
                       "(apt-get install redis-server); the Celery backend needs a real one"),
    pytest.mark.skipif(redis is None, reason="celery[redis] is not installed (pip install -e .[dev])"),
]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[RedisServer, dict[str, CeleryWorker]]]:
    server = RedisServer(tmp_path)
    server.start()
    workers = {name: CeleryWorker(name, server.url, tmp_path, concurrency=1)
               for name in ("w1", "w2")}
    try:
        for worker in workers.values():
            worker.start()
        for worker in workers.values():
            wait_for(worker.ready, 90, f"worker {worker.name} ready", every=0.2)
        yield server, workers
    finally:
        for worker in workers.values():
            with contextlib.suppress(Exception):
                worker.kill()
        server.stop()


def test_killed_worker_batch_resumes_elsewhere_exactly_once(
        cluster: tuple[RedisServer, dict[str, CeleryWorker]], tmp_path: Path) -> None:
    from app.service.base import BackendSettings
    from app.service.celery_backend import CeleryBackend
    from app.service.celery_sweeps import CelerySweeps

    server, workers = cluster
    backend = CeleryBackend(BackendSettings(data_dir=tmp_path / "data", checkpoint_seconds=0.3),
                            redis_url=server.url, prefix=f"t{secrets.token_hex(3)}:",
                            heartbeat_ttl=2.0, reaper=False)
    service = CelerySweeps(backend, workers=2)
    try:
        grid = {**SMALL, "base": {**SMALL["base"], "steps": 40_000}, "record": {"every": 10_000}}
        exp_id = service.submit(grid, owner="admin")
        folder = tmp_path / "data" / "experiments" / exp_id
        assert service.get(exp_id)["batches"] == 2  # one per worker

        def checkpointed() -> tuple[int, str] | None:
            for claim in folder.glob("batches/*.claim"):
                index = int(claim.stem)
                with contextlib.suppress(OSError, ValueError):
                    host = json.loads(claim.read_text())["host"]
                    if (folder / "batches" / f"{index:04d}.ckpt").exists():
                        return index, host
            return None

        index, host = wait_for(checkpointed, 120, "a batch checkpoint", every=0.05)
        victim = workers[host.split("@")[0]]
        victim.kill()  # SIGKILL to the host's process group: no one acks or requeues
        assert not (folder / "batches" / f"{index:04d}.json").exists()

        def finished() -> dict[str, Any] | None:
            info = service.get(exp_id)
            assert info["status"] in ("running", "finished"), info
            return info if info["status"] == "finished" else None

        info = wait_for(finished, 240, "the experiment to finish", every=0.2)
        assert info["progress"] == 1.0
        rows = _rows(service.table(exp_id, "results.csv").read_text())
        _every_member_seed_once(rows, 4, [0, 1, 2])
        series = _rows(service.table(exp_id, "series.csv").read_text())
        assert len(series) == 4 * 3 * 4 * 2  # members x seeds x records x (train, test)
        redone = json.loads((folder / "batches" / f"{index:04d}.json").read_text())
        assert redone["host"] != host  # finished elsewhere ...
        assert redone["resumed_from"] > 0  # ... from the killed worker's checkpoint
        assert not list(folder.glob("batches/*.ckpt"))
    finally:
        service.shutdown()
        backend.shutdown()
