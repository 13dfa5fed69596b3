"""Router.route_batch: one socket read's frames, shm writes first, every sink in order."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from feedhandler.metrics import RouteTimer
from feedhandler.publisher import Publisher
from feedhandler.router import Router, UpstreamError
from feedhandler.trades import TradeSequencer
from feedhandler.upbit import ProtocolError
from feedhandler.upbit.hot import HotDecoder
from feedhandler.wsframe import OP_BINARY
from shm import OrderbookWriter, TickerWriter
from tests.conftest import SESSION_PREFIX

SAMPLES = Path(__file__).resolve().parents[1].parent / "shared/upbit/samples"
pytestmark = pytest.mark.timeout(30)


def sample(name: str, **changes: Any) -> bytes:
    data = json.loads((SAMPLES / name).read_text(encoding="utf-8"))
    data.update(changes)
    return json.dumps(data).encode()


def trade(sequential_id: int, code: str = "KRW-BTC") -> bytes:
    return sample("trade_default_KRW-BTC_1.json", sequential_id=sequential_id, code=code)


TICKER = sample("ticker_default_KRW-BTC_1.json")
BOOK = sample("orderbook_default_KRW-BTC_1.json")
ERROR = (SAMPLES / "error_INVALID_PARAM_1.json").read_bytes().strip()


class Harness:
    """The feed's Router over real shm writers and a real sequencer; the sequencer's
    publish callback notes the shm heads at the moment each trade goes out."""

    def __init__(self, codes: list[str]) -> None:
        prefix = f"{SESSION_PREFIX}rb{uuid.uuid4().hex[:6]}"
        self.ticker = TickerWriter(prefix, codes, max_symbols=len(codes) + 4)
        self.orderbook = OrderbookWriter(prefix, codes, max_symbols=len(codes) + 4)
        self.bus = Publisher(f"inproc://router-batch-{uuid.uuid4().hex}")
        self.published: list[tuple[str, int, int, int]] = []
        self.bad: list[tuple[str, ProtocolError]] = []

        def publish(code: str, data: bytes, recv_ns: int, origin_ns: int, backfill: bool) -> None:
            sid = json.loads(data)["sequential_id"]
            self.published.append((code, sid, self.ticker.head, self.orderbook.head))

        self.router = Router(
            ticker_writer=self.ticker,
            orderbook_writer=self.orderbook,
            bus=self.bus,
            trades=TradeSequencer(
                publish,
                self.bus.publish_sys,
                # As the feed does: a batch's trades reach the bus in one call.
                publish_many=lambda trades: [publish(*t, False) for t in trades],
            ),
            on_bad_frame=lambda connection, exc: self.bad.append((connection, exc)),
        )
        self.decoder = HotDecoder(format="DEFAULT")

    def batch(self, *frames: bytes, decoder: HotDecoder | None = None) -> None:
        messages = [(OP_BINARY, memoryview(frame)) for frame in frames]
        self.router.route_batch("pub-0", decoder or self.decoder, messages, 123)

    def close(self) -> None:
        self.bus.close()
        self.ticker.close(unlink=True)
        self.orderbook.close(unlink=True)


@pytest.fixture
def harness() -> Iterator[Harness]:
    h = Harness(["KRW-BTC", "KRW-ETH", "KRW-LAMB"])
    try:
        yield h
    finally:
        h.close()


def test_shm_frames_are_stored_before_the_batch_publishes_anything(harness: Harness) -> None:
    harness.batch(trade(1), TICKER, trade(2), BOOK, trade(3, "KRW-ETH"))
    # Every trade went out after both shm records of the read were written, in order.
    assert harness.published == [
        ("KRW-BTC", 1, 1, 1),
        ("KRW-BTC", 2, 1, 1),
        ("KRW-ETH", 3, 1, 1),
    ]
    counts = harness.router.counts
    assert (counts["ticker"], counts["orderbook"], counts["trade"]) == (1, 1, 3)
    # The same frames one by one: each sink in arrival order, trades as they come.
    harness.router.route("pub-0", harness.decoder, trade(4), 1)
    assert harness.published[-1] == ("KRW-BTC", 4, 1, 1)


def test_a_bad_frame_is_counted_and_the_rest_of_the_batch_is_routed(harness: Harness) -> None:
    harness.batch(trade(1), b'{"type":"ticker","code":', TICKER, trade(1), trade(2))
    assert harness.router.counts["bad_frame"] == 1
    assert [(c, p.__class__) for c, p in harness.bad] == [("pub-0", ProtocolError)]
    assert harness.ticker.head == 1
    # The duplicate sequential_id 1 is dropped by the sequencer, not published twice.
    assert [sid for _, sid, _, _ in harness.published] == [1, 2]


def test_an_error_frame_raises_after_the_rest_of_the_batch(harness: Harness) -> None:
    with pytest.raises(UpstreamError) as caught:
        harness.batch(trade(1), ERROR, TICKER, trade(2))
    assert caught.value.name == "INVALID_PARAM"
    assert harness.ticker.head == 1
    # Trades before the error frame are published; the ones after it go with the
    # connection the exchange closes (the reconnect's backfill recovers them).
    assert [sid for _, sid, _, _ in harness.published] == [1]
    assert harness.router.counts["error"] == 1


def test_a_new_market_is_added_to_the_symbol_table(harness: Harness) -> None:
    harness.batch(sample("ticker_default_KRW-BTC_1.json", code="KRW-NEW"), TICKER)
    assert "KRW-NEW" in harness.ticker.codes
    assert harness.ticker.head == 2
    assert harness.router.counts["ticker"] == 2


def test_a_wrapped_route_sees_every_frame(harness: Harness) -> None:
    timer = RouteTimer(every=1)
    harness.router.route = timer.wrap(harness.router.route)  # type: ignore[method-assign]
    harness.batch(trade(1), TICKER, BOOK)
    assert timer.histogram.count == 3
    assert harness.ticker.head == harness.orderbook.head == 1
    assert [sid for _, sid, _, _ in harness.published] == [1]


def test_simple_format_frames_take_the_same_lanes(harness: Harness) -> None:
    simple = HotDecoder(format="SIMPLE")
    trade_simple = (SAMPLES / "trade_simple_KRW-LAMB_1.json").read_bytes().strip()
    harness.batch(
        trade_simple,
        (SAMPLES / "ticker_simple_KRW-BTC_1.json").read_bytes().strip(),
        (SAMPLES / "orderbook_simple_KRW-LAMB_1.json").read_bytes().strip(),
        decoder=simple,
    )
    assert harness.published == [("KRW-LAMB", 1618678262000003, 1, 1)]
