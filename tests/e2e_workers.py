"""Workers used by the end-to-end tests: they write what they receive to a file."""

from __future__ import annotations

import os
import time
from typing import Any

from workers import Trade, Worker


class TradeRecorder(Worker):
    """Appends ``<code> <sequential_id>`` per trade to $RECORD_PATH."""

    types = ("trade",)

    def on_start(self) -> None:
        self._out = open(os.environ["RECORD_PATH"], "a", buffering=1)  # noqa: SIM115

    def on_trade(self, event: Trade) -> None:
        self._out.write(f"{event.code} {event.sequential_id}\n")

    def on_gap(self, expected_seq: int, got_seq: int) -> None:
        self._out.write(f"GAP {expected_seq} {got_seq}\n")

    def on_stop(self) -> None:
        self._out.close()


class SlowTradeRecorder(TradeRecorder):
    """Takes 5 ms per trade: slower than the stream it asks for."""

    def on_trade(self, event: Trade) -> None:
        super().on_trade(event)
        time.sleep(0.005)

    def on_sys(self, topic: str, payload: Any) -> None:
        pass
