"""The request guard: sign-in, cross-site and DNS-rebinding safety, security headers.

Installed on the Flask server by :func:`install` (``create_server`` does it). Every request, in
this order:

1. **Host allow-list.** The Host header must name localhost, 127.0.0.1 or [::1] (any port) or a
   name given with ``--allowed-host``; anything else answers 400 before any handler runs (a
   DNS-rebinding page reaches us under its own host name).
2. **JSON only for changes.** POST/PUT/PATCH/DELETE need ``Content-Type: application/json``
   (415 otherwise): a cross-site form or a ``no-cors`` fetch can only send text/plain,
   form-encoded or multipart bodies without a CORS preflight, which this server never grants.
   A DELETE without a body needs no content type (``curl -X DELETE``): no browser sends a
   cross-site DELETE without a preflight.
3. **Who is asking** (:class:`Principal`): ``Authorization: Bearer <token>`` (the serve token:
   the admin; or a user's token, see :mod:`app.users`), else the HttpOnly SameSite=Strict session
   cookie set by opening ``/?token=...``, plus a viewer cookie set by opening ``/view/<token>``.
   Without credentials /api answers 401 JSON and the dashboard a small sign-in page.
4. **Anti-forgery.** A state-changing request authenticated by cookie must carry the header
   ``X-CSRFToken`` equal to the (readable) ``_csrf_token`` cookie: dash-renderer sends exactly
   that on its callback POSTs; assets/plab.js does too (double-submit cookie).

Every response carries a CSP (frame-ancestors 'none', the dashboard's inline-script hashes),
X-Frame-Options DENY, X-Content-Type-Options nosniff and Referrer-Policy no-referrer.

``AuthSettings(enabled=False)`` (``serve --no-auth``) makes everyone the admin; steps 1, 2 and
the headers still apply.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlencode

from flask import Response, g, has_request_context, redirect, request

from app.users import ADMIN, AccessStore, same

if TYPE_CHECKING:
    from flask import Flask

ACCESS_KEY = "plasticity_access"
AUTH_KEY = "plasticity_auth"
SESSION_COOKIE = "plab_session"
VIEW_COOKIE = "plab_view"
CSRF_COOKIE = "_csrf_token"  # the name dash-renderer reads
CSRF_HEADER = "X-CSRFToken"  # the header dash-renderer sends
SESSION_DAYS = 30
LOCAL_HOSTS = ("localhost", "127.0.0.1", "[::1]")
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: Paths anyone may GET (documentation; the viewer-link entry point checks its own token).
PUBLIC_PATHS = ("/api/openapi.json", "/favicon.ico")
VIEW_PREFIX = "/view/"


@dataclass(frozen=True)
class AuthSettings:
    """Sign-in settings of a server.

    token          the serve token: whoever holds it is the admin (sees and controls every run)
    enabled        False: no sign-in (``--no-auth``), everyone is the admin
    allowed_hosts  Host names accepted besides localhost, 127.0.0.1 and [::1]
    max_user_runs  active runs (ready, running, paused) per named user; None: no per-user limit
    """

    token: str = field(default_factory=lambda: secrets.token_urlsafe(32), repr=False)
    enabled: bool = True
    allowed_hosts: tuple[str, ...] = ()
    max_user_runs: int | None = None

    @property
    def session_key(self) -> bytes:
        """The HMAC key of session and viewer cookies (changes with the token)."""
        return hashlib.sha256(b"plasticity-lab session\0" + self.token.encode()).digest()


@dataclass(frozen=True)
class Principal:
    """Who is asking: ``name`` is ADMIN, a user name, or None (a viewer link only);
    ``viewable`` the run ids their viewer links show; ``cookie``: authenticated by cookie."""

    name: str | None
    shares: tuple[str, ...] = ()
    viewable: frozenset[str] = frozenset()
    cookie: bool = False

    @property
    def admin(self) -> bool:
        return self.name == ADMIN


def current() -> Principal | None:
    """The request's principal; None outside a request (the server itself: full access)."""
    if not has_request_context():
        return None
    return g.get("plab_principal")


# ---- responses -------------------------------------------------------------------------------
def _json_error(status: int, message: str, field_name: str) -> Response:
    return Response(json.dumps({"error": message, "field": field_name}), status=status,
                    mimetype="application/json")


def _page(status: int, title: str, body: str) -> Response:
    text = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            "<style>body{font:16px system-ui,sans-serif;max-width:34em;margin:4em auto;padding:0 1em}"
            "input{font:inherit;width:100%;padding:.4em;margin:.5em 0}button{font:inherit}</style>"
            f"</head><body><h1>{html.escape(title)}</h1>{body}</body></html>")
    return Response(text, status=status, mimetype="text/html")


