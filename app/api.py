"""The REST API: a Flask blueprint under /api over the Backend, plus its OpenAPI document.

Every handler answers JSON. Bad input answers 400 (malformed body or query), 404 (unknown run
or path), 405, 409 (state conflict, run limit), 422 (a setting out of range), 503 (storage
read-only until repaired) or 507 (the disk cannot hold the run), always as
``{"error": "field: message", "field": "field"}``. Every exception is caught at the blueprint
edge and logged; only a bug in the service itself would answer 500.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
from collections.abc import Iterator
from typing import Any

import orjson
from flask import Blueprint, Flask, Response, current_app, g, request
from werkzeug.exceptions import HTTPException, InternalServerError

from app.service.admission import estimate_dict
from app.service.base import ACTIONS, RUN_KEYS, Backend, ServiceError
from simulator.config import RunConfig
from simulator.settings import ConfigError, quote

log = logging.getLogger("app.api")

api = Blueprint("plasticity_api", __name__, url_prefix="/api")

BACKEND_KEY = "plasticity_backend"
#: Body keys of POST /api/runs that are not config fields.
CREATE_EXTRAS = ("start", "view")
MAX_BODY = 1 << 20


# ---- plumbing --------------------------------------------------------------------------------
def backend() -> Backend:
    return current_app.extensions[BACKEND_KEY]


class BadRequest(ServiceError):
    """Malformed request (body or query)."""

    http_status = 400


def _json_response(payload: Any, status: int = 200) -> Response:
    """JSON with null for NaN/inf (a diverged run). orjson: a frames page (~50 kB) encodes in
    about a quarter of json.dumps' time, which sets the server's capacity under polling."""
    try:
        text: bytes | str = orjson.dumps(payload, option=orjson.OPT_NON_STR_KEYS
                                         | orjson.OPT_SERIALIZE_NUMPY)
    except TypeError:  # something orjson does not know: the standard encoder
        text = json.dumps(_finite(payload), allow_nan=False, separators=(",", ":"), default=str)
    return Response(text, status=status, mimetype="application/json")


def _finite(x: Any) -> Any:
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    return x


def _error(status: int, message: str, field: str | None) -> Response:
    return _json_response({"error": message, "field": field}, status)


class TooLarge(ServiceError):
    """A request body over MAX_BODY (declared or, when chunked, as read)."""

    http_status = 413


def _raw_body() -> bytes:
    """The request body, at most MAX_BODY bytes ever read whatever it claims or streams
    (chunked); 413 over that. Read once per request (kept on ``flask.g``)."""
    if "raw_body" not in g:
        if request.content_length and request.content_length > MAX_BODY:
            raise TooLarge("body: larger than 1 MiB", field="body")
        raw = request.stream.read(MAX_BODY + 1)
        if len(raw) > MAX_BODY:
            raise TooLarge("body: larger than 1 MiB", field="body")
        g.raw_body = raw
    return g.raw_body


def _body(optional: bool = False) -> dict[str, Any]:
    """The request's JSON object body (400 naming "body" otherwise; 413 over 1 MiB);
    ``optional``: an empty body is {}."""
    raw = _raw_body()
    if not raw.strip():
        if optional:
            return {}
        raise BadRequest("body: expected a JSON object, got an empty body", field="body")
    try:
        data = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"body: invalid JSON ({str(exc)[:120]})", field="body") from None
    if not isinstance(data, dict):
        raise BadRequest(f"body: expected a JSON object, got {type(data).__name__}", field="body")
    return data


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _query_int(name: str, default: int | None, low: int, high: int) -> int | None:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name}: got {quote(raw)}; allowed: an integer in [{low}, {high}]",
                         field=name) from None
    if not low <= value <= high:
        raise BadRequest(f"{name}: got {value}; allowed: an integer in [{low}, {high}]", field=name)
    return value


@api.errorhandler(Exception)
def _handle(exc: Exception) -> Response:
    """The blueprint's edge: every exception becomes a JSON error naming the field."""
    if isinstance(exc, ServiceError):
        return _error(exc.http_status, exc.message, exc.field)
    if isinstance(exc, ConfigError):
        return _error(422, str(exc), exc.field)
    if isinstance(exc, HTTPException):
        return _error(exc.code or 400, f"request: {exc.description}", None)
    return _error(500, log_internal_error(exc), None)


