"""The feed process as users start it: private feed, wrong keys, signals, bad config."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

import shm
from feedhandler.control import ControlClient
from simulator import Simulator
from tests.conftest import SHM_DIR, output_or_kill, wait_until

ACCESS = "feed-test-access-key-0123456789"
SECRET = "feed-test-secret-key-abcdefghijklmnopqrstuvwxyz"
JWT_SHAPE = re.compile(rb"eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.")


def start_feed(harness, extra_env: dict[str, str]) -> subprocess.Popen:
    env = harness.process_env()
    env.update(extra_env)
    return subprocess.Popen(
        [sys.executable, "-m", "feedhandler", "run", "--config", str(harness.config_path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def stop_feed(proc: subprocess.Popen, timeout: float = 2.0) -> tuple[int, bytes, float]:
    """SIGTERM, then the exit code, all output and the seconds it took to exit."""
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out = output_or_kill(proc, timeout + 3)
    return proc.returncode, out, time.monotonic() - started


def test_private_feed_publishes_orders_and_assets_with_exact_decimals(feed_harness, collectors):
    with Simulator(markets=3, rate=50.0, access_key=ACCESS, secret_key=SECRET) as sim:
        harness = feed_harness(
            sim,
            {
                "subscriptions": [
                    {"type": "ticker", "codes": ["KRW-BTC"]},
                    {"type": "myOrder", "codes": []},
                    {"type": "myAsset"},
                ]
            },
        )
        feed = harness.start({"UPBIT_ACCESS_KEY": ACCESS, "UPBIT_SECRET_KEY": SECRET})
        bus = collectors(feed.publisher.endpoint, (b"myOrder.", b"myAsset"))
        wait_until(
            lambda: (
                "private" in feed.connections
                and feed.connections["private"].health.snapshot()["connected"]
            ),
            10,
        )
        wait_until(
            lambda: any(
                c["authorization"] and c["requests"]
                for c in sim.control.journal(sids=False)["connections"]
            ),
            10,
        )
        order = sim.control.place_order(
            market="KRW-BTC", side="bid", ord_type="limit", price="100000000", volume="0.01"
        )
        sim.control.fill_order(order["uuid"], volume="0.004")
        wait_until(
            lambda: len(bus.topics("myOrder.KRW-BTC")) >= 2 and len(bus.topics("myAsset")) >= 2, 10
        )
        orders = [m["data"] for _, m in bus.topics("myOrder.KRW-BTC")]
        assert [o["state"] for o in orders[:2]] == ["wait", "trade"]
        assert orders[0]["uuid"] == order["uuid"]
        assert orders[0]["price"] == "100000000"
        assert orders[1]["volume"] == "0.004"
        asset = bus.topics("myAsset")[0][1]["data"]["assets"][0]
        assert asset["currency"] == "KRW"
        # 27 significant digits: survives only as a decimal string, never as a float
        assert asset["balance"] == "98999500.37231066771348207123"
        assert feed.connections["private"].status()["failed"] is None


def test_wrong_keys_fail_clearly_without_leaking_them(feed_harness):
    with Simulator(markets=2, rate=20.0, access_key=ACCESS, secret_key=SECRET) as sim:
        harness = feed_harness(
            sim,
            {
                "subscriptions": [
                    {"type": "ticker", "codes": ["KRW-BTC"]},
                    {"type": "myAsset"},
                ]
            },
        )
        wrong_secret = "wrong-secret-that-must-never-be-printed-123"
        proc = start_feed(harness, {"UPBIT_ACCESS_KEY": ACCESS, "UPBIT_SECRET_KEY": wrong_secret})
        wait_until(
            lambda: any(
                c["path"].endswith("/private") and c["reason"]
                for c in sim.control.journal(sids=False)["connections"]
            ),
            15,
        )
        time.sleep(0.5)
        code, out, _ = stop_feed(proc)
    assert code == 0, out.decode(errors="replace")[-2000:]
    assert b"authentication rejected" in out
    for secret in (ACCESS.encode(), wrong_secret.encode()):
        assert secret not in out
    assert not JWT_SHAPE.search(out)


def test_sigterm_stops_within_two_seconds_and_unlinks_shm(feed_harness):
    with Simulator(markets=4, rate=500.0) as sim:
        harness = feed_harness(
            sim,
            {
                "subscriptions": [
                    {"type": "ticker", "codes": "all"},
                    {"type": "orderbook", "codes": "all"},
                    {"type": "trade", "codes": "all"},
                ]
            },
        )
        proc = start_feed(harness, {})
        segments = [SHM_DIR / f"{harness.prefix}.{kind}" for kind in ("ticker", "orderbook")]
        wait_until(lambda: all(p.exists() for p in segments), 15)
        wait_until(
            lambda: any(c["requests"] for c in sim.control.journal(sids=False)["connections"]), 10
        )
        time.sleep(0.5)
        with ControlClient(harness.settings().control_endpoint(), timeout=5.0) as client:
            gc_stats = client.call("metrics")["gc"]
        code, out, took = stop_feed(proc)
    assert code == 0, out.decode(errors="replace")[-2000:]
    assert took < 2.0, took
    assert not any(p.exists() for p in segments)
    assert b"event=feed_stopped" in out
    # The process froze its start-up heap, so full collections stay short.
    assert b"event=gc_frozen" in out
    assert gc_stats["frozen"] > 10_000
    assert [g["generation"] for g in gc_stats["generations"]] == [0, 1, 2]


def test_busy_poll_keeps_the_connection_on_the_cpu_and_still_stops_in_time(feed_harness):
    """Also: ZeroMQ's I/O thread runs as SCHED_BATCH (zmq.io_thread_sched_batch)."""
    with Simulator(markets=2, rate=20.0) as sim:
        harness = feed_harness(sim, {"subscriptions": [{"type": "ticker", "codes": "all"}]})
        proc = start_feed(harness, {"UPFEED__CONNECTION__BUSY_POLL_US": "1000000"})
        try:
            segment = SHM_DIR / f"{harness.prefix}.ticker"
            wait_until(segment.exists, 15)
            reader = shm.attach(harness.prefix, "ticker", timeout=5)
            try:
                wait_until(lambda: reader.head >= 3, 10)
            finally:
                reader.close()
            # A quiet market (20 tickers/s): a blocking feed would sleep almost all the
            # time; a busy-polling one stays on the CPU.
            process = psutil.Process(proc.pid)
            before = sum(process.cpu_times()[:2])
            time.sleep(1.0)
            busy = sum(process.cpu_times()[:2]) - before
            # The bus's I/O thread never preempts the connection thread (zmq section).
            io_policies = [
                os.sched_getscheduler(t.id)
                for t in process.threads()
                if Path(f"/proc/{proc.pid}/task/{t.id}/comm").read_text().startswith("ZMQbg/IO")
            ]
        finally:
            code, out, took = stop_feed(proc)
    assert busy > 0.4, busy
    assert io_policies == [os.SCHED_BATCH]
    assert code == 0, out.decode(errors="replace")[-2000:]
    assert took < 2.0, took


