"""Fault injection through the control API, observed with plain websocket-client clients."""

import itertools
import json
import socket
import time
import urllib.error
import urllib.request

import pytest
import websocket

from simulator import ControlError, Simulator
from simulator.testing import collect, collect_for, connect, recv_json, request


def subscribed(sim, codes=("KRW-BTC",), kind="trade"):
    ws = connect(sim.public_url)
    ws.send(request({"type": kind, "codes": list(codes)}))
    collect(ws, lambda m: len(m) >= 1)
    return ws


def dropped(ws, timeout=3.0):
    """True when the TCP connection ends without a close frame."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ws.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            opcode, _ = ws.recv_data(control_frame=True)
        except (websocket.WebSocketConnectionClosedException, ConnectionResetError):
            return True
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            return False
    raise TimeoutError("still connected")


@pytest.fixture
def sim():
    with Simulator(markets=5, rate=300.0, seed=2, connect_limit=None) as s:
        yield s


def test_drop_all_aborts_without_close_frame(sim):
    first, second = subscribed(sim), subscribed(sim)
    try:
        assert sim.control.drop_all() == 2
        assert dropped(first) and dropped(second)
        reasons = {c["reason"] for c in sim.control.journal(sids=False)["connections"]}
        assert reasons == {"fault_drop"}
    finally:
        first.close()
        second.close()


def test_stall_keeps_tcp_open_but_silent(sim):
    ws = subscribed(sim)
    try:
        (conn_id,) = sim.control.status()["connections"]
        assert sim.control.stall(1.5, connection=conn_id) == [conn_id]
        collect_for(ws, 0.3)  # frames already on the way
        ws.ping("during stall")
        ws.settimeout(0.5)
        with pytest.raises(websocket.WebSocketTimeoutException):
            ws.recv_data(control_frame=True)
        ws.settimeout(3)
        opcode, payload = ws.recv_data(control_frame=True)
        while opcode != websocket.ABNF.OPCODE_PONG:
            opcode, payload = ws.recv_data(control_frame=True)
        assert payload == b"during stall"
        resumed = collect(ws, lambda m: len(m) >= 3, timeout=3)
        assert all(m["type"] == "trade" for m in resumed)
    finally:
        ws.close()


@pytest.mark.parametrize("kind", ["garbage", "truncated_json"])
def test_malformed_frames(sim, kind):
    ws = subscribed(sim)
    try:
        sim.control.malformed(kind)
        deadline = time.monotonic() + 3
        bad = None
        while bad is None and time.monotonic() < deadline:
            _, payload = ws.recv_data()
            try:
                json.loads(payload)
            except ValueError:
                bad = payload
        assert bad is not None
    finally:
        ws.close()


def test_truncated_frame_then_connection_lost(sim):
    ws = subscribed(sim)
    try:
        sim.control.malformed("truncated")
        with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionResetError)):
            while True:
                ws.recv_data()
    finally:
        ws.close()


def test_restart_takes_listeners_down_then_back(sim):
    ws = subscribed(sim)
    try:
        sim.control.restart(0.6)
        assert dropped(ws)
        with pytest.raises((ConnectionError, websocket.WebSocketException)):
            connect(sim.public_url, timeout=1)
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(f"{sim.rest_url}/v1/market/all", timeout=1)
        assert sim.control.status()["listening"] is False
        deadline = time.monotonic() + 5
        while not sim.control.status()["listening"]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        again = subscribed(sim)
        again.close()
    finally:
        ws.close()


def test_forced_rate_limit_errors(sim):
    ws = connect(sim.public_url)
    try:
        sim.control.ratelimit_errors(1, rest_count=1)
        ws.send(request({"type": "trade", "codes": ["KRW-BTC"]}))
        assert recv_json(ws)["error"]["name"] == "TOO_MANY_REQ"
        url = f"{sim.rest_url}/v1/market/all"
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(url, timeout=2)
        assert caught.value.code == 429
        with urllib.request.urlopen(url, timeout=2) as response:
            assert response.status == 200
        (record,) = sim.control.journal(sids=False)["connections"]
        assert [v["kind"] for v in record["violations"]] == ["injected_rate_limit"]
    finally:
        ws.close()


def test_duplicate_and_reordered_trades(sim):
    ws = subscribed(sim, codes=["KRW-ETH"])
    try:
        sim.control.duplicate_trades(3)
        sids = [m["sequential_id"] for m in collect(ws, lambda m: len(m) >= 20)]
        assert len(sids) - len(set(sids)) == 3
        sim.control.reorder_trades(3)
        sids = [m["sequential_id"] for m in collect(ws, lambda m: len(m) >= 20)]
        assert sum(1 for a, b in itertools.pairwise(sids) if b < a) == 3
        assert len(sids) == len(set(sids))
        (record,) = sim.control.journal(codes=["KRW-ETH"])["connections"]
        generated = sim.control.journal(codes=["KRW-ETH"])["generated"]["KRW-ETH"]
        assert set(record["sids"]["KRW-ETH"]) <= set(generated)
    finally:
        ws.close()


def test_slow_down_and_set_rate(sim):
    ws = subscribed(sim, codes=sim.markets)
    try:
        normal = len(collect_for(ws, 0.5))
        sim.control.slow(factor=50.0)
        collect_for(ws, 0.1)
        slowed = len(collect_for(ws, 0.5))
        assert slowed * 5 < normal
        sim.control.slow()
        sim.control.set_rate(0)
        collect_for(ws, 0.1)
        assert collect_for(ws, 0.4) == []
        sim.control.set_rate(300)
        assert collect(ws, lambda m: len(m) >= 5)
        with pytest.raises(ControlError) as caught:
            sim.control.slow(factor=0.5)
        assert caught.value.status == 400
    finally:
        ws.close()


def test_control_api_rejects_unknown_actions(sim):
    with pytest.raises(ControlError) as caught:
        sim.control.post("explode")
    assert caught.value.status == 404
    with pytest.raises(ControlError) as caught:
        sim.control.stall(1.0, connection=999)
    assert caught.value.status == 404


def test_journal_reset_forgets_history(sim):
    ws = subscribed(sim)
    ws.close()
    time.sleep(0.1)
    assert sim.control.journal(sids=False)["connections"]
    sim.control.reset_journal()
    assert sim.control.journal(sids=False)["connections"] == []


def test_raw_socket_sees_plain_http_errors(sim):
    host, port = sim.public_url.split("//")[1].split("/")[0].split(":")
    with socket.create_connection((host, int(port)), timeout=3) as raw:
        raw.sendall(b"GET /websocket/v1 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert raw.recv(100).startswith(b"HTTP/1.1 426")


def test_shutdown_closes_everything_promptly():
    sim = Simulator(markets=3, rate=200.0).start()
    ws = subscribed(sim)
    try:
        sim.stop()  # raises TimeoutError if the loop thread does not end
        assert dropped(ws)
        with pytest.raises((ConnectionError, websocket.WebSocketException)):
            connect(sim.public_url, timeout=1)
    finally:
        ws.close()
        sim.stop()


def test_injected_error_and_raw_frames(sim):
    ws = subscribed(sim)
    try:
        sim.control.inject([b'{"hello":1}', b"PONG?"], text=True)
        seen = []
        while len(seen) < 2:
            opcode, payload = ws.recv_data()
            if opcode == websocket.ABNF.OPCODE_TEXT:
                seen.append(payload)
        assert seen == [b'{"hello":1}', b"PONG?"]
        (conn_id,) = sim.control.error("INVALID_PARAM")
        message = recv_json(ws)
        while "error" not in message:
            message = recv_json(ws)
        assert message["error"]["name"] == "INVALID_PARAM"
        assert not dropped(ws)  # a close frame, as after a real error
        (record,) = sim.control.journal(sids=False, connection=conn_id)["connections"]
        assert [v["kind"] for v in record["violations"]] == ["injected_error"]
        with pytest.raises(ControlError) as caught:
            sim.control.post("inject", frames=["not base64!"])
        assert caught.value.status == 400
    finally:
        ws.close()
