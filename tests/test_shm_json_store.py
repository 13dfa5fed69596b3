"""Tickers and order books stored straight from their JSON (store_ticker_json and
store_orderbook_json in shm/_fastwrite.c).

Every frame goes to two writers: one stores it from its JSON when the C parser takes
it (and otherwise decodes it and stores the message, as the router does), the other
always decodes it with the feed's strict decoder and stores it in Python. The rings,
latest slots and heads must be byte-identical after every frame, and a frame the
decoder refuses must never be stored from its JSON.
"""

from __future__ import annotations

import json
import math
import random
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import shm
from feedhandler.router import Router
from feedhandler.upbit import ProtocolError
from feedhandler.upbit.hot import HotDecoder, HotOrderbook, HotTicker
from shm import native
from simulator.encode import encode_orderbook, encode_ticker
from simulator.frames import STAMP_DIGITS, with_stamp_slot
from simulator.generator import MarketGenerator
from simulator.markets import market_list
from tests import shm_helpers as H

SAMPLES = Path(__file__).resolve().parents[1].parent / "shared/upbit/samples"
MARKETS = market_list(6)
CODES = [*(m.code for m in MARKETS), "KRW-BTC"]
pytestmark = pytest.mark.timeout(60)


class Pair:
    """The JSON path (with its fallback) and the decode-and-store path, side by side."""

    def __init__(self, prefix: str, kind: str = "orderbook", capacity: int = 64) -> None:
        if not native.available():
            pytest.skip(native.STATUS)
        codes = list(dict.fromkeys(CODES))
        cls = shm.OrderbookWriter if kind == "orderbook" else shm.TickerWriter
        self.kind = kind
        self.fast = cls(prefix + "j", codes, capacity=capacity, native=True)
        self.slow = cls(prefix + "p", codes, capacity=capacity, native=False)
        self.readers = [shm.attach(prefix + s, kind, timeout=1) for s in ("j", "p")]
        self.decoder = HotDecoder(format="DEFAULT")
        self.taken = 0

    def write(self, frame: bytes, recv_ns: int) -> bool:
        """Both paths; True if the JSON path stored the frame."""
        outcomes = []
        from_json = self.fast.write_json(frame, recv_ns)
        for writer in (self.fast, self.slow):
            if writer is self.fast and from_json:
                outcomes.append(("ok", from_json))
                continue
            try:
                msg = self.decoder.decode(frame)
                if not isinstance(msg, HotOrderbook if self.kind == "orderbook" else HotTicker):
                    outcomes.append(("another kind", type(msg).__name__))
                    continue
                outcomes.append(("ok", writer.write(msg, recv_ns)))
            except (ProtocolError, shm.UnknownSymbolError, TypeError, ValueError) as exc:
                outcomes.append((type(exc).__name__, str(exc).replace(writer.name, "")))
        assert outcomes[0] == outcomes[1], frame
        self.taken += bool(from_json)
        self.assert_identical()
        return bool(from_json)

    def assert_identical(self) -> None:
        fast, slow = self.readers
        assert self.fast.head == self.slow.head == fast.head == slow.head
        H.assert_same_records(self.readers, CODES)

    def close(self) -> None:
        for reader in self.readers:
            reader.close()
        self.fast.close()
        self.slow.close()


@pytest.fixture
def pair(prefix: str) -> Iterator[Pair]:
    p = Pair(prefix)
    yield p
    p.close()


@pytest.fixture
def ticker_pair(prefix: str) -> Iterator[Pair]:
    p = Pair(prefix, "ticker")
    yield p
    p.close()


