"""Private side of the simulated exchange: JWT checks, one account, orders and their events.

Balances and order amounts are ``Decimal`` throughout and are written to the wire
as exact JSON numbers (myOrder/myAsset) or strings (REST orders), never via float.
Event sequence (an assumption, SPEC 15.4): a resting order emits myOrder ``wait``;
each fill emits myOrder ``trade`` and, when nothing remains, ``done``; a cancel
emits ``cancel``; every change of a currency's free or locked balance emits one
myAsset event with the changed currencies.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid as uuidlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, Decimal, InvalidOperation
from typing import Any
from urllib.parse import unquote, urlencode

import jwt

from simulator.numbers import SCALE

ALGORITHMS = ["HS512", "HS256"]
DEFAULT_BALANCES: dict[str, str] = {
    "KRW": "100000000.37231066771348207123",
    "BTC": "1.5",
    "ETH": "20",
    "XRP": "50000",
    "USDT": "100000",
}
_QUANTUM = Decimal(1).scaleb(-SCALE)


class AuthError(Exception):
    """A JWT the exchange refuses; ``name`` is the REST error name (401 body)."""

    def __init__(self, name: str, detail: str) -> None:
        super().__init__(f"{name}: {detail}")
        self.name = name
        self.detail = detail


class OrderError(Exception):
    def __init__(self, status: int, name: str, message: str) -> None:
        super().__init__(f"{status} {name}: {message}")
        self.status = status
        self.name = name
        self.message = message


class Authenticator:
    """Verifies ``Authorization: Bearer <jwt>`` headers; remembers every nonce it accepted."""

    def __init__(self, access_key: str, secret_key: str, nonce_memory: int = 1_000_000) -> None:
        if not access_key or not secret_key:
            raise ValueError("the simulator needs both an access key and a secret key")
        self._access_key = access_key
        self._secret_key = secret_key
        self._nonces: set[str] = set()
        self._order: deque[str] = deque()
        self._memory = nonce_memory

    def __repr__(self) -> str:
        return "Authenticator(access_key=***, secret_key=***)"

    def verify(self, authorization: str | None, query: str | None = None) -> dict[str, Any]:
        """The token's payload, or :class:`AuthError`. ``query`` is the string to hash-check."""
        if not authorization:
            raise AuthError("jwt_verification", "no Authorization header")
        scheme, _, token = authorization.partition(" ")
        if scheme != "Bearer" or not token:
            raise AuthError("jwt_verification", "Authorization is not 'Bearer <token>'")
        try:
            payload = jwt.decode(token, self._secret_key, algorithms=ALGORITHMS)
        except jwt.InvalidTokenError as exc:
            raise AuthError("jwt_verification", type(exc).__name__) from exc
        access = payload.get("access_key")
        if not isinstance(access, str) or not hmac.compare_digest(access, self._access_key):
            raise AuthError("invalid_access_key", "unknown access key")
        nonce = payload.get("nonce")
        if not isinstance(nonce, str) or not nonce:
            raise AuthError("jwt_verification", "token has no nonce")
        if nonce in self._nonces:
            raise AuthError("nonce_used", "nonce was already used")
        if query:
            expected = hashlib.sha512(query.encode()).hexdigest()
            if payload.get("query_hash") != expected or payload.get(
                "query_hash_alg", "SHA512"
            ) not in ("SHA512",):
                raise AuthError("invalid_query_payload", "query_hash does not match the request")
        self._nonces.add(nonce)
        self._order.append(nonce)
        if len(self._order) > self._memory:
            self._nonces.discard(self._order.popleft())
        return payload


def query_string(params: dict[str, Any]) -> str:
    """The ``key=value&...`` string Upbit hashes (not URL-encoded, SPEC 15.5)."""
    return unquote(urlencode(params, doseq=True))


