"""Byte layout of the snapshot segments: record dtypes, their struct twins, header words.

A segment is one file in ``/dev/shm`` named ``<prefix>.<kind>`` (kind ``ticker`` or
``orderbook``), laid out as::

    header        HEADER_SIZE bytes of little-endian uint64 words (see the ``H_*`` indexes)
    dtype text    DESCR_SIZE bytes: ``repr(dtype.descr)`` of the record dtype, NUL padded
    symbol table  max_symbols x SYMBOL_SIZE bytes, ASCII codes, NUL padded
    latest index  max_symbols x uint64: feed_seq of each symbol's newest record (0 = none)
    latest slots  max_symbols records: each symbol's newest record, seqlocked on its own
    ring          capacity records: every record in feed order, slot = (feed_seq - 1) % capacity

Every record starts with ``seq`` (the seqlock word: odd while the writer is inside the
record, ``2 * feed_seq`` once it is complete) followed by ``feed_seq``, ``recv_ns``,
``origin_ns``, ``timestamp`` and the ``symbol`` id (index into the symbol table).
Keeping each symbol's newest record in its own slot, next to the ring, means a quiet
symbol's last update is never lost when busy symbols wrap the ring.

Enum fields hold small integers; 0 always means "unknown / absent". The maps below are
the contract between the writer and numpy code reading the records.

Orderbook ``levels`` is a (30,) sub-array of (ask_price, bid_price, ask_size, bid_size),
index 0 = best; ``rec["levels"]["bid_price"]`` is a plain float64 array. ``n_levels`` is
the number of units the message carried (Upbit pads thin books with zero-price units;
they are stored as received, so a side whose price is 0 is empty). Levels beyond
``n_levels`` are zero.
"""

from __future__ import annotations

import ast
import functools
import gc
import struct
from dataclasses import dataclass
from typing import Final

import numpy as np

MAGIC: Final = b"UPFEEDS1"
LAYOUT_VERSION: Final = 1

KIND_TICKER: Final = "ticker"
KIND_ORDERBOOK: Final = "orderbook"
KIND_IDS: Final[dict[str, int]] = {KIND_TICKER: 1, KIND_ORDERBOOK: 2}

# Segment states, header word H_STATE.
STATE_LIVE: Final = 1
STATE_CLOSED: Final = 2
STATE_SUPERSEDED: Final = 3
STATE_NAMES: Final[dict[int, str]] = {
    STATE_LIVE: "live",
    STATE_CLOSED: "closed",
    STATE_SUPERSEDED: "superseded",
}

CHANGE: Final[dict[str, int]] = {"RISE": 1, "EVEN": 2, "FALL": 3}
ASK_BID: Final[dict[str, int]] = {"ASK": 1, "BID": 2}
MARKET_STATE: Final[dict[str, int]] = {"PREVIEW": 1, "ACTIVE": 2, "DELISTED": 3}
MARKET_WARNING: Final[dict[str, int]] = {"NONE": 1, "CAUTION": 2}
STREAM_TYPE: Final[dict[str, int]] = {"SNAPSHOT": 1, "REALTIME": 2}
# trading_suspended is int8: -1 unknown, 0 trading, 1 suspended.
TRADING_SUSPENDED: Final[dict[bool | None, int]] = {None: -1, False: 0, True: 1}

MAX_LEVELS: Final = 30

TICKER_FLOAT_FIELDS: Final[tuple[str, ...]] = (
    "opening_price",
    "high_price",
    "low_price",
    "trade_price",
    "prev_closing_price",
    "change_price",
    "signed_change_price",
    "change_rate",
    "signed_change_rate",
    "trade_volume",
    "acc_trade_volume",
    "acc_trade_volume_24h",
    "acc_trade_price",
    "acc_trade_price_24h",
    "acc_ask_volume",
    "acc_bid_volume",
    "highest_52_week_price",
    "lowest_52_week_price",
)

