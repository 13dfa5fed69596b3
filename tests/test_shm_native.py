"""The C record stores (shm/_fastwrite.c) against the Python writer: the same bytes.

Every message goes through two writers, one with the C stores and one without, and the
two rings, latest slots and heads must be byte-identical afterwards, errors included.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest

import shm
from feedhandler.upbit.hot import HotDecoder
from shm import native
from simulator.encode import encode_orderbook, encode_ticker
from simulator.generator import MarketGenerator
from simulator.markets import market_list
from tests import shm_helpers as H

SAMPLES = Path(__file__).resolve().parents[1].parent / "shared/upbit/samples"
MARKETS = market_list(6)
CODES = [*(m.code for m in MARKETS), "KRW-BTC", "KRW-ETH", "KRW-LAMB"]
pytestmark = pytest.mark.timeout(60)


def test_the_c_stores_are_built_and_in_use() -> None:
    if native.turned_off():
        pytest.skip(f"{native.DISABLE_ENV} is set")
    # A broken build would otherwise only show up as a slower feed.
    assert native.available(), (
        f"shm C stores {native.STATUS}: install a C compiler and the Python headers and "
        f"reinstall (make test), or set {native.DISABLE_ENV}=1 to test the Python path"
    )


class Twins:
    """A writer with the C stores and one without, over two segments of one kind."""

    def __init__(self, prefix: str, kind: str, capacity: int = 64) -> None:
        if not native.available():
            pytest.skip(native.STATUS)
        cls = shm.TickerWriter if kind == "ticker" else shm.OrderbookWriter
        self.kind = kind
        codes = list(dict.fromkeys(CODES))
        self.fast = cls(prefix + "c", codes, capacity=capacity, max_symbols=16, native=True)
        self.slow = cls(prefix + "p", codes, capacity=capacity, max_symbols=16, native=False)
        self.readers = [shm.attach(prefix + s, kind, timeout=1) for s in ("c", "p")]

    def write(self, msg: Any, recv_ns: int) -> None:
        outcomes = []
        for writer in (self.fast, self.slow):
            try:
                outcomes.append(("ok", writer.write(msg, recv_ns)))
            except Exception as exc:  # noqa: BLE001 - compared between the two writers
                outcomes.append((type(exc).__name__, str(exc).replace(writer.name, "")))
        assert outcomes[0] == outcomes[1], msg

    def write_all(self, messages: list[Any], first_recv_ns: int) -> None:
        for k, msg in enumerate(messages):
            self.write(msg, recv_ns=first_recv_ns + k)

    def assert_identical(self, head: int) -> None:
        fast, slow = self.readers
        assert self.fast.head == self.slow.head == fast.head == slow.head == head
        found = H.assert_same_records(self.readers, CODES)
        # Everything since the start is still in the ring (a failed write abandons a slot).
        assert len(found[0][0]) + found[0][2] >= min(head, self.fast.capacity)

    def close(self) -> None:
        for reader in self.readers:
            reader.close()
        self.fast.close()
        self.slow.close()


def decoded(kind: str, count: int) -> list[Any]:
    """Generated DEFAULT and SIMPLE frames through the feed's hot decoder."""
    markets = MARKETS
    generator = MarketGenerator(markets, seed=11)
    decoders = {fmt: HotDecoder(format=fmt) for fmt in ("DEFAULT", "SIMPLE")}
    out = []
    now_ms = int(time.time() * 1000)
    for i in range(count):
        market = markets[i % len(markets)]
        generator.trade_in(market.code, now_ms + i)
        state = generator.states[market.code]
        fmt = "SIMPLE" if i % 3 == 0 else "DEFAULT"
        if kind == "ticker":
            frame = encode_ticker(state, fmt, "REALTIME")
        else:
            book = state.book(15 if i % 2 else 30, 0)
            assert book is not None
            frame = encode_orderbook(state, book, fmt, "SNAPSHOT", state.book_timestamp)
        out.append(decoders[fmt].decode(frame))
    return out


def sample(name: str) -> Any:
    return HotDecoder(format="SIMPLE" if "simple" in name else "DEFAULT").decode(
        (SAMPLES / name).read_bytes().strip()
    )


def test_tickers_store_the_same_bytes(prefix: str) -> None:
    twins = Twins(prefix, "ticker", capacity=256)
    try:
        messages = [
            *decoded("ticker", 100),
            sample("ticker_default_KRW-BTC_1.json"),
            sample("ticker_simple_KRW-BTC_1.json"),
            H.make_ticker("KRW-ETH", 3, 1),
        ]
        base = messages[0]
        odd_ones = [
            # None where a value is missing: NaN for floats, 0 or -1 for codes and ints.
            msgspec.structs.replace(base, trade_price=None, timestamp=None, change=None),
            msgspec.structs.replace(base, is_trading_suspended=None, market_warning=None),
            msgspec.structs.replace(base, is_trading_suspended=True, stream_type="SNAPSHOT"),
            # Outside the C store's common case: the Python writer takes these.
            msgspec.structs.replace(base, change="SIDEWAYS", ask_bid="?"),
            msgspec.structs.replace(base, high_price=7, trade_timestamp=2**62),
            SimpleNamespace(**{f: getattr(base, f) for f in base.__struct_fields__}),
            # Values no record can hold: the same error from both, nothing written.
            msgspec.structs.replace(base, trade_timestamp=2**70),
            msgspec.structs.replace(base, trade_price="1.5"),
            msgspec.structs.replace(base, code="KRW-NOPE"),
        ]
        twins.write_all(messages + odd_ones, first_recv_ns=1_000)
        # The last three of each list cannot be stored: the same error from both writers.
        twins.assert_identical(len(messages) + len(odd_ones) - 3)
    finally:
        twins.close()


