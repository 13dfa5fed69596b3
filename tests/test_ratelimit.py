import bisect
import json
import random
import threading

import pytest

from feedhandler.ratelimit import (
    MIN_RATE_FACTOR,
    REST_LIMITS,
    STRATEGY_MARGINS,
    ExchangeLimit,
    RateLimiter,
    RateLimitSettings,
    SlidingWindowLimit,
    TokenBucket,
    scaled_window,
    wait_for_grant,
)


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def max_in_closed_window(times: list[float], window: float) -> int:
    """The largest number of times inside any closed interval of length ``window``."""
    times = sorted(times)
    return max((bisect.bisect_right(times, t + window) - i for i, t in enumerate(times)), default=0)


def drive(acquire, clock: FakeClock, until: float, rng: random.Random, on_step=None):
    """Call ``acquire`` greedily: sleep exactly the answer, or a random nudge."""
    granted = []
    steps = 0
    while clock.now < until:
        wait = acquire()
        if wait == 0.0:
            granted.append(clock.now)
            if rng.random() < 0.3:
                clock.advance(rng.choice([0.0, 1e-6, rng.random() * 0.3]))
        else:
            assert wait > 0
            # Sleep exactly the answer most of the time (the adversarial edge), else a
            # bit less or more, as a real scheduler would.
            clock.advance(wait * rng.choice([1.0, 1.0, 1.0, 0.5, 1.0001, 1.3]))
        steps += 1
        if on_step is not None:
            on_step(steps)
        assert steps < 1_000_000
    return granted


# -- window derivation -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("strategy", "grants", "seconds"),
    [("conservative", 3, 1.0), ("balanced", 4, 1.0), ("aggressive", 5, 5 / 4.75)],
)
def test_scaled_window_per_strategy(strategy, grants, seconds):
    n, w = scaled_window(ExchangeLimit(5, 1.0), STRATEGY_MARGINS[strategy])
    assert n == grants
    assert w > 1.0
    assert w == pytest.approx(seconds, rel=2e-3)
    assert n / w == pytest.approx(5 * STRATEGY_MARGINS[strategy], rel=2e-3)


def test_scaled_window_small_fraction_keeps_one_grant_and_stretches():
    n, w = scaled_window(ExchangeLimit(5, 1.0), 0.6 * MIN_RATE_FACTOR)
    assert n == 1
    assert w == pytest.approx(1 / (5 * 0.03), rel=2e-3)
    assert scaled_window(ExchangeLimit(1, 2.0), 0.6) == (1, pytest.approx(2 / 0.6, rel=2e-3))
    with pytest.raises(ValueError, match="fraction"):
        scaled_window(ExchangeLimit(5, 1.0), 0.0)
    with pytest.raises(ValueError, match="count >= 1"):
        ExchangeLimit(0, 1.0)


def test_sliding_window_limit_counts_and_pauses():
    limit = SlidingWindowLimit(ExchangeLimit(5, 1.0), 0.6)
    assert [limit.try_acquire(10.0) for _ in range(4)] == [True, True, True, False]
    assert limit.delay(10.0) == pytest.approx(limit.seconds)
    assert limit.status(10.0)["used"] == 3
    assert limit.status(10.0)["available"] == 0
    assert limit.try_acquire(10.0 + limit.seconds)
    limit.pause(20.0, 1.0)
    assert limit.delay(20.0) == pytest.approx(1.0)
    assert limit.status(20.0)["available"] == 0
    assert limit.delay(21.0) == 0.0


# -- token bucket ----------------------------------------------------------------------


def test_token_bucket_starts_full_and_refills():
    clock = FakeClock()
    bucket = TokenBucket(rate=2.0, capacity=3.0, clock=clock)
    assert [bucket.try_acquire() for _ in range(4)] == [True, True, True, False]
    assert bucket.delay() == pytest.approx(0.5)
    assert bucket.delay(2.0) == pytest.approx(1.0)
    clock.advance(0.5)
    assert bucket.delay() == 0.0
    assert bucket.try_acquire()
    assert not bucket.try_acquire()
    clock.advance(100.0)
    assert bucket.tokens() == pytest.approx(3.0)


