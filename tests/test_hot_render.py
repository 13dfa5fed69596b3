"""The C trade renderer (feedhandler/upbit/_hotjson.c) against the Python reference."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest

from feedhandler.upbit import ProtocolError, hot
from feedhandler.upbit.hot import HotDecoder, HotTrade, trade_to_json, trade_to_json_python
from shm import native
from simulator.encode import encode_trade
from simulator.generator import MarketGenerator
from simulator.markets import market_list

SAMPLES = Path(__file__).resolve().parents[1].parent / "shared/upbit/samples"
pytestmark = pytest.mark.timeout(60)


def generated_trades(count: int) -> list[HotTrade]:
    markets = market_list(8)
    generator = MarketGenerator(markets, seed=5)
    decoders = {fmt: HotDecoder(format=fmt) for fmt in ("DEFAULT", "SIMPLE")}
    now_ms = int(time.time() * 1000)
    out = []
    for i in range(count):
        trade = generator.trade_in(markets[i % len(markets)].code, now_ms + i)
        fmt = "SIMPLE" if i % 4 == 0 else "DEFAULT"
        out.append(decoders[fmt].decode(encode_trade(trade, fmt, "REALTIME")))
    return out


def sample_trades() -> list[Any]:
    out = []
    for path in sorted(SAMPLES.glob("trade_*.json")):
        fmt = "SIMPLE" if "simple" in path.name else "DEFAULT"
        out.append(HotDecoder(format=fmt).decode(path.read_bytes().strip()))
    return [t for t in out if isinstance(t, HotTrade)]


def outcome(render: Any, trade: Any) -> tuple[str, Any]:
    try:
        return "ok", render(trade)
    except ProtocolError as exc:
        return "error", str(exc)


def test_the_c_renderer_is_built_and_used() -> None:
    if native.turned_off():
        pytest.skip(f"{native.DISABLE_ENV} is set")
    assert hot._RENDER is not None
    trades = generated_trades(8)
    assert {type(t).__name__ for t in trades} == {"HotTrade", "HotTradeSimple"}
    for trade in trades:
        assert hot._RENDER(trade) == trade_to_json_python(trade)
    for trade in sample_trades():
        # Legacy frames without best_* (null) are left to Python.
        expected = trade_to_json_python(trade)
        assert hot._RENDER(trade) == (None if b"null" in expected else expected)


def test_generated_and_recorded_trades_render_the_same_bytes() -> None:
    for trade in generated_trades(500) + sample_trades():
        rendered = trade_to_json(trade)
        assert rendered == trade_to_json_python(trade)
        # Exact decimal text, as the contract says.
        data = orjson.loads(rendered)
        assert data["trade_price"] == bytes(trade.raw_trade_price).decode()


def raw(text: str) -> msgspec.Raw:
    return msgspec.Raw(text.encode())


@pytest.mark.parametrize(
    "changes",
    [
        {"change": None},
        {"stream_type": None},
        {"raw_best_ask_price": raw("null"), "raw_best_bid_size": raw("null")},
        {"raw_trade_price": raw("-1.5E-8"), "raw_trade_volume": raw("0")},
        {"raw_trade_price": raw('"85513000"')},
        {"raw_change_price": raw("[1]")},
        {"code": 'KRW-"QUOTE"'},
        {"trade_time": "07:15:54\n"},
        {"ask_bid": "매수"},
        {"trade_date": "back\\slash"},
        {"stream_type": "\x7f"},
        {"sequential_id": 2**63},
        {"sequential_id": 2**63 - 1, "timestamp": -(2**63)},
        {"trade_timestamp": 2**64 - 1},
        {"code": ""},
        {"trade_date": "x" * 2000},
    ],
)
def test_edge_cases_render_or_fail_like_the_python_path(changes: dict[str, Any]) -> None:
    base = generated_trades(1)[0]
    trade = msgspec.structs.replace(base, **changes)
    assert outcome(trade_to_json, trade) == outcome(trade_to_json_python, trade)
    if hot._RENDER is not None and outcome(trade_to_json_python, trade)[0] == "ok":
        # The C path either renders exactly that or leaves the trade to Python.
        assert hot._RENDER(trade) in (None, trade_to_json_python(trade))


def test_objects_that_are_not_hot_trades_are_left_to_python() -> None:
    if hot._RENDER is None:
        pytest.skip("the C renderer is not built or turned off")
    assert hot._RENDER(object()) is None
    assert hot._RENDER(msgspec.Raw(b"1")) is None
