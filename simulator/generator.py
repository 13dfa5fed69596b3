"""Deterministic market generator: trades, ticker state, order books and candles.

Sans-IO: every call takes the current time in milliseconds; randomness comes from a
``random.Random`` seeded by the caller, so the same seed gives the same sequence of
markets, sides, prices and sizes. Values are integers in 1e-8 units (prices,
volumes) and 1e-16 units (accumulated traded value), so ticker totals, candle
totals and trades agree exactly.

Consistency kept by construction: a trade happens at the best ask (taker BID) or
best bid (taker ASK); best bid < best ask; ticker and candles follow trades;
accumulated volumes only grow; ``sequential_id`` is ``trade_timestamp * 10000 + n``
(unique per market, above 2^53, odd values included), as in Upbit's recent captures.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

import msgspec

from simulator.markets import MarketInfo, snap, tick_below, tick_size
from simulator.numbers import SCALE, UNIT

BOOK_LEVELS = 30
CANDLE_SECONDS: dict[str, int] = {
    "1s": 1,
    "1m": 60,
    "3m": 180,
    "5m": 300,
    "10m": 600,
    "15m": 900,
    "30m": 1800,
    "60m": 3600,
    "240m": 14400,
}
SID_FACTOR = 10_000
# Typical notional of one trade, in 1e-8 units of the quote currency.
_NOTIONAL: dict[str, tuple[int, int]] = {
    "KRW": (5_000 * UNIT, 3_000_000 * UNIT),
    "BTC": (UNIT // 10_000, UNIT // 20),
    "USDT": (5 * UNIT, 3_000 * UNIT),
}
_DAY_MS = 86_400_000
_VOLUME_TABLE = 512


class Trade(msgspec.Struct, gc=False):
    """One generated trade. Never tracked by the garbage collector (its fields are plain
    values): the trade history holds hundreds of thousands, and scanning them made full
    collections stall the event loop, and so the paced stream, for tens of ms."""

    code: str
    trade_timestamp: int
    timestamp: int
    price: int
    volume: int
    ask_bid: str
    prev_closing_price: int
    sequential_id: int
    best_ask_price: int
    best_ask_size: int
    best_bid_price: int
    best_bid_size: int

    @property
    def change(self) -> str:
        if self.price > self.prev_closing_price:
            return "RISE"
        return "FALL" if self.price < self.prev_closing_price else "EVEN"


@dataclass(slots=True)
class Candle:
    unit: str
    start_ms: int
    open: int
    high: int
    low: int
    close: int
    volume: int
    acc_price: int
    """Traded value in 1e-16 units (price x volume, exact)."""
    timestamp: int


@dataclass(slots=True)
class BookView:
    """Up to ``depth`` (ask price, bid price, ask size, bid size) units, best first."""

    units: list[tuple[int, int, int, int]]
    total_ask: int
    total_bid: int
    level: int


class MarketState:
    """Everything one market shows: last trade, ticker totals, book, candles."""

    __slots__ = (
        "_ladder",
        "_ladder_key",
        "acc_ask_volume",
        "acc_bid_volume",
        "acc_trade_price",
        "acc_trade_volume",
        "ask_sizes",
        "base_24h_price",
        "base_24h_volume",
        "best_ask",
        "best_bid",
        "bid_sizes",
        "book_timestamp",
        "candles",
        "high_52w",
        "high_price",
        "info",
        "last_n",
        "last_trade",
        "low_52w",
        "low_price",
        "opening_price",
        "prev_closing_price",
        "previous_candles",
        "reserved_sid",
        "sids",
        "trades",
        "volume_table",
    )

    def __init__(self, info: MarketInfo, sid_history: int, trade_history: int) -> None:
        self.info = info
        self.best_ask = info.initial_price
        self.best_bid = info.initial_price - tick_below(info.quote, info.initial_price)
        self.opening_price = info.initial_price
        self.prev_closing_price = info.initial_price
        self.high_price = info.initial_price
        self.low_price = info.initial_price
        self.acc_trade_volume = 0
        self.acc_trade_price = 0
        self.acc_ask_volume = 0
        self.acc_bid_volume = 0
        self.base_24h_volume = 0
        self.base_24h_price = 0
        self.high_52w = (snap(info.quote, info.initial_price * 2), "2025-03-28")
        self.low_52w = (snap(info.quote, info.initial_price // 3), "2025-08-30")
        self.volume_table: list[int] = []
        self.ask_sizes: list[int] = []
        self.bid_sizes: list[int] = []
        self.book_timestamp = 0
        self.last_trade: Trade | None = None
        self.last_n = 0
        self.reserved_sid = 0
        self.candles: dict[str, Candle] = {}
        self.previous_candles: dict[str, Candle] = {}
        self.trades: deque[Trade] = deque(maxlen=trade_history)
        self.sids: deque[int] = deque(maxlen=sid_history)
        self._ladder_key: tuple[int, int] = (0, 0)
        self._ladder: tuple[list[int], list[int]] = ([], [])

    @property
    def code(self) -> str:
        return self.info.code

    def ladder(self) -> tuple[list[int], list[int]]:
        """Native ask and bid prices of the 30 levels (0 where the book runs out)."""
        key = (self.best_ask, self.best_bid)
        if key != self._ladder_key:
            quote = self.info.quote
            asks = []
            price = self.best_ask
            for _ in range(BOOK_LEVELS):
                asks.append(price)
                price += tick_size(quote, price)
            bids = []
            price = self.best_bid
            for _ in range(BOOK_LEVELS):
                bids.append(price if price > 0 else 0)
                price -= tick_below(quote, price) if price > 0 else 0
            self._ladder_key = key
            self._ladder = (asks, bids)
        return self._ladder

    def book(self, depth: int = BOOK_LEVELS, level: int = 0) -> BookView | None:
        """The book cut to ``depth`` units, grouped by ``level`` (1e-8 units).

        Returns None for a level the market does not support (Upbit then sends nothing).
        """
        if level not in self.info.supported_levels:
            return None
        asks, bids = self.ladder()
        if level == 0:
            units = [
                (asks[i], bids[i], self.ask_sizes[i], self.bid_sizes[i] if bids[i] else 0)
                for i in range(depth)
            ]
        else:
            units = self._grouped(asks, bids, depth, level)
        return BookView(
            units, sum(unit[2] for unit in units), sum(unit[3] for unit in units), level
        )

    def _grouped(
        self, asks: list[int], bids: list[int], depth: int, level: int
    ) -> list[tuple[int, int, int, int]]:
        ask_groups: dict[int, int] = {}
        for price, size in zip(asks, self.ask_sizes, strict=True):
            bucket = -(-price // level) * level
            ask_groups[bucket] = ask_groups.get(bucket, 0) + size
        bid_groups: dict[int, int] = {}
        for price, size in zip(bids, self.bid_sizes, strict=True):
            if price:
                bucket = price // level * level
                bid_groups[bucket] = bid_groups.get(bucket, 0) + size
        ask_prices = sorted(ask_groups)
        bid_prices = sorted(bid_groups, reverse=True)
        # Beyond the simulated native levels, grouped units get a size that is a
        # fixed function of their price, so repeated snapshots agree.
        while len(ask_prices) < depth:
            ask_prices.append(ask_prices[-1] + level)
        while len(bid_prices) < depth:
            nxt = bid_prices[-1] - level if bid_prices else 0
            bid_prices.append(max(nxt, 0))
        units = []
        for i in range(depth):
            ask, bid = ask_prices[i], bid_prices[i]
            ask_size = ask_groups.get(ask) or _far_size(self.ask_sizes, ask, level)
            bid_size = (bid_groups.get(bid) or _far_size(self.bid_sizes, bid, level)) if bid else 0
            units.append((ask, bid, ask_size, bid_size))
        return units

    def candle_snapshot(self, unit: str) -> Candle | None:
        return self.candles.get(unit) or self.previous_candles.get(unit)


def _far_size(sizes: list[int], price: int, level: int) -> int:
    return sizes[(price // level) % len(sizes)] * (1 + (price // level) % 7)


class MarketGenerator:
    """Produces one trade per :meth:`step` in a seeded-random market."""

    def __init__(
        self,
        markets: Iterable[MarketInfo],
        seed: int,
        now_ms: int | None = None,
        sid_history: int = 100_000,
        trade_history: int = 20_000,
    ) -> None:
        self.rng = random.Random(seed)
        self.markets = list(markets)
        if not self.markets:
            raise ValueError("the generator needs at least one market")
        self.states: dict[str, MarketState] = {
            info.code: MarketState(info, sid_history, trade_history) for info in self.markets
        }
        self._order = [self.states[info.code] for info in self.markets]
        weights = [1.0 / (rank + 1) ** 0.8 for rank in range(len(self._order))]
        total = sum(weights)
        running = 0.0
        self._cumulative: list[float] = []
        for weight in weights:
            running += weight / total
            self._cumulative.append(running)
        self.generated = 0
        self.candle_units: dict[str, int] = {}
        start = int(time.time() * 1000) if now_ms is None else now_ms
        for state in self._order:
            self._init_state(state, start)
            self._trade(state, start)

    def _init_state(self, state: MarketState, now_ms: int) -> None:
        rng = self.rng
        low, high = _NOTIONAL[state.info.quote]
        price = max(state.info.initial_price, 1)
        state.volume_table = [
            max(int(low * (high / low) ** rng.random()) * UNIT // price, 1)
            for _ in range(_VOLUME_TABLE)
        ]
        state.ask_sizes = [self._random_volume(state) for _ in range(BOOK_LEVELS)]
        state.bid_sizes = [self._random_volume(state) for _ in range(BOOK_LEVELS)]
        price = state.info.initial_price
        state.base_24h_volume = self._random_volume(state) * rng.randint(200, 2000)
        state.base_24h_price = state.base_24h_volume * price
        state.prev_closing_price = snap(state.info.quote, price - price // 50 + price // 100)
        state.book_timestamp = now_ms

    def _random_volume(self, state: MarketState) -> int:
        return state.volume_table[int(self.rng.random() * _VOLUME_TABLE)]

    def pick(self) -> MarketState:
        index = 0
        draw = self.rng.random()
        cumulative = self._cumulative
        lo, hi = 0, len(cumulative) - 1
        while lo < hi:
            index = (lo + hi) // 2
            if cumulative[index] < draw:
                lo = index + 1
            else:
                hi = index
        return self._order[lo]

    def step(self, now_ms: int) -> Trade:
        """One event: a random market moves its quote and prints a trade."""
        return self._event(self.pick(), now_ms)

    def trade_in(self, code: str, now_ms: int) -> Trade:
        """One event in the market ``code``."""
        return self._event(self.states[code], now_ms)

    def _event(self, state: MarketState, now_ms: int) -> Trade:
        rng = self.rng
        quote = state.info.quote
        move = rng.random()
        if move < 0.3:
            ticks = rng.randint(1, 3)
            ask = state.best_ask
            if move < 0.15:
                for _ in range(ticks):
                    ask += tick_size(quote, ask)
            else:
                for _ in range(ticks):
                    if ask - tick_below(quote, ask) > tick_below(quote, ask):
                        ask -= tick_below(quote, ask)
            spread = tick_below(quote, ask) * (2 if rng.random() < 0.1 else 1)
            if ask - spread > 0:
                state.best_ask = ask
                state.best_bid = ask - spread
        random = rng.random
        table = state.volume_table
        # One resting level changes per event, on alternating sides.
        sizes = state.ask_sizes if random() < 0.5 else state.bid_sizes
        sizes[int(random() * BOOK_LEVELS)] = table[int(random() * _VOLUME_TABLE)]
        return self._trade(state, now_ms)

    def _trade(self, state: MarketState, now_ms: int) -> Trade:
        random = self.rng.random
        table = state.volume_table
        taker_buys = random() < 0.5
        volume = (table[int(random() * _VOLUME_TABLE)] >> int(random() * 4)) or 1
        if taker_buys:
            price = state.best_ask
            left = state.ask_sizes[0] - volume
            state.ask_sizes[0] = left if left > 0 else table[int(random() * _VOLUME_TABLE)]
            state.acc_bid_volume += volume
        else:
            price = state.best_bid
            left = state.bid_sizes[0] - volume
            state.bid_sizes[0] = left if left > 0 else table[int(random() * _VOLUME_TABLE)]
            state.acc_ask_volume += volume
        last = state.last_trade
        trade_ts = now_ms - int(random() * 20)
        if trade_ts * SID_FACTOR <= state.reserved_sid:
            trade_ts = state.reserved_sid // SID_FACTOR + 1
            n = int(random() * 3)
        elif last is not None and trade_ts <= last.trade_timestamp:
            trade_ts = last.trade_timestamp
            n = state.last_n + 1
            if n >= SID_FACTOR:
                trade_ts += 1
                n = int(random() * 3)
        else:
            n = int(random() * 3)
        state.last_n = n
        state.acc_trade_volume += volume
        state.acc_trade_price += price * volume
        if price > state.high_price:
            state.high_price = price
        elif price < state.low_price:
            state.low_price = price
        if price > state.high_52w[0]:
            state.high_52w = (price, _date_dashed(trade_ts))
        elif price < state.low_52w[0]:
            state.low_52w = (price, _date_dashed(trade_ts))
        stamp = now_ms if now_ms > trade_ts else trade_ts
        state.book_timestamp = stamp
        sid = trade_ts * SID_FACTOR + n
        trade = Trade(
            state.info.code,
            trade_ts,
            stamp,
            price,
            volume,
            "BID" if taker_buys else "ASK",
            state.prev_closing_price,
            sid,
            state.best_ask,
            state.ask_sizes[0],
            state.best_bid,
            state.bid_sizes[0],
        )
        state.last_trade = trade
        state.trades.append(trade)
        state.sids.append(sid)
        if self.candle_units:
            self._update_candles(state, trade)
        self.generated += 1
        return trade

    def activate_candles(self, unit: str) -> None:
        """Start keeping ``candle.<unit>`` for every market (rebuilt from trade history).

        Candles cost a few microseconds per trade and unit, so only units that some
        client asked for are kept up to date.
        """
        if unit in self.candle_units:
            return
        if unit not in CANDLE_SECONDS:
            raise ValueError(f"unknown candle unit {unit!r}")
        self.candle_units[unit] = CANDLE_SECONDS[unit] * 1000
        only = {unit: self.candle_units[unit]}
        for state in self._order:
            state.candles.pop(unit, None)
            state.previous_candles.pop(unit, None)
            for trade in state.trades:
                self._update_candles(state, trade, only)

    def _update_candles(
        self, state: MarketState, trade: Trade, units: dict[str, int] | None = None
    ) -> None:
        candles = state.candles
        value = trade.price * trade.volume
        for unit, span in (units or self.candle_units).items():
            start = trade.trade_timestamp - trade.trade_timestamp % span
            candle = candles.get(unit)
            if candle is None or candle.start_ms != start:
                if candle is not None:
                    state.previous_candles[unit] = candle
                candles[unit] = Candle(
                    unit, start, trade.price, trade.price, trade.price, trade.price,
                    trade.volume, value, trade.timestamp,
                )  # fmt: skip
                continue
            candle.high = max(candle.high, trade.price)
            candle.low = min(candle.low, trade.price)
            candle.close = trade.price
            candle.volume += trade.volume
            candle.acc_price += value
            candle.timestamp = trade.timestamp

    def reserve_sids(self, code: str, up_to: int) -> None:
        """Never hand out a ``sequential_id`` <= ``up_to`` in ``code`` (used by burst mode)."""
        state = self.states[code]
        state.reserved_sid = max(state.reserved_sid, up_to)

    def trades_before(self, code: str, cursor: int | None, count: int) -> list[Trade]:
        """Up to ``count`` trades of ``code``, newest first, older than trade ``cursor``.

        The simulator's ids grow with time within a market, so "older than the cursor"
        is a comparison here (clients must not rely on that: SPEC section 10).
        """
        trades = self.states[code].trades
        result: list[Trade] = []
        for trade in reversed(trades):
            if cursor is not None and trade.sequential_id >= cursor:
                continue
            result.append(trade)
            if len(result) >= count:
                break
        return result


_date_cache: dict[int, str] = {}


def _date_dashed(ms: int) -> str:
    day = ms // _DAY_MS
    text = _date_cache.get(day)
    if text is None:
        text = time.strftime("%Y-%m-%d", time.gmtime(day * 86_400))
        _date_cache[day] = text
    return text


__all__ = [
    "BOOK_LEVELS",
    "CANDLE_SECONDS",
    "SCALE",
    "BookView",
    "Candle",
    "MarketGenerator",
    "MarketState",
    "Trade",
]
