"""Private endpoint: JWT checks (HS512, HS256, bad, reused nonce) and order/asset events."""

import hashlib
import json
import urllib.error
import urllib.request
import uuid
from decimal import Decimal

import jwt
import pytest
import websocket

from simulator import Simulator
from simulator.private import DEFAULT_BALANCES, query_string
from simulator.testing import collect, connect, recv_json, request, token

ACCESS = "test-access-key"
SECRET = "simulator-test-secret-" * 4


@pytest.fixture(scope="module")
def sim():
    with Simulator(
        markets=5, rate=50.0, access_key=ACCESS, secret_key=SECRET, connect_limit=None
    ) as s:
        yield s


def private_ws(sim, bearer):
    headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
    return connect(sim.private_url, **headers)


def _expect_auth_error(ws):
    ws.send(request({"type": "myOrder"}))
    assert recv_json(ws) == {
        "error": {"name": "INVALID_AUTH", "message": "인증 정보가 올바르지 않습니다."}
    }
    ws.settimeout(2)
    opcode, payload = ws.recv_data(control_frame=True)
    assert opcode == websocket.ABNF.OPCODE_CLOSE
    assert int.from_bytes(payload[:2], "big") == 1000


def post_order(sim, body, bearer=None):
    if bearer is None:
        claims = {
            "access_key": ACCESS,
            "nonce": str(uuid.uuid4()),
            "query_hash": hashlib.sha512(query_string(body).encode()).hexdigest(),
            "query_hash_alg": "SHA512",
        }
        bearer = jwt.encode(claims, SECRET, algorithm="HS512")
    req = urllib.request.Request(
        f"{sim.rest_url}/v1/orders",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {bearer}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.parametrize("algorithm", ["HS512", "HS256"])
def test_valid_jwt_opens_private_streams(sim, algorithm):
    ws = private_ws(sim, token(ACCESS, SECRET, algorithm))
    try:
        ws.send(request({"type": "myOrder", "codes": ["KRW-BTC"]}, {"type": "myAsset"}))
        ws.send("PING")
        assert recv_json(ws) == {"status": "UP"}
    finally:
        ws.close()


def test_missing_bad_and_reused_tokens_are_refused(sim):
    for bearer in (None, token(ACCESS, "wrong-secret-" * 6), token("other-key", SECRET)):
        ws = private_ws(sim, bearer)
        try:
            _expect_auth_error(ws)
        finally:
            ws.close()
    reused = token(ACCESS, SECRET, nonce="fixed-nonce")
    first = private_ws(sim, reused)
    second = private_ws(sim, reused)
    try:
        first.send(request({"type": "myAsset"}))
        first.send("PING")
        assert recv_json(first) == {"status": "UP"}
        _expect_auth_error(second)
    finally:
        first.close()
        second.close()
    journal = sim.control.journal(sids=False)["connections"]
    private = [c for c in journal if c["path"] == "/websocket/v1/private"]
    assert {c["authorization"] for c in private} == {True, False}


def test_limit_order_events_with_exact_decimals(sim):
    ws = private_ws(sim, token(ACCESS, SECRET))
    try:
        ws.send(request({"type": "myOrder"}, {"type": "myAsset"}))
        ws.send("PING")
        assert recv_json(ws) == {"status": "UP"}
        body = {
            "market": "KRW-BTC",
            "side": "bid",
            "ord_type": "limit",
            "price": "100000000",
            "volume": "0.01",
            "identifier": "client-1",
        }
        status, order = post_order(sim, body)
        assert status == 201
        assert order["state"] == "wait" and order["price"] == "100000000"
        assert order["volume"] == "0.01" and order["identifier"] == "client-1"
        placed = collect(ws, lambda m: len(m) >= 2)
        assert placed[0]["type"] == "myOrder" and placed[0]["state"] == "wait"
        assert placed[0]["uuid"] == order["uuid"]
        asset = placed[1]["assets"][0]
        locked = Decimal("100000000") * Decimal("0.01") * Decimal("1.0005")
        assert asset == {
            "currency": "KRW",
            "balance": Decimal(DEFAULT_BALANCES["KRW"]) - locked,
            "locked": locked,
        }
        assert str(asset["balance"]) == "98999500.37231066771348207123"
        sim.control.fill_order(order["uuid"], volume="0.004")
        sim.control.fill_order(order["uuid"])
        events = collect(ws, lambda m: sum(e["type"] == "myAsset" for e in m) >= 2)
        states = [e["state"] for e in events if e["type"] == "myOrder"]
        assert states == ["trade", "trade", "done"]
        fills = [e for e in events if e.get("state") == "trade"]
        assert [f["volume"] for f in fills] == [Decimal("0.004"), Decimal("0.006")]
        assert all(f["is_maker"] is True and f["trade_uuid"] for f in fills)
        assert fills[0]["trade_fee"] == Decimal("200")
        done = next(e for e in events if e.get("state") == "done")
        assert done["executed_volume"] == Decimal("0.01") and done["remaining_volume"] == 0
        final = [e for e in events if e["type"] == "myAsset"][-1]
        balances = {a["currency"]: a for a in final["assets"]}
        assert balances["KRW"]["locked"] == 0
        assert balances["BTC"]["balance"] == Decimal(DEFAULT_BALANCES["BTC"]) + Decimal("0.01")
        assert balances["KRW"]["balance"] == Decimal(DEFAULT_BALANCES["KRW"]) - Decimal("1000500")
        status, again = post_order(sim, body)
        assert status == 400 and again["error"]["name"] == "invalid_parameter"
    finally:
        ws.close()


def test_simple_format_private_events_and_cancel(sim):
    ws = private_ws(sim, token(ACCESS, SECRET))
    try:
        ws.send(request({"type": "myOrder", "codes": ["KRW-ETH"]}, fmt="SIMPLE"))
        ws.send("PING")
        assert recv_json(ws) == {"status": "UP"}
        placed = sim.control.place_order(
            market="KRW-ETH", side="ask", ord_type="limit", price="6000000", volume="1.5"
        )
        sim.control.place_order(
            market="KRW-XRP", side="ask", ord_type="limit", price="4000", volume="1"
        )
        sim.control.cancel_order(placed["uuid"])
        events = collect(ws, lambda m: len(m) >= 2)
        assert [(e["ty"], e["cd"], e["s"]) for e in events] == [
            ("myOrder", "KRW-ETH", "wait"),
            ("myOrder", "KRW-ETH", "cancel"),
        ]
        assert events[0]["v"] == Decimal("1.5") and events[0]["uid"] == placed["uuid"]
    finally:
        ws.close()


def test_rest_order_rejections(sim):
    body = {"market": "KRW-BTC", "side": "bid", "ord_type": "limit", "price": "1", "volume": "1"}
    bad_hash = jwt.encode(
        {"access_key": ACCESS, "nonce": "n-1", "query_hash": "00", "query_hash_alg": "SHA512"},
        SECRET,
        algorithm="HS512",
    )
    status, answer = post_order(sim, body, bearer=bad_hash)
    assert status == 401 and answer["error"]["name"] == "invalid_query_payload"
    status, answer = post_order(sim, {**body, "price": "1000000000000"})
    assert status == 400 and answer["error"]["name"] == "insufficient_funds_bid"
    status, answer = post_order(sim, {**body, "market": "KRW-NOPE"})
    assert status == 404 and answer["error"]["name"] == "notfoundmarket"
    status, answer = post_order(sim, {**body, "ord_type": "price"})
    assert status == 400 and answer["error"]["name"] == "invalid_parameter"


def test_market_orders_fill_at_the_book(sim):
    ws = private_ws(sim, token(ACCESS, SECRET))
    try:
        ws.send(request({"type": "myOrder", "codes": ["KRW-XRP"]}))
        ws.send("PING")
        assert recv_json(ws) == {"status": "UP"}
        status, _ = post_order(
            sim, {"market": "KRW-XRP", "side": "bid", "ord_type": "price", "price": "10000"}
        )
        assert status == 201
        events = collect(ws, lambda m: bool(m) and m[-1]["state"] == "done")
        assert [e["state"] for e in events] == ["wait", "trade", "done"]
        assert events[1]["is_maker"] is False
        assert events[1]["price"] * events[1]["volume"] <= Decimal("10000")
    finally:
        ws.close()


def signed_request(sim, method, path, params=None):
    query = query_string(params) if params else ""
    claims = {"access_key": ACCESS, "nonce": str(uuid.uuid4())}
    if query:
        claims["query_hash"] = hashlib.sha512(query.encode()).hexdigest()
        claims["query_hash_alg"] = "SHA512"
    bearer = jwt.encode(claims, SECRET, algorithm="HS256")
    url = f"{sim.rest_url}{path}" + (f"?{query}" if query else "")
    req = urllib.request.Request(url, method=method, headers={"Authorization": f"Bearer {bearer}"})
    try:
        with urllib.request.urlopen(req, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_order_lookup_cancel_and_accounts(sim):
    body = {"market": "KRW-ETH", "side": "bid", "ord_type": "limit", "price": "1000", "volume": "2"}
    status, order = post_order(sim, {**body, "identifier": "lookup-1"})
    assert status == 201
    status, found = signed_request(sim, "GET", "/v1/order", {"uuid": order["uuid"]})
    assert status == 200 and found["uuid"] == order["uuid"] and found["state"] == "wait"
    status, found = signed_request(sim, "GET", "/v1/order", {"identifier": "lookup-1"})
    assert status == 200 and found["uuid"] == order["uuid"]
    status, _ = signed_request(sim, "GET", "/v1/accounts")
    assert status == 200
    status, cancelled = signed_request(sim, "DELETE", "/v1/order", {"uuid": order["uuid"]})
    assert status == 200 and cancelled["state"] == "wait"
    status, found = signed_request(sim, "GET", "/v1/order", {"uuid": order["uuid"]})
    assert found["state"] == "cancel"
    status, accounts = signed_request(sim, "GET", "/v1/accounts")
    krw = next(a for a in accounts if a["currency"] == "KRW")
    assert isinstance(krw["balance"], str) and Decimal(krw["locked"]) >= 0
    status, missing = signed_request(sim, "GET", "/v1/order", {"uuid": "no-such-order"})
    assert status == 404 and missing["error"]["name"] == "order_not_found"
