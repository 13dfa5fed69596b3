"""Rate-limit bookkeeping with an injected clock (seconds, monotonic)."""

from __future__ import annotations

from collections import deque


class SlidingWindow:
    """At most ``limit`` events in any ``period`` seconds; rejected events do not count."""

    __slots__ = ("_times", "limit", "period")

    def __init__(self, limit: int, period: float) -> None:
        if limit < 1 or period <= 0:
            raise ValueError(f"a window needs limit >= 1 and period > 0, got {limit}/{period}")
        self.limit = limit
        self.period = period
        self._times: deque[float] = deque()

    def _purge(self, now: float) -> None:
        times = self._times
        while times and now - times[0] >= self.period:
            times.popleft()

    def full(self, now: float) -> bool:
        self._purge(now)
        return len(self._times) >= self.limit

    def remaining(self, now: float) -> int:
        self._purge(now)
        return self.limit - len(self._times)

    def record(self, now: float) -> None:
        self._times.append(now)

    def allow(self, now: float) -> bool:
        """Record the event and return True if the window has room; else False."""
        if self.full(now):
            return False
        self.record(now)
        return True


class WindowSet:
    """Several windows that must all allow an event (e.g. 5 per second and 100 per minute)."""

    __slots__ = ("windows",)

    def __init__(self, *limits: tuple[int, float]) -> None:
        self.windows = [SlidingWindow(limit, period) for limit, period in limits]

    def allow(self, now: float) -> bool:
        if any(window.full(now) for window in self.windows):
            return False
        for window in self.windows:
            window.record(now)
        return True
