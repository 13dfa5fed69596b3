"""ccxt's asynchronous WebSocket client (ccxt.pro.upbit) pointed at the simulator.

    python bench/peers/peer_ccxt.py --url WS_URL --rest-url HTTP_URL --codes A,B

``urls['api']`` is pointed at the simulator (REST for ``load_markets``, ws for the
streams). ``watch_order_book`` resolves once per await however many messages came in
between, so messages are counted in ``handle_order_book`` (every frame the library
parses) and latency is taken when ``watch_order_book`` returns, against the newest
``sim_ns`` the library has handled for that market.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import sys

from _runner import Runner, fail, peer_arguments

STAGGER_S = 0.25


def main() -> None:
    args = peer_arguments(rest_url_required=True).parse_args()
    runner = Runner("ccxt_pro", importlib.metadata.version("ccxt"))
    try:
        import ccxt.pro as ccxtpro  # noqa: PLC0415 - a missing library is a reported result
    except ImportError as exc:
        fail(runner.name, f"import failed: {exc!r}")
        return
    newest: dict[str, int] = {}
    counted = {"n": 0}

    class SimUpbit(ccxtpro.upbit):
        def handle_order_book(self, client, message):
            counted["n"] += 1
            stamp = message.get("sim_ns")
            if stamp:
                newest[message.get("code", "")] = stamp
            return super().handle_order_book(client, message)

    async def watch(exchange, symbol: str, code: str) -> None:
        while True:
            await exchange.watch_order_book(symbol)
            seen = counted["n"]
            counted["n"] = 0
            runner.on_message(newest.get(code))
            # Messages the library parsed but coalesced into one resolution still count.
            runner.count += max(seen - 1, 0)

    async def run() -> None:
        exchange = SimUpbit({"enableRateLimit": False})
        exchange.urls["api"]["ws"] = args.url
        for key, value in list(exchange.urls["api"].items()):
            if key != "ws" and isinstance(value, str):
                exchange.urls["api"][key] = args.rest_url
        try:
            await exchange.load_markets()
        except Exception as exc:  # noqa: BLE001 - any library failure is the reported result
            fail(runner.name, f"load_markets against the simulator failed: {exc!r}")
            return
        pairs = []
        for code in args.codes.split(","):
            market = exchange.markets_by_id.get(code)
            if not market:
                fail(runner.name, f"ccxt found no market for {code}")
                return
            pairs.append((market[0]["symbol"], code))
        # Frames handled before the first watch returns (snapshots) are not the burst's.
        counted["n"] = 0
        runner.serve_commands()
        # Each first watch of a symbol sends a new full request on the connection: ten at
        # once break Upbit's 5 requests/s (TOO_MANY_REQ, then the exchange closes).
        runner.notes.append(f"watches started {STAGGER_S} s apart (one request per symbol)")
        tasks = []
        for symbol, code in pairs:
            tasks.append(asyncio.ensure_future(watch(exchange, symbol, code)))
            await asyncio.sleep(STAGGER_S)
        await asyncio.gather(*tasks)

    asyncio.run(run())


if __name__ == "__main__":
    sys.exit(main())
