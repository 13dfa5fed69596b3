"""Health of each upstream connection and of the feed process.

A :class:`ConnectionHealth` belongs to one connection thread, which is its only
writer: the ``on_*`` methods are plain attribute updates (``on_messages`` is one
add and one clock read) and take no lock. :meth:`ConnectionHealth.snapshot` may
run on any thread; it computes rates and the score lazily and tolerates reading
counters that move while it runs.

Health score, in [0, 1]::

    score = 0                                          if not connected
    score = t(consecutive_errors, consecutive_errors threshold)
          * t(silence, inactive_seconds)               (only while subscribed)
          * t(recent reconnects, reconnect_count)
    t(x, limit) = max(0, 1 - x / (2 * limit))

Each term is 1 when healthy, 0.5 exactly at its threshold and 0 at twice the
threshold, so crossing any single threshold puts the score at or below 0.5, under
the default ``health_score`` warning level of 0.8. ``silence`` is the time since
the last data frame, the connection or the subscription, whichever is latest; for
a connection that does not expect steady data (the private one, quiet until an
order event) pongs count as activity too. Reconnects count over a sliding
``reconnect_window_seconds`` so that a feed running for weeks is not marked down
for ever by a handful of old reconnects.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psutil

Clock = Callable[[], float]

# The message rate is averaged over at least this long, so a snapshot polled
# every 100 ms does not report a jumpy per-batch rate.
RATE_WINDOW_SECONDS = 5.0
# Samples closer than this are not kept, so a fast poller cannot grow the list.
_RATE_SAMPLE_SPACING = RATE_WINDOW_SECONDS / 10
_MAX_RECONNECT_TIMES = 1024


@dataclass(frozen=True, slots=True)
class HealthThresholds:
    """Where a connection or the process starts to count as unhealthy."""

    health_score: float = 0.8
    consecutive_errors: int = 3
    inactive_seconds: float = 120.0
    memory_usage_mb: float = 100.0
    reconnect_count: int = 5
    stall_seconds: float = 10.0
    reconnect_window_seconds: float = 3600.0

    def __post_init__(self) -> None:
        if not 0 <= self.health_score <= 1:
            raise ValueError(f"health_score threshold must be in [0, 1], got {self.health_score}")
        for name in ("consecutive_errors", "reconnect_count"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} threshold must be >= 1, got {getattr(self, name)}")
        for name in (
            "inactive_seconds",
            "memory_usage_mb",
            "stall_seconds",
            "reconnect_window_seconds",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} threshold must be > 0, got {getattr(self, name)}")


def _term(value: float, limit: float) -> float:
    return max(0.0, 1.0 - value / (2.0 * limit))


class ConnectionHealth:
    """Counters, liveness and a health score for one upstream connection."""

    def __init__(
        self,
        name: str,
        thresholds: HealthThresholds | None = None,
        clock: Clock = time.monotonic,
        *,
        expects_data: bool = True,
    ) -> None:
        self.name = name
        self.thresholds = thresholds if thresholds is not None else HealthThresholds()
        self.expects_data = expects_data
        self._clock = clock
        now = clock()
        self._created_at = now
        self.connected = False
        self._connected_at = -math.inf
        self._subscribed = False
        self._subscribed_at = -math.inf
        self.messages_total = 0
        self._last_message_at = -math.inf
        self._last_pong_at = -math.inf
        self.errors = 0
        self.errors_by_kind: dict[str, int] = {}
        self.consecutive_errors = 0
        self.last_error_kind: str | None = None
        self.reconnects = 0
        self._reconnect_times: deque[float] = deque(maxlen=_MAX_RECONNECT_TIMES)
        self.disconnects = 0
        self.last_disconnect_reason: str | None = None
        self._rate_lock = threading.Lock()
        self._rate_samples: deque[tuple[float, int]] = deque([(now, 0)])

    # -- events, called by the owning connection thread ------------------------------

    def on_connected(self) -> None:
        self.connected = True
        self._connected_at = self._clock()

    def on_disconnected(self, reason: str) -> None:
        self.connected = False
        self.disconnects += 1
        self.last_disconnect_reason = reason

    def on_messages(self, n: int) -> None:
        self.messages_total += n
        self._last_message_at = self._clock()

    def on_pong(self) -> None:
        self._last_pong_at = self._clock()

    def on_error(self, kind: str) -> None:
        self.errors += 1
        self.consecutive_errors += 1
        self.errors_by_kind[kind] = self.errors_by_kind.get(kind, 0) + 1
        self.last_error_kind = kind

    def on_success(self) -> None:
        self.consecutive_errors = 0

    def on_reconnect(self) -> None:
        self.reconnects += 1
        self._reconnect_times.append(self._clock())

    @property
    def subscribed(self) -> bool:
        return self._subscribed

    @subscribed.setter
    def subscribed(self, value: bool) -> None:
        if value and not self._subscribed:
            self._subscribed_at = self._clock()
        self._subscribed = value

    # -- derived state, any thread ---------------------------------------------------

    def silence(self, now: float | None = None) -> float:
        """Seconds since the last sign of life (data, connect, subscribe; pongs if quiet)."""
        if now is None:
            now = self._clock()
        last = max(self._last_message_at, self._connected_at, self._subscribed_at)
        if not self.expects_data:
            last = max(last, self._last_pong_at)
        return now - last if last > -math.inf else now - self._created_at

    def is_stalled(self) -> bool:
        """Subscribed, connected, expecting data, and no data for ``stall_seconds``."""
        return (
            self.expects_data
            and self._subscribed
            and self.connected
            and self.silence() >= self.thresholds.stall_seconds
        )

    def recent_reconnects(self, now: float | None = None) -> int:
        if now is None:
            now = self._clock()
        start = now - self.thresholds.reconnect_window_seconds
        return sum(1 for t in tuple(self._reconnect_times) if t > start)

    def health_score(self, now: float | None = None) -> float:
        if now is None:
            now = self._clock()
        if not self.connected:
            return 0.0
        th = self.thresholds
        score = _term(self.consecutive_errors, th.consecutive_errors)
        if self._subscribed:
            score *= _term(self.silence(now), th.inactive_seconds)
        return score * _term(self.recent_reconnects(now), th.reconnect_count)

    def _messages_per_s(self, now: float, total: int) -> float:
        with self._rate_lock:
            samples = self._rate_samples
            # Drop samples once a newer one is itself old enough to be the base.
            while len(samples) > 1 and now - samples[1][0] >= RATE_WINDOW_SECONDS:
                samples.popleft()
            base_t, base_total = samples[0]
            if now - samples[-1][0] >= _RATE_SAMPLE_SPACING:
                samples.append((now, total))
        elapsed = now - base_t
        return (total - base_total) / elapsed if elapsed > 0 else 0.0

    def snapshot(self) -> dict[str, Any]:
        """A JSON-able view of the counters, rates, score and threshold warnings.

        ``messages_per_s`` averages from the newest earlier snapshot that is at least
        ``RATE_WINDOW_SECONDS`` old (or from creation), so it tracks the recent pace at
        any polling interval.
        """
        now = self._clock()
        th = self.thresholds
        total = self.messages_total
        rate = self._messages_per_s(now, total)
        score = self.health_score(now)
        silence = self.silence(now)
        recent = self.recent_reconnects(now)
        last_message_age = (
            now - self._last_message_at if self._last_message_at > -math.inf else None
        )
        warnings: list[str] = []
        if score < th.health_score:
            warnings.append(f"health_score {score:.2f} < {th.health_score:g}")
        if self.consecutive_errors >= th.consecutive_errors:
            warnings.append(
                f"consecutive_errors {self.consecutive_errors} >= {th.consecutive_errors}"
            )
        if self.connected and self._subscribed and silence > th.inactive_seconds:
            warnings.append(f"inactive {silence:.1f}s > {th.inactive_seconds:g}s")
        if recent >= th.reconnect_count:
            warnings.append(
                f"reconnects {recent} >= {th.reconnect_count} "
                f"in the last {th.reconnect_window_seconds:g}s"
            )
        return {
            "name": self.name,
            "connected": self.connected,
            "subscribed": self._subscribed,
            "messages_total": total,
            "messages_per_s": round(rate, 3),
            "last_message_age_s": None if last_message_age is None else round(last_message_age, 3),
            "silence_s": round(silence, 3),
            "stalled": self.is_stalled(),
            "errors": self.errors,
            "errors_by_kind": dict(self.errors_by_kind),
            "consecutive_errors": self.consecutive_errors,
            "reconnects": self.reconnects,
            "recent_reconnects": recent,
            "disconnects": self.disconnects,
            "last_disconnect_reason": self.last_disconnect_reason,
            "uptime_s": round(now - self._connected_at, 3) if self.connected else 0.0,
            "health_score": round(score, 4),
            "warnings": warnings,
        }


_process_lock = threading.Lock()
_process: psutil.Process | None = None


def _current_process() -> psutil.Process:
    """The psutil handle for this process, kept so cpu_percent measures between calls."""
    global _process  # noqa: PLW0603 - one handle per process, replaced after a fork
    with _process_lock:
        if _process is None or _process.pid != os.getpid():
            _process = psutil.Process()
            _process.cpu_percent(None)
        return _process


def process_health(memory_limit_mb: float) -> dict[str, Any]:
    """RSS, CPU and thread count of this process, with a warning above ``memory_limit_mb``.

    ``cpu_percent`` covers the time since the previous call (0.0 on the first call).
    """
    proc = _current_process()
    with proc.oneshot():
        rss_mb = proc.memory_info().rss / (1024 * 1024)
        cpu = proc.cpu_percent(None)
        threads = proc.num_threads()
    warnings = []
    if rss_mb > memory_limit_mb:
        warnings.append(f"rss {rss_mb:.1f}MB > {memory_limit_mb:g}MB")
    return {
        "pid": proc.pid,
        "rss_mb": round(rss_mb, 2),
        "cpu_percent": cpu,
        "threads": threads,
        "memory_limit_mb": memory_limit_mb,
        "warnings": warnings,
    }
