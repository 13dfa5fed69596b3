from decimal import Decimal

import pytest

from feedhandler.upbit import Subscription, SubscriptionError, split_code


def test_codes_are_sorted_and_unique():
    sub = Subscription("ticker", ("KRW-XRP", "KRW-BTC", "KRW-XRP"))
    assert sub.codes == ("KRW-BTC", "KRW-XRP")


def test_orderbook_depth_suffix():
    assert split_code("KRW-BTC.15") == ("KRW-BTC", 15)
    assert Subscription("orderbook", ("KRW-BTC.5",)).market_codes == ("KRW-BTC",)
    with pytest.raises(SubscriptionError, match="one of 1, 5, 15, 30"):
        split_code("KRW-BTC.7")
    with pytest.raises(SubscriptionError, match="only valid for orderbook"):
        Subscription("trade", ("KRW-BTC.5",))


@pytest.mark.parametrize("bad", ["krw-btc", "KRWBTC", "KRW-", "KRW-BTC ", "", "KRW_BTC"])
def test_malformed_codes_rejected(bad):
    with pytest.raises(SubscriptionError, match="malformed market code"):
        Subscription("ticker", (bad,))


def test_type_rules():
    with pytest.raises(SubscriptionError, match="unknown data type"):
        Subscription("candle.2m", ("KRW-BTC",))
    with pytest.raises(SubscriptionError, match="takes no codes"):
        Subscription("myAsset", ("KRW-BTC",))
    with pytest.raises(SubscriptionError, match="needs at least one"):
        Subscription("trade", ())
    assert Subscription("myOrder").codes == ()
    with pytest.raises(SubscriptionError, match="exclude each other"):
        Subscription("ticker", ("KRW-BTC",), is_only_snapshot=True, is_only_realtime=True)


def test_level_is_krw_only_and_decimal():
    sub = Subscription("orderbook", ("KRW-BTC",), level=10000)
    assert sub.level == Decimal(10000)
    with pytest.raises(SubscriptionError, match="KRW markets only"):
        Subscription("orderbook", ("BTC-ETH",), level=100)
    with pytest.raises(SubscriptionError, match="non-negative"):
        Subscription("orderbook", ("KRW-BTC",), level=-1)