@dataclass(slots=True)
class Order:
    uuid: str
    market: str
    side: str
    ord_type: str
    price: Decimal | None
    volume: Decimal | None
    created_ms: int
    identifier: str | None
    time_in_force: str | None
    fee_rate: Decimal
    state: str = "wait"
    remaining_volume: Decimal = Decimal(0)
    executed_volume: Decimal = Decimal(0)
    executed_funds: Decimal = Decimal(0)
    reserved_fee: Decimal = Decimal(0)
    remaining_fee: Decimal = Decimal(0)
    paid_fee: Decimal = Decimal(0)
    locked: Decimal = Decimal(0)
    trades_count: int = 0
    trades: list[dict[str, Any]] = field(default_factory=list)

    @property
    def quote(self) -> str:
        return self.market.split("-", 1)[0]

    @property
    def base(self) -> str:
        return self.market.split("-", 1)[1]

    @property
    def avg_price(self) -> Decimal:
        if not self.executed_volume:
            return Decimal(0)
        return (self.executed_funds / self.executed_volume).quantize(_QUANTUM)

    def rest_json(self, now_kst: str) -> dict[str, Any]:
        def text(value: Decimal | None) -> str | None:
            return None if value is None else format(value, "f")

        item: dict[str, Any] = {
            "market": self.market,
            "uuid": self.uuid,
            "side": self.side,
            "ord_type": self.ord_type,
            "price": text(self.price),
            "state": self.state,
            "created_at": now_kst,
            "volume": text(self.volume),
            "remaining_volume": text(self.remaining_volume),
            "reserved_fee": text(self.reserved_fee),
            "remaining_fee": text(self.remaining_fee),
            "paid_fee": text(self.paid_fee),
            "locked": text(self.locked),
            "executed_volume": text(self.executed_volume),
            "prevented_volume": "0",
            "prevented_locked": "0",
            "trades_count": self.trades_count,
        }
        if self.time_in_force is not None:
            item["time_in_force"] = self.time_in_force
        if self.identifier is not None:
            item["identifier"] = self.identifier
        return item


Event = tuple[str, dict[str, Any]]
"""("myOrder" | "myAsset", DEFAULT-named fields with Decimal values)."""


def _decimal(value: object, name: str) -> Decimal:
    try:
        number = Decimal(str(value))
    except InvalidOperation as exc:
        raise OrderError(400, "invalid_parameter", f"{name} is not a number") from exc
    if not number.is_finite() or number <= 0:
        raise OrderError(400, "invalid_parameter", f"{name} must be a positive number")
    return number