def log_internal_error(exc: BaseException) -> str:
    """Log ``exc`` with its traceback under a fresh id; the client's message names only the id
    (no exception names or details leave the server)."""
    error_id = secrets.token_hex(4)
    log.error("internal error, id %s, in %s %s", error_id, request.method, request.path,
              exc_info=(type(exc), exc, exc.__traceback__))
    return f"internal error, id {error_id}"


def register_api_errors(server: Flask) -> None:
    """JSON 404/405 for unknown paths under /api (routing errors never reach the blueprint),
    and "internal error, id N" for any unexpected exception elsewhere (the dashboard)."""

    def handler(exc: HTTPException) -> Any:
        if request.path.startswith("/api/") or request.path == "/api":
            return _error(exc.code or 404, f"path: {exc.description}", "path")
        return exc

    def internal(exc: InternalServerError) -> Any:
        original = exc.original_exception or exc
        message = log_internal_error(original)
        if request.path.startswith("/api/"):
            return _error(500, message, None)
        return Response(message + "\n", status=500, mimetype="text/plain")

    def too_large(exc: HTTPException) -> Any:
        return _error(413, "body: larger than the server accepts", "body")

    server.register_error_handler(404, handler)
    server.register_error_handler(405, handler)
    server.register_error_handler(413, too_large)
    server.register_error_handler(InternalServerError, internal)


# ---- runs ------------------------------------------------------------------------------------
@api.post("/runs")
def create_run() -> Response:
    body = _body()
    extras = {k: body.pop(k) for k in CREATE_EXTRAS if k in body}
    start = extras.get("start", True)
    if not isinstance(start, bool):
        raise ConfigError("start", f"got {quote(start)}; allowed: true or false")
    run_id = backend().create(body, start=start, view=extras.get("view"))
    return _json_response({"id": run_id, "run": backend().get(run_id)}, 201)


@api.post("/estimate")
def estimate() -> Response:
    """The cost of a config (the body of POST /runs) against this server's budgets; no run
    is made."""
    body = _body()
    for key in CREATE_EXTRAS:
        body.pop(key, None)
    return _json_response(estimate_dict(RunConfig.from_dict(body), backend().settings))


@api.get("/runs")
def list_runs() -> Response:
    return _json_response({"runs": backend().list_runs()})


@api.get("/runs/<run_id>")
def get_run(run_id: str) -> Response:
    return _json_response(backend().get(run_id))


@api.delete("/runs/<run_id>")
def delete_run(run_id: str) -> Response:
    backend().delete(run_id)
    return _json_response({"ok": True, "id": run_id})


@api.get("/runs/<run_id>/frames")
def get_frames(run_id: str) -> Response:
    after = _query_int("after", -1, -1, 2**62)
    frames, cursor = backend().frames(run_id, after)
    return _json_response({"frames": frames, "cursor": cursor})


@api.get("/runs/<run_id>/history")
def get_history(run_id: str) -> Response:
    max_points = _query_int("max_points", 500, 1, 100_000)
    start = _query_int("start", None, 0, 10**12)
    stop = _query_int("stop", None, 0, 10**12)
    kwargs = {k: v for k, v in (("start", start), ("stop", stop)) if v is not None}
    return _json_response(backend().history(run_id, max_points, **kwargs))


@api.post("/runs/<run_id>/control")
def control(run_id: str) -> Response:
    body = _body()
    backend().get(run_id)  # 404 before 422 for an unknown run
    if "action" not in body:
        raise ConfigError("action", f"required; allowed: {', '.join(ACTIONS)}")
    action = body.pop("action")
    if not isinstance(action, str) or action not in ACTIONS:
        raise ConfigError("action", f"got {quote(action)}; allowed: {', '.join(ACTIONS)}")
    for key in body:
        if key not in ACTIONS[action]:
            raise ConfigError(str(key), f"unknown parameter for {action}; allowed: "
                                        f"{', '.join(ACTIONS[action]) or 'none'}")
    return _json_response(backend().control(run_id, action, **body))


