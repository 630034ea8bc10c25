"""Command line: ``python -m app serve`` (also the ``plasticity-lab`` console script).

Kept light at import time: spawned workers re-import the main module.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import signal
import sys
from typing import Any


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="plasticity-lab", description="Plasticity Lab server")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="start the dashboard and the REST API")
    serve.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8050, help="port (default 8050)")
    serve.add_argument("--data-dir", default="data", help="runs database and files (default ./data)")
    serve.add_argument("--max-runs", type=int, default=4, help="concurrent runs at most (default 4)")
    serve.add_argument("--no-dashboard", action="store_true", help="serve the REST API only")
    serve.add_argument("--debug", action="store_true", help="Flask debug logging")
    return parser


def build_app(args: argparse.Namespace) -> tuple[Any, Any]:
    """The Flask server (with the dashboard when available) and its backend."""
    from app.server import create_server

    server = create_server(data_dir=args.data_dir, max_runs=args.max_runs)
    backend = server.extensions["plasticity_backend"]
    if not args.no_dashboard:
        try:
            import app.dashboard as dashboard
        except ImportError as exc:
            logging.getLogger("app").warning("no dashboard (%s): serving the REST API only", exc)
        else:
            try:
                dashboard.build_dashboard(server, backend)
            except Exception:  # a broken dashboard must not take the API and the runs down
                logging.getLogger("app").exception("the dashboard failed to build: serving the "
                                                   "REST API only")
    return server, backend


def serve(args: argparse.Namespace) -> int:
    if not 1 <= args.port <= 65535:
        print(f"port: got {args.port}; allowed: 1-65535", file=sys.stderr)
        return 2
    if args.max_runs < 1:
        print(f"max-runs: got {args.max_runs}; allowed: >= 1", file=sys.stderr)
        return 2
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
    return 2


if __name__ == "__main__":
    sys.exit(main())
