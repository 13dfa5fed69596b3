"""Feed process + worker processes + simulator, end to end."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from simulator import Simulator
from tests.conftest import wait_until

BASE = {"subscriptions": [{"type": "ticker", "codes": ["KRW-BTC"]}]}


def start_worker(harness, target: str, symbols: str, record: Path, *extra: str):
    env = harness.process_env()
    env["RECORD_PATH"] = str(record)
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "workers",
            "run",
            f"tests.e2e_workers:{target}",
            "--symbols",
            symbols,
            "--control",
            harness.feed.control.endpoint,
            *extra,
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def stop_worker(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def recorded(path: Path) -> tuple[dict[str, list[int]], int]:
    trades: dict[str, list[int]] = {}
    gaps = 0
    if not path.exists():
        return trades, gaps
    for line in path.read_text().splitlines():
        first, second, *_ = line.split()
        if first == "GAP":
            gaps += 1
        else:
            trades.setdefault(first, []).append(int(second))
    return trades, gaps


def last_trade_codes(sim: Simulator) -> list[str] | None:
    live = [c for c in sim.control.journal(sids=False)["connections"] if not c["reason"]]
    requests = [r for c in live for r in c["requests"]]
    if not requests:
        return None
    subs = max(requests, key=lambda r: r["t"])["subscription"]
    return sorted(c for s in subs if s["type"] == "trade" for c in s["codes"])


def assert_matches_exchange(sim: Simulator, trades: dict[str, list[int]], codes) -> None:
    generated = sim.control.journal(codes=list(codes))["generated"]
    for code in codes:
        got = trades.get(code)
        assert got, f"no trades for {code}"
        truth = generated[code]
        start = truth.index(got[0])
        assert got == truth[start : start + len(got)], code
        assert len(got) == len(truth) - start, f"{code}: trades missing at the end"


def test_a_worker_gets_every_trade_in_order(feed_harness, tmp_path):
    with Simulator(markets=5, rate=500.0, seed=21) as sim:
        harness = feed_harness(sim, BASE)
        harness.start()
        record = tmp_path / "trades.txt"
        worker = start_worker(harness, "TradeRecorder", "KRW-ETH,KRW-XRP", record)
        try:
            wait_until(lambda: last_trade_codes(sim) == ["KRW-ETH", "KRW-XRP"], 15)
            wait_until(lambda: sum(map(len, recorded(record)[0].values())) > 200, 15)
            sim.control.set_rate(0)
            time.sleep(1.0)
        finally:
            assert stop_worker(worker) == 0, worker.stderr.read().decode()[-2000:]
        trades, gaps = recorded(record)
        assert gaps == 0
        assert set(trades) == {"KRW-ETH", "KRW-XRP"}
        assert_matches_exchange(sim, trades, ["KRW-ETH", "KRW-XRP"])


def test_a_slow_worker_loses_only_its_own_messages_and_they_are_counted(feed_harness, tmp_path):
    with Simulator(markets=3, rate=3000.0, seed=22) as sim:
        harness = feed_harness(sim, {**BASE, "zmq": {"sndhwm": 1000}})
        feed = harness.start()
        fast_record, slow_record = tmp_path / "fast.txt", tmp_path / "slow.txt"
        fast = start_worker(harness, "TradeRecorder", "KRW-BTC,KRW-ETH", fast_record)
        slow = start_worker(
            harness, "SlowTradeRecorder", "KRW-BTC,KRW-ETH", slow_record, "--lease", "2"
        )
        try:
            wait_until(lambda: last_trade_codes(sim) == ["KRW-BTC", "KRW-ETH"], 15)
            wait_until(lambda: recorded(slow_record)[1] > 0, 40)
            wait_until(lambda: feed.workers.totals().get("gaps", 0) > 0, 10)
            sim.control.set_rate(0)
            time.sleep(1.0)
        finally:
            assert stop_worker(fast) == 0
            assert stop_worker(slow) == 0
        trades, gaps = recorded(fast_record)
        assert gaps == 0
        assert_matches_exchange(sim, trades, ["KRW-BTC", "KRW-ETH"])
        slow_trades, slow_gaps = recorded(slow_record)
        assert slow_gaps > 0
        assert sum(map(len, slow_trades.values())) < sum(map(len, trades.values()))


def test_a_killed_worker_releases_only_what_no_one_else_wants(feed_harness, tmp_path, collectors):
    with Simulator(markets=5, rate=200.0, seed=23) as sim:
        harness = feed_harness(sim, BASE)
        feed = harness.start()
        bus = collectors(feed.publisher.endpoint, (b"sys.",))
        keep = start_worker(harness, "TradeRecorder", "KRW-ETH", tmp_path / "keep.txt")
        doomed = start_worker(
            harness, "TradeRecorder", "KRW-ETH,KRW-XRP", tmp_path / "doomed.txt", "--lease", "1"
        )
        try:
            wait_until(lambda: last_trade_codes(sim) == ["KRW-ETH", "KRW-XRP"], 15)
            doomed.kill()
            doomed.wait(5)
            wait_until(lambda: bus.topics("sys.worker_lease_expired"), 10)
            wait_until(lambda: last_trade_codes(sim) == ["KRW-ETH"], 10)
            before = len(recorded(tmp_path / "keep.txt")[0].get("KRW-ETH", []))
            wait_until(
                lambda: len(recorded(tmp_path / "keep.txt")[0].get("KRW-ETH", [])) > before, 10
            )
        finally:
            assert stop_worker(keep) == 0
        wait_until(lambda: last_trade_codes(sim) is None or last_trade_codes(sim) == [], 10)


def test_two_workers_with_overlapping_codes_share_one_subscription(feed_harness, tmp_path):
    with Simulator(markets=5, rate=400.0, seed=24) as sim:
        harness = feed_harness(sim, BASE)
        harness.start()
        first = start_worker(harness, "TradeRecorder", "KRW-BTC,KRW-ETH", tmp_path / "a.txt")
        second = start_worker(harness, "TradeRecorder", "KRW-ETH,KRW-XRP", tmp_path / "b.txt")
        try:
            wait_until(lambda: last_trade_codes(sim) == ["KRW-BTC", "KRW-ETH", "KRW-XRP"], 15)
            wait_until(
                lambda: all(
                    len(recorded(tmp_path / n)[0].get("KRW-ETH", [])) > 30
                    for n in ("a.txt", "b.txt")
                ),
                15,
            )
            sim.control.set_rate(0)
            time.sleep(1.0)
        finally:
            assert stop_worker(first) == 0
            assert stop_worker(second) == 0
        live = [c for c in sim.control.journal(sids=False)["connections"] if not c["reason"]]
        assert len(live) == 1
        a, _ = recorded(tmp_path / "a.txt")
        b, _ = recorded(tmp_path / "b.txt")
        assert set(a) == {"KRW-BTC", "KRW-ETH"} and set(b) == {"KRW-ETH", "KRW-XRP"}
        assert_matches_exchange(sim, a, ["KRW-BTC", "KRW-ETH"])
        assert_matches_exchange(sim, b, ["KRW-ETH", "KRW-XRP"])
