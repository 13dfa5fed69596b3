"""The vocabulary of Upbit subscriptions: data types, market codes, orderbook depths.

A :class:`Subscription` is one data-type object of an Upbit request
(``{"type": ..., "codes": [...], ...}``). Everything here is pure and validates
eagerly, so that bad input fails before anything is sent to the exchange.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

CANDLE_UNITS: tuple[str, ...] = ("1s", "1m", "3m", "5m", "10m", "15m", "30m", "60m", "240m")
CANDLE_TYPES: tuple[str, ...] = tuple(f"candle.{unit}" for unit in CANDLE_UNITS)
QUOTE_TYPES: tuple[str, ...] = ("ticker", "trade", "orderbook", *CANDLE_TYPES)
PRIVATE_TYPES: tuple[str, ...] = ("myOrder", "myAsset")
ALL_TYPES: tuple[str, ...] = QUOTE_TYPES + PRIVATE_TYPES
ORDERBOOK_DEPTHS: tuple[int, ...] = (1, 5, 15, 30)
FORMATS: tuple[str, ...] = ("DEFAULT", "SIMPLE")

# Upbit pair codes are QUOTE-BASE in upper case (KRW-BTC, BTC-ETH, USDT-XRP, KRW-1INCH).
_CODE_RE = re.compile(r"[A-Z0-9]{2,10}-[A-Z0-9]{1,15}")


class SubscriptionError(ValueError):
    """A subscription that Upbit would reject or silently ignore."""


def is_market_code(code: str) -> bool:
    return isinstance(code, str) and _CODE_RE.fullmatch(code) is not None


def split_code(entry: str) -> tuple[str, int | None]:
    """Split ``"KRW-BTC.15"`` into ``("KRW-BTC", 15)``; a plain code has depth None."""
    if not isinstance(entry, str):
        raise SubscriptionError(f"market code must be a string, got {type(entry).__name__}")
    code, dot, depth_text = entry.partition(".")
    if not is_market_code(code):
        raise SubscriptionError(
            f"malformed market code {entry!r}: expected upper-case QUOTE-BASE such as 'KRW-BTC'"
        )
    if not dot:
        return code, None
    if not depth_text.isdigit() or int(depth_text) not in ORDERBOOK_DEPTHS:
        raise SubscriptionError(
            f"orderbook depth suffix in {entry!r} must be one of "
            f"{', '.join(map(str, ORDERBOOK_DEPTHS))}"
        )
    return code, int(depth_text)


def _as_level(value: object) -> Decimal:
    try:
        level = Decimal(str(value))
    except InvalidOperation as exc:
        raise SubscriptionError(f"orderbook level {value!r} is not a number") from exc
    if not level.is_finite() or level < 0:
        raise SubscriptionError(f"orderbook level {value!r} must be a non-negative number")
    return level


@dataclass(frozen=True, slots=True)
class Subscription:
    """One data type with its codes and options, as one object of an Upbit request.

    ``codes`` is kept sorted and unique; orderbook codes may carry a depth suffix
    (``KRW-BTC.15``). ``level`` (orderbook grouping unit) applies to KRW markets only.
    """

    type: str
    codes: tuple[str, ...] = ()
    level: Decimal | None = None
    is_only_snapshot: bool = False
    is_only_realtime: bool = False

    def __post_init__(self) -> None:
        if self.type not in ALL_TYPES:
            raise SubscriptionError(
                f"unknown data type {self.type!r}; expected one of {', '.join(ALL_TYPES)}"
            )
        if isinstance(self.codes, str):
            raise SubscriptionError("codes must be a list of market codes, not one string")
        seen: dict[str, str] = {}
        for entry in self.codes:
            code, depth = split_code(entry)
            if depth is not None and self.type != "orderbook":
                raise SubscriptionError(
                    f"depth suffix in {entry!r} is only valid for orderbook, not {self.type}"
                )
            if code in seen and seen[code] != entry:
                raise SubscriptionError(f"code {code} listed twice with different depths")
            seen[code] = entry
        codes = tuple(sorted(set(self.codes)))
        object.__setattr__(self, "codes", codes)
        if self.type == "myAsset" and codes:
            raise SubscriptionError("myAsset takes no codes (Upbit answers WRONG_FORMAT)")
        if self.type in QUOTE_TYPES and not codes:
            raise SubscriptionError(f"{self.type} needs at least one market code")
        if self.level is not None:
            if self.type != "orderbook":
                raise SubscriptionError(f"level is only valid for orderbook, not {self.type}")
            level = _as_level(self.level)
            non_krw = [c for c in codes if not c.startswith("KRW-")]
            if level and non_krw:
                raise SubscriptionError(
                    f"orderbook level grouping is for KRW markets only, not {', '.join(non_krw)}"
                )
            object.__setattr__(self, "level", level)
        if self.is_only_snapshot and self.is_only_realtime:
            raise SubscriptionError("is_only_snapshot and is_only_realtime exclude each other")
        if (self.is_only_snapshot or self.is_only_realtime) and self.type in PRIVATE_TYPES:
            raise SubscriptionError(f"{self.type} is realtime only; snapshot flags do not apply")

    @property
    def is_private(self) -> bool:
        return self.type in PRIVATE_TYPES

    @property
    def market_codes(self) -> tuple[str, ...]:
        """The codes without depth suffixes."""
        return tuple(split_code(entry)[0] for entry in self.codes)