def generated(count: int, *, stamp: bool = True) -> list[bytes]:
    generator = MarketGenerator(MARKETS, seed=5)
    frames = []
    for i in range(count):
        market = MARKETS[i % len(MARKETS)]
        generator.trade_in(market.code, 1_790_000_000_000 + i)
        state = generator.states[market.code]
        book = state.book((1, 5, 15, 30)[i % 4], 0)
        assert book is not None
        frame = encode_orderbook(
            state, book, "DEFAULT", ("SNAPSHOT", "REALTIME")[i % 2], state.book_timestamp
        )
        if stamp:
            stamp = b"%d" % (1_790_000_000_000_000_000 + i)
            frame = with_stamp_slot(frame, False).replace(b"0" * STAMP_DIGITS, stamp)
        frames.append(frame)
    return frames


def generated_tickers(count: int) -> list[bytes]:
    generator = MarketGenerator(MARKETS, seed=9)
    frames = []
    for i in range(count):
        market = MARKETS[i % len(MARKETS)]
        generator.trade_in(market.code, 1_790_000_000_000 + i)
        frame = encode_ticker(
            generator.states[market.code], "DEFAULT", ("SNAPSHOT", "REALTIME")[i % 2]
        )
        stamp = b"%d" % (1_790_000_000_000_000_000 + i)
        frames.append(with_stamp_slot(frame, False).replace(b"0" * STAMP_DIGITS, stamp))
    return frames


def base_ticker() -> dict[str, Any]:
    return json.loads((SAMPLES / "ticker_default_KRW-BTC_1.json").read_bytes())


def base_book() -> dict[str, Any]:
    return json.loads((SAMPLES / "orderbook_default_KRW-BTC_3.json").read_bytes())


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def test_the_json_stores_are_built() -> None:
    if native.turned_off():
        pytest.skip(f"{native.DISABLE_ENV} is set")
    module = native.module()
    assert module is not None, native.STATUS
    assert hasattr(module, "store_orderbook_json") and hasattr(module, "store_ticker_json")


def test_samples_and_generated_books_are_stored_from_their_json(pair: Pair) -> None:
    frames = [
        (SAMPLES / "orderbook_default_KRW-BTC_1.json").read_bytes(),  # pretty-printed
        (SAMPLES / "orderbook_default_KRW-BTC_3.json").read_bytes().strip(),
        *generated(80),
        *generated(8, stamp=False),
    ]
    for k, frame in enumerate(frames):
        assert pair.write(frame, recv_ns=1_000 + k), frame[:80]
    assert pair.fast.head == len(frames)


