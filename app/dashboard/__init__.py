"""The Plasticity Lab dashboard: Dash + Plotly on the run service's Flask server.

    from app.dashboard import build_dashboard
    dash_app = build_dashboard(server, backend)   # server: Flask, backend: app.service.Backend

Modules: ``layout`` (the page, built from the simulator's registries), ``callbacks``
(controls -> backend actions; frames -> figure updates), ``figures`` (pure: frames -> Plotly
figures and per-tick updates), ``urlstate`` (the setup <-> the URL), ``presets``. The
browser side lives in ``assets/`` (plab.js: the live loop, shortcuts; plab.css).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import dash
from flask_caching import Cache

from app.access import GuardedBackend
from app.dashboard import callbacks, experiments, export, layout, share

if TYPE_CHECKING:
    from flask import Flask

    from app.service.base import Backend

log = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parents[2] / "assets"


def build_dashboard(server: Flask, backend: Backend, *, url_base_pathname: str = "/",
                    cache_config: dict | None = None) -> dash.Dash:
    """Mount the dashboard on ``server`` (the REST API's Flask app) and return it."""
    if not ASSETS.is_dir():
        log.warning("dashboard assets not found at %s: no live updates or shortcuts", ASSETS)
    cache = Cache(config=cache_config or {"CACHE_TYPE": "SimpleCache",
                                          "CACHE_DEFAULT_TIMEOUT": 3600})
    cache.init_app(server)
    app = dash.Dash(
        __name__, server=server, url_base_pathname=url_base_pathname,
        assets_folder=str(ASSETS), title="Plasticity Lab", update_title=None,
        suppress_callback_exceptions=False, serve_locally=True,
        meta_tags=[{"name": "viewport", "content": "width=device-width, initial-scale=1"}],
    )
    svc = callbacks.register(app, backend, cache)
    export.register(app, svc)
    if isinstance(backend, GuardedBackend):  # sign-in is on the server: Share, viewer mode
        share.register(app, backend)
        app.layout = lambda: share.decorate(
            layout.build_layout(svc.presets(), align_supported=svc.align is not None))
    else:
        app.layout = lambda: layout.build_layout(svc.presets(),
                                                 align_supported=svc.align is not None)
    server.extensions["plasticity_dashboard"] = app
    experiments.build(server)  # the Experiments page at /experiments/
    return app


__all__ = ["build_dashboard"]
