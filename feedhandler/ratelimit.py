"""Client-side metering of Upbit's request limits, with dynamic slow-down after errors.

Upbit gives no remaining-count feedback over WebSocket, so the feed meters itself
(SPEC section 8 and 15.6). Every limit is published as "at most L requests per W
seconds"; the server's counting window is not documented, so the guarantee kept
here is the strongest one: **no closed window of W seconds ever holds more than L
grants**, whatever the strategy, the dynamic factor or the order of calls.

Why a sliding-window log and not a plain token bucket: a bucket of capacity 5
refilling at 5/s admits 5 at once and 5 more over the next second, i.e. 10 inside
one second. A bucket is window-safe only when ``capacity + rate * W <= L``, which
forces a burst of 1 with a rate of L-1. The log (:class:`SlidingWindowLimit`)
remembers the last L grant times and admits a request when the n-th most recent
grant is at least ``w`` seconds old. That allows a burst of ``n`` on a fresh
connection and is exact for every window.

Margins: the strategy keeps a fraction of each limit (conservative 0.6, balanced
0.8, aggressive 0.95) and the dynamic factor multiplies it further. The fraction
``f`` turns ``L per W`` into ``n = ceil(L*f)`` grants per ``w = W*n/(L*f)``
seconds (plus a 0.1 % edge guard). So the sustained rate is exactly ``f`` of the
limit, bursts never exceed ``n <= L``, and ``w > W`` always, which is what makes
closed windows of W safe even while ``f`` changes. The slack left for network
jitter is ``L - n`` requests per window for the lower strategies and ``w - W``
seconds for aggressive (about 53 ms on a 1 s limit).

All methods take the injected clock; one lock serialises the connection threads
and flushers that call the same :class:`RateLimiter`.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from feedhandler.backoff import sleep_interruptibly

log = logging.getLogger(__name__)

Clock = Callable[[], float]

STRATEGY_MARGINS: dict[str, float] = {"conservative": 0.6, "balanced": 0.8, "aggressive": 0.95}
# Below this the limiter would take minutes per message; errors at that pace mean
# something other than our rate is wrong, and slowing further would only hide it.
MIN_RATE_FACTOR = 0.05
# Widening each window by this fraction keeps two grants exactly one window apart
# out of a shared closed window, and absorbs float rounding in the derivation.
_EDGE_GUARD = 1e-3
# Waits shorter than this count as "now": after sleeping exactly the answer, float
# rounding can leave a sub-nanosecond remainder that a caller would chase for ever.
# It is a million times smaller than the edge guard, so no window gets wider for it.
_TIME_EPSILON = 1e-9

SOURCE_CONNECT = "connect"
SOURCE_MESSAGE = "message"
SOURCE_REST = "rest"
SOURCE_BAN = "ban"


@dataclass(frozen=True, slots=True)
class ExchangeLimit:
    """An exchange rule: at most ``count`` requests in any ``window`` seconds."""

    count: int
    window: float

    def __post_init__(self) -> None:
        if self.count < 1 or not self.window > 0:
            raise ValueError(f"exchange limit needs count >= 1 and window > 0, got {self}")


WS_CONNECT_LIMIT = ExchangeLimit(5, 1.0)
WS_MESSAGE_LIMITS: tuple[ExchangeLimit, ...] = (ExchangeLimit(5, 1.0), ExchangeLimit(100, 60.0))
REST_LIMITS: dict[str, ExchangeLimit] = {
    "market": ExchangeLimit(10, 1.0),
    "candle": ExchangeLimit(10, 1.0),
    "trade": ExchangeLimit(10, 1.0),
    "ticker": ExchangeLimit(10, 1.0),
    "orderbook": ExchangeLimit(10, 1.0),
    "default": ExchangeLimit(30, 1.0),
    "order": ExchangeLimit(12, 1.0),
    "order-test": ExchangeLimit(8, 1.0),
    "order-cancel-all": ExchangeLimit(1, 2.0),
}


def scaled_window(limit: ExchangeLimit, fraction: float) -> tuple[int, float]:
    """The (grants, seconds) pair that keeps ``fraction`` of ``limit``.

    The result admits at most ``grants <= limit.count`` per ``seconds > limit.window``,
    so the sustained rate is ``fraction`` of the exchange rate (within the edge guard).
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"rate fraction must be in (0, 1], got {fraction}")
    allowed = limit.count * fraction
    # The 1e-9 keeps 5 * 0.6 == 3.0000000000000004 from rounding up to 4.
    grants = min(limit.count, max(1, math.ceil(allowed - 1e-9)))
    seconds = max(limit.window, limit.window * grants / allowed) * (1 + _EDGE_GUARD)
    return grants, seconds


