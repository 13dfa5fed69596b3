"""Burst mode: pre-built frames for the client's subscription, written as fast as it reads."""

import json
import threading

import pytest

from simulator import ControlError, Simulator
from simulator.testing import collect, collect_for, connect, request


@pytest.mark.parametrize("fmt", ["DEFAULT", "SIMPLE_LIST"])
def test_burst_sends_count_frames_of_the_subscription(fmt):
    with Simulator(markets=4, rate=0.0, stamp=True) as sim:
        ws = connect(sim.public_url, timeout=10)
        try:
            ws.send(
                request(
                    {"type": "trade", "codes": ["KRW-BTC", "KRW-ETH"]},
                    {"type": "orderbook", "codes": ["KRW-BTC.5"]},
                    fmt=fmt,
                )
            )
            collect(ws, lambda m: len(m) >= 3)
            result: dict = {}
            caller = threading.Thread(
                target=lambda: result.update(sim.control.burst(20_000)), daemon=True
            )
            caller.start()
            kinds: dict[tuple[str, str], int] = {}
            sids: dict[str, list[int]] = {}
            for _ in range(20_000):
                _, payload = ws.recv_data()
                message = json.loads(payload)
                if fmt == "SIMPLE_LIST":
                    (message,) = message
                    key = (message["ty"], message["cd"])
                else:
                    key = (message["type"], message["code"])
                assert isinstance(message["sim_ns"], int)
                kinds[key] = kinds.get(key, 0) + 1
                sid = message.get("sequential_id", message.get("sid"))
                if sid is not None:
                    sids.setdefault(key[1], []).append(sid)
            caller.join(10)
            assert result["sent"] == 20_000
            assert set(kinds) == {
                ("trade", "KRW-BTC"),
                ("trade", "KRW-ETH"),
                ("orderbook", "KRW-BTC"),
            }
            assert collect_for(ws, 0.3) == []
            # 20 000 frames are more than one pool pass: the copies got fresh ids
            # (sequential_id is unique per market).
            for code_sids in sids.values():
                assert len(code_sids) == len(set(code_sids)) > 8192 // 3
            journal = sim.control.journal(codes=["KRW-BTC"])
            (record,) = journal["connections"]
            generated = journal["generated"]["KRW-BTC"]
            assert set(record["sids"]["KRW-BTC"]) <= set(generated)
        finally:
            ws.close()


def test_burst_rejects_bad_arguments():
    with Simulator(markets=2, rate=0.0) as sim:
        with pytest.raises(ControlError) as caught:
            sim.control.burst(0)
        assert caught.value.status == 400
        with pytest.raises(ControlError) as caught:
            sim.control.burst(10, types=["candle.1s"])
        assert caught.value.status == 400
        assert sim.control.burst(10)["sent"] == 0


def test_trades_after_a_burst_never_reuse_its_ids():
    with Simulator(markets=2, rate=0.0) as sim:
        ws = connect(sim.public_url, timeout=10)
        try:
            ws.send(request({"type": "trade", "codes": ["KRW-BTC"]}))
            collect(ws, lambda m: len(m) >= 1)
            caller = threading.Thread(target=lambda: sim.control.burst(30_000), daemon=True)
            caller.start()
            burst_sids = {json.loads(ws.recv_data()[1])["sequential_id"] for _ in range(30_000)}
            caller.join(10)
            assert len(burst_sids) == 30_000
            sim.control.set_rate(300)
            later = collect(ws, lambda m: len(m) >= 20)
            assert not {m["sequential_id"] for m in later} & burst_sids
            assert min(m["sequential_id"] for m in later) > max(burst_sids)
        finally:
            ws.close()


def test_a_client_leaving_mid_burst_still_gets_the_control_call_answered():
    with Simulator(markets=2, rate=0.0) as sim:
        ws = connect(sim.public_url, timeout=10)
        ws.send(request({"type": "trade", "codes": ["KRW-BTC"]}))
        collect(ws, lambda m: len(m) >= 1)
        result: dict = {}
        caller = threading.Thread(
            target=lambda: result.update(sim.control.burst(5_000_000)), daemon=True
        )
        caller.start()
        for _ in range(1000):
            ws.recv_data()
        ws.sock.close()  # gone without a close frame, the burst still running
        caller.join(30)
        assert not caller.is_alive()
        assert 1000 <= result["sent"] < 5_000_000
