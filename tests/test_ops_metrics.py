"""Prometheus endpoint of a feed running against the simulator, and its building blocks."""

from __future__ import annotations

import gc
import urllib.request

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from feedhandler.app import FeedProcess
from feedhandler.metrics import Histogram, MetricsServer, RouteTimer, Telemetry
from simulator import Simulator
from tests.conftest import wait_until

PUBLIC = [
    {"type": "ticker", "codes": "all"},
    {"type": "orderbook", "codes": "all", "depth": 15},
    {"type": "trade", "codes": "all"},
]
# A feed started in the test process shares its memory with the whole suite, so the
# process-memory threshold is lifted there; the other thresholds stay as configured.
IN_PROCESS = {"subscriptions": PUBLIC, "health": {"memory_usage_mb": 1_000_000}}


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_histogram_counts_by_upper_bound_and_reports_quantile_buckets():
    hist = Histogram((1.0, 2.0, 5.0))
    hist.observe_many(np.array([0.5, 1.0, 1.5, 4.0, 9.0]))
    hist.observe(2.0)
    buckets, total, count = hist.snapshot()
    assert buckets == [("1", 2), ("2", 4), ("5", 5), ("+Inf", 6)]
    assert total == pytest.approx(18.0) and count == 6
    assert hist.quantile(0.5) == 2.0
    assert hist.quantile(0.99) == float("inf")
    assert Histogram((1.0,)).quantile(0.5) is None
    with pytest.raises(ValueError, match="increasing"):
        Histogram((2.0, 1.0))


def test_route_timer_times_one_frame_in_n_and_lets_errors_through():
    calls = []

    def route(connection, decoder, frame, recv_ns):
        calls.append(recv_ns)
        if frame == b"bad":
            raise KeyError("boom")

    timer = RouteTimer(every=4)
    timed = timer.wrap(route)
    for i in range(10):
        timed("public-0", None, b"ok", i)
    assert calls == list(range(10))
    assert timer.histogram.count == 3  # frames 0, 4 and 8
    timed("public-0", None, b"ok", 10)
    timed("public-0", None, b"ok", 11)
    with pytest.raises(KeyError):
        timed("public-0", None, b"bad", 12)  # the 13th frame is sampled and raises
    assert timer.histogram.count == 4


def test_metrics_endpoint_follows_the_feed(feed_harness):
    with Simulator(markets=4, rate=400.0, seed=3, stamp=True) as sim:
        harness = feed_harness(sim, IN_PROCESS)
        telemetry = Telemetry(interval=0.2, route_sample_every=8)
        server = MetricsServer(0, telemetry=telemetry)
        feed = FeedProcess(harness.settings(), addons=[telemetry, server])
        harness.feed = feed
        feed.start()
        assert server.url.startswith("http://127.0.0.1:")
        assert server._server.server_address[0] == "127.0.0.1"

        def ticker_samples() -> float:
            return value(
                scrape(server.url),
                "upfeed_wire_latency_seconds_count",
                kind="ticker",
                clock="origin",
            )

        wait_until(lambda: ticker_samples() > 50, 10)
        first = scrape(server.url)
        assert value(first, "upfeed_up") == 1
        assert value(first, "upfeed_health_state", state="healthy") == 1
        assert value(first, "upfeed_connection_up", connection="public-0") == 1
        assert value(first, "upfeed_process_rss_bytes") > 10e6
        assert value(first, "upfeed_shm_capacity", segment="ticker") == 4096
        assert value(first, "upfeed_route_seconds_count") > 0
        # A full collection in this process (the feed runs in it) shows up at once.
        full_before = value(first, "upfeed_gc_collections_total", generation="2")
        gc.collect()
        gc_after = scrape(server.url)
        assert value(gc_after, "upfeed_gc_collections_total", generation="2") >= full_before + 1
        assert value(gc_after, "upfeed_gc_pause_max_seconds", generation="2") > 0
        assert ("upfeed_gc_frozen_objects", ()) in gc_after
        assert ("upfeed_rate_limiter_rate_factor", ()) in first
        buckets = [
            v
            for (name, labels), v in first.items()
            if name == "upfeed_wire_latency_seconds_bucket"
            and ("clock", "origin") in labels
            and ("kind", "ticker") in labels
        ]
        assert len(buckets) == 16 and buckets == sorted(buckets)
        assert buckets[-1] == value(
            first, "upfeed_wire_latency_seconds_count", kind="ticker", clock="origin"
        )
        wait_until(
            lambda: (
                value(scrape(server.url), "upfeed_messages_total", type="trade")
                > value(first, "upfeed_messages_total", type="trade") + 20
            ),
            10,
        )
        per_frame = wait_until(
            lambda: scrape(server.url).get(
                ("upfeed_connection_cpu_per_frame_seconds", (("connection", "public-0"),))
            ),
            10,
        )
        assert 0 < per_frame < 1e-3
        sim.control.drop_all()
        wait_until(
            lambda: (
                value(scrape(server.url), "upfeed_reconnects_total", connection="public-0") >= 1
            ),
            15,
        )
        after = scrape(server.url)
        assert (
            value(after, "upfeed_connection_errors_total", connection="public-0", kind="closed")
            >= 1
        )
        assert value(after, "upfeed_zmq_sent_total") > value(first, "upfeed_zmq_sent_total")
        assert value(after, "upfeed_shm_records_total", segment="ticker") > value(
            first, "upfeed_shm_records_total", segment="ticker"
        )
        feed.stop()
        harness.feed = None
    with pytest.raises(OSError):
        urllib.request.urlopen(server.url, timeout=2)


def test_dashboard_and_metrics_ports_come_from_the_config(tmp_path):
    from feedhandler.config import load_settings
    from feedhandler.dashboard import DashboardServer
    from feedhandler.metrics import MetricsServer, addons_from_settings

    path = tmp_path / "m.yaml"
    path.write_text("metrics:\n  prometheus_port: 9191\n  dashboard_port: 9192\n")
    kinds = [type(a) for a in addons_from_settings(load_settings(path, environ={}))]
    assert MetricsServer in kinds and DashboardServer in kinds
    path.write_text("metrics: {}\n")
    assert addons_from_settings(load_settings(path, environ={})) == []
