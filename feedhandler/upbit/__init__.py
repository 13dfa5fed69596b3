"""Sans-IO Upbit protocol: subscriptions, request frames, decoding, authentication."""

from feedhandler.upbit.subscription import (
    ALL_TYPES,
    CANDLE_TYPES,
    CANDLE_UNITS,
    ORDERBOOK_DEPTHS,
    PRIVATE_TYPES,
    QUOTE_TYPES,
    Subscription,
    SubscriptionError,
    is_market_code,
    split_code,
)

__all__ = [
    "ALL_TYPES",
    "CANDLE_TYPES",
    "CANDLE_UNITS",
    "ORDERBOOK_DEPTHS",
    "PRIVATE_TYPES",
    "QUOTE_TYPES",
    "Subscription",
    "SubscriptionError",
    "is_market_code",
    "split_code",
]
