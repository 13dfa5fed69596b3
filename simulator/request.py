"""Parsing of client subscription requests, as Upbit's WebSocket server reads them.

Sans-IO: :func:`parse_request` takes the raw message and returns a
:class:`ParsedRequest` or raises :class:`RequestError` carrying the Upbit error
name and message to send back. Codes are kept as sent; unknown or lower-case
codes are dropped later without an error, like the real server does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from simulator.encode import FORMATS
from simulator.generator import CANDLE_SECONDS
from simulator.numbers import SCALE

PUBLIC_TYPES: tuple[str, ...] = (
    "ticker",
    "trade",
    "orderbook",
    *(f"candle.{unit}" for unit in CANDLE_SECONDS),
)
PRIVATE_TYPES: tuple[str, ...] = ("myOrder", "myAsset")
ORDERBOOK_DEPTHS = (1, 5, 15, 30)
DEFAULT_DEPTH = 30

MESSAGES = {
    "WRONG_FORMAT": "Format 이 맞지 않습니다.",
    "NO_TICKET": "티켓이 존재하지 않거나, 유효하지 않습니다.",
    "NO_TYPE": "타입이 존재하지 않습니다.",
    "NO_CODES": "코드가 존재하지 않습니다.",
    "INVALID_AUTH": "인증 정보가 올바르지 않습니다.",
    "TOO_MANY_REQ": "요청 수 제한을 초과했습니다.",
}


class RequestError(Exception):
    """A request the server answers with ``{"error": {"name", "message"}}`` and a close."""

    def __init__(self, name: str, message: str | None = None) -> None:
        self.name = name
        self.message = message if message is not None else MESSAGES.get(name, name)
        super().__init__(f"{name}: {self.message}")


@dataclass(frozen=True, slots=True)
class Stream:
    """One data-type object of a request."""

    type: str
    codes: dict[str, int]
    """Code -> orderbook depth (30 for other types and for unsupported suffixes)."""
    level: int = 0
    """Orderbook grouping unit in 1e-8 units of the quote currency; 0 = native ticks."""
    only_snapshot: bool = False
    only_realtime: bool = False

    def describe(self) -> dict[str, Any]:
        item: dict[str, Any] = {"type": self.type, "codes": sorted(self.codes)}
        if self.type == "orderbook":
            item["depths"] = dict(sorted(self.codes.items()))
            item["level"] = str(Decimal(self.level).scaleb(-SCALE).normalize())
        if self.only_snapshot:
            item["is_only_snapshot"] = True
        if self.only_realtime:
            item["is_only_realtime"] = True
        return item


@dataclass(frozen=True, slots=True)
class ParsedRequest:
    ticket: str
    format: str
    streams: tuple[Stream, ...] = field(default_factory=tuple)

    def describe(self) -> list[dict[str, Any]]:
        return [stream.describe() for stream in self.streams]


def _flag(item: dict[str, Any], snake: str, camel: str) -> bool:
    value = item.get(snake, item.get(camel, False))
    if not isinstance(value, bool):
        raise RequestError("WRONG_FORMAT")
    return value


def _level(value: object) -> int:
    if isinstance(value, bool):
        raise RequestError("INVALID_PARAM", f"{value} 은 지원하지 않는 레벨입니다.")
    try:
        number = Decimal(str(value))
    except InvalidOperation as exc:
        raise RequestError("INVALID_PARAM", f"{value} 은 지원하지 않는 레벨입니다.") from exc
    if not number.is_finite() or number < 0:
        raise RequestError("INVALID_PARAM", f"{value} 은 지원하지 않는 레벨입니다.")
    scaled = number.scaleb(SCALE)
    # A unit finer than the price grid can never match a supported level: use -1 so
    # that the stream silently receives nothing, as Upbit does for unsupported levels.
    return int(scaled) if scaled == scaled.to_integral_value() else -1


def _codes(item: dict[str, Any], kind: str) -> dict[str, int]:
    raw = item.get("codes")
    if raw is None:
        return {}
    if not isinstance(raw, list) or not all(isinstance(code, str) for code in raw):
        raise RequestError("WRONG_FORMAT")
    codes: dict[str, int] = {}
    for entry in raw:
        code, dot, suffix = entry.partition(".")
        if kind == "orderbook" and dot:
            depth = int(suffix) if suffix.isdigit() else DEFAULT_DEPTH
            codes[code] = depth if depth in ORDERBOOK_DEPTHS else DEFAULT_DEPTH
        else:
            codes[entry] = DEFAULT_DEPTH
    return codes


def parse_request(message: bytes | str, private: bool) -> ParsedRequest:
    """Parse one request frame received on the public (or ``private``) endpoint."""
    try:
        document = json.loads(message)
    except (UnicodeDecodeError, ValueError) as exc:
        raise RequestError("WRONG_FORMAT") from exc
    if not isinstance(document, list) or not document:
        raise RequestError("WRONG_FORMAT")
    if not all(isinstance(item, dict) for item in document):
        raise RequestError("WRONG_FORMAT")
    ticket = document[0].get("ticket")
    if not isinstance(ticket, str) or not ticket:
        raise RequestError("NO_TICKET")
    fmt = "DEFAULT"
    streams: list[Stream] = []
    for item in document[1:]:
        if "format" in item and "type" not in item:
            value = item["format"]
            if value not in FORMATS:
                raise RequestError("INVALID_PARAM", f"{value} 은 지원하지 않는 포맷입니다.")
            fmt = value
            continue
        if "ticket" in item and "type" not in item:
            continue
        kind = item.get("type")
        if kind is None:
            raise RequestError("NO_TYPE")
        if not isinstance(kind, str):
            raise RequestError("WRONG_FORMAT")
        allowed = PRIVATE_TYPES if private else PUBLIC_TYPES
        if kind not in allowed:
            if not private and kind in PRIVATE_TYPES:
                raise RequestError("INVALID_AUTH")
            raise RequestError("INVALID_PARAM", f"{kind} 은 지원하지 않는 타입입니다.")
        if kind == "myAsset" and "codes" in item:
            raise RequestError("WRONG_FORMAT")
        codes = _codes(item, kind)
        if kind in PUBLIC_TYPES and not codes:
            raise RequestError("NO_CODES")
        level = 0
        if kind == "orderbook" and item.get("level") is not None:
            level = _level(item["level"])
        only_snapshot = _flag(item, "is_only_snapshot", "isOnlySnapshot")
        only_realtime = _flag(item, "is_only_realtime", "isOnlyRealtime")
        streams.append(Stream(kind, codes, level, only_snapshot, only_realtime))
    if not streams:
        raise RequestError("NO_TYPE")
    return ParsedRequest(ticket, fmt, tuple(streams))
