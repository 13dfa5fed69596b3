"""Sans-IO decoding of Upbit WebSocket frames into typed events.

``decode(frame)`` turns one frame (bytes or str) into one :mod:`events` object;
``decode_all(frame)`` also accepts the JSON_LIST / SIMPLE_LIST array frames. Anything
that is not a valid Upbit message raises :class:`ProtocolError` and nothing else.

How a frame is decoded:

1. The type is read off the frame's prefix (Upbit writes ``{"type":"ticker",...``
   compactly); otherwise a small envelope struct reads only the routing keys
   (``type`` / ``ty`` / ``error`` / ``status`` / legacy ``market`` / ``mk``).
2. The frame is decoded in one pass into a struct that forbids unknown keys: the
   public event class for DEFAULT, a SIMPLE-named twin for SIMPLE (then copied into
   the public class).
3. Only when that fails does the slow path run: it lists unknown keys (counted in
   :attr:`Decoder.unknown_fields`), decodes with a lenient twin, or raises.

The 2018 legacy schema (``market`` / ``mk``, no type key) is rewritten into the
current one before step 2; it is rare and the rewrite is allowed to be slow.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

import msgspec

from feedhandler.upbit import fields
from feedhandler.upbit.errors import ProtocolError
from feedhandler.upbit.events import (
    AssetBalance,
    Candle,
    ErrorMessage,
    Event,
    MyAsset,
    MyOrder,
    Orderbook,
    OrderbookUnit,
    Status,
    Ticker,
    Trade,
)
from feedhandler.upbit.subscription import CANDLE_TYPES

MAX_FRAME_BYTES: Final = 4 * 1024 * 1024

DEFAULT: Final = "DEFAULT"
SIMPLE: Final = "SIMPLE"

# Errors msgspec and the codecs under it raise for bad input. RecursionError comes from
# absurdly deep nesting, UnicodeError from invalid UTF-8 inside a decoded string.
DECODE_ERRORS: Final = (msgspec.MsgspecError, RecursionError, UnicodeError, ValueError)

_EMPTY_RAW: Final = msgspec.Raw(b"")


def _may_hold_non_finite(data: bytes) -> bool:
    """Whether a frame could carry a decimal string Decimal reads as NaN or Infinity.

    msgspec accepts decimal *strings* for Decimal fields, including "NaN" and "inf".
    No Upbit key contains these letters, so a frame without them needs no check.
    """
    lowered = data.lower()
    return b"nan" in lowered or b"inf" in lowered


class _Envelope(msgspec.Struct, gc=False):
    type: str | None = None
    ty: str | None = None
    error: msgspec.Raw = _EMPTY_RAW
    status: msgspec.Raw = _EMPTY_RAW
    market: msgspec.Raw = _EMPTY_RAW
    mk: msgspec.Raw = _EMPTY_RAW


class _ErrorBody(msgspec.Struct, gc=False, forbid_unknown_fields=True):
    name: str | int
    message: str | None = None


class _ErrorFrame(msgspec.Struct, gc=False, forbid_unknown_fields=True):
    error: _ErrorBody


class _StatusFrame(msgspec.Struct, gc=False, forbid_unknown_fields=True):
    status: str


_ENVELOPE_DECODER: Final = msgspec.json.Decoder(_Envelope)
_ANY_DECODER: Final = msgspec.json.Decoder()
_RAW_OBJECT_DECODER: Final = msgspec.json.Decoder(dict[str, msgspec.Raw])
_RAW_ARRAY_DECODER: Final = msgspec.json.Decoder(list[msgspec.Raw])


def as_frame_bytes(frame: object, max_bytes: int) -> bytes:
    """The frame as UTF-8 bytes, or ProtocolError for a wrong type or an oversized frame."""
    if isinstance(frame, bytes):
        data = frame
    elif isinstance(frame, str):
        if len(frame) > max_bytes:
            raise ProtocolError(f"frame larger than {max_bytes} bytes", frame)
        try:
            data = frame.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ProtocolError(
                f"frame text is not encodable as UTF-8 ({exc.reason})", frame
            ) from None
    elif isinstance(frame, bytearray | memoryview):
        size = frame.nbytes if isinstance(frame, memoryview) else len(frame)
        if size > max_bytes:
            raise ProtocolError(f"frame of {size} bytes exceeds the {max_bytes}-byte cap")
        data = bytes(frame)
    else:
        raise ProtocolError(f"frame must be bytes or str, not {type(frame).__name__}")
    if len(data) > max_bytes:
        raise ProtocolError(f"frame of {len(data)} bytes exceeds the {max_bytes}-byte cap", data)
    return data


def first_char(data: bytes) -> int:
    """The first non-whitespace byte of a frame (0 when there is none)."""
    stripped = data.lstrip(b" \t\r\n")
    return stripped[0] if stripped else 0


@dataclass(frozen=True, slots=True)
class Route:
    """Where a frame goes: wire format, message kind, the type named on the wire."""

    format: str
    kind: str
    type_name: str = ""
    legacy: bool = False


_KIND_OF_TYPE: Final[Mapping[str, str]] = {
    "ticker": "ticker",
    "trade": "trade",
    "orderbook": "orderbook",
    "myOrder": "myOrder",
    "myAsset": "myAsset",
    **{candle: "candle" for candle in CANDLE_TYPES},
}

# Which key marks a legacy (typeless) frame as which kind, checked in this order.
_LEGACY_MARKERS: Final = (
    ("orderbook", "orderbook_units"),
    ("trade", "sequential_id"),
    ("ticker", "opening_price"),
)


_ROUTES: Final[Mapping[tuple[str, str], Route]] = {
    (fmt, type_name): Route(fmt, kind, type_name)
    for fmt in (DEFAULT, SIMPLE)
    for type_name, kind in _KIND_OF_TYPE.items()
}
# Upbit writes the type key first and compactly; reading it off the prefix saves the
# envelope pass. Anything else (spaces, other key order, escapes) takes the envelope.
_PREFIXES: Final = ((b'{"type":"', DEFAULT), (b'{"ty":"', SIMPLE))


def route(data: bytes) -> Route:
    """Read the routing keys of an object frame; ProtocolError when it is none of ours."""
    for prefix, fmt in _PREFIXES:
        if data.startswith(prefix):
            start = len(prefix)
            end = data.find(b'"', start, start + 16)
            if end > 0:
                found = _ROUTES.get((fmt, data[start:end].decode("ascii", "replace")))
                if found is not None:
                    return found
            break
    try:
        envelope = _ENVELOPE_DECODER.decode(data)
    except DECODE_ERRORS as exc:
        raise ProtocolError(f"not a JSON object frame ({exc})", data) from None
    if envelope.type is not None:
        return _typed_route(DEFAULT, envelope.type, data)
    if envelope.ty is not None:
        return _typed_route(SIMPLE, envelope.ty, data)
    if len(envelope.error):
        return Route("", "error")
    if len(envelope.status):
        return Route("", "status")
    for fmt, marker in ((DEFAULT, envelope.market), (SIMPLE, envelope.mk)):
        if len(marker):
            kind = _legacy_kind(data, fmt)
            return Route(fmt, kind, kind, legacy=True)
    raise ProtocolError("frame has no type, error or status key", data)


def _typed_route(fmt: str, type_name: str, data: bytes) -> Route:
    found = _ROUTES.get((fmt, type_name))
    if found is None:
        raise ProtocolError(f"unknown message type {type_name[:40]!r}", data)
    return found


def _legacy_kind(data: bytes, fmt: str) -> str:
    try:
        keys = _RAW_OBJECT_DECODER.decode(data)
    except DECODE_ERRORS as exc:
        raise ProtocolError(f"malformed legacy frame ({exc})", data) from None
    for kind, marker in _LEGACY_MARKERS:
        table = fields.BY_TYPE[kind]
        if (marker if fmt == DEFAULT else table[marker]) in keys:
            return kind
    raise ProtocolError("legacy frame of unrecognised kind", data)


def rewrite_legacy(data: bytes, target: Route) -> bytes:
    """A legacy frame re-encoded with the current keys (type added, market -> code).

    Values are carried over as raw JSON text, so numbers keep their exact spelling.
    """
    tree = _RAW_OBJECT_DECODER.decode(data)
    table = fields.BY_TYPE[target.kind]
    type_key = "type" if target.format == DEFAULT else table["type"]
    code_key = "code" if target.format == DEFAULT else table["code"]
    code = tree.pop(fields.LEGACY_CODE_KEYS[target.format])
    current = {type_key: msgspec.Raw(msgspec.json.encode(target.kind)), code_key: code}
    current.update(tree)
    return msgspec.json.encode(current)


# ----------------------------------------------------------------------------- schemas


@dataclass(frozen=True, slots=True)
class WireSchema:
    """How one (format, kind) is decoded: strict and lenient decoders plus known keys."""

    kind: str
    strict: msgspec.json.Decoder[Any]
    lenient: msgspec.json.Decoder[Any]
    from_strict: Callable[[Any], Any] | None  # None: the strict struct is the public one
    from_lenient: Callable[[Any], Any]
    known: frozenset[str]
    nested_known: Mapping[str, frozenset[str]]

    def extra_keys(self, data: bytes) -> tuple[set[str], bool]:
        """Unknown keys of a frame (``kind.key`` / ``kind.parent.key`` labels), and
        whether it carries the simulator's ``sim_ns`` (extra, but not unknown)."""
        try:
            tree = _ANY_DECODER.decode(data)
        except DECODE_ERRORS as exc:
            raise ProtocolError(f"malformed frame ({exc})", data) from None
        if not isinstance(tree, dict):
            raise ProtocolError("frame is not a JSON object", data)
        found: set[str] = set()
        sim_ns = False
        for key, value in tree.items():
            if key not in self.known:
                if key == fields.SIM_NS_KEY:
                    sim_ns = True
                else:
                    found.add(f"{self.kind}.{key}")
                continue
            inner = self.nested_known.get(key)
            if inner is None:
                continue
            items = value if isinstance(value, list) else [value]
            for item in items:
                if isinstance(item, dict):
                    found.update(f"{self.kind}.{key}.{k}" for k in item if k not in inner)
        return found, sim_ns


