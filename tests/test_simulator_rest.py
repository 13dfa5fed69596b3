"""REST endpoints of the simulator: quotation, trades/ticks paging and backfill, 429/418."""

import json
import time
import urllib.error
import urllib.request
from decimal import Decimal

import pytest

from simulator import Simulator
from simulator.testing import collect_for, connect, decode, request


def get(url, headers=None):
    """(status, headers, body bytes) of a GET; never raises on HTTP error statuses."""
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


@pytest.fixture(scope="module")
def sim():
    with Simulator(markets=12, rate=500.0, seed=9, connect_limit=None, rest_limit=1000) as s:
        yield s


def test_market_all(sim):
    status, headers, body = get(f"{sim.rest_url}/v1/market/all")
    assert status == 200
    items = json.loads(body)
    assert [item["market"] for item in items] == sim.markets
    assert set(items[0]) == {"market", "korean_name", "english_name"}
    assert headers["Remaining-Req"].startswith("group=market; min=")
    _, _, body = get(f"{sim.rest_url}/v1/market/all?is_details=true")
    detailed = json.loads(body)[0]
    assert detailed["market_event"]["warning"] is False
    assert set(detailed["market_event"]["caution"]) >= {"PRICE_FLUCTUATIONS"}
    status, _, body = get(f"{sim.rest_url}/v1/market/all?is_details=maybe")
    assert status == 400
    assert json.loads(body)["error"]["name"] == 400


def test_ticker_and_orderbook(sim):
    status, _, body = get(f"{sim.rest_url}/v1/ticker?markets=KRW-BTC,USDT-BTC,KRW-NOPE")
    assert status == 200
    tickers = decode(body)
    assert [t["market"] for t in tickers] == ["KRW-BTC", "USDT-BTC"]
    for ticker in tickers:
        assert ticker["low_price"] <= ticker["trade_price"] <= ticker["high_price"]
        assert "type" not in ticker and "stream_type" not in ticker
        assert len(ticker["trade_date_kst"]) == 8
    status, _, body = get(f"{sim.rest_url}/v1/orderbook?markets=KRW-BTC&count=5&level=10000")
    (book,) = decode(body)
    assert status == 200 and book["level"] == 10000 and len(book["orderbook_units"]) == 5
    assert book["total_ask_size"] == sum(u["ask_size"] for u in book["orderbook_units"])
    status, _, _ = get(f"{sim.rest_url}/v1/orderbook?markets=BTC-ETH&level=10000")
    assert status == 400
    status, _, _ = get(f"{sim.rest_url}/v1/ticker")
    assert status == 400
    status, _, _ = get(f"{sim.rest_url}/v1/ticker?markets=KRW-NOPE")
    assert status == 404


def test_ticker_all_and_orderbook_instruments(sim):
    _, _, body = get(f"{sim.rest_url}/v1/ticker/all?quote_currencies=BTC,USDT")
    markets = [t["market"] for t in decode(body)]
    assert markets and all(m.startswith(("BTC-", "USDT-")) for m in markets)
    _, _, body = get(f"{sim.rest_url}/v1/orderbook/instruments?markets=KRW-BTC,BTC-ETH")
    krw, btc = json.loads(body)
    assert krw == {
        "market": "KRW-BTC",
        "quote_currency": "KRW",
        "tick_size": "1000",
        "supported_levels": ["0", "10000", "100000"],
    }
    assert btc["tick_size"] == "0.00000001" and btc["supported_levels"] == ["0"]


def test_trades_ticks_serve_the_websocket_trades(sim):
    ws = connect(sim.public_url)
    try:
        ws.send(request({"type": "trade", "codes": ["KRW-BTC"], "is_only_realtime": True}))
        live = collect_for(ws, 1.0)
    finally:
        ws.close()
    assert live
    _, _, body = get(f"{sim.rest_url}/v1/trades/ticks?market=KRW-BTC&count=500")
    rest = {item["sequential_id"]: item for item in decode(body)}
    for trade in live:
        item = rest[trade["sequential_id"]]
        assert item["trade_price"] == trade["trade_price"]
        assert item["trade_volume"] == trade["trade_volume"]
        assert item["ask_bid"] == trade["ask_bid"]
        assert item["timestamp"] == trade["trade_timestamp"]
        assert item["trade_date_utc"] == trade["trade_date"]
        assert item["prev_closing_price"] == trade["prev_closing_price"]
        assert isinstance(item["trade_price"], Decimal | int)


def test_trades_ticks_paging_with_cursor(sim):
    _, _, body = get(f"{sim.rest_url}/v1/trades/ticks?market=KRW-BTC")
    assert len(decode(body)) == 1
    _, _, body = get(f"{sim.rest_url}/v1/trades/ticks?market=KRW-BTC&count=50")
    first = decode(body)
    assert len(first) == 50
    stamps = [item["timestamp"] for item in first]
    assert stamps == sorted(stamps, reverse=True)
    cursor = first[-1]["sequential_id"]
    _, _, body = get(f"{sim.rest_url}/v1/trades/ticks?market=KRW-BTC&count=50&cursor={cursor}")
    second = decode(body)
    journal = sim.control.journal(codes=["KRW-BTC"])
    generated = journal["generated"]["KRW-BTC"]
    pages = [item["sequential_id"] for item in first + second][::-1]
    start = generated.index(pages[0])
    assert generated[start : start + len(pages)] == pages
    status, _, _ = get(f"{sim.rest_url}/v1/trades/ticks?market=KRW-BTC&count=501")
    assert status == 400
    _, _, body = get(f"{sim.rest_url}/v1/trades/ticks?market=KRW-BTC&days_ago=2")
    assert decode(body) == []


def test_rest_rate_limit_429_then_418():
    limits = {"rest_limit": 3, "rest_teapot_after": 2, "rest_block_seconds": 1.5}
    with Simulator(markets=3, rate=0.0, **limits) as sim:
        url = f"{sim.rest_url}/v1/ticker?markets=KRW-BTC"
        statuses = [get(url)[0] for _ in range(3)]
        assert statuses == [200] * 3
        status, _, body = get(url)
        assert status == 429 and body == b"Too many API requests."
        assert get(url)[0] == 429
        status, _, body = get(url)
        assert status == 418 and b"Blocked" in body
        assert get(url)[0] == 418
        time.sleep(1.6)
        assert get(url)[0] == 200
        kinds = [entry["status"] for entry in sim.control.journal(sids=False)["rest"]]
        assert kinds[:3] == [429, 429, 429] and 418 in kinds


def test_rest_origin_group():
    with Simulator(markets=3, rate=0.0) as sim:
        url = f"{sim.rest_url}/v1/market/all"
        status, headers, _ = get(url, {"Origin": "http://localhost"})
        assert status == 200 and headers["Remaining-Req"].startswith("group=origin;")
        assert get(url, {"Origin": "http://localhost"})[0] == 429
        assert get(url)[0] == 200
