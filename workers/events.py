"""Typed events decoded from bus frames, with exact numbers.

The feed publishes each event under Upbit's DEFAULT field names with prices, sizes and
balances as decimal strings (DESIGN.md section 4). These msgspec structs decode them
straight into ``Decimal`` (from a JSON string or a JSON number, digit for digit) and
big integers such as ``sequential_id`` into ``int``. Fields that Upbit omits or sends
as null in some frames are optional; unknown fields are ignored, so a field added by
Upbit does not break a worker.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Generic, TypeVar

import msgspec

Data = TypeVar("Data")


class Message(msgspec.Struct, Generic[Data], frozen=True):
    """The bus envelope: per-topic ``seq``, feed receive time, optional upstream send time."""

    seq: int
    recv_ns: int
    data: Data
    origin_ns: int = 0


class Trade(msgspec.Struct, frozen=True):
    code: str
    trade_price: Decimal
    trade_volume: Decimal
    ask_bid: str
    sequential_id: int
    trade_timestamp: int
    timestamp: int = 0
    trade_date: str = ""
    trade_time: str = ""
    prev_closing_price: Decimal | None = None
    change: str | None = None
    change_price: Decimal | None = None
    best_ask_price: Decimal | None = None
    best_ask_size: Decimal | None = None
    best_bid_price: Decimal | None = None
    best_bid_size: Decimal | None = None
    stream_type: str = "REALTIME"
    type: str = "trade"
    #: True for a trade the feed recovered from REST after a gap in the live stream.
    backfill: bool = False

    @property
    def is_buy(self) -> bool:
        """True when the taker bought (Upbit ``BID``)."""
        return self.ask_bid == "BID"


class Candle(msgspec.Struct, frozen=True):
    type: str
    code: str
    candle_date_time_utc: str
    opening_price: Decimal
    high_price: Decimal
    low_price: Decimal
    trade_price: Decimal
    candle_acc_trade_volume: Decimal
    candle_date_time_kst: str = ""
    candle_acc_trade_price: Decimal | None = None
    timestamp: int = 0
    stream_type: str = "REALTIME"

    @property
    def unit(self) -> str:
        """``1m`` for ``candle.1m``."""
        return self.type.partition(".")[2]


class MyOrder(msgspec.Struct, frozen=True):
    code: str
    uuid: str
    ask_bid: str
    order_type: str
    state: str
    timestamp: int = 0
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
    stream_type: str = "REALTIME"
    type: str = "myOrder"


class AssetBalance(msgspec.Struct, frozen=True):
    currency: str
    balance: Decimal
    locked: Decimal


class MyAsset(msgspec.Struct, frozen=True):
    assets: tuple[AssetBalance, ...]
    asset_uuid: str = ""
    asset_timestamp: int = 0
    timestamp: int = 0
    stream_type: str = "REALTIME"
    type: str = "myAsset"


TRADE_DECODER = msgspec.json.Decoder(Message[Trade])
CANDLE_DECODER = msgspec.json.Decoder(Message[Candle])
ORDER_DECODER = msgspec.json.Decoder(Message[MyOrder])
ASSET_DECODER = msgspec.json.Decoder(Message[MyAsset])
SYS_DECODER = msgspec.json.Decoder(Message[dict[str, Any]])

DecodeError = (msgspec.DecodeError, msgspec.ValidationError)