def _field_specs(cls: type[msgspec.Struct], nested: Mapping[str, type]) -> list[tuple[Any, ...]]:
    specs: list[tuple[Any, ...]] = []
    for info in msgspec.structs.fields(cls):
        field_type = tuple[nested[info.name], ...] if info.name in nested else info.type
        if info.required:
            specs.append((info.name, field_type))
        else:
            specs.append((info.name, field_type, info.default))
    return specs


def derive_struct(
    cls: type[msgspec.Struct],
    *,
    suffix: str,
    rename: Mapping[str, str] | None,
    strict: bool,
    nested: Mapping[str, type] | None = None,
    base: bool = False,
    **options: Any,
) -> type[msgspec.Struct]:
    """A twin of ``cls`` with the same fields in the same order, renamed for the wire.

    ``base=True`` makes the twin a subclass of ``cls`` (the hot path returns twins
    directly); otherwise the twin stands alone and is copied into ``cls``.
    """
    if rename is None:
        # Keep the names the class already uses on the wire (its own rename, if any).
        rename = {
            name: wire
            for name, wire in zip(cls.__struct_fields__, cls.__struct_encode_fields__, strict=True)
            if name != wire
        }
    return msgspec.defstruct(
        f"{cls.__name__}{suffix}",
        _field_specs(cls, nested or {}),
        bases=(cls,) if base else None,
        module=cls.__module__,
        rename=dict(rename) or None,
        forbid_unknown_fields=strict,
        frozen=cls.__struct_config__.frozen,
        gc=False,
        **options,
    )


