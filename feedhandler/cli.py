"""Command line: ``python -m feedhandler {run,status,demo}``."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from feedhandler.app import FeedProcess, StartupAborted, run_until_stopped
from feedhandler.config import load_settings_or_exit
from feedhandler.demo import run_demo
from feedhandler.logs import configure_logging


def _run(args: argparse.Namespace) -> int:
    settings = load_settings_or_exit(args.config)
    configure_logging(args.log_level or settings.logging.level, settings.logging.format)
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    feed = FeedProcess(settings)
    try:
        run_until_stopped(feed, stop.wait)
    except StartupAborted:
        return 0
    return 0


def _demo(args: argparse.Namespace) -> int:
    return run_demo(
        duration=None if args.forever else args.duration, markets=args.markets, rate=args.rate
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m feedhandler", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the feed process")
    run.add_argument("--config", required=True, help="YAML configuration file")
    run.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    run.set_defaults(handler=_run)

    demo = commands.add_parser("demo", help="simulator + feed process + example workers")
    demo.add_argument("--duration", type=float, default=20.0, help="seconds to run (default 20)")
    demo.add_argument("--forever", action="store_true", help="run until Ctrl-C")
    demo.add_argument("--markets", type=int, default=12)
    demo.add_argument("--rate", type=float, default=2000.0, help="simulator messages/s")
    demo.set_defaults(handler=_demo)

    args = parser.parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
