"""Command line: ``python -m app serve`` (also the ``plasticity-lab`` console script), and
``python -m app worker`` for the Celery mode (``serve --backend celery``).

Kept light at import time: spawned workers re-import the main module.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import signal
import sys
from typing import Any

REDIS_URL = "redis://127.0.0.1:6379/0"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="plasticity-lab", description="Plasticity Lab server")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="start the dashboard and the REST API")
    serve.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8050, help="port (default 8050)")
    serve.add_argument("--data-dir", default="data", help="runs database and files (default ./data)")
    serve.add_argument("--max-runs", type=int, default=4, help="concurrent runs at most (default 4)")
    serve.add_argument("--idle-release", type=float, default=600.0, metavar="SECONDS",
                       help="park (checkpoint, release the worker of) a run paused this long, "
                            "or running with nobody watching; play resumes it (default 600; "
                            "0: never)")
    serve.add_argument("--checkpoint-seconds", type=float, default=10.0, metavar="SECONDS",
                       help="automatic checkpoints every this many seconds of compute, as well "
                            "as every 20,000 steps (default 10)")
    serve.add_argument("--no-dashboard", action="store_true", help="serve the REST API only")
    serve.add_argument("--debug", action="store_true", help="Flask debug logging")
    serve.add_argument("--backend", choices=("local", "celery"), default="local",
                       help="local: embedded worker processes (default); celery: runs on "
                            "Celery workers, state in Redis")
    serve.add_argument("--redis-url", default=os.environ.get("PLASTICITY_REDIS_URL", REDIS_URL),
                       help=f"Redis for --backend celery (default {REDIS_URL})")
    serve.add_argument("--processes", type=int, default=1,
                       help="--backend celery: server processes behind gunicorn (default 1: "
                            "one threaded process)")
    worker = sub.add_parser("worker", help="start a Celery worker that hosts runs "
                                           "(for serve --backend celery)")
    worker.add_argument("--redis-url", default=os.environ.get("PLASTICITY_REDIS_URL", REDIS_URL),
                        help=f"the Redis the servers use (default {REDIS_URL})")
    worker.add_argument("--concurrency", type=int, default=None,
                        help="run slots (processes) on this host (default 8 per core)")
    worker.add_argument("--name", default=None,
                        help="worker name, unique per host; the host name is appended "
                             "(default plasticity-PID)")
    worker.add_argument("--loglevel", default="INFO", help="Celery log level (default INFO)")
    return parser


def attach_dashboard(server: Any, backend: Any) -> None:
    """Add the Dash dashboard to ``server`` when it is available (never fatal)."""
    try:
        import app.dashboard as dashboard
    except ImportError as exc:
        logging.getLogger("app").warning("no dashboard (%s): serving the REST API only", exc)
        return
    try:
        dashboard.build_dashboard(server, backend)
    except Exception:  # a broken dashboard must not take the API and the runs down
        logging.getLogger("app").exception("the dashboard failed to build: serving the "
                                           "REST API only")


def build_app(args: argparse.Namespace) -> tuple[Any, Any]:
    """The Flask server (with the dashboard when available) and its backend."""
    from app.server import create_server, make_backend

    kind = getattr(args, "backend", "local")
    lifecycle = {"idle_release": getattr(args, "idle_release", 600.0),
                 "checkpoint_seconds": getattr(args, "checkpoint_seconds", 10.0)}
    if kind == "local":
        server = create_server(data_dir=args.data_dir, max_runs=args.max_runs, **lifecycle)
    else:
        server = create_server(make_backend(kind, redis_url=args.redis_url,
                                            data_dir=args.data_dir, max_runs=args.max_runs,
                                            **lifecycle))
    backend = server.extensions["plasticity_backend"]
    if not args.no_dashboard:
        attach_dashboard(server, backend)
    return server, backend


def serve_gunicorn(args: argparse.Namespace) -> int:
    """``serve --backend celery --processes N``: N server processes behind gunicorn (this
    process becomes the gunicorn master)."""
    env = {**os.environ, "PLASTICITY_BACKEND": args.backend, "PLASTICITY_REDIS_URL": args.redis_url,
           "PLASTICITY_DATA_DIR": str(args.data_dir), "PLASTICITY_MAX_RUNS": str(args.max_runs),
           "PLASTICITY_IDLE_RELEASE": str(args.idle_release),
           "PLASTICITY_CHECKPOINT_SECONDS": str(args.checkpoint_seconds),
           "PLASTICITY_DASHBOARD": "0" if args.no_dashboard else "1"}
    argv = [sys.executable, "-m", "gunicorn", "-w", str(args.processes), "-k", "gthread",
            "--threads", "8", "-b", f"{args.host}:{args.port}", "--graceful-timeout", "10",
            "--log-level", "debug" if args.debug else "info", "app.server:wsgi_app()"]
    print(f"Plasticity Lab on http://{args.host}:{args.port}/ (API: /api/openapi.json), "
          f"{args.processes} server processes, runs on Celery workers via {args.redis_url}",
          flush=True)
    os.execve(sys.executable, argv, env)
    return 0  # not reached


def worker(args: argparse.Namespace) -> int:
    """``plasticity-lab worker``: a Celery worker (prefork: one process per run slot)."""
    if args.concurrency is not None and args.concurrency < 1:
        print(f"concurrency: got {args.concurrency}; allowed: >= 1", file=sys.stderr)
        return 2
    os.environ["PLASTICITY_REDIS_URL"] = args.redis_url
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from app.service.celery_app import QUEUE, app

    app.conf.plasticity_redis_url = args.redis_url
    app.conf.broker_url = args.redis_url
    slots = args.concurrency or 8 * (os.cpu_count() or 1)
    app.worker_main(["worker", "-Q", QUEUE, "-P", "prefork", "-c", str(slots), "-Ofair",
                     "--without-gossip", "--without-mingle", "--without-heartbeat",
                     "-n", f"{args.name or f'plasticity-{os.getpid()}'}@%h",
                     "--loglevel", args.loglevel])
    return 0


def serve(args: argparse.Namespace) -> int:
    if not 1 <= args.port <= 65535:
        print(f"port: got {args.port}; allowed: 1-65535", file=sys.stderr)
        return 2
    if args.max_runs < 1:
        print(f"max-runs: got {args.max_runs}; allowed: >= 1", file=sys.stderr)
        return 2
    if not 0 <= args.idle_release <= 10**7:
        print(f"idle-release: got {args.idle_release:g}; allowed: 0 (never) to 1e7 seconds",
              file=sys.stderr)
        return 2
    if not 0.1 <= args.checkpoint_seconds <= 10**7:
        print(f"checkpoint-seconds: got {args.checkpoint_seconds:g}; allowed: 0.1 to 1e7",
              file=sys.stderr)
        return 2
    if args.processes < 1 or (args.processes > 1 and args.backend != "celery"):
        print(f"processes: got {args.processes}; allowed: 1, or more with --backend celery",
              file=sys.stderr)
        return 2
    if args.processes > 1:
        return serve_gunicorn(args)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if not args.debug:
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server, backend = build_app(args)
    atexit.register(backend.shutdown)

    def stop(signum: int, frame: Any) -> None:
        backend.shutdown()
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    print(f"Plasticity Lab on http://{args.host}:{args.port}/ (API: /api/openapi.json)", flush=True)
    try:
        server.run(host=args.host, port=args.port, threaded=True, debug=False, use_reloader=False)
    finally:
        backend.shutdown()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return serve(args)
    if args.command == "worker":
        return worker(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