def encoded_names(cls: type[msgspec.Struct]) -> frozenset[str]:
    """The wire keys a struct reads, its tag key (tagged unions) included."""
    tag_field = cls.__struct_config__.tag_field
    return frozenset(cls.__struct_encode_fields__) | ({tag_field} if tag_field else set())


def copier(
    public: type[msgspec.Struct], nested: Mapping[str, Callable[[Any], Any]]
) -> Callable[[Any], Any]:
    """A function copying a twin instance into ``public`` (nested tuples included)."""
    astuple = msgspec.structs.astuple
    if not nested:
        return lambda obj: public(*astuple(obj))
    positions = tuple(
        (public.__struct_fields__.index(name), convert) for name, convert in nested.items()
    )

    def copy(obj: Any) -> Any:
        values = list(astuple(obj))
        for index, convert in positions:
            values[index] = tuple(convert(item) for item in values[index])
        return public(*values)

    return copy


@dataclass(frozen=True, slots=True)
class ItemSpec:
    """A field holding a list of objects (orderbook units, asset balances)."""

    field: str
    cls: type[msgspec.Struct]
    table: Mapping[str, str]


def build_schema(
    kind: str,
    cls: type[msgspec.Struct],
    table: Mapping[str, str],
    fmt: str,
    item: ItemSpec | None = None,
    *,
    base: bool = False,
    **options: Any,
) -> WireSchema:
    """Strict and lenient decoders of ``cls`` for one wire format.

    For DEFAULT the strict struct is ``cls`` itself; SIMPLE gets renamed twins. With
    ``base=True`` the twins subclass ``cls`` and are returned as they are (hot path).
    """
    simple = fmt == SIMPLE
    rename = table if simple else None
    nested_strict: dict[str, type] = {}
    nested_lenient: dict[str, type] = {}
    nested_copy: dict[str, Callable[[Any], Any]] = {}
    nested_known: dict[str, frozenset[str]] = {}
    if item is not None:
        item_rename = item.table if simple else None
        item_strict = (
            derive_struct(item.cls, suffix="Simple", rename=item_rename, strict=True, base=base)
            if simple
            else item.cls
        )
        item_lenient = derive_struct(
            item.cls, suffix=f"{fmt.title()}Lenient", rename=item_rename, strict=False, base=base
        )
        nested_strict[item.field] = item_strict
        nested_lenient[item.field] = item_lenient
        nested_copy[item.field] = copier(item.cls, {})
        wire_key = table[item.field] if simple else item.field
        nested_known[wire_key] = encoded_names(item_strict)
    if simple:
        strict = derive_struct(
            cls,
            suffix="Simple",
            rename=rename,
            strict=True,
            nested=nested_strict,
            base=base,
            **options,
        )
    else:
        strict = cls
    lenient = derive_struct(
        cls,
        suffix=f"{fmt.title()}Lenient",
        rename=rename,
        strict=False,
        nested=nested_lenient,
        base=base,
        **options,
    )
    copy = copier(cls, nested_copy)
    returns_twins = base
    return WireSchema(
        kind=kind,
        strict=msgspec.json.Decoder(strict),
        lenient=msgspec.json.Decoder(lenient),
        from_strict=copy if simple and not returns_twins else None,
        from_lenient=(lambda obj: obj) if returns_twins else copy,
        known=encoded_names(strict),
        nested_known=nested_known,
    )


