"""The hot path: ticker, orderbook and trade frames decoded straight into flat structs.

Tickers and order books feed shared memory as float64, so :class:`HotTicker` and
:class:`HotOrderbook` hold floats. Trades are published with their exact decimal
text, so :class:`HotTrade` keeps each decimal as the raw JSON number it arrived as
(a ``msgspec.Raw`` slice of the frame, no parsing) and turns it into text only when
asked (properties, :func:`trade_to_json`).

:class:`HotDecoder` decodes the requested format's frames with one msgspec tagged
union (tag ``type`` for DEFAULT, ``ty`` for SIMPLE) in one pass. Every struct forbids
unknown keys, so a frame of the other format cannot be misread: it fails that pass and
is routed by its type key to the matching schema. Kinds that are not hot (candles,
private events, errors, status) go through the typed
:class:`~feedhandler.upbit.decode.Decoder`, whose ``unknown_fields`` counter the hot
decoder shares; legacy frames and schema drift take the same slow route.
Instances of format-specific subclasses of the three hot structs may be returned; they
have the same attributes.
"""

from __future__ import annotations

import functools
import os
import re
from collections import Counter
from collections.abc import Callable, Mapping
from decimal import Decimal
from operator import attrgetter
from typing import Any, Final, TypeAlias

import msgspec

from feedhandler.upbit import fields
from feedhandler.upbit.decode import (
    DECODE_ERRORS,
    DEFAULT,
    MAX_FRAME_BYTES,
    SIMPLE,
    Decoder,
    ItemSpec,
    WireSchema,
    as_frame_bytes,
    build_schema,
    event_to_json,
    first_char,
    rewrite_legacy,
    route,
)
from feedhandler.upbit.errors import ProtocolError
from feedhandler.upbit.events import Event

_NULL_RAW: Final = msgspec.Raw(b"null")
_JSON_NUMBER: Final = re.compile(rb"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")


class HotTicker(
    msgspec.Struct,
    tag_field="type",
    tag="ticker",
    frozen=True,
    gc=False,
    forbid_unknown_fields=True,
):
    """A ticker with float prices; attribute names are Upbit's DEFAULT names."""

    code: str
    opening_price: float | None = None
    high_price: float | None = None
    low_price: float | None = None
    trade_price: float | None = None
    prev_closing_price: float | None = None
    acc_trade_price: float | None = None
    change: str | None = None
    change_price: float | None = None
    signed_change_price: float | None = None
    change_rate: float | None = None
    signed_change_rate: float | None = None
    ask_bid: str | None = None
    trade_volume: float | None = None
    acc_trade_volume: float | None = None
    trade_date: str | None = None
    trade_time: str | None = None
    trade_timestamp: int | None = None
    acc_ask_volume: float | None = None
    acc_bid_volume: float | None = None
    highest_52_week_price: float | None = None
    highest_52_week_date: str | None = None
    lowest_52_week_price: float | None = None
    lowest_52_week_date: str | None = None
    market_state: str | None = None
    is_trading_suspended: bool | None = None
    delisting_date: str | None = None
    market_warning: str | None = None
    timestamp: int | None = None
    acc_trade_price_24h: float | None = None
    acc_trade_volume_24h: float | None = None
    stream_type: str | None = None
    trade_status: str | None = None
    market_state_for_ios: str | None = None
    sim_ns: int = 0


class HotOrderbookUnit(msgspec.Struct, frozen=True, gc=False, forbid_unknown_fields=True):
    """One book level with float prices and sizes."""

    ask_price: float
    bid_price: float
    ask_size: float
    bid_size: float


class HotOrderbook(
    msgspec.Struct,
    tag_field="type",
    tag="orderbook",
    frozen=True,
    gc=False,
    forbid_unknown_fields=True,
):
    """A full book with float levels; ``orderbook_units[0]`` is the best level."""

    code: str
    timestamp: int
    total_ask_size: float
    total_bid_size: float
    orderbook_units: tuple[HotOrderbookUnit, ...]
    stream_type: str | None = None
    level: float | None = None
    sim_ns: int = 0


