"""Sans-IO parts of the simulator: numbers, markets, generator, request grammar."""

import gc
from decimal import Decimal

import pytest

from simulator import numbers
from simulator.encode import encode_orderbook, encode_ticker, encode_trade
from simulator.generator import BookView, MarketGenerator
from simulator.markets import MAX_MARKETS, market_list, tick_size
from simulator.numbers import UNIT
from simulator.request import RequestError, parse_request
from simulator.testing import decode

NOW = 1_790_000_000_000


@pytest.mark.parametrize(
    ("value", "spell", "text"),
    [
        (11_653_900_000_000_000, numbers.java, "1.16539E8"),
        (99, numbers.java, "9.9E-7"),
        (50_000, numbers.java, "5.0E-4"),
        (2_023_000_000_000, numbers.java, "20230.0"),
        (0, numbers.java, "0.0"),
        (-6, numbers.java, "-6.0E-8"),
        (3_188_300_000_000_000, numbers.fixed, "31883000.00000000"),
        (10_984_700_000_000_000, numbers.dotted, "109847000.0"),
        (554_330, numbers.plain, "0.0055433"),
        (-100_000_000, numbers.plain, "-1"),
    ],
)
def test_number_spellings_are_exact(value, spell, text):
    assert spell(value) == text
    assert Decimal(text) == numbers.to_decimal(value)


def test_market_list_is_fixed_and_covers_every_quote():
    markets = market_list(300)
    codes = [m.code for m in markets]
    assert codes[:3] == ["KRW-BTC", "KRW-ETH", "KRW-XRP"]
    assert len(set(codes)) == 300
    assert {m.quote for m in market_list(10)} == {"KRW", "BTC", "USDT"}
    assert [m.code for m in market_list(300)] == codes
    assert len(market_list(MAX_MARKETS)) == MAX_MARKETS
    with pytest.raises(ValueError, match="between 1"):
        market_list(0)


@pytest.mark.parametrize(
    ("price_krw", "tick_krw"),
    [("2500000", "1000"), ("700000", "500"), ("150000", "100"), ("60000", "50"),
     ("20000", "10"), ("7000", "5"), ("1500", "1"), ("150", "1"), ("50", "0.01"),
     ("5", "0.001"), ("0.5", "0.0001")],
)  # fmt: skip
def test_krw_tick_table(price_krw, tick_krw):
    price = numbers.from_decimal(Decimal(price_krw))
    assert numbers.to_decimal(tick_size("KRW", price)) == Decimal(tick_krw)
    assert tick_size("BTC", price) == 1


def test_generator_is_deterministic_per_seed():
    def run(seed):
        gen = MarketGenerator(market_list(20), seed=seed, now_ms=NOW)
        return [(t.code, t.price, t.volume, t.ask_bid) for t in (gen.step(NOW) for _ in range(500))]

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_the_trade_history_is_invisible_to_the_garbage_collector():
    # Full collections over a history of tracked trades stalled the paced stream.
    gen = MarketGenerator(market_list(5), seed=2, now_ms=NOW)
    trades = [gen.step(NOW + i) for i in range(200)]
    history = [t for state in gen.states.values() for t in state.trades]
    assert len(history) >= 200
    assert not any(gc.is_tracked(t) for t in trades + history)


