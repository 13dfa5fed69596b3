"""Upbit's field names: DEFAULT key -> SIMPLE key, per message type (SPEC.md section 4).

This is the single table both decoders (typed events and the hot path) derive their
SIMPLE wire schemas from. Keys not listed here are unknown and get counted.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Final

TICKER: Final = MappingProxyType(
    {
        "type": "ty",
        "code": "cd",
        "opening_price": "op",
        "high_price": "hp",
        "low_price": "lp",
        "trade_price": "tp",
        "prev_closing_price": "pcp",
        "acc_trade_price": "atp",
        "change": "c",
        "change_price": "cp",
        "signed_change_price": "scp",
        "change_rate": "cr",
        "signed_change_rate": "scr",
        "ask_bid": "ab",
        "trade_volume": "tv",
        "acc_trade_volume": "atv",
        "trade_date": "tdt",
        "trade_time": "ttm",
        "trade_timestamp": "ttms",
        "acc_ask_volume": "aav",
        "acc_bid_volume": "abv",
        "highest_52_week_price": "h52wp",
        "highest_52_week_date": "h52wdt",
        "lowest_52_week_price": "l52wp",
        "lowest_52_week_date": "l52wdt",
        "market_state": "ms",
        "is_trading_suspended": "its",
        "delisting_date": "dd",
        "market_warning": "mw",
        "timestamp": "tms",
        "acc_trade_price_24h": "atp24h",
        "acc_trade_volume_24h": "atv24h",
        "stream_type": "st",
        # Deprecated, still present (null) in captures.
        "trade_status": "ts",
        "market_state_for_ios": "msfi",
    }
)

TRADE: Final = MappingProxyType(
    {
        "type": "ty",
        "code": "cd",
        "timestamp": "tms",
        "trade_date": "td",
        "trade_time": "ttm",
        "trade_timestamp": "ttms",
        "trade_price": "tp",
        "trade_volume": "tv",
        "ask_bid": "ab",
        "prev_closing_price": "pcp",
        "change": "c",
        "change_price": "cp",
        "sequential_id": "sid",
        "best_ask_price": "bap",
        "best_ask_size": "bas",
        "best_bid_price": "bbp",
        "best_bid_size": "bbs",
        "stream_type": "st",
    }
)

ORDERBOOK: Final = MappingProxyType(
    {
        "type": "ty",
        "code": "cd",
        "timestamp": "tms",
        "total_ask_size": "tas",
        "total_bid_size": "tbs",
        "orderbook_units": "obu",
        "stream_type": "st",
        "level": "lv",
    }
)

ORDERBOOK_UNIT: Final = MappingProxyType(
    {
        "ask_price": "ap",
        "bid_price": "bp",
        "ask_size": "as",
        "bid_size": "bs",
    }
)

CANDLE: Final = MappingProxyType(
    {
        "type": "ty",
        "code": "cd",
        "candle_date_time_utc": "cdttmu",
        "candle_date_time_kst": "cdttmk",
        "opening_price": "op",
        "high_price": "hp",
        "low_price": "lp",
        "trade_price": "tp",
        "candle_acc_trade_volume": "catv",
        "candle_acc_trade_price": "catp",
        "timestamp": "tms",
        "stream_type": "st",
    }
)

MY_ORDER: Final = MappingProxyType(
    {
        "type": "ty",
        "code": "cd",
        "uuid": "uid",
        "ask_bid": "ab",
        "order_type": "ot",
        "state": "s",
        "trade_uuid": "tuid",
        "price": "p",
        "avg_price": "ap",
        "volume": "v",
        "remaining_volume": "rv",
        "executed_volume": "ev",
        "trades_count": "tc",
        "reserved_fee": "rsf",
        "remaining_fee": "rmf",
        "paid_fee": "pf",
        "locked": "l",
        "executed_funds": "ef",
        "time_in_force": "tif",
        "trade_fee": "tf",
        "is_maker": "im",
        "identifier": "id",
        "smp_type": "smpt",
        "prevented_volume": "pv",
        "prevented_locked": "pl",
        "trade_timestamp": "ttms",
        "order_timestamp": "otms",
        "timestamp": "tms",
        "stream_type": "st",
    }
)

MY_ASSET: Final = MappingProxyType(
    {
        "type": "ty",
        "asset_uuid": "astuid",
        "assets": "ast",
        "asset_timestamp": "asttms",
        "timestamp": "tms",
        "stream_type": "st",
    }
)

ASSET_BALANCE: Final = MappingProxyType(
    {
        "currency": "cu",
        "balance": "b",
        "locked": "l",
    }
)

# The key naming the message type, per format (the tag of the hot path's unions).
TYPE_KEYS: Final = MappingProxyType({"DEFAULT": "type", "SIMPLE": "ty"})

# The 2018 schema named the pair `market` (DEFAULT) / `mk` (SIMPLE) and had no type key.
LEGACY_CODE_KEYS: Final = MappingProxyType({"DEFAULT": "market", "SIMPLE": "mk"})

# The simulator's opt-in send timestamp: not an Upbit field, never counted as unknown.
SIM_NS_KEY: Final = "sim_ns"

BY_TYPE: Final = MappingProxyType(
    {
        "ticker": TICKER,
        "trade": TRADE,
        "orderbook": ORDERBOOK,
        "candle": CANDLE,
        "myOrder": MY_ORDER,
        "myAsset": MY_ASSET,
    }
)


def simple_name(table: MappingProxyType[str, str], default_name: str) -> str:
    """The SIMPLE key of a DEFAULT key; names outside the table keep their spelling."""
    return table.get(default_name, default_name)
