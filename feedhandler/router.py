"""Routes decoded frames: ticker and order book to shm, the rest to the ZeroMQ bus.

One :class:`Router` is shared by every connection thread. Each shm segment has exactly
one writer object; the seqlock allows one write at a time, which the writer enforces
with its own lock, as the publisher does for its socket.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from feedhandler.publisher import Publisher
from feedhandler.trades import LiveItem, TradeSequencer
from feedhandler.upbit import ProtocolError
from feedhandler.upbit.decode import DEFAULT, event_to_json
from feedhandler.upbit.events import Candle, ErrorMessage, MyAsset, MyOrder, Status
from feedhandler.upbit.hot import HotDecoder, HotOrderbook, HotTicker, HotTrade, trade_to_json
from shm import SymbolTableFullError, UnknownSymbolError

log = logging.getLogger("feedhandler.router")

# Error names that mean "slow down" (SPEC.md section 5; the WebSocket delivery of these
# is unconfirmed, so every spelling seen in docs and in the simulator counts).
RATE_LIMIT_ERROR_NAMES = frozenset(
    {
        "TOO_MANY_REQ",
        "TOO_MANY_REQUESTS",
        "Too Many Requests",
        "too_many_requests",
        # SPEC.md lists the 418 ban beside 429 as a rate-limit condition of each type
        "I'm a teapot",
    }
)
AUTH_ERROR_NAMES = frozenset({"INVALID_AUTH"})


class UpstreamError(Exception):
    """The exchange sent an error frame; it closes the connection next."""

    def __init__(self, connection: str, name: str, message: str) -> None:
        super().__init__(f"{connection}: exchange error {name}: {message}")
        self.connection = connection
        self.name = name
        self.message = message

    @property
    def is_rate_limit(self) -> bool:
        return self.name in RATE_LIMIT_ERROR_NAMES

    @property
    def is_auth(self) -> bool:
        return self.name in AUTH_ERROR_NAMES


#: The keys of :attr:`Router.counts`.
MESSAGE_KINDS: tuple[str, ...] = (
    "ticker",
    "orderbook",
    "trade",
    "candle",
    "myOrder",
    "myAsset",
    "status",
    "error",
    "other",
    "bad_frame",
)


# Router.route_batch's lanes: stored in shm as the batch is read, or routed after it
# (trades to the sequencer together, everything else through its handler).
_TICKER, _ORDERBOOK, _TRADE, _DEFERRED = 1, 2, 3, 4


class Router:
    """Turns raw frames of one connection into shm writes and bus messages."""

    def __init__(
        self,
        *,
        ticker_writer: Any,
        orderbook_writer: Any,
        bus: Publisher,
        trades: TradeSequencer,
        on_bad_frame: Callable[[str, ProtocolError], None] | None = None,
    ) -> None:
        self._ticker_writer = ticker_writer
        self._orderbook_writer = orderbook_writer
        #: Store a DEFAULT-format ticker / book from its frame, or return 0 (shm/_fastwrite.c).
        self._store_ticker_json: Callable[[bytes | memoryview, int], int] | None = getattr(
            ticker_writer, "write_json", None
        )
        self._store_book_json: Callable[[bytes | memoryview, int], int] | None = getattr(
            orderbook_writer, "write_json", None
        )
        self._bus = bus
        self._trades = trades
        self._on_bad_frame = on_bad_frame
        # A plain dict with every key present: its increments are specialised by the
        # interpreter, a Counter's take 2.5 times as long (one per frame).
        self.counts: dict[str, int] = dict.fromkeys(MESSAGE_KINDS, 0)
        self.unknown_codes: Counter[str] = Counter()
        self._base_handlers: tuple[tuple[type, Callable[[str, Any, int], None]], ...] = (
            (HotTicker, self._on_ticker),
            (HotOrderbook, self._on_orderbook),
            (HotTrade, self._on_trade),
            (Candle, self._on_candle),
            (MyOrder, self._on_order),
            (MyAsset, self._on_asset),
            (Status, self._on_status),
            (ErrorMessage, self._on_error),
        )
        self._handlers: dict[type, Callable[[str, Any, int], None]] = {}
        self._lanes: dict[type, int] = {}
        #: Called with (connection, frame, recv_ns) before each frame is decoded, e.g. by
        #: the recorder; None costs one attribute check per frame.
        self.tap: Callable[[str, bytes | memoryview, int], None] | None = None

    def route(self, connection: str, decoder: HotDecoder, frame: bytes, recv_ns: int) -> None:
        """Decode and dispatch one frame. Raises UpstreamError on an exchange error frame."""
        if self.tap is not None:
            self.tap(connection, frame, recv_ns)
        try:
            msg = decoder.decode(frame)
            handler = self._handlers.get(type(msg))
            if handler is None:
                handler = self._handler_for(type(msg))
            # A hot trade checks its decimals when rendered, so the handler can raise too.
            handler(connection, msg, recv_ns)
        except ProtocolError as exc:
            self._bad_frame(connection, exc)

    def route_batch(
        self,
        connection: str,
        decoder: HotDecoder,
        messages: Sequence[tuple[int, bytes | memoryview]],
        recv_ns: int,
    ) -> None:
        """Route one socket read's messages: tickers and books are stored as they come,
        everything else once the batch's shm writes are done.

        A strategy reading shm then never waits for trade sequencing and JSON rendering
        of frames that arrived in the same read; each sink still sees its own frames in
        arrival order. An exchange error frame raises UpstreamError once every ticker
        and book of the read is stored and the frames before it are routed; the
        exchange closes the connection after it, and the trades of the reconnect's gap
        are backfilled.
        """
        if "route" in self.__dict__:
            # route was wrapped (a per-frame timer): every frame goes through the wrapper.
            route = self.route
            for _opcode, payload in messages:
                route(connection, decoder, payload, recv_ns)
            return
        tap = self.tap
        decode = decoder.decode
        lanes = self._lanes
        write_ticker = self._ticker_writer.write_ticker
        write_orderbook = self._orderbook_writer.write_orderbook
        counts = self.counts
        deferred: list[Any] = []
        store_ticker_json = self._store_ticker_json
        store_book_json = self._store_book_json
        # DEFAULT-format tickers and books ({"type":"ticker",... / {"type":"orderbook",...)
        # are stored straight from their frames when they have the common shape.
        json_bytes = (
            decoder.max_frame_bytes
            if store_book_json is not None
            and store_ticker_json is not None
            and decoder.format == DEFAULT
            else 0
        )
        for _opcode, payload in messages:
            if tap is not None:
                tap(connection, payload, recv_ns)
            if 10 < len(payload) <= json_bytes:
                first = payload[9]  # the type's first letters
                if first == 111 and store_book_json(payload, recv_ns):  # "o"rderbook
                    counts["orderbook"] += 1
                    continue
                if first == 116 and payload[10] == 105 and store_ticker_json(payload, recv_ns):
                    counts["ticker"] += 1  # "ti"cker
                    continue
            try:
                msg = decode(payload)
                lane = lanes.get(type(msg)) or self._lane_for(type(msg))
                if lane == _TICKER:
                    try:
                        write_ticker(msg, recv_ns)
                    except (UnknownSymbolError, TypeError) as exc:
                        self._store_failed(self._ticker_writer, "ticker", msg, recv_ns, exc)
                    counts["ticker"] += 1
                elif lane == _ORDERBOOK:
                    try:
                        write_orderbook(msg, recv_ns)
                    except (UnknownSymbolError, TypeError) as exc:
                        self._store_failed(self._orderbook_writer, "orderbook", msg, recv_ns, exc)
                    counts["orderbook"] += 1
                else:
                    deferred.append(msg)
            except ProtocolError as exc:
                self._bad_frame(connection, exc)
        if not deferred:
            return
        handlers = self._handlers
        # Consecutive trades go to the sequencer together (one lock, one publish call).
        trades: list[LiveItem] = []
        for msg in deferred:
            try:
                if lanes[type(msg)] == _TRADE:
                    counts["trade"] += 1
                    trades.append(_live_item(msg, recv_ns))
                    continue
                if trades:
                    self._trades.on_live_many(trades)
                    trades = []
                handler = handlers.get(type(msg)) or self._handler_for(type(msg))
                handler(connection, msg, recv_ns)
            except ProtocolError as exc:
                self._bad_frame(connection, exc)
        if trades:
            self._trades.on_live_many(trades)

    def _lane_for(self, kind: type) -> int:
        """Resolve (once per class) the lane of a decoded type."""
        if issubclass(kind, HotTicker):
            lane = _TICKER
        elif issubclass(kind, HotOrderbook):
            lane = _ORDERBOOK
        elif issubclass(kind, HotTrade):
            lane = _TRADE
        else:
            lane = _DEFERRED
        self._lanes[kind] = lane
        return lane

    def _bad_frame(self, connection: str, exc: ProtocolError) -> None:
        self.counts["bad_frame"] += 1
        if self._on_bad_frame is not None:
            self._on_bad_frame(connection, exc)

    def _handler_for(self, kind: type) -> Callable[[str, Any, int], None]:
        """Resolve (once per class) the handler of a decoded type or its format subclass."""
        handler = next(
            (h for base, h in self._base_handlers if issubclass(kind, base)), self._on_other
        )
        self._handlers[kind] = handler
        return handler

    def _on_ticker(self, _connection: str, msg: HotTicker, recv_ns: int) -> None:
        try:
            self._ticker_writer.write_ticker(msg, recv_ns)
        except (UnknownSymbolError, TypeError) as exc:
            self._store_failed(self._ticker_writer, "ticker", msg, recv_ns, exc)
        self.counts["ticker"] += 1

    def _on_orderbook(self, _connection: str, msg: HotOrderbook, recv_ns: int) -> None:
        try:
            self._orderbook_writer.write_orderbook(msg, recv_ns)
        except (UnknownSymbolError, TypeError) as exc:
            self._store_failed(self._orderbook_writer, "orderbook", msg, recv_ns, exc)
        self.counts["orderbook"] += 1

    def _store_failed(
        self, writer: Any, what: str, msg: Any, recv_ns: int, exc: UnknownSymbolError | TypeError
    ) -> None:
        """A shm write refused a message: a market listed after start-up is added if
        there is room; a value the record cannot hold (an integer beyond 64 bits, say)
        makes a bad frame, not a reason to lose the connection thread."""
        if isinstance(exc, UnknownSymbolError):
            self._write_new_symbol(writer, msg, recv_ns)
            return
        raise ProtocolError(f"{what} not storable in shm ({exc})", msg.code) from exc

    def _on_trade(self, _connection: str, msg: HotTrade, recv_ns: int) -> None:
        self.counts["trade"] += 1
        self._trades.on_live(*_live_item(msg, recv_ns))

    def _on_candle(self, _connection: str, msg: Candle, recv_ns: int) -> None:
        self.counts["candle"] += 1
        self._bus.publish(f"{msg.type}.{msg.code}".encode(), event_to_json(msg), recv_ns)

    def _on_order(self, _connection: str, msg: MyOrder, recv_ns: int) -> None:
        self.counts["myOrder"] += 1
        self._bus.publish(f"myOrder.{msg.code}".encode(), event_to_json(msg), recv_ns)

    def _on_asset(self, _connection: str, msg: MyAsset, recv_ns: int) -> None:
        self.counts["myAsset"] += 1
        self._bus.publish(b"myAsset", event_to_json(msg), recv_ns)

    def _on_status(self, _connection: str, _msg: Status, _recv_ns: int) -> None:
        self.counts["status"] += 1

    def _on_error(self, connection: str, msg: ErrorMessage, _recv_ns: int) -> None:
        self.counts["error"] += 1
        name, message = str(msg.name), str(msg.message)
        self._bus.publish_sys("error", {"connection": connection, "name": name, "message": message})
        raise UpstreamError(connection, name, message)

    def _on_other(self, _connection: str, _msg: object, _recv_ns: int) -> None:
        self.counts["other"] += 1

    def _write_new_symbol(self, writer: Any, msg: Any, recv_ns: int) -> None:
        """A market listed after start-up: add it to the symbol table if there is room."""
        try:
            writer.add_symbol(msg.code)
        except SymbolTableFullError:
            self.unknown_codes[msg.code] += 1
            return
        except ValueError as exc:
            raise ProtocolError(f"market code not storable in shm ({exc})", msg.code) from exc
        try:
            if isinstance(msg, HotTicker):
                writer.write_ticker(msg, recv_ns)
            else:
                writer.write_orderbook(msg, recv_ns)
        except TypeError as exc:
            raise ProtocolError(f"{msg.code}: not storable in shm ({exc})", msg.code) from exc


def _live_item(msg: HotTrade, recv_ns: int) -> LiveItem:
    """What the sequencer takes of a live trade; rendering checks its decimals, so this
    raises ProtocolError for a trade that cannot be published."""
    return (
        msg.code,
        msg.sequential_id,
        msg.trade_timestamp,
        trade_to_json(msg),
        recv_ns,
        msg.sim_ns,
    )


def publish_trades_to(bus: Publisher) -> Callable[[list[tuple[str, bytes, int, int]]], None]:
    """The TradeSequencer's ``publish_many`` callback: live trades on ``trade.<CODE>``."""
    topics: dict[str, bytes] = {}
    publish_many = bus.publish_many

    def publish(trades: list[tuple[str, bytes, int, int]]) -> None:
        events = []
        for code, data_json, recv_ns, origin_ns in trades:
            topic = topics.get(code)
            if topic is None:
                topic = topics[code] = f"trade.{code}".encode()
            events.append((topic, data_json, recv_ns, origin_ns))
        publish_many(events)

    return publish


def publish_trade_to(bus: Publisher) -> Callable[[str, bytes, int, int, bool], None]:
    """The TradeSequencer's publish callback: topic ``trade.<CODE>``.

    A backfilled trade carries ``"backfill": true`` beside the DEFAULT fields, so a
    consumer can tell it from a live one.
    """
    topics: dict[str, bytes] = {}

    def publish(code: str, data_json: bytes, recv_ns: int, origin_ns: int, backfill: bool) -> None:
        topic = topics.get(code)
        if topic is None:
            topic = topics[code] = f"trade.{code}".encode()
        if backfill:
            data_json = data_json[:-1] + b',"backfill":true}'
        bus.publish(topic, data_json, recv_ns, origin_ns)

    return publish