def test_generator_state_stays_consistent():
    gen = MarketGenerator(market_list(30), seed=3, now_ms=NOW)
    sids: dict[str, set[int]] = {}
    volumes: dict[str, int] = {}
    odd = 0
    for i in range(20_000):
        trade = gen.step(NOW + i // 10)
        state = gen.states[trade.code]
        assert state.best_bid < state.best_ask
        assert trade.price in (state.best_ask, state.best_bid)
        assert trade.price % tick_size(state.info.quote, trade.price) == 0
        assert trade.sequential_id not in sids.setdefault(trade.code, set())
        sids[trade.code].add(trade.sequential_id)
        assert trade.sequential_id > 2**53
        odd += trade.sequential_id % 2
        assert state.acc_trade_volume > volumes.get(trade.code, 0)
        volumes[trade.code] = state.acc_trade_volume
        ticker = decode(encode_ticker(state, "DEFAULT", "REALTIME"))
        assert ticker["trade_price"] == numbers.to_decimal(trade.price)
        assert ticker["trade_volume"] == numbers.to_decimal(trade.volume)
        assert ticker["low_price"] <= ticker["trade_price"] <= ticker["high_price"]
    assert odd > 0
    # Trades of one market, re-read from its history, are the ones generated.
    code = "KRW-BTC"
    assert (
        list(gen.states[code].sids)[-5:] == [t.sequential_id for t in gen.states[code].trades][-5:]
    )


@pytest.mark.parametrize("fmt", ["DEFAULT", "SIMPLE"])
def test_book_units_spelled_from_the_cache_are_exact_and_invisible_to_the_collector(fmt):
    from simulator import encode

    gen = MarketGenerator(market_list(5), seed=3, now_ms=NOW)
    state = gen.states["KRW-BTC"]
    top = 2**64 - 1
    # Cached spellings stay exact for any value, wide or negative.
    units = [(top, top - 1, top, 1), (2**64, 5, 7, 9), (3, 2**70, 0, 1), (8, 7, -6, 5)]
    units += state.book(15).units
    book = BookView(units, sum(u[2] for u in units), sum(u[3] for u in units), 0)
    encode._unit_cache[fmt == "DEFAULT"].clear()
    first = encode_orderbook(state, book, fmt, "SNAPSHOT", NOW)
    cached = encode_orderbook(state, book, fmt, "SNAPSHOT", NOW)
    assert cached == first
    spelled = decode(first)["orderbook_units" if fmt == "DEFAULT" else "obu"]
    keys = (
        ("ask_price", "bid_price", "ask_size", "bid_size")
        if fmt == "DEFAULT"
        else ("ap", "bp", "as", "bs")
    )
    assert [tuple(numbers.from_decimal(u[k]) for k in keys) for u in spelled] == units
    assert len(encode._unit_cache[fmt == "DEFAULT"]) == len(set(units))
    # With tuple keys, each new key made the cache a dict the collector walked whole.
    assert not gc.is_tracked(encode._unit_cache[fmt == "DEFAULT"])


def test_full_spelling_caches_are_freed_a_few_entries_at_a_time_and_stay_exact(monkeypatch):
    from simulator import encode

    limit = 40
    monkeypatch.setattr(encode, "_CACHE_LIMIT", limit)
    monkeypatch.setattr(encode, "_retired", encode.deque())
    monkeypatch.setattr(encode, "_unit_cache", {True: {}, False: {}})
    for name in ("java", "fixed"):
        monkeypatch.setattr(encode, name, encode._cached(getattr(numbers, name)))
    gen = MarketGenerator(market_list(5), seed=3, now_ms=NOW)
    state = gen.states["KRW-BTC"]
    first_retired = None
    previous = 0
    for i in range(6 * limit):
        # One new unit and four new numbers per book.
        book = BookView([(1000 * UNIT + i, 999 * UNIT - i, i * UNIT, 3 * UNIT + i)], 0, 0, 0)
        unit = decode(encode_orderbook(state, book, "DEFAULT", "SNAPSHOT", NOW))["orderbook_units"][
            0
        ]
        assert [numbers.from_decimal(unit[k]) for k in ("ask_price", "bid_price")] == [
            1000 * UNIT + i,
            999 * UNIT - i,
        ]
        assert [numbers.from_decimal(unit[k]) for k in ("ask_size", "bid_size")] == [
            i * UNIT,
            3 * UNIT + i,
        ]
        assert 1 <= len(encode._unit_cache[True]) <= limit
        if first_retired is None and encode._retired:
            first_retired = encode._retired[0]
        retired = sum(len(cache) for cache in encode._retired)
        # A full cache is set aside, never freed in one go: five new entries free at most
        # five times _FREED_PER_ENTRY of the retired ones.
        assert previous - retired <= 5 * encode._FREED_PER_ENTRY
        # Bounded: the unit, price and size caches, each at most one full cache retired.
        assert retired <= 3 * limit
        previous = retired
    assert first_retired is not None and len(first_retired) == 0
    assert all(cache is not first_retired for cache in encode._retired)
    # A cache retired twice (two threads at once) or emptied elsewhere is dropped quietly.
    encode._retired.clear()
    twice = {1: "1", 2: "2", 3: "3", 4: "4", 5: "5"}
    encode._retired.extend([{}, twice, twice])
    for _ in range(4):
        encode._free_retired()
    assert not encode._retired and not twice
    encode._free_retired()
    # A unit seen again is spelled the same from the cache.
    assert encode_orderbook(state, book, "DEFAULT", "SNAPSHOT", NOW) == encode_orderbook(
        state, book, "DEFAULT", "SNAPSHOT", NOW
    )


def test_orderbook_depth_levels_and_totals():
    gen = MarketGenerator(market_list(6), seed=1, now_ms=NOW)
    state = gen.states["KRW-BTC"]
    for depth in (1, 5, 15, 30):
        book = decode(encode_orderbook(state, state.book(depth), "DEFAULT", "SNAPSHOT", NOW))
        units = book["orderbook_units"]
        assert len(units) == depth
        assert book["total_ask_size"] == sum(u["ask_size"] for u in units)
        asks = [u["ask_price"] for u in units]
        bids = [u["bid_price"] for u in units]
        assert asks == sorted(asks) and bids == sorted(bids, reverse=True)
        assert bids[0] < asks[0]
    level = state.info.supported_levels[1]
    grouped = decode(encode_orderbook(state, state.book(15, level), "SIMPLE", "SNAPSHOT", NOW))
    assert grouped["lv"] == numbers.to_decimal(level)
    for unit in grouped["obu"]:
        assert unit["ap"] % numbers.to_decimal(level) == 0
        assert unit["bp"] % numbers.to_decimal(level) == 0
    assert state.book(15, 7 * UNIT) is None
    assert gen.states["BTC-ETH"].book(15, state.info.supported_levels[1]) is None


def test_trade_frame_keeps_big_odd_sequential_id_exact():
    gen = MarketGenerator(market_list(3), seed=1, now_ms=NOW)
    trade = gen.step(NOW)
    trade.sequential_id = 17_103_275_719_220_001
    assert decode(encode_trade(trade, "SIMPLE", "REALTIME"))["sid"] == 17_103_275_719_220_001


@pytest.mark.parametrize(
    ("message", "name"),
    [
        ("not json", "WRONG_FORMAT"),
        ('{"ticket":"a"}', "WRONG_FORMAT"),
        ("[]", "WRONG_FORMAT"),
        ('[{"type":"ticker","codes":["KRW-BTC"]}]', "NO_TICKET"),
        ('[{"ticket":"a"},{"codes":["KRW-BTC"]}]', "NO_TYPE"),
        ('[{"ticket":"a"},{"format":"DEFAULT"}]', "NO_TYPE"),
        ('[{"ticket":"a"},{"type":"ticker"}]', "NO_CODES"),
        ('[{"ticket":"a"},{"type":"nope","codes":["KRW-BTC"]}]', "INVALID_PARAM"),
        ('[{"ticket":"a"},{"type":"ticker","codes":"KRW-BTC"}]', "WRONG_FORMAT"),
        (
            '[{"ticket":"a"},{"type":"ticker","codes":["KRW-BTC"]},{"format":"XML"}]',
            "INVALID_PARAM",
        ),
        ('[{"ticket":"a"},{"type":"myOrder"}]', "INVALID_AUTH"),
    ],
)
def test_request_errors(message, name):
    with pytest.raises(RequestError) as caught:
        parse_request(message, private=False)
    assert caught.value.name == name


def test_private_request_rules():
    with pytest.raises(RequestError) as caught:
        parse_request('[{"ticket":"a"},{"type":"myAsset","codes":["KRW-BTC"]}]', private=True)
    assert caught.value.name == "WRONG_FORMAT"
    parsed = parse_request('[{"ticket":"a"},{"type":"myOrder"},{"type":"myAsset"}]', private=True)
    assert [s.type for s in parsed.streams] == ["myOrder", "myAsset"]


def test_request_grammar_details():
    parsed = parse_request(
        b'[{"ticket":"a"},{"type":"orderbook","codes":["KRW-BTC.5","KRW-ETH.7","KRW-XRP"],'
        b'"level":10000,"isOnlySnapshot":true},{"format":"SIMPLE"}]',
        private=False,
    )
    (stream,) = parsed.streams
    assert parsed.format == "SIMPLE"
    assert stream.codes == {"KRW-BTC": 5, "KRW-ETH": 30, "KRW-XRP": 30}
    assert stream.level == 10_000 * UNIT
    assert stream.only_snapshot and not stream.only_realtime
    assert (
        parse_request('[{"ticket":"a"},{"type":"trade","codes":["X"]}]', False).format == "DEFAULT"
    )


@pytest.mark.parametrize("fmt", ["DEFAULT", "SIMPLE"])
def test_field_order_is_the_documented_one(fmt):
    from simulator.encode import _BOOK_KEYS, _TICKER_KEYS, _TRADE_KEYS, _UNIT_KEYS

    gen = MarketGenerator(market_list(3), seed=1, now_ms=NOW)
    trade = gen.step(NOW)
    state = gen.states[trade.code]
    assert tuple(decode(encode_trade(trade, fmt, "REALTIME"))) == _TRADE_KEYS[fmt]
    assert tuple(decode(encode_ticker(state, fmt, "REALTIME"))) == _TICKER_KEYS[fmt]
    book = decode(encode_orderbook(state, state.book(5), fmt, "REALTIME", NOW))
    assert tuple(book) == _BOOK_KEYS[fmt]
    units = book["orderbook_units" if fmt == "DEFAULT" else "obu"]
    assert tuple(units[0]) == _UNIT_KEYS[fmt]


def test_ticker_changes_sign_with_the_previous_close():
    gen = MarketGenerator(market_list(3), seed=4, now_ms=NOW)
    seen = set()
    for i in range(3000):
        state = gen.states[gen.step(NOW + i).code]
        ticker = decode(encode_ticker(state, "DEFAULT", "REALTIME"))
        diff = ticker["trade_price"] - ticker["prev_closing_price"]
        assert ticker["signed_change_price"] == diff
        assert ticker["change_price"] == abs(diff)
        assert (ticker["signed_change_rate"] < 0) == (diff < 0)
        assert ticker["change"] == ("RISE" if diff > 0 else "FALL" if diff < 0 else "EVEN")
        seen.add(ticker["change"])
    assert {"RISE", "FALL"} <= seen