@api.get("/runs/<run_id>/export.csv")
def export_csv(run_id: str) -> Response:
    path = backend().export_csv(run_id)
    size = path.stat().st_size

    def chunks() -> Iterator[bytes]:
        """The file as it is now, up to its last complete line (the worker may be appending)."""
        left, tail = size, b""
        with open(path, "rb") as f:
            while left > 0:
                block = f.read(min(1 << 20, left))
                if not block:
                    break
                left -= len(block)
                block = tail + block
                cut = block.rfind(b"\n") + 1
                tail = block[cut:]
                if cut:
                    yield block[:cut]

    headers = {"Content-Disposition": f'attachment; filename="run-{run_id}.csv"'}
    return Response(chunks(), mimetype="text/csv", headers=headers)


@api.get("/runs/<run_id>/config.json")
def export_config(run_id: str) -> Response:
    response = _json_response(backend().export_config(run_id))
    response.headers["Content-Disposition"] = f'attachment; filename="run-{run_id}.json"'
    return response


@api.get("/openapi.json")
def openapi() -> Response:
    return _json_response(openapi_document())


# ---- the OpenAPI document --------------------------------------------------------------------
def _config_schema() -> dict[str, Any]:
    """RunConfig's fields with their types, limits and choices, from the simulator itself."""
    from simulator.config import SCALARS
    from simulator.phases import PRESETS
    from simulator.rules import RULES
    from simulator.tasks import TASKS

    props: dict[str, Any] = {
        "task": {"type": "string", "enum": sorted(TASKS), "default": "add"},
        "task_args": {"type": "object", "description": "task settings (see the task)",
                      "additionalProperties": True},
        "rule": {"type": "string", "enum": sorted(RULES), "default": "dni-b"},
        "rule_args": {"type": "object", "description": "rule settings (see the rule)",
                      "additionalProperties": True},
        "phases": {"type": "string", "default": "all",
                   "description": f"preset ({', '.join(PRESETS)}) or '[NAME=]POP+POP:STEPS,...'"},
        "seeds": {"description": "a list of integers, an integer, or text like '0-4' or '0,3,7'",
                  "oneOf": [{"type": "array", "items": {"type": "integer", "minimum": 0},
                             "minItems": 1, "maxItems": 256},
                            {"type": "integer", "minimum": 0}, {"type": "string"}]},
    }
    props["align"] = {"type": "string", "nullable": True, "default": None,
                      "description": "shadow exact gradient for alignment: auto, rtrl or bptt:T "
                                     "(omit or null: off)"}
    props["compare"] = {"description": "comparison rules measured passively on this run's "
                                       "network (JMLR protocol): a list of rule names or text "
                                       "like 'rflo,kernl,dni-b'; needs an exact gradient "
                                       "(align, else auto)",
                        "oneOf": [{"type": "array", "items": {"type": "string",
                                                              "enum": sorted(RULES)},
                                   "uniqueItems": True}, {"type": "string"}],
                        "default": []}
    for s in SCALARS:
        if s.choices:
            props[s.name] = {"type": "string", "enum": list(s.choices), "default": s.default}
        else:
            kind = "integer" if s.kind is int else "number"
            props[s.name] = {"type": kind, "minimum": s.low, "maximum": s.high,
                             "default": s.default, "description": s.help}
    return {"type": "object", "properties": props, "additionalProperties": False}