class SlidingWindowLimit:
    """At most ``grants`` grants in any ``seconds`` window, time passed in by the caller.

    Keeps the last ``limit.count`` grant times (the most any setting can look back),
    so :meth:`set_fraction` may tighten or relax the window without losing history.
    Not thread-safe on its own: :class:`RateLimiter` calls it under its lock.
    """

    __slots__ = ("_blocked_until", "_grants", "_log", "_seconds", "limit")

    def __init__(self, limit: ExchangeLimit, fraction: float = 1.0) -> None:
        self.limit = limit
        self._log: deque[float] = deque(maxlen=limit.count)
        self._blocked_until = -math.inf
        self._grants, self._seconds = scaled_window(limit, fraction)

    def set_fraction(self, fraction: float) -> None:
        self._grants, self._seconds = scaled_window(self.limit, fraction)

    @property
    def grants(self) -> int:
        return self._grants

    @property
    def seconds(self) -> float:
        return self._seconds

    def delay(self, now: float) -> float:
        """Seconds until one more grant fits; 0.0 when it fits now."""
        wait = self._blocked_until - now
        if len(self._log) >= self._grants:
            wait = max(wait, self._log[-self._grants] + self._seconds - now)
        return wait if wait > _TIME_EPSILON else 0.0

    def record(self, now: float) -> None:
        self._log.append(now)

    def try_acquire(self, now: float) -> bool:
        if self.delay(now) > 0:
            return False
        self._log.append(now)
        return True

    def pause(self, now: float, seconds: float) -> None:
        """Grant nothing for ``seconds`` (the exchange told us we are over the limit)."""
        self._blocked_until = max(self._blocked_until, now + seconds)

    def used(self, now: float) -> int:
        """Grants inside the current window ending at ``now``."""
        start = now - self._seconds
        return sum(1 for t in self._log if t > start)

    def status(self, now: float) -> dict[str, Any]:
        used = min(self.used(now), self._grants)
        return {
            "limit": f"{self.limit.count}/{self.limit.window:g}s",
            "grants": self._grants,
            "window_s": round(self._seconds, 6),
            "used": used,
            "available": self._grants - used if self._blocked_until <= now else 0,
            "next_in_s": round(self.delay(now), 6),
        }


class TokenBucket:
    """Classic token bucket: ``rate`` tokens per second up to ``capacity``.

    In any window of t seconds it admits at most ``capacity + rate * t`` tokens
    (starting full), so it is the right tool where bursts matter more than exact
    windows (pacing, log throttling). Exchange rules go through
    :class:`SlidingWindowLimit` instead, for the reason in the module docstring.
    Thread-safe.
    """

    __slots__ = ("_capacity", "_clock", "_last", "_lock", "_rate", "_tokens")

    def __init__(
        self,
        rate: float,
        capacity: float,
        clock: Clock = time.monotonic,
        *,
        initial: float | None = None,
    ) -> None:
        if not rate > 0 or not capacity > 0:
            raise ValueError(
                f"token bucket needs rate > 0 and capacity > 0, got {rate}, {capacity}"
            )
        self._rate = float(rate)
        self._capacity = float(capacity)
        self._clock = clock
        self._tokens = self._capacity if initial is None else min(float(initial), self._capacity)
        self._last = clock()
        self._lock = threading.Lock()

    @property
    def rate(self) -> float:
        return self._rate

    @property
    def capacity(self) -> float:
        return self._capacity

    def _refill(self) -> float:
        now = self._clock()
        elapsed = now - self._last
        if elapsed > 0:
            self._tokens = min(self._capacity, self._tokens + elapsed * self._rate)
        self._last = now
        return self._tokens

    def tokens(self) -> float:
        with self._lock:
            return self._refill()

    def try_acquire(self, n: float = 1.0) -> bool:
        self._check_amount(n)
        with self._lock:
            if self._refill() >= n - _TIME_EPSILON * self._rate:
                self._tokens = max(0.0, self._tokens - n)
                return True
            return False

    def delay(self, n: float = 1.0) -> float:
        """Seconds until ``n`` tokens are available; 0.0 when they are now. Takes nothing."""
        self._check_amount(n)
        with self._lock:
            wait = (n - self._refill()) / self._rate
            return wait if wait > _TIME_EPSILON else 0.0

    def set_rate(self, rate: float) -> None:
        """Change the refill rate; tokens earned so far are kept."""
        if not rate > 0:
            raise ValueError(f"token bucket rate must be > 0, got {rate}")
        with self._lock:
            self._refill()
            self._rate = float(rate)

    def _check_amount(self, n: float) -> None:
        if not 0 < n <= self._capacity:
            raise ValueError(f"cannot take {n} tokens from a bucket of capacity {self._capacity}")