def test_orderbooks_store_the_same_bytes(prefix: str) -> None:
    twins = Twins(prefix, "orderbook", capacity=256)
    try:
        messages = [
            *decoded("orderbook", 60),
            sample("orderbook_default_KRW-BTC_1.json"),
            sample("orderbook_simple_KRW-LAMB_1.json"),
            H.make_orderbook("KRW-BTC", 5, 30, sim_ns=9),
        ]
        base = messages[0]
        unit = base.orderbook_units[0]
        levels = [tuple(msgspec.structs.astuple(u)) for u in base.orderbook_units]
        odd_ones = [
            msgspec.structs.replace(base, level=None, total_ask_size=None),
            msgspec.structs.replace(base, orderbook_units=[]),
            msgspec.structs.replace(base, orderbook_units=base.orderbook_units * 3),  # 45 > 30
            msgspec.structs.replace(base, orderbook_units=levels),
            msgspec.structs.replace(base, orderbook_units=tuple(base.orderbook_units)),
            msgspec.structs.replace(base, orderbook_units=[(1, 2, 3, None)]),
            msgspec.structs.replace(
                base, orderbook_units=[SimpleNamespace(**msgspec.structs.asdict(unit))]
            ),
            msgspec.structs.replace(base, stream_type="UNHEARD_OF"),
            msgspec.structs.replace(base, orderbook_units=[(1.0, 2.0, 3.0)]),
            msgspec.structs.replace(base, orderbook_units=[("1", 2.0, 3.0, 4.0)]),
            msgspec.structs.replace(base, timestamp=-(2**64)),
        ]
        twins.write_all(messages + odd_ones, first_recv_ns=5_000)
        # The last three of each list cannot be stored: the same error from both writers.
        twins.assert_identical(len(messages) + len(odd_ones) - 3)
    finally:
        twins.close()


def test_a_refused_store_leaves_the_ring_in_step(prefix: str) -> None:
    """Messages the C store refuses, between ones it takes, keep slots and feed_seq tied."""
    twins = Twins(prefix, "ticker", capacity=8)
    try:
        good = decoded("ticker", 20)
        for k, msg in enumerate(good):
            twins.write(msg, k)
            if k % 3 == 0:
                twins.write(msgspec.structs.replace(msg, change="ODD"), k)
            if k % 5 == 0:
                twins.write(msgspec.structs.replace(msg, trade_timestamp=2**70), k)
        twins.assert_identical(20 + 7)
        records = twins.readers[0].since(0)[0]
        assert list(records["feed_seq"]) == list(range(20, 28))
    finally:
        twins.close()


def test_argument_checks_raise_instead_of_writing_outside_the_segment() -> None:
    module = native.module()
    if module is None:
        pytest.skip(native.STATUS)
    view = memoryview(bytearray(4096))
    msg = json.loads("{}")
    with pytest.raises(ValueError, match="outside"):
        module.store_ticker(view, 4096, 0, 10, 1, 0, 0, msg)
    with pytest.raises(ValueError, match="outside"):
        module.store_ticker(view, 0, 10_000, 10, 1, 0, 0, msg)
    with pytest.raises(ValueError, match="writable"):
        module.store_ticker(memoryview(bytes(4096)), 0, 0, 10, 1, 0, 0, msg)
    with pytest.raises(TypeError):
        module.store_orderbook(view, 0, 0, 10, 1, 0, 0)
    assert not view.tobytes().strip(b"\x00")
    # A message of no known shape is refused, not stored.
    assert module.store_ticker(view, 0, 40, 10, 1, 0, 0, msg) is False
    assert not view.tobytes().strip(b"\x00")


def test_decoded_messages_take_the_c_path() -> None:
    """The feed's own decoded messages (both formats, struct and tuple levels) are what
    the C stores exist for: none of them may fall back to Python."""
    module = native.module()
    if module is None:
        pytest.skip(native.STATUS)
    view = memoryview(bytearray(8192))
    tickers = decoded("ticker", 6)
    books = decoded("orderbook", 6)
    assert {type(m).__name__ for m in tickers} == {"HotTicker", "HotTickerSimple"}
    for msg in tickers:
        assert module.store_ticker(view, 1024, 16, 10, 7, 123, 3, msg) is True
    for msg in books:
        assert module.store_orderbook(view, 2048, 512, 10, 8, 123, 3, msg) is True
    levels = [tuple(msgspec.structs.astuple(u)) for u in books[0].orderbook_units]
    tuple_book = msgspec.structs.replace(books[0], orderbook_units=levels)
    assert module.store_orderbook(view, 2048, 512, 10, 9, 123, 3, tuple_book) is True
    words = view.cast("Q")
    # seq even and tied to feed_seq, index and head set.
    assert words[2048 // 8] == 2 * 9 and words[512] == 2 * 9
    assert words[10] == 9 and words[shm.layout.H_HEAD] == 9
