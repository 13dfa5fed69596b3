"""Request frames: exact bytes for known sets, determinism, and validation before building."""

from __future__ import annotations

import itertools
import json
import uuid
from decimal import Decimal

import pytest

from feedhandler.upbit import Subscription, SubscriptionError, build_request, new_ticket
from feedhandler.upbit.request import merge_subscriptions


def test_single_ticker_golden() -> None:
    frame = build_request([Subscription("ticker", ("KRW-ETH", "KRW-BTC"))], ticket="t-1")
    assert frame == (
        b'[{"ticket":"t-1"},{"type":"ticker","codes":["KRW-BTC","KRW-ETH"]},{"format":"DEFAULT"}]'
    )


def test_mixed_set_golden() -> None:
    subs = [
        Subscription("trade", ("KRW-BTC",), is_only_realtime=True),
        Subscription("orderbook", ("KRW-BTC.15", "KRW-ETH.5"), level=Decimal("10000")),
        Subscription("orderbook", ("BTC-XRP",)),
        Subscription("candle.1m", ("KRW-BTC",)),
        Subscription("candle.1s", ("KRW-BTC",), is_only_snapshot=True),
        Subscription("ticker", ("KRW-BTC",)),
    ]
    assert build_request(subs, ticket="abc", format="SIMPLE") == (
        b'[{"ticket":"abc"},'
        b'{"type":"candle.1m","codes":["KRW-BTC"]},'
        b'{"type":"candle.1s","codes":["KRW-BTC"],"is_only_snapshot":true},'
        b'{"type":"orderbook","codes":["BTC-XRP"]},'
        b'{"type":"orderbook","codes":["KRW-BTC.15","KRW-ETH.5"],"level":10000},'
        b'{"type":"ticker","codes":["KRW-BTC"]},'
        b'{"type":"trade","codes":["KRW-BTC"],"is_only_realtime":true},'
        b'{"format":"SIMPLE"}]'
    )


def test_private_set_golden() -> None:
    subs = [Subscription("myAsset"), Subscription("myOrder", ("KRW-BTC",))]
    assert build_request(subs, ticket="p") == (
        b'[{"ticket":"p"},{"type":"myAsset"},{"type":"myOrder","codes":["KRW-BTC"]},'
        b'{"format":"DEFAULT"}]'
    )
    assert build_request([Subscription("myOrder")], ticket="p", format="JSON_LIST") == (
        b'[{"ticket":"p"},{"type":"myOrder"},{"format":"JSON_LIST"}]'
    )


def test_fractional_level_is_a_json_number() -> None:
    frame = build_request(
        [Subscription("orderbook", ("KRW-XRP",), level=Decimal("0.1"))], ticket="x"
    )
    assert b'"level":0.1}' in frame
    assert json.loads(frame)[1]["level"] == 0.1


def test_same_options_merge_codes_and_different_options_stay_apart() -> None:
    subs = [
        Subscription("ticker", ("KRW-ETH",)),
        Subscription("ticker", ("KRW-BTC",)),
        Subscription("ticker", ("KRW-BTC",), is_only_snapshot=True),
        Subscription("ticker", ("KRW-BTC",)),
    ]
    assert build_request(subs, ticket="m") == (
        b'[{"ticket":"m"},{"type":"ticker","codes":["KRW-BTC","KRW-ETH"]},'
        b'{"type":"ticker","codes":["KRW-BTC"],"is_only_snapshot":true},{"format":"DEFAULT"}]'
    )


def test_my_order_for_every_market_absorbs_coded_ones() -> None:
    merged = merge_subscriptions([Subscription("myOrder", ("KRW-BTC",)), Subscription("myOrder")])
    assert merged == (Subscription("myOrder"),)


def test_output_does_not_depend_on_input_order() -> None:
    subs = [
        Subscription("trade", ("KRW-BTC", "KRW-ETH")),
        Subscription("orderbook", ("KRW-BTC.30",)),
        Subscription("myAsset"),
        Subscription("ticker", ("KRW-XRP",)),
    ]
    frames = {build_request(order, ticket="d") for order in itertools.permutations(subs)}
    assert len(frames) == 1
    assert build_request(iter(subs), ticket="d") in frames


@pytest.mark.parametrize(
    ("subs", "kwargs", "message"),
    [
        ([], {}, "at least one"),
        ([Subscription("ticker", ("KRW-BTC",))], {"format": "XML"}, "unknown request format"),
        ([Subscription("ticker", ("KRW-BTC",))], {"format": "default"}, "unknown request format"),
        ([Subscription("ticker", ("KRW-BTC",))], {"ticket": ""}, "ticket"),
        ([Subscription("ticker", ("KRW-BTC",))], {"ticket": "x" * 200}, "ticket"),
        ([Subscription("ticker", ("KRW-BTC",))], {"ticket": 5}, "ticket"),
        (["ticker"], {}, "Subscription objects"),
        ([{"type": "ticker", "codes": ["KRW-BTC"]}], {}, "Subscription objects"),
        (
            [Subscription("orderbook", ("KRW-BTC.5",)), Subscription("orderbook", ("KRW-BTC.15",))],
            {},
            "conflicting orderbook",
        ),
    ],
)
def test_invalid_input_raises_before_building(subs: list, kwargs: dict, message: str) -> None:
    kwargs = {"ticket": "t", **kwargs}
    with pytest.raises(SubscriptionError, match=message):
        build_request(subs, **kwargs)


def test_new_ticket_is_a_fresh_uuid4() -> None:
    tickets = {new_ticket() for _ in range(100)}
    assert len(tickets) == 100
    for ticket in tickets:
        assert uuid.UUID(ticket).version == 4
