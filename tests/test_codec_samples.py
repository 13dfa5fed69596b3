"""Every recorded Upbit frame decodes, field by field, to what an independent parser reads.

The oracle is the standard library's json with ``parse_float=Decimal`` and a SIMPLE ->
DEFAULT key table written out here (not imported from the codec).
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from feedhandler.upbit import (
    AssetBalance,
    Candle,
    Decoder,
    ErrorMessage,
    MyAsset,
    MyOrder,
    Orderbook,
    OrderbookUnit,
    ProtocolError,
    Status,
    Ticker,
    Trade,
    decode,
    decode_all,
    event_to_json,
)

SAMPLES = Path(__file__).resolve().parents[1].parent / "shared/upbit/samples"
SAMPLE_FILES = sorted(SAMPLES.glob("*.json"))

# SIMPLE key -> DEFAULT key, copied from the Upbit docs tables (SPEC.md section 4).
SIMPLE_TO_DEFAULT: dict[str, dict[str, str]] = {
    "ticker": {
        "ty": "type", "cd": "code", "op": "opening_price", "hp": "high_price",
        "lp": "low_price", "tp": "trade_price", "pcp": "prev_closing_price", "c": "change",
        "cp": "change_price", "scp": "signed_change_price", "cr": "change_rate",
        "scr": "signed_change_rate", "tv": "trade_volume", "atv": "acc_trade_volume",
        "atv24h": "acc_trade_volume_24h", "atp": "acc_trade_price",
        "atp24h": "acc_trade_price_24h", "tdt": "trade_date", "ttm": "trade_time",
        "ttms": "trade_timestamp", "ab": "ask_bid", "aav": "acc_ask_volume",
        "abv": "acc_bid_volume", "h52wp": "highest_52_week_price",
        "h52wdt": "highest_52_week_date", "l52wp": "lowest_52_week_price",
        "l52wdt": "lowest_52_week_date", "ms": "market_state",
        "its": "is_trading_suspended", "dd": "delisting_date", "mw": "market_warning",
        "tms": "timestamp", "st": "stream_type", "ts": "trade_status",
        "msfi": "market_state_for_ios",
    },
    "trade": {
        "ty": "type", "cd": "code", "tp": "trade_price", "tv": "trade_volume",
        "ab": "ask_bid", "pcp": "prev_closing_price", "c": "change", "cp": "change_price",
        "td": "trade_date", "ttm": "trade_time", "ttms": "trade_timestamp",
        "tms": "timestamp", "sid": "sequential_id", "bap": "best_ask_price",
        "bas": "best_ask_size", "bbp": "best_bid_price", "bbs": "best_bid_size",
        "st": "stream_type",
    },
    "orderbook": {
        "ty": "type", "cd": "code", "tas": "total_ask_size", "tbs": "total_bid_size",
        "obu": "orderbook_units", "tms": "timestamp", "lv": "level", "st": "stream_type",
    },
    "orderbook_units": {"ap": "ask_price", "bp": "bid_price", "as": "ask_size", "bs": "bid_size"},
    "candle": {
        "ty": "type", "cd": "code", "cdttmu": "candle_date_time_utc",
        "cdttmk": "candle_date_time_kst", "op": "opening_price", "hp": "high_price",
        "lp": "low_price", "tp": "trade_price", "catv": "candle_acc_trade_volume",
        "catp": "candle_acc_trade_price", "tms": "timestamp", "st": "stream_type",
    },
    "myOrder": {
        "ty": "type", "cd": "code", "uid": "uuid", "ab": "ask_bid", "ot": "order_type",
        "s": "state", "tuid": "trade_uuid", "p": "price", "ap": "avg_price", "v": "volume",
        "rv": "remaining_volume", "ev": "executed_volume", "tc": "trades_count",
        "rsf": "reserved_fee", "rmf": "remaining_fee", "pf": "paid_fee", "l": "locked",
        "ef": "executed_funds", "tif": "time_in_force", "tf": "trade_fee", "im": "is_maker",
        "id": "identifier", "smpt": "smp_type", "pv": "prevented_volume",
        "pl": "prevented_locked", "ttms": "trade_timestamp", "otms": "order_timestamp",
        "tms": "timestamp", "st": "stream_type",
    },
    "myAsset": {
        "ty": "type", "astuid": "asset_uuid", "ast": "assets", "asttms": "asset_timestamp",
        "tms": "timestamp", "st": "stream_type",
    },
    "assets": {"cu": "currency", "b": "balance", "l": "locked"},
}  # fmt: skip

CLASS_OF_PREFIX = {
    "ticker": Ticker,
    "trade": Trade,
    "orderbook": Orderbook,
    "candle": Candle,
    "myorder": MyOrder,
    "myasset": MyAsset,
    "error": ErrorMessage,
    "status": Status,
}


def load(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def oracle(data: bytes) -> Any:
    return json.loads(data, parse_float=Decimal, parse_int=int)


def kind_of(obj: dict[str, Any]) -> str:
    type_name = obj.get("type", obj.get("ty"))
    if type_name is None:
        # The 2018 schema has no type key; these three kinds are the only legacy samples.
        if "orderbook_units" in obj or "obu" in obj:
            return "orderbook"
        return "trade" if ("sequential_id" in obj or "sid" in obj) else "ticker"
    return "candle" if type_name.startswith("candle.") else type_name


def to_default(obj: dict[str, Any]) -> dict[str, Any]:
    """A wire object under DEFAULT keys, by the table above (identity for DEFAULT keys)."""
    kind = kind_of(obj)
    table = SIMPLE_TO_DEFAULT[kind]
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = {"market": "code", "mk": "code"}.get(key, table.get(key, key))
        if name in ("orderbook_units", "assets"):
            inner = SIMPLE_TO_DEFAULT[name]
            out[name] = [{inner.get(k, k): v for k, v in item.items()} for item in value]
        else:
            out[name] = value
    return out


def dumps(value: Any) -> str:
    """JSON text that writes Decimals as the numbers they were read from."""
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{dumps(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(dumps(v) for v in value) + "]"
    if isinstance(value, Decimal):
        return str(value)
    return json.dumps(value, ensure_ascii=False)


def assert_matches(event: Any, expected: dict[str, Any]) -> None:
    for name, value in expected.items():
        got = getattr(event, name)
        if isinstance(value, list):
            assert len(got) == len(value), name
            for item, item_expected in zip(got, value, strict=True):
                assert_matches(item, item_expected)
        else:
            assert got == value, f"{type(event).__name__}.{name}: {got!r} != {value!r}"
            assert type(got) is type(value) or isinstance(value, int | Decimal), name


def test_samples_directory_is_complete() -> None:
    assert len(SAMPLE_FILES) >= 30
    prefixes = {path.name.split("_")[0] for path in SAMPLE_FILES}
    assert prefixes == set(CLASS_OF_PREFIX)


@pytest.mark.parametrize("path", SAMPLE_FILES, ids=lambda p: p.name)
def test_sample_decodes_field_by_field(path: Path) -> None:
    data = path.read_bytes()
    events = decode_all(data)
    tree = oracle(data)
    objects = tree if isinstance(tree, list) else [tree]
    assert len(events) == len(objects)
    expected_class = CLASS_OF_PREFIX[path.name.split("_")[0]]
    for event, obj in zip(events, objects, strict=True):
        assert type(event) is expected_class
        if isinstance(event, ErrorMessage):
            assert event.name == obj["error"]["name"]
            assert event.message == obj["error"]["message"]
        elif isinstance(event, Status):
            assert event.status == obj["status"]
        else:
            expected = to_default(obj)
            assert_matches(event, expected)
            if "type" not in expected:
                assert event.type == kind_of(obj)
    # The same frame as text decodes identically.
    assert decode_all(data.decode("utf-8")) == events


@pytest.mark.parametrize("path", SAMPLE_FILES, ids=lambda p: p.name)
def test_event_to_json_keeps_exact_numbers(path: Path) -> None:
    for event in decode_all(path.read_bytes()):
        rendered = json.loads(event_to_json(event))
        for name, value in rendered.items():
            original = getattr(event, name)
            if isinstance(original, Decimal):
                assert isinstance(value, str)
                assert Decimal(value) == original
                assert str(original) == value
            elif isinstance(original, tuple):
                assert len(value) == len(original)
            else:
                assert value == original


def test_key_values_written_out() -> None:
    ticker = decode(load("ticker_default_KRW-BTC_1.json"))
    assert isinstance(ticker, Ticker)
    assert ticker.code == "KRW-BTC"
    assert ticker.trade_price == Decimal("32287000")
    assert ticker.acc_trade_price == Decimal("78039261076.51241000")
    assert str(ticker.acc_trade_price_24h) == "228827082483.70729000"
    assert ticker.change_rate == Decimal("0.0126713295")
    assert ticker.trade_timestamp == 1676965262139
    assert ticker.delisting_date is None
    assert ticker.is_trading_suspended is False
    assert ticker.stream_type == "REALTIME"

    trade = decode(load("trade_default_KRW-BTC_1.json"))
    assert isinstance(trade, Trade)
    assert trade.sequential_id == 17877285547970000
    assert trade.trade_price == Decimal("109847000.0")
    assert trade.best_ask_size == Decimal("0.0099545")
    assert trade.trade_date == "2026-08-26"

    tiny = decode(load("trade_simple_BTC-ITAM_1.json"))
    assert isinstance(tiny, Trade)
    assert tiny.change_price == Decimal("6E-8") == Decimal("0.00000006")
    assert tiny.trade_price == Decimal("0.00000113")
    assert tiny.sequential_id == 16186782720000000
    assert tiny.best_bid_price is None

    book = decode(load("orderbook_default_KRW-BTC_3.json"))
    assert isinstance(book, Orderbook)
    assert book.orderbook_units[0] == OrderbookUnit(
        Decimal("116539000"), Decimal("116538000"), Decimal("0.02054761"), Decimal("0.06612366")
    )
    assert str(book.orderbook_units[1].ask_size) == "0.00077720"
    assert book.level == 0
    assert len(decode(load("orderbook_default_KRW-BTC_1.json")).orderbook_units) == 30

    simple_book = decode(load("orderbook_simple_BTC-ITAM_2.json"))
    assert isinstance(simple_book, Orderbook)
    assert simple_book.orderbook_units[14].bid_price == Decimal("9.9E-7")
    assert simple_book.level is None

    asset = decode(load("myasset_default_KRW_1.json"))
    assert isinstance(asset, MyAsset)
    assert asset.assets == (
        AssetBalance(
            "KRW", Decimal("1386929.37231066771348207123"), Decimal("10329.670127489597585685")
        ),
    )

    order = decode(load("myorder_default_KRW-BTC_1.json"))
    assert isinstance(order, MyOrder)
    assert order.paid_fee == Decimal("22.467660028283017")
    assert order.trades_count == 1
    assert order.time_in_force is None
    assert order.is_maker is True
    older = decode(load("myorder_default_SGD-XRP_1.json"))
    assert isinstance(older, MyOrder)
    assert older.trade_uuid is None and older.identifier is None and older.smp_type is None

    candles = decode_all(load("candle_simplelist_KRW-BTC+KRW-ETH_1.json"))
    assert [c.code for c in candles] == ["KRW-BTC", "KRW-ETH"]
    assert candles[1].candle_acc_trade_price is None and candles[1].timestamp is None
    candle = decode(load("candle_default_KRW-BTC_1.json"))
    assert candle.type == "candle.1s"
    assert str(candle.candle_acc_trade_price) == "860743.5307100000000000"

    legacy = decode(load("ticker_default-legacy_KRW-BTC_2.json"))
    assert isinstance(legacy, Ticker)
    assert legacy.code == "KRW-BTC" and legacy.type == "ticker"
    assert legacy.stream_type is None and legacy.trade_status == "ACTIVE"
    assert str(legacy.acc_trade_price) == "105515441503.850220000"
    legacy_trade = decode(load("trade_simple-legacy_KRW-BTC_1.json"))
    assert isinstance(legacy_trade, Trade) and legacy_trade.code == "KRW-BTC"

    error = decode(load("error_INVALID_PARAM_1.json"))
    assert error == ErrorMessage("INVALID_PARAM", "nope 은 지원하지 않는 타입입니다.")
    assert error.stream_type is None
    assert decode(load("status_UP_1.json")) == Status("UP")


DEFAULT_SAMPLES = [
    "ticker_default_KRW-BTC_1.json",
    "trade_default_KRW-BTC_1.json",
    "trade_default_KRW-BTC_2.json",
    "orderbook_default_KRW-BTC_1.json",
    "orderbook_default_KRW-BTC_3.json",
    "candle_default_KRW-BTC_1.json",
    "myorder_default_KRW-BTC_1.json",
    "myorder_default_SGD-XRP_2.json",
    "myasset_default_KRW_1.json",
]


def to_simple(obj: dict[str, Any]) -> dict[str, Any]:
    kind = kind_of(obj)
    back = {default: simple for simple, default in SIMPLE_TO_DEFAULT[kind].items()}
    out: dict[str, Any] = {}
    for key, value in obj.items():
        if key in ("orderbook_units", "assets"):
            inner = {d: s for s, d in SIMPLE_TO_DEFAULT[key].items()}
            out[back[key]] = [{inner[k]: v for k, v in item.items()} for item in value]
        else:
            out[back[key]] = value
    return out


@pytest.mark.parametrize("name", DEFAULT_SAMPLES)
def test_simple_rendering_of_a_default_sample_decodes_equal(name: str) -> None:
    data = load(name)
    simple = dumps(to_simple(oracle(data))).encode()
    assert b'"ty"' in simple and b'"type"' not in simple
    assert decode(simple) == decode(data)


def test_exponent_forms_and_lower_case_e() -> None:
    frame = (
        b'{"type":"orderbook","code":"KRW-BTC","timestamp":1,"total_ask_size":8.428e-05,'
        b'"total_bid_size":5.0E-4,"orderbook_units":[{"ask_price":1.16539E8,'
        b'"bid_price":1.16538e+8,"ask_size":7.9276E-4,"bid_size":1E0}],"level":0}'
    )
    book = decode(frame)
    assert isinstance(book, Orderbook)
    assert book.total_ask_size == Decimal("0.00008428")
    assert book.total_bid_size == Decimal("0.0005")
    unit = book.orderbook_units[0]
    assert (unit.ask_price, unit.bid_price) == (Decimal(116539000), Decimal(116538000))
    assert unit.ask_size == Decimal("0.00079276") and unit.bid_size == 1


def test_integers_stay_exact_beyond_two_to_the_53() -> None:
    odd = 2**53 + 1
    data = load("trade_default_KRW-BTC_1.json").replace(b"17877285547970000", str(odd).encode())
    trade = decode(data)
    assert isinstance(trade, Trade) and trade.sequential_id == odd
    assert float(odd) != odd


def test_unknown_fields_are_tolerated_and_counted() -> None:
    decoder = Decoder()
    base = oracle(load("orderbook_default_KRW-BTC_3.json"))
    drifted = dict(base, new_top=1, sim_ns=123)
    drifted["orderbook_units"] = [dict(u, new_inner="x") for u in base["orderbook_units"]]
    event = decoder.decode(dumps(drifted).encode())
    assert event == decode(load("orderbook_default_KRW-BTC_3.json"))
    assert decoder.unknown_fields == {
        "orderbook.new_top": 1,
        "orderbook.orderbook_units.new_inner": 1,
    }
    simple_ticker = oracle(load("ticker_simple_KRW-BTC_1.json"))
    decoder.decode(dumps(dict(simple_ticker, zz=[1, {"a": None}])).encode())
    decoder.decode(dumps(dict(simple_ticker, zz=2)).encode())
    assert decoder.unknown_fields["ticker.zz"] == 2
    # sim_ns alone is expected (the simulator's timestamp), not drift.
    decoder.decode(dumps(dict(simple_ticker, sim_ns=5)).encode())
    assert sum(decoder.unknown_fields.values()) == 4


def test_error_frames_and_numeric_names() -> None:
    rest_error = (
        b'{"error":{"name":400,"message":"Type mismatch error. Check the parameters type!"}}'
    )
    assert decode(rest_error) == ErrorMessage(
        "400", "Type mismatch error. Check the parameters type!"
    )
    assert decode(b'{"error":{"name":"NO_TICKET"}}') == ErrorMessage("NO_TICKET", None)
    with pytest.raises(ProtocolError):
        decode(b'{"error":{"name":true,"message":"x"}}')
    with pytest.raises(ProtocolError):
        decode(b'{"error":"plain text"}')


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b"", "not a JSON object"),
        (b"PONG", "not a JSON object"),
        (b'{"type":"ticker"', "malformed"),
        (b"[1, 2]", "array frame"),
        (b'"ticker"', "not a JSON object"),
        (b"42", "not a JSON object"),
        (b'{"type":"announcement","code":"KRW-BTC"}', "unknown message type"),
        (b'{"type":5,"code":"KRW-BTC"}', "not a JSON object"),
        (b'{"code":"KRW-BTC"}', "no type"),
        (b'{"type":"ticker"}', "invalid ticker"),
        (b'{"type":"ticker","code":"KRW-BTC","trade_price":"NaN"}', "non-finite"),
        (b'{"type":"ticker","code":"KRW-BTC","trade_price":true}', "invalid ticker"),
        (b'{"type":"trade","code":"KRW-BTC","type":"ticker"}', "invalid trade"),
        (b'{"type":"ticker","code":"KRW-BTC","type":"trade"}', "twice"),
        (b'{"type":"ticker","code":"\xff"}', "malformed"),
        (b'{"type":"ticker","code":"KRW-BTC","x":"\xff"}', "malformed"),
        (b"[" * 100_000, "array frame"),
        (b'{"a":' * 100_000, "not a JSON object"),
    ],
)
def test_malformed_frames_raise_protocol_error(frame: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        decode(frame)
    assert reason in str(caught.value)
    assert len(caught.value.excerpt) <= 80


def test_decode_all_rejects_bad_array_elements() -> None:
    with pytest.raises(ProtocolError, match="not an object"):
        decode_all(b'[{"status":"UP"}, 3]')
    with pytest.raises(ProtocolError):
        decode_all(b"[" * 100_000)
    assert decode_all(b"[]") == ()
    assert decode_all(b' [ {"status":"UP"} ] ') == (Status("UP"),)


def test_frame_size_cap_is_checked_before_parsing() -> None:
    decoder = Decoder(max_frame_bytes=64)
    assert decoder.decode(b'{"status":"UP"}') == Status("UP")
    big = b'{"status":"UP","pad":"' + b"x" * 64 + b'"}'
    with pytest.raises(ProtocolError, match="exceeds the 64-byte cap"):
        decoder.decode(big)
    with pytest.raises(ProtocolError, match="larger than 64"):
        decoder.decode(big.decode())
    with pytest.raises(ValueError):
        Decoder(max_frame_bytes=0)


def test_wrong_argument_types_raise_protocol_error() -> None:
    for frame in (None, 42, ["x"], {"status": "UP"}):
        with pytest.raises(ProtocolError, match="bytes or str"):
            decode(frame)  # type: ignore[arg-type]
    with pytest.raises(ProtocolError, match="UTF-8"):
        decode('{"status":"\ud800"}')
    assert decode(bytearray(b'{"status":"UP"}')) == Status("UP")


def test_excerpt_is_short_and_printable() -> None:
    frame = b'{"type":"nope","x":"' + b"\xff\xfe" * 100 + b'"}'
    with pytest.raises(ProtocolError) as caught:
        decode(frame)
    assert str(caught.value).startswith("unknown message type 'nope'")
    assert len(caught.value.excerpt) <= 80
    assert caught.value.excerpt.isprintable()
    control = ProtocolError("x", b"\x00\x1b\r\n" * 50)
    assert control.excerpt.isprintable() and len(control.excerpt) <= 80
    assert ProtocolError("y", "\u2028" * 200).excerpt.isprintable()


def test_events_are_immutable() -> None:
    ticker = decode(load("ticker_default_KRW-BTC_1.json"))
    with pytest.raises(AttributeError):
        ticker.trade_price = Decimal(1)  # type: ignore[misc]
    assert hash(ticker) == hash(decode(load("ticker_default_KRW-BTC_1.json")))


def test_json_list_frames_of_default_objects() -> None:
    ticker = load("ticker_default_KRW-BTC_1.json")
    trade = load("trade_default_KRW-BTC_2.json")
    events = decode_all(b"[" + ticker + b"," + trade + b"]")
    assert events == (decode(ticker), decode(trade))
    with pytest.raises(ProtocolError, match="use decode_all"):
        decode(b"[" + ticker + b"]")


def test_key_order_does_not_matter() -> None:
    for name in ("trade_default_KRW-BTC_1.json", "ticker_simple_KRW-BTC_1.json"):
        tree = oracle(load(name))
        last = sorted(tree.items(), key=lambda item: item[0] in ("type", "ty"))
        reordered = dumps(dict(last)).encode()
        assert not reordered.startswith((b'{"type"', b'{"ty"'))
        assert decode(reordered) == decode(load(name))