_TRADE_DECIMALS: Final = (
    "trade_price",
    "trade_volume",
    "prev_closing_price",
    "change_price",
    "best_ask_price",
    "best_ask_size",
    "best_bid_price",
    "best_bid_size",
)
_REQUIRED_TRADE_DECIMALS: Final = frozenset({"trade_price", "trade_volume"})


def _raw_text(raw: msgspec.Raw, name: str, *, nullable: bool) -> str | None:
    """The exact text of a raw JSON number; None for null where allowed."""
    data = bytes(raw)
    if data == b"null" and nullable:
        return None
    if _JSON_NUMBER.fullmatch(data) is None:
        raise ProtocolError(f"trade field {name} is not a JSON number", data)
    return data.decode("ascii")


def _decimal_property(name: str) -> property:
    getter = attrgetter(f"raw_{name}")
    nullable = name not in _REQUIRED_TRADE_DECIMALS

    def text(self: HotTrade) -> str | None:
        return _raw_text(getter(self), name, nullable=nullable)

    text.__name__ = name
    text.__doc__ = f"The exact wire text of {name} (None for null)."
    return property(text)


class HotTrade(
    msgspec.Struct,
    tag_field="type",
    tag="trade",
    frozen=True,
    gc=False,
    forbid_unknown_fields=True,
    rename={f"raw_{name}": name for name in _TRADE_DECIMALS},
):
    """A trade whose decimals stay exact wire text.

    ``raw_<name>`` holds the undecoded JSON number (a zero-copy slice of the frame's
    bytes, which it keeps alive); the ``<name>`` property returns its text (``str``, or
    None for null) and raises ProtocolError if the wire value is not a JSON number.
    The text is read lazily so that decoding stays one pass; :func:`trade_to_json`
    checks every decimal at once.
    """

    code: str
    timestamp: int
    trade_date: str
    trade_time: str
    trade_timestamp: int
    raw_trade_price: msgspec.Raw
    raw_trade_volume: msgspec.Raw
    ask_bid: str
    raw_prev_closing_price: msgspec.Raw
    change: str | None
    raw_change_price: msgspec.Raw
    sequential_id: int
    raw_best_ask_price: msgspec.Raw = _NULL_RAW
    raw_best_ask_size: msgspec.Raw = _NULL_RAW
    raw_best_bid_price: msgspec.Raw = _NULL_RAW
    raw_best_bid_size: msgspec.Raw = _NULL_RAW
    stream_type: str | None = None
    sim_ns: int = 0

    trade_price = _decimal_property("trade_price")
    trade_volume = _decimal_property("trade_volume")
    prev_closing_price = _decimal_property("prev_closing_price")
    change_price = _decimal_property("change_price")
    best_ask_price = _decimal_property("best_ask_price")
    best_ask_size = _decimal_property("best_ask_size")
    best_bid_price = _decimal_property("best_bid_price")
    best_bid_size = _decimal_property("best_bid_size")


HotEvent: TypeAlias = HotTicker | HotOrderbook | HotTrade

_HOT_TRADE_SIMPLE_TABLE: Final = {
    **fields.TRADE,
    **{f"raw_{name}": fields.TRADE[name] for name in _TRADE_DECIMALS},
}


@functools.cache
def _hot_schemas(fmt: str) -> Mapping[str, WireSchema]:
    tag_field = fields.TYPE_KEYS[fmt]
    return {
        "ticker": build_schema(
            "ticker", HotTicker, fields.TICKER, fmt, base=True, tag_field=tag_field, tag="ticker"
        ),
        "trade": build_schema(
            "trade",
            HotTrade,
            _HOT_TRADE_SIMPLE_TABLE,
            fmt,
            base=True,
            tag_field=tag_field,
            tag="trade",
        ),
        "orderbook": build_schema(
            "orderbook",
            HotOrderbook,
            fields.ORDERBOOK,
            fmt,
            ItemSpec("orderbook_units", HotOrderbookUnit, fields.ORDERBOOK_UNIT),
            base=True,
            tag_field=tag_field,
            tag="orderbook",
        ),
    }


