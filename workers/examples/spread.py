"""SpreadMonitor: mid price and spread of each symbol's best level, read from shm order books.

python -m workers run workers.examples.spread:SpreadMonitor --symbols KRW-BTC,KRW-ETH
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from workers.worker import Worker


@dataclass(frozen=True, slots=True)
class BookTop:
    bid: float
    ask: float
    mid: float
    spread: float
    spread_bps: float
    recv_ns: int


class SpreadMonitor(Worker):
    """Keeps :attr:`tops` (code -> :class:`BookTop`) and prints a line every second."""

    types: ClassVar[tuple[str, ...]] = ("orderbook",)
    orderbook_depth: ClassVar[int | None] = 1
    timer_interval_s: ClassVar[float] = 1.0

    def __init__(self, symbols: Sequence[str], **options: Any) -> None:
        super().__init__(symbols, **options)
        self.tops: dict[str, BookTop] = {}
        self.updates = 0
        self.crossed = 0

    def on_orderbook(self, code: str, record: Any) -> None:
        if int(record["n_levels"]) == 0:
            return
        best = record["levels"][0]
        bid, ask = float(best["bid_price"]), float(best["ask_price"])
        if not (bid > 0 and ask > 0 and math.isfinite(bid) and math.isfinite(ask)):
            return
        if ask < bid:
            self.crossed += 1
        mid = (bid + ask) / 2
        spread = ask - bid
        self.tops[code] = BookTop(bid, ask, mid, spread, spread / mid * 1e4, int(record["recv_ns"]))
        self.updates += 1

    def summary(self) -> str:
        parts = [
            f"{code} mid={top.mid:.8g} spread={top.spread:.8g} ({top.spread_bps:.2f}bp)"
            for code, top in sorted(self.tops.items())
        ]
        return f"spread updates={self.updates} " + (" | ".join(parts) or "no books yet")

    def on_timer(self) -> None:
        print(self.summary(), flush=True)

    def on_stop(self) -> None:
        print(self.summary(), flush=True)