def mutations() -> list[bytes]:
    """Frames around the edge of what the strict decoder takes."""
    book = base_book()
    unit = book["orderbook_units"][0]
    out: list[bytes] = []

    def variant(**changes: Any) -> None:
        changed = {**book, **changes}
        out.append(dumps({k: v for k, v in changed.items() if v is not _DROP}))

    for key in book:
        variant(**{key: _DROP})
        variant(**{key: None})
        variant(**{key: "1"})
        variant(**{key: 1})
        variant(**{key: 1.5})
        variant(**{key: True})
        variant(**{key: []})
        variant(**{key: {}})
    variant(extra_key=1)
    variant(sim_ns=12345)
    variant(sim_ns=-7)
    variant(sim_ns=2**63)
    variant(sim_ns=2**63 - 1)
    variant(sim_ns=-(2**63))
    variant(timestamp=2**64)
    variant(type="ticker")
    variant(type="orderbooks")
    variant(code="KRW-NOPE")
    variant(code="KRW-BT\u00c7")
    variant(code="")
    variant(stream_type="UNHEARD_OF")
    variant(level=None)
    variant(level=3)
    variant(orderbook_units=[])
    variant(orderbook_units=[unit] * 31)
    variant(orderbook_units=[unit] * 45)
    variant(orderbook_units=[{**unit, "extra": 1}])
    variant(orderbook_units=[{k: v for k, v in unit.items() if k != "bid_size"}])
    variant(orderbook_units=[{**unit, "ask_price": None}])
    variant(orderbook_units=[{**unit, "ask_price": "1"}])
    variant(orderbook_units=[[1, 2, 3, 4]])
    variant(orderbook_units=[{k: unit[k] for k in reversed(list(unit))}])
    variant(orderbook_units={"0": unit})
    text = dumps(book)
    for raw in (
        b' {"type" : "orderbook" ,' + text[20:] + b" \n",
        text.replace(b'"code":"KRW-BTC"', b'"code":"KRW-BTC","code":"KRW-BTC"'),
        text.replace(b'"code":"KRW-BTC"', b'"code":"KRW-\\u0042TC"'),
        text.replace(b'"type":"orderbook"', b'"type":"order\\u0062ook"'),
        text.replace(b'"level":0', b'"level":-0'),
        text.replace(b'"level":0', b'"level":0.0e0'),
        text.replace(b'"level":0', b'"level":00'),
        text.replace(b'"level":0', b'"level":1.'),
        text.replace(b'"level":0', b'"level":.5'),
        text.replace(b'"level":0', b'"level":+1'),
        text.replace(b'"level":0', b'"level":1e999'),
        text.replace(b'"level":0', b'"level":1e-400'),
        text.replace(b'"level":0', b'"level":NaN'),
        text.replace(b'"level":0', b'"level":nul'),
        text.replace(b'"timestamp":', b'"timestamp":1.0E0,"x":'),
        text.replace(b'"timestamp":1790134743006', b'"timestamp":1790134743006e0'),
        text.replace(b'"timestamp":1790134743006', b'"timestamp":-0'),
        text.replace(b'"timestamp":1790134743006', b'"timestamp":"1790134743006"'),
        text + b"x",
        text + b"}",
        text[:-1],
        text[:200],
        text.replace(b",", b", ", 5),
        text.replace(b"}],", b"},],"),
        text.replace(b":", b"\t:\r", 3),
        text.replace(b'"total_ask_size"', b'"total_ask_size\\n"'),
        text.replace(b'"code"', b'"cod\x7fe"'),
        b"[" + text + b"]",
        b'{"type":"orderbook"}',
        b"{}",
        b"",
    ):
        out.append(raw)
    return out


_DROP = object()


def ticker_mutations() -> list[bytes]:
    ticker = base_ticker()
    out: list[bytes] = []

    def variant(**changes: Any) -> None:
        changed = {**ticker, **changes}
        out.append(dumps({k: v for k, v in changed.items() if v is not _DROP}))

    for key in [*ticker, "sim_ns", "trade_status", "market_state_for_ios"]:
        for value in (_DROP, None, "1", "RISE", 1, -0, 1.5, True, False, [], {}):
            variant(**{key: value})
    for key in ("change", "ask_bid", "market_state", "market_warning", "stream_type"):
        variant(**{key: "UNHEARD_OF"})
        variant(**{key: ""})
    variant(ask_bid="ASK")
    variant(change="EVEN", market_state="PREVIEW", market_warning="CAUTION")
    variant(sim_ns=2**63 - 1)
    variant(sim_ns=2**63)
    variant(timestamp=-(2**63))
    variant(extra_key="x")
    variant(code="KRW-NOPE")
    variant(type="trade")
    text = dumps(ticker)
    for raw in (
        b" \t" + text + b"\r\n",
        text.replace(b",", b" , ", 7),
        text.replace(b'"code":"KRW-BTC"', b'"code":"KRW-BTC","code":"KRW-BTC"'),
        text.replace(b'"trade_date":"', b'"trade_date":"\\u0032'),
        text.replace(b'"change":"', b'"change":"\\u0052'),
        text.replace(b"true", b"tru", 1),
        text.replace(b"false", b"fals", 1),
        text + b",",
        text[:-1],
        b'{"type":"ticker","code":"KRW-BTC"}',
        b'{"code":"KRW-BTC","type":"ticker","sim_ns":5}',
        b'{"type":"ticker"}',
    ):
        out.append(raw)
    return out


