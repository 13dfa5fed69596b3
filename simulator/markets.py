"""The simulator's market list, tick sizes and orderbook grouping levels.

The list is fixed and deterministic: hand-written real pairs first (starting with
KRW-BTC, KRW-ETH, KRW-XRP and mixing in BTC and USDT quotes early so that a small
``--markets N`` covers every quote currency), then generated names up to
:data:`MAX_MARKETS`. All prices are integers in units of 1e-8 (``numbers.SCALE``).
"""

from __future__ import annotations

import random
from bisect import bisect_right
from dataclasses import dataclass

from simulator.numbers import UNIT

MAX_MARKETS = 1000

# (code, korean name, english name, initial price in the quote currency)
_KNOWN: tuple[tuple[str, str, str, str], ...] = (
    ("KRW-BTC", "비트코인", "Bitcoin", "140000000"),
    ("KRW-ETH", "이더리움", "Ethereum", "5000000"),
    ("KRW-XRP", "리플", "XRP", "3000"),
    ("KRW-SOL", "솔라나", "Solana", "300000"),
    ("KRW-DOGE", "도지코인", "Dogecoin", "350"),
    ("BTC-ETH", "이더리움", "Ethereum", "0.035"),
    ("USDT-BTC", "비트코인", "Bitcoin", "95000"),
    ("KRW-ADA", "에이다", "Cardano", "1000"),
    ("BTC-XRP", "리플", "XRP", "0.000021"),
    ("USDT-ETH", "이더리움", "Ethereum", "3500"),
    ("KRW-USDT", "테더", "Tether", "1400"),
    ("KRW-TRX", "트론", "TRON", "350"),
    ("KRW-LINK", "체인링크", "Chainlink", "25000"),
    ("KRW-AVAX", "아발란체", "Avalanche", "40000"),
    ("KRW-DOT", "폴카닷", "Polkadot", "9000"),
    ("KRW-SHIB", "시바이누", "Shiba Inu", "0.03"),
    ("KRW-BCH", "비트코인캐시", "Bitcoin Cash", "650000"),
    ("KRW-ETC", "이더리움클래식", "Ethereum Classic", "30000"),
    ("KRW-XLM", "스텔라루멘", "Stellar Lumens", "450"),
    ("KRW-1INCH", "1인치네트워크", "1inch Network", "400"),
    ("BTC-SOL", "솔라나", "Solana", "0.0021"),
    ("USDT-XRP", "리플", "XRP", "2.1"),
    ("KRW-NEAR", "니어프로토콜", "NEAR Protocol", "7000"),
    ("KRW-SAND", "샌드박스", "The Sandbox", "450"),
    ("KRW-HBAR", "헤데라", "Hedera", "300"),
    ("BTC-DOGE", "도지코인", "Dogecoin", "0.0000025"),
    ("USDT-SOL", "솔라나", "Solana", "210"),
    ("KRW-SUI", "수이", "Sui", "5000"),
    ("KRW-APT", "앱토스", "Aptos", "12000"),
    ("KRW-ARB", "아비트럼", "Arbitrum", "1100"),
)

_QUOTES = ("KRW", "KRW", "BTC", "KRW", "USDT")
_SYLLABLES = ("BA", "KO", "RI", "ZU", "ME", "TA", "NO", "XI", "LU", "PE", "DA", "QO", "VI", "SE")

