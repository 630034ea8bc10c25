"""Fuzzing the RUNNING server (``python -m app serve``, waitress) from its own OpenAPI document:
request bodies and query parameters are generated from the document's schemas (in range,
at the edges, and out of them with arbitrary JSON mixed in), with a fixed budget of examples;
no answer may be a 5xx, and every 4xx names its error."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_admission import Server

EXAMPLES = 60  # per endpoint: the fixed budget (a few seconds each on a 2-core machine)
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=list(HealthCheck))

junk = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.floats(allow_nan=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                  max_size=3),
    max_leaves=6)


def from_schema(schema: dict[str, Any], doc: dict[str, Any], depth: int = 0) -> st.SearchStrategy:
    """Values for a JSON schema of the document (the subset it uses), mostly valid, at times
    at the limits or replaced by arbitrary JSON."""
    if "$ref" in schema:
        return from_schema(doc["components"]["schemas"][schema["$ref"].split("/")[-1]], doc, depth)
    if "allOf" in schema:
        merged: dict[str, Any] = {}
        for part in schema["allOf"]:
            part = doc["components"]["schemas"][part["$ref"].split("/")[-1]] if "$ref" in part else part
            merged = {**merged, **part, "properties": {**merged.get("properties", {}),
                                                       **part.get("properties", {})}}
        rest = {k: v for k, v in schema.items() if k != "allOf"}
        return from_schema({**merged, **rest, "properties": {**merged.get("properties", {}),
                                                            **rest.get("properties", {})}},
                           doc, depth)
    for key in ("oneOf", "anyOf"):  # a tagged union; an optional value (anyOf with null)
        if key in schema:
            return st.one_of([from_schema(s, doc, depth) for s in schema[key]])
    if "const" in schema:
        return st.one_of(st.just(schema["const"]), st.just(schema["const"]), junk)
    if schema.get("type") == "null":
        return st.none()
    valid = st.sampled_from(schema["enum"]) if "enum" in schema else _typed(schema, doc, depth)
    if schema.get("nullable"):
        valid = valid | st.none()
    return st.one_of(valid, valid, valid, junk)


def _typed(schema: dict[str, Any], doc: dict[str, Any], depth: int) -> st.SearchStrategy:
    kind = schema.get("type")
    low, high = schema.get("minimum"), schema.get("maximum")
    if kind == "integer":
        edges = [e for v in (low, high) if v is not None for e in (v, v - 1, v + 1)]
        values = st.integers(min_value=low, max_value=high)
        return values | st.sampled_from([int(v) for v in edges]) if edges else values
    if kind == "number":
        values = st.floats(min_value=low, max_value=high, allow_nan=False)
        edges = [v for v in (low, high) if v is not None]
        return values | st.sampled_from(edges) if edges else values
    if kind == "string":
        if "pattern" in schema:
            return st.from_regex(schema["pattern"], fullmatch=True) | st.text(max_size=20)
        return st.text(max_size=20) | st.sampled_from(["0-4", "0-100000000000", "all",
                                                       "a=basal:5", "bptt:5", "rtrl"])
    if kind == "boolean":
        return st.booleans()
    if kind == "array":
        items = from_schema(schema.get("items", {}), doc, depth + 1) if depth < 3 else junk
        return st.lists(items, min_size=0, max_size=min(schema.get("maxItems", 4), 4) + 1)
    if kind == "object" or "properties" in schema:
        props = schema.get("properties", {})
        if not props or depth >= 3:
            return st.dictionaries(st.text(max_size=8), junk, max_size=3)
        optional = {k: from_schema(v, doc, depth + 1) for k, v in props.items()}
        return st.fixed_dictionaries({}, optional=optional)
    return junk


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A server with one run holding its only slot (paused, steps capped), so a valid
    generated config is refused with 409 rather than starting work; small budgets besides."""
    srv = Server(tmp_path_factory.mktemp("fuzz"), "--max-runs", "1", "--max-run-memory", "200MB",
                 "--max-run-work", "1e12")
    status, created = srv.request("POST", "/api/runs", {"n": 8, "steps": 3000, "test_steps": 50,
                                                        "start": False})
    assert status == 201, created
    status, doc = srv.request("GET", "/api/openapi.json")
    assert status == 200
    yield {"server": srv, "run": created["id"], "doc": doc}
    srv.stop()


def _check(status: int, body: Any, sent: Any) -> None:
    assert status < 500, (status, body, json.dumps(sent)[:300])
    if status >= 400:
        assert isinstance(body, dict) and body.get("error"), (status, body)


def _body_schema(doc: dict[str, Any], path: str) -> dict[str, Any]:
    return doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]


@pytest.fixture(scope="module")
def strategies(live: dict[str, Any]) -> dict[str, st.SearchStrategy]:
    doc = live["doc"]
    return {path: from_schema(_body_schema(doc, path), doc)
            for path in ("/api/runs", "/api/estimate", "/api/runs/{run_id}/control")}


def test_fuzz_create_and_estimate(live: dict[str, Any],
                                  strategies: dict[str, st.SearchStrategy]) -> None:
    srv = live["server"]

    @FUZZ
    @given(path=st.sampled_from(["/api/runs", "/api/estimate"]), data=st.data())
    def run(path: str, data: st.DataObject) -> None:
        body = data.draw(strategies[path])
        status, answer = srv.request("POST", path, body)
        _check(status, answer, body)
        assert status != 201, answer  # the slot is held: nothing starts

    run()


def test_fuzz_control(live: dict[str, Any], strategies: dict[str, st.SearchStrategy]) -> None:
    srv, rid = live["server"], live["run"]

    @FUZZ
    @given(body=strategies["/api/runs/{run_id}/control"])
    def run(body: Any) -> None:
        if isinstance(body, dict) and body.get("action") == "stop":
            body = {**body, "action": "pause"}  # keep the slot held for the other tests
        status, answer = srv.request("POST", f"/api/runs/{rid}/control", body)
        _check(status, answer, body)

    run()


def test_fuzz_query_parameters(live: dict[str, Any]) -> None:
    srv, rid, doc = live["server"], live["run"], live["doc"]
    ops = [(path.replace("{run_id}", rid), op["parameters"])
           for path, item in doc["paths"].items() if "get" in item
           for op in [item["get"]] if op.get("parameters")]
    assert ops  # frames and history take query parameters

    @FUZZ
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        path, params = data.draw(st.sampled_from(ops))
        query = []
        for param in params:
            if data.draw(st.booleans()):
                value = data.draw(from_schema(param["schema"], doc) | st.text(max_size=8))
                query.append(f"{param['name']}={_q(value)}")
        status, answer = srv.request("GET", path + ("?" + "&".join(query) if query else ""))
        _check(status, answer, query)

    run()


def _q(value: Any) -> str:
    from urllib.parse import quote

    return quote(value if isinstance(value, str) else json.dumps(value), safe="")


def test_document_served_is_the_one_fuzzed(live: dict[str, Any]) -> None:
    from app.api import openapi_document

    assert live["doc"] == json.loads(json.dumps(openapi_document()))
    assert "internal error" not in live["server"].log.read_text()  # no 5xx was logged either
