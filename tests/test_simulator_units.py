"""Pure parts of the simulator: rate windows, HTTP head parsing, JWT checks, the account."""

import gc
import hashlib
from collections import deque
from decimal import Decimal

import jwt
import pytest

from simulator.frames import frame, header
from simulator.http import HttpError, HttpResponse, parse_head
from simulator.journal import ConnectionRecord, SidHistory
from simulator.limits import SlidingWindow, WindowSet
from simulator.private import Account, Authenticator, AuthError, OrderError, encode_private
from simulator.testing import decode

SECRET = "unit-test-secret-" * 5


def test_sliding_window_uses_the_given_clock():
    window = SlidingWindow(2, 1.0)
    assert window.allow(0.0) and window.allow(0.5)
    assert not window.allow(0.9)
    assert window.remaining(0.9) == 0
    assert window.allow(1.0)
    assert window.remaining(1.2) == 0
    assert window.remaining(2.6) == 2


def test_window_set_needs_every_window():
    windows = WindowSet((5, 1.0), (7, 60.0))
    accepted = [windows.allow(t * 0.25) for t in range(40)]
    assert sum(accepted) == 7
    assert accepted[:5] == [True] * 5
    assert not windows.allow(30.0)
    assert windows.allow(61.0)
    with pytest.raises(ValueError, match="limit >= 1"):
        SlidingWindow(0, 1.0)


@pytest.mark.parametrize("appended", [0, 1, 4, 5, 6, 9, 10, 11, 23])
def test_sid_history_keeps_the_newest_ids_oldest_first(appended):
    sids = [17_957_068_196_340_008 + 10_000 * i for i in range(appended)]
    history, reference = SidHistory(5), deque(maxlen=5)
    for sid in sids:
        history.append(sid)
        reference.append(sid)
    assert history.tolist() == list(reference)
    assert len(history) == len(reference)
    with pytest.raises(ValueError, match="at least one id"):
        SidHistory(0)


def test_sent_ids_are_invisible_to_the_garbage_collector():
    # Collections walked every id of every connection's deque and stalled the paced stream.
    record = ConnectionRecord(1, "/websocket/v1", "127.0.0.1", False, False, 0.0, 1_000)
    for i in range(3_000):
        record.sent_sid("KRW-BTC", 17_957_068_196_340_008 + i)
    assert record.as_json()["sids"]["KRW-BTC"] == [
        17_957_068_196_340_008 + i for i in range(2_000, 3_000)
    ]
    assert record.as_json(with_sids=False)["sids"] == {"KRW-BTC": 1_000}
    # A collection visits a handful of objects from the history, never the ids.
    history = record.sids["KRW-BTC"]
    visited = gc.get_referents(history)
    visited += gc.get_referents(*visited)
    assert len(visited) < 10
    assert not any(isinstance(ref, int) and ref > 1_000_000 for ref in visited)


def test_parse_head():
    head = (
        b"POST /control/stall?x=1&y= HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n"
        b"Origin: http://x\r\n\r\n"
    )
    request, length = parse_head(head, "127.0.0.1:5")
    assert (request.method, request.path, length) == ("POST", "/control/stall", 12)
    assert request.query == {"x": ["1"], "y": [""]}
    assert request.headers["origin"] == "http://x"


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET / HTTP/2\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nno colon here\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n", 413),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 501),
    ],
)
def test_parse_head_rejects(head, status):
    with pytest.raises(HttpError) as caught:
        parse_head(head, "c")
    assert caught.value.status == status


