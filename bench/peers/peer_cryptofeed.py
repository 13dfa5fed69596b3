"""cryptofeed's Upbit feed pointed at the simulator; order books (and trades) to callbacks.

    python bench/peers/peer_cryptofeed.py --url WS_URL --rest-url HTTP_URL --codes A,B

The class's endpoints are replaced by the simulator's (``websocket_endpoints``,
``rest_endpoints``); everything else is the library as shipped: its SIMPLE-format
request, Decimal parsing and OrderBook objects. Latency is taken in the L2 book
callback from the raw message's ``sim_ns``.
"""

from __future__ import annotations

import importlib.metadata
import sys

from _runner import Runner, fail, peer_arguments


def main() -> None:
    args = peer_arguments(rest_url_required=True).parse_args()
    runner = Runner("cryptofeed", importlib.metadata.version("cryptofeed"))
    try:
        from cryptofeed import FeedHandler  # noqa: PLC0415
        from cryptofeed.connection import RestEndpoint, Routes, WebsocketEndpoint  # noqa: PLC0415
        from cryptofeed.defines import L2_BOOK, TRADES  # noqa: PLC0415
        from cryptofeed.exchanges import Upbit  # noqa: PLC0415
    except ImportError as exc:
        fail(runner.name, f"import failed: {exc!r}")
        return

    import websockets  # noqa: PLC0415
    from cryptofeed import connection  # noqa: PLC0415

    # cryptofeed refuses any address but wss://: give it one, and undo the scheme at
    # connect time (the simulator speaks plain ws on 127.0.0.1).
    plain = websockets.connect

    def connect(address: str, **kwargs: object) -> object:
        return plain(address.replace("wss://", "ws://", 1), **kwargs)

    connection.connect = connect  # type: ignore[attr-defined]
    runner.notes.append("wss:// check bypassed (plain ws to the simulator)")

    class SimUpbit(Upbit):
        websocket_endpoints = [  # noqa: RUF012 - the library's class API
            WebsocketEndpoint(args.url.replace("ws://", "wss://", 1))
        ]
        rest_endpoints = [RestEndpoint(args.rest_url, routes=Routes("/v1/market/all"))]  # noqa: RUF012

    async def on_book(book, receipt_timestamp):
        raw = getattr(book, "raw", None) or {}
        runner.on_message(raw.get("sim_ns"))

    async def on_trade(trade, receipt_timestamp):
        raw = getattr(trade, "raw", None) or {}
        runner.on_message(raw.get("sim_ns"))

    symbols = []
    for code in args.codes.split(","):
        quote, base = code.split("-")
        symbols.append(f"{base}-{quote}")
    channels, callbacks = [], {}
    if "orderbook" in args.types:
        channels.append(L2_BOOK)
        callbacks[L2_BOOK] = on_book
    if "trade" in args.types:
        channels.append(TRADES)
        callbacks[TRADES] = on_trade
    handler = FeedHandler(config={"log": {"disabled": True}, "uvloop": False})
    handler.add_feed(SimUpbit(symbols=symbols, channels=channels, callbacks=callbacks))
    runner.serve_commands()
    handler.run(install_signal_handlers=False)


if __name__ == "__main__":
    sys.exit(main())