def _control_schema() -> dict[str, Any]:
    params = {
        "k": {"type": "integer", "minimum": 1, "maximum": 10**7, "description": "step: steps"},
        "steps_per_frame": {"type": "integer", "minimum": 0, "maximum": 100_000,
                            "description": "speed: steps per frame (0: automatic)"},
        "steps_per_second": {"type": "number", "minimum": 0.1, "maximum": 1e7,
                             "description": "speed: real-time pacing"},
        "narrate": {"type": "boolean", "description": "speed: with steps_per_second, slow to "
                                                      "10 steps/s around phase switches and "
                                                      "setting changes"},
        "to": {"type": "integer", "minimum": 0, "description": "fast_forward: target step"},
        "lr": {"type": "number", "minimum": 0, "maximum": 10, "description": "set"},
        "apical": {"type": "number", "minimum": 0, "maximum": 10, "description": "set"},
        "jacobian": {"type": "number", "minimum": 0, "maximum": 10, "description": "set"},
        "phases": {"type": "string", "description": "set: phase schedule"},
        "units": {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1,
                  "maxItems": 32, "description": "view: units the traces carry"},
        "seed_index": {"type": "integer", "minimum": 0, "description": "view: seed shown"},
        "name": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$",
                 "description": "checkpoint: a name to keep it under"},
        "changes": {"type": "object", "description": "branch: config changes, e.g. {\"rule\": \"rtrl\"}",
                    "additionalProperties": True},
        "checkpoint": {"type": "string", "description": "branch: from this checkpoint (default: now)"},
        "steps": {"type": "integer", "minimum": 1, "maximum": 10**6,
                  "description": "evaluate: held-out steps"},
    }
    actions = "; ".join(f"{a}({', '.join(p) or '-'})" for a, p in ACTIONS.items())
    return {"type": "object", "required": ["action"], "description": f"Actions: {actions}",
            "properties": {"action": {"type": "string", "enum": list(ACTIONS)}, **params},
            "additionalProperties": False}


def _envelope() -> dict[str, Any]:
    series = {"type": "array", "items": {"type": "number", "nullable": True}}
    return {"type": "object", "properties": {"mean": series, "min": series, "max": series}}


