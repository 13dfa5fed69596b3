"""Fault matrix: what the exchange and the host do to the feed, and that nothing is lost.

Each test injects one fault into a running feed (in-process or as ``python -m feedhandler
run``) fed by the real simulator, then stops the market, lets the last backfill finish
and checks every published trade against the simulator's journal
(:func:`bench.soak.account_trades`): none lost without a ``sys.gap`` announcing it,
none duplicated, none invented, and the shm tickers equal the exchange's last state.
Recovery times are printed in the terminal summary (and kept as junit properties);
they are bounded only generously.

Covered elsewhere and not repeated here: a worker that is slow or SIGKILLed
(``test_workers_e2e.py``), WebSocket rate-limit slow-down and recovery
(``test_feed_integration.py``), wrong keys and SIGTERM (``test_feed_process.py``).
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import feedhandler.trades as trades_module
import shm
from bench.soak import account_trades
from feedhandler.app import FeedProcess
from feedhandler.control import ControlClient
from feedhandler.upbit import Subscription
from simulator import Simulator
from tests.conftest import SHM_DIR, output_or_kill, wait_until

TRADES_AND_TICKERS = [
    {"type": "trade", "codes": "all"},
    {"type": "ticker", "codes": "all"},
]
FAST_RECONNECT = {"base_delay": 0.1, "max_delay": 1.0}
# Generous: a recovery slower than this is a hang, not a slow machine.
MAX_RECOVERY_S = 10.0

_recoveries: dict[str, float] = {}


@pytest.fixture(scope="module", autouse=True)
def recovery_report(pytestconfig: pytest.Config) -> Iterator[None]:
    """Print every fault's recovery time once the module's tests have run."""
    yield
    reporter = pytestconfig.pluginmanager.get_plugin("terminalreporter")
    capture = pytestconfig.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None or not _recoveries:
        return
    # module teardown output is captured (and dropped when the tests pass)
    with capture.global_and_fixture_disabled():
        reporter.write_line("")
        reporter.write_line("fault recovery times (s): " + json.dumps(_recoveries, sort_keys=True))


def report(record_property: Any, fault: str, seconds: float) -> None:
    _recoveries[fault] = round(seconds, 3)
    record_property(f"recovery_s.{fault}", round(seconds, 3))
    assert seconds < MAX_RECOVERY_S, (fault, seconds)


def rest_get(sim: Simulator, path: str) -> Any:
    with urllib.request.urlopen(sim.rest_url + path, timeout=5) as response:
        return json.loads(response.read(), parse_float=Decimal)


def start(feed_harness, collectors, sim: Simulator, **sections: Any):
    body = {"subscriptions": TRADES_AND_TICKERS, "reconnection": FAST_RECONNECT, **sections}
    harness = feed_harness(sim, body)
    feed = harness.start()
    bus = collectors(feed.publisher.endpoint, (b"trade.", b"sys."))
    wait_until(lambda: len(bus.topics("trade.")) > 30, 10)
    return harness, feed, bus


def generation(feed: FeedProcess) -> int:
    return int(feed.connections["public-0"].status()["generation"])


def recovered(feed: FeedProcess, bus, trades_before: int, generation_before: int) -> bool:
    """Reconnected, no code waiting for backfill, and live trades flowing again."""
    return (
        generation(feed) > generation_before
        and not feed.trades.status()["in_gap"]
        and len(bus.topics("trade.")) > trades_before + 5
    )


def settle(sim: Simulator, feed: FeedProcess, bus) -> None:
    """Stop the market and wait until the feed has published everything it will."""
    sim.control.set_rate(0)
    wait_until(lambda: not feed.trades.status()["in_gap"], 15)
    count = -1
    while count != len(bus.topics("trade.")):
        count = len(bus.topics("trade."))
        time.sleep(0.4)


def assert_nothing_lost(sim: Simulator, bus, *, allow_reported_gaps: bool = False) -> dict:
    published = bus.trade_sids()
    generated = sim.control.journal(codes=list(published))["generated"]
    result = account_trades(published, generated, bus.gaps())
    assert result["codes"] == len(sim.markets), result
    assert result["duplicated"] == 0, result
    assert result["invented"] == 0, result
    assert result["unexplained_lost"] == 0, result
    if not allow_reported_gaps:
        assert result["lost"] == 0, result
        assert bus.gaps() == []
    return result


def assert_shm_matches_exchange(sim: Simulator, prefix: str) -> None:
    tickers = shm.attach(prefix, "ticker", timeout=5)
    try:
        codes = ",".join(sim.markets)
        want = {t["market"]: t for t in rest_get(sim, f"/v1/ticker?markets={codes}")}
        for code in sim.markets:
            rec = tickers.latest(code)
            assert rec is not None, code
            assert rec["trade_price"] == float(want[code]["trade_price"]), code
            assert rec["trade_timestamp"] == want[code]["trade_timestamp"], code
    finally:
        tickers.close()


def assert_limits_kept(sim: Simulator) -> None:
    journal = sim.control.journal(sids=False)
    for conn in journal["connections"]:
        assert not conn["origin"], conn
        broken = [v for v in conn["violations"] if not v["kind"].startswith("injected")]
        assert broken == [], broken


# --- exchange-side faults ---------------------------------------------------------------


def test_server_restart(feed_harness, collectors, record_property):
    with Simulator(markets=3, rate=200.0, seed=31) as sim:
        harness, feed, bus = start(feed_harness, collectors, sim)
        before, gen = len(bus.topics("trade.")), generation(feed)
        started = time.monotonic()
        sim.control.restart(seconds=1.0)
        wait_until(lambda: recovered(feed, bus, before, gen), MAX_RECOVERY_S)
        report(record_property, "server_restart_1s_down", time.monotonic() - started)
        settle(sim, feed, bus)
        assert_nothing_lost(sim, bus)
        assert_shm_matches_exchange(sim, harness.prefix)
        assert feed.trades.status()["backfilled"] > 0
        assert_limits_kept(sim)


def test_drop_without_close_and_stall(feed_harness, collectors, record_property):
    with Simulator(markets=3, rate=200.0, seed=32) as sim:
        harness, feed, bus = start(feed_harness, collectors, sim, health={"stall_seconds": 1.0})
        for fault in ("drop_without_close", "stall_tcp_open"):
            before, gen = len(bus.topics("trade.")), generation(feed)
            started = time.monotonic()
            if fault == "drop_without_close":
                assert sim.control.drop_all() == 1
            else:
                sim.control.stall(seconds=30)
            wait_until(lambda b=before, g=gen: recovered(feed, bus, b, g), MAX_RECOVERY_S)
            report(record_property, fault, time.monotonic() - started)
        assert bus.topics("sys.stale")
        settle(sim, feed, bus)
        assert_nothing_lost(sim, bus)
        assert_shm_matches_exchange(sim, harness.prefix)


def test_malformed_frames(feed_harness, collectors, record_property):
    """Garbage and truncated JSON are counted and skipped on the same connection; a frame
    cut off by a dropped socket is a lost connection like any other; a frame larger than
    the message cap is refused from its header and the connection replaced."""
    with Simulator(markets=3, rate=200.0, seed=33) as sim:
        harness, feed, bus = start(feed_harness, collectors, sim)
        gen = generation(feed)
        for count, kind in enumerate(("garbage", "truncated_json"), start=1):
            sim.control.malformed(kind=kind)
            wait_until(lambda c=count: feed.router.counts["bad_frame"] == c, 5)
        before = len(bus.topics("trade."))
        wait_until(lambda: len(bus.topics("trade.")) > before + 10, 5)
        assert generation(feed) == gen, "a bad frame must not cost the connection"
        before = len(bus.topics("trade."))
        started = time.monotonic()
        sim.control.malformed(kind="truncated")
        wait_until(lambda: recovered(feed, bus, before, gen), MAX_RECOVERY_S)
        report(record_property, "truncated_frame_then_drop", time.monotonic() - started)
        before, gen = len(bus.topics("trade.")), generation(feed)
        started = time.monotonic()
        sim.control.malformed(kind="oversized")
        wait_until(lambda: recovered(feed, bus, before, gen), MAX_RECOVERY_S)
        report(record_property, "oversized_frame_refused", time.monotonic() - started)
        reasons = [m["data"]["reason"] for _, m in bus.topics("sys.connection_lost")]
        assert "exceeds" in reasons[-1], reasons
        settle(sim, feed, bus)
        assert feed.router.counts["bad_frame"] == 2
        assert_nothing_lost(sim, bus)
        assert_shm_matches_exchange(sim, harness.prefix)


UPBIT_ERROR_NAMES = (
    "WRONG_FORMAT",
    "NO_TICKET",
    "NO_TYPE",
    "NO_CODES",
    "INVALID_AUTH",
    "INVALID_PARAM",
    "TOO_MANY_REQ",
    "Too Many Requests",
    "I'm a teapot",
)
RATE_LIMIT_NAMES = ["TOO_MANY_REQ", "Too Many Requests", "I'm a teapot"]


def test_each_upbit_error_name(feed_harness, collectors, record_property):
    """Every error name Upbit documents, answered with a close on the public connection:
    reported on the bus, reconnected, nothing lost, the connection not marked failed."""
    with Simulator(markets=3, rate=200.0, seed=34) as sim:
        harness, feed, bus = start(feed_harness, collectors, sim)
        for name in UPBIT_ERROR_NAMES:
            before, gen = len(bus.topics("trade.")), generation(feed)
            started = time.monotonic()
            assert sim.control.error(name) != []
            wait_until(lambda b=before, g=gen: recovered(feed, bus, b, g), MAX_RECOVERY_S)
            report(record_property, f"error_{name}", time.monotonic() - started)
            # the feed's request limiter must keep every real limit after the errors
            time.sleep(0.3)
        errors = [m["data"]["name"] for _, m in bus.topics("sys.error")]
        assert errors == list(UPBIT_ERROR_NAMES)
        assert [m["data"]["name"] for _, m in bus.topics("sys.rate_limit")] == RATE_LIMIT_NAMES
        status = feed.connections["public-0"].status()
        assert status["failed"] is None
        # each error-closed session had delivered data, so backoff restarts every time
        assert bus.topics("sys.connection_down") == []
        assert feed.health()["state"] != "down"
        settle(sim, feed, bus)
        assert_nothing_lost(sim, bus)
        assert_shm_matches_exchange(sim, harness.prefix)
        assert_limits_kept(sim)


def test_rest_429_during_backfill_is_waited_out(feed_harness, collectors, record_property):
    with Simulator(markets=2, rate=150.0, seed=35) as sim:
        harness, feed, bus = start(feed_harness, collectors, sim)
        sim.control.ratelimit_errors(count=0, rest_count=1)
        before, gen = len(bus.topics("trade.")), generation(feed)
        started = time.monotonic()
        sim.control.drop_all()
        wait_until(lambda: recovered(feed, bus, before, gen), MAX_RECOVERY_S)
        report(record_property, "rest_429_in_backfill", time.monotonic() - started)
        settle(sim, feed, bus)
        assert feed.rest.rate_limited == 1
        assert [r["status"] for r in sim.control.journal(sids=False)["rest"]] == [429]
        assert_nothing_lost(sim, bus)
        assert_shm_matches_exchange(sim, harness.prefix)


def test_rest_418_ban_during_backfill_is_waited_out(feed_harness, collectors, record_property):
    """A 429 that goes on becomes a 418 ban: the backfill waits the ban out (live trades
    keep buffering) and then fills the gap; nothing is lost and no gap is reported."""
    with Simulator(
        markets=2, rate=150.0, seed=36, rest_teapot_after=1, rest_block_seconds=1.0
    ) as sim:
        harness, feed, bus = start(feed_harness, collectors, sim)
        sim.control.ratelimit_errors(count=0, rest_count=2)
        before, gen = len(bus.topics("trade.")), generation(feed)
        started = time.monotonic()
        sim.control.drop_all()
        wait_until(lambda: recovered(feed, bus, before, gen), MAX_RECOVERY_S)
        report(record_property, "rest_418_ban_in_backfill", time.monotonic() - started)
        statuses = [r["status"] for r in sim.control.journal(sids=False)["rest"]]
        assert statuses[0] == 429 and 418 in statuses, statuses
        assert feed.limiter.status()["bans"] >= 1
        settle(sim, feed, bus)
        assert_nothing_lost(sim, bus)
        assert_shm_matches_exchange(sim, harness.prefix)


def test_rest_failing_beyond_the_retries_is_reported_as_a_gap(
    feed_harness, collectors, record_property, monkeypatch
):
    """REST down for longer than the backfill retries last: each code's loss is announced
    (``sys.gap``, never silent), the buffered live trades follow, and the next gap after
    the outage is backfilled in full."""
    # The retry schedule is 0.25 s doubling 5 times; a shorter base keeps the test short.
    monkeypatch.setattr(trades_module, "BACKFILL_RETRY_BASE", 0.02)
    with Simulator(markets=2, rate=150.0, seed=42) as sim:
        harness, feed, bus = start(feed_harness, collectors, sim)
        sim.control.rest_outage(seconds=3.0)
        before, gen = len(bus.topics("trade.")), generation(feed)
        started = time.monotonic()
        # a listener outage long enough for trades to fall into the gap
        sim.control.restart(seconds=0.5)
        wait_until(lambda: len(bus.gaps()) == len(sim.markets), MAX_RECOVERY_S)
        wait_until(lambda: recovered(feed, bus, before, gen), MAX_RECOVERY_S)
        report(record_property, "rest_outage_gap_reported", time.monotonic() - started)
        assert {g["code"] for g in bus.gaps()} == set(sim.markets)
        published_before = {c: len(s) for c, s in bus.trade_sids().items()}
        wait_until(lambda: rest_answers(sim), 5, interval=0.2)
        before, gen = len(bus.topics("trade.")), generation(feed)
        calls = feed.rest.calls
        sim.control.drop_all()
        wait_until(lambda: recovered(feed, bus, before, gen), MAX_RECOVERY_S)
        # one backfill per code, answered this time (a failure would be another sys.gap)
        assert feed.rest.calls >= calls + len(sim.markets)
        settle(sim, feed, bus)
        result = assert_nothing_lost(sim, bus, allow_reported_gaps=True)
        assert len(bus.gaps()) == len(sim.markets), "only the outage may leave a gap"
        assert result["lost"] > 0, "the outage must have cost trades, or the test proves nothing"
        sids = bus.trade_sids()
        for code, lost in result["lost_sids"].items():
            assert not set(lost) & set(sids[code][published_before[code] :])
        assert_shm_matches_exchange(sim, harness.prefix)


def rest_answers(sim: Simulator) -> bool:
    try:
        rest_get(sim, f"/v1/ticker?markets={sim.markets[0]}")
    except urllib.error.HTTPError:
        return False
    return True


def test_duplicated_trades_are_published_once(feed_harness, collectors):
    with Simulator(markets=2, rate=150.0, seed=37) as sim:
        harness, feed, bus = start(feed_harness, collectors, sim)
        sim.control.duplicate_trades(count=40)
        wait_until(lambda: feed.trades.status()["duplicates_dropped"] >= 40, 10)
        settle(sim, feed, bus)
        assert feed.trades.status()["duplicates_dropped"] == 40
        assert_nothing_lost(sim, bus)
        assert_shm_matches_exchange(sim, harness.prefix)


def test_reordered_trades_are_published_once_in_arrival_order(feed_harness, collectors):
    """``sequential_id`` is identity, not order: trades the exchange sends swapped are
    published swapped (the order they arrived on the wire), each exactly once."""
    with Simulator(markets=2, rate=150.0, seed=38) as sim:
        harness, feed, bus = start(feed_harness, collectors, sim)
        sim.control.reorder_trades(count=20)
        time.sleep(1.0)
        settle(sim, feed, bus)
        published = bus.trade_sids()
        journal = sim.control.journal(codes=list(published))
        generated = journal["generated"]
        (conn,) = journal["connections"]
        swapped = 0
        for code, got in published.items():
            assert len(got) == len(set(got)), code
            truth = generated[code]
            start_at = truth.index(got[0])
            assert sorted(got) == sorted(truth[start_at:]), f"{code}: lost or invented trades"
            # the wire order, as the exchange journaled what it sent on the connection
            sent = [sid for sid in conn["sids"][code] if sid in set(got)]
            assert got == sent, code
            swapped += sum(1 for a, b in zip(got, truth[start_at:], strict=True) if a != b)
        assert swapped >= 2 * 10, "the fault must have swapped trades"
        assert_shm_matches_exchange(sim, harness.prefix)


# --- host-side faults -------------------------------------------------------------------


def feed_command(harness) -> list[str]:
    return [sys.executable, "-m", "feedhandler", "run", "--config", str(harness.config_path)]


def stop_process(proc: subprocess.Popen) -> tuple[int, bytes]:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    out = output_or_kill(proc, 10)
    return proc.returncode, out


def test_feed_sigkill_readers_see_it_and_a_restart_recovers(feed_harness, record_property):
    with Simulator(markets=3, rate=200.0, seed=39) as sim:
        harness = feed_harness(sim, {"subscriptions": TRADES_AND_TICKERS})
        segments = [SHM_DIR / f"{harness.prefix}.{kind}" for kind in ("ticker", "orderbook")]
        first = subprocess.Popen(
            feed_command(harness),
            env=harness.process_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        second: subprocess.Popen | None = None
        reader = shm.attach(harness.prefix, "ticker", timeout=15, heartbeat_timeout=1.0)
        try:
            wait_until(lambda: reader.latest(sim.markets[0]) is not None, 10)
            assert reader.writer_alive
            killed_generation = reader.generation
            first.send_signal(signal.SIGKILL)
            first.wait(5)
            killed_at = time.monotonic()
            wait_until(lambda: not reader.writer_alive, 5)
            report(record_property, "writer_dead_seen_by_reader", time.monotonic() - killed_at)
            assert all(p.exists() for p in segments), "a SIGKILLed writer cannot unlink"
            second = subprocess.Popen(
                feed_command(harness),
                env=harness.process_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            restarted_at = time.monotonic()
            stale = reader.latest(sim.markets[0])

            def fresh_data() -> bool:
                rec = reader.latest(sim.markets[0])
                return (
                    reader.writer_alive
                    and reader.generation != killed_generation
                    and rec is not None
                    and rec["recv_ns"] > stale["recv_ns"]
                )

            wait_until(fresh_data, 20)
            report(record_property, "feed_restart_after_sigkill", time.monotonic() - restarted_at)
            code, out = stop_process(second)
            assert code == 0, out.decode(errors="replace")[-2000:]
            assert b"Traceback" not in out
        finally:
            reader.close()
            for proc in (first, second):
                if proc is not None and proc.poll() is None:
                    proc.kill()
                    proc.wait(5)
        assert not any(p.exists() for p in segments), "a clean stop leaves no segment"


# Runs the feed with its wall clock (time.time, time.time_ns) shifted by the number of
# seconds in the file named by UFT_CLOCK_OFFSET_FILE, re-read every 20 ms; monotonic
# clocks are untouched, as in a real NTP step or a manual date change.
CLOCK_JUMP_BOOTSTRAP = """
import os, runpy, sys, threading, time
_path = os.environ["UFT_CLOCK_OFFSET_FILE"]
_real_time, _real_time_ns = time.time, time.time_ns
_offset = [0.0]
def _watch():
    while True:
        try:
            with open(_path) as f:
                _offset[0] = float(f.read().strip() or 0)
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
threading.Thread(target=_watch, daemon=True).start()
time.time = lambda: _real_time() + _offset[0]
time.time_ns = lambda: _real_time_ns() + int(_offset[0] * 1e9)
sys.argv = ["feedhandler", "run", "--config", sys.argv[1]]
runpy.run_module("feedhandler", run_name="__main__", alter_sys=True)
"""


def test_wall_clock_jumps_do_not_disturb_the_feed(feed_harness, collectors, tmp_path):
    """The feed's wall clock steps an hour forward, then two hours back. Stall detection,
    the request and connect rate limiters, backoff and worker leases run on monotonic
    time, so: no false stall or reconnect, a new subscription is sent at once (a limiter
    on wall time would block it for an hour), a worker's lease survives the forward step
    (it would expire on wall time), and no trade is lost or duplicated."""
    offset_file = tmp_path / "clock_offset"
    offset_file.write_text("0")
    with Simulator(markets=3, rate=150.0, seed=40) as sim:
        harness = feed_harness(
            sim,
            {
                "subscriptions": [{"type": "trade", "codes": sim.markets[:2]}],
                "health": {"stall_seconds": 2.0},
            },
        )
        env = {**harness.process_env(), "UFT_CLOCK_OFFSET_FILE": str(offset_file)}
        proc = subprocess.Popen(
            [sys.executable, "-c", CLOCK_JUMP_BOOTSTRAP, str(harness.config_path)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        runtime = Path(harness.runtime_dir)
        control: ControlClient | None = None
        try:
            wait_until((runtime / f"{harness.prefix}.ctl").exists, 20)
            control = ControlClient(f"ipc://{runtime / f'{harness.prefix}.ctl'}", timeout=5)
            bus = collectors(f"ipc://{runtime / f'{harness.prefix}.pub'}", (b"trade.", b"sys."))
            wait_until(lambda: len(bus.topics("trade.")) > 20, 15)
            control.register("w-clock", [Subscription("trade", (sim.markets[0],))], 5.0)
            offset_file.write_text("3600")
            # several stall checks (every 0.2 s) and lease expiry passes (every 0.1 s);
            # on wall time both would fire at the first pass after an hour's step
            time.sleep(1.0)
            assert [w["worker_id"] for w in control.call("workers")["workers"]] == ["w-clock"]
            offset_file.write_text("-3600")
            time.sleep(0.5)
            control.register("w-new", [Subscription("trade", (sim.markets[2],))], 30.0)
            wait_until(lambda: sim.markets[2] in bus.trade_sids(), 3)
            control.renew("w-clock")
            time.sleep(1.0)
            status = control.status()
            conn = status["health"]["connections"]["public-0"]
            assert conn["generation"] == 1, "a clock step must not cost the connection"
            assert bus.topics("sys.stale") == []
            assert bus.topics("sys.connection_lost") == []
            sim.control.set_rate(0)
            time.sleep(1.0)
            published = bus.trade_sids()
            generated = sim.control.journal(codes=list(published))["generated"]
            result = account_trades(published, generated, bus.gaps())
            assert result["codes"] == 3
            assert result["lost"] == result["duplicated"] == result["invented"] == 0, result
        finally:
            if control is not None:
                control.close()
            code, out = stop_process(proc)
        assert code == 0, out.decode(errors="replace")[-2000:]
        assert b"Traceback" not in out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_upstream_unreachable_at_start(feed_harness, collectors, record_property):
    """The feed starts while nothing listens; it keeps retrying and streams once the
    exchange comes up on its address, without a restart."""
    ws_port, rest_port = free_port(), free_port()
    target = SimpleNamespace(
        public_url=f"ws://127.0.0.1:{ws_port}/websocket/v1",
        private_url=f"ws://127.0.0.1:{ws_port}/websocket/v1/private",
        rest_url=f"http://127.0.0.1:{rest_port}",
    )
    harness = feed_harness(
        target, {"subscriptions": TRADES_AND_TICKERS, "reconnection": FAST_RECONNECT}
    )
    feed = FeedProcess(harness.settings())
    harness.feed = feed
    # start() blocks until the market list arrives; an exception in it leaves the
    # publisher unset, which the assertions below catch.
    starter = threading.Thread(target=feed.start, daemon=True)
    starter.start()
    time.sleep(1.5)
    assert starter.is_alive()
    with Simulator(markets=3, rate=200.0, seed=41, port=ws_port, rest_port=rest_port) as sim:
        came_up = time.monotonic()
        starter.join(15)
        assert not starter.is_alive() and feed.publisher is not None
        bus = collectors(feed.publisher.endpoint, (b"trade.", b"sys."))
        wait_until(lambda: len(bus.topics("trade.")) > 20, 10)
        report(record_property, "upstream_up_after_start", time.monotonic() - came_up)
        settle(sim, feed, bus)
        assert_nothing_lost(sim, bus)
        assert_shm_matches_exchange(sim, harness.prefix)
