"""A run's worker starts warm (issue 12 item 6, first frames within 1 s of play): it is forked
from multiprocessing's fork server, which imported torch and the simulator once, instead of a
fresh interpreter importing them for each run (1.3 s on the 2-core machine)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import wait_for

from app.service import BackendSettings, LocalBackend
from app.service.worker import WORKER_NICE

pytestmark = pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc")


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_a_worker_is_forked_from_a_process_that_imported_torch(tmp_path: Path) -> None:
    backend = LocalBackend(BackendSettings(data_dir=tmp_path / "data", checkpoint_seconds=60))
    try:
        rid = backend.create({"task": "add", "rule": "dni-b", "steps": 10**6}, start=True)
        wait_for(lambda: backend.frames(rid)[0], 60, "a frame")
        pid = backend.get(rid)["pid"]
        parent = _ppid(pid)
        assert parent != os.getpid()  # not spawned by the server: forked from the fork server
        maps = Path(f"/proc/{parent}/maps").read_text()
        assert "libtorch" in maps  # ... which holds torch already, for every run's worker
        assert os.getpriority(os.PRIO_PROCESS, pid) >= os.getpriority(os.PRIO_PROCESS, 0) + \
            min(WORKER_NICE, 19 - os.getpriority(os.PRIO_PROCESS, 0))  # below the server
    finally:
        backend.shutdown()