def sign_in_page(message: str = "") -> Response:
    note = f"<p><strong>{html.escape(message)}</strong></p>" if message else ""
    return _page(401, "Plasticity Lab: sign in", note + (
        "<p>Open the link that <code>plasticity-lab serve</code> printed (it carries the token), "
        "or paste a token below: the server's own, or one from "
        "<code>plasticity-lab users add NAME</code>.</p>"
        "<form method='get' action='/'><input type='password' name='token' "
        "placeholder='token' autocomplete='off' autofocus><button>Sign in</button></form>"))


# ---- signed cookies ----------------------------------------------------------------------------
def _sign(key: bytes, text: str) -> str:
    return f"{text}|{hmac.new(key, text.encode(), hashlib.sha256).hexdigest()}"


def _unsign(key: bytes, value: str | None) -> list[str] | None:
    if not value or "|" not in value:
        return None
    text, _, sig = value.rpartition("|")
    good = hmac.new(key, text.encode(), hashlib.sha256).hexdigest()
    return text.split("|") if same(sig, good) else None


def _set_cookie(response: Response, name: str, value: str, *, http_only: bool = True) -> None:
    response.set_cookie(name, value, max_age=SESSION_DAYS * 86400, path="/", httponly=http_only,
                        samesite="Strict", secure=request.is_secure)


def _ensure_csrf(response: Response) -> None:
    if not request.cookies.get(CSRF_COOKIE):
        _set_cookie(response, CSRF_COOKIE, secrets.token_urlsafe(32), http_only=False)


