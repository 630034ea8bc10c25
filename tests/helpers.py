"""Small helpers shared by the service, API, Celery and browser tests."""

from __future__ import annotations

import secrets
import socket
import time
from collections.abc import Callable
from typing import Any

#: the sign-in token the tests start real servers with (``PLASTICITY_TOKEN``) and send
TOKEN = secrets.token_urlsafe(32)
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition",
             every: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy (returned) or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
