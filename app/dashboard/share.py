"""The dashboard's "Share with class" button and its read-only viewer mode.

- ``decorate(root)`` adds the Share button to the header and the share overlay to the page;
  for a viewer-link visitor (no sign-in, only a viewer cookie) it marks the page read-only
  (``#root.viewer``: the controls, transport and run table are hidden by plab.css; the server
  refuses every change anyway) and shows a banner with "Make my own copy".
- ``register(app, backend)``: Share makes a viewer link for the runs on screen (a race: all
  of them) and shows it with a QR code drawn locally (segno, an inline SVG); "Make my own copy"
  branches the first shown run into the caller's own runs, or says why not.
"""

from __future__ import annotations

import base64
from typing import Any

import dash
from dash import Input, Output, State, html, no_update
from flask import current_app, request

from app import security
from app.service.base import ServiceError
from simulator.settings import ConfigError

#: a viewer link's page runs no clock: its status chips follow the live answers (their steps
#: each frame, the rest when the run's status changes: app/live.py), so a class of viewers
#: makes no Dash requests between status changes
VIEWER_CLOCKS = ("slow-clock",)


def is_viewer() -> bool:
    """The page is for a viewer link only (nobody signed in)."""
    who = security.current()
    return who is not None and who.name is None


def watches_a_share() -> bool:
    """A viewer link is open and the caller is not the admin (offer "Make my own copy")."""
    who = security.current()
    return who is not None and bool(who.viewable) and not who.admin


def decorate(root: html.Div) -> html.Div:
    """The built layout with the Share button and overlay (and viewer mode when it applies)."""
    header = next(c for c in root.children if getattr(c, "className", "") == "header")
    right = next(c for c in header.children if getattr(c, "className", "") == "header-right")
    right.children = [html.Button("Share with class", id="btn-share", n_clicks=0,
                                  className="hbtn share-btn",
                                  title="a read-only link (and QR code) to the runs on screen"),
                      *right.children]
    overlay = html.Div([
        html.Div([
            html.Button("×", id="share-close", n_clicks=0, className="share-close",
                        title="close"),
            html.Div(id="share-body"),
        ], className="share-card"),
    ], id="share-overlay", className="share-overlay", style={"display": "none"})
    extra: list[Any] = [overlay]
    if is_viewer():
        root.className = "viewer"
        for child in root.children:
            if getattr(child, "id", None) in VIEWER_CLOCKS:
                child.disabled = True
    if watches_a_share():
        extra.insert(0, html.Div([
            html.Span("A shared run, read-only: you watch it live; nothing here changes it."
                      if is_viewer() else "A shared run: watch it, or make your own copy to "
                                          "change it."),
            html.Button("Make my own copy", id="btn-own-copy", n_clicks=0, className="hbtn"),
            html.Span(id="own-copy-msg", className="own-copy-msg", role="alert"),
        ], className="viewer-banner", id="viewer-banner"))
    else:
        extra.append(html.Div([html.Button(id="btn-own-copy", n_clicks=0),
                               html.Span(id="own-copy-msg")], style={"display": "none"}))
    root.children = [*extra, *root.children]
    return root


def _shown(live: dict[str, Any] | None) -> list[str]:
    live = live or {}
    return list(dict.fromkeys([*(live.get("runs") or []), *(live.get("group") or [])]))


def register(app: dash.Dash, backend: Any) -> None:
    from app.security import ACCESS_KEY
    from app.sharing import make_share, qr_svg

    @app.callback(
        Output("share-overlay", "style"), Output("share-body", "children"),
        Input("btn-share", "n_clicks"), Input("share-close", "n_clicks"),
        State("live-store", "data"), prevent_initial_call=True)
    def share(_: int, __: int, live: dict[str, Any] | None) -> tuple[Any, Any]:
        if dash.ctx.triggered_id == "share-close":
            return {"display": "none"}, []
        runs = _shown(live)
        if not runs:
            body: list[Any] = [html.P("Start or open a run first: the link shows the runs on "
                                      "screen.")]
            return {"display": "flex"}, body
        try:
            link = make_share(backend, current_app.extensions[ACCESS_KEY], runs, request.host_url)
        except (ServiceError, ConfigError) as err:
            return {"display": "flex"}, [html.P(str(getattr(err, "message", err)))]
        svg = base64.b64encode(qr_svg(link["url"]).encode()).decode()
        return {"display": "flex"}, [
            html.H2("Watch along: scan or open"),
            html.Img(src=f"data:image/svg+xml;base64,{svg}", className="share-qr", id="share-qr",
                     alt=link["url"]),
            html.Div(link["url"], className="share-url", id="share-url"),
            html.P(f"Read-only: viewers see {len(link['runs'])} run(s) live and can make their "
                   "own copy when signed in. Revoke: DELETE /api/shares/" + link["id"] + ".",
                   className="share-note"),
        ]

    @app.callback(Output("own-copy-msg", "children"), Input("btn-own-copy", "n_clicks"),
                  State("live-store", "data"), prevent_initial_call=True)
    def own_copy(_: int, live: dict[str, Any] | None) -> Any:
        runs = _shown(live)
        if not runs:
            return no_update
        try:
            result = backend.copy(runs[0])
        except (ServiceError, ConfigError) as err:
            return str(getattr(err, "message", err))
        return html.A(f"your copy: run {result['id']}: open it", href=f"/?run={result['id']}")
