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

from app.api import BACKEND_KEY, api, register_api_errors
from app.service.base import Backend, BackendSettings


def create_server(backend: Backend | None = None, *, data_dir: str | Path | None = None,
                  max_runs: int | None = None, name: str = "plasticity_lab",
                  **settings: Any) -> Flask:
    """A Flask app with the API under /api and ``backend`` (default: a LocalBackend on
    ``data_dir``, with ``max_runs`` and other BackendSettings fields) in its extensions."""
    if backend is None:
        from app.service.local import LocalBackend

        if data_dir is not None:
            settings["data_dir"] = Path(data_dir)
        if max_runs is not None:
            settings["max_runs"] = max_runs
        backend = LocalBackend(BackendSettings(**settings))
    server = Flask(name)
    server.config["JSON_SORT_KEYS"] = False
    server.extensions[BACKEND_KEY] = backend
    server.register_blueprint(api)
    register_api_errors(server)
    logging.getLogger("app").setLevel(logging.INFO)
    return server


BACKENDS = ("local", "celery")
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
    PLASTICITY_IDLE_RELEASE (seconds, default 600), PLASTICITY_CHECKPOINT_SECONDS (default 10),
    PLASTICITY_DASHBOARD (1, or 0 for the REST API only)."""
    kind = os.environ.get("PLASTICITY_BACKEND", "celery")
    backend = make_backend(kind, redis_url=os.environ.get("PLASTICITY_REDIS_URL"),
                           data_dir=os.environ.get("PLASTICITY_DATA_DIR", "data"),
                           max_runs=int(os.environ.get("PLASTICITY_MAX_RUNS", "4")),
                           idle_release=float(os.environ.get("PLASTICITY_IDLE_RELEASE", "600")),
                           checkpoint_seconds=float(
                               os.environ.get("PLASTICITY_CHECKPOINT_SECONDS", "10")))
    server = create_server(backend)
    if os.environ.get("PLASTICITY_DASHBOARD", "1") not in ("0", "false", "no"):
        from app.__main__ import attach_dashboard

        attach_dashboard(server, backend)
    return server
