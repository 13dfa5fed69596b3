"""``status``, ``top`` and ``segments`` against real feeds, as scripts would call them."""

from __future__ import annotations

import io
import signal
import socket
import subprocess
import sys
import urllib.request

import orjson

from feedhandler.top import exit_code, format_status, run_top
from shm import TickerWriter
from simulator import Simulator
from tests.conftest import SHM_DIR, wait_until

PUBLIC = [
    {"type": "ticker", "codes": "all"},
    {"type": "orderbook", "codes": "all", "depth": 5},
    {"type": "trade", "codes": "all"},
]
# A feed started in the test process shares its memory with the whole suite, so the
# process-memory threshold is lifted there; the other thresholds stay as configured.
IN_PROCESS = {"subscriptions": PUBLIC, "health": {"memory_usage_mb": 1_000_000}}


def cli(harness, *args: str, timeout: float = 20.0) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "feedhandler", *args, "--config", str(harness.config_path)],
        env=harness.process_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_exit_codes_follow_the_health_state():
    assert [exit_code(s) for s in ("healthy", "degraded", "down", None, "odd")] == [0, 1, 2, 2, 2]


def test_feed_subprocess_status_top_segments_then_down(feed_harness):
    with Simulator(markets=3, rate=200.0, seed=2) as sim:
        harness = feed_harness(sim, {"subscriptions": PUBLIC})
        feed = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "feedhandler",
                "run",
                "--config",
                str(harness.config_path),
                "--metrics-port",
                "0",
                "--dashboard-port",
                "0",
            ],
            env=harness.process_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:

            def healthy_status():
                result = cli(harness, "status", "--json")
                if result.returncode != 0:
                    return None
                status = orjson.loads(result.stdout)
                return status if status["metrics"]["messages"].get("trade") else None

            status = wait_until(healthy_status, 20, interval=0.3)
            assert status["state"] == "healthy"
            assert status["markets"] == 3
            addons = status["addons"]
            assert set(addons) == {"telemetry", "metrics", "dashboard"}
            with urllib.request.urlopen(addons["metrics"]["url"], timeout=5) as response:
                assert b'upfeed_health_state{state="healthy"} 1.0' in response.read()
            with urllib.request.urlopen(addons["dashboard"]["url"], timeout=5) as response:
                assert b"<title>upfeed dashboard</title>" in response.read()

            table = cli(harness, "status")
            assert table.returncode == 0, table.stderr
            assert "state HEALTHY" in table.stdout and "public-0" in table.stdout

            segments = cli(harness, "segments", "--json")
            assert segments.returncode == 0
            kinds = {s["kind"]: s for s in orjson.loads(segments.stdout)["segments"]}
            assert set(kinds) == {"ticker", "orderbook"}
            assert kinds["ticker"]["name"] == f"{harness.prefix}.ticker"
            assert "'recv_ns'" in kinds["ticker"]["dtype"]
            assert kinds["ticker"]["wakes_readers"] is True
            assert kinds["orderbook"]["sleeping_readers"] == 0

            top = cli(harness, "top", "--iterations", "3", "--interval", "0.3", "--no-clear")
            assert top.returncode == 0, top.stderr
            assert top.stdout.count("state HEALTHY") == 3
            assert "per_s" in top.stdout
        finally:
            feed.send_signal(signal.SIGTERM)
            try:
                feed.communicate(timeout=10)
            finally:
                if feed.poll() is None:
                    feed.kill()
                    feed.wait(5)
        assert feed.returncode == 0

    down = cli(harness, "status", "--timeout", "0.5")
    assert down.returncode == 2
    assert down.stdout.startswith("down: no feed answers on ipc://")
    as_json = cli(harness, "status", "--json", "--timeout", "0.5")
    assert as_json.returncode == 2 and orjson.loads(as_json.stdout)["state"] == "down"
    top = cli(harness, "top", "--iterations", "1", "--timeout", "0.5")
    assert top.returncode == 2 and "down" in top.stdout
    # Down with a segment left behind (a crashed feed): its header is still shown.
    writer = TickerWriter(harness.prefix, ["KRW-BTC"], capacity=16)
    try:
        left = cli(harness, "segments", "--timeout", "0.5")
    finally:
        writer.close(unlink=True)
    assert left.returncode == 2
    assert f"{harness.prefix}.ticker" in left.stdout and "live" in left.stdout
    gone = cli(harness, "segments", "--timeout", "0.5")
    assert gone.returncode == 2 and "no segments" in gone.stdout


def test_degraded_feed_exits_1_and_names_the_warning(feed_harness):
    with Simulator(markets=2, rate=50.0, seed=4) as sim:
        # Any real process is above a 1 MB memory threshold.
        harness = feed_harness(sim, {"subscriptions": PUBLIC, "health": {"memory_usage_mb": 1}})
        feed = harness.start()
        wait_until(lambda: feed.router.counts.get("ticker"), 10)
        result = cli(harness, "status")
        assert result.returncode == 1, result.stdout
        assert "state DEGRADED" in result.stdout
        assert "WARNING process: rss" in result.stdout


def test_top_draws_rates_from_successive_statuses(feed_harness):
    with Simulator(markets=2, rate=100.0, seed=6) as sim:
        harness = feed_harness(sim, IN_PROCESS)
        feed = harness.start()
        wait_until(lambda: feed.router.counts.get("trade"), 10)
        out = io.StringIO()
        ticks = iter([0.0, 1.0, 2.0])
        last = run_top(
            feed.status, out=out, iterations=3, clock=lambda: next(ticks), sleep=lambda _s: None
        )
        frames = out.getvalue().split("\x1b[H\x1b[2J")[1:]
        assert len(frames) == 3
        assert "per_s" not in frames[0] and "per_s" in frames[1]
        assert last["state"] == "healthy"
        assert "connection" in format_status(last)


def test_busy_metrics_port_or_bad_record_file_stop_the_start_with_one_line(feed_harness, tmp_path):
    with Simulator(markets=2, rate=50.0, seed=9) as sim, socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        harness = feed_harness(sim, {"subscriptions": PUBLIC})
        taken = cli(harness, "run", "--metrics-port", port)
        assert taken.returncode == 2
        assert f"metrics endpoint 127.0.0.1:{port}" in taken.stderr
        assert "Traceback" not in taken.stderr
        assert not (SHM_DIR / f"{harness.prefix}.ticker").exists()
        bad = cli(harness, "record", "--out", str(tmp_path / "frames.bin"), "--duration", "1")
        assert bad.returncode == 2
        assert "must end in .gz" in bad.stderr and "Traceback" not in bad.stderr