def test_frames_at_the_edge_are_stored_from_json_only_as_the_decoder_reads_them(
    pair: Pair,
) -> None:
    taken = [pair.write(frame, recv_ns=10 + k) for k, frame in enumerate(mutations())]
    # Some variants are plain books (a level of 1, keys reordered, extra whitespace).
    assert 5 < sum(taken) < len(taken)


def test_numbers_are_read_as_the_decoder_reads_them(pair: Pair) -> None:
    rng = random.Random(3)
    book = base_book()
    text = dumps(book)
    for k in range(300):
        value = struct.unpack("<d", rng.randbytes(8))[0]
        if not math.isfinite(value):
            continue
        spelled = rng.choice([repr(value), f"{value:.17g}", f"{value:.3e}", f"{value:.20f}"])
        spelled = spelled.replace("inf", "1e999")
        frame = text.replace(b'"total_ask_size":1.8360425', f'"total_ask_size":{spelled}'.encode())
        pair.write(frame, recv_ns=k)
    for k, digits in enumerate(["0.1", "2.2250738585072011e-308", "9007199254740993", "1e23"]):
        pair.write(text.replace(b'"level":0', b'"level":' + digits.encode()), recv_ns=k)
    assert pair.taken > 200


def test_sample_and_generated_tickers_are_stored_from_their_json(ticker_pair: Pair) -> None:
    frames = [
        (SAMPLES / "ticker_default_KRW-BTC_1.json").read_bytes(),
        *generated_tickers(60),
    ]
    for k, frame in enumerate(frames):
        assert ticker_pair.write(frame, recv_ns=1_000 + k), frame[:80]
    assert ticker_pair.fast.head == len(frames)


def test_tickers_at_the_edge_are_stored_from_json_only_as_the_decoder_reads_them(
    ticker_pair: Pair,
) -> None:
    frames = [
        *ticker_mutations(),
        (SAMPLES / "ticker_default-legacy_KRW-BTC_2.json").read_bytes(),
        *mutations(),  # books, to a ticker writer
    ]
    taken = [ticker_pair.write(frame, recv_ns=10 + k) for k, frame in enumerate(frames)]
    assert 20 < sum(taken) < len(taken)


def test_ticker_numbers_are_read_as_the_decoder_reads_them(ticker_pair: Pair) -> None:
    rng = random.Random(5)
    ticker = base_ticker()
    for k in range(300):
        value = struct.unpack("<d", rng.randbytes(8))[0]
        if not math.isfinite(value):
            continue
        spelled = rng.choice([repr(value), f"{value:.17g}", f"{value:.6e}", f"{value:.12f}"])
        key = rng.choice(["trade_price", "acc_trade_volume", "signed_change_rate"])
        frame = dumps({**ticker, key: 0}).replace(
            f'"{key}":0'.encode(), f'"{key}":{spelled}'.encode()
        )
        ticker_pair.write(frame, recv_ns=k)
    assert ticker_pair.taken > 200


def test_random_damage_to_tickers_never_stores_what_the_decoder_would_not(
    ticker_pair: Pair,
) -> None:
    damage(ticker_pair, generated_tickers(12), seed=23)
    assert ticker_pair.taken > 20


def test_a_code_without_a_symbol_is_left_to_the_decoder_path(pair: Pair) -> None:
    book = base_book()
    book["code"] = "KRW-NOPE"
    frame = dumps(book)
    assert pair.fast.write_json(frame, 1) == 0
    assert pair.fast.head == 0
    pair.write(frame, recv_ns=2)  # both raise UnknownSymbolError
    # The slot was not used up: the next book takes feed_seq 1 in the same slot.
    assert pair.write(generated(1)[0], recv_ns=3)
    assert pair.fast.head == 1


