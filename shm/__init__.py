"""Shared-memory snapshot rings (ticker, orderbook) with seqlocked, lock-free readers.

The feed process creates one writer per kind::

    writer = shm.TickerWriter("upfeed", ["KRW-BTC", "KRW-ETH"], capacity=4096)
    feed_seq = writer.write_ticker(msg, recv_ns)   # msg: decoded ticker struct
    writer.heartbeat()                             # periodically
    writer.close()                                 # unlinks /dev/shm/upfeed.ticker

Any process reads::

    reader = shm.attach("upfeed", "ticker", timeout=5.0)
    rec = reader.latest("KRW-BTC")                 # np.void of reader.dtype, or None
    rec["trade_price"], rec["recv_ns"]
    records, cursor, overrun = reader.since(cursor)
    head = reader.wait_for_head(cursor, timeout=1.0)   # sleeps until the next record

Layout and enum maps: :mod:`shm.layout`.
"""

from shm.errors import (
    InconsistentReadError,
    LayoutMismatchError,
    SegmentNotFoundError,
    SegmentOwnedError,
    SegmentSpaceError,
    ShmError,
    SymbolTableFullError,
    UnknownSymbolError,
)
from shm.layout import (
    ASK_BID,
    CHANGE,
    KIND_ORDERBOOK,
    KIND_TICKER,
    LEVEL_DTYPE,
    MARKET_STATE,
    MARKET_WARNING,
    MAX_LEVELS,
    ORDERBOOK_DTYPE,
    STREAM_TYPE,
    TICKER_DTYPE,
    TRADING_SUSPENDED,
)
from shm.reader import SnapshotReader, attach, ring_on_heads, wait_for_heads
from shm.segment import SHM_DIR, describe, segment_name, segment_path
from shm.writer import OrderbookWriter, SnapshotWriter, TickerWriter, create_writer

__all__ = [
    "ASK_BID",
    "CHANGE",
    "KIND_ORDERBOOK",
    "KIND_TICKER",
    "LEVEL_DTYPE",
    "MARKET_STATE",
    "MARKET_WARNING",
    "MAX_LEVELS",
    "ORDERBOOK_DTYPE",
    "SHM_DIR",
    "STREAM_TYPE",
    "TICKER_DTYPE",
    "TRADING_SUSPENDED",
    "InconsistentReadError",
    "LayoutMismatchError",
    "OrderbookWriter",
    "SegmentNotFoundError",
    "SegmentOwnedError",
    "SegmentSpaceError",
    "ShmError",
    "SnapshotReader",
    "SnapshotWriter",
    "SymbolTableFullError",
    "TickerWriter",
    "UnknownSymbolError",
    "attach",
    "create_writer",
    "describe",
    "ring_on_heads",
    "segment_name",
    "segment_path",
    "wait_for_heads",
]
