"""Viewer links and copies over the REST API (a blueprint under /api, next to app.api's).

    POST   /api/runs/<id>/share   {} or {"runs": [id, ...]} (a race)  -> 201 {"id", "token", "url", "runs"}
    GET    /api/shares            the caller's links (the admin: all), without tokens
    DELETE /api/shares/<token>    revoke (the token, or the link's id); viewers lose access at once
    POST   /api/runs/<id>/copy    {} or {"changes": {...}, "checkpoint": name}: branch into the
                                  caller's own runs (403 for a viewer link: sign in first)

The link's token is shown once (the store keeps its digest); ``url`` is ``/view/<token>`` on the
host the request came to.
"""

from __future__ import annotations

import io
from typing import Any

from flask import Blueprint, Response, current_app, request

from app.access import Forbidden, GuardedBackend
from app.api import BACKEND_KEY, _body, _handle, _json_response
from app.security import ACCESS_KEY, VIEW_PREFIX, current
from app.users import ADMIN, AccessStore
from simulator.settings import ConfigError

sharing = Blueprint("plasticity_sharing", __name__, url_prefix="/api")
sharing.register_error_handler(Exception, _handle)

MAX_SHARED_RUNS = 16


def _guarded() -> GuardedBackend:
    return current_app.extensions[BACKEND_KEY]


def _store() -> AccessStore:
    return current_app.extensions[ACCESS_KEY]


def _optional_body() -> dict[str, Any]:
    """The JSON object body, or {} when there is none (no peeking: _body reads the stream)."""
    chunked = "chunked" in request.headers.get("Transfer-Encoding", "").lower()
    return _body() if request.content_length or chunked else {}


def make_share(backend: GuardedBackend, store: AccessStore, runs: list[str],
               host_url: str) -> dict[str, Any]:
    """A viewer link to ``runs`` (each must be the caller's, or the caller the admin)."""
    if not runs:
        raise ConfigError("runs", "got an empty list; allowed: 1 to 16 run ids")
    if len(runs) > MAX_SHARED_RUNS:
        raise ConfigError("runs", f"got {len(runs)} ids; allowed: 1 to {MAX_SHARED_RUNS}")
    who = current()
    for rid in runs:
        if not isinstance(rid, str):
            raise ConfigError("runs", f"got {str(rid)[:100]!r}; allowed: run id strings")
        backend.writable(rid)
    share = store.add_share(backend.owner_name(who), list(dict.fromkeys(runs)))
    return {**share, "url": f"{host_url.rstrip('/')}{VIEW_PREFIX}{share['token']}"}


def qr_svg(url: str) -> str:
    """The link as a QR code, an SVG drawn locally (segno), scaled by the page."""
    import segno

    out = io.BytesIO()
    segno.make(url, error="m").save(out, kind="svg", scale=10, border=2, xmldecl=False,
                                    svgns=True, omitsize=True)
    return out.getvalue().decode()


@sharing.post("/runs/<run_id>/share")
def share_run(run_id: str) -> Response:
    body = _optional_body()
    runs = body.get("runs", [run_id])
    if not isinstance(runs, list):
        raise ConfigError("runs", f"got {str(runs)[:100]!r}; allowed: a list of run ids")
    if run_id not in runs:
        runs = [run_id, *runs]
    return _json_response(make_share(_guarded(), _store(), runs, request.host_url), 201)


@sharing.get("/shares")
def list_shares() -> Response:
    who = current()
    if who is not None and who.name is None:
        raise Forbidden("auth: a viewer link cannot list links; sign in first", field="auth")
    owner = None if who is None or who.admin else who.name
    return _json_response({"shares": _store().shares(owner)})


@sharing.delete("/shares/<token>")
def revoke_share(token: str) -> Response:
    """Revoke by the link's token or its id (the owner's links; the admin: any)."""
    store, who = _store(), current()
    share = store.share_for_token(token) or store.share(token)
    if share is not None and who is not None and not who.admin and who.name != share["owner"]:
        if who.name is None:
            raise Forbidden("auth: a viewer link cannot revoke links; sign in first", field="auth")
        share = None  # someone else's: as if unknown
    if share is None:
        return _json_response({"error": "share: no such viewer link (revoked already?)",
                               "field": "share"}, 404)
    store.remove_share(share["id"])
    return _json_response({"ok": True, "id": share["id"]})


