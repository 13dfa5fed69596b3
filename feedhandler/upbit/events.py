"""Typed, immutable Upbit events under Upbit's DEFAULT field names.

Whichever wire format arrived (DEFAULT, SIMPLE, the 2018 legacy schema), the decoder
returns these classes. Prices, sizes, volumes, rates, fees and balances are
:class:`decimal.Decimal` equal to the wire number; integers are exact Python ints;
JSON null is ``None``. Optional keys that a frame lacks are ``None`` as well.

The structs are msgspec ``Struct`` types (frozen, no GC tracking): decoding straight
into them costs one pass, and they compare by value. ``forbid_unknown_fields`` makes
the fast decode path detect schema drift; the decoder then counts the unknown keys
and decodes leniently, so extra keys never reject a frame.
"""

from __future__ import annotations

from decimal import Decimal
from typing import ClassVar, TypeAlias

import msgspec

_STRUCT_OPTIONS = {"frozen": True, "gc": False, "forbid_unknown_fields": True}


class Ticker(msgspec.Struct, **_STRUCT_OPTIONS):
    """Ticker (current price and daily statistics) of one pair."""

    type: str
    code: str
    opening_price: Decimal | None = None
    high_price: Decimal | None = None
    low_price: Decimal | None = None
    trade_price: Decimal | None = None
    prev_closing_price: Decimal | None = None
    acc_trade_price: Decimal | None = None
    change: str | None = None
    change_price: Decimal | None = None
    signed_change_price: Decimal | None = None
    change_rate: Decimal | None = None
    signed_change_rate: Decimal | None = None
    ask_bid: str | None = None
    trade_volume: Decimal | None = None
    acc_trade_volume: Decimal | None = None
    trade_date: str | None = None
    trade_time: str | None = None
    trade_timestamp: int | None = None
    acc_ask_volume: Decimal | None = None
    acc_bid_volume: Decimal | None = None
    highest_52_week_price: Decimal | None = None
    highest_52_week_date: str | None = None
    lowest_52_week_price: Decimal | None = None
    lowest_52_week_date: str | None = None
    market_state: str | None = None
    is_trading_suspended: bool | None = None
    delisting_date: str | None = None
    market_warning: str | None = None
    timestamp: int | None = None
    acc_trade_price_24h: Decimal | None = None
    acc_trade_volume_24h: Decimal | None = None
    stream_type: str | None = None
    trade_status: str | None = None
    market_state_for_ios: str | None = None


class Trade(msgspec.Struct, **_STRUCT_OPTIONS):
    """One executed trade; ``ask_bid`` is the taker side. ``best_*`` are absent before 2022."""

    type: str
    code: str
    timestamp: int
    trade_date: str
    trade_time: str
    trade_timestamp: int
    trade_price: Decimal
    trade_volume: Decimal
    ask_bid: str
    prev_closing_price: Decimal | None
    change: str | None
    change_price: Decimal | None
    sequential_id: int
    best_ask_price: Decimal | None = None
    best_ask_size: Decimal | None = None
    best_bid_price: Decimal | None = None
    best_bid_size: Decimal | None = None
    stream_type: str | None = None


class OrderbookUnit(msgspec.Struct, **_STRUCT_OPTIONS):
    """One price level of a book: index 0 of ``Orderbook.orderbook_units`` is the best."""

    ask_price: Decimal
    bid_price: Decimal
    ask_size: Decimal
    bid_size: Decimal


class Orderbook(msgspec.Struct, **_STRUCT_OPTIONS):
    """A full order book snapshot (Upbit never sends deltas)."""

    type: str
    code: str
    timestamp: int
    total_ask_size: Decimal
    total_bid_size: Decimal
    orderbook_units: tuple[OrderbookUnit, ...]
    stream_type: str | None = None
    level: Decimal | None = None


class Candle(msgspec.Struct, **_STRUCT_OPTIONS):
    """A candle; ``type`` keeps the unit (``candle.1s`` ... ``candle.240m``)."""

    type: str
    code: str
    candle_date_time_utc: str
    candle_date_time_kst: str
    opening_price: Decimal
    high_price: Decimal
    low_price: Decimal
    trade_price: Decimal
    candle_acc_trade_volume: Decimal
    candle_acc_trade_price: Decimal | None = None
    timestamp: int | None = None
    stream_type: str | None = None


class MyOrder(msgspec.Struct, **_STRUCT_OPTIONS):
    """A private order event; every numeric field may be null (market orders, old schemas)."""

    type: str
    code: str
    uuid: str
    ask_bid: str | None = None
    order_type: str | None = None
    state: str | None = None
    trade_uuid: str | None = None
    price: Decimal | None = None
    avg_price: Decimal | None = None
    volume: Decimal | None = None
    remaining_volume: Decimal | None = None
    executed_volume: Decimal | None = None
    trades_count: int | None = None
    reserved_fee: Decimal | None = None
    remaining_fee: Decimal | None = None
    paid_fee: Decimal | None = None
    locked: Decimal | None = None
    executed_funds: Decimal | None = None
    time_in_force: str | None = None
    trade_fee: Decimal | None = None
    is_maker: bool | None = None
    identifier: str | None = None
    smp_type: str | None = None
    prevented_volume: Decimal | None = None
    prevented_locked: Decimal | None = None
    trade_timestamp: int | None = None
    order_timestamp: int | None = None
    timestamp: int | None = None
    stream_type: str | None = None


class AssetBalance(msgspec.Struct, **_STRUCT_OPTIONS):
    """One currency of a myAsset event: ``balance`` is available, ``locked`` is in orders."""

    currency: str
    balance: Decimal | None = None
    locked: Decimal | None = None


class MyAsset(msgspec.Struct, **_STRUCT_OPTIONS):
    """A private balance-change event."""

    type: str
    assets: tuple[AssetBalance, ...]
    asset_uuid: str | None = None
    asset_timestamp: int | None = None
    timestamp: int | None = None
    stream_type: str | None = None


class ErrorMessage(msgspec.Struct, **_STRUCT_OPTIONS):
    """``{"error": {"name", "message"}}``; a numeric name (REST's 400) becomes its text."""

    name: str
    message: str | None = None

    stream_type: ClassVar[None] = None


class Status(msgspec.Struct, **_STRUCT_OPTIONS):
    """The keepalive answer ``{"status": "UP"}``."""

    status: str

    stream_type: ClassVar[None] = None


Event: TypeAlias = Ticker | Trade | Orderbook | Candle | MyOrder | MyAsset | ErrorMessage | Status

EVENT_TYPES: tuple[type[Event], ...] = (
    Ticker,
    Trade,
    Orderbook,
    Candle,
    MyOrder,
    MyAsset,
    ErrorMessage,
    Status,
)
