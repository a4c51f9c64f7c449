"""``anime-pipeline metrics serve``: the Prometheus endpoint of the pipeline.

Serves ``/metrics`` (Prometheus text format, ``prometheus_client``'s WSGI server) for the
instance (``$DAGSTER_HOME``, else the project's ``.dagster``), the usage ledger
(``--ledger-url``, ``$ANIME_PIPELINE_LEDGER_URL``, else SQLite under the pipeline home) and the
runtime state folder (the pipeline home). Every value is read at scrape time
(:mod:`anime_pipeline.ops.metrics`). Prints where it listens; stops cleanly on SIGTERM or
Ctrl-C (exit 0). Exit codes: 0 stopped, 1 could not start, 2 bad usage.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9467


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _safe_url(url: str) -> str:
    import sqlalchemy as sa

    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparsable URL>"


def serve(host: str, port: int, collector: Any, stop: threading.Event,
          announce: Callable[[str], None] = print) -> int:
    """Serve ``collector`` on ``host:port`` until ``stop`` is set; the port it listened on."""
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    server, thread = start_http_server(port, addr=host, registry=registry)
    bound = int(server.server_address[1])
    shown = f"[{host}]" if ":" in host else host
    warm = threading.Thread(target=collector.catch_up, args=(stop,), name="metrics-catch-up",
                            daemon=True)
    warm.start()
    announce(f"metrics: serving http://{shown}:{bound}/metrics")
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        warm.join(timeout=5)
    return bound


def cmd_serve(args: argparse.Namespace) -> int:
    import warnings

    warnings.filterwarnings("ignore", module="dagster")
    from anime_pipeline.instance import open_instance
    from anime_pipeline.ledger import LEDGER_URL_ENV, Ledger, default_url
    from anime_pipeline.ops.metrics import PipelineCollector
    from anime_pipeline.settings import PipelineConfig, instance_home

    config = PipelineConfig.from_env()
    home = Path(args.home).absolute() if args.home else config.home
    url = args.ledger_url or os.environ.get(LEDGER_URL_ENV) or default_url(home)
    ihome = instance_home()
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, on_signal)
    try:
        with open_instance(ihome) as instance:
            collector = PipelineCollector(instance, Ledger(url), home,
                                          scrape_budget_s=args.scrape_budget)
            _say(f"metrics: instance {ihome}; ledger {_safe_url(url)}; state {home}")
            try:
                serve(args.host, args.port, collector, stop,
                      announce=lambda line: print(line, flush=True))
            except OSError as e:
                _say(f"metrics: cannot listen on {args.host}:{args.port}: {e}")
                return 1
    except Exception as e:  # the reason, not a traceback
        _say(f"metrics: failed: {type(e).__name__}: {e}")
        return 1
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    _say("metrics: stopped")
    return 0


def add_subcommands(subparsers: Any) -> None:
    """Add ``metrics serve`` to ``subparsers`` (from ``add_subparsers``)."""
    m = subparsers.add_parser("metrics", help="Prometheus metrics of the instance and ledger")
    msub = m.add_subparsers(dest="metrics_command", required=True, metavar="ACTION")
    s = msub.add_parser("serve", help="serve /metrics (Prometheus text format)",
                        description="Serve /metrics; values are read from the Dagster "
                        "instance and the ledger at every scrape.")
    s.add_argument("--host", default=DEFAULT_HOST,
                   help=f"address to listen on (default {DEFAULT_HOST}; 0.0.0.0 in a pod)")
    s.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help=f"port (default {DEFAULT_PORT}; 0: any free port, printed)")
    s.add_argument("--home", help="pipeline home: runtime state, default ledger "
                                  "(default $ANIME_PIPELINE_HOME, else the project's)")
    s.add_argument("--ledger-url", help="SQLAlchemy URL of the ledger "
                                        "(default $ANIME_PIPELINE_LEDGER_URL, else SQLite "
                                        "under the pipeline home)")
    s.add_argument("--scrape-budget", type=float, default=1.0, metavar="SECONDS",
                   help="at most this long reading new history per scrape (default 1)")
    s.set_defaults(func=cmd_serve)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="anime-pipeline")
    add_subcommands(parser.add_subparsers(dest="command", required=True))
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: usage errors exit 2, --help exits 0
        return int(e.code or 0)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
