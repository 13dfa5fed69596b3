"""Wire encoding of market data: WebSocket frames (DEFAULT and SIMPLE) and REST bodies.

Field names, order and number spellings follow the real captures in
``/work/shared/upbit/samples``: prices in exponent form in order books
(``1.16539E8``), trailing zeros (``31883000.00000000``), 16-digit accumulated
values, ``sequential_id`` as an exact integer. Payloads are built with
pre-compiled templates rather than a JSON library, because a JSON library would
have to go through ``float`` to write these numbers.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import msgspec

from simulator import numbers
from simulator.generator import BookView, Candle, MarketState, Trade
from simulator.markets import MarketInfo

DEFAULT = "DEFAULT"
SIMPLE = "SIMPLE"
FORMATS = ("DEFAULT", "SIMPLE", "JSON_LIST", "SIMPLE_LIST")
_KST_MS = 9 * 3_600_000


def base_format(fmt: str) -> str:
    """The field naming of a request format: DEFAULT/JSON_LIST -> DEFAULT, else SIMPLE."""
    return SIMPLE if fmt in ("SIMPLE", "SIMPLE_LIST") else DEFAULT


def is_list_format(fmt: str) -> bool:
    return fmt in ("JSON_LIST", "SIMPLE_LIST")


def _template(keys: tuple[str, ...]) -> str:
    return "{{" + ",".join(f'"{key}":{{}}' for key in keys) + "}}"


_TRADE_KEYS = {
    DEFAULT: (
        "type", "code", "timestamp", "trade_date", "trade_time", "trade_timestamp",
        "trade_price", "trade_volume", "ask_bid", "prev_closing_price", "change",
        "change_price", "sequential_id", "best_ask_price", "best_ask_size", "best_bid_price",
        "best_bid_size", "stream_type",
    ),
    SIMPLE: (
        "ty", "cd", "tms", "td", "ttm", "ttms", "tp", "tv", "ab", "pcp", "c", "cp", "sid",
        "bap", "bas", "bbp", "bbs", "st",
    ),
}  # fmt: skip
_TICKER_KEYS = {
    DEFAULT: (
        "type", "code", "opening_price", "high_price", "low_price", "trade_price",
        "prev_closing_price", "acc_trade_price", "change", "change_price",
        "signed_change_price", "change_rate", "signed_change_rate", "ask_bid", "trade_volume",
        "acc_trade_volume", "trade_date", "trade_time", "trade_timestamp", "acc_ask_volume",
        "acc_bid_volume", "highest_52_week_price", "highest_52_week_date",
        "lowest_52_week_price", "lowest_52_week_date", "market_state", "is_trading_suspended",
        "delisting_date", "market_warning", "timestamp", "acc_trade_price_24h",
        "acc_trade_volume_24h", "stream_type",
    ),
    SIMPLE: (
        "ty", "cd", "op", "hp", "lp", "tp", "pcp", "atp", "c", "cp", "scp", "cr", "scr", "ab",
        "tv", "atv", "tdt", "ttm", "ttms", "aav", "abv", "h52wp", "h52wdt", "l52wp", "l52wdt",
        "ms", "its", "dd", "mw", "tms", "atp24h", "atv24h", "st",
    ),
}  # fmt: skip
_BOOK_KEYS = {
    DEFAULT: ("type", "code", "timestamp", "total_ask_size", "total_bid_size",
              "orderbook_units", "stream_type", "level"),
    SIMPLE: ("ty", "cd", "tms", "tas", "tbs", "obu", "st", "lv"),
}  # fmt: skip
_UNIT_KEYS = {
    DEFAULT: ("ask_price", "bid_price", "ask_size", "bid_size"),
    SIMPLE: ("ap", "bp", "as", "bs"),
}
_CANDLE_KEYS = {
    DEFAULT: (
        "type", "code", "candle_date_time_utc", "candle_date_time_kst", "opening_price",
        "high_price", "low_price", "trade_price", "candle_acc_trade_volume",
        "candle_acc_trade_price", "timestamp", "stream_type",
    ),
    SIMPLE: ("ty", "cd", "cdttmu", "cdttmk", "op", "hp", "lp", "tp", "catv", "catp", "tms", "st"),
}  # fmt: skip

_CANDLE_TEMPLATE = {fmt: _template(keys) for fmt, keys in _CANDLE_KEYS.items()}

_CACHE_LIMIT = 200_000
# Full spelling caches, emptied a few entries per entry added to any cache: freeing a
# full one at once (200k strings, with their keys) stopped the paced stream for 8-34 ms.
_retired: deque[dict[Any, str]] = deque()
_FREED_PER_ENTRY = 4


def _retire(cache: dict[Any, str]) -> dict[Any, str]:
    """Sets a full cache aside to be freed bit by bit; the empty one to use instead."""
    _retired.append(cache)
    return {}


def _free_retired() -> None:
    """Frees a few entries of the oldest retired cache (called once per new entry, so the
    retired ones are gone long before the caches that replaced them fill up)."""
    # Simulators in several threads of one process share these caches: no step here
    # relies on what an earlier one saw.
    try:
        oldest = _retired[0]
    except IndexError:
        return
    try:
        for _ in range(_FREED_PER_ENTRY):
            oldest.popitem()
    except KeyError:
        with contextlib.suppress(ValueError):
            _retired.remove(oldest)


def _cached(spell: Callable[[int], str]) -> Callable[[int], str]:
    """Memoise a number speller at the default scale: book prices and sizes repeat a lot."""
    cache: dict[int, str] = {}
    get = cache.get

    def spelled(value: int) -> str:
        nonlocal cache, get
        text = get(value)
        if text is None:
            if len(cache) >= _CACHE_LIMIT:
                cache = _retire(cache)
                get = cache.get
            _free_retired()
            text = cache[value] = spell(value)
        return text

    return spelled


plain = _cached(numbers.plain)
dotted = _cached(numbers.dotted)
fixed = _cached(numbers.fixed)
java = _cached(numbers.java)
plain_uncached = numbers.plain
fixed_uncached = numbers.fixed

_clock_cache: dict[tuple[int, str], str] = {}


def _clock_text(seconds: int, pattern: str) -> str:
    key = (seconds, pattern)
    text = _clock_cache.get(key)
    if text is None:
        if len(_clock_cache) > 4096:
            _clock_cache.clear()
        text = time.strftime(pattern, time.gmtime(seconds))
        _clock_cache[key] = text
    return text


def change_of(price: int, prev_close: int) -> str:
    if price > prev_close:
        return "RISE"
    return "FALL" if price < prev_close else "EVEN"


def change_rate(price: int, prev_close: int) -> int:
    """|price - prev_close| / prev_close in 1e-10 units, rounded half up."""
    diff = abs(price - prev_close)
    return (diff * 10**10 * 2 + prev_close) // (2 * prev_close) if prev_close else 0


_trade_clock: dict[int, tuple[str, str]] = {}


def _trade_clock_text(seconds: int) -> tuple[str, str]:
    texts = _trade_clock.get(seconds)
    if texts is None:
        if len(_trade_clock) > 4096:
            _trade_clock.clear()
        texts = _trade_clock[seconds] = (
            _clock_text(seconds, "%Y-%m-%d"),
            _clock_text(seconds, "%H:%M:%S"),
        )
    return texts


def encode_trade(trade: Trade, fmt: str, stream_type: str) -> bytes:
    prev = trade.prev_closing_price
    price = trade.price
    change_price = price - prev if price >= prev else prev - price
    date, clock = _trade_clock_text(trade.trade_timestamp // 1000)
    change_text = java(change_price) if trade.code.startswith("BTC-") else fixed(change_price)
    change = "RISE" if price > prev else ("FALL" if price < prev else "EVEN")
    if fmt == DEFAULT:
        text = (
            f'{{"type":"trade","code":"{trade.code}","timestamp":{trade.timestamp},'
            f'"trade_date":"{date}","trade_time":"{clock}",'
            f'"trade_timestamp":{trade.trade_timestamp},"trade_price":{dotted(price)},'
            f'"trade_volume":{plain(trade.volume)},"ask_bid":"{trade.ask_bid}",'
            f'"prev_closing_price":{fixed(prev)},"change":"{change}",'
            f'"change_price":{change_text},"sequential_id":{trade.sequential_id},'
            f'"best_ask_price":{plain(trade.best_ask_price)},'
            f'"best_ask_size":{plain(trade.best_ask_size)},'
            f'"best_bid_price":{plain(trade.best_bid_price)},'
            f'"best_bid_size":{plain(trade.best_bid_size)},"stream_type":"{stream_type}"}}'
        )
    else:
        text = (
            f'{{"ty":"trade","cd":"{trade.code}","tms":{trade.timestamp},'
            f'"td":"{date}","ttm":"{clock}","ttms":{trade.trade_timestamp},'
            f'"tp":{dotted(price)},"tv":{plain(trade.volume)},"ab":"{trade.ask_bid}",'
            f'"pcp":{fixed(prev)},"c":"{change}","cp":{change_text},'
            f'"sid":{trade.sequential_id},"bap":{plain(trade.best_ask_price)},'
            f'"bas":{plain(trade.best_ask_size)},"bbp":{plain(trade.best_bid_price)},'
            f'"bbs":{plain(trade.best_bid_size)},"st":"{stream_type}"}}'
        )
    return text.encode()


_ticker_static: dict[tuple[str, str, tuple[int, str], tuple[int, str]], str] = {}


def _ticker_tail(code: str, fmt: str, high: tuple[int, str], low: tuple[int, str]) -> str:
    """The 52-week and market-state fields, which change rarely: built once per value."""
    key = (code, fmt, high, low)
    text = _ticker_static.get(key)
    if text is None:
        if len(_ticker_static) > 10_000:
            _ticker_static.clear()
        if fmt == DEFAULT:
            text = (
                f'"highest_52_week_price":{fixed(high[0])},"highest_52_week_date":"{high[1]}",'
                f'"lowest_52_week_price":{fixed(low[0])},"lowest_52_week_date":"{low[1]}",'
                '"market_state":"ACTIVE","is_trading_suspended":false,"delisting_date":null,'
                '"market_warning":"NONE",'
            )
        else:
            text = (
                f'"h52wp":{fixed(high[0])},"h52wdt":"{high[1]}",'
                f'"l52wp":{fixed(low[0])},"l52wdt":"{low[1]}",'
                '"ms":"ACTIVE","its":false,"dd":null,"mw":"NONE",'
            )
        _ticker_static[key] = text
    return text


def encode_ticker(state: MarketState, fmt: str, stream_type: str) -> bytes:
    trade = state.last_trade
    if trade is None:
        raise ValueError(f"{state.code} has no trade yet; a ticker needs one")
    prev = state.prev_closing_price
    price = trade.price
    signed = price - prev
    rate = change_rate(price, prev)
    change = "RISE" if signed > 0 else ("FALL" if signed < 0 else "EVEN")
    date, clock = _ticker_clock_text(trade.trade_timestamp // 1000)
    acc_price = fixed_uncached(state.acc_trade_price, 16, 16)
    acc_price_24h = fixed_uncached(state.acc_trade_price + state.base_24h_price, 16, 16)
    rate_text = fixed_uncached(rate, 10, 10)
    signed_rate = rate_text if signed >= 0 else "-" + rate_text
    volume_24h = fixed_uncached(state.acc_trade_volume + state.base_24h_volume)
    tail = _ticker_tail(state.code, fmt, state.high_52w, state.low_52w)
    if fmt == DEFAULT:
        text = (
            f'{{"type":"ticker","code":"{state.code}",'
            f'"opening_price":{plain(state.opening_price)},"high_price":{plain(state.high_price)},'
            f'"low_price":{plain(state.low_price)},"trade_price":{plain(price)},'
            f'"prev_closing_price":{fixed(prev)},"acc_trade_price":{acc_price},'
            f'"change":"{change}","change_price":{fixed(abs(signed))},'
            f'"signed_change_price":{fixed(signed)},"change_rate":{rate_text},'
            f'"signed_change_rate":{signed_rate},"ask_bid":"{trade.ask_bid}",'
            f'"trade_volume":{plain(trade.volume)},'
            f'"acc_trade_volume":{plain_uncached(state.acc_trade_volume)},'
            f'"trade_date":"{date}","trade_time":"{clock}",'
            f'"trade_timestamp":{trade.trade_timestamp},'
            f'"acc_ask_volume":{plain_uncached(state.acc_ask_volume)},'
            f'"acc_bid_volume":{plain_uncached(state.acc_bid_volume)},{tail}'
            f'"timestamp":{trade.timestamp},"acc_trade_price_24h":{acc_price_24h},'
            f'"acc_trade_volume_24h":{volume_24h},'
            f'"stream_type":"{stream_type}"}}'
        )
    else:
        text = (
            f'{{"ty":"ticker","cd":"{state.code}",'
            f'"op":{plain(state.opening_price)},"hp":{plain(state.high_price)},'
            f'"lp":{plain(state.low_price)},"tp":{plain(price)},"pcp":{fixed(prev)},'
            f'"atp":{acc_price},"c":"{change}","cp":{fixed(abs(signed))},'
            f'"scp":{fixed(signed)},"cr":{rate_text},"scr":{signed_rate},'
            f'"ab":"{trade.ask_bid}","tv":{plain(trade.volume)},'
            f'"atv":{plain_uncached(state.acc_trade_volume)},"tdt":"{date}","ttm":"{clock}",'
            f'"ttms":{trade.trade_timestamp},"aav":{plain_uncached(state.acc_ask_volume)},'
            f'"abv":{plain_uncached(state.acc_bid_volume)},{tail}'
            f'"tms":{trade.timestamp},"atp24h":{acc_price_24h},'
            f'"atv24h":{volume_24h},'
            f'"st":"{stream_type}"}}'
        )
    return text.encode()


_ticker_clock: dict[int, tuple[str, str]] = {}


def _ticker_clock_text(seconds: int) -> tuple[str, str]:
    texts = _ticker_clock.get(seconds)
    if texts is None:
        if len(_ticker_clock) > 4096:
            _ticker_clock.clear()
        texts = _ticker_clock[seconds] = (
            _clock_text(seconds, "%Y%m%d"),
            _clock_text(seconds, "%H%M%S"),
        )
    return texts


class _UnitKey(msgspec.Struct, frozen=True, gc=False):
    """(ask, bid, ask size, bid size) of a book unit, as a cache key the collector never
    sees. With tuple keys the collector untracked the cache dict in a full collection, the
    next new tuple tracked it again in the youngest generation, and every collection on its
    way back to the oldest walked all 200,000 entries: 3-15 ms each time with the event
    loop, and so the paced stream, standing still."""

    ask: int
    bid: int
    ask_size: int
    bid_size: int


# Spelled book units per field naming (DEFAULT or not).
_unit_cache: dict[bool, dict[_UnitKey, str]] = {True: {}, False: {}}


def encode_orderbook(
    state: MarketState, book: BookView, fmt: str, stream_type: str, timestamp: int
) -> bytes:
    default = fmt == DEFAULT
    size = fixed if default else java
    cache = _unit_cache[default]
    if len(cache) >= _CACHE_LIMIT:
        cache = _unit_cache[default] = _retire(cache)
    parts = []
    for ask, bid, ask_size, bid_size in book.units:
        key = _UnitKey(ask, bid, ask_size, bid_size)
        text = cache.get(key)
        if text is None:
            if default:
                text = (
                    f'{{"ask_price":{java(ask)},"bid_price":{java(bid)},'
                    f'"ask_size":{size(ask_size)},"bid_size":{size(bid_size)}}}'
                )
            else:
                text = (
                    f'{{"ap":{java(ask)},"bp":{java(bid)},'
                    f'"as":{size(ask_size)},"bs":{size(bid_size)}}}'
                )
            _free_retired()
            cache[key] = text
        parts.append(text)
    units = ",".join(parts)
    if default:
        text = (
            f'{{"type":"orderbook","code":"{state.code}","timestamp":{timestamp},'
            f'"total_ask_size":{fixed(book.total_ask)},"total_bid_size":{fixed(book.total_bid)},'
            f'"orderbook_units":[{units}],"stream_type":"{stream_type}",'
            f'"level":{plain(book.level)}}}'
        )
    else:
        text = (
            f'{{"ty":"orderbook","cd":"{state.code}","tms":{timestamp},'
            f'"tas":{plain(book.total_ask)},"tbs":{plain(book.total_bid)},'
            f'"obu":[{units}],"st":"{stream_type}","lv":{plain(book.level)}}}'
        )
    return text.encode()


def encode_candle(code: str, candle: Candle, fmt: str, stream_type: str) -> bytes:
    seconds = candle.start_ms // 1000
    price = fixed if fmt == DEFAULT else dotted
    if fmt == DEFAULT:
        accumulated = fixed_uncached(candle.acc_price, 16, 16)
    else:
        accumulated = plain_uncached(candle.acc_price, 16)
    return (
        _CANDLE_TEMPLATE[fmt]
        .format(
            f'"{f"candle.{candle.unit}"}"',
            f'"{code}"',
            f'"{_clock_text(seconds, "%Y-%m-%dT%H:%M:%S")}"',
            f'"{_clock_text(seconds + _KST_MS // 1000, "%Y-%m-%dT%H:%M:%S")}"',
            price(candle.open),
            price(candle.high),
            price(candle.low),
            price(candle.close),
            plain(candle.volume),
            accumulated,
            candle.timestamp,
            f'"{stream_type}"',
        )
        .encode()
    )


STATUS_UP = b'{"status":"UP"}'


def encode_error(name: str, message: str) -> bytes:
    return json.dumps(
        {"error": {"name": name, "message": message}}, ensure_ascii=False, separators=(",", ":")
    ).encode()


# --- REST bodies (quotation endpoints send JSON numbers, like the WebSocket) ---


def rest_market(info: MarketInfo, details: bool) -> str:
    item = {"market": info.code, "korean_name": info.korean_name, "english_name": info.english_name}
    if details:
        item["market_event"] = {
            "warning": False,
            "caution": {
                "PRICE_FLUCTUATIONS": False,
                "TRADING_VOLUME_SOARING": False,
                "DEPOSIT_AMOUNT_SOARING": False,
                "GLOBAL_PRICE_DIFFERENCES": False,
                "CONCENTRATION_OF_SMALL_ACCOUNTS": False,
            },
        }
    return json.dumps(item, ensure_ascii=False, separators=(",", ":"))


def rest_trade(trade: Trade) -> str:
    seconds = trade.trade_timestamp // 1000
    return (
        f'{{"market":"{trade.code}",'
        f'"trade_date_utc":"{_clock_text(seconds, "%Y-%m-%d")}",'
        f'"trade_time_utc":"{_clock_text(seconds, "%H:%M:%S")}",'
        f'"timestamp":{trade.trade_timestamp},'
        f'"trade_price":{plain(trade.price)},"trade_volume":{plain(trade.volume)},'
        f'"prev_closing_price":{plain(trade.prev_closing_price)},'
        f'"change_price":{plain(trade.price - trade.prev_closing_price)},'
        f'"ask_bid":"{trade.ask_bid}","sequential_id":{trade.sequential_id}}}'
    )


def rest_ticker(state: MarketState) -> str:
    trade = state.last_trade
    if trade is None:
        raise ValueError(f"{state.code} has no trade yet; a ticker needs one")
    prev = state.prev_closing_price
    signed = trade.price - prev
    rate = change_rate(trade.price, prev)
    seconds = trade.trade_timestamp // 1000
    kst = seconds + _KST_MS // 1000
    return (
        f'{{"market":"{state.code}",'
        f'"trade_date":"{_clock_text(seconds, "%Y%m%d")}",'
        f'"trade_time":"{_clock_text(seconds, "%H%M%S")}",'
        f'"trade_date_kst":"{_clock_text(kst, "%Y%m%d")}",'
        f'"trade_time_kst":"{_clock_text(kst, "%H%M%S")}",'
        f'"trade_timestamp":{trade.trade_timestamp},'
        f'"opening_price":{plain(state.opening_price)},"high_price":{plain(state.high_price)},'
        f'"low_price":{plain(state.low_price)},"trade_price":{plain(trade.price)},'
        f'"prev_closing_price":{plain(prev)},"change":"{change_of(trade.price, prev)}",'
        f'"change_price":{plain(abs(signed))},"change_rate":{plain_uncached(rate, 10)},'
        f'"signed_change_price":{plain(signed)},'
        f'"signed_change_rate":{plain_uncached(rate if signed >= 0 else -rate, 10)},'
        f'"trade_volume":{plain(trade.volume)},'
        f'"acc_trade_price":{plain_uncached(state.acc_trade_price, 16)},'
        f'"acc_trade_price_24h":{plain_uncached(state.acc_trade_price + state.base_24h_price, 16)},'
        f'"acc_trade_volume":{plain(state.acc_trade_volume)},'
        f'"acc_trade_volume_24h":{plain(state.acc_trade_volume + state.base_24h_volume)},'
        f'"highest_52_week_price":{plain(state.high_52w[0])},'
        f'"highest_52_week_date":"{state.high_52w[1]}",'
        f'"lowest_52_week_price":{plain(state.low_52w[0])},'
        f'"lowest_52_week_date":"{state.low_52w[1]}",'
        f'"timestamp":{trade.timestamp}}}'
    )


def rest_orderbook(state: MarketState, book: BookView) -> str:
    units = ",".join(
        f'{{"ask_price":{plain(ask)},"bid_price":{plain(bid)},'
        f'"ask_size":{plain(ask_size)},"bid_size":{plain(bid_size)}}}'
        for ask, bid, ask_size, bid_size in book.units
    )
    return (
        f'{{"market":"{state.code}","timestamp":{state.book_timestamp},'
        f'"total_ask_size":{plain(book.total_ask)},"total_bid_size":{plain(book.total_bid)},'
        f'"orderbook_units":[{units}],"level":{plain(book.level)}}}'
    )
