from decimal import Decimal

import pytest

from feedhandler.subscriptions import (
    PRIVATE_CONNECTION,
    CapacityError,
    SubscriptionRegistry,
    merge,
)
from feedhandler.upbit import Subscription


def test_merge_unions_codes_per_type_and_options():
    merged = merge(
        [
            Subscription("trade", ("KRW-BTC",)),
            Subscription("trade", ("KRW-ETH", "KRW-BTC")),
            Subscription("orderbook", ("KRW-BTC.5",)),
            Subscription("orderbook", ("KRW-BTC.15", "KRW-XRP.1")),
            Subscription("orderbook", ("KRW-BTC",), level=Decimal(1000)),
        ]
    )
    assert merged == [
        Subscription("orderbook", ("KRW-BTC.15", "KRW-XRP.1")),
        Subscription("orderbook", ("KRW-BTC",), level=Decimal(1000)),
        Subscription("trade", ("KRW-BTC", "KRW-ETH")),
    ]


def test_merge_default_depth_is_deepest():
    merged = merge(
        [Subscription("orderbook", ("KRW-BTC.5",)), Subscription("orderbook", ("KRW-BTC",))]
    )
    assert merged == [Subscription("orderbook", ("KRW-BTC",))]


def _registry(changes, **kw):
    kw.setdefault("max_codes_per_connection", 4)
    kw.setdefault("max_connections", 3)
    return SubscriptionRegistry(
        on_plan_change=lambda n, p: changes.append((n, p)), clock=lambda: 1.0, **kw
    )


def test_overlapping_sources_share_one_subscription():
    changes = []
    reg = _registry(changes)
    reg.set_source("w1", [Subscription("trade", ("KRW-BTC", "KRW-ETH"))])
    reg.set_source("w2", [Subscription("trade", ("KRW-ETH", "KRW-XRP"))])
    plans = reg.plans()
    assert list(plans) == ["public-0"]
    assert plans["public-0"].subscriptions == (
        Subscription("trade", ("KRW-BTC", "KRW-ETH", "KRW-XRP")),
    )
    reg.remove_source("w1")
    assert reg.plan("public-0").subscriptions == (Subscription("trade", ("KRW-ETH", "KRW-XRP")),)
    reg.remove_source("w2")
    assert reg.plans() == {}
    assert changes[-1][1].subscriptions == ()


def test_codes_spread_over_connections_and_stay_put():
    changes = []
    reg = _registry(changes, max_codes_per_connection=4)
    codes = [f"KRW-C{i}" for i in range(6)]
    reg.set_source("config", [Subscription("ticker", codes[:4]), Subscription("trade", codes[:2])])
    plans = reg.plans()
    assert sorted(plans) == ["public-0", "public-1"]
    assert all(sum(len(s.codes) for s in p.subscriptions) <= 4 for p in plans.values())
    # every type of a market lives on the same connection
    for plan in plans.values():
        for sub in plan.subscriptions:
            assert set(sub.market_codes) <= plan.codes
    before = {n: p.codes for n, p in plans.items()}
    changes.clear()
    reg.set_source("w9", [Subscription("ticker", (codes[5],))])
    after = reg.plans()
    for name, codes_before in before.items():
        assert codes_before <= after[name].codes
    assert len(changes) == 1  # only the connection that got the new code


def test_capacity_error_names_the_keys():
    reg = _registry([], max_codes_per_connection=1, max_connections=1)
    with pytest.raises(CapacityError, match="max_connections"):
        reg.set_source("config", [Subscription("ticker", ("KRW-BTC", "KRW-ETH"))])


def test_private_types_go_to_the_private_connection():
    reg = _registry([])
    reg.set_source(
        "config",
        [
            Subscription("myAsset"),
            Subscription("myOrder", ("KRW-BTC",)),
            Subscription("ticker", ("KRW-BTC",)),
        ],
    )
    plans = reg.plans()
    assert plans[PRIVATE_CONNECTION].private
    assert {s.type for s in plans[PRIVATE_CONNECTION].subscriptions} == {"myAsset", "myOrder"}
    assert {s.type for s in plans["public-0"].subscriptions} == {"ticker"}


def test_summary_lists_types_codes_and_connection():
    reg = _registry([])
    reg.set_source("config", [Subscription("ticker", ("KRW-BTC",))])
    rows = reg.summary({"public-0": 5.0})
    assert rows == [
        {
            "connection": "public-0",
            "type": "ticker",
            "codes": ["KRW-BTC"],
            "level": None,
            "since": 1.0,
            "last_message": 5.0,
        }
    ]


def test_capacity_error_leaves_previous_state():
    reg = _registry([], max_codes_per_connection=2, max_connections=1)
    reg.set_source("config", [Subscription("ticker", ("KRW-BTC",))])
    with pytest.raises(CapacityError):
        reg.set_source("w1", [Subscription("ticker", ("KRW-ETH", "KRW-XRP"))])
    assert reg.sources().keys() == {"config"}
    assert reg.plan("public-0").subscriptions == (Subscription("ticker", ("KRW-BTC",)),)
    reg.set_source("w1", [Subscription("ticker", ("KRW-ETH",))])
    assert reg.plan("public-0").codes == {"KRW-BTC", "KRW-ETH"}


def test_myorder_without_codes_means_every_market_and_absorbs_codes():
    merged = merge([Subscription("myOrder", ("KRW-BTC",)), Subscription("myOrder")])
    assert merged == [Subscription("myOrder")]
