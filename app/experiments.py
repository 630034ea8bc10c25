"""Experiments over the REST API (a blueprint under /api, beside app.api's and app.sharing's).

    POST /api/experiments                    an experiment spec (the TOML form as JSON),
                                             {"toml": TEXT} or {"preset": NAME, "steps": ..,
                                             "seeds": ..}  -> 201 {"id", "experiment"}
    GET  /api/experiments                    the caller's experiments (the admin: all)
    GET  /api/experiments/<id>               status, progress (0..1), eta_seconds, batches
    GET  /api/experiments/<id>/results.csv   one row per member and seed (partial while running)
    GET  /api/experiments/<id>/series.csv    member, seed, step, name, value
    POST /api/experiments/<id>/cancel        stop it (finished batches stay readable)
    POST /api/experiments/<id>/runs          {"member": M, "seed": S}: that member as a normal
                                             run of the caller's (paused; open it in the
                                             dashboard at ``url``)
    DELETE /api/experiments/<id>             cancel and remove its folder

A viewer link cannot use any of these (403): experiments are their owner's (and the admin's).
Over-budget experiments answer 422 naming the field, the estimate and the limit.
"""

from __future__ import annotations

import sys
from typing import Any

from flask import Blueprint, Flask, Response, current_app, send_file

from app.access import Forbidden, GuardedBackend
from app.api import BACKEND_KEY, _body, _handle, _json_response
from app.security import current
from app.service.sweeps import ExperimentNotFound, ExperimentService, LocalSweeps
from app.users import ADMIN
from simulator.settings import ConfigError, quote

experiments = Blueprint("plasticity_experiments", __name__, url_prefix="/api")
experiments.register_error_handler(Exception, _handle)

SERVICE_KEY = "plasticity_experiments"
VIEWER_NO_EXPERIMENTS = ("auth: a viewer link cannot see or run experiments; sign in (your own "
                         "token) to run your own")


def make_service(backend: Any) -> ExperimentService:
    """The experiment service for a server's backend: Celery batches for a CeleryBackend,
    else the embedded pool."""
    guarded = backend if isinstance(backend, GuardedBackend) else None
    inner = guarded.inner if guarded is not None else backend
    user_runs = guarded.auth.max_user_runs if guarded is not None else None
    celery_backend = sys.modules.get("app.service.celery_backend")  # imported if in use
    if celery_backend is not None and isinstance(inner, celery_backend.CeleryBackend):
        from app.service.celery_sweeps import CelerySweeps

        return CelerySweeps(inner, user_runs=user_runs)
    return LocalSweeps(inner.settings, user_runs=user_runs)


def install(server: Flask) -> None:
    """Register the blueprint and start the server's experiment service (which continues any
    experiment a previous server left unfinished)."""
    server.extensions[SERVICE_KEY] = make_service(server.extensions[BACKEND_KEY])
    server.register_blueprint(experiments)


def service() -> ExperimentService:
    return current_app.extensions[SERVICE_KEY]


def _caller() -> tuple[str, bool]:
    """(owner name, is admin) of the caller; 403 for a viewer link."""
    who = current()
    if who is not None and who.name is None:
        raise Forbidden(VIEWER_NO_EXPERIMENTS, field="auth")
    if who is None or who.admin:
        return ADMIN, True
    return who.name or ADMIN, False


def _mine(exp_id: str) -> dict[str, Any]:
    """The experiment's meta if the caller may see it (else 404, as if unknown)."""
    owner, admin = _caller()
    meta = service().meta(exp_id)
    if not admin and meta["owner"] != owner:
        raise ExperimentNotFound(exp_id)
    return meta


@experiments.post("/experiments")
def submit() -> Response:
    owner, admin = _caller()
    exp_id = service().submit(_body(), owner=owner, admin=admin)
    return _json_response({"id": exp_id, "experiment": service().get(exp_id)}, 201)


@experiments.get("/experiments")
def list_experiments() -> Response:
    owner, admin = _caller()
    return _json_response({"experiments": service().list(None if admin else owner)})


@experiments.get("/experiments/<exp_id>")
def get_experiment(exp_id: str) -> Response:
    _mine(exp_id)
    return _json_response(service().get(exp_id))