class Account:
    """One account's balances and orders; every change returns the events it causes."""

    def __init__(
        self,
        markets: set[str],
        best_price: Callable[[str, str], Decimal],
        balances: dict[str, str] | None = None,
    ) -> None:
        self.markets = markets
        self.best_price = best_price
        self.balances: dict[str, list[Decimal]] = {
            currency: [Decimal(amount), Decimal(0)]
            for currency, amount in (balances or DEFAULT_BALANCES).items()
        }
        self.orders: dict[str, Order] = {}
        self.identifiers: set[str] = set()
        self.asset_uuid = str(uuidlib.UUID(int=0x5EED))
        self._uuid_counter = 0

    def _new_uuid(self) -> str:
        self._uuid_counter += 1
        return str(uuidlib.UUID(int=(0xA5 << 120) | self._uuid_counter))

    def _wallet(self, currency: str) -> list[Decimal]:
        return self.balances.setdefault(currency, [Decimal(0), Decimal(0)])

    def find(self, order_uuid: str | None, identifier: str | None = None) -> Order:
        order = self.orders.get(order_uuid) if order_uuid is not None else None
        if order is None and identifier is not None:
            order = next((o for o in self.orders.values() if o.identifier == identifier), None)
        if order is not None:
            return order
        raise OrderError(404, "order_not_found", "주문을 찾지 못했습니다.")

    def place(self, params: dict[str, Any], now_ms: int) -> tuple[Order, list[Event]]:
        market = params.get("market")
        side = params.get("side")
        ord_type = params.get("ord_type")
        if market not in self.markets:
            raise OrderError(404, "notfoundmarket", "마켓을 찾지 못했습니다.")
        if side not in ("bid", "ask") or ord_type not in ("limit", "price", "market"):
            raise OrderError(400, "invalid_parameter", "잘못된 파라미터")
        identifier = params.get("identifier")
        if identifier is not None:
            if identifier in self.identifiers:
                raise OrderError(400, "invalid_parameter", "identifier already used")
            self.identifiers.add(identifier)
        price = _decimal(params["price"], "price") if params.get("price") is not None else None
        volume = _decimal(params["volume"], "volume") if params.get("volume") is not None else None
        if ord_type == "limit" and (price is None or volume is None):
            raise OrderError(400, "invalid_parameter", "limit orders need price and volume")
        if ord_type == "price" and (side != "bid" or price is None or volume is not None):
            raise OrderError(400, "invalid_parameter", "ord_type=price is a bid with price only")
        if ord_type == "market" and (side != "ask" or volume is None or price is not None):
            raise OrderError(400, "invalid_parameter", "ord_type=market is an ask with volume only")
        quote = market.split("-", 1)[0]
        fee_rate = Decimal("0.0005") if quote == "KRW" else Decimal("0.0025")
        order = Order(
            self._new_uuid(), market, side, ord_type, price, volume, now_ms, identifier,
            params.get("time_in_force"), fee_rate,
        )  # fmt: skip
        events: list[Event] = []
        if side == "bid":
            funds = price * volume if ord_type == "limit" else price
            assert funds is not None
            fee = funds * fee_rate
            wallet = self._wallet(quote)
            if wallet[0] < funds + fee:
                raise OrderError(
                    400, "insufficient_funds_bid", "주문 가능한 금액(KRW)이 부족합니다."
                )
            wallet[0] -= funds + fee
            wallet[1] += funds + fee
            order.locked = funds + fee
            order.reserved_fee = fee
            order.remaining_fee = fee
            changed = [quote]
        else:
            assert volume is not None
            wallet = self._wallet(order.base)
            if wallet[0] < volume:
                raise OrderError(400, "insufficient_funds_ask", "주문 가능한 수량이 부족합니다.")
            wallet[0] -= volume
            wallet[1] += volume
            order.locked = volume
            changed = [order.base]
        order.remaining_volume = volume if volume is not None else Decimal(0)
        self.orders[order.uuid] = order
        events.append(("myOrder", self._order_event(order, now_ms)))
        events.append(("myAsset", self._asset_event(changed, now_ms)))
        if ord_type == "price":
            best = self.best_price(market, "ask")
            assert price is not None
            fill_volume = (price / best).quantize(_QUANTUM, rounding=ROUND_DOWN)
            order.remaining_volume = fill_volume
            events.extend(self.fill(order.uuid, now_ms, fill_volume, best, taker=True))
        elif ord_type == "market":
            events.extend(
                self.fill(order.uuid, now_ms, volume, self.best_price(market, "bid"), taker=True)
            )
        return order, events

    def fill(
        self,
        order_uuid: str,
        now_ms: int,
        volume: Decimal | None = None,
        price: Decimal | None = None,
        taker: bool = False,
    ) -> list[Event]:
        """Execute ``volume`` (default: all that remains) of an open order at ``price``."""
        order = self.find(order_uuid)
        if order.state not in ("wait", "watch"):
            raise OrderError(400, "order_not_open", f"order is {order.state}")
        amount = order.remaining_volume if volume is None else Decimal(volume)
        if amount <= 0 or amount > order.remaining_volume:
            raise OrderError(400, "invalid_volume", "fill volume exceeds the remaining volume")
        fill_price = price if price is not None else order.price
        if fill_price is None:
            raise OrderError(400, "invalid_parameter", "a fill needs a price")
        funds = fill_price * amount
        fee = funds * order.fee_rate
        quote, base = self._wallet(order.quote), self._wallet(order.base)
        if order.side == "bid":
            quote[1] -= funds + fee
            order.locked -= funds + fee
            base[0] += amount
        else:
            base[1] -= amount
            order.locked -= amount
            quote[0] += funds - fee
        order.remaining_volume -= amount
        order.executed_volume += amount
        order.executed_funds += funds
        order.paid_fee += fee
        order.remaining_fee = max(order.reserved_fee - order.paid_fee, Decimal(0))
        order.trades_count += 1
        trade_uuid = self._new_uuid()
        order.trades.append(
            {"uuid": trade_uuid, "price": fill_price, "volume": amount, "funds": funds}
        )
        events: list[Event] = []
        trade_event = self._order_event(order, now_ms)
        trade_event.update(
            state="trade",
            trade_uuid=trade_uuid,
            price=fill_price,
            volume=amount,
            trade_fee=fee,
            is_maker=not taker,
            trade_timestamp=now_ms,
        )
        events.append(("myOrder", trade_event))
        if order.remaining_volume == 0 or order.ord_type == "price":
            order.state = "done"
            if order.side == "bid" and order.locked:
                quote[0] += order.locked
                quote[1] -= order.locked
                order.locked = Decimal(0)
            events.append(("myOrder", self._order_event(order, now_ms)))
        events.append(("myAsset", self._asset_event([order.quote, order.base], now_ms)))
        return events

    def cancel(self, order_uuid: str, now_ms: int) -> list[Event]:
        order = self.find(order_uuid)
        if order.state not in ("wait", "watch"):
            raise OrderError(400, "order_not_open", f"order is {order.state}")
        currency = order.quote if order.side == "bid" else order.base
        wallet = self._wallet(currency)
        wallet[0] += order.locked
        wallet[1] -= order.locked
        order.locked = Decimal(0)
        order.state = "cancel"
        return [
            ("myOrder", self._order_event(order, now_ms)),
            ("myAsset", self._asset_event([currency], now_ms)),
        ]

    def _order_event(self, order: Order, now_ms: int) -> dict[str, Any]:
        return {
            "type": "myOrder",
            "code": order.market,
            "uuid": order.uuid,
            "ask_bid": "BID" if order.side == "bid" else "ASK",
            "order_type": order.ord_type,
            "state": order.state,
            "trade_uuid": None,
            "price": order.price,
            "avg_price": order.avg_price,
            "volume": order.volume,
            "remaining_volume": order.remaining_volume,
            "executed_volume": order.executed_volume,
            "trades_count": order.trades_count,
            "reserved_fee": order.reserved_fee,
            "remaining_fee": order.remaining_fee,
            "paid_fee": order.paid_fee,
            "locked": order.locked,
            "executed_funds": order.executed_funds,
            "time_in_force": order.time_in_force,
            "trade_fee": None,
            "is_maker": None,
            "identifier": order.identifier,
            "smp_type": None,
            "prevented_volume": Decimal(0),
            "prevented_locked": Decimal(0),
            "trade_timestamp": None,
            "order_timestamp": order.created_ms,
            "timestamp": now_ms,
            "stream_type": "REALTIME",
        }

    def _asset_event(self, currencies: list[str], now_ms: int) -> dict[str, Any]:
        return {
            "type": "myAsset",
            "asset_uuid": self.asset_uuid,
            "assets": [
                {"currency": c, "balance": self._wallet(c)[0], "locked": self._wallet(c)[1]}
                for c in dict.fromkeys(currencies)
            ],
            "asset_timestamp": now_ms,
            "timestamp": now_ms,
            "stream_type": "REALTIME",
        }


