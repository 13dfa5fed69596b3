"""Command line: ``python -m workers {run,supervise}``.

``run pkg.mod:Class --symbols KRW-BTC,KRW-ETH [--control ENDPOINT] [--duration S]``
runs one worker in this process until SIGINT/SIGTERM or the duration ends.
``supervise --worker pkg.mod:Class=KRW-BTC,KRW-ETH[@name] ...`` runs several of them as
subprocesses and restarts the ones that crash.

Without ``--control`` the endpoint comes from ``--config`` (or the default settings),
the same way the feed derives it.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from feedhandler.config import ConfigError
from feedhandler.publisher import BusConfigError, CurveKeys, load_public_key
from workers.supervisor import Supervisor, WorkerSpec
from workers.worker import Worker, WorkerError

log = logging.getLogger("workers")


def load_worker_class(target: str) -> type[Worker]:
    """``package.module:Class`` -> the class, which must subclass :class:`Worker`."""
    module_name, colon, class_name = target.partition(":")
    if not module_name or not colon or not class_name:
        raise WorkerError(f"worker target {target!r} must look like package.module:Class")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise WorkerError(f"cannot import {module_name!r}: {exc}") from exc
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Worker)):
        raise WorkerError(f"{target} is not a workers.Worker subclass")
    return cls


def control_endpoint(args: argparse.Namespace) -> str:
    if args.control:
        return str(args.control)
    from feedhandler.config import Settings, load_settings  # noqa: PLC0415 - pydantic is slow

    settings = load_settings(args.config) if args.config else Settings()
    return settings.control_endpoint()


def _install_stop_handlers(stop: threading.Event) -> None:
    def handle(signum: int, frame: FrameType | None) -> None:
        log.info("event=signal signal=%s action=stop", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


def _symbols(text: str) -> list[str]:
    symbols = [s.strip() for s in text.split(",") if s.strip()]
    if not symbols:
        raise argparse.ArgumentTypeError("--symbols needs at least one market code")
    return symbols


def _run(args: argparse.Namespace) -> int:
    cls = load_worker_class(args.target)
    server_key = load_public_key(args.curve_server_key) if args.curve_server_key else None
    client_keys = CurveKeys.load(args.curve_client_key) if args.curve_client_key else None
    worker = cls(
        args.symbols,
        control_endpoint=control_endpoint(args),
        worker_id=args.worker_id,
        lease_s=args.lease,
        curve_server_key=server_key,
        curve_client=client_keys,
    )
    stop = threading.Event()
    _install_stop_handlers(stop)
    worker.run(stop, duration=args.duration)
    return 0


def _supervise(args: argparse.Namespace) -> int:
    specs = [WorkerSpec.parse(text, i) for i, text in enumerate(args.worker)]
    extra = ["--lease", str(args.lease)]
    if args.config:
        extra += ["--config", str(args.config)]
    if args.duration is not None:
        extra += ["--duration", str(args.duration)]
    for option in ("curve_server_key", "curve_client_key"):
        value = getattr(args, option)
        if value is not None:
            extra += ["--" + option.replace("_", "-"), str(value)]
    supervisor = Supervisor(
        specs,
        control_endpoint=args.control,
        max_restarts=args.max_restarts,
        backoff_base=args.backoff_base,
        backoff_cap=args.backoff_cap,
        extra_args=extra,
    )
    stop = threading.Event()
    _install_stop_handlers(stop)
    threading.Thread(target=lambda: (stop.wait(), supervisor.stop()), daemon=True).start()
    stats = supervisor.run()
    failed = [name for name, s in stats.items() if s["failures"]]
    return 1 if failed and not stop.is_set() else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m workers", description=__doc__)
    parser.add_argument("--log-level", default="INFO")
    commands = parser.add_subparsers(dest="command", required=True)

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--control", help="control endpoint of the feed (ipc:// or tcp://)")
        sub.add_argument("--config", type=Path, help="feed config to derive the endpoint from")
        sub.add_argument("--duration", type=float, help="stop after this many seconds")
        sub.add_argument("--lease", type=float, default=10.0, help="lease seconds (renew: 1/3)")
        sub.add_argument("--curve-server-key", type=Path, help="the feed's CURVE public key file")
        sub.add_argument("--curve-client-key", type=Path, help="the worker's .key_secret file")

    run = commands.add_parser("run", help="run one worker in this process")
    run.add_argument("target", help="package.module:Class")
    run.add_argument("--symbols", type=_symbols, required=True, help="KRW-BTC,KRW-ETH")
    run.add_argument("--worker-id", help="stable id (default: Class-host-pid)")
    common(run)
    run.set_defaults(handler=_run)

    sup = commands.add_parser("supervise", help="run and restart several workers")
    sup.add_argument(
        "--worker",
        action="append",
        required=True,
        help="pkg.mod:Class=KRW-BTC,KRW-ETH[@name]; repeat for more workers",
    )
    sup.add_argument("--max-restarts", type=int, default=5)
    sup.add_argument("--backoff-base", type=float, default=0.5)
    sup.add_argument("--backoff-cap", type=float, default=30.0)
    common(sup)
    sup.set_defaults(handler=_supervise)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    try:
        return int(args.handler(args))
    except (WorkerError, BusConfigError, ConfigError) as exc:
        log.error("event=worker_failed error=%s", exc)
        return 2