@experiments.get("/experiments/<exp_id>/results.csv", defaults={"name": "results.csv"})
@experiments.get("/experiments/<exp_id>/series.csv", defaults={"name": "series.csv"})
def table(exp_id: str, name: str) -> Response:
    _mine(exp_id)
    path = service().table(exp_id, name)
    return send_file(path, mimetype="text/csv", as_attachment=True,
                     download_name=f"experiment-{exp_id}-{name}", max_age=0)


@experiments.post("/experiments/<exp_id>/cancel")
def cancel(exp_id: str) -> Response:
    _mine(exp_id)
    return _json_response(service().cancel(exp_id))


@experiments.delete("/experiments/<exp_id>")
def delete(exp_id: str) -> Response:
    _mine(exp_id)
    service().delete(exp_id)
    return _json_response({"ok": True, "id": exp_id})


def open_member(backend: Any, svc: ExperimentService, exp_id: str, member: Any,
                seed: Any) -> dict[str, Any]:
    """Create a normal run (paused, the caller's, through the usual admission and quota) with
    one member's config and seed; ``url`` opens it in the dashboard."""
    for name, value in (("member", member), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(name, f"got {quote(value)}; allowed: an integer")
    config = svc.member_config(exp_id, member, seed)
    run_id = backend.create(config, start=False)
    return {"id": run_id, "url": f"/?run={run_id}"}


@experiments.post("/experiments/<exp_id>/runs")
def member_run(exp_id: str) -> Response:
    _mine(exp_id)
    body = _body()
    for key in body:
        if key not in ("member", "seed"):
            raise ConfigError(quote(key)[1:-1], "unknown; allowed: member, seed")
    result = open_member(current_app.extensions[BACKEND_KEY], service(), exp_id,
                         body.get("member"), body.get("seed"))
    return _json_response(result, 201)


def add_openapi(document: dict[str, Any]) -> dict[str, Any]:
    """``document`` (app.schema's OpenAPI) with the experiment routes."""
    err = {"description": "error naming the field",
           "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    exp_id = {"name": "exp_id", "in": "path", "required": True, "schema": {"type": "string"}}
    obj = {"content": {"application/json": {"schema": {"type": "object"}}}}

    def op(summary: str, op_id: str, ok: str = "200", body: str = "", mime: str = "",
           errors: str = "404") -> dict[str, Any]:
        answer = ({"description": "CSV", "content": {mime: {"schema": {"type": "string"}}}}
                  if mime else {"description": "JSON", **obj})
        out: dict[str, Any] = {"summary": summary, "operationId": op_id,
                               "responses": {ok: answer, **{c: err for c in errors.split()}}}
        if body:
            out["requestBody"] = {"required": True, "description": body, **obj}
        return out

    paths = document["paths"]
    paths["/api/experiments"] = {
        "get": op("The caller's experiments (the admin: all)", "listExperiments", errors="403"),
        "post": op("Submit an experiment: the TOML form as JSON ({base, axes, record}), "
                   "{\"toml\": TEXT} or {\"preset\": NAME, \"steps\": .., \"seeds\": ..}",
                   "submitExperiment", "201", body="an experiment spec",
                   errors="400 403 413 415 422")}
    paths["/api/experiments/{exp_id}"] = {
        "parameters": [exp_id],
        "get": op("Status, progress (0..1), eta_seconds and batches", "getExperiment"),
        "delete": op("Cancel and remove", "deleteExperiment")}
    for name, text in (("results.csv", "one row per member and seed"),
                       ("series.csv", "member, seed, step, name, value")):
        paths[f"/api/experiments/{{exp_id}}/{name}"] = {
            "parameters": [exp_id],
            "get": op(f"The table: {text} (partial while running)",
                      f"experiment{name.split('.')[0].title()}", mime="text/csv")}
    paths["/api/experiments/{exp_id}/cancel"] = {
        "parameters": [exp_id], "post": op("Stop it (finished batches stay)", "cancelExperiment")}
    paths["/api/experiments/{exp_id}/runs"] = {
        "parameters": [exp_id],
        "post": op("One member as a normal paused run of the caller's: {\"member\": M, "
                   "\"seed\": S} -> {id, url}", "openExperimentMember", "201",
                   body="{member, seed}", errors="400 404 409 422")}
    return document