def test_token_bucket_initial_set_rate_and_bad_amounts():
    clock = FakeClock()
    bucket = TokenBucket(rate=1.0, capacity=5.0, clock=clock, initial=0.0)
    assert not bucket.try_acquire()
    assert bucket.delay() == pytest.approx(1.0)
    clock.advance(0.5)
    bucket.set_rate(4.0)
    # The half token earned at the old rate is kept; the rest comes at the new one.
    assert bucket.delay() == pytest.approx(0.125)
    with pytest.raises(ValueError, match="capacity"):
        bucket.delay(6.0)
    with pytest.raises(ValueError, match="capacity"):
        bucket.try_acquire(0.0)
    with pytest.raises(ValueError, match="rate"):
        bucket.set_rate(0.0)
    with pytest.raises(ValueError, match="rate > 0"):
        TokenBucket(rate=0.0, capacity=1.0, clock=clock)


def test_token_bucket_window_bound_is_capacity_plus_refill():
    clock = FakeClock()
    bucket = TokenBucket(rate=5.0, capacity=5.0, clock=clock)
    granted = drive(
        lambda: 0.0 if bucket.try_acquire() else bucket.delay(), clock, 1030.0, random.Random(3)
    )
    # The reason exchange limits do not use a bucket: 5/s + 5 burst gives ~10 in 1 s.
    assert max_in_closed_window(granted, 1.0) == 10
    assert len(granted) <= 5 + 5 * 30 + 1


# -- settings --------------------------------------------------------------------------


def test_settings_validation():
    with pytest.raises(ValueError, match="conservative, balanced, aggressive"):
        RateLimitSettings(strategy="fast")
    with pytest.raises(ValueError, match="error_threshold"):
        RateLimitSettings(error_threshold=0)
    with pytest.raises(ValueError, match="reduction_ratio"):
        RateLimitSettings(reduction_ratio=1.0)
    with pytest.raises(ValueError, match="recovery_delay"):
        RateLimitSettings(recovery_delay=-1.0)
    assert RateLimitSettings().margin == 0.6


# -- the exchange guarantee under adversarial callers ----------------------------------


@pytest.mark.parametrize("strategy", list(STRATEGY_MARGINS))
def test_message_windows_never_exceed_exchange_limits(strategy):
    clock = FakeClock()
    limiter = RateLimiter(RateLimitSettings(strategy=strategy, recovery_delay=20.0), clock)
    rng = random.Random(strategy)

    next_burst = [clock.now + 30.0]

    def errors_now_and_then(step):
        # Factor changes mid-stream (down at once, back up in steps) must not open a
        # hole in any window.
        if clock.now >= next_burst[0]:
            for _ in range(rng.choice([3, 3, 6])):
                limiter.record_rate_limit_error("message:other")
            next_burst[0] = clock.now + rng.uniform(10.0, 120.0)

    granted = drive(
        lambda: limiter.acquire_message("c1"), clock, 1000.0 + 900, rng, errors_now_and_then
    )
    assert limiter.status()["adjustments"]["reductions"] > 0
    assert limiter.status()["adjustments"]["recoveries"] > 0
    assert max_in_closed_window(granted, 1.0) <= 5
    assert max_in_closed_window(granted, 60.0) <= 100


@pytest.mark.parametrize("strategy", list(STRATEGY_MARGINS))
def test_sustained_message_rate_is_the_strategy_fraction_of_100_per_minute(strategy):
    clock = FakeClock()
    limiter = RateLimiter(RateLimitSettings(strategy=strategy), clock)
    granted = drive(lambda: limiter.acquire_message("c1"), clock, 1000.0 + 600, random.Random(7))
    expected = 100 * STRATEGY_MARGINS[strategy] * 10
    assert expected * 0.97 <= len(granted) <= expected + 100 * STRATEGY_MARGINS[strategy]
    assert max_in_closed_window(granted, 1.0) <= 5


@pytest.mark.parametrize("strategy", list(STRATEGY_MARGINS))
def test_connect_and_rest_windows_hold(strategy):
    clock = FakeClock()
    limiter = RateLimiter(RateLimitSettings(strategy=strategy), clock)
    granted = drive(limiter.acquire_connect, clock, 1000.0 + 60, random.Random(1))
    assert max_in_closed_window(granted, 1.0) <= 5
    assert len(granted) >= 60 * 5 * STRATEGY_MARGINS[strategy] * 0.9
    for group, limit in REST_LIMITS.items():
        start = clock.now
        granted = drive(
            lambda group=group: limiter.acquire_rest(group), clock, start + 30, random.Random(2)
        )
        assert max_in_closed_window(granted, limit.window) <= limit.count, group