_COMMON_FIELDS: list[tuple[str, str, int]] = [
    ("seq", "<u8", 0),
    ("feed_seq", "<u8", 8),
    ("recv_ns", "<i8", 16),
    ("origin_ns", "<i8", 24),
    ("timestamp", "<i8", 32),
    ("symbol", "<u4", 40),
]


def _structured(fields: list[tuple[str, object, int]], itemsize: int) -> np.dtype:
    return np.dtype(
        {
            "names": [f[0] for f in fields],
            "formats": [f[1] for f in fields],
            "offsets": [f[2] for f in fields],
            "itemsize": itemsize,
        }
    )


TICKER_DTYPE: Final = _structured(
    [
        *_COMMON_FIELDS,
        ("change", "u1", 44),
        ("ask_bid", "u1", 45),
        ("market_state", "u1", 46),
        ("market_warning", "u1", 47),
        ("trading_suspended", "i1", 48),
        ("stream_type", "u1", 49),
        ("trade_timestamp", "<i8", 56),
        *((name, "<f8", 64 + 8 * i) for i, name in enumerate(TICKER_FLOAT_FIELDS)),
    ],
    64 + 8 * len(TICKER_FLOAT_FIELDS),
)

# One order-book level, in the order of Upbit's orderbook_units objects, so that units
# already decoded as tuples are stored without reordering.
LEVEL_FIELDS: Final = ("ask_price", "bid_price", "ask_size", "bid_size")
LEVEL_DTYPE: Final = np.dtype([(name, "<f8") for name in LEVEL_FIELDS])

ORDERBOOK_DTYPE: Final = _structured(
    [
        *_COMMON_FIELDS,
        ("n_levels", "<u2", 44),
        ("stream_type", "u1", 46),
        ("total_ask_size", "<f8", 48),
        ("total_bid_size", "<f8", 56),
        ("level", "<f8", 64),
        ("levels", (LEVEL_DTYPE, (MAX_LEVELS,)), 72),
    ],
    72 + LEVEL_DTYPE.itemsize * MAX_LEVELS,
)

RECORD_DTYPES: Final[dict[str, np.dtype]] = {
    KIND_TICKER: TICKER_DTYPE,
    KIND_ORDERBOOK: ORDERBOOK_DTYPE,
}

# Struct twins of the dtypes, packing everything after the seq word (offset 8). Pad bytes
# ("x") are written as zeros, so one pack_into overwrites the whole record.
TICKER_STRUCT: Final = struct.Struct("<QqqqIBBBBbB6xq18d")


def _orderbook_struct(n_levels: int) -> struct.Struct:
    unused = (MAX_LEVELS - n_levels) * LEVEL_DTYPE.itemsize
    return struct.Struct(f"<QqqqIHBx3d{4 * n_levels}d{unused}x")


ORDERBOOK_STRUCTS: Final[tuple[struct.Struct, ...]] = tuple(
    _orderbook_struct(n) for n in range(MAX_LEVELS + 1)
)

if TICKER_STRUCT.size != TICKER_DTYPE.itemsize - 8:
    raise AssertionError("ticker struct and dtype disagree")
if any(s.size != ORDERBOOK_DTYPE.itemsize - 8 for s in ORDERBOOK_STRUCTS):
    raise AssertionError("orderbook struct and dtype disagree")