@dataclass(frozen=True, slots=True)
class RateLimitSettings:
    """How hard to push against the exchange limits.

    ``error_threshold`` rate-limit errors in a streak (consecutive errors with less
    than ``recovery_delay`` seconds between each and the next) multiply the rate
    factor by ``reduction_ratio``; each full ``recovery_delay`` without an error
    divides it back by ``reduction_ratio``, up to 1.0.
    """

    enabled: bool = True
    dynamic: bool = True
    strategy: str = "conservative"
    error_threshold: int = 3
    reduction_ratio: float = 0.7
    recovery_delay: float = 60.0

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGY_MARGINS:
            raise ValueError(
                f"rate limit strategy must be one of {', '.join(STRATEGY_MARGINS)}, "
                f"got {self.strategy!r}"
            )
        if self.error_threshold < 1:
            raise ValueError(f"error_threshold must be >= 1, got {self.error_threshold}")
        if not 0 < self.reduction_ratio < 1:
            raise ValueError(f"reduction_ratio must be in (0, 1), got {self.reduction_ratio}")
        if not self.recovery_delay >= 0:
            raise ValueError(f"recovery_delay must be >= 0, got {self.recovery_delay}")

    @property
    def margin(self) -> float:
        return STRATEGY_MARGINS[self.strategy]