def test_fresh_connection_may_burst_its_grants_at_once():
    clock = FakeClock()
    limiter = RateLimiter(RateLimitSettings(strategy="conservative"), clock)
    assert [limiter.acquire_message("c1") for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limiter.acquire_message("c1")
    assert wait == pytest.approx(1.0, rel=2e-3)
    # Connections are metered separately.
    assert limiter.acquire_message("c2") == 0.0
    aggressive = RateLimiter(RateLimitSettings(strategy="aggressive"), clock)
    assert [aggressive.acquire_message("c1") for _ in range(5)] == [0.0] * 5
    assert aggressive.acquire_message("c1") > 1.0


def test_a_refusal_takes_nothing():
    clock = FakeClock()
    limiter = RateLimiter(RateLimitSettings(strategy="balanced"), clock)
    for _ in range(4):
        assert limiter.acquire_connect() == 0.0
    first = limiter.acquire_connect()
    for _ in range(50):
        assert limiter.acquire_connect() == first
    assert limiter.status()["buckets"]["connect"]["used"] == 4
    clock.advance(first)
    assert limiter.acquire_connect() == 0.0


def test_per_minute_limit_binds_after_the_per_second_one():
    clock = FakeClock()
    limiter = RateLimiter(RateLimitSettings(strategy="conservative"), clock)
    granted = []
    while len(granted) < 60:
        wait = limiter.acquire_message("c1")
        if wait == 0.0:
            granted.append(clock.now)
        else:
            assert wait == pytest.approx(1.0, rel=2e-3)
            clock.advance(wait)
    # 3 per second for 20 s uses the conservative 60 per minute; then the minute binds.
    assert granted[-1] - granted[0] == pytest.approx(19.0, rel=2e-3)
    assert limiter.acquire_message("c1") == pytest.approx(60.06 - 19.0, rel=2e-3)
    limiter.forget_connection("c1")
    assert limiter.acquire_message("c1") == 0.0


# -- REST groups and bans --------------------------------------------------------------


def test_rest_groups_are_independent_and_unknown_group_is_an_error():
    clock = FakeClock()
    limiter = RateLimiter(RateLimitSettings(strategy="conservative"), clock)
    assert all(limiter.acquire_rest("trade") == 0.0 for _ in range(6))
    assert limiter.acquire_rest("trade") > 0
    assert limiter.acquire_rest("ticker") == 0.0
    assert limiter.acquire_rest("order-cancel-all") == 0.0
    assert limiter.acquire_rest("order-cancel-all") == pytest.approx(2 / 0.6, rel=2e-3)
    with pytest.raises(ValueError, match="unknown Upbit REST rate-limit group 'trades'"):
        limiter.acquire_rest("trades")


def test_ban_blocks_every_rest_group_until_it_ends():
    clock = FakeClock()
    limiter = RateLimiter(RateLimitSettings(dynamic=False), clock)
    limiter.record_ban(120.0)
    for group in REST_LIMITS:
        assert limiter.acquire_rest(group) == pytest.approx(120.0)
    clock.advance(100.0)
    assert limiter.acquire_rest("market") == pytest.approx(20.0)
    assert limiter.status()["ban_remaining_s"] == pytest.approx(20.0)
    # A ban is REST only.
    assert limiter.acquire_message("c1") == 0.0
    clock.advance(20.0)
    assert limiter.acquire_rest("market") == 0.0
    assert limiter.status()["bans"] == 1
    assert limiter.status()["errors"]["by_source"] == {"rest:ban": 1}


def test_rest_429_pauses_that_group_for_one_window():
    clock = FakeClock()
    limiter = RateLimiter(RateLimitSettings(), clock)
    limiter.record_rate_limit_error("rest:trade")
    assert limiter.acquire_rest("trade") == pytest.approx(1.0)
    assert limiter.acquire_rest("ticker") == 0.0
    limiter.record_rate_limit_error("connect")
    assert limiter.acquire_connect() == pytest.approx(1.0)
    assert limiter.acquire_message("c1") == 0.0
    limiter.record_rate_limit_error("message:c1")
    assert limiter.acquire_message("c1") == pytest.approx(1.0)
    clock.advance(1.0)
    assert limiter.acquire_rest("trade") == 0.0
    assert limiter.acquire_connect() == 0.0


def test_disabled_meters_nothing_but_honours_bans():
    clock = FakeClock()
    limiter = RateLimiter(RateLimitSettings(enabled=False), clock)
    assert all(limiter.acquire_message("c1") == 0.0 for _ in range(1000))
    assert all(limiter.acquire_connect() == 0.0 for _ in range(1000))
    assert all(limiter.acquire_rest("trade") == 0.0 for _ in range(1000))
    status = limiter.status()
    assert status["enabled"] is False
    assert status["buckets"]["connect"]["used"] == 0
    assert not any(name.startswith("message.") for name in status["buckets"])
    limiter.record_ban(5.0)
    assert limiter.acquire_rest("trade") == pytest.approx(5.0)
    with pytest.raises(ValueError, match="unknown"):
        limiter.acquire_rest("nope")


# -- dynamic adjustment ----------------------------------------------------------------


def test_dynamic_reduction_and_stepwise_recovery_cycle():
    clock = FakeClock()
    settings = RateLimitSettings(
        strategy="conservative", error_threshold=3, reduction_ratio=0.5, recovery_delay=60.0
    )
    limiter = RateLimiter(settings, clock)
    assert limiter.rate_factor == 1.0
    limiter.record_rate_limit_error("message:c1")
    clock.advance(10)
    limiter.record_rate_limit_error("message:c1")
    assert limiter.rate_factor == 1.0
    clock.advance(10)
    limiter.record_rate_limit_error("connect")
    assert limiter.rate_factor == 0.5
    # The tighter windows apply at once: 0.6 * 0.5 of 5/s is 1.5/s -> 2 per 1.33 s.
    assert [limiter.acquire_message("c2") for _ in range(2)] == [0.0, 0.0]
    assert limiter.acquire_message("c2") == pytest.approx(2 / 1.5, rel=2e-3)
    # The streak restarted at the reduction: three more errors reduce again.
    for _ in range(3):
        clock.advance(1)
        limiter.record_rate_limit_error("rest:trade")
    assert limiter.rate_factor == 0.25
    status = limiter.status()
    assert status["adjustments"] == {"reductions": 2, "recoveries": 0}
    assert status["errors"]["total"] == 6
    assert status["errors"]["by_source"] == {"message:c1": 2, "connect": 1, "rest:trade": 3}
    assert status["effective_fraction"] == pytest.approx(0.15)
    # One step per full quiet recovery_delay.
    clock.advance(59.9)
    assert limiter.rate_factor == 0.25
    clock.advance(0.1)
    assert limiter.rate_factor == 0.5
    clock.advance(60)
    assert limiter.rate_factor == 1.0
    clock.advance(600)
    assert limiter.rate_factor == 1.0
    assert limiter.status()["adjustments"] == {"reductions": 2, "recoveries": 2}
    assert limiter.acquire_message("c3") == 0.0
    assert limiter.status()["buckets"]["message.c2.1s"]["grants"] == 3


def test_an_error_during_recovery_restarts_the_quiet_period():
    clock = FakeClock()
    limiter = RateLimiter(RateLimitSettings(error_threshold=1, recovery_delay=60.0), clock)
    limiter.record_rate_limit_error("connect")
    assert limiter.rate_factor == pytest.approx(0.7)
    clock.advance(50)
    limiter.record_rate_limit_error("connect")
    assert limiter.rate_factor == pytest.approx(0.49)
    clock.advance(50)
    # 100 s after the first error, but only 50 s after the last one.
    assert limiter.rate_factor == pytest.approx(0.49)
    clock.advance(130)
    assert limiter.rate_factor == pytest.approx(1.0)


def test_sparse_errors_do_not_reduce_the_rate():
    clock = FakeClock()
    limiter = RateLimiter(RateLimitSettings(error_threshold=3, recovery_delay=60.0), clock)
    for _ in range(10):
        limiter.record_rate_limit_error("message:c1")
        clock.advance(60.0)
    assert limiter.rate_factor == 1.0
    assert limiter.status()["errors"]["total"] == 10
    assert limiter.status()["errors"]["streak"] == 1


def test_rate_factor_has_a_floor_and_dynamic_off_never_adjusts():
    clock = FakeClock()
    limiter = RateLimiter(RateLimitSettings(error_threshold=1, reduction_ratio=0.1), clock)
    for _ in range(5):
        limiter.record_rate_limit_error("connect")
    assert limiter.rate_factor == MIN_RATE_FACTOR
    assert limiter.status()["adjustments"]["reductions"] == 2
    static = RateLimiter(RateLimitSettings(dynamic=False, error_threshold=1), clock)
    for _ in range(5):
        static.record_rate_limit_error("connect")
    assert static.rate_factor == 1.0
    assert static.status()["errors"]["total"] == 5


def test_zero_recovery_delay_recovers_at_once():
    clock = FakeClock()
    limiter = RateLimiter(RateLimitSettings(error_threshold=1, recovery_delay=0.0), clock)
    limiter.record_rate_limit_error("connect")
    assert limiter.rate_factor == 1.0
    assert limiter.status()["adjustments"] == {"reductions": 1, "recoveries": 1}


def test_status_is_json_and_names_every_bucket():
    clock = FakeClock()
    limiter = RateLimiter(RateLimitSettings(strategy="balanced"), clock)
    limiter.acquire_message("pub-0")
    limiter.acquire_rest("trade")
    status = json.loads(json.dumps(limiter.status()))
    assert status["strategy"] == "balanced"
    assert status["margin"] == 0.8
    expected = {"connect", "message.pub-0.1s", "message.pub-0.60s"}
    expected |= {f"rest.{group}" for group in REST_LIMITS}
    assert set(status["buckets"]) == expected
    assert status["buckets"]["message.pub-0.60s"] == {
        "limit": "100/60s",
        "grants": 80,
        "window_s": pytest.approx(60.06),
        "used": 1,
        "available": 79,
        "next_in_s": 0.0,
    }


# -- concurrency and waiting -----------------------------------------------------------


def test_threads_sharing_a_connection_never_break_the_window():
    lock = threading.Lock()
    local = threading.local()
    state = {"now": 0.0}

    def clock():
        with lock:
            state["now"] += 0.0007
            local.last = state["now"]
            return state["now"]

    limiter = RateLimiter(RateLimitSettings(strategy="aggressive"), clock)
    granted: list[float] = []
    granted_lock = threading.Lock()

    def hammer():
        for _ in range(6000):
            if limiter.acquire_message("shared") == 0.0:
                with granted_lock:
                    granted.append(local.last)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
        assert not thread.is_alive()
    assert len(granted) > 20
    assert max_in_closed_window(granted, 1.0) <= 5
    assert max_in_closed_window(granted, 60.0) <= 100


def test_wait_for_grant_sleeps_the_answer_then_takes_the_grant():
    clock = FakeClock()
    limiter = RateLimiter(RateLimitSettings(), clock)
    stop = threading.Event()
    slept: list[float] = []

    def fake_sleep(event, seconds):
        slept.append(seconds)
        clock.advance(seconds)
        return event.is_set()

    for _ in range(3):
        assert wait_for_grant(lambda: limiter.acquire_message("c"), stop, clock=clock)
    assert wait_for_grant(lambda: limiter.acquire_message("c"), stop, clock=clock, sleep=fake_sleep)
    assert slept == [pytest.approx(1.0, rel=2e-3)]
    # The window slid past the first three grants: two more fit without waiting.
    assert limiter.acquire_message("c") == 0.0
    assert limiter.acquire_message("c") == 0.0
    # A timeout shorter than the wait gives up, having slept only the timeout.
    slept.clear()
    assert not wait_for_grant(
        lambda: limiter.acquire_message("c"), stop, timeout=0.25, clock=clock, sleep=fake_sleep
    )
    assert sum(slept) == pytest.approx(0.25)
    stop.set()
    assert not wait_for_grant(lambda: 0.0, stop)


def test_wait_for_grant_is_interrupted_by_stop():
    stop = threading.Event()
    result = {}
    started = threading.Event()

    def acquire():
        started.set()
        return 3600.0

    thread = threading.Thread(target=lambda: result.update(ok=wait_for_grant(acquire, stop)))
    thread.start()
    assert started.wait(timeout=5)
    stop.set()
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert result == {"ok": False}


def test_adjustments_and_bans_are_logged_as_key_value_lines(caplog):
    clock = FakeClock()
    limiter = RateLimiter(RateLimitSettings(error_threshold=1, recovery_delay=10.0), clock)
    with caplog.at_level("INFO", logger="feedhandler.ratelimit"):
        limiter.record_rate_limit_error("rest:trade")
        clock.advance(10.0)
        assert limiter.rate_factor == 1.0
        limiter.record_ban(30.0)
    messages = [record.getMessage() for record in caplog.records]
    assert messages[0] == "rate_factor_reduced factor=0.7000 source=rest:trade threshold=1"
    assert messages[1] == "rate_factor_recovered factor=1.0000 steps=1"
    assert "rest_ban seconds=30.000 bans=1" in messages