# Header: uint64 words at these indexes (byte offset = 8 * index). Word 0 is the magic.
H_MAGIC: Final = 0
H_VERSION: Final = 1
H_KIND: Final = 2
H_STATE: Final = 3
H_GENERATION: Final = 4
H_WRITER_PID: Final = 5
H_WRITER_START: Final = 6  # writer's start time in clock ticks since boot (/proc/<pid>/stat)
H_CREATED_NS: Final = 7
H_HEARTBEAT_NS: Final = 8
H_HEAD: Final = 9  # feed_seq of the newest complete ring record (records ever written)
H_RECORD_SIZE: Final = 10
H_CAPACITY: Final = 11
H_MAX_SYMBOLS: Final = 12
H_N_SYMBOLS: Final = 13
H_DESCR_LEN: Final = 14
H_SYMTAB_OFF: Final = 15
H_INDEX_OFF: Final = 16
H_LATEST_OFF: Final = 17
H_RING_OFF: Final = 18
H_TOTAL_SIZE: Final = 19
# Readers sleeping on the head (shm/_notify.h): how many are about to sleep or asleep,
# and 1 when the writer wakes them at every head store and state change (0: it does not,
# so readers poll). The futex word is the head's low 32 bits. H_WAKE_MISSES: the
# writer's wakes in a row that found no sleeper (a reader killed asleep stays counted);
# from shm/_notify.h's WAKE_MISSES_TO_DOUBT on, it stops waking until a reader about to
# sleep clears the word.
H_WAITERS: Final = 20
H_WAKES_READERS: Final = 21
H_WAKE_MISSES: Final = 22

HEADER_SIZE: Final = 256
DESCR_SIZE: Final = 4096
SYMBOL_SIZE: Final = 32
_ALIGN: Final = 64


def _align(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


@dataclass(frozen=True, slots=True)
class SegmentGeometry:
    """Byte offsets of each section for a record size, ring capacity and symbol capacity."""

    record_size: int
    capacity: int
    max_symbols: int
    symtab_off: int
    index_off: int
    latest_off: int
    ring_off: int
    total_size: int

    @classmethod
    def compute(cls, record_size: int, capacity: int, max_symbols: int) -> SegmentGeometry:
        if record_size <= 0 or record_size % 8:
            raise ValueError(f"record size {record_size} must be a positive multiple of 8")
        if capacity < 1:
            raise ValueError(f"ring capacity must be at least 1, got {capacity}")
        if max_symbols < 1:
            raise ValueError(f"max_symbols must be at least 1, got {max_symbols}")
        symtab_off = HEADER_SIZE + DESCR_SIZE
        index_off = _align(symtab_off + max_symbols * SYMBOL_SIZE)
        latest_off = _align(index_off + max_symbols * 8)
        ring_off = _align(latest_off + max_symbols * record_size)
        total_size = _align(ring_off + capacity * record_size)
        return cls(
            record_size,
            capacity,
            max_symbols,
            symtab_off,
            index_off,
            latest_off,
            ring_off,
            total_size,
        )


def _format_literal(dtype: np.dtype) -> object:
    if dtype.subdtype is not None:
        base, shape = dtype.subdtype
        return (_format_literal(base), shape)
    if dtype.names is not None:
        return dtype.descr
    return dtype.str


def dtype_descr_text(dtype: np.dtype) -> bytes:
    """The dtype description stored in the header: a Python literal ``numpy.dtype`` accepts.

    Names, formats, offsets and itemsize are all spelled out, so padding stays padding.
    """
    names = list(dtype.names or ())
    spec = {
        "names": names,
        "formats": [_format_literal(dtype.fields[n][0]) for n in names],
        "offsets": [dtype.fields[n][1] for n in names],
        "itemsize": dtype.itemsize,
    }
    return repr(spec).encode("ascii")


@functools.lru_cache(maxsize=64)
def dtype_from_descr_text(text: bytes) -> np.dtype:
    """The dtype back from :func:`dtype_descr_text`; ValueError if the text is damaged."""
    collecting = gc.isenabled()
    # CPython 3.11's AST builder fails ("recursion depth mismatch") when a collection
    # inside it runs a finalizer that executes Python code: no collection meanwhile.
    gc.disable()
    try:
        return np.dtype(ast.literal_eval(text.decode("ascii")))
    except (SyntaxError, TypeError, ValueError, MemoryError, RecursionError) as exc:
        raise ValueError(f"unreadable record dtype description: {exc}") from exc
    finally:
        if collecting:
            gc.enable()