@functools.cache
def _event_schemas(fmt: str) -> Mapping[str, WireSchema]:
    return {
        "ticker": build_schema("ticker", Ticker, fields.TICKER, fmt),
        "trade": build_schema("trade", Trade, fields.TRADE, fmt),
        "candle": build_schema("candle", Candle, fields.CANDLE, fmt),
        "myOrder": build_schema("myOrder", MyOrder, fields.MY_ORDER, fmt),
        "orderbook": build_schema(
            "orderbook",
            Orderbook,
            fields.ORDERBOOK,
            fmt,
            ItemSpec("orderbook_units", OrderbookUnit, fields.ORDERBOOK_UNIT),
        ),
        "myAsset": build_schema(
            "myAsset",
            MyAsset,
            fields.MY_ASSET,
            fmt,
            ItemSpec("assets", AssetBalance, fields.ASSET_BALANCE),
        ),
    }


def _error_event(frame: Any) -> ErrorMessage:
    return ErrorMessage(name=str(frame.error.name), message=frame.error.message)


def _status_event(frame: Any) -> Status:
    return Status(status=frame.status)


@functools.cache
def _control_schemas() -> Mapping[str, WireSchema]:
    body_lenient = derive_struct(_ErrorBody, suffix="Lenient", rename=None, strict=False)
    error_lenient = msgspec.defstruct(
        "_ErrorFrameLenient", [("error", body_lenient)], module=__name__, gc=False
    )
    status_lenient = derive_struct(_StatusFrame, suffix="Lenient", rename=None, strict=False)
    return {
        "error": WireSchema(
            kind="error",
            strict=msgspec.json.Decoder(_ErrorFrame),
            lenient=msgspec.json.Decoder(error_lenient),
            from_strict=_error_event,
            from_lenient=_error_event,
            known=frozenset({"error"}),
            nested_known={"error": encoded_names(_ErrorBody)},
        ),
        "status": WireSchema(
            kind="status",
            strict=msgspec.json.Decoder(_StatusFrame),
            lenient=msgspec.json.Decoder(status_lenient),
            from_strict=_status_event,
            from_lenient=_status_event,
            known=frozenset({"status"}),
            nested_known={},
        ),
    }


def _check_finite(event: Any, data: bytes) -> None:
    values: list[Any] = list(msgspec.structs.astuple(event))
    while values:
        value = values.pop()
        if isinstance(value, Decimal):
            if not value.is_finite():
                raise ProtocolError("non-finite decimal value", data)
        elif isinstance(value, tuple):
            values.extend(value)
        elif isinstance(value, msgspec.Struct):
            values.extend(msgspec.structs.astuple(value))


