"""Request frames: a subscription set -> the one JSON array Upbit expects (SPEC.md section 2).

Upbit replaces a connection's whole subscription with every request, so a request
always carries the complete set. The output is deterministic for the same set and
ticket: type objects are sorted, codes are sorted (``Subscription`` keeps them so).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any, Final

import msgspec

from feedhandler.upbit.subscription import Subscription, SubscriptionError

REQUEST_FORMATS: Final = ("DEFAULT", "SIMPLE", "JSON_LIST", "SIMPLE_LIST")
MAX_TICKET_CHARS: Final = 128

# Decimal levels go out as JSON numbers (Upbit documents `level` as a number).
_ENCODER: Final = msgspec.json.Encoder(decimal_format="number")


def new_ticket() -> str:
    """A fresh request ticket (a UUID4, as Upbit recommends)."""
    return str(uuid.uuid4())


def _options(sub: Subscription) -> tuple[Any, ...]:
    return (sub.type, sub.level, sub.is_only_snapshot, sub.is_only_realtime)


def _sort_key(sub: Subscription) -> tuple[Any, ...]:
    return (
        sub.type,
        sub.level is not None,
        sub.level if sub.level is not None else 0,
        sub.is_only_snapshot,
        sub.is_only_realtime,
        sub.codes,
    )


def merge_subscriptions(subscriptions: Iterable[Subscription]) -> tuple[Subscription, ...]:
    """One Subscription per (type, options): codes of equal options are united.

    A myOrder object without codes means every market and absorbs coded ones. Raises
    SubscriptionError for a non-Subscription item, an empty set, or a union that
    conflicts (the same orderbook code with two depths).
    """
    groups: dict[tuple[Any, ...], list[Subscription]] = {}
    for sub in subscriptions:
        if not isinstance(sub, Subscription):
            raise SubscriptionError(
                f"a request is built from Subscription objects, not {type(sub).__name__}"
            )
        groups.setdefault(_options(sub), []).append(sub)
    if not groups:
        raise SubscriptionError("a request needs at least one subscription")
    merged: list[Subscription] = []
    for (type_name, level, only_snapshot, only_realtime), members in groups.items():
        if len(members) == 1:
            merged.append(members[0])
            continue
        every_market = type_name == "myOrder" and any(not m.codes for m in members)
        codes = () if every_market else tuple(code for m in members for code in m.codes)
        try:
            merged.append(
                Subscription(
                    type_name,
                    codes,
                    level=level,
                    is_only_snapshot=only_snapshot,
                    is_only_realtime=only_realtime,
                )
            )
        except SubscriptionError as exc:
            raise SubscriptionError(f"conflicting {type_name} subscriptions: {exc}") from None
    return tuple(sorted(merged, key=_sort_key))


def _type_object(sub: Subscription) -> dict[str, Any]:
    obj: dict[str, Any] = {"type": sub.type}
    if sub.codes:
        obj["codes"] = list(sub.codes)
    if sub.level is not None:
        obj["level"] = sub.level
    if sub.is_only_snapshot:
        obj["is_only_snapshot"] = True
    if sub.is_only_realtime:
        obj["is_only_realtime"] = True
    return obj


def build_request(
    subscriptions: Iterable[Subscription], *, ticket: str, format: str = "DEFAULT"
) -> bytes:
    """``[{"ticket": ...}, {type object}..., {"format": ...}]`` as compact JSON bytes.

    Everything is validated before anything is built; bad input raises
    SubscriptionError.
    """
    if format not in REQUEST_FORMATS:
        raise SubscriptionError(
            f"unknown request format {format!r}; expected one of {', '.join(REQUEST_FORMATS)}"
        )
    if not isinstance(ticket, str) or not ticket.strip():
        raise SubscriptionError("a request ticket must be a non-empty string")
    if len(ticket) > MAX_TICKET_CHARS:
        raise SubscriptionError(f"a request ticket is at most {MAX_TICKET_CHARS} characters")
    merged = merge_subscriptions(subscriptions)
    frame: list[dict[str, Any]] = [{"ticket": ticket}]
    frame.extend(_type_object(sub) for sub in merged)
    frame.append({"format": format})
    return _ENCODER.encode(frame)