def test_bad_arguments_raise() -> None:
    module = native.module()
    if module is None:
        pytest.skip(native.STATUS)
    store = module.store_orderbook_json
    segment = memoryview(bytearray(64 * 1024))
    frame = generated(1)[0]
    with pytest.raises(TypeError, match="6 arguments"):
        store(segment, 0, 1, 0, {})
    with pytest.raises(TypeError, match="dict"):
        store(segment, 0, 1, 0, [], frame)
    with pytest.raises(ValueError, match="feed_seq"):
        store(segment, 0, 0, 0, {}, frame)
    with pytest.raises(TypeError):
        store(bytes(64), 0, 1, 0, {}, frame)
    with pytest.raises(TypeError):
        store(segment, 0, 1, 0, {}, "not bytes")
    code = json.loads(frame)["code"]
    with pytest.raises(ValueError, match="outside"):
        store(segment, 64 * 1024, 1, 0, {code: (0, 16, None, 2)}, frame)
    with pytest.raises(TypeError, match="4-tuples"):
        store(segment, 1024, 1, 0, {code: (0, 16)}, frame)
    assert store(segment, 1024, 1, 0, {"OTHER": (0, 16, None, 2)}, frame) is False


def test_the_router_stores_tickers_and_books_from_json_and_counts_them(prefix: str) -> None:
    if not native.available():
        pytest.skip(native.STATUS)
    codes = list(dict.fromkeys(CODES))
    with shm.TickerWriter(prefix, codes) as tickers, shm.OrderbookWriter(prefix, codes) as books:
        stored: list[str] = []

        def counting(writer: shm.SnapshotWriter) -> Any:
            def store(frame: bytes | memoryview, recv_ns: int) -> int:
                feed_seq = writer.write_json(frame, recv_ns)
                stored.append(f"{writer.kind}:{bool(feed_seq)}")
                return feed_seq

            return store

        router = Router(ticker_writer=tickers, orderbook_writer=books, bus=None, trades=None)  # type: ignore[arg-type]
        router._store_ticker_json = counting(tickers)
        router._store_book_json = counting(books)
        book, ticker = generated(1)[0], generated_tickers(1)[0]
        drifted_book = book.replace(b'"type":"orderbook",', b'"type":"orderbook","x":1,')
        drifted_ticker = ticker.replace(b'"type":"ticker",', b'"type":"ticker","x":1,')
        frames = [book, ticker, drifted_book, drifted_ticker, book, ticker]
        router.route_batch("c", HotDecoder(format="DEFAULT"), [(2, f) for f in frames], 7)
        assert router.counts["orderbook"] == 3 and books.head == 3
        assert router.counts["ticker"] == 3 and tickers.head == 3
        assert stored == [
            "orderbook:True",
            "ticker:True",
            "orderbook:False",  # the unknown key is counted by the decoder, then stored
            "ticker:False",
            "orderbook:True",
            "ticker:True",
        ]
        router.route_batch("c", HotDecoder(format="SIMPLE"), [(2, book), (2, ticker)], 8)
        assert len(stored) == 6 and books.head == 4 and tickers.head == 4  # decoded


def damage(pair: Pair, frames: list[bytes], seed: int, count: int = 1500) -> None:
    rng = random.Random(seed)
    alphabet = b'{}[]":,.-+eE0123456789 \\nulltrue' + bytes([0, 0x7F, 0xC3, 0xA9])
    for k in range(count):
        frame = bytearray(rng.choice(frames))
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(frame) + 1)
            action = rng.randrange(4)
            if action == 0 and at < len(frame):
                frame[at] = rng.choice(alphabet)
            elif action == 1:
                del frame[at : at + rng.randint(1, 8)]
            elif action == 2:
                frame[at:at] = bytes(rng.choice(alphabet) for _ in range(rng.randint(1, 4)))
            else:
                del frame[at:]
        pair.write(bytes(frame), recv_ns=k)


def test_random_damage_never_stores_what_the_decoder_would_not(pair: Pair) -> None:
    damage(pair, generated(12), seed=17)
    assert pair.taken > 50
