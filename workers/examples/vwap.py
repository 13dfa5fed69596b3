"""TradeFlow: VWAP and taker buy/sell volume per symbol, from the trade stream (exact Decimals).

python -m workers run workers.examples.vwap:TradeFlow --symbols KRW-BTC,KRW-ETH
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, ClassVar

from workers.events import Trade
from workers.worker import Worker

ZERO = Decimal(0)


@dataclass(slots=True)
class Flow:
    trades: int = 0
    volume: Decimal = ZERO
    notional: Decimal = ZERO
    buy_volume: Decimal = ZERO
    sell_volume: Decimal = ZERO
    last_price: Decimal = ZERO

    @property
    def vwap(self) -> Decimal | None:
        return self.notional / self.volume if self.volume else None


class TradeFlow(Worker):
    """Keeps :attr:`flows` (code -> :class:`Flow`) and prints a line every second."""

    types: ClassVar[tuple[str, ...]] = ("trade",)
    timer_interval_s: ClassVar[float] = 1.0

    def __init__(self, symbols: Sequence[str], **options: Any) -> None:
        super().__init__(symbols, **options)
        self.flows: dict[str, Flow] = {code: Flow() for code in self.symbols}

    def on_trade(self, event: Trade) -> None:
        flow = self.flows.setdefault(event.code, Flow())
        flow.trades += 1
        flow.volume += event.trade_volume
        flow.notional += event.trade_price * event.trade_volume
        if event.is_buy:
            flow.buy_volume += event.trade_volume
        else:
            flow.sell_volume += event.trade_volume
        flow.last_price = event.trade_price

    def summary(self) -> str:
        parts = []
        for code, flow in sorted(self.flows.items()):
            vwap = flow.vwap
            parts.append(
                f"{code} n={flow.trades} vwap={'-' if vwap is None else f'{vwap:.8g}'} "
                f"buy={flow.buy_volume:.8g} sell={flow.sell_volume:.8g}"
            )
        return "trades " + " | ".join(parts)

    def on_timer(self) -> None:
        print(self.summary(), flush=True)

    def on_stop(self) -> None:
        print(self.summary(), flush=True)
