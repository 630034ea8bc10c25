"""Small helpers shared by the service, API, Celery and browser tests."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

#: the sign-in token the tests start real servers with (``PLASTICITY_TOKEN``) and send
TOKEN = secrets.token_urlsafe(32)
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ROOT = Path(__file__).resolve().parents[1]


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


def http_json(url: str, body: Any = None, timeout: float = 10.0) -> tuple[int, Any]:
    """(status, parsed JSON) of a GET, or of a POST of ``body`` as JSON, signed in with TOKEN."""
    import json
    import urllib.error
    import urllib.request

    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST" if body is not None else "GET",
                                     headers={"Content-Type": "application/json", **AUTH})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@contextlib.contextmanager
def real_server(workdir: Path, *args: str) -> Iterator[tuple[str, subprocess.Popen]]:
    """``python -m app serve --no-dashboard`` on a free port with its data under ``workdir``
    and the extra CLI ``args``: yields (API base URL, process); stops it (SIGTERM) after."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PLASTICITY_TOKEN": TOKEN}
    log = open(workdir / "server.log", "wb")  # noqa: SIM115 - closed below; a pipe could fill
    proc = subprocess.Popen([sys.executable, "-m", "app", "serve", "--no-dashboard", "--port",
                             str(port), "--data-dir", str(workdir / "data"), *args],
                            cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/api"

    def up() -> bool:
        if proc.poll() is not None:
            log.flush()
            text = (workdir / "server.log").read_text(errors="replace")
            raise AssertionError(f"server exited: {text[-3000:]}")
        with contextlib.suppress(OSError):
            return http_json(f"{base}/openapi.json")[0] == 200
        return False

    try:
        wait_for(up, timeout=60, what="server up")
        yield base, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        log.close()
