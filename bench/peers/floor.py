"""The floor: a plain websocket-client + orjson receive loop, what a user writes first.

    python bench/peers/floor.py --url WS_URL --codes A,B --types orderbook

No decimals, no shm, no bus: ``recv()`` then ``orjson.loads`` per message.
"""

from __future__ import annotations

import json
import sys
import uuid

import orjson
import websocket
from _runner import Runner, fail, peer_arguments


def main() -> None:
    parser = peer_arguments(rest_url_required=False)
    parser.add_argument("--book-depth", type=int, default=0, help="orderbook CODE.N suffix")
    args = parser.parse_args()
    runner = Runner("floor_websocket_client_orjson", websocket.__version__)
    codes = args.codes.split(",")
    try:
        ws = websocket.WebSocket(skip_utf8_validation=True)
        ws.connect(args.url, timeout=10, suppress_origin=True)
    except (OSError, websocket.WebSocketException) as exc:
        fail(runner.name, f"connect failed: {exc!r}")
        return
    request = [{"ticket": str(uuid.uuid4())}]
    book_codes = [f"{c}.{args.book_depth}" for c in codes] if args.book_depth else codes
    request += [
        {"type": t, "codes": book_codes if t == "orderbook" else codes}
        for t in args.types.split(",")
    ]
    ws.send(json.dumps(request))
    runner.serve_commands()
    loads = orjson.loads
    on_message = runner.on_message
    while True:
        msg = loads(ws.recv())
        on_message(msg.get("sim_ns"))


if __name__ == "__main__":
    sys.exit(main())