@sharing.post("/runs/<run_id>/copy")
def copy_run(run_id: str) -> Response:
    body = _optional_body()
    for key in body:
        if key not in ("changes", "checkpoint"):
            raise ConfigError(str(key)[:100], "unknown parameter for copy; allowed: changes, "
                                              "checkpoint")
    params = {"changes": body.get("changes") or {}}
    if body.get("checkpoint") is not None:
        params["checkpoint"] = body["checkpoint"]
    result = _guarded().copy(run_id, **params)
    return _json_response({**result, "owner": _store().owner(result["id"])
                           if result.get("id") else ADMIN}, 201)


def add_openapi(document: dict[str, Any]) -> dict[str, Any]:
    """``document`` (app.api's OpenAPI) with the bearer scheme, the share and copy endpoints,
    the 401/403/415 answers of the request guard and RunInfo.owner."""
    err = {"description": "error naming the field",
           "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    run_id = {"name": "run_id", "in": "path", "required": True, "schema": {"type": "string"}}
    share_schema = {"type": "object", "properties": {
        "id": {"type": "string"}, "owner": {"type": "string"}, "created": {"type": "number"},
        "runs": {"type": "array", "items": {"type": "string"}},
        "token": {"type": "string", "description": "only in the answer that made it"},
        "url": {"type": "string", "description": "the viewer link: /view/{token}"}}}

    def body(props: dict[str, Any]) -> dict[str, Any]:
        return {"required": False, "content": {"application/json": {"schema": {
            "type": "object", "properties": props, "additionalProperties": False}}}}

    def ok(schema: dict[str, Any], text: str = "OK") -> dict[str, Any]:
        return {"description": text, "content": {"application/json": {"schema": schema}}}

    paths = document["paths"]
    paths["/api/runs/{run_id}/share"] = {"parameters": [run_id], "post": {
        "summary": "A read-only viewer link to this run (or a race: runs)",
        "operationId": "shareRun",
        "requestBody": body({"runs": {"type": "array", "items": {"type": "string"},
                                      "minItems": 1, "maxItems": MAX_SHARED_RUNS}}),
        "responses": {"201": ok(share_schema, "created"), "403": err, "404": err, "422": err}}}
    paths["/api/shares"] = {"get": {
        "summary": "The caller's viewer links (the admin: all), without tokens",
        "operationId": "listShares",
        "responses": {"200": ok({"type": "object", "properties": {
            "shares": {"type": "array", "items": share_schema}}}), "403": err}}}
    paths["/api/shares/{token}"] = {"parameters": [{
        "name": "token", "in": "path", "required": True, "schema": {"type": "string"},
        "description": "the link's token or its id"}], "delete": {
        "summary": "Revoke a viewer link (at once)", "operationId": "revokeShare",
        "responses": {"200": ok({"type": "object"}), "403": err, "404": err}}}
    paths["/api/runs/{run_id}/copy"] = {"parameters": [run_id], "post": {
        "summary": "Branch a run you can see into your own runs (counts in your quota)",
        "operationId": "copyRun",
        "requestBody": body({"changes": {"type": "object", "additionalProperties": True},
                             "checkpoint": {"type": "string"}}),
        "responses": {"201": ok({"type": "object", "properties": {
            "id": {"type": "string"}, "owner": {"type": "string"}}}, "created"),
            "403": err, "404": err, "409": err, "422": err}}}
    for path, item in paths.items():
        for method, operation in item.items():
            if method == "parameters" or path == "/api/openapi.json":
                continue
            operation["responses"].setdefault("401", err)
            operation["responses"].setdefault("403", err)
            if method in ("post", "put", "patch"):
                operation["responses"].setdefault("415", err)
    paths["/api/openapi.json"]["get"]["security"] = []  # public
    document["components"]["schemas"]["RunInfo"]["properties"]["owner"] = {
        "type": "string", "description": "who created it: 'admin' (the serve token) or a user"}
    document["components"]["securitySchemes"] = {"bearer": {
        "type": "http", "scheme": "bearer",
        "description": "the token serve printed (admin) or one from 'plasticity-lab users add'"}}
    document["security"] = [{"bearer": []}]
    return document
