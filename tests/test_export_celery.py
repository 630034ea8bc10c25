"""Exports on the Celery backend: the settings changes a worker records reach every server's
history (real Redis, real Celery workers; the cluster of tests/test_celery_backend.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from helpers import wait_for
from test_celery_backend import SMALL, claimed, cluster, make_backend, pytestmark

__all__ = ["cluster", "make_backend", "pytestmark"]  # fixtures and skips


def test_a_set_on_one_server_is_in_the_other_servers_export(
        make_backend: Callable[..., Any]) -> None:
    from app.exports import events_csv, gather, scalars_csv

    a = make_backend()
    b = make_backend(prefix=a.store.prefix)
    # paced, so that it is still running when paused (2,000 steps at max speed could end
    # first: "did not answer pause within 30 s" in one full CI run)
    rid = a.create({**SMALL, "steps": 20_000})
    wait_for(claimed(a, rid), 30, "the run to start")
    a.control(rid, "speed", steps_per_second=4000)
    wait_for(claimed(a, rid, 100), 30, "the run to pass step 100")
    assert a.control(rid, "pause")["status"] == "paused"
    step = a.get(rid)["step"]
    a.control(rid, "set", lr=0.002, apical=0.01)
    assert a.control(rid, "resume")["status"] == "running"
    wait_for(lambda: b.get(rid)["status"] == "finished", 60, "the run to finish")
    for backend in (a, b):
        rs = gather(backend, rid)
        assert rs.events == [{"step": step, "action": "set", "lr": 0.002, "apical": 0.01,
                             "label": "lr 0.002 · lr_apical 0.01"}]
        assert events_csv(rs).decode().splitlines() == [
            "step,action,setting,value", f"{step},set,lr,0.002", f"{step},set,apical,0.01"]
    table = b"".join(scalars_csv(rs)).decode().splitlines()
    header = table[0].split(",")
    assert {"phase", "test_loss", "weight_norm_basal", "weight_norm_apical"} <= set(header)
    assert len(table) == 20_001
    norms = [line.split(",")[header.index("weight_norm_basal")] for line in table[1:]]
    assert sum(bool(v) for v in norms) >= 3  # one per frame