def test_http_response_bytes():
    raw = HttpResponse.json(429, {"a": 1}, {"Remaining-Req": "group=x"}).encode(keep_alive=False)
    head, body = raw.split(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 429 Too Many Requests\r\n")
    assert b"Content-Length: 7" in head and b"Connection: close" in head
    assert body == b'{"a":1}'
    assert HttpResponse(599).encode(True).startswith(b"HTTP/1.1 599 \r\n")


@pytest.mark.parametrize("length", [0, 125, 126, 65535, 65536])
def test_frame_headers(length):
    data = frame(b"x" * length)
    assert data[0] == 0x82
    assert len(data) - length == len(header(length))
    if length < 126:
        assert data[1] == length
    elif length < 65536:
        assert data[1] == 126 and int.from_bytes(data[2:4], "big") == length
    else:
        assert data[1] == 127 and int.from_bytes(data[2:10], "big") == length


def test_authenticator():
    auth = Authenticator("ak", SECRET, nonce_memory=2)
    assert "ak" not in repr(auth) and SECRET not in repr(auth)

    def bearer(nonce, **claims):
        payload = {"access_key": "ak", "nonce": nonce, **claims}
        return "Bearer " + jwt.encode(payload, SECRET, algorithm="HS512")

    assert auth.verify(bearer("n1"))["nonce"] == "n1"
    for header_value, name in [
        (None, "jwt_verification"),
        ("Basic abc", "jwt_verification"),
        ("Bearer not-a-jwt", "jwt_verification"),
        (bearer("n1"), "nonce_used"),
        (bearer(""), "jwt_verification"),
        ("Bearer " + jwt.encode({"access_key": "x", "nonce": "n9"}, SECRET), "invalid_access_key"),
    ]:
        with pytest.raises(AuthError) as caught:
            auth.verify(header_value)
        assert caught.value.name == name
        assert SECRET not in str(caught.value)
    query = "market=KRW-BTC&side=bid"
    good = hashlib.sha512(query.encode()).hexdigest()
    assert auth.verify(bearer("n2", query_hash=good, query_hash_alg="SHA512"), query)
    with pytest.raises(AuthError) as caught:
        auth.verify(bearer("n3", query_hash="00"), query)
    assert caught.value.name == "invalid_query_payload"
    # Memory is bounded: the oldest nonce is forgotten once two newer ones were seen.
    auth.verify(bearer("n4"))
    auth.verify(bearer("n1"))


def _account():
    prices = {"ask": Decimal("101"), "bid": Decimal("100")}
    return Account({"KRW-XRP"}, lambda code, side: prices[side], {"KRW": "1000", "XRP": "10"})


def test_account_ask_lifecycle_keeps_exact_balances():
    account = _account()
    order, events = account.place(
        {"market": "KRW-XRP", "side": "ask", "ord_type": "limit", "price": "120", "volume": "2.5"},
        now_ms=1,
    )
    assert [kind for kind, _ in events] == ["myOrder", "myAsset"]
    assert account.balances["XRP"] == [Decimal("7.5"), Decimal("2.5")]
    events = account.fill(order.uuid, 2, Decimal("1"))
    assert [e["state"] for kind, e in events if kind == "myOrder"] == ["trade"]
    events = account.fill(order.uuid, 3)
    assert [e["state"] for kind, e in events if kind == "myOrder"] == ["trade", "done"]
    fee = Decimal("300") * Decimal("0.0005")
    assert account.balances["KRW"] == [Decimal("1000") + Decimal("300") - fee, Decimal(0)]
    assert account.balances["XRP"] == [Decimal("7.5"), Decimal(0)]
    with pytest.raises(OrderError) as caught:
        account.cancel(order.uuid, 4)
    assert caught.value.name == "order_not_open"
    simple = decode(encode_private(events[-1][1], simple=True))
    assert simple["ty"] == "myAsset" and {a["cu"] for a in simple["ast"]} == {"KRW", "XRP"}


def test_account_rejections():
    account = _account()
    base = {"market": "KRW-XRP", "side": "bid", "ord_type": "limit", "price": "100"}
    for params, name in [
        ({**base, "volume": "100"}, "insufficient_funds_bid"),
        ({**base, "volume": "-1"}, "invalid_parameter"),
        ({**base, "volume": "abc"}, "invalid_parameter"),
        ({**base, "market": "KRW-NOPE", "volume": "1"}, "notfoundmarket"),
        ({**base, "side": "ask", "volume": "11"}, "insufficient_funds_ask"),
        (
            {"market": "KRW-XRP", "side": "ask", "ord_type": "market", "price": "1"},
            "invalid_parameter",
        ),
    ]:
        with pytest.raises(OrderError) as caught:
            account.place(params, now_ms=1)
        assert caught.value.name == name
    assert account.balances["KRW"] == [Decimal("1000"), Decimal(0)]
