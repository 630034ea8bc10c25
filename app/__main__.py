"""Command line: ``python -m app serve`` (also the ``plasticity-lab`` console script),
``python -m app worker`` for the Celery mode (``serve --backend celery``), and
``python -m app doctor --data-dir D`` to check and repair a data directory.

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
SERVER_THREADS = 16      # waitress: requests handled at once (sockets wait on the event loop)
CHANNEL_TIMEOUT = 30.0   # waitress: seconds before an inactive connection is closed
CONNECTION_LIMIT = 1000  # waitress: open connections at most

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20, "g": 1 << 30, "gib": 1 << 30,
          "t": 1 << 40, "tib": 1 << 40}


def _size(text: str) -> int:
    """"3GB", "512MiB", "64M", "1e15", "0" -> an integer (kB, MB, GB: decimal; K, M, G and
    KiB, MiB, GiB: binary, as the messages print them)."""
    raw = text.strip().lower().replace("_", "").replace(",", "")
    number = raw.rstrip("kmgtib")
    unit = raw[len(number):]
    try:
        value = float(number) * _UNITS[unit]
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(
            f"got {text[:40]!r}; allowed: a number with an optional unit (B, kB, MB, GB, TB; "
            "K, M, G, T or KiB, MiB, GiB, TiB), 0: no limit") from None
    if not 0 <= value < 1e21:
        raise argparse.ArgumentTypeError(f"got {text[:40]!r}; allowed: 0 to 1e21")
    return int(value)


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
    serve.add_argument("--max-disk", type=_size, default=None, metavar="SIZE",
                       help="bytes the data directory may hold in all, e.g. 20G (default: "
                            "what it holds plus the disk's free space, minus 5%% of the disk, "
                            "at least 256M); a run that may not fit is refused (507)")
    serve.add_argument("--history-budget", type=_size, default=64 << 20, metavar="SIZE",
                       help="per-step CSV history per run, e.g. 64M (default): full resolution "
                            "up to half of it, then means over blocks of steps; 0: no limit")
    serve.add_argument("--keep-checkpoints", type=int, default=3, metavar="N",
                       help="automatic checkpoints kept per run (default 3; named ones stay)")
    serve.add_argument("--token", default=os.environ.get("PLASTICITY_TOKEN") or None,
                       help="the sign-in token (the admin's; default: $PLASTICITY_TOKEN, else a "
                            "new random one, printed in the sign-in URL)")
    serve.add_argument("--no-auth", action="store_true",
                       help="no sign-in: anyone who reaches the port is the admin (a trusted "
                            "single-user machine only)")
    serve.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                       help="a Host name the server answers besides localhost, 127.0.0.1 and "
                            "[::1] (repeatable; for a lab server reached by name or address)")
    serve.add_argument("--max-user-runs", type=int, default=None,
                       help="active runs (ready, running, paused) per named user (default: half "
                            "of --max-runs, at least 1; 0: no per-user limit)")
    users = sub.add_parser("users", help="named users of a server (tokens stored hashed)")
    users_sub = users.add_subparsers(dest="users_command", required=True)
    for verb, text in (("add", "add a user and print their token (once)"),
                       ("list", "list the users"), ("remove", "remove a user (their token stops "
                                                               "working at once)")):
        cmd = users_sub.add_parser(verb, help=text)
        if verb != "list":
            cmd.add_argument("name", help="user name: 1-64 of A-Z a-z 0-9 _ . -")
        cmd.add_argument("--data-dir", default="data", help="the server's data dir (default ./data)")
    serve.add_argument("--max-run-memory", type=_size, default=None, metavar="SIZE",
                       help="estimated peak memory one run may take, e.g. 3GB (default: a "
                            "quarter of this machine's RAM; 0: no limit)")
    serve.add_argument("--max-total-memory", type=_size, default=None, metavar="SIZE",
                       help="estimated memory of all active runs together (default: half of "
                            "the RAM; 0: no limit)")
    serve.add_argument("--max-run-work", type=_size, default=None, metavar="FLOP",
                       help="floating-point work of one run, flops per step x steps, e.g. 1e15 "
                            "(the default; 0: no limit)")
    serve.add_argument("--threads", type=int, default=SERVER_THREADS,
                       help=f"request threads of the server (default {SERVER_THREADS})")
    serve.add_argument("--channel-timeout", type=float, default=CHANNEL_TIMEOUT,
                       metavar="SECONDS", help="close a connection idle (or sending nothing) "
                                               f"this long (default {CHANNEL_TIMEOUT:g})")
    serve.add_argument("--connection-limit", type=int, default=CONNECTION_LIMIT,
                       help=f"open connections at most (default {CONNECTION_LIMIT})")
    worker = sub.add_parser("worker", help="start a Celery worker that hosts runs "
                                           "(for serve --backend celery)")
    worker.add_argument("--redis-url", default=os.environ.get("PLASTICITY_REDIS_URL", REDIS_URL),
                        help=f"the Redis the servers use (default {REDIS_URL})")
    worker.add_argument("--concurrency", type=int, default=None,
                        help="run slots (processes) on this host (default: 2 per core, at "
                             "most one per GiB of RAM)")
    worker.add_argument("--name", default=None,
                        help="worker name, unique per host; the host name is appended "
                             "(default plasticity-PID)")
    worker.add_argument("--loglevel", default="INFO", help="Celery log level (default INFO)")
    doctor = sub.add_parser("doctor", help="check a data directory and repair it (rebuild the "
                                           "index from run folders, drop damaged checkpoints)")
    doctor.add_argument("--data-dir", default="data", help="the data directory (default ./data)")
    doctor.add_argument("--check", action="store_true", help="report only, change nothing")
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
    auth = auth_settings(args)
    settings = {key: getattr(args, key, None)
                for key in ("max_run_memory", "max_total_memory", "max_run_work", "max_disk")}
    settings["history_budget"] = getattr(args, "history_budget", 64 << 20)
    settings["keep_checkpoints"] = getattr(args, "keep_checkpoints", 3)
    settings["idle_release"] = getattr(args, "idle_release", 600.0)
    settings["checkpoint_seconds"] = getattr(args, "checkpoint_seconds", 10.0)
    if kind == "local":
        server = create_server(data_dir=args.data_dir, max_runs=args.max_runs, auth=auth,
                               **settings)
    else:
        server = create_server(make_backend(kind, redis_url=args.redis_url,
                                            data_dir=args.data_dir, max_runs=args.max_runs,
                                            **settings), auth=auth)
    backend = server.extensions["plasticity_backend"]
    if not args.no_dashboard:
        attach_dashboard(server, backend)
    return server, backend


WILDCARD_HOSTS = ("0.0.0.0", "::", "")


def auth_settings(args: argparse.Namespace) -> Any:
    """serve's sign-in settings (a random token unless --token / $PLASTICITY_TOKEN)."""
    from app.security import LOCAL_HOSTS, AuthSettings

    hosts = list(args.allowed_host)
    bind = args.host if ":" not in args.host else f"[{args.host}]"
    if args.host not in WILDCARD_HOSTS and bind not in LOCAL_HOSTS:
        hosts.append(bind)  # the address the server was asked to listen on
    quota = args.max_user_runs
    if quota is None:
        quota = max(1, args.max_runs // 2)
    extra = {"token": args.token} if args.token else {}
    settings = AuthSettings(enabled=not args.no_auth, allowed_hosts=tuple(hosts),
                            max_user_runs=quota or None, **extra)
    args.token = settings.token  # the same token for gunicorn's processes
    return settings


def _url(args: argparse.Namespace) -> str:
    host = "127.0.0.1" if args.host in WILDCARD_HOSTS else args.host
    return f"http://{host if ':' not in host else f'[{host}]'}:{args.port}/"


def users(args: argparse.Namespace) -> int:
    """``plasticity-lab users add|list|remove``: named users in the data dir."""
    from app.users import AccessStore

    store = AccessStore(args.data_dir)
    if args.users_command == "add":
        try:
            token = store.add_user(args.name)
        except ValueError as err:
            print(err, file=sys.stderr)
            return 2
        print(f"user {args.name!r} added; their token (shown once, stored hashed):\n{token}\n"
              f"They sign in by opening http://HOST:PORT/?token={token} or with the header "
              "'Authorization: Bearer <token>'.")
        return 0
    if args.users_command == "remove":
        if not store.remove_user(args.name):
            print(f"name: no user {args.name!r}", file=sys.stderr)
            return 1
        print(f"user {args.name!r} removed (their token no longer works)")
        return 0
    for user in store.users():
        print(user["name"])
    return 0


def serve_gunicorn(args: argparse.Namespace) -> int:
    """``serve --backend celery --processes N``: N server processes behind gunicorn (this
    process becomes the gunicorn master)."""
    from app.security import banner

    auth = auth_settings(args)
    env = {**os.environ, "PLASTICITY_BACKEND": args.backend, "PLASTICITY_REDIS_URL": args.redis_url,
           "PLASTICITY_DATA_DIR": str(args.data_dir), "PLASTICITY_MAX_RUNS": str(args.max_runs),
           "PLASTICITY_IDLE_RELEASE": str(args.idle_release),
           "PLASTICITY_CHECKPOINT_SECONDS": str(args.checkpoint_seconds),
           "PLASTICITY_DASHBOARD": "0" if args.no_dashboard else "1",
           "PLASTICITY_TOKEN": auth.token, "PLASTICITY_NO_AUTH": "0" if auth.enabled else "1",
           "PLASTICITY_ALLOWED_HOSTS": ",".join(auth.allowed_hosts),
           "PLASTICITY_MAX_USER_RUNS": str(auth.max_user_runs or "")}
    for key in ("max_run_memory", "max_total_memory", "max_run_work"):
        if getattr(args, key) is not None:
            env[f"PLASTICITY_{key.upper()}"] = str(getattr(args, key))
    argv = [sys.executable, "-m", "gunicorn", "-w", str(args.processes), "-k", "gthread",
            "--threads", "8", "-b", f"{args.host}:{args.port}", "--graceful-timeout", "10",
            "--log-level", "debug" if args.debug else "info", "app.server:wsgi_app()"]
    print(f"{banner(_url(args), auth)}\n{args.processes} server processes, runs on Celery "
          f"workers via {args.redis_url}", flush=True)
    os.execve(sys.executable, argv, env)
    return 0  # not reached


CELERY_HINT = "the Celery backend needs: pip install -e '.[celery]'"


def missing_celery_extra() -> str | None:
    """None when the ``[celery]`` extra is importable, else the one-line hint to print."""
    for module in ("celery", "redis"):
        try:
            __import__(module)
        except ImportError:
            return f"{CELERY_HINT} ({module} is not installed)"
    return None


def worker(args: argparse.Namespace) -> int:
    """``plasticity-lab worker``: a Celery worker (prefork: one process per run slot)."""
    hint = missing_celery_extra()
    if hint:
        print(hint, file=sys.stderr)
        return 2
    if args.concurrency is not None and args.concurrency < 1:
        print(f"concurrency: got {args.concurrency}; allowed: >= 1", file=sys.stderr)
        return 2
    os.environ["PLASTICITY_REDIS_URL"] = args.redis_url
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from app.service.celery_app import QUEUE, app

    app.conf.plasticity_redis_url = args.redis_url
    app.conf.broker_url = args.redis_url
    from app.service.celery_app import default_concurrency

    slots = args.concurrency or default_concurrency()
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
    if args.max_user_runs is not None and args.max_user_runs < 0:
        print(f"max-user-runs: got {args.max_user_runs}; allowed: >= 0 (0: no per-user limit)",
              file=sys.stderr)
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
    if args.keep_checkpoints < 1:
        print(f"keep-checkpoints: got {args.keep_checkpoints}; allowed: >= 1", file=sys.stderr)
        return 2
    for name, low in (("threads", 1), ("connection_limit", 1)):
        if getattr(args, name) < low:
            print(f"{name.replace('_', '-')}: got {getattr(args, name)}; allowed: >= {low}",
                  file=sys.stderr)
            return 2
    if not 0.5 <= args.channel_timeout <= 3600:
        print(f"channel-timeout: got {args.channel_timeout:g}; allowed: 0.5 to 3600 seconds",
              file=sys.stderr)
        return 2
    hint = missing_celery_extra() if args.backend == "celery" else None
    if hint:
        print(hint, file=sys.stderr)
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
    from app.security import AUTH_KEY, banner

    print(banner(_url(args), server.extensions[AUTH_KEY]), flush=True)
    if args.host in WILDCARD_HOSTS and not args.allowed_host:
        print("Note: other machines reach this server only by a name given with "
              "--allowed-host NAME (Host allow-list against DNS rebinding)", flush=True)
    try:
        run_waitress(server, args)
    finally:
        backend.shutdown()
    return 0


def doctor(args: argparse.Namespace) -> int:
    """``plasticity-lab doctor``: print what was found and done; 0 when nothing is left."""
    from app.service.doctor import doctor as run_doctor

    lines, left = run_doctor(args.data_dir, check_only=args.check)
    for line in lines:
        print(line)
    return 1 if left else 0


def run_waitress(server: Any, args: argparse.Namespace) -> None:
    """The production WSGI server: an event loop holds the connections (an idle or half-open
    one costs a socket, not a thread), a bounded pool of threads runs requests, inactive
    connections close after --channel-timeout, bodies over MAX_REQUEST_BODY are refused
    (413) before they reach the app, chunked or not."""
    from waitress import serve as waitress_serve

    from app.server import MAX_REQUEST_BODY

    waitress_serve(server, host=args.host, port=args.port, threads=args.threads,
                   channel_timeout=args.channel_timeout,
                   cleanup_interval=max(0.5, min(30.0, args.channel_timeout / 2)),
                   connection_limit=args.connection_limit, asyncore_use_poll=True,
                   max_request_body_size=MAX_REQUEST_BODY, ident="plasticity-lab",
                   _quiet=not args.debug)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return serve(args)
    if args.command == "worker":
        return worker(args)
    if args.command == "users":
        return users(args)
    if args.command == "doctor":
        return doctor(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