def test_a_feed_confined_to_one_core_runs_its_zmq_io_thread_as_sched_idle(feed_harness):
    with Simulator(markets=2, rate=20.0) as sim:
        harness = feed_harness(sim, {"subscriptions": [{"type": "ticker", "codes": "all"}]})
        proc = start_feed(harness, {})
        try:
            wait_until((SHM_DIR / f"{harness.prefix}.ticker").exists, 15)
            endpoint = harness.settings().control_endpoint()

            def io_policy() -> str | None:
                with ControlClient(endpoint, timeout=5.0) as client:
                    return client.call("metrics")["zmq_io_thread_policy"]

            # Checked at start and on every housekeeping tick (0.5 s).
            wide = "batch" if len(os.sched_getaffinity(0)) > 1 else "idle"
            wait_until(lambda: io_policy() == wide, 3)
            # As taskset -a -p -c N does: every thread of the feed on one CPU.
            cpu = max(os.sched_getaffinity(0))
            for task in Path(f"/proc/{proc.pid}/task").iterdir():
                os.sched_setaffinity(int(task.name), {cpu})
            (tid,) = [
                int(t.name)
                for t in Path(f"/proc/{proc.pid}/task").iterdir()
                if (t / "comm").read_text().startswith("ZMQbg/IO")
            ]
            wait_until(lambda: os.sched_getscheduler(tid) == os.SCHED_IDLE, 3)
            assert io_policy() == "idle"
        finally:
            code, out, took = stop_feed(proc)
    assert code == 0, out.decode(errors="replace")[-2000:]
    assert took < 2.0, took


def test_private_types_without_keys_exit_2_with_one_clear_line(tmp_path: Path):
    config = tmp_path / "private.yaml"
    config.write_text("subscriptions:\n  - type: myAsset\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("UPBIT_")}
    proc = subprocess.run(
        [sys.executable, "-m", "feedhandler", "run", "--config", str(config)],
        check=False,
        env=env,
        capture_output=True,
        timeout=30,
    )
    assert proc.returncode == 2
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1
    assert "myAsset" in lines[0] and "UPBIT_ACCESS_KEY" in lines[0]
    assert str(config) in lines[0]
    assert b"Traceback" not in proc.stderr


def _start_failure(harness) -> tuple[int, str]:
    proc = start_feed(harness, {})
    out = output_or_kill(proc, 30)
    return proc.returncode, out.decode(errors="replace")


def test_a_prefix_held_by_a_live_feed_exits_2_and_leaves_its_segments_alone(feed_harness):
    with Simulator(markets=2, rate=20.0) as sim:
        harness = feed_harness(sim, {"subscriptions": [{"type": "ticker", "codes": "all"}]})
        with shm.TickerWriter(harness.prefix, ["KRW-BTC"], capacity=16) as holder:
            code, out = _start_failure(harness)
            assert code == 2, out[-2000:]
            assert "event=feed_start_failed" in out and f"pid {os.getpid()}" in out
            assert "Traceback" not in out
            assert holder.head == 0
            reader = shm.attach(harness.prefix, "ticker", timeout=1)
            assert reader.writer_pid == os.getpid() and reader.writer_alive
            reader.close()
        assert not (SHM_DIR / f"{harness.prefix}.orderbook").exists()


def test_rings_dev_shm_has_no_room_for_exit_2_at_start_and_leave_nothing(feed_harness):
    fs = os.statvfs(shm.SHM_DIR)
    capacity = 16
    while capacity * shm.ORDERBOOK_DTYPE.itemsize <= fs.f_blocks * fs.f_frsize:
        capacity *= 2
    with Simulator(markets=2, rate=20.0) as sim:
        harness = feed_harness(
            sim,
            {
                "subscriptions": [{"type": "orderbook", "codes": "all"}],
                "shm": {"orderbook_capacity": capacity},
            },
        )
        code, out = _start_failure(harness)
    assert code == 2, out[-2000:]
    assert "event=feed_start_failed" in out and f"{harness.prefix}.orderbook" in out
    assert "cannot be reserved" in out and "Traceback" not in out
    assert list(SHM_DIR.glob(f"{harness.prefix}.*")) == []
