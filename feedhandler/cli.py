"""Command line: ``python -m feedhandler {run,status,top,segments,record,replay,demo}``.

``status``, ``top`` and ``segments`` ask a running feed over its control channel (found
from ``--config`` like the workers find it) and exit 0 healthy, 1 degraded, 2 down
(also when nothing answers).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

import orjson

from feedhandler.app import FeedProcess, StartupAborted, run_until_stopped
from feedhandler.config import Settings, load_settings_or_exit
from feedhandler.control import ControlClient, ControlRequestError, ControlTimeout
from feedhandler.demo import run_demo
from feedhandler.logs import configure_logging
from feedhandler.metrics import OpsStartError, addons_from_settings
from feedhandler.publisher import BusConfigError
from feedhandler.record import RecordingError
from feedhandler.top import exit_code, format_segments, format_status, run_top
from shm import ShmError

EXIT_DOWN = 2

log = logging.getLogger("feedhandler.cli")


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    return stop


def _run_feed(args: argparse.Namespace, record: str | None, duration: float | None) -> int:
    settings = load_settings_or_exit(args.config)
    configure_logging(args.log_level or settings.logging.level, settings.logging.format)
    stop = _stop_on_signals()
    try:
        addons = addons_from_settings(
            settings,
            metrics_port=args.metrics_port,
            dashboard_port=args.dashboard_port,
            record_path=record,
            route_sample_every=args.route_sample,
        )
    except RecordingError as exc:
        log.error("event=feed_start_failed error=%r", str(exc))
        return EXIT_DOWN
    feed = FeedProcess(settings, addons=addons)
    deadline = None if duration is None else time.monotonic() + duration

    def wait(timeout: float) -> bool:
        if deadline is not None and time.monotonic() >= deadline:
            return True
        return stop.wait(timeout)

    try:
        run_until_stopped(feed, wait)
    except StartupAborted:
        return 0
    except (OpsStartError, ShmError) as exc:
        # A segment held by another live feed, or no room for one in /dev/shm.
        log.error("event=feed_start_failed error=%r", str(exc))
        return EXIT_DOWN
    return 0


def _run(args: argparse.Namespace) -> int:
    return _run_feed(args, args.record, None)


def _record(args: argparse.Namespace) -> int:
    return _run_feed(args, args.out, args.duration)


def _client(settings: Settings, timeout: float) -> ControlClient:
    return ControlClient(settings.control_endpoint(), timeout=timeout)


def _ask(args: argparse.Namespace, cmd: str) -> tuple[Settings, dict[str, Any] | None, str]:
    """The reply to ``cmd``, or None and why the feed counts as down."""
    settings = load_settings_or_exit(args.config)
    try:
        with _client(settings, args.timeout) as client:
            return settings, client.call(cmd), ""
    except ControlTimeout:
        return settings, None, f"no feed answers on {settings.control_endpoint()}"
    except (ControlRequestError, BusConfigError) as exc:
        return settings, None, str(exc)


def _print_json(value: object) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")


def _status(args: argparse.Namespace) -> int:
    _settings, status, why = _ask(args, "status")
    if status is None:
        if args.json:
            _print_json({"state": "down", "error": why})
        else:
            print(f"down: {why}")
        return EXIT_DOWN
    status.pop("ok", None)
    status.pop("req_id", None)
    if args.json:
        _print_json(status)
    else:
        print(format_status(status))
    return exit_code(status.get("state"))


def _segments(args: argparse.Namespace) -> int:
    settings, reply, why = _ask(args, "segments")
    if reply is not None:
        segments = reply["segments"]
        code = 0
    else:
        import shm  # noqa: PLC0415 - only needed when the feed is down

        # The feed is down: show what its segments' headers say (a crash leaves them).
        segments = [
            d for kind in ("ticker", "orderbook") if (d := shm.describe(settings.shm.prefix, kind))
        ]
        code = EXIT_DOWN
    if args.json:
        _print_json({"segments": segments, "feed": "up" if reply else "down"})
    else:
        if reply is None:
            print(f"down: {why}")
        print(format_segments(segments) if segments else "no segments")
    return code


def _top(args: argparse.Namespace) -> int:
    settings = load_settings_or_exit(args.config)
    client = _client(settings, args.timeout)

    def fetch() -> dict[str, Any]:
        return client.call("status")

    try:
        status = run_top(
            fetch,
            out=sys.stdout,
            interval=args.interval,
            iterations=args.iterations,
            clear=not args.no_clear,
        )
    except KeyboardInterrupt:
        return 0
    except ControlTimeout:
        print(f"down: no feed answers on {settings.control_endpoint()}")
        return EXIT_DOWN
    finally:
        client.close()
    return exit_code(status.get("state"))


def _replay(args: argparse.Namespace) -> int:
    from feedhandler.record import Replayer  # noqa: PLC0415

    settings = load_settings_or_exit(args.config)
    configure_logging(args.log_level or settings.logging.level, settings.logging.format)
    stop = _stop_on_signals()
    speed = None if args.speed == "max" else float(args.speed)
    try:
        replayer = Replayer(
            settings,
            args.file,
            speed=speed,
            keep_timestamps=args.keep_timestamps,
            preload=args.preload,
        )
    except (RecordingError, ValueError) as exc:
        print(f"replay: {exc}", file=sys.stderr)
        return EXIT_DOWN
    with replayer:
        stats = replayer.run(stop)
        _print_json(stats.to_json())
        if args.hold:
            stop.wait(args.hold)
    return 0


def _speed(text: str) -> str:
    if text == "max":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"speed must be a number > 0 or max, not {text!r}"
        ) from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"speed must be > 0, not {text!r}")
    return text


def _feed_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="YAML configuration file")
    parser.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument(
        "--metrics-port",
        type=int,
        help="serve Prometheus metrics on 127.0.0.1:PORT (default: metrics.prometheus_port)",
    )
    parser.add_argument("--dashboard-port", type=int, help="serve the dashboard on 127.0.0.1:PORT")
    parser.add_argument(
        "--route-sample",
        type=int,
        metavar="N",
        help="time decode + route of one frame in N (a small cost on every frame; frames "
        "are then routed one at a time, in arrival order, without storing a read's "
        "tickers and books first)",
    )


def _query_options(parser: argparse.ArgumentParser, handler: Callable[..., int]) -> None:
    parser.add_argument("--config", required=True, help="the running feed's YAML configuration")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for a reply")
    parser.set_defaults(handler=handler)


def _demo(args: argparse.Namespace) -> int:
    return run_demo(
        duration=None if args.forever else args.duration, markets=args.markets, rate=args.rate
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m feedhandler",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the feed process")
    _feed_options(run)
    run.add_argument("--record", metavar="FILE.gz", help="also record every raw frame")
    run.set_defaults(handler=_run)

    status = commands.add_parser("status", help="health and figures of a running feed")
    _query_options(status, _status)
    status.add_argument("--json", action="store_true", help="the whole reply as JSON")

    top = commands.add_parser("top", help="live terminal view of a running feed")
    _query_options(top, _top)
    top.add_argument("--interval", type=float, default=1.0)
    top.add_argument("--iterations", type=int, help="redraw this many times, then exit")
    top.add_argument("--no-clear", action="store_true", help="append instead of redrawing")

    segments = commands.add_parser("segments", help="shm segments and their layout")
    _query_options(segments, _segments)
    segments.add_argument("--json", action="store_true")

    record = commands.add_parser("record", help="run the feed and record raw frames")
    _feed_options(record)
    record.add_argument("--out", required=True, metavar="FILE.gz")
    record.add_argument("--duration", type=float, help="seconds to record (default: until Ctrl-C)")
    record.set_defaults(handler=_record)

    replay = commands.add_parser("replay", help="feed a recording through shm and the bus")
    replay.add_argument("file", help="a recording (FILE.gz)")
    replay.add_argument("--config", required=True, help="shm prefix and bus endpoints to use")
    replay.add_argument(
        "--speed",
        type=_speed,
        default="1.0",
        help="1.0 = recorded pace, 2 = twice as fast, max = as fast as possible",
    )
    replay.add_argument(
        "--keep-timestamps", action="store_true", help="stamp with the recorded receive times"
    )
    replay.add_argument(
        "--preload",
        action="store_true",
        help="decompress the whole file first, so --speed max times the feed path alone",
    )
    replay.add_argument(
        "--hold", type=float, default=0.0, help="seconds to keep shm and the bus up afterwards"
    )
    replay.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    replay.set_defaults(handler=_replay)

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
