"""The Flask server: the REST API on it, and the backend at ``server.extensions``.

    server = create_server(data_dir="data")          # a LocalBackend of its own
    server.extensions["plasticity_backend"]           # the Backend the dashboard uses too

Several server processes (the Celery backend) run behind gunicorn with :func:`wsgi_app`:

    PLASTICITY_BACKEND=celery PLASTICITY_REDIS_URL=redis://127.0.0.1:6379/0 \
        gunicorn -w 2 -k gthread --threads 8 -b 127.0.0.1:8050 'app.server:wsgi_app()'
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from flask import Flask

from app import experiments, security
from app.access import GuardedBackend
from app.api import BACKEND_KEY, api, register_api_errors
from app.exports import exports
from app.security import AuthSettings
from app.service.base import Backend, BackendSettings
from app.sharing import sharing
from app.users import AccessStore


def create_server(backend: Backend | None = None, *, data_dir: str | Path | None = None,
                  max_runs: int | None = None, name: str = "plasticity_lab",
                  auth: AuthSettings | bool = True, **settings: Any) -> Flask:
    """A Flask app with the API under /api and ``backend`` (default: a LocalBackend on
    ``data_dir``, with ``max_runs`` and other BackendSettings fields) in its extensions,
    behind the request guard (app.security): ``auth`` True (a random serve token), False
    (no sign-in: everyone is the admin) or an AuthSettings. The backend in the extensions is
    wrapped in app.access.GuardedBackend (owners, viewer links, per-user quotas)."""
    if backend is None:
        from app.service.local import LocalBackend

        if data_dir is not None:
            settings["data_dir"] = Path(data_dir)
        if max_runs is not None:
            settings["max_runs"] = max_runs
        backend = LocalBackend(BackendSettings(**settings))
    if not isinstance(auth, AuthSettings):
        auth = AuthSettings(enabled=bool(auth))
    store = AccessStore(backend.settings.data_dir)
    server = Flask(name)
    server.config["JSON_SORT_KEYS"] = False
    server.config["MAX_CONTENT_LENGTH"] = MAX_REQUEST_BODY  # read bounded, chunked too
    server.extensions[BACKEND_KEY] = GuardedBackend(backend, store, auth)
    security.install(server, auth, store)
    server.register_blueprint(api)
    server.register_blueprint(sharing)
    experiments.install(server)
    server.register_blueprint(exports)
    register_api_errors(server)
    logging.getLogger("app").setLevel(logging.INFO)
    return server


BACKENDS = ("local", "celery")
#: any request body at most (the dashboard's callbacks too); the API's own limit is 1 MiB
MAX_REQUEST_BODY = 16 << 20
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def make_backend(kind: str = "local", *, redis_url: str | None = None, **settings: Any) -> Backend:
    """A backend by name: "local" (embedded, the default) or "celery" (runs on Celery workers,
    state in Redis at ``redis_url``); ``settings`` are BackendSettings fields."""
    if "data_dir" in settings:
        settings["data_dir"] = Path(settings["data_dir"])
    if kind == "celery":
        from app.service.celery_backend import CeleryBackend

        return CeleryBackend(BackendSettings(**settings), redis_url=redis_url or DEFAULT_REDIS_URL)
    if kind != "local":
        raise ValueError(f"backend: got {kind!r}; allowed: {', '.join(BACKENDS)}")
    from app.service.local import LocalBackend

    return LocalBackend(BackendSettings(**settings))


def wsgi_app() -> Flask:
    """The WSGI app for gunicorn (one per server process), configured by the environment:
    PLASTICITY_BACKEND (celery; local serves one process only), PLASTICITY_REDIS_URL,
    PLASTICITY_DATA_DIR (default ./data), PLASTICITY_MAX_RUNS (default 4),
    PLASTICITY_MAX_RUN_MEMORY / _MAX_TOTAL_MEMORY (bytes) / _MAX_RUN_WORK (FLOP) (default:
    derived from the machine), PLASTICITY_IDLE_RELEASE (seconds, default 600),
    PLASTICITY_CHECKPOINT_SECONDS (default 10), PLASTICITY_DASHBOARD (1, or 0 for the REST API
    only), and sign-in: PLASTICITY_TOKEN (the serve token; required unless
    PLASTICITY_NO_AUTH=1), PLASTICITY_ALLOWED_HOSTS (comma-separated), PLASTICITY_MAX_USER_RUNS."""
    kind = os.environ.get("PLASTICITY_BACKEND", "celery")
    budgets = {key: int(os.environ[f"PLASTICITY_{key.upper()}"])
               for key in ("max_run_memory", "max_total_memory", "max_run_work")
               if os.environ.get(f"PLASTICITY_{key.upper()}")}
    backend = make_backend(kind, redis_url=os.environ.get("PLASTICITY_REDIS_URL"),
                           data_dir=os.environ.get("PLASTICITY_DATA_DIR", "data"),
                           max_runs=int(os.environ.get("PLASTICITY_MAX_RUNS", "4")),
                           idle_release=float(os.environ.get("PLASTICITY_IDLE_RELEASE", "600")),
                           checkpoint_seconds=float(
                               os.environ.get("PLASTICITY_CHECKPOINT_SECONDS", "10")),
                           **budgets)
    server = create_server(backend, auth=auth_from_env())
    if os.environ.get("PLASTICITY_DASHBOARD", "1") not in ("0", "false", "no"):
        from app.__main__ import attach_dashboard

        attach_dashboard(server, server.extensions[BACKEND_KEY])  # the guarded one
    return server


def auth_from_env() -> AuthSettings:
    """Sign-in settings from PLASTICITY_TOKEN, PLASTICITY_NO_AUTH, PLASTICITY_ALLOWED_HOSTS and
    PLASTICITY_MAX_USER_RUNS (how ``serve --processes N`` hands them to gunicorn's workers)."""
    no_auth = os.environ.get("PLASTICITY_NO_AUTH", "0") not in ("0", "", "false", "no")
    token = os.environ.get("PLASTICITY_TOKEN", "")
    if not token and not no_auth:
        raise RuntimeError("PLASTICITY_TOKEN: not set; set the serve token (or "
                           "PLASTICITY_NO_AUTH=1 on a trusted machine)")
    hosts = tuple(h for h in os.environ.get("PLASTICITY_ALLOWED_HOSTS", "").split(",") if h)
    quota = os.environ.get("PLASTICITY_MAX_USER_RUNS", "")
    extra: dict[str, Any] = {"token": token} if token else {}
    return AuthSettings(enabled=not no_auth, allowed_hosts=hosts,
                        max_user_runs=int(quota) if quota else None, **extra)