class RateLimiter:
    """Meters WebSocket connects, WebSocket messages per connection and REST groups.

    Each ``acquire_*`` returns the seconds to wait: 0.0 means granted now (the
    request is counted); anything else counts nothing, so the caller sleeps and
    asks again. With ``enabled=False`` nothing is metered, but a REST ban
    (HTTP 418) is still honoured because sending during a ban lengthens it.
    """

    def __init__(self, settings: RateLimitSettings, clock: Clock = time.monotonic) -> None:
        self._settings = settings
        self._clock = clock
        self._lock = threading.Lock()
        self._factor = 1.0
        self._connect = SlidingWindowLimit(WS_CONNECT_LIMIT, settings.margin)
        self._rest = {
            group: SlidingWindowLimit(limit, settings.margin)
            for group, limit in REST_LIMITS.items()
        }
        self._messages: dict[str, tuple[SlidingWindowLimit, ...]] = {}
        self._ban_until = -math.inf
        self._bans = 0
        self._errors_total = 0
        self._errors_by_source: dict[str, int] = {}
        self._streak = 0
        self._last_error_at = -math.inf
        self._calm_since = -math.inf
        self._reductions = 0
        self._recoveries = 0

    @property
    def settings(self) -> RateLimitSettings:
        return self._settings

    @property
    def rate_factor(self) -> float:
        with self._lock:
            self._recover(self._clock())
            return self._factor

    def acquire_connect(self) -> float:
        if not self._settings.enabled:
            return 0.0
        with self._lock:
            now = self._clock()
            self._recover(now)
            wait = self._connect.delay(now)
            if wait == 0.0:
                self._connect.record(now)
            return wait

    def acquire_message(self, conn_id: str) -> float:
        if not self._settings.enabled:
            return 0.0
        with self._lock:
            now = self._clock()
            self._recover(now)
            limits = self._messages.get(conn_id)
            if limits is None:
                fraction = self._fraction()
                limits = tuple(SlidingWindowLimit(lim, fraction) for lim in WS_MESSAGE_LIMITS)
                self._messages[conn_id] = limits
            wait = max(limit.delay(now) for limit in limits)
            if wait == 0.0:
                for limit in limits:
                    limit.record(now)
            return wait

    def acquire_rest(self, group: str) -> float:
        limit = self._rest.get(group)
        if limit is None:
            raise ValueError(
                f"unknown Upbit REST rate-limit group {group!r}; expected one of "
                f"{', '.join(REST_LIMITS)}"
            )
        with self._lock:
            now = self._clock()
            if self._ban_until > now:
                return self._ban_until - now
            if not self._settings.enabled:
                return 0.0
            self._recover(now)
            wait = limit.delay(now)
            if wait == 0.0:
                limit.record(now)
            return wait

    def record_rate_limit_error(self, source: str) -> None:
        """Count a rate-limit error: a WebSocket error frame, a REST 429, a handshake 429.

        ``source`` is ``"connect"``, ``"message:<conn_id>"`` or ``"rest:<group>"``; the
        named limits are paused for their shortest window (SPEC 15.6: stop the whole
        group until the next second). Any other text is only counted, under its name.
        """
        with self._lock:
            now = self._clock()
            kind, _, name = source.partition(":")
            paused: tuple[SlidingWindowLimit, ...] = ()
            if kind == SOURCE_CONNECT:
                paused = (self._connect,)
            elif kind == SOURCE_REST and name in self._rest:
                paused = (self._rest[name],)
            elif kind == SOURCE_MESSAGE and name in self._messages:
                paused = self._messages[name]
            if paused:
                # The shortest window: we cannot tell which of 5/s and 100/min was hit,
                # and the minute budget already spaces the next sends.
                seconds = min(limit.limit.window for limit in paused)
                for limit in paused:
                    limit.pause(now, seconds)
            self._count_error(now, source)

    def record_ban(self, seconds: float) -> None:
        """REST 418: block every REST group for ``seconds`` (also counted as an error)."""
        with self._lock:
            now = self._clock()
            self._ban_until = max(self._ban_until, now + max(0.0, seconds))
            self._bans += 1
            log.warning("rest_ban seconds=%.3f bans=%d", seconds, self._bans)
            self._count_error(now, f"{SOURCE_REST}:{SOURCE_BAN}")

    def forget_connection(self, conn_id: str) -> None:
        with self._lock:
            self._messages.pop(conn_id, None)

    def status(self) -> dict[str, Any]:
        with self._lock:
            now = self._clock()
            self._recover(now)
            buckets: dict[str, Any] = {"connect": self._connect.status(now)}
            for group, limit in self._rest.items():
                buckets[f"rest.{group}"] = limit.status(now)
            for conn_id, limits in self._messages.items():
                for limit in limits:
                    buckets[f"message.{conn_id}.{limit.limit.window:g}s"] = limit.status(now)
            return {
                "enabled": self._settings.enabled,
                "dynamic": self._settings.dynamic,
                "strategy": self._settings.strategy,
                "margin": self._settings.margin,
                "rate_factor": round(self._factor, 6),
                "effective_fraction": round(self._fraction(), 6),
                "errors": {
                    "total": self._errors_total,
                    "streak": self._streak,
                    "by_source": dict(self._errors_by_source),
                },
                "adjustments": {"reductions": self._reductions, "recoveries": self._recoveries},
                "bans": self._bans,
                "ban_remaining_s": round(max(0.0, self._ban_until - now), 6),
                "buckets": buckets,
            }

    def _fraction(self) -> float:
        return self._settings.margin * self._factor

    def _count_error(self, now: float, source: str) -> None:
        self._errors_total += 1
        self._errors_by_source[source] = self._errors_by_source.get(source, 0) + 1
        settings = self._settings
        self._recover(now)
        if now - self._last_error_at >= settings.recovery_delay:
            self._streak = 0
        self._last_error_at = now
        self._calm_since = now
        self._streak += 1
        if not settings.dynamic or self._streak < settings.error_threshold:
            return
        self._streak = 0
        reduced = max(MIN_RATE_FACTOR, self._factor * settings.reduction_ratio)
        if reduced >= self._factor:
            log.warning("rate_factor_at_floor factor=%.4f source=%s", self._factor, source)
            return
        self._factor = reduced
        self._reductions += 1
        self._apply_fraction()
        log.warning(
            "rate_factor_reduced factor=%.4f source=%s threshold=%d",
            reduced,
            source,
            settings.error_threshold,
        )

    def _recover(self, now: float) -> None:
        if self._factor >= 1.0:
            return
        delay = self._settings.recovery_delay
        calm = now - self._calm_since
        if calm < delay:
            return
        steps = math.inf if delay <= 0 else math.floor(calm / delay)
        factor = self._factor
        taken = 0
        while factor < 1.0 and taken < steps:
            factor = min(1.0, factor / self._settings.reduction_ratio)
            taken += 1
        self._factor = factor
        self._recoveries += taken
        self._calm_since = now if delay <= 0 else self._calm_since + taken * delay
        self._apply_fraction()
        log.info("rate_factor_recovered factor=%.4f steps=%d", factor, taken)

    def _apply_fraction(self) -> None:
        fraction = self._fraction()
        self._connect.set_fraction(fraction)
        for limit in self._rest.values():
            limit.set_fraction(fraction)
        for limits in self._messages.values():
            for limit in limits:
                limit.set_fraction(fraction)


def wait_for_grant(
    acquire: Callable[[], float],
    stop: threading.Event,
    *,
    timeout: float | None = None,
    clock: Clock = time.monotonic,
    sleep: Callable[[threading.Event, float], bool] = sleep_interruptibly,
) -> bool:
    """Ask ``acquire`` until it grants (True), ``stop`` is set or ``timeout`` passes (False).

    ``acquire`` is one of the :class:`RateLimiter` methods bound to its argument, e.g.
    ``lambda: limiter.acquire_message(conn_id)``.
    """
    deadline = None if timeout is None else clock() + timeout
    while not stop.is_set():
        wait = acquire()
        if wait <= 0:
            return True
        if deadline is not None:
            remaining = deadline - clock()
            if remaining <= 0:
                return False
            wait = min(wait, remaining)
        if sleep(stop, wait):
            return False
    return False
