"""The C helpers of the shm rings, when they were built.

* The writer's record stores (``shm/_fastwrite.c``): a store takes a decoded message
  and publishes its whole record with the writer's seqlock protocol in one call, about
  ten times faster than the Python path; for anything outside the common case it
  writes nothing and returns False, and the Python path stores the message (with the
  same bytes).
* The reader's ring copy (``shm/_fastread.c``): the records of a feed_seq range that
  were complete and unchanged while copied, as ``SnapshotReader.since`` keeps them.
* Sleeping readers (``shm/_notify.h``): a writer with the C stores wakes the readers
  sleeping on its head (a futex) whenever it publishes a record or changes state, and
  says so in the header (``H_WAKES_READERS``); ``wait_heads`` is the readers' sleep.

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
        "WAITERS_WORD": L.H_WAITERS,
        "WAKES_WORD": L.H_WAKES_READERS,
        "WAKE_MISSES_WORD": L.H_WAKE_MISSES,
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


def wake_readers(segment: memoryview) -> None:
    """Wake every reader sleeping on the head of ``segment`` (a writable view of at least
    its header); nothing when the C helpers are not in use."""
    if _MODULE is not None:
        _MODULE.wake_readers(segment)


def _load_reader() -> tuple[ModuleType | None, str]:
    _fastread, status = _import("_fastread")
    if _fastread is None:
        return None, status
    expected = {"HEAD_WORD": L.H_HEAD, "STATE_WORD": L.H_STATE, "WAITERS_WORD": L.H_WAITERS}
    for name, value in expected.items():
        if getattr(_fastread, name, None) != value:
            return None, f"built for another record layout ({name})"
    return _fastread, "in use"


_READER, READER_STATUS = _load_reader()

#: ``copy_ring(buffer, ring_off, record_size, capacity, first, last) -> bytearray``, or
#: None when the reader's C copy is not built or turned off.
copy_ring: Callable[[object, int, int, int, int, int], bytearray] | None = (
    None if _READER is None else _READER.copy_ring
)

#: ``wait_heads(headers, cursors, timeout, spin) -> int``: sleep until a segment's head
#: moves past its cursor or the segment stops being live; the index of that segment, -1
#: on timeout, -2 when the kernel cannot sleep on several segments at once. None when
#: the reader's C helpers are not built or turned off.
wait_heads: Callable[[object, object, float, float], int] | None = (
    None if _READER is None else _READER.wait_heads
)
MAX_WAIT_SEGMENTS: int = 0 if _READER is None else _READER.MAX_WAIT_SEGMENTS

#: ``doorbell(headers, cursors, answered, answer_fd, ring_fd, timeout) -> (answered,
#: heads) | None``: a shm doorbell's cycles for up to ``timeout`` s with the GIL released
#: (wait for ``answer_fd`` unless answered, sleep on the heads, write 1 to ``ring_fd``),
#: returning early when a segment's state leaves live; None when the kernel cannot sleep
#: on several segments at once. None when the reader's C helpers are not built.
doorbell: (
    Callable[[object, object, bool, int, int, float], tuple[bool, list[int]] | None] | None
) = None if _READER is None else _READER.doorbell