SIMPLE_NAMES: dict[str, str] = {
    "type": "ty", "code": "cd", "uuid": "uid", "ask_bid": "ab", "order_type": "ot", "state": "s",
    "trade_uuid": "tuid", "price": "p", "avg_price": "ap", "volume": "v",
    "remaining_volume": "rv", "executed_volume": "ev", "trades_count": "tc",
    "reserved_fee": "rsf", "remaining_fee": "rmf", "paid_fee": "pf", "locked": "l",
    "executed_funds": "ef", "time_in_force": "tif", "trade_fee": "tf", "is_maker": "im",
    "identifier": "id", "smp_type": "smpt", "prevented_volume": "pv", "prevented_locked": "pl",
    "trade_timestamp": "ttms", "order_timestamp": "otms", "timestamp": "tms",
    "stream_type": "st", "asset_uuid": "astuid", "assets": "ast", "currency": "cu",
    "balance": "b", "asset_timestamp": "asttms",
}  # fmt: skip
# Inside an asset entry "locked" is "l" too, which the table above already gives.


def _json(value: Any, simple: bool) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, Decimal):
        return format(value.normalize() if value == value.to_integral() else value, "f")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ",".join(_json(item, simple) for item in value) + "]"
    if isinstance(value, dict):
        return _object(value, simple)
    raise TypeError(f"cannot encode {type(value).__name__} in a private event")


def _object(document: dict[str, Any], simple: bool) -> str:
    return (
        "{"
        + ",".join(
            f'"{SIMPLE_NAMES.get(key, key) if simple else key}":{_json(value, simple)}'
            for key, value in document.items()
        )
        + "}"
    )


def encode_private(event: dict[str, Any], simple: bool) -> bytes:
    """A myOrder/myAsset payload with Decimal values written exactly as JSON numbers."""
    return _object(event, simple).encode()
