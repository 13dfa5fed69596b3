"""WebSocket conformance of the simulator against SPEC.md, with a plain websocket-client client."""

import asyncio
import base64
import json
import os
import socket
import time
import zlib
from urllib.parse import urlsplit

import pytest
import websocket

from simulator import Simulator
from simulator.testing import collect, collect_for, connect, recv_json, request, type_of

CANDLES = ["1s", "1m", "3m", "5m", "10m", "15m", "30m", "60m", "240m"]


@pytest.fixture(scope="module")
def sim():
    with Simulator(markets=12, rate=400.0, seed=5, connect_limit=None) as simulator:
        yield simulator


def _closed_without_frame(ws, timeout=3.0):
    """True when the server drops the TCP connection; False if it sent a close frame."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ws.settimeout(deadline - time.monotonic())
        try:
            opcode, _ = ws.recv_data(control_frame=True)
        except websocket.WebSocketConnectionClosedException:
            return True
        except ConnectionResetError:
            return True
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            return False
    raise TimeoutError("connection still open")


def _expect_error_then_close(ws, name):
    message = recv_json(ws)
    while "error" not in message:
        message = recv_json(ws)
    assert message == {"error": {"name": name, "message": message["error"]["message"]}}
    assert isinstance(message["error"]["message"], str) and message["error"]["message"]
    ws.settimeout(2.0)
    opcode, payload = ws.recv_data(control_frame=True)
    while opcode != websocket.ABNF.OPCODE_CLOSE:
        opcode, payload = ws.recv_data(control_frame=True)
    assert int.from_bytes(payload[:2], "big") == 1000


def test_snapshot_then_realtime_binary_frames(sim):
    ws = connect(sim.public_url)
    try:
        ws.send(request({"type": "trade", "codes": ["KRW-BTC"]}))
        ws.settimeout(5)
        opcode, payload = ws.recv_data()
        assert opcode == websocket.ABNF.OPCODE_BINARY
        first = json.loads(payload)
        assert (first["type"], first["code"], first["stream_type"]) == (
            "trade",
            "KRW-BTC",
            "SNAPSHOT",
        )
        later = collect(ws, lambda m: len(m) >= 3)
        assert {m["stream_type"] for m in later} == {"REALTIME"}
        assert "sim_ns" not in first
    finally:
        ws.close()


def test_only_snapshot_and_only_realtime(sim):
    ws = connect(sim.public_url)
    try:
        ws.send(
            request(
                {"type": "ticker", "codes": ["KRW-BTC", "KRW-ETH"], "is_only_snapshot": True},
                {"type": "trade", "codes": ["KRW-BTC"], "isOnlyRealtime": True},
            )
        )
        messages = collect_for(ws, 1.0)
        tickers = [m for m in messages if m["type"] == "ticker"]
        trades = [m for m in messages if m["type"] == "trade"]
        assert sorted(m["code"] for m in tickers) == ["KRW-BTC", "KRW-ETH"]
        assert {m["stream_type"] for m in tickers} == {"SNAPSHOT"}
        assert trades and {m["stream_type"] for m in trades} == {"REALTIME"}
    finally:
        ws.close()


def test_new_request_replaces_whole_subscription(sim):
    ws = connect(sim.public_url)
    try:
        ws.send(request({"type": "trade", "codes": ["KRW-BTC", "KRW-ETH"]}))
        collect(ws, lambda m: len(m) >= 3)
        ws.send(request({"type": "orderbook", "codes": ["KRW-XRP"]}, ticket="second"))
        before = collect(ws, lambda m: bool(m) and m[-1]["type"] == "orderbook")
        assert before[-1]["stream_type"] == "SNAPSHOT"
        after = collect_for(ws, 1.0)
        assert after, "the new subscription must stream"
        assert {(m["type"], m["code"]) for m in after} == {("orderbook", "KRW-XRP")}
    finally:
        ws.close()


def test_simple_and_list_formats(sim):
    ws = connect(sim.public_url)
    try:
        ws.send(request({"type": "ticker", "codes": ["KRW-BTC"]}, fmt="SIMPLE"))
        message = recv_json(ws)
        assert message["ty"] == "ticker" and message["cd"] == "KRW-BTC" and "type" not in message
        ws.send(request({"type": "trade", "codes": ["KRW-BTC"]}, fmt="SIMPLE_LIST", ticket="l"))
        message = collect(ws, lambda m: bool(m) and isinstance(m[-1], list))[-1]
        assert message[0]["ty"] == "trade" and message[0]["st"] == "SNAPSHOT"
        ws.send(request({"type": "trade", "codes": ["KRW-ETH"]}, fmt="JSON_LIST", ticket="j"))
        message = collect(ws, lambda m: bool(m) and isinstance(m[-1], list) and "type" in m[-1][0])[
            -1
        ]
        assert message[0]["type"] == "trade" and message[0]["code"] == "KRW-ETH"
    finally:
        ws.close()


def test_orderbook_depth_and_level(sim):
    ws = connect(sim.public_url)
    try:
        ws.send(
            request(
                {"type": "orderbook", "codes": ["KRW-BTC.5", "KRW-ETH.7"], "is_only_snapshot": True}
            )
        )
        books = {m["code"]: m for m in collect(ws, lambda m: len(m) >= 2)}
        assert len(books["KRW-BTC"]["orderbook_units"]) == 5
        assert len(books["KRW-ETH"]["orderbook_units"]) == 30
        assert books["KRW-BTC"]["level"] == 0
        ws.send(
            request(
                {"type": "orderbook", "codes": ["KRW-BTC.15"], "level": 10000},
                {"type": "orderbook", "codes": ["KRW-ETH"], "level": 7},
                {"type": "orderbook", "codes": ["BTC-ETH"], "level": 10000},
                ticket="lv",
            )
        )
        messages = collect_for(ws, 1.0)
        assert messages
        assert {m["code"] for m in messages} == {"KRW-BTC"}
        for message in messages:
            assert message["level"] == 10000
            assert len(message["orderbook_units"]) == 15
            assert all(u["ask_price"] % 10000 == 0 for u in message["orderbook_units"])
    finally:
        ws.close()


def test_every_candle_unit(sim):
    ws = connect(sim.public_url)
    try:
        ws.send(request(*({"type": f"candle.{unit}", "codes": ["KRW-BTC"]} for unit in CANDLES)))
        messages = collect(ws, lambda m: {x["type"] for x in m} >= {f"candle.{u}" for u in CANDLES})
        snapshots = [m for m in messages if m["stream_type"] == "SNAPSHOT"]
        assert sorted(m["type"] for m in snapshots) == sorted(f"candle.{u}" for u in CANDLES)
        for candle in snapshots:
            assert candle["low_price"] <= candle["trade_price"] <= candle["high_price"]
        realtime = collect(ws, lambda m: any(x["stream_type"] == "REALTIME" for x in m))
        assert realtime[-1]["code"] == "KRW-BTC"
    finally:
        ws.close()


def test_unknown_and_lowercase_codes_are_silently_ignored(sim):
    ws = connect(sim.public_url)
    try:
        ws.send(request({"type": "ticker", "codes": ["krw-btc", "KRW-NOPE"]}))
        assert collect_for(ws, 0.7) == []
        ws.send("PING")
        assert recv_json(ws) == {"status": "UP"}
    finally:
        ws.close()


@pytest.mark.parametrize(
    ("message", "name"),
    [
        ("hello", "WRONG_FORMAT"),
        ('{"ticket":"x","type":"ticker"}', "WRONG_FORMAT"),
        ('[{"type":"ticker","codes":["KRW-BTC"]}]', "NO_TICKET"),
        ('[{"ticket":"x"},{"codes":["KRW-BTC"]}]', "NO_TYPE"),
        ('[{"ticket":"x"},{"type":"ticker"}]', "NO_CODES"),
        ('[{"ticket":"x"},{"type":"nope","codes":["KRW-BTC"]}]', "INVALID_PARAM"),
        ('[{"ticket":"x"},{"type":"myOrder"}]', "INVALID_AUTH"),
    ],
)
def test_errors_then_close_1000(sim, message, name):
    ws = connect(sim.public_url)
    try:
        ws.send(message)
        _expect_error_then_close(ws, name)
    finally:
        ws.close()


def test_text_ping_status_cycle():
    with Simulator(markets=3, rate=0.0, status_interval=0.3) as sim:
        ws = connect(sim.public_url)
        try:
            ws.send("PING")
            assert recv_json(ws) == {"status": "UP"}
            started = time.monotonic()
            assert recv_json(ws) == {"status": "UP"}
            assert recv_json(ws) == {"status": "UP"}
            assert time.monotonic() - started >= 0.4
        finally:
            ws.close()


def test_idle_connection_dropped_without_close_frame_and_ping_keeps_it():
    with Simulator(markets=3, rate=0.0, idle_timeout=0.6) as sim:
        idle = connect(sim.public_url)
        pinged = connect(sim.public_url)
        try:
            deadline = time.monotonic() + 1.5
            while time.monotonic() < deadline:
                pinged.ping()
                time.sleep(0.1)
            assert _closed_without_frame(idle)
            pinged.ping("still here")
            pinged.settimeout(2)
            pongs = []
            while b"still here" not in pongs:
                opcode, payload = pinged.recv_data(control_frame=True)
                assert opcode == websocket.ABNF.OPCODE_PONG
                pongs.append(payload)
            reasons = [c["reason"] for c in sim.control.journal(sids=False)["connections"]]
            assert reasons.count("idle_timeout") == 1
        finally:
            idle.close()
            pinged.close()


def test_connection_rate_limit_answers_429_at_handshake():
    # 5 per 2 s rather than Upbit's 5 per second, so a slow machine still opens six
    # connections inside one window.
    with Simulator(markets=3, rate=0.0, connect_limit=(5, 2.0)) as sim:
        sockets = []
        try:
            with pytest.raises(websocket.WebSocketBadStatusException) as caught:
                for _ in range(6):
                    sockets.append(connect(sim.public_url))
            assert caught.value.status_code == 429
            assert len(sockets) == 5
            rejected = sim.control.journal(sids=False)["rejected"]
            assert [r["kind"] for r in rejected] == ["connect_rate"]
            time.sleep(2.05)
            sockets.append(connect(sim.public_url))
        finally:
            for ws in sockets:
                ws.close()


def test_request_rate_limit_error_and_journal():
    with Simulator(markets=3, rate=0.0) as sim:
        polite = connect(sim.public_url)
        greedy = connect(sim.public_url)
        try:
            for i in range(5):
                polite.send(request({"type": "ticker", "codes": ["KRW-BTC"]}, ticket=f"p{i}"))
                time.sleep(0.22)
            for i in range(6):
                greedy.send(request({"type": "ticker", "codes": ["KRW-BTC"]}, ticket=f"g{i}"))
            _expect_error_then_close(greedy, "TOO_MANY_REQ")
            journal = {c["id"]: c for c in sim.control.journal(sids=False)["connections"]}
            first, second = sorted(journal)
            assert journal[first]["violations"] == [] and len(journal[first]["requests"]) == 5
            assert [v["kind"] for v in journal[second]["violations"]] == ["request_rate"]
            assert journal[second]["errors"][0]["name"] == "TOO_MANY_REQ"
            assert journal[second]["origin"] is False
        finally:
            polite.close()
            greedy.close()


def test_origin_header_penalty():
    with Simulator(markets=3, rate=0.0) as sim:
        ws = connect(sim.public_url, origin=True)
        try:
            ws.send(request({"type": "ticker", "codes": ["KRW-BTC"]}))
            assert recv_json(ws)["type"] == "ticker"
            ws.send(request({"type": "ticker", "codes": ["KRW-ETH"]}, ticket="2"))
            _expect_error_then_close(ws, "TOO_MANY_REQ")
            with pytest.raises(websocket.WebSocketBadStatusException) as caught:
                connect(sim.public_url, origin=True).close()
            assert caught.value.status_code == 429
            journal = sim.control.journal(sids=False)
            (record,) = journal["connections"]
            assert record["origin"] is True
            assert [v["kind"] for v in record["violations"]] == ["origin_request_rate"]
            assert [r["kind"] for r in journal["rejected"]] == ["origin_connect_rate"]
        finally:
            ws.close()


def test_journal_proves_no_trade_lost(sim):
    ws = connect(sim.public_url)
    try:
        ws.send(request({"type": "trade", "codes": ["KRW-BTC", "KRW-ETH"]}, ticket="sids"))
        messages = collect_for(ws, 1.5)
    finally:
        ws.close()
    received: dict[str, list[int]] = {}
    for message in messages:
        received.setdefault(message["code"], []).append(message["sequential_id"])
    time.sleep(0.1)
    journal = sim.control.journal(codes=["KRW-BTC", "KRW-ETH"])
    (record,) = [c for c in journal["connections"] if c["requests"][0].get("ticket") == "sids"]
    assert record["requests"][0]["subscription"] == [
        {"type": "trade", "codes": ["KRW-BTC", "KRW-ETH"]}
    ]
    for code, sids in received.items():
        # Frames written after the client stopped reading are journaled too.
        assert record["sids"][code][: len(sids)] == sids
        generated = journal["generated"][code]
        window = generated[generated.index(sids[0]) : generated.index(sids[-1]) + 1]
        assert window == sids
    assert record["reason"] == "closed"


def test_stamp_is_opt_in_trailing_field():
    with Simulator(markets=3, rate=300.0, stamp=True) as sim:
        ws = connect(sim.public_url)
        try:
            ws.send(request({"type": "trade", "codes": ["KRW-BTC"]}))
            ws.settimeout(5)
            _, payload = ws.recv_data()
            received_ns = time.time_ns()
            message = json.loads(payload)
            assert list(message)[-1] == "sim_ns"
            assert 0 <= received_ns - message["sim_ns"] < 5_000_000_000
            ws.send("PING")
            assert collect(ws, lambda m: bool(m) and "status" in m[-1])[-1] == {"status": "UP"}
        finally:
            ws.close()
        # Several frames per write, in the list format too: each is valid JSON whose
        # stamp was written after it was framed, the same for every frame of a write.
        listed = connect(sim.public_url)
        try:
            codes = ["KRW-BTC", "KRW-ETH", "KRW-XRP"]
            before_ns = time.time_ns()
            listed.send(
                request(
                    {"type": "ticker", "codes": codes},
                    {"type": "trade", "codes": codes},
                    fmt="JSON_LIST",
                )
            )
            items = collect_for(listed, 1.0)
            after_ns = time.time_ns()
        finally:
            listed.close()
        elements = [element for item in items for element in item]
        assert len(elements) > 20
        assert {e["stream_type"] for e in elements} == {"SNAPSHOT", "REALTIME"}
        for element in elements:
            assert list(element)[-1] == "sim_ns"
            assert type(element["sim_ns"]) is int
            assert before_ns <= element["sim_ns"] <= after_ns


def test_unknown_path_is_404(sim):
    with pytest.raises(websocket.WebSocketBadStatusException) as caught:
        connect(sim.public_url.replace("/websocket/v1", "/nope"))
    assert caught.value.status_code == 404


def test_type_helper_reads_both_formats():
    assert type_of({"type": "trade"}) == type_of({"ty": "trade"}) == "trade"


def test_permessage_deflate_when_the_client_offers_it(sim):
    """Frames are compressed (RSV1, context takeover) only for a client that offered it."""
    parts = urlsplit(sim.public_url)
    with socket.create_connection((parts.hostname, parts.port), timeout=5) as raw:
        key = base64.b64encode(os.urandom(16)).decode()
        raw.sendall(
            (
                f"GET {parts.path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n"
                "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
            ).encode()
        )
        data = b""
        while b"\r\n\r\n" not in data:
            data += raw.recv(4096)
        head, data = data.split(b"\r\n\r\n", 1)
        assert b"permessage-deflate" in head.lower()
        assert b"\r\nremaining-req: group=websocket; min=300; sec=" in head.lower()
        payload = json.dumps([{"ticket": "z"}, {"type": "trade", "codes": ["KRW-BTC"]}]).encode()
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        raw.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + masked)
        inflater = zlib.decompressobj(-15)
        messages = []
        while len(messages) < 3:
            while len(data) < 4:
                data += raw.recv(65536)
            first, length = data[0], data[1] & 0x7F
            start = 2
            if length == 126:
                length, start = int.from_bytes(data[2:4], "big"), 4
            while len(data) < start + length:
                data += raw.recv(65536)
            body, data = data[start : start + length], data[start + length :]
            assert first == 0xC2  # FIN, RSV1 (compressed), binary
            messages.append(json.loads(inflater.decompress(body + b"\x00\x00\xff\xff")))
    assert [m["type"] for m in messages] == ["trade"] * 3
    assert messages[0]["stream_type"] == "SNAPSHOT"
    records = sim.control.journal(sids=False)["connections"]
    assert any(r["compression"] for r in records)
    assert not all(r["compression"] for r in records)


def test_stopping_mid_handshake_leaves_no_task_pending():
    # A task destroyed pending runs its clean-up later, inside other code's collection.
    with Simulator(markets=2, rate=0) as sim:
        parts = urlsplit(sim.urls["public_url"])
        raw = socket.create_connection((parts.hostname, parts.port), timeout=5)
        raw.sendall(b"GET /websocket/v1 HTTP/1.1\r\nHost: x\r\n")  # headers never end
        time.sleep(0.2)
    raw.close()
    loop = sim._loop
    assert loop is not None and loop.is_closed()
    assert asyncio.all_tasks(loop) == set()