def _union_decoder(schemas: Mapping[str, WireSchema]) -> msgspec.json.Decoder[Any]:
    members = tuple(schema.strict.type for schema in schemas.values())
    return msgspec.json.Decoder(members[0] | members[1] | members[2])


def _fast_decode(
    first: Callable[[bytes], Any], max_frame_bytes: int, slow: Callable[[object], Any]
) -> Callable[[bytes | bytearray | memoryview], Any]:
    """HotDecoder.decode for one decoder: the preferred union first, ``slow`` for the rest."""

    def decode(frame: bytes | bytearray | memoryview) -> Any:
        if type(frame) is not bytes:
            if type(frame) is memoryview and frame.nbytes <= max_frame_bytes:
                frame = frame.tobytes()
            elif type(frame) is bytearray and len(frame) <= max_frame_bytes:
                frame = bytes(frame)
            else:
                return slow(frame)
        if len(frame) <= max_frame_bytes:
            try:
                return first(frame)
            except DECODE_ERRORS:
                pass
        return slow(frame)

    return decode


class HotDecoder:
    """Decodes ticker / orderbook / trade frames into hot structs, everything else typed.

    ``format`` is the format the request asked for: its tagged union decodes the frame
    in one pass. Any other frame (the other format, candles, private events, drift) is
    routed by its type key and decoded by the matching schema or the typed decoder.
    ``decoder`` is that typed decoder; its ``unknown_fields`` is this object's too.
    """

    def __init__(
        self,
        *,
        format: str = DEFAULT,
        max_frame_bytes: int = MAX_FRAME_BYTES,
        decoder: Decoder | None = None,
    ) -> None:
        if format not in (DEFAULT, SIMPLE):
            raise ValueError(f"format must be DEFAULT or SIMPLE, not {format!r}")
        self.format = format
        self._max_frame_bytes = max_frame_bytes
        self._typed = decoder if decoder is not None else Decoder(max_frame_bytes=max_frame_bytes)
        self.unknown_fields: Counter[str] = self._typed.unknown_fields
        self._schemas = {fmt: _hot_schemas(fmt) for fmt in (DEFAULT, SIMPLE)}
        self._first = _union_decoder(self._schemas[format]).decode
        # The per-frame entry point is a closure over its constants, bound once: a frame
        # then costs no attribute loads on this object (~40 ns of a ~1 us trade).
        self.decode = _fast_decode(  # type: ignore[method-assign]
            self._first, max_frame_bytes, self._decode_slow
        )

    @property
    def max_frame_bytes(self) -> int:
        return self._max_frame_bytes

    def decode(
        self, frame: bytes | bytearray | memoryview
    ) -> HotTicker | HotOrderbook | HotTrade | Event:
        """One object frame -> a hot struct (ticker, orderbook, trade) or a typed event.

        A memoryview or bytearray (a frame parser's reusable buffer) is copied first:
        a HotTrade keeps zero-copy slices of its frame, which must not change later.
        (Each instance replaces this method with an equivalent closure from
        ``_fast_decode``; called through the class, this delegates to it.)
        """
        decode: Callable[[bytes | bytearray | memoryview], Any] = self.__dict__["decode"]
        return decode(frame)

    def _decode_slow(self, frame: object) -> Any:
        """Frames the preferred union refused: the other format, other kinds, drift, errors."""
        data = as_frame_bytes(frame, self._max_frame_bytes)
        if first_char(data) == ord("["):
            raise ProtocolError("array frame (JSON_LIST/SIMPLE_LIST); use decode_all", data)
        where = route(data)
        schema = self._schemas[where.format].get(where.kind) if where.format else None
        if schema is None:
            return self._typed.decode_routed(data, where)
        if where.legacy:
            data = rewrite_legacy(data, where)
        try:
            return schema.strict.decode(data)
        except DECODE_ERRORS as exc:
            error = exc
        unknown, sim_ns = schema.extra_keys(data)
        if not unknown and not sim_ns:
            raise ProtocolError(f"invalid {where.kind} frame ({error})", data) from None
        try:
            hot = schema.lenient.decode(data)
        except DECODE_ERRORS as exc:
            raise ProtocolError(f"invalid {where.kind} frame ({exc})", data) from None
        self.unknown_fields.update(unknown)
        return hot


