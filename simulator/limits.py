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

    def allow(self, now: float) -> bool:
        times = self._times
        while times and now - times[0] >= self.period:
            times.popleft()
        if len(times) >= self.limit:
            return False
        times.append(now)
        return True


class WindowSet:
    """Several windows that must all allow an event (e.g. 5 per second and 100 per minute)."""

    __slots__ = ("windows",)

    def __init__(self, *limits: tuple[int, float]) -> None:
        self.windows = [SlidingWindow(limit, period) for limit, period in limits]

    def allow(self, now: float) -> bool:
        for window in self.windows:
            times = window._times
            while times and now - times[0] >= window.period:
                times.popleft()
            if len(times) >= window.limit:
                return False
        for window in self.windows:
            window._times.append(now)
        return True
