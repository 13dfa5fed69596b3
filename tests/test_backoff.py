import random
import threading

import pytest

from feedhandler.backoff import (
    Backoff,
    backoff_delay,
    jittered,
    nominal_delay,
    sleep_interruptibly,
)


def test_nominal_delays_grow_then_cap():
    delays = [
        backoff_delay(n, base=1.0, factor=2.0, cap=30.0, jitter=False, rng=random.Random(0))
        for n in range(8)
    ]
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


def test_huge_attempt_and_flat_factor():
    assert nominal_delay(100_000, base=0.5, factor=2.0, cap=30.0) == 30.0
    assert nominal_delay(100_000, base=0.5, factor=1.0, cap=30.0) == 0.5
    assert nominal_delay(3, base=0.0, factor=2.0, cap=30.0) == 0.0


def test_invalid_arguments_are_rejected():
    with pytest.raises(ValueError, match="attempt must be >= 0"):
        nominal_delay(-1, base=1.0, factor=2.0, cap=30.0)
    with pytest.raises(ValueError, match="factor must be >= 1"):
        nominal_delay(0, base=1.0, factor=0.5, cap=30.0)
    with pytest.raises(ValueError, match="base and cap"):
        Backoff(base=-1.0)
    with pytest.raises(ValueError, match="max_attempts"):
        Backoff(max_attempts=0)


@pytest.mark.parametrize("attempt", range(7))
def test_jitter_stays_in_half_to_one_and_a_half_and_never_above_cap(attempt):
    rng = random.Random(attempt)
    nominal = nominal_delay(attempt, base=1.0, factor=2.0, cap=30.0)
    draws = [
        backoff_delay(attempt, base=1.0, factor=2.0, cap=30.0, jitter=True, rng=rng)
        for _ in range(2000)
    ]
    assert min(draws) >= 0.5 * nominal
    assert max(draws) <= min(1.5 * nominal, 30.0)
    # The draws spread over the range rather than sitting on one value.
    high = min(1.5 * nominal, 30.0)
    assert min(draws) < 0.5 * nominal + 0.05 * (high - 0.5 * nominal)
    assert max(draws) > high - 0.05 * (high - 0.5 * nominal)
    assert draws.count(30.0) <= 1


def test_jitter_at_the_cap_has_no_pile_up():
    rng = random.Random(5)
    draws = [jittered(30.0, 30.0, rng) for _ in range(1000)]
    assert all(15.0 <= d <= 30.0 for d in draws)
    assert len(set(draws)) == 1000


def test_same_seed_same_delays():
    first = Backoff(rng=random.Random(42))
    second = Backoff(rng=random.Random(42))
    assert [first.next_delay() for _ in range(10)] == [second.next_delay() for _ in range(10)]


def test_backoff_counts_attempts_exhausts_and_resets():
    backoff = Backoff(base=1.0, factor=2.0, cap=10.0, jitter=False, max_attempts=3)
    assert not backoff.exhausted
    assert [backoff.next_delay() for _ in range(3)] == [1.0, 2.0, 4.0]
    assert backoff.attempts == 3
    assert backoff.exhausted
    # Past max_attempts it keeps answering the cap, not the next exponential step.
    assert [backoff.next_delay() for _ in range(3)] == [10.0, 10.0, 10.0]
    backoff.reset()
    assert backoff.attempts == 0
    assert not backoff.exhausted
    assert backoff.next_delay() == 1.0
    assert "attempts=1/3" in repr(backoff)


def test_exhausted_backoff_jitters_around_the_cap():
    backoff = Backoff(
        base=1.0, factor=2.0, cap=8.0, jitter=True, max_attempts=1, rng=random.Random(9)
    )
    first = backoff.next_delay()
    assert 0.5 <= first <= 1.5
    later = [backoff.next_delay() for _ in range(200)]
    assert all(4.0 <= d <= 8.0 for d in later)
    assert len(set(later)) > 100


def test_sleep_interruptibly_returns_at_once_when_stopped_or_zero():
    event = threading.Event()
    assert sleep_interruptibly(event, 0.0) is False
    assert sleep_interruptibly(event, -1.0) is False
    event.set()
    assert sleep_interruptibly(event, 3600.0) is True
    assert sleep_interruptibly(event, 0.0) is True


def test_sleep_interruptibly_is_cut_short_by_stop():
    event = threading.Event()
    waiting = threading.Event()
    result = {}

    def sleeper():
        waiting.set()
        result["stopped"] = sleep_interruptibly(event, 3600.0)

    thread = threading.Thread(target=sleeper)
    thread.start()
    assert waiting.wait(timeout=5)
    event.set()
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert result == {"stopped": True}
