"""The writer's C record stores (``shm/_fastwrite.c``), when they were built.

A store takes a decoded message and publishes its whole record with the writer's
seqlock protocol in one call, about ten times faster than the Python path; for anything
outside the common case it writes nothing and returns False, and the Python path stores
the message (with the same bytes). The module is compiled at install time when a C
compiler is present; ``UPFEED_PURE_PYTHON=1`` in the environment turns it off.
"""

from __future__ import annotations

import os
from types import ModuleType

from shm import layout as L

DISABLE_ENV = "UPFEED_PURE_PYTHON"


def turned_off() -> bool:
    """True when ``UPFEED_PURE_PYTHON`` asks for no compiled helper at all (this module's
    stores and the trade renderer of :mod:`feedhandler.upbit.hot`)."""
    return os.environ.get(DISABLE_ENV, "") not in ("", "0")


def _load() -> tuple[ModuleType | None, str]:
    if turned_off():
        return None, f"turned off by {DISABLE_ENV}"
    try:
        from shm import _fastwrite  # noqa: PLC0415 - optional compiled module
    except ImportError as exc:
        return None, f"not built ({exc})"
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
