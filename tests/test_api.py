"""The REST API: every endpoint through the Flask test client, bad bodies answered 4xx naming
the field (hand-picked and hypothesis-generated), the OpenAPI document, and the real
``python -m app serve`` in a subprocess (then killed: its run is resumable afterwards)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from helpers import TOKEN, free_port, wait_for
from helpers import http_json as _http
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.schema import (
    ACTIONS,
    ControlResult,
    Created,
    Deleted,
    Frames,
    History,
    RunInfo,
    RunList,
)
from app.server import create_server
from app.service import LocalBackend

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"task": "add", "rule": "dni-b", "n": 8, "steps": 10**7, "test_steps": 200}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Flask]:
    app = create_server(data_dir=tmp_path / "data", max_runs=2, eval_every=500,
                        checkpoint_every=2000, frame_rate=20.0,
                        auth=False)  # the test client is the admin; sign-in: test_security.py
    yield app
    app.extensions["plasticity_backend"].shutdown()


@pytest.fixture
def client(server: Flask) -> FlaskClient:
    return server.test_client()


def control(client: FlaskClient, run: str, /, **body: Any) -> Any:
    return client.post(f"/api/runs/{run}/control", json=body)


def test_every_endpoint(client: FlaskClient) -> None:
    """Every endpoint; each answer also validates against its documented model (app.schema)."""
    created = client.post("/api/runs", json=SMALL)
    assert created.status_code == 201
    Created.model_validate(created.json)
    rid = created.json["id"]
    assert created.json["run"]["config"]["n"] == 8
    runs = RunList.model_validate(client.get("/api/runs").json).runs
    assert [r.id for r in runs] == [rid]
    info = client.get(f"/api/runs/{rid}").json
    assert info["status"] == "running" and "add" not in info["reference_levels"]
    assert RunInfo.model_validate(info).config == info["config"]

    wait_for(lambda: client.get(f"/api/runs/{rid}/frames?after=-1").json["frames"], what="frames")
    first = client.get(f"/api/runs/{rid}/frames?after=-1").json
    cursor = first["cursor"]
    assert cursor == first["frames"][-1]["seq"]
    page = Frames.model_validate(first)
    assert page.frames[-1].t1 > page.frames[-1].t0 and page.frames[-1].traces is not None

    def newer() -> Any:
        answer = client.get(f"/api/runs/{rid}/frames", query_string={"after": cursor}).json
        return answer if answer["frames"] else None

    later = wait_for(newer, what="frames after the cursor")
    assert [f["seq"] for f in later["frames"]] == list(range(cursor + 1, later["cursor"] + 1))
    Frames.model_validate(later)

    assert control(client, rid, action="pause").json["status"] == "paused"
    step = client.get(f"/api/runs/{rid}").json["step"]
    assert control(client, rid, action="step", k=10).status_code == 200
    wait_for(lambda: client.get(f"/api/runs/{rid}").json["step"] == step + 10, what="10 steps")
    for body in ({"action": "speed", "steps_per_second": 200}, {"action": "speed", "steps_per_frame": 0},
                 {"action": "set", "lr": 0.01, "phases": "all"}, {"action": "view", "units": [0, 7]},
                 {"action": "evaluate", "steps": 50}, {"action": "checkpoint", "name": "mark"},
                 {"action": "resume"}, {"action": "fast_forward", "to": step + 3000}):
        answer = control(client, rid, **body)
        assert answer.status_code == 200 and answer.json["ok"], (body, answer.json)
        ControlResult.model_validate(answer.json)
    wait_for(lambda: client.get(f"/api/runs/{rid}").json["step"] >= step + 3000, what="fast-forward")
    branch = control(client, rid, action="branch", changes={"rule": "output-only"}, checkpoint="mark")
    assert branch.status_code == 200
    child = branch.json["id"]
    assert client.get(f"/api/runs/{child}").json["parent"] == rid

    history = client.get(f"/api/runs/{rid}/history?max_points=40").json
    assert 0 < len(history["step"]) <= 40 and history["loss"]["max"]
    History.model_validate(history)
    csv_text = client.get(f"/api/runs/{rid}/export.csv")
    assert csv_text.status_code == 200 and csv_text.mimetype == "text/csv"
    assert csv_text.data.startswith(b"step,seed,train_loss") and csv_text.data.endswith(b"\n")
    config = client.get(f"/api/runs/{rid}/config.json").json
    assert config["lr"] == 0.01 and config["rule"] == "dni-b"

    assert Deleted.model_validate(client.delete(f"/api/runs/{child}").json).ok
    assert client.get(f"/api/runs/{child}").status_code == 404
    assert control(client, rid, action="stop").json["status"] == "stopped"


@pytest.mark.parametrize(("method", "path", "body", "status", "field"), [
    ("post", "/api/runs", None, 400, "body"),
    ("post", "/api/runs", "[1, 2]", 400, "body"),
    ("post", "/api/runs", "{not json", 400, "body"),
    ("post", "/api/runs", '{"n": NaN}', 400, "body"),
    ("post", "/api/runs", {"n": 0}, 422, "n"),
    ("post", "/api/runs", {"lr": "fast"}, 422, "lr"),
    ("post", "/api/runs", {"rule": "magic"}, 422, "rule"),
    ("post", "/api/runs", {"colour": "red"}, 422, "colour"),
    ("post", "/api/runs", {"seeds": [1, 1]}, 422, "seeds"),
    ("post", "/api/runs", {"phases": "basal:0"}, 422, "phases"),
    ("post", "/api/runs", {"task_args": {"t1": -3}}, 422, "task_args.t1"),
    ("post", "/api/runs", {"rule_args": 5}, 422, "rule_args"),
    ("post", "/api/runs", {"start": "yes"}, 422, "start"),
    ("get", "/api/runs/missing", None, 404, "id"),
    ("get", "/api/runs/missing/frames", None, 404, "id"),
    ("get", "/api/runs/missing/history", None, 404, "id"),
    ("get", "/api/runs/missing/export.csv", None, 404, "id"),
    ("get", "/api/runs/missing/config.json", None, 404, "id"),
    ("delete", "/api/runs/missing", None, 404, "id"),
    ("post", "/api/runs/missing/control", {"action": "pause"}, 404, "id"),
    ("get", "/api/nowhere", None, 404, "path"),
    ("put", "/api/runs", None, 405, "path"),
])
def test_bad_requests_name_the_field(client: FlaskClient, method: str, path: str, body: Any,
                                     status: int, field: str) -> None:
    kwargs: dict[str, Any] = {}
    if isinstance(body, str):
        kwargs = {"data": body, "content_type": "application/json"}
    elif body is not None:
        kwargs = {"json": body}
    elif method in ("post", "put"):
        kwargs = {"content_type": "application/json"}  # without it: 415 (test_security.py)
    answer = getattr(client, method)(path, **kwargs)
    assert answer.status_code == status, answer.json
    assert answer.json["field"] == field and answer.json["error"].startswith(field)


def test_bad_controls_and_queries_name_the_field(client: FlaskClient) -> None:
    rid = client.post("/api/runs", json={**SMALL, "start": False}).json["id"]
    cases = [({}, "action"), ({"action": 3}, "action"), ({"action": "explode"}, "action"),
             ({"action": "step"}, "k"), ({"action": "step", "k": 1.5}, "k"),
             ({"action": "speed", "steps_per_frame": -2}, "steps_per_frame"),
             ({"action": "fast_forward", "to": "soon"}, "to"), ({"action": "set"}, "lr"),
             ({"action": "set", "jacobian": None, "apical": True}, "apical"),
             ({"action": "view", "units": "all"}, "units"), ({"action": "pause", "k": 1}, "k"),
             ({"action": "branch", "changes": []}, "changes"),
             ({"action": "branch", "changes": {"task": "mimic"}}, "changes.task"),
             ({"action": "branch", "checkpoint": "nope"}, "checkpoint")]
    for body, field in cases:
        answer = control(client, rid, **body)
        assert 400 <= answer.status_code < 500, (body, answer.json)
        assert answer.json["field"] == field, (body, answer.json)
    for query, field in (("after=x", "after"), ("after=-5", "after")):
        answer = client.get(f"/api/runs/{rid}/frames?{query}")
        assert answer.status_code == 400 and answer.json["field"] == field
    answer = client.get(f"/api/runs/{rid}/history?max_points=0")
    assert answer.status_code == 400 and answer.json["field"] == "max_points"
    limit = [client.post("/api/runs", json=SMALL) for _ in range(2)]
    assert [a.status_code for a in limit] == [201, 409] and limit[1].json["field"] == "max_runs"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6)
CONFIG_KEYS = ["task", "task_args", "rule", "rule_args", "n", "alpha", "lr", "phases", "seeds",
               "steps", "test_steps", "device", "dtype", "start", "view", "bogus"]


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=st.dictionaries(st.sampled_from(CONFIG_KEYS), json_values, min_size=1, max_size=4)
       | json_values)
def test_fuzz_create_never_5xx(tmp_path_factory: pytest.TempPathFactory, body: Any) -> None:
    client = _fuzz_client(tmp_path_factory)
    answer = client.post("/api/runs", data=json.dumps(body), content_type="application/json")
    assert answer.status_code in (400, 409, 422), (body, answer.status_code, answer.json)
    assert answer.json["error"]


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(action=st.sampled_from(["pause", "step", "speed", "fast_forward", "set", "view",
                               "checkpoint", "branch", "evaluate", "warp"]) | json_values,
       params=st.dictionaries(st.sampled_from(["k", "to", "lr", "apical", "jacobian", "phases",
                                               "units", "seed_index", "steps_per_frame",
                                               "steps_per_second", "name", "changes",
                                               "checkpoint", "steps", "run_id", "x"]),
                              json_values, max_size=3))
def test_fuzz_control_never_5xx(tmp_path_factory: pytest.TempPathFactory, action: Any,
                                params: dict[str, Any]) -> None:
    client = _fuzz_client(tmp_path_factory)
    rid = _FUZZ["run"]
    answer = control(client, rid, action=action, **params)
    assert answer.status_code < 500, (action, params, answer.status_code, answer.json)
    if answer.status_code >= 400:
        assert answer.json["field"] is not None and answer.json["error"]


_FUZZ: dict[str, Any] = {}


def _fuzz_client(factory: pytest.TempPathFactory) -> FlaskClient:
    """One server for the fuzz tests: max_runs=1 and one paused, steps-capped run holding the
    slot, so a valid generated config answers 409 instead of starting work."""
    if "server" not in _FUZZ:
        server = create_server(data_dir=factory.mktemp("fuzz"), max_runs=1, eval_every=0,
                               auth=False)
        client = server.test_client()
        rid = client.post("/api/runs", json={**SMALL, "steps": 2000, "start": False}).json["id"]
        _FUZZ.update(server=server, client=client, run=rid)
    return _FUZZ["client"]


@pytest.fixture(scope="module", autouse=True)
def _fuzz_teardown() -> Iterator[None]:
    yield
    if "server" in _FUZZ:
        _FUZZ["server"].extensions["plasticity_backend"].shutdown()
        _FUZZ.clear()


def test_openapi_document_lists_every_path(client: FlaskClient) -> None:
    answer = client.get("/api/openapi.json")
    doc = json.loads(answer.data)
    assert doc["openapi"].startswith("3.")
    assert set(doc["paths"]) == {
        "/api/runs", "/api/runs/{run_id}", "/api/runs/{run_id}/frames",
        "/api/runs/{run_id}/history", "/api/runs/{run_id}/control",
        "/api/runs/{run_id}/export.csv", "/api/runs/{run_id}/config.json", "/api/openapi.json",
        "/api/runs/{run_id}/share", "/api/runs/{run_id}/copy", "/api/shares", "/api/shares/{token}",
        "/api/estimate", "/api/runs/{run_id}/export/scalars.csv",
        "/api/runs/{run_id}/export/events.csv", "/api/runs/{run_id}/export/run.json",
        "/api/export.zip", "/api/experiments", "/api/experiments/{exp_id}",
        "/api/experiments/{exp_id}/results.csv", "/api/experiments/{exp_id}/series.csv",
        "/api/experiments/{exp_id}/cancel", "/api/experiments/{exp_id}/runs"}
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    schemas = doc["components"]["schemas"]
    assert {"RunConfig", "RunInfo", "Frame", "Frames", "Control", "Error"} <= set(schemas)
    assert "dni-b" in schemas["RunConfig"]["properties"]["rule"]["enum"]
    control_schema = schemas["Control"]  # a tagged union on action, one model per action
    assert control_schema["discriminator"]["propertyName"] == "action"
    assert set(control_schema["discriminator"]["mapping"]) == set(ACTIONS)
    assert schemas["Step"]["properties"]["k"] == {
        "type": "integer", "minimum": 1, "maximum": 10**7, "title": "K",
        "description": "steps to advance, then pause"}
    assert schemas["RuleArgs.dni-b"]["properties"]["lr_apical"]["maximum"] == 10

    def refs(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "$ref":
                    yield value
                yield from refs(value)
        elif isinstance(node, list):
            for value in node:
                yield from refs(value)

    for ref in refs(doc):
        assert ref.split("/")[-1] in schemas, ref


# ---- the real server -----------------------------------------------------------------------
def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return "zombie" in f.read()
    except FileNotFoundError:
        return True


def test_real_server_subprocess_then_killed_run_resumes(tmp_path: Path) -> None:
    port, data = free_port(), tmp_path / "data"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PLASTICITY_TOKEN": TOKEN}
    proc = subprocess.Popen([sys.executable, "-m", "app", "serve", "--port", str(port),
                             "--data-dir", str(data)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/api"
    try:
        def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"server exited: {proc.stdout.read().decode()[-3000:]}")
            with contextlib.suppress(OSError):
                return _http(f"{base}/openapi.json")[0] == 200
            return False

        wait_for(up, timeout=60, what="server up")
        status, created = _http(f"{base}/runs", SMALL)
        assert status == 201
        rid = created["id"]
        assert _http(f"{base}/runs", {"n": -1}) == (422, {"error": "n: got -1; allowed: an integer "
                                                                    "in [1, 4096]", "field": "n"})
        cursor, seqs = -1, []
        deadline = time.monotonic() + 30
        while len(seqs) < 5 and time.monotonic() < deadline:
            _, page = _http(f"{base}/runs/{rid}/frames?after={cursor}")
            seqs += [f["seq"] for f in page["frames"]]
            cursor = page["cursor"]
            time.sleep(0.1)
        assert len(seqs) >= 5 and seqs == sorted(set(seqs))
        wait_for(lambda: _http(f"{base}/runs/{rid}")[1]["checkpoints"], what="a checkpoint")
        worker = _http(f"{base}/runs/{rid}")[1]["pid"]
    finally:
        proc.send_signal(signal.SIGKILL)  # a crash: no chance to checkpoint or say goodbye
        proc.wait(10)
    wait_for(lambda: _gone(worker), timeout=15, what="the orphaned worker to exit")

    backend = LocalBackend(data_dir=data)
    try:
        run = backend.get(rid)
        assert run["status"] == "interrupted"
        resumed = backend.control(rid, "resume")
        assert resumed["status"] == "running"
        wait_for(lambda: backend.get(rid)["step"] > resumed["step"] + 100, what="resumed progress")
    finally:
        backend.shutdown()


def test_openapi_document_validates() -> None:
    from openapi_spec_validator import validate

    from app.api import openapi_document

    validate(openapi_document())


def test_every_api_route_of_the_server_is_documented(server: Flask) -> None:
    """The document is written from models, not from the routes: every rule of the Flask
    url_map under /api (each method) must be in it, and nothing else."""
    from app.api import openapi_document

    paths = openapi_document()["paths"]
    routes = set()
    for rule in server.url_map.iter_rules():
        if rule.rule.startswith("/api/"):
            path = rule.rule.replace("<", "{").replace(">", "}")
            routes |= {(path, m.lower()) for m in rule.methods - {"HEAD", "OPTIONS"}}
    documented = {(p, m) for p, item in paths.items() for m in item if m != "parameters"}
    assert routes and routes == documented
