"""``python -m simulator serve``: run the Upbit-compatible exchange until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from simulator.app import serve_forever
from simulator.server import SimulatorConfig


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m simulator")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve until SIGINT or SIGTERM")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=0, help="WebSocket port (0 = any free port)")
    serve.add_argument("--rest-port", type=int, default=0)
    serve.add_argument("--control-port", type=int, default=0)
    serve.add_argument("--markets", type=int, default=20)
    serve.add_argument("--rate", type=float, default=1000.0, help="market events per second")
    serve.add_argument("--seed", type=int, default=1)
    serve.add_argument("--access-key", default=None)
    serve.add_argument("--secret-key", default=None)
    serve.add_argument("--stamp", action="store_true", help='add "sim_ns" to market frames')
    serve.add_argument("--idle-timeout", type=float, default=120.0)
    serve.add_argument("--log-level", default="WARNING")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(name)s %(message)s"
    )
    if (args.access_key is None) != (args.secret_key is None):
        print("--access-key and --secret-key go together", file=sys.stderr)
        return 2
    config = SimulatorConfig(
        host=args.host,
        port=args.port,
        rest_port=args.rest_port,
        control_port=args.control_port,
        markets=args.markets,
        rate=args.rate,
        seed=args.seed,
        access_key=args.access_key,
        secret_key=args.secret_key,
        stamp=args.stamp,
        idle_timeout=args.idle_timeout,
    )
    asyncio.run(serve_forever(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
