"""Who may touch which run: a Backend wrapper that both the REST API and the dashboard use.

``GuardedBackend(inner, store, auth)`` asks :func:`app.security.current` who is calling (set
by the request guard) and:

- records the creator of every run (create, branch, copy) as its owner in the AccessStore;
- lists only the runs the caller may read: the admin all, a user their own plus the runs of
  the viewer links they opened, a viewer the shared runs only (each info gains "owner");
- lets the owner and the admin control, export and delete; a viewer link reads info, frames
  and history only (403 otherwise); a run the caller may not read answers 404 (unknown);
- enforces ``max_user_runs`` (active runs: ACTIVE_STATUSES, per named user) before create,
  resume and branch, with a 409 naming the limit.

Calls from outside a request (the server's own threads, tests on the backend) have full access.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Any

from app.security import AuthSettings, Principal, current
from app.service.base import ACTIVE_STATUSES, Backend, LimitReached, RunNotFound, ServiceError
from app.users import ADMIN, AccessStore


class Forbidden(ServiceError):
    """Signed in, but not allowed to do this (a viewer link, someone else's run)."""

    http_status = 403


VIEWER_READ_ONLY = ("auth: this is a read-only viewer link: it shows the shared runs but cannot "
                    "change them; sign in (your own token) to run your own")
COPY_NEEDS_SIGN_IN = ("auth: sign in (open the link serve printed, or use a token from "
                      "'plasticity-lab users add NAME') to make your own copy; a viewer link "
                      "only watches")


class GuardedBackend(Backend):
    """``inner`` with ownership, viewer links and per-user quotas (see the module doc)."""

    def __init__(self, inner: Backend, store: AccessStore, auth: AuthSettings) -> None:
        self.inner, self.store, self.auth = inner, store, auth
        self.settings = inner.settings
        self._quota_lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:  # anything else the inner backend offers
        return getattr(self.inner, name)

    # ---- checks -------------------------------------------------------------------------------
    def _may_read(self, who: Principal | None, run_id: str) -> bool:
        if who is None or who.admin or run_id in who.viewable:
            return True
        return who.name is not None and self.store.owner(run_id) == who.name

    def _may_write(self, who: Principal | None, run_id: str) -> bool:
        return who is None or who.admin or (who.name is not None
                                            and self.store.owner(run_id) == who.name)

    def readable(self, run_id: str) -> Principal | None:
        who = current()
        if not self._may_read(who, run_id):
            raise RunNotFound(run_id)
        return who

    def writable(self, run_id: str) -> Principal | None:
        who = self.readable(run_id)
        if not self._may_write(who, run_id):
            if who is not None and who.name is None:
                raise Forbidden(VIEWER_READ_ONLY, field="auth")
            raise Forbidden(f"auth: run {run_id} belongs to {self.store.owner(run_id)!r}; only "
                            "its owner and the admin may change it (make your own copy)",
                            field="auth")
        return who

    @staticmethod
    def owner_name(who: Principal | None) -> str:
        if who is not None and who.name is None:
            raise Forbidden(VIEWER_READ_ONLY, field="auth")
        return who.name if who is not None and who.name else ADMIN

    def user_limit(self) -> int | None:
        return self.auth.max_user_runs

    def _counting(self, owner: str) -> contextlib.AbstractContextManager[Any]:
        """The lock that makes check-then-create atomic, only where a quota applies."""
        if self.user_limit() is None or owner == ADMIN:
            return contextlib.nullcontext()
        return self._quota_lock

    def check_quota(self, owner: str, adding: int = 1) -> None:
        """409 when ``owner`` (a named user) would go over --max-user-runs."""
        limit = self.user_limit()
        if limit is None or owner == ADMIN:
            return
        owners = self.store.owners()
        active = sum(1 for info in self.inner.list_runs()
                     if info["status"] in ACTIVE_STATUSES and owners.get(info["id"]) == owner)
        if active + adding > limit:
            raise LimitReached(f"max-user-runs: {owner!r} has {active} active runs (ready, running "
                               f"or paused); this server allows {limit} per user "
                               "(--max-user-runs): stop one first", field="max-user-runs")

    def _with_owner(self, info: dict[str, Any], owner: str) -> dict[str, Any]:
        return {**info, "owner": owner}

    # ---- Backend ------------------------------------------------------------------------------
    def create(self, config: dict[str, Any], *, start: bool = True, view: dict | None = None,
               parent: str | None = None, **kwargs: Any) -> str:
        owner = self.owner_name(current())
        with self._counting(owner):
            self.check_quota(owner)
            run_id = self.inner.create(config, start=start, view=view, parent=parent, **kwargs)
            self.store.set_owner(run_id, owner)
        return run_id

    def list_runs(self) -> list[dict[str, Any]]:
        who, owners = current(), self.store.owners()
        out = []
        for info in self.inner.list_runs():
            rid = info["id"]
            if who is None or who.admin or rid in who.viewable or (
                    who.name is not None and owners.get(rid, ADMIN) == who.name):
                out.append(self._with_owner(info, owners.get(rid, ADMIN)))
        return out

    def get(self, run_id: str) -> dict[str, Any]:
        self.readable(run_id)
        return self._with_owner(self.inner.get(run_id), self.store.owner(run_id))

    def frames(self, run_id: str, after: int = -1) -> tuple[list[dict[str, Any]], int]:
        self.readable(run_id)
        return self.inner.frames(run_id, after)

    def history(self, run_id: str, max_points: int = 500, **kwargs: Any) -> dict[str, Any]:
        self.readable(run_id)
        return self.inner.history(run_id, max_points, **kwargs)

    def control(self, run_id: str, action: str, **params: Any) -> dict[str, Any]:
        who = self.writable(run_id)
        owner = self.store.owner(run_id)
        if action in ("resume", "branch"):
            with self._counting(self.owner_name(who) if action == "branch" else owner):
                if action == "branch" or self.inner.get(run_id)["status"] not in ACTIVE_STATUSES:
                    self.check_quota(self.owner_name(who) if action == "branch" else owner)
                result = self.inner.control(run_id, action, **params)
                if action == "branch" and result.get("id"):
                    self.store.set_owner(result["id"], self.owner_name(who))
            return result
        return self.inner.control(run_id, action, **params)

    def copy(self, run_id: str, **params: Any) -> dict[str, Any]:
        """Branch a run the caller may read into the caller's own runs (and quota)."""
        who = self.readable(run_id)
        if who is not None and who.name is None:
            raise Forbidden(COPY_NEEDS_SIGN_IN, field="auth")
        owner = self.owner_name(who)
        with self._counting(owner):
            self.check_quota(owner)
            result = self.inner.control(run_id, "branch", **params)
            if result.get("id"):
                self.store.set_owner(result["id"], owner)
        return result

    def export_csv(self, run_id: str) -> Path:
        self.writable(run_id)
        return self.inner.export_csv(run_id)

    def export_config(self, run_id: str) -> dict[str, Any]:
        self.writable(run_id)
        return self.inner.export_config(run_id)

    def delete(self, run_id: str) -> None:
        self.writable(run_id)
        self.inner.delete(run_id)
        self.store.forget_run(run_id)

    def shutdown(self) -> None:
        self.inner.shutdown()
