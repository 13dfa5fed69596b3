"""pyupbit's WebSocketManager pointed at the simulator; messages taken with ``get()``.

    python bench/peers/peer_pyupbit.py --url WS_URL --codes A,B --types orderbook

pyupbit hard-codes ``wss://api.upbit.com/websocket/v1`` inside its receive method; the
only way to point it elsewhere is to hand its module a ``websockets`` whose
``connect`` swaps the URL. The manager runs its socket in a child process and passes
every parsed message through a ``multiprocessing.Queue`` (one type per manager).
"""

from __future__ import annotations

import importlib.metadata
import sys
import types

from _runner import Runner, fail, peer_arguments


def main() -> None:
    args = peer_arguments(rest_url_required=False).parse_args()
    runner = Runner("pyupbit", importlib.metadata.version("pyupbit"))
    try:
        import websockets  # noqa: PLC0415
        from pyupbit import websocket_api  # noqa: PLC0415
    except ImportError as exc:
        fail(runner.name, f"import failed: {exc!r}")
        return
    kind = args.types.split(",")[0]
    if "," in args.types:
        runner.notes.append(f"one type per WebSocketManager: only {kind} measured")

    def connect(_uri: str, **kwargs: object) -> object:
        return websockets.connect(args.url, **kwargs)

    shim = types.SimpleNamespace(connect=connect, ConnectionClosed=websockets.ConnectionClosed)
    websocket_api.websockets = shim  # type: ignore[attr-defined]
    manager = websocket_api.WebSocketManager(kind, args.codes.split(","))
    runner.notes.append("socket in a child process; parent RSS and children RSS reported")
    # The first get() forks the socket process; the stdin thread starts only after it,
    # since a fork while that thread holds stdin's lock hangs the child's stdin.close().
    first = manager.get()
    runner.serve_commands()
    if isinstance(first, dict):
        runner.on_message(first.get("sim_ns"))
    while True:
        data = manager.get()
        if isinstance(data, dict):
            runner.on_message(data.get("sim_ns"))


if __name__ == "__main__":
    sys.exit(main())