class Decoder:
    """Decodes Upbit frames into typed events and counts keys it does not know.

    Use one per connection thread: decoding itself keeps no state, but
    ``unknown_fields`` is a plain Counter updated without a lock. It maps
    ``"<kind>.<key>"`` (``"<kind>.<parent>.<key>"`` for keys inside orderbook units,
    asset balances or error bodies) to how many frames carried it.
    """

    def __init__(self, *, max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
        if max_frame_bytes <= 0:
            raise ValueError(f"max_frame_bytes must be positive, got {max_frame_bytes}")
        self.max_frame_bytes = max_frame_bytes
        self.unknown_fields: Counter[str] = Counter()
        self._schemas: dict[tuple[str, str], WireSchema] = {}
        for fmt in (DEFAULT, SIMPLE):
            for kind, schema in _event_schemas(fmt).items():
                self._schemas[fmt, kind] = schema
        for kind, schema in _control_schemas().items():
            self._schemas["", kind] = schema

    def decode(self, frame: bytes | str) -> Event:
        """One object frame -> one event. Array frames raise ProtocolError (see decode_all)."""
        data = as_frame_bytes(frame, self.max_frame_bytes)
        if first_char(data) == ord("["):
            raise ProtocolError("array frame (JSON_LIST/SIMPLE_LIST); use decode_all", data)
        return self._decode_object(data)

    def decode_all(self, frame: bytes | str) -> tuple[Event, ...]:
        """Every event of a frame: one for an object frame, each element of an array frame."""
        data = as_frame_bytes(frame, self.max_frame_bytes)
        if first_char(data) != ord("["):
            return (self._decode_object(data),)
        try:
            elements = _RAW_ARRAY_DECODER.decode(data)
        except DECODE_ERRORS as exc:
            raise ProtocolError(f"malformed array frame ({exc})", data) from None
        events = []
        for element in elements:
            item = bytes(element)
            if first_char(item) != ord("{"):
                raise ProtocolError("array frame element is not an object", item)
            events.append(self._decode_object(item))
        return tuple(events)

    def _decode_object(self, data: bytes) -> Event:
        return self.decode_routed(data, route(data))

    def decode_routed(self, data: bytes, where: Route) -> Event:
        """Decode an object frame already routed by :func:`route` (the hot path's fallback)."""
        if where.legacy:
            data = rewrite_legacy(data, where)
        schema = self._schemas[where.format, where.kind]
        try:
            wire = schema.strict.decode(data)
        except DECODE_ERRORS as exc:
            event = self._decode_drifted(schema, data, exc)
        else:
            event = wire if schema.from_strict is None else schema.from_strict(wire)
        if where.type_name and event.type != where.type_name:
            raise ProtocolError("frame names its type twice, differently", data)
        if _may_hold_non_finite(data):
            _check_finite(event, data)
        return event

    def _decode_drifted(self, schema: WireSchema, data: bytes, error: Exception) -> Any:
        """Count unknown keys and decode leniently, or turn the strict error into ours."""
        unknown, sim_ns = schema.extra_keys(data)
        if not unknown and not sim_ns:
            raise ProtocolError(f"invalid {schema.kind} frame ({error})", data) from None
        try:
            wire = schema.lenient.decode(data)
        except DECODE_ERRORS as exc:
            raise ProtocolError(f"invalid {schema.kind} frame ({exc})", data) from None
        self.unknown_fields.update(unknown)
        return schema.from_lenient(wire)


def event_to_json(event: Event) -> bytes:
    """An event as a JSON object under DEFAULT names, decimals as exact strings.

    Decimal -> its string (``str(Decimal)``, equal to the wire value), ints stay JSON
    integers, None -> null.
    """
    return _EVENT_ENCODER.encode(event)


_EVENT_ENCODER: Final = msgspec.json.Encoder(decimal_format="string")
_default_decoder = Decoder()


def decode(frame: bytes | str) -> Event:
    """Decode one object frame with the module's default :class:`Decoder`.

    That decoder is shared by every caller; a connection that wants its own
    ``unknown_fields`` tally builds its own :class:`Decoder`.
    """
    return _default_decoder.decode(frame)


def decode_all(frame: bytes | str) -> tuple[Event, ...]:
    """Decode an object or array frame with the module's default :class:`Decoder`."""
    return _default_decoder.decode_all(frame)


def default_decoder() -> Decoder:
    """The module-level decoder behind :func:`decode` (its ``unknown_fields`` counter)."""
    return _default_decoder