# ------------------------------------------------------------------------------ output

# Every byte a JSON number can contain, plus the separator used below. The raws are
# valid JSON values (msgspec skipped them as such), so a raw made only of these bytes
# is a number: strings, objects, arrays, true, false and null all contain others.
_NUMBER_BYTES: Final = b"-+.0123456789eE\n"
_RAW_DECIMALS: Final = attrgetter(*(f"raw_{name}" for name in _TRADE_DECIMALS))


class _TradeJson(msgspec.Struct, tag_field="type", tag="trade", gc=False):
    """The published form of a trade: DEFAULT names, decimals as JSON strings."""

    code: str
    timestamp: int
    trade_date: str
    trade_time: str
    trade_timestamp: int
    trade_price: str | None
    trade_volume: str | None
    ask_bid: str
    prev_closing_price: str | None
    change: str | None
    change_price: str | None
    sequential_id: int
    best_ask_price: str | None
    best_ask_size: str | None
    best_bid_price: str | None
    best_bid_size: str | None
    stream_type: str | None


_ENCODE: Final = msgspec.json.Encoder().encode


def _load_render() -> Callable[[HotTrade], bytes | None] | None:
    # The switch shm.native honours too; the codec does not import shm for it.
    if os.environ.get("UPFEED_PURE_PYTHON", "") not in ("", "0"):
        return None
    try:
        from feedhandler.upbit import _hotjson  # noqa: PLC0415 - optional compiled module
    except ImportError:
        return None
    render: Callable[[HotTrade], bytes | None] = _hotjson.render
    return render


# The C renderer (setup.py builds it when a compiler is present): the same bytes for the
# common case at a tenth of the cost, None for everything else.
_RENDER: Final = _load_render()


def trade_to_json(trade: HotTrade) -> bytes:
    """A trade as a DEFAULT-named JSON object with decimals as exact JSON strings.

    Renders the same object as :func:`event_to_json` of the typed :class:`Trade`
    (``sim_ns`` is never included). Raises ProtocolError for a decimal that is not a
    JSON number.
    """
    if _RENDER is not None:
        rendered = _RENDER(trade)
        if rendered is not None:
            return rendered
    return trade_to_json_python(trade)


def trade_to_json_python(trade: HotTrade) -> bytes:
    """:func:`trade_to_json` without the C renderer (the reference it is tested against)."""
    numbers = b"\n".join(_RAW_DECIMALS(trade))
    if numbers.translate(None, _NUMBER_BYTES):
        # A null (missing best_*, legacy frames) or a value that is not a number.
        texts = [getattr(trade, name) for name in _TRADE_DECIMALS]
    else:
        texts = numbers.decode("ascii").split("\n")
    price, volume, prev_close, change_price, ask_price, ask_size, bid_price, bid_size = texts
    return _ENCODE(
        _TradeJson(
            trade.code,
            trade.timestamp,
            trade.trade_date,
            trade.trade_time,
            trade.trade_timestamp,
            price,
            volume,
            trade.ask_bid,
            prev_close,
            trade.change,
            change_price,
            trade.sequential_id,
            ask_price,
            ask_size,
            bid_price,
            bid_size,
            trade.stream_type,
        )
    )


def trade_decimal(trade: HotTrade, name: str) -> Decimal | None:
    """One decimal field of a hot trade as a Decimal (exact), for callers that need one."""
    if name not in _TRADE_DECIMALS:
        raise ValueError(f"{name!r} is not a decimal field of a trade")
    text = getattr(trade, name)
    return None if text is None else Decimal(text)


__all__ = [
    "HotDecoder",
    "HotEvent",
    "HotOrderbook",
    "HotOrderbookUnit",
    "HotTicker",
    "HotTrade",
    "event_to_json",
    "trade_decimal",
    "trade_to_json",
]