# ---- the guard -----------------------------------------------------------------------------
class Guard:
    def __init__(self, server: Flask, auth: AuthSettings, store: AccessStore) -> None:
        self.server, self.auth, self.store = server, auth, store
        self.hosts = frozenset(h.lower().rstrip(".") for h in (*LOCAL_HOSTS, *auth.allowed_hosts))
        self._csp: str | None = None

    # -- who --
    def host_ok(self, host: str) -> bool:
        host = host.strip().lower()
        name = host[: host.index("]") + 1] if host.startswith("[") and "]" in host \
            else host.rsplit(":", 1)[0]
        return name.rstrip(".") in self.hosts

    def identify_token(self, token: str) -> str | None:
        """ADMIN, a user's name, or None for a token that is neither."""
        if same(token, self.auth.token):
            return ADMIN
        return self.store.user_for_token(token)

    def _views(self) -> tuple[tuple[str, ...], frozenset[str]]:
        parts = _unsign(self.auth.session_key, request.cookies.get(VIEW_COOKIE))
        if not parts or parts[0] != "v":
            return (), frozenset()
        shares = [s for s in (self.store.share(i) for i in parts[1:]) if s]  # revoked: gone now
        g.plab_revoked = not shares
        return tuple(s["id"] for s in shares), frozenset(r for s in shares for r in s["runs"])

    def _session_name(self) -> str | None:
        parts = _unsign(self.auth.session_key, request.cookies.get(SESSION_COOKIE))
        if not parts or len(parts) != 3 or parts[0] != "s":
            return None
        name, issued = parts[1], parts[2]
        try:
            if time.time() - float(issued) > SESSION_DAYS * 86400:
                return None
        except ValueError:
            return None
        return name if name == ADMIN or self.store.has_user(name) else None

    def principal(self) -> Principal | Response | None:
        shares, viewable = self._views()
        header = request.headers.get("Authorization", "")
        if header:
            scheme, _, token = header.partition(" ")
            name = self.identify_token(token.strip()) if scheme.lower() == "bearer" else None
            if name is None:
                return _json_error(401, "auth: the bearer token is not valid (mistyped, or its "
                                        "user was removed); expected 'Authorization: Bearer "
                                        "<token>'", "auth")
            return Principal(name, shares, viewable, cookie=False)
        if not self.auth.enabled:
            return Principal(ADMIN, shares, viewable, cookie=False)
        name = self._session_name()
        if name is None and not shares:
            return None
        return Principal(name, shares, viewable, cookie=True)

    # -- the hooks --
    def before(self) -> Response | None:
        if not self.host_ok(request.host):
            return _json_error(400, f"host: got {request.host[:100]!r}; allowed: "
                                    f"{', '.join(sorted(self.hosts))} (any port; add names with "
                                    "serve --allowed-host NAME)", "host")
        if request.method in UNSAFE_METHODS and request.mimetype != "application/json" \
                and not (request.method == "DELETE" and not request.content_length):
            return _json_error(415, f"content-type: got {request.mimetype[:100]!r}; allowed: "
                                    "application/json", "content-type")
        if request.method == "GET" and "token" in request.args \
                and not request.path.startswith("/api/"):
            return self.sign_in()
        who = self.principal()
        if isinstance(who, Response):
            return who
        g.plab_principal = who
        if who is None:
            if request.path in PUBLIC_PATHS or request.path.startswith(VIEW_PREFIX):
                return None
            if g.get("plab_revoked"):
                return self.revoked()
            if request.path.startswith("/api/") or request.path == "/api":
                return _json_error(401, "auth: sign in first: send 'Authorization: Bearer "
                                        "<token>' (the token serve printed, or a user's)", "auth")
            return sign_in_page()
        if who.cookie and request.method in UNSAFE_METHODS:
            cookie, header = request.cookies.get(CSRF_COOKIE, ""), request.headers.get(CSRF_HEADER, "")
            if not cookie or not header or not same(cookie, header):
                return _json_error(403, f"csrf: the {CSRF_HEADER} header must repeat the "
                                        f"{CSRF_COOKIE} cookie (reload the page)", "csrf")
        return None

    @staticmethod
    def revoked() -> Response:
        if request.path.startswith("/api/"):
            return _json_error(403, "auth: this viewer link was revoked by its owner; ask for a "
                                    "new one, or sign in", "auth")
        return _page(403, "Plasticity Lab: link revoked", "<p>This viewer link was revoked by "
                     "its owner. Ask for a new one, or <a href='/?token='>sign in</a>.</p>")

    def sign_in(self) -> Response:
        """GET ?token=...: set the session cookie, then redirect to the same URL without it."""
        name = self.identify_token(request.args.get("token", ""))
        if name is None:
            return sign_in_page("That token is not valid (mistyped, or its user was removed).")
        rest = [(k, v) for k, v in request.args.items(multi=True) if k != "token"]
        response = redirect(request.path + (f"?{urlencode(rest)}" if rest else ""), code=303)
        _set_cookie(response, SESSION_COOKIE, _sign(self.auth.session_key,
                                                    f"s|{name}|{time.time():.0f}"))
        _ensure_csrf(response)
        return response

    def view(self, token: str) -> Response:
        """GET /view/<token>: a viewer cookie for that link, then the dashboard on its runs."""
        share = self.store.share_for_token(token)
        if share is None:
            return _page(403, "Plasticity Lab: link not valid", "<p>This viewer link was revoked "
                         "or is not valid. Ask its owner for a new one.</p>")
        runs = [r for r in share["runs"] if r]
        query = urlencode({"runs" if len(runs) > 1 else "run": ",".join(runs), "viewer": "1"})
        response = redirect(f"/?{query}", code=303)
        _set_cookie(response, VIEW_COOKIE, _sign(self.auth.session_key, f"v|{share['id']}"))
        _ensure_csrf(response)
        return response

    def csp(self) -> str:
        if self._csp is None:
            dash_app = self.server.extensions.get("plasticity_dashboard")
            hashes = " ".join(dash_app.csp_hashes()) if dash_app else ""  # quoted already
            policy = ("default-src 'self'; "
                      f"script-src 'self' {hashes}".rstrip() + "; "
                      "style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
                      "font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; "
                      "object-src 'none'; base-uri 'none'; form-action 'self'; "
                      "frame-ancestors 'none'")
            if dash_app is None:
                return policy  # the dashboard may be attached later: do not cache yet
            self._csp = policy
        return self._csp

    def after(self, response: Response) -> Response:
        headers = response.headers
        headers.setdefault("Content-Security-Policy", self.csp())
        headers["X-Frame-Options"] = "DENY"
        headers["X-Content-Type-Options"] = "nosniff"
        headers["Referrer-Policy"] = "no-referrer"
        who = g.get("plab_principal")
        if who is not None and who.cookie and response.status_code < 400:
            _ensure_csrf(response)
        return response


def install(server: Flask, auth: AuthSettings, store: AccessStore) -> Guard:
    """Put the guard in front of every route of ``server`` (API, dashboard, assets)."""
    guard = Guard(server, auth, store)
    server.extensions[AUTH_KEY] = auth
    server.extensions[ACCESS_KEY] = store
    server.extensions["plasticity_guard"] = guard
    server.before_request(guard.before)
    server.after_request(guard.after)
    server.add_url_rule(f"{VIEW_PREFIX}<token>", "plab_view", guard.view, methods=["GET"])
    return guard


def banner(url: str, auth: AuthSettings) -> str:
    """What ``serve`` prints: the one-click sign-in URL, or that sign-in is off."""
    if not auth.enabled:
        return (f"Plasticity Lab on {url} (API: {url}api/openapi.json)\n"
                "Sign-in is OFF (--no-auth): anyone who can reach this port can start, stop and "
                "delete runs. Use it on a trusted single-user machine only.")
    return (f"Plasticity Lab: open {url}?token={auth.token}\n"
            f"(API: {url}api/openapi.json with the header 'Authorization: Bearer <token>')")


__all__ = ["AuthSettings", "Guard", "Principal", "banner", "current", "install", "sign_in_page"]

