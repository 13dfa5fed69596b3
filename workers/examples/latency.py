"""LatencyProbe: wire-to-worker latency percentiles of the trade stream.

The latency of a trade is now minus its upstream send stamp (``origin_ns``, set by the
simulator) when there is one, else minus the feed's receive time (``recv_ns``). All
stamps are wall-clock nanoseconds on the same host.

    python -m workers run workers.examples.latency:LatencyProbe --symbols KRW-BTC
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np

from workers.events import Trade
from workers.worker import Worker

MAX_SAMPLES = 100_000


class LatencyProbe(Worker):
    """Keeps the last :data:`MAX_SAMPLES` latencies; :meth:`percentiles` in microseconds."""

    types: ClassVar[tuple[str, ...]] = ("trade",)
    timer_interval_s: ClassVar[float] = 1.0
    clock_ns: ClassVar[Callable[[], int]] = staticmethod(time.time_ns)

    def __init__(self, symbols: Sequence[str], **options: Any) -> None:
        super().__init__(symbols, **options)
        self.samples_ns: deque[int] = deque(maxlen=MAX_SAMPLES)
        self.from_origin = 0
        self.from_recv = 0

    def on_trade(self, event: Trade) -> None:
        now = self.clock_ns()
        message = self.current
        assert message is not None
        if message.origin_ns:
            self.samples_ns.append(now - message.origin_ns)
            self.from_origin += 1
        else:
            self.samples_ns.append(now - message.recv_ns)
            self.from_recv += 1

    def percentiles(self) -> dict[str, Any]:
        if not self.samples_ns:
            return {"n": 0, "p50_us": None, "p99_us": None, "max_us": None}
        values = np.fromiter(self.samples_ns, dtype=np.int64, count=len(self.samples_ns))
        p50, p99 = np.percentile(values, [50, 99])
        return {
            "n": int(values.size),
            "p50_us": float(p50) / 1e3,
            "p99_us": float(p99) / 1e3,
            "max_us": float(values.max()) / 1e3,
        }

    def summary(self) -> str:
        stats = self.percentiles()
        if not stats["n"]:
            return "latency n=0"
        source = "origin" if self.from_origin >= self.from_recv else "recv"
        return (
            f"latency n={stats['n']} p50={stats['p50_us']:.1f}us p99={stats['p99_us']:.1f}us "
            f"max={stats['max_us']:.1f}us from={source}"
        )

    def on_timer(self) -> None:
        print(self.summary(), flush=True)

    def on_stop(self) -> None:
        print(self.summary(), flush=True)
