"""The Flask server: the REST API on it, and the backend at ``server.extensions``.

    server = create_server(data_dir="data")          # a LocalBackend of its own
    server.extensions["plasticity_backend"]           # the Backend the dashboard uses too
"""

from __future__ import annotations

import logging
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