# KRW tick table (price lower bound, tick), both in 1e-8 units. Bands of 100 KRW and
# above follow the 2025-07-31 table; below 100 KRW the previous table (SPEC section 11).
_KRW_TICKS: tuple[tuple[int, int], ...] = (
    (0, 1),
    (UNIT // 10_000, 10),
    (UNIT // 1_000, 100),
    (UNIT // 100, 1_000),
    (UNIT // 10, 10_000),
    (UNIT, 100_000),
    (10 * UNIT, 1_000_000),
    (100 * UNIT, UNIT),
    (1_000 * UNIT, UNIT),
    (5_000 * UNIT, 5 * UNIT),
    (10_000 * UNIT, 10 * UNIT),
    (50_000 * UNIT, 50 * UNIT),
    (100_000 * UNIT, 100 * UNIT),
    (500_000 * UNIT, 500 * UNIT),
    (1_000_000 * UNIT, 1_000 * UNIT),
)
_USDT_TICKS: tuple[tuple[int, int], ...] = (
    (0, 1),
    (UNIT // 10_000, 10),
    (UNIT // 1_000, 100),
    (UNIT // 100, 1_000),
    (UNIT // 10, 10_000),
    (UNIT, 100_000),
    (10 * UNIT, 1_000_000),
)


def _table_lookup(table: tuple[tuple[int, int], ...]) -> tuple[list[int], list[int]]:
    return [bound for bound, _ in table], [tick for _, tick in table]


_KRW_BOUNDS, _KRW_STEPS = _table_lookup(_KRW_TICKS)
_USDT_BOUNDS, _USDT_STEPS = _table_lookup(_USDT_TICKS)


def tick_size(quote: str, price: int) -> int:
    """The price unit (1e-8 units) at ``price`` for a market quoted in ``quote``."""
    if quote == "BTC":
        return 1
    if quote == "KRW":
        return _KRW_STEPS[bisect_right(_KRW_BOUNDS, price) - 1]
    return _USDT_STEPS[bisect_right(_USDT_BOUNDS, price) - 1]


def tick_below(quote: str, price: int) -> int:
    """The tick of the band just below ``price`` (the step to the next lower valid price)."""
    return tick_size(quote, max(price - 1, 0))


def snap(quote: str, price: int) -> int:
    """Round ``price`` down to a valid price of its band (never below one tick)."""
    tick = tick_size(quote, price)
    return max(price - price % tick, tick)


@dataclass(frozen=True, slots=True)
class MarketInfo:
    code: str
    quote: str
    base: str
    korean_name: str
    english_name: str
    initial_price: int
    supported_levels: tuple[int, ...]
    """Orderbook grouping units in 1e-8 units; 0 = native ticks. Non-KRW markets only have 0."""


def _levels(quote: str, price: int) -> tuple[int, ...]:
    if quote != "KRW":
        return (0,)
    tick = tick_size(quote, price)
    return (0, tick * 10, tick * 100)


def _generated(index: int, rng: random.Random) -> tuple[str, str, str, str]:
    quote = _QUOTES[index % len(_QUOTES)]
    first = _SYLLABLES[index % len(_SYLLABLES)]
    second = _SYLLABLES[(index // len(_SYLLABLES)) % len(_SYLLABLES)]
    base = f"{first}{second}{index // (len(_SYLLABLES) ** 2)}"
    exponent = {"KRW": rng.uniform(0.0, 5.0), "BTC": rng.uniform(-7.0, -3.0)}.get(
        quote, rng.uniform(-2.0, 2.0)
    )
    price = f"{10**exponent:.8f}"
    return f"{quote}-{base}", base, base.title(), price


def _to_units(text: str) -> int:
    whole, _, frac = text.partition(".")
    return int(whole) * UNIT + int((frac + "0" * 8)[:8] or 0)


def market_list(count: int) -> list[MarketInfo]:
    """The first ``count`` markets of the fixed list (1 <= count <= MAX_MARKETS)."""
    if not 1 <= count <= MAX_MARKETS:
        raise ValueError(f"markets must be between 1 and {MAX_MARKETS}, got {count}")
    rng = random.Random(20240717)
    rows = list(_KNOWN)
    index = 0
    seen = {row[0] for row in rows}
    while len(rows) < count:
        row = _generated(index, rng)
        index += 1
        if row[0] not in seen:
            seen.add(row[0])
            rows.append(row)
    markets = []
    for code, korean, english, price_text in rows[:count]:
        quote, _, base = code.partition("-")
        price = snap(quote, _to_units(price_text))
        markets.append(MarketInfo(code, quote, base, korean, english, price, _levels(quote, price)))
    return markets
