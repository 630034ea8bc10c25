"""The REST API: a Flask blueprint under /api over the Backend; its OpenAPI document is
generated from the models in :mod:`app.schema`.

Every handler answers JSON. Bad input answers 400 (malformed body or query), 404 (unknown run
or path), 405, 409 (state conflict, run limit), 422 (a setting out of range), 503 (storage
read-only until repaired) or 507 (the disk cannot hold the run), always as
``{"error": "field: message", "field": "field"}``. Every exception is caught at the blueprint
edge and logged; only a bug in the service itself would answer 500.
"""

from __future__ import annotations

import json
import logging
import secrets
from typing import Any

from flask import Blueprint, Flask, Response, current_app, g, request
from werkzeug.exceptions import HTTPException, InternalServerError

from app.encoding import dumps
from app.schema import CREATE_EXTRAS, QUERIES, check_action, openapi_document
from app.service.admission import estimate_dict
from app.service.base import Backend, ServiceError
from simulator.config import RunConfig
from simulator.settings import ConfigError, quote

log = logging.getLogger("app.api")

api = Blueprint("plasticity_api", __name__, url_prefix="/api")

BACKEND_KEY = "plasticity_backend"
MAX_BODY = 1 << 20


# ---- plumbing --------------------------------------------------------------------------------
def backend() -> Backend:
    return current_app.extensions[BACKEND_KEY]


class BadRequest(ServiceError):
    """Malformed request (body or query)."""

    http_status = 400


def _json_response(payload: Any, status: int = 200) -> Response:
    """JSON with null for NaN/inf (a diverged run): the app's one encoder."""
    return Response(dumps(payload), status=status, mimetype="application/json")


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


def _query_int(name: str, default: int | None) -> int | None:
    """An integer query parameter (its range: app.schema.QUERIES); 400 naming it otherwise."""
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        return QUERIES[name].parse(raw, "")
    except ConfigError as exc:
        raise BadRequest(str(exc), field=name) from None


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
    after = _query_int("after", -1)
    frames, cursor = backend().frames(run_id, after)
    return _json_response({"frames": frames, "cursor": cursor})


@api.get("/runs/<run_id>/history")
def get_history(run_id: str) -> Response:
    max_points = _query_int("max_points", 500)
    start = _query_int("start", None)
    stop = _query_int("stop", None)
    kwargs = {k: v for k, v in (("start", start), ("stop", stop)) if v is not None}
    return _json_response(backend().history(run_id, max_points, **kwargs))


@api.post("/runs/<run_id>/control")
def control(run_id: str) -> Response:
    body = _body()
    backend().get(run_id)  # 404 before 422 for an unknown run
    action, params = check_action(body)  # ranges: the backend, with the run's sizes
    return _json_response(backend().control(run_id, action, **params))


@api.get("/runs/<run_id>/export.csv")
def export_csv(run_id: str) -> Response:
    path = backend().export_csv(run_id)
    size = path.stat().st_size

    headers = {"Content-Disposition": f'attachment; filename="run-{run_id}.csv"'}
    from app.exports import complete_blocks  # the file as it is now, complete lines only

    return Response(complete_blocks(path, size, 1 << 20), mimetype="text/csv", headers=headers)


@api.get("/runs/<run_id>/config.json")
def export_config(run_id: str) -> Response:
    response = _json_response(backend().export_config(run_id))
    response.headers["Content-Disposition"] = f'attachment; filename="run-{run_id}.json"'
    return response


@api.get("/openapi.json")
def openapi() -> Response:
    return _json_response(openapi_document())
