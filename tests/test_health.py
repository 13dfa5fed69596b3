import json
import threading

import pytest

from feedhandler.health import ConnectionHealth, HealthThresholds, process_health


class FakeClock:
    def __init__(self, start: float = 5000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def live(clock, thresholds=None, **kwargs):
    health = ConnectionHealth("public-0", thresholds or HealthThresholds(), clock, **kwargs)
    health.on_connected()
    health.subscribed = True
    return health


def test_fresh_connection_is_unhealthy_until_connected():
    clock = FakeClock()
    health = ConnectionHealth("public-0", HealthThresholds(), clock)
    snap = health.snapshot()
    assert snap["connected"] is False
    assert snap["health_score"] == 0.0
    assert snap["uptime_s"] == 0.0
    assert snap["last_message_age_s"] is None
    assert snap["warnings"] == ["health_score 0.00 < 0.8"]
    assert json.loads(json.dumps(snap)) == snap


def test_healthy_connection_scores_one_and_reports_its_rate():
    clock = FakeClock()
    health = live(clock)
    for _ in range(10):
        for _ in range(10):
            clock.advance(0.1)
            health.on_messages(5)
        snap = health.snapshot()
    assert snap["messages_total"] == 500
    assert snap["messages_per_s"] == pytest.approx(50.0)
    assert snap["last_message_age_s"] == 0.0
    assert snap["uptime_s"] == pytest.approx(10.0)
    assert snap["health_score"] == 1.0
    assert snap["warnings"] == []
    # The rate follows a change of pace within the ~5 s window, not the lifetime mean.
    for _ in range(8):
        for _ in range(10):
            clock.advance(0.1)
            health.on_messages(1)
        snap = health.snapshot()
    assert snap["messages_per_s"] == pytest.approx(10.0)


def test_rate_stays_defined_when_polled_fast_or_idle():
    clock = FakeClock()
    health = live(clock)
    health.on_messages(3)
    assert health.snapshot()["messages_per_s"] == 0.0
    for _ in range(1000):
        clock.advance(0.001)
        health.snapshot()
    assert health.snapshot()["messages_per_s"] == pytest.approx(3.0, rel=1e-6)
    clock.advance(30)
    health.snapshot()
    clock.advance(6)
    assert health.snapshot()["messages_per_s"] == 0.0


def test_consecutive_errors_cross_their_threshold_and_success_resets_them():
    clock = FakeClock()
    health = live(clock)
    health.on_messages(1)
    health.on_error("decode")
    health.on_error("decode")
    assert health.health_score() == pytest.approx(1 - 2 / 6)
    health.on_error("send")
    snap = health.snapshot()
    assert snap["consecutive_errors"] == 3
    assert snap["health_score"] == pytest.approx(0.5)
    assert "consecutive_errors 3 >= 3" in snap["warnings"]
    assert "health_score 0.50 < 0.8" in snap["warnings"]
    assert snap["errors_by_kind"] == {"decode": 2, "send": 1}
    health.on_success()
    snap = health.snapshot()
    assert snap["consecutive_errors"] == 0
    assert snap["errors"] == 3
    assert snap["warnings"] == []


def test_silence_lowers_the_score_only_while_subscribed():
    clock = FakeClock()
    health = live(clock)
    health.on_messages(1)
    clock.advance(60)
    assert health.snapshot()["health_score"] == pytest.approx(0.75)
    clock.advance(61)
    snap = health.snapshot()
    assert snap["last_message_age_s"] == pytest.approx(121)
    assert "inactive 121.0s > 120s" in snap["warnings"]
    health.subscribed = False
    snap = health.snapshot()
    assert snap["health_score"] == 1.0
    assert snap["warnings"] == []
    # Subscribing again starts the silence clock afresh.
    health.subscribed = True
    assert health.snapshot()["silence_s"] == 0.0


def test_recent_reconnects_warn_and_age_out():
    clock = FakeClock()
    health = live(clock)
    for _ in range(5):
        health.on_disconnected("closed 1006")
        health.on_reconnect()
        clock.advance(10)
        health.on_connected()
        health.on_messages(1)
    snap = health.snapshot()
    assert snap["reconnects"] == 5
    assert snap["recent_reconnects"] == 5
    assert snap["disconnects"] == 5
    assert snap["last_disconnect_reason"] == "closed 1006"
    assert snap["health_score"] == pytest.approx(0.5)
    assert "reconnects 5 >= 5 in the last 3600s" in snap["warnings"]
    clock.advance(3600)
    health.on_messages(1)
    snap = health.snapshot()
    assert snap["reconnects"] == 5
    assert snap["recent_reconnects"] == 0
    assert snap["health_score"] == 1.0


def test_disconnected_scores_zero_and_resets_uptime():
    clock = FakeClock()
    health = live(clock)
    clock.advance(30)
    health.on_messages(1)
    assert health.snapshot()["uptime_s"] == pytest.approx(30)
    health.on_disconnected("stall")
    snap = health.snapshot()
    assert snap["connected"] is False
    assert snap["uptime_s"] == 0.0
    assert snap["health_score"] == 0.0


def test_stall_needs_subscribed_connected_and_silence():
    clock = FakeClock()
    health = ConnectionHealth("public-0", HealthThresholds(stall_seconds=10), clock)
    clock.advance(100)
    assert not health.is_stalled()
    health.on_connected()
    clock.advance(100)
    assert not health.is_stalled()
    health.subscribed = True
    clock.advance(9.9)
    assert not health.is_stalled()
    clock.advance(0.1)
    assert health.is_stalled()
    assert health.snapshot()["stalled"] is True
    health.on_messages(1)
    assert not health.is_stalled()
    clock.advance(10)
    assert health.is_stalled()
    # Pongs prove the socket, not the subscription: a data connection stays stalled.
    health.on_pong()
    assert health.is_stalled()
    health.on_disconnected("stall")
    assert not health.is_stalled()
    # A reconnect starts a fresh silence period even before the first frame.
    health.on_connected()
    assert not health.is_stalled()


def test_quiet_private_connection_is_judged_by_pongs():
    clock = FakeClock()
    health = live(clock, HealthThresholds(stall_seconds=10), expects_data=False)
    clock.advance(500)
    assert not health.is_stalled()
    assert "inactive 500.0s > 120s" in health.snapshot()["warnings"]
    health.on_pong()
    clock.advance(20)
    snap = health.snapshot()
    assert snap["silence_s"] == pytest.approx(20)
    assert snap["warnings"] == []
    assert snap["last_message_age_s"] is None


def test_threshold_validation():
    with pytest.raises(ValueError, match="health_score"):
        HealthThresholds(health_score=1.5)
    with pytest.raises(ValueError, match="consecutive_errors"):
        HealthThresholds(consecutive_errors=0)
    with pytest.raises(ValueError, match="stall_seconds"):
        HealthThresholds(stall_seconds=0)


def test_snapshot_from_another_thread_while_counting():
    health = ConnectionHealth("public-0", HealthThresholds())
    health.on_connected()
    done = threading.Event()
    seen: list[int] = []

    def poll():
        while not done.is_set():
            seen.append(health.snapshot()["messages_total"])

    poller = threading.Thread(target=poll)
    poller.start()
    for _ in range(50_000):
        health.on_messages(2)
    done.set()
    poller.join(timeout=10)
    assert not poller.is_alive()
    assert health.snapshot()["messages_total"] == 100_000
    assert seen == sorted(seen)


def test_process_health_measures_this_process():
    snap = process_health(memory_limit_mb=1e9)
    assert snap["rss_mb"] > 1.0
    assert snap["threads"] >= 1
    assert snap["cpu_percent"] >= 0.0
    assert snap["warnings"] == []
    tight = process_health(memory_limit_mb=1.0)
    assert len(tight["warnings"]) == 1
    assert tight["warnings"][0].startswith("rss ")
    assert json.loads(json.dumps(tight)) == tight
