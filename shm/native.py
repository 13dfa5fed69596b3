"""The C helpers of the shm rings, when they were built.

* The writer's record stores (``shm/_fastwrite.c``): a store takes a decoded message
  and publishes its whole record with the writer's seqlock protocol in one call, about
  ten times faster than the Python path; for anything outside the common case it
  writes nothing and returns False, and the Python path stores the message (with the
  same bytes).
* The reader's ring copy (``shm/_fastread.c``): the records of a feed_seq range that
  were complete and unchanged while copied, as ``SnapshotReader.since`` keeps them.

Both are compiled at install time when a C compiler is present;
``UPFEED_PURE_PYTHON=1`` in the environment turns them off.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from types import ModuleType

from shm import layout as L

DISABLE_ENV = "UPFEED_PURE_PYTHON"


def turned_off() -> bool:
    """True when ``UPFEED_PURE_PYTHON`` asks for no compiled helper at all (this module's
    stores and the trade renderer of :mod:`feedhandler.upbit.hot`)."""
    return os.environ.get(DISABLE_ENV, "") not in ("", "0")


def _import(name: str) -> tuple[ModuleType | None, str]:
    if turned_off():
        return None, f"turned off by {DISABLE_ENV}"
    try:
        return importlib.import_module(f"shm.{name}"), "in use"
    except ImportError as exc:
        return None, f"not built ({exc})"


def _load() -> tuple[ModuleType | None, str]:
    _fastwrite, status = _import("_fastwrite")
    if _fastwrite is None:
        return None, status
    expected = {
        "TICKER_RECORD_SIZE": L.TICKER_DTYPE.itemsize,
        "ORDERBOOK_RECORD_SIZE": L.ORDERBOOK_DTYPE.itemsize,
        "MAX_LEVELS": L.MAX_LEVELS,
        "HEAD_WORD": L.H_HEAD,
        "TICKER_FLOAT_FIELDS": L.TICKER_FLOAT_FIELDS,
    }
    for name, value in expected.items():
        if getattr(_fastwrite, name, None) != value:
            return None, f"built for another record layout ({name})"
    _fastwrite.set_enum_maps(
        {**L.CHANGE, None: 0},
        {**L.ASK_BID, None: 0},
        {**L.MARKET_STATE, None: 0},
        {**L.MARKET_WARNING, None: 0},
        dict(L.TRADING_SUSPENDED),
        {**L.STREAM_TYPE, None: 0},
    )
    return _fastwrite, "in use"


_MODULE, STATUS = _load()


def available() -> bool:
    """True when the C stores are built, match this layout and are not turned off."""
    return _MODULE is not None


def module() -> ModuleType | None:
    return _MODULE


_READER, READER_STATUS = _import("_fastread")

#: ``copy_ring(buffer, ring_off, record_size, capacity, first, last) -> bytearray``, or
#: None when the reader's C copy is not built or turned off.
copy_ring: Callable[[object, int, int, int, int, int], bytearray] | None = (
    None if _READER is None else _READER.copy_ring
)
