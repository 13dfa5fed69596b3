"""The hot path agrees with the typed decoder on every recorded frame, and fails the same way."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest

from feedhandler.upbit import (
    Candle,
    Decoder,
    HotDecoder,
    HotOrderbook,
    HotTicker,
    HotTrade,
    MyAsset,
    Orderbook,
    ProtocolError,
    Status,
    Ticker,
    Trade,
    decode,
    event_to_json,
    trade_to_json,
)
from feedhandler.upbit.hot import trade_decimal

SAMPLES = Path(__file__).resolve().parents[1].parent / "shared/upbit/samples"
OBJECT_SAMPLES = [p for p in sorted(SAMPLES.glob("*.json")) if "list" not in p.name]

# Attribute names the shared-memory writer and the publisher read.
TICKER_FLOATS = (
    "opening_price", "high_price", "low_price", "trade_price", "prev_closing_price",
    "change_price", "signed_change_price", "change_rate", "signed_change_rate", "trade_volume",
    "acc_trade_volume", "acc_trade_volume_24h", "acc_trade_price", "acc_trade_price_24h",
    "acc_ask_volume", "acc_bid_volume", "highest_52_week_price", "lowest_52_week_price",
)  # fmt: skip
TICKER_OTHERS = (
    "code", "trade_timestamp", "timestamp", "change", "ask_bid", "market_state",
    "market_warning", "is_trading_suspended", "stream_type",
)  # fmt: skip
TRADE_TEXTS = (
    "trade_price", "trade_volume", "prev_closing_price", "change_price", "best_ask_price",
    "best_ask_size", "best_bid_price", "best_bid_size",
)  # fmt: skip
TRADE_OTHERS = (
    "code", "ask_bid", "change", "trade_date", "trade_time", "stream_type", "trade_timestamp",
    "timestamp", "sequential_id",
)  # fmt: skip


def as_float(value: Decimal | None) -> float | None:
    return None if value is None else float(value)


def assert_hot_equals_typed(hot: Any, typed: Any) -> None:
    if isinstance(hot, HotTicker):
        assert isinstance(typed, Ticker)
        for name in TICKER_FLOATS:
            got = getattr(hot, name)
            assert got == as_float(getattr(typed, name)), name
            assert got is None or type(got) is float
        for name in TICKER_OTHERS:
            assert getattr(hot, name) == getattr(typed, name), name
    elif isinstance(hot, HotOrderbook):
        assert isinstance(typed, Orderbook)
        assert (hot.code, hot.timestamp, hot.stream_type) == (
            typed.code,
            typed.timestamp,
            typed.stream_type,
        )
        assert hot.total_ask_size == float(typed.total_ask_size)
        assert hot.total_bid_size == float(typed.total_bid_size)
        assert hot.level == as_float(typed.level)
        assert len(hot.orderbook_units) == len(typed.orderbook_units)
        for fast, exact in zip(hot.orderbook_units, typed.orderbook_units, strict=True):
            for name in ("ask_price", "bid_price", "ask_size", "bid_size"):
                assert getattr(fast, name) == float(getattr(exact, name))
    elif isinstance(hot, HotTrade):
        assert isinstance(typed, Trade)
        for name in TRADE_TEXTS:
            text = getattr(hot, name)
            exact = getattr(typed, name)
            assert (text is None) == (exact is None), name
            if text is not None:
                assert isinstance(text, str) and Decimal(text) == exact, name
        for name in TRADE_OTHERS:
            assert getattr(hot, name) == getattr(typed, name), name
    else:
        assert hot == typed


@pytest.mark.parametrize("fmt", ["DEFAULT", "SIMPLE"])
@pytest.mark.parametrize("path", OBJECT_SAMPLES, ids=lambda p: p.name)
def test_hot_path_equals_typed_decode_on_every_sample(path: Path, fmt: str) -> None:
    data = path.read_bytes()
    hot = HotDecoder(format=fmt).decode(data)
    typed = decode(data)
    kind = path.name.split("_")[0]
    expected = {"ticker": HotTicker, "orderbook": HotOrderbook, "trade": HotTrade}.get(kind)
    if expected is None:
        assert not isinstance(hot, HotTicker | HotOrderbook | HotTrade)
    else:
        assert isinstance(hot, expected)
    assert_hot_equals_typed(hot, typed)


def test_simple_frames_are_not_misread_by_a_default_decoder() -> None:
    default, simple = HotDecoder(format="DEFAULT"), HotDecoder(format="SIMPLE")
    for name in ("ticker_simple_KRW-BTC_1.json", "ticker_default_KRW-BTC_1.json"):
        data = (SAMPLES / name).read_bytes()
        a, b = default.decode(data), simple.decode(data)
        assert isinstance(a, HotTicker) and isinstance(b, HotTicker)
        assert msgspec.structs.asdict(a) == msgspec.structs.asdict(b)
        assert a.code == "KRW-BTC" and a.trade_price is not None and a.timestamp is not None
    assert default.unknown_fields == {} and simple.unknown_fields == {}


def test_fallback_kinds_return_typed_events() -> None:
    hot = HotDecoder()
    candle = hot.decode((SAMPLES / "candle_default_KRW-BTC_1.json").read_bytes())
    assert isinstance(candle, Candle) and candle.type == "candle.1s"
    assert isinstance(hot.decode((SAMPLES / "myasset_default_KRW_1.json").read_bytes()), MyAsset)
    assert hot.decode(b'{"status":"UP"}') == Status("UP")
    assert hot.decode('{"status":"UP"}') == Status("UP")  # type: ignore[arg-type]


def test_sim_ns_is_read_and_never_published() -> None:
    hot = HotDecoder()
    wire = json.loads((SAMPLES / "trade_default_KRW-BTC_1.json").read_bytes())
    frame = json.dumps(dict(wire, sim_ns=1_700_000_000_123_456_789)).encode()
    trade = hot.decode(frame)
    assert isinstance(trade, HotTrade) and trade.sim_ns == 1_700_000_000_123_456_789
    assert b"sim_ns" not in trade_to_json(trade)
    ticker_wire = json.loads((SAMPLES / "ticker_simple_KRW-BTC_1.json").read_bytes())
    ticker = hot.decode(json.dumps(dict(ticker_wire, sim_ns=7)).encode())
    assert isinstance(ticker, HotTicker) and ticker.sim_ns == 7
    assert hot.decode((SAMPLES / "ticker_simple_KRW-BTC_1.json").read_bytes()).sim_ns == 0
    assert hot.unknown_fields == {}


@pytest.mark.parametrize("path", sorted(SAMPLES.glob("trade_*.json")), ids=lambda p: p.name)
def test_trade_to_json_matches_event_to_json(path: Path) -> None:
    data = path.read_bytes()
    trade = HotDecoder().decode(data)
    assert isinstance(trade, HotTrade)
    published = trade_to_json(trade)
    typed = json.loads(event_to_json(decode(data)))
    assert json.loads(published) == typed
    assert list(json.loads(published)) == list(typed)
    for name in TRADE_TEXTS:
        wire_text = getattr(trade, name)
        assert json.loads(published)[name] == wire_text
        if wire_text is not None:
            assert wire_text.encode() in data  # exact wire spelling, not a re-rendering


def test_trade_text_keeps_exponent_spelling() -> None:
    data = (SAMPLES / "trade_simple_BTC-ITAM_1.json").read_bytes()
    trade = HotDecoder(format="SIMPLE").decode(data)
    assert isinstance(trade, HotTrade)
    assert trade.change_price == "6E-8"
    assert trade_decimal(trade, "change_price") == Decimal("0.00000006")
    assert json.loads(trade_to_json(trade))["change_price"] == "6E-8"
    with pytest.raises(ValueError):
        trade_decimal(trade, "code")


@pytest.mark.parametrize("bad", [b'"12.5"', b"{}", b"[1]", b"true", b'"NaN"'])
def test_a_trade_decimal_that_is_not_a_number_raises_protocol_error(bad: bytes) -> None:
    data = (SAMPLES / "trade_default_KRW-BTC_1.json").read_bytes()
    frame = data.replace(b'"trade_volume": 0.00509799', b'"trade_volume": ' + bad)
    assert frame != data
    trade = HotDecoder().decode(frame)
    assert isinstance(trade, HotTrade)
    with pytest.raises(ProtocolError, match="trade_volume is not a JSON number"):
        _ = trade.trade_volume
    with pytest.raises(ProtocolError, match="trade_volume"):
        trade_to_json(trade)


def test_a_required_trade_decimal_may_not_be_null() -> None:
    data = (SAMPLES / "trade_default_KRW-BTC_1.json").read_bytes()
    trade = HotDecoder().decode(data.replace(b'"trade_price": 109847000.0', b'"trade_price": null'))
    assert isinstance(trade, HotTrade)
    with pytest.raises(ProtocolError, match="trade_price"):
        trade_to_json(trade)
    optional = HotDecoder().decode(
        data.replace(b'"best_ask_size": 0.0099545', b'"best_ask_size": null')
    )
    assert isinstance(optional, HotTrade) and optional.best_ask_size is None
    assert json.loads(trade_to_json(optional))["best_ask_size"] is None


def test_trade_to_json_escapes_text_fields() -> None:
    wire = json.loads((SAMPLES / "trade_default_KRW-BTC_1.json").read_bytes())
    frame = json.dumps(dict(wire, code='KRW-"BTC\\\n')).encode()
    trade = HotDecoder().decode(frame)
    assert isinstance(trade, HotTrade)
    assert json.loads(trade_to_json(trade))["code"] == 'KRW-"BTC\\\n'


def test_unknown_fields_on_the_hot_path_are_counted_and_tolerated() -> None:
    typed = Decoder()
    hot = HotDecoder(format="SIMPLE", decoder=typed)
    book = json.loads((SAMPLES / "orderbook_simple_KRW-LAMB_1.json").read_bytes())
    book["new"] = {"nested": [1]}
    book["obu"][0]["zz"] = 1
    drifted = hot.decode(json.dumps(book).encode())
    plain = hot.decode((SAMPLES / "orderbook_simple_KRW-LAMB_1.json").read_bytes())
    assert isinstance(drifted, HotOrderbook) and isinstance(plain, HotOrderbook)
    astuple = msgspec.structs.astuple
    assert [astuple(u) for u in drifted.orderbook_units] == [
        astuple(u) for u in plain.orderbook_units
    ]
    assert drifted.total_ask_size == plain.total_ask_size
    assert typed.unknown_fields == {"orderbook.new": 1, "orderbook.obu.zz": 1}
    assert hot.unknown_fields is typed.unknown_fields


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"[]",
        b'[{"status":"UP"}]',
        b'{"type":"ticker"}',
        b'{"type":"ticker","code":"KRW-BTC","trade_price":"1"}',
        b'{"type":"orderbook","code":"KRW-BTC","timestamp":1,"total_ask_size":1e400,'
        b'"total_bid_size":1,"orderbook_units":[]}',
        b'{"ty":"trade","cd":"KRW-BTC"}',
        b'{"type":"ticker","code":"\xff"}',
        b"{" * 100_000,
        b'{"type":"announcement"}',
    ],
)
def test_hot_path_errors_are_protocol_errors(frame: bytes) -> None:
    with pytest.raises(ProtocolError):
        HotDecoder().decode(frame)


def test_hot_decoder_options() -> None:
    with pytest.raises(ValueError):
        HotDecoder(format="JSON_LIST")
    small = HotDecoder(max_frame_bytes=32)
    with pytest.raises(ProtocolError, match="cap"):
        small.decode((SAMPLES / "trade_default_KRW-BTC_1.json").read_bytes())


def test_type_key_anywhere_in_the_object() -> None:
    for name in ("trade_default_KRW-BTC_1.json", "orderbook_simple_KRW-LAMB_3.json"):
        data = (SAMPLES / name).read_bytes()
        tree = json.loads(data, parse_float=Decimal)
        type_last = sorted(tree.items(), key=lambda item: item[0] in ("type", "ty"))
        reordered = msgspec.json.Encoder(decimal_format="number").encode(dict(type_last))
        assert not reordered.startswith((b'{"type"', b'{"ty"'))
        hot = HotDecoder().decode(reordered)
        assert type(hot) is type(HotDecoder().decode(data))
        assert_hot_equals_typed(hot, decode(data))


def test_frames_in_a_reused_buffer_are_copied_before_decoding() -> None:
    hot = HotDecoder()
    data = (SAMPLES / "trade_default_KRW-BTC_1.json").read_bytes()
    buffer = bytearray(data)
    trade = hot.decode(memoryview(buffer))
    from_bytearray = hot.decode(buffer)
    assert isinstance(trade, HotTrade) and isinstance(from_bytearray, HotTrade)
    # A frame parser reuses and resizes its buffer: the decoded trade must not notice.
    buffer[:] = data.replace(b"109847000.0", b"999999999.9")
    buffer.extend(b" " * 4096)
    assert trade.trade_price == "109847000.0" == from_bytearray.trade_price
    assert json.loads(trade_to_json(trade))["trade_price"] == "109847000.0"
    ticker = hot.decode(memoryview((SAMPLES / "ticker_default_KRW-BTC_1.json").read_bytes()))
    assert isinstance(ticker, HotTicker) and ticker.trade_price == 32287000.0