def openapi_document() -> dict[str, Any]:
    """OpenAPI 3.0 description of every endpoint, with schemas."""
    ref = {name: {"$ref": f"#/components/schemas/{name}"} for name in
           ("RunConfig", "RunInfo", "Frame", "Frames", "History", "Control", "ControlResult",
            "Error", "Created", "Cost", "Estimate")}
    err = {"description": "error naming the field", "content": {"application/json": {
        "schema": ref["Error"]}}}

    def ok(schema: dict[str, Any], description: str = "OK",
           mime: str = "application/json") -> dict[str, Any]:
        return {"description": description, "content": {mime: {"schema": schema}}}

    run_id = {"name": "run_id", "in": "path", "required": True, "schema": {"type": "string"}}

    def query(name: str, minimum: int, description: str) -> dict[str, Any]:
        return {"name": name, "in": "query", "required": False, "description": description,
                "schema": {"type": "integer", "minimum": minimum}}

    errors = {"400": err, "404": err, "409": err, "413": err, "422": err, "503": err, "507": err}
    paths = {
        "/api/runs": {
            "get": {"summary": "List every run (newest first)", "operationId": "listRuns",
                    "responses": {"200": ok({"type": "object", "properties": {
                        "runs": {"type": "array", "items": ref["RunInfo"]}}})}},
            "post": {"summary": "Create and start a run", "operationId": "createRun",
                     "requestBody": {"required": True, "content": {"application/json": {
                         "schema": {"allOf": [ref["RunConfig"]], "properties": {
                             "start": {"type": "boolean", "default": True},
                             "view": {"type": "object", "properties": {
                                 "units": {"type": "array", "items": {"type": "integer"}},
                                 "seed_index": {"type": "integer"}}}}}}}},
                     "responses": {"201": ok(ref["Created"], "created"), **errors}},
        },
        "/api/estimate": {
            "post": {"summary": "Estimate a config's cost against this server's budgets (no run "
                                "is made)", "operationId": "estimate",
                     "requestBody": {"required": True, "content": {"application/json": {
                         "schema": ref["RunConfig"]}}},
                     "responses": {"200": ok(ref["Estimate"]), "400": err, "413": err,
                                   "422": err}},
        },
        "/api/runs/{run_id}": {
            "parameters": [run_id],
            "get": {"summary": "One run", "operationId": "getRun",
                    "responses": {"200": ok(ref["RunInfo"]), "404": err}},
            "delete": {"summary": "Stop and delete a run and its files", "operationId": "deleteRun",
                       "responses": {"200": ok({"type": "object"}), "404": err}},
        },
        "/api/runs/{run_id}/frames": {
            "parameters": [run_id],
            "get": {"summary": "Telemetry frames after a cursor (only new ones)",
                    "operationId": "getFrames",
                    "parameters": [query("after", -1, "the cursor of the last call (-1: all kept)")],
                    "responses": {"200": ok(ref["Frames"]), "400": err, "404": err}},
        },
        "/api/runs/{run_id}/history": {
            "parameters": [run_id],
            "get": {"summary": "Whole-run decimated scalar history (min/max envelopes)",
                    "operationId": "getHistory",
                    "parameters": [query("max_points", 1, "bins per series (default 500)"),
                                   query("start", 0, "first step"), query("stop", 0, "last step")],
                    "responses": {"200": ok(ref["History"]), "400": err, "404": err}},
        },
        "/api/runs/{run_id}/control": {
            "parameters": [run_id],
            "post": {"summary": "Control a run: pause, resume, step, stop, speed, fast_forward, "
                                "set, view, checkpoint, branch, evaluate",
                     "operationId": "control",
                     "requestBody": {"required": True, "content": {"application/json": {
                         "schema": ref["Control"]}}},
                     "responses": {"200": ok(ref["ControlResult"]), **errors}},
        },
        "/api/runs/{run_id}/export.csv": {
            "parameters": [run_id],
            "get": {"summary": "Per-step scalar history as CSV (full resolution within the "
                               "run's history budget, then means over blocks of steps)",
                    "operationId": "exportCsv",
                    "responses": {"200": ok({"type": "string"}, "CSV: step, seed, train_loss, "
                                            "diagnostics..., block (steps the row averages)",
                                            "text/csv"), "404": err}},
        },
        "/api/runs/{run_id}/config.json": {
            "parameters": [run_id],
            "get": {"summary": "The run's config (re-POSTable to /api/runs)",
                    "operationId": "exportConfig",
                    "responses": {"200": ok(ref["RunConfig"]), "404": err}},
        },
        "/api/openapi.json": {
            "get": {"summary": "This document", "operationId": "openapi",
                    "responses": {"200": ok({"type": "object"})}},
        },
    }
    number_list = {"type": "array", "items": {"type": "number", "nullable": True}, "nullable": True}
    run_info_props: dict[str, Any] = {key: {} for key in RUN_KEYS}
    run_info_props.update({
        "id": {"type": "string"}, "config": ref["RunConfig"], "status": {
            "type": "string", "description": "ready, running, paused, parked (checkpointed "
                                             "and without a worker after --idle-release s "
                                             "paused or unwatched; holds no run slot; resume "
                                             "or, if it was running, a poll continues it), "
                                             "finished, stopped, interrupted, 'failed: "
                                             "reason', 'failed: reason (resumable)', "
                                             "'diverged at step N'"},
        "step": {"type": "integer"}, "steps_per_second": {"type": "number"},
        "created": {"type": "number"}, "parent": {"type": "string", "nullable": True},
        "best_test_loss": number_list, "last_test_loss": number_list,
        "reference_levels": {"type": "object", "additionalProperties": {"type": "number"}},
        "task_view": {"type": "object"}, "phases": {"type": "string"},
        "seeds": {"type": "array", "items": {"type": "integer"}},
        "steps_per_frame": {"type": "integer"}, "target_steps": {"type": "integer"},
        "checkpoints": {"type": "array", "items": {"type": "string"}},
        "view": {"type": "object"}, "learning_rates": {"type": "object"},
        "cursor": {"type": "integer"}, "alive": {"type": "boolean"},
        "cost": {"allOf": [ref["Cost"]], "nullable": True},
    })
    cost_props: dict[str, Any] = {
        "memory_bytes": {"type": "integer", "description": "estimated peak memory"},
        "disk_bytes_per_1000_steps": {"type": "integer", "description": "CSV history"},
        "checkpoint_bytes": {"type": "integer"},
        "flops_per_step": {"type": "integer", "description": "all seeds"},
        "work_flops": {"type": "integer", "description": "flops_per_step x steps"},
        "human": {"type": "string"}}
    schemas = {
        "RunConfig": _config_schema(),
        "RunInfo": {"type": "object", "properties": run_info_props},
        "Created": {"type": "object", "required": ["id"], "properties": {
            "id": {"type": "string"}, "run": ref["RunInfo"]}},
        "Frame": {"type": "object", "description": "simulator.telemetry.make_frame + seq, run, wall",
                  "required": ["seq", "t0", "t1", "loss"], "properties": {
                      "seq": {"type": "integer"}, "run": {"type": "string"},
                      "t0": {"type": "integer"}, "t1": {"type": "integer"},
                      "step": {"type": "integer"}, "wall": {"type": "number"},
                      "phase": {"type": "string"}, "phases": {"type": "array"},
                      "loss": {"allOf": [_envelope()], "properties": {
                          "step": {"type": "array", "items": {"type": "integer"}}}},
                      "loss_seeds": number_list, "diagnostics": {"type": "object"},
                      "alignment": {"type": "object", "nullable": True},
                      "traces": {"type": "object", "description": "seed, units, step, V, U, r"},
                      "task": {"type": "object", "description": "step, x, y, pred"},
                      "weight_change": {"type": "object"}, "weight_norm": {"type": "object"},
                      "test_loss": number_list, "detail": {"type": "boolean"},
                      "status": {"type": "string"}, "run_status": {"type": "string"}}},
        "Frames": {"type": "object", "required": ["frames", "cursor"], "properties": {
            "frames": {"type": "array", "items": ref["Frame"]}, "cursor": {"type": "integer"}}},
        "History": {"type": "object", "properties": {
            "t": {"type": "integer"}, "cursor": {"type": "integer"},
            "step": {"type": "array", "items": {"type": "integer"}}, "loss": _envelope(),
            "diagnostics": {"type": "object", "additionalProperties": _envelope()},
            "alignment": {"allOf": [_envelope()], "nullable": True},
            "weight_norm": {"type": "object", "additionalProperties": _envelope()},
            "test_loss": {"type": "object", "properties": {
                "step": {"type": "array", "items": {"type": "integer"}}, "mean": number_list,
                "seeds": {"type": "array", "items": number_list}}},
            "phases": {"type": "array", "items": {"type": "array"}}}},
        "Cost": {"type": "object", "properties": cost_props},
        "Estimate": {"type": "object", "properties": {
            **cost_props, "fits": {"type": "boolean", "description": "within the per-run budgets"},
            "budgets": {"type": "object", "description": "bytes and FLOP; 0: no limit",
                        "properties": {k: {"type": "integer"} for k in
                                       ("run_memory", "total_memory", "run_work")}}}},
        "Control": _control_schema(),
        "ControlResult": {"type": "object", "required": ["ok"], "properties": {
            "ok": {"type": "boolean"}, "status": {"type": "string"}, "step": {"type": "integer"},
            "id": {"type": "string", "description": "branch: the new run"},
            "checkpoint": {"type": "string"}, "test_loss": number_list}},
        "Error": {"type": "object", "required": ["error"], "properties": {
            "error": {"type": "string", "description": "'field: message'"},
            "field": {"type": "string", "nullable": True}}},
    }
    document = {"openapi": "3.0.3",
                "info": {"title": "Plasticity Lab run service", "version": "0.1.0",
                         "description": "Runs in background workers, live telemetry frames after "
                                        "a cursor, control, persistent history."},
                "paths": paths, "components": {"schemas": schemas}}
    from app.sharing import add_openapi  # sign-in, viewer links, copies

    return add_openapi(document)
