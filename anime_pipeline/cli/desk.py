"""``anime-pipeline desk``: the producer's desk, a web app for reviewing episodes (see
``anime_pipeline/desk``). Reads the environment here and nowhere else: the tokens
(``ANIME_PIPELINE_DESK_TOKENS``), the secret, the storage, the ledger, the Dagster UI's URL.
Prints where it listens; stops cleanly on SIGTERM or Ctrl-C (exit 0). Exit codes: 0 stopped,
1 could not start (no tokens, a malformed token list, a port in use), 2 bad usage.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from typing import Any

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8787


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def make_server(app: Any) -> Any:
    """A uvicorn server for ``app`` that stops on SIGTERM or SIGINT (in the main thread) or
    when told (``should_exit = True``) and then exits 0; its access log is off (links carry
    their signatures in the query)."""
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # uvicorn re-raises the signal after shutting down (exit status 143); a desk
            # stopped on purpose exits 0
            if threading.current_thread() is not threading.main_thread():
                yield
                return

            def stop(_signum: int, _frame: Any) -> None:
                self.should_exit = True

            previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    config = uvicorn.Config(app, log_level="warning", access_log=False, proxy_headers=True,
                            timeout_graceful_shutdown=10, lifespan="off")
    return Server(config)


def serve(app: Any, sock: socket.socket) -> None:
    """Serve ``app`` on the listening ``sock`` until stopped (see :func:`make_server`)."""
    make_server(app).run(sockets=[sock])


def cmd_desk(args: argparse.Namespace) -> int:
    from anime_pipeline.desk.app import create_app
    from anime_pipeline.desk.auth import DeskConfigError
    from anime_pipeline.desk.config import DeskSettings
    from anime_pipeline.desk.signing import MAX_LINK_TTL_S, MIN_LINK_TTL_S
    from anime_pipeline.ops.notify import NotifierConfigError

    if args.link_ttl is not None and not MIN_LINK_TTL_S <= args.link_ttl <= MAX_LINK_TTL_S:
        _say(f"desk: --link-ttl: {MIN_LINK_TTL_S} to {MAX_LINK_TTL_S} seconds")
        return 2
    try:
        settings = DeskSettings.from_environ(os.environ, home=args.home,
                                             ledger_url=args.ledger_url,
                                             link_ttl_s=args.link_ttl)
        app = create_app(settings)
    except (DeskConfigError, NotifierConfigError) as e:
        _say(f"desk: {e}")
        return 1
    except ValueError as e:  # the settings themselves (pydantic)
        _say(f"desk: {e}")
        return 2
    except Exception as e:  # the reason, not a traceback
        _say(f"desk: failed: {type(e).__name__}: {e}")
        return 1
    try:
        sock = listen(args.host, args.port)
    except OSError as e:
        _say(f"desk: cannot listen on {args.host}:{args.port}: {e.strerror or e}")
        return 1
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    storage = settings.storage
    where = (f"s3://{storage.bucket}/{storage.prefix}" if storage.kind == "s3"
             else str(storage.root))
    _say(f"desk: artifacts {where}; pipeline home {settings.home}")
    print(f"desk: serving http://{shown}:{port}/", flush=True)
    try:
        serve(app, sock)
    finally:
        sock.close()
    _say("desk: stopped")
    return 0


def add_subcommands(sub: Any) -> None:
    """Add ``desk`` to ``sub`` (from ``add_subparsers``)."""
    d = sub.add_parser("desk", help="the producer's desk: review episodes in a browser",
                       description="Serve the desk. Needs ANIME_PIPELINE_DESK_TOKENS="
                                   '"TOKEN=SCOPE,..." (SCOPE: a tenant or tenant/project).')
    d.add_argument("--host", default=DEFAULT_HOST,
                   help=f"address to listen on (default {DEFAULT_HOST}; 0.0.0.0 in a pod)")
    d.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help=f"port (default {DEFAULT_PORT}; 0: any free port, printed)")
    d.add_argument("--home", help="pipeline home (default $ANIME_PIPELINE_HOME, else the "
                                  "project's .anime_pipeline)")
    d.add_argument("--ledger-url", help="SQLAlchemy URL of the ledger (default "
                                        "$ANIME_PIPELINE_LEDGER_URL, else SQLite under the "
                                        "pipeline home)")
    d.add_argument("--link-ttl", type=int, metavar="SECONDS",
                   help="how long download links stay valid (default 3600)")
    d.set_defaults(func=cmd_desk)
