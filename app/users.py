"""Who may do what: named users, run owners and viewer links, kept in ``<data-dir>/access.sqlite``.

    store = AccessStore(data_dir)
    token = store.add_user("ada")            # printed once; only its digest is stored
    store.user_for_token(token)              # "ada" (None for an unknown token)
    store.set_owner(run_id, "ada"); store.owner(run_id)
    share = store.add_share("ada", [run_id]) # {"id", "token", "runs", "owner", "created"}
    store.share_for_token(share["token"])    # the share, or None once revoked

Tokens (user and viewer) are 256-bit random values (``secrets.token_urlsafe(32)``). Guessing one
is hopeless, so a plain SHA-256 digest is enough to store them (no salt or slow hash is needed:
those defend low-entropy passwords against offline guessing); lookups go by digest and the final
comparison uses :func:`hmac.compare_digest` (constant time).

The admin (the token ``serve`` prints) is not stored here: it is the name :data:`ADMIN`.
Runs without an owner row (made before sign-in existed) belong to the admin.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

ADMIN = "admin"
NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
FILE = "access.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (name TEXT PRIMARY KEY, digest TEXT NOT NULL UNIQUE,
                                  created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS owners (run_id TEXT PRIMARY KEY, owner TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS shares (id TEXT PRIMARY KEY, digest TEXT NOT NULL UNIQUE,
                                   owner TEXT NOT NULL, runs TEXT NOT NULL, created REAL NOT NULL);
"""


def new_token() -> str:
    """A fresh 256-bit random token (URL-safe text)."""
    return secrets.token_urlsafe(32)


def digest(token: str) -> str:
    """SHA-256 hex digest of a token (enough for 256-bit random tokens: see the module doc)."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def same(a: str, b: str) -> bool:
    """Constant-time string comparison."""
    return hmac.compare_digest(a.encode("utf-8", "surrogatepass"), b.encode("utf-8", "surrogatepass"))


def check_name(name: str) -> str:
    """A valid user name or ValueError naming the field and the rule."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ValueError(f"name: got {str(name)[:100]!r}; allowed: 1-64 of A-Z a-z 0-9 _ . -")
    if name == ADMIN:
        raise ValueError(f"name: {ADMIN!r} is the server's own token (serve --token); pick another")
    return name


#: how long a viewer link's record is reused without reading the file again (s)
SHARE_CACHE_S = 2.0


class AccessStore:
    """Users (hashed tokens), run owners and viewer links in one small SQLite file."""

    def __init__(self, data_dir: str | Path) -> None:
        self.path = Path(data_dir) / FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._shares: dict[str, tuple[float, dict[str, Any] | None]] = {}
        with self._connect() as db:
            db.executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=10, isolation_level=None)
        db.execute("PRAGMA busy_timeout=10000")
        return db

    def _run(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            db = self._connect()
            try:
                return db.execute(sql, args).fetchall()
            finally:
                db.close()

    # ---- users ------------------------------------------------------------------------------
    def add_user(self, name: str) -> str:
        """Add ``name`` and return its token (stored only as a digest). ValueError if taken."""
        check_name(name)
        token = new_token()
        try:
            self._run("INSERT INTO users VALUES (?, ?, ?)", (name, digest(token), time.time()))
        except sqlite3.IntegrityError:
            raise ValueError(f"name: a user {name!r} exists already (remove it first)") from None
        return token

    def remove_user(self, name: str) -> bool:
        """Remove a user (their token stops working at once); False if there was none."""
        found = bool(self._run("SELECT 1 FROM users WHERE name = ?", (name,)))
        self._run("DELETE FROM users WHERE name = ?", (name,))
        return found

    def users(self) -> list[dict[str, Any]]:
        return [{"name": n, "created": c}
                for n, c in self._run("SELECT name, created FROM users ORDER BY name")]

    def has_user(self, name: str) -> bool:
        return bool(self._run("SELECT 1 FROM users WHERE name = ?", (name,)))

    def user_for_token(self, token: str) -> str | None:
        d = digest(token)
        rows = self._run("SELECT name, digest FROM users WHERE digest = ?", (d,))
        return rows[0][0] if rows and same(rows[0][1], d) else None

    # ---- owners -----------------------------------------------------------------------------
    def set_owner(self, run_id: str, owner: str) -> None:
        self._run("INSERT OR REPLACE INTO owners VALUES (?, ?)", (run_id, owner))

    def owner(self, run_id: str) -> str:
        rows = self._run("SELECT owner FROM owners WHERE run_id = ?", (run_id,))
        return rows[0][0] if rows else ADMIN

    def owners(self) -> dict[str, str]:
        return dict(self._run("SELECT run_id, owner FROM owners"))

    def forget_run(self, run_id: str) -> None:
        self._run("DELETE FROM owners WHERE run_id = ?", (run_id,))

    # ---- viewer links -----------------------------------------------------------------------
    def add_share(self, owner: str, runs: list[str]) -> dict[str, Any]:
        """A new read-only link to ``runs``: the record with its token (shown once here)."""
        token = new_token()
        d = digest(token)
        share = {"id": d[:16], "owner": owner, "runs": list(runs), "created": time.time()}
        self._run("INSERT INTO shares VALUES (?, ?, ?, ?, ?)",
                  (share["id"], d, owner, ",".join(runs), share["created"]))
        return {**share, "token": token}

    @staticmethod
    def _share(row: tuple) -> dict[str, Any]:
        sid, _, owner, runs, created = row
        return {"id": sid, "owner": owner, "runs": runs.split(",") if runs else [], "created": created}

    def share_for_token(self, token: str) -> dict[str, Any] | None:
        d = digest(token)
        rows = self._run("SELECT * FROM shares WHERE digest = ?", (d,))
        return self._share(rows[0]) if rows and same(rows[0][1], d) else None

    def share(self, share_id: str) -> dict[str, Any] | None:
        """The link ``share_id`` (None: revoked or unknown). Every request of a viewer asks
        this, so an answer is kept for SHARE_CACHE_S (a class of viewers polling must not queue
        on this file); revoking here drops it at once (another server process: within that)."""
        now = time.monotonic()
        hit = self._shares.get(share_id)
        if hit is not None and hit[0] > now:
            return hit[1]
        rows = self._run("SELECT * FROM shares WHERE id = ?", (share_id,))
        share = self._share(rows[0]) if rows else None
        if len(self._shares) > 10_000:
            self._shares.clear()
        self._shares[share_id] = (now + SHARE_CACHE_S, share)
        return share

    def shares(self, owner: str | None = None) -> list[dict[str, Any]]:
        """Every link (of ``owner`` only when given), newest first."""
        if owner is None:
            rows = self._run("SELECT * FROM shares ORDER BY created DESC")
        else:
            rows = self._run("SELECT * FROM shares WHERE owner = ? ORDER BY created DESC", (owner,))
        return [self._share(r) for r in rows]

    def remove_share(self, share_id: str) -> None:
        self._run("DELETE FROM shares WHERE id = ?", (share_id,))
        self._shares.pop(share_id, None)
