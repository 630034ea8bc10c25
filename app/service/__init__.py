"""The run service: simulations in background workers behind one Backend interface.

    from app.service import LocalBackend, BackendSettings
    backend = LocalBackend(BackendSettings(data_dir=Path("data")))
    run_id = backend.create({"task": "add", "rule": "dni-b", "n": 32})
    frames, cursor = backend.frames(run_id, after=-1)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from app.service.base import (
    ACTIONS,
    ACTIVE_STATUSES,
    RUN_KEYS,
    Backend,
    BackendSettings,
    ConfigError,
    Conflict,
    InsufficientStorage,
    LimitReached,
    RunNotFound,
    ServiceError,
    Unavailable,
)

if TYPE_CHECKING:
    from app.service.local import LocalBackend

__all__ = [
    "ACTIONS",
    "ACTIVE_STATUSES",
    "RUN_KEYS",
    "Backend",
    "BackendSettings",
    "ConfigError",
    "Conflict",
    "InsufficientStorage",
    "LimitReached",
    "LocalBackend",
    "RunNotFound",
    "ServiceError",
    "Unavailable",
]


def __getattr__(name: str) -> Any:
    """Import the local backend lazily (it pulls in multiprocessing and the store)."""
    if name == "LocalBackend":
        from app.service.local import LocalBackend

        return LocalBackend
    raise AttributeError(name)
