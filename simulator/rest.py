"""Upbit REST endpoints: quotation (market/all, ticker, orderbook, trades/ticks) and orders.

Rate limiting per client address and group (SPEC 8, 15.6): quotation groups 10/s,
``order`` 12/s, ``default`` 30/s; any request with an ``Origin`` header is in group
``origin`` at 1 per 10 s. Over the limit the answer is 429 (plain text
``Too many API requests.``, as pyupbit expects); a client that collects more than
``rest_teapot_after`` 429s within 10 s is blocked with 418 for
``rest_block_seconds``, doubled on every repeat. Every response carries
``Remaining-Req``.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from simulator import encode
from simulator.http import HttpError, HttpRequest, HttpResponse
from simulator.limits import SlidingWindow
from simulator.markets import tick_size
from simulator.numbers import SCALE, from_decimal, plain
from simulator.private import AuthError, OrderError, query_string

if TYPE_CHECKING:
    from simulator.server import Exchange

log = logging.getLogger("simulator.rest")

_GROUPS = {
    ("GET", "/v1/market/all"): "market",
    ("GET", "/v1/ticker"): "ticker",
    ("GET", "/v1/ticker/all"): "ticker",
    ("GET", "/v1/orderbook/instruments"): "orderbook",
    ("GET", "/v1/orderbook"): "orderbook",
    ("GET", "/v1/trades/ticks"): "trade",
    ("POST", "/v1/orders"): "order",
    ("GET", "/v1/order"): "default",
    ("DELETE", "/v1/order"): "default",
    ("GET", "/v1/accounts"): "default",
}
_GROUP_LIMITS = {"order": 12, "default": 30}
_QUOTATION = {"market", "ticker", "orderbook", "trade"}


def _error(status: int, name: str | int, message: str, headers: dict[str, str]) -> HttpResponse:
    return HttpResponse.json(status, {"error": {"name": name, "message": message}}, headers)


def _one(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[-1] if values else None


def _count(text: str | None, default: int, high: int, headers: dict[str, str]) -> int:
    if text is None:
        return default
    if not text.isdigit() or not 1 <= int(text) <= high:
        raise _Reply(_error(400, "invalid_parameter", f"count must be 1..{high}", headers))
    return int(text)


class _Reply(Exception):
    def __init__(self, response: HttpResponse) -> None:
        super().__init__(response.status)
        self.response = response


class RestApi:
    def __init__(self, exchange: Exchange) -> None:
        self.exchange = exchange
        self.windows: dict[tuple[str, str], SlidingWindow] = {}
        self.rejections: dict[str, SlidingWindow] = {}
        self.blocked_until: dict[str, float] = {}
        self.block_count: dict[str, int] = {}
        self.forced_errors = 0
        self.outage_until = 0.0  # monotonic; REST answers 503 until then (fault injection)

    async def handle(self, request: HttpRequest) -> HttpResponse:
        exchange = self.exchange
        group = _GROUPS.get((request.method, request.path))
        if group is None:
            raise HttpError(404, f"no route {request.method} {request.path}")
        ip = request.client.rsplit(":", 1)[0]
        if "origin" in request.headers and group in _QUOTATION:
            group = "origin"
        now = exchange.monotonic()
        if now < self.outage_until:
            self.exchange.journal.rest.append(
                {"t": time.time(), "client": ip, "path": request.path, "status": 503}
            )
            return HttpResponse(503, b"Service Unavailable", "text/plain; charset=utf-8")
        limited = self._limit(ip, group, now, request.path)
        if limited is not None:
            return limited
        left = self.windows[(ip, group)].remaining(now)
        headers = {"Remaining-Req": f"group={group}; min=1800; sec={left}"}
        try:
            response = self._route(request, group, headers)
        except _Reply as reply:
            response = reply.response
        log.debug(
            "event=rest_request client=%s method=%s path=%s query=%s status=%s",
            ip,
            request.method,
            request.path,
            request.query_string,
            response.status,
        )
        return response

    def _limit(self, ip: str, group: str, now: float, path: str) -> HttpResponse | None:
        config = self.exchange.config
        blocked = self.blocked_until.get(ip, 0.0)
        if blocked > now:
            return self._teapot(ip, path, blocked - now)
        window = self.windows.get((ip, group))
        if window is None:
            if group == "origin":
                window = SlidingWindow(*config.origin_limit)
            else:
                window = SlidingWindow(_GROUP_LIMITS.get(group, config.rest_limit), 1.0)
            self.windows[(ip, group)] = window
        forced = self.forced_errors > 0
        if forced:
            self.forced_errors -= 1
        if not forced and window.allow(now):
            return None
        rejections = self.rejections.setdefault(ip, SlidingWindow(config.rest_teapot_after, 10.0))
        self.exchange.journal.rest.append(
            {"t": time.time(), "client": ip, "path": path, "group": group, "status": 429}
        )
        if not rejections.allow(now):
            repeat = self.block_count.get(ip, 0)
            self.block_count[ip] = repeat + 1
            seconds = config.rest_block_seconds * 2**repeat
            self.blocked_until[ip] = now + seconds
            return self._teapot(ip, path, seconds)
        return HttpResponse(
            429,
            b"Too many API requests.",
            "text/plain; charset=utf-8",
            {"Remaining-Req": f"group={group}; min=0; sec=0"},
        )

    def _teapot(self, ip: str, path: str, seconds: float) -> HttpResponse:
        self.exchange.journal.rest.append(
            {"t": time.time(), "client": ip, "path": path, "status": 418}
        )
        return HttpResponse(
            418,
            f"Blocked for {seconds:.0f} seconds after repeated 429 answers.".encode(),
            "text/plain; charset=utf-8",
        )

    def _route(self, request: HttpRequest, group: str, headers: dict[str, str]) -> HttpResponse:
        path = request.path
        query = request.query
        if path == "/v1/market/all":
            return self._market_all(query, headers)
        if path == "/v1/ticker":
            states = self._states(_one(query, "markets"), headers)
            body = "[" + ",".join(encode.rest_ticker(state) for state in states) + "]"
            return HttpResponse(200, body.encode(), headers=headers)
        if path == "/v1/ticker/all":
            return self._ticker_all(query, headers)
        if path == "/v1/orderbook":
            return self._orderbook(query, headers)
        if path == "/v1/orderbook/instruments":
            return self._instruments(query, headers)
        if path == "/v1/trades/ticks":
            return self._trades(query, headers)
        return self._exchange_api(request, headers)

    def _market_all(self, query: dict[str, list[str]], headers: dict[str, str]) -> HttpResponse:
        details = _one(query, "is_details") or "false"
        if details not in ("true", "false"):
            return _error(400, 400, "Type mismatch error. Check the parameters type!", headers)
        body = ",".join(
            encode.rest_market(info, details == "true") for info in self.exchange.markets
        )
        return HttpResponse(200, f"[{body}]".encode(), headers=headers)

    def _states(self, markets: str | None, headers: dict[str, str]) -> list[Any]:
        if not markets:
            raise _Reply(_error(400, "invalid_parameter", "markets is required", headers))
        states = self.exchange.generator.states
        found = [states[code] for code in markets.split(",") if code in states]
        if not found:
            raise _Reply(_error(404, "not_found", "Code not found", headers))
        return found

    def _ticker_all(self, query: dict[str, list[str]], headers: dict[str, str]) -> HttpResponse:
        quotes_text = _one(query, "quote_currencies")
        quotes = set(quotes_text.split(",")) if quotes_text else None
        states = [
            state
            for state in self.exchange.generator.states.values()
            if quotes is None or state.info.quote in quotes
        ]
        body = "[" + ",".join(encode.rest_ticker(state) for state in states) + "]"
        return HttpResponse(200, body.encode(), headers=headers)

    def _instruments(self, query: dict[str, list[str]], headers: dict[str, str]) -> HttpResponse:
        items = []
        for state in self._states(_one(query, "markets"), headers):
            info = state.info
            items.append(
                {
                    "market": info.code,
                    "quote_currency": info.quote,
                    "tick_size": plain(tick_size(info.quote, state.best_ask)),
                    "supported_levels": [plain(level) for level in info.supported_levels],
                }
            )
        return HttpResponse.json(200, items, headers)

    def _orderbook(self, query: dict[str, list[str]], headers: dict[str, str]) -> HttpResponse:
        states = self._states(_one(query, "markets"), headers)
        count = _count(_one(query, "count"), 30, 30, headers)
        level_text = _one(query, "level") or "0"
        try:
            level = from_decimal(level_text, SCALE)
        except ValueError:
            return _error(
                400, "invalid_parameter", f"level {level_text!r} is not supported", headers
            )
        items = []
        for state in states:
            book = state.book(count, level)
            if book is None:
                return _error(
                    400, "invalid_parameter", f"level {level_text} is not supported", headers
                )
            items.append(encode.rest_orderbook(state, book))
        return HttpResponse(200, ("[" + ",".join(items) + "]").encode(), headers=headers)

    def _trades(self, query: dict[str, list[str]], headers: dict[str, str]) -> HttpResponse:
        code = _one(query, "market")
        generator = self.exchange.generator
        if not code:
            return _error(400, "invalid_parameter", "market is required", headers)
        if code not in generator.states:
            return _error(404, "not_found", "Code not found", headers)
        count = _count(_one(query, "count"), 1, 500, headers)
        cursor_text = _one(query, "cursor")
        if cursor_text is not None and not cursor_text.isdigit():
            return _error(400, "invalid_parameter", "cursor must be a sequential_id", headers)
        if _one(query, "days_ago"):
            # The simulator keeps only today's trades.
            return HttpResponse(200, b"[]", headers=headers)
        cursor = int(cursor_text) if cursor_text else None
        trades = generator.trades_before(code, cursor, count)
        to = _one(query, "to")
        if to:
            digits = to.replace(":", "")
            if len(digits) != 6 or not digits.isdigit():
                return _error(400, "invalid_parameter", "to must be HHmmss or HH:mm:ss", headers)
            limit = int(digits[:2]) * 3600 + int(digits[2:4]) * 60 + int(digits[4:])
            trades = [t for t in trades if (t.trade_timestamp // 1000) % 86_400 < limit]
        body = "[" + ",".join(encode.rest_trade(trade) for trade in trades) + "]"
        return HttpResponse(200, body.encode(), headers=headers)

    def _exchange_api(self, request: HttpRequest, headers: dict[str, str]) -> HttpResponse:
        exchange = self.exchange
        if exchange.authenticator is None:
            return _error(401, "no_authorization_i_p", "the simulator has no API keys", headers)
        if request.method == "POST":
            params = request.json()
            if not isinstance(params, dict):
                return _error(400, "invalid_parameter", "body must be a JSON object", headers)
            hashed = query_string(params) if params else None
        else:
            params = {key: values[-1] for key, values in request.query.items()}
            hashed = request.query_string or None
        try:
            exchange.authenticator.verify(request.headers.get("authorization"), hashed)
        except AuthError as exc:
            return _error(401, exc.name, "인증 정보가 올바르지 않습니다.", headers)
        now_ms = exchange.wall_ms()
        created = time.strftime("%Y-%m-%dT%H:%M:%S+09:00", time.gmtime(now_ms // 1000 + 32_400))
        try:
            if request.path == "/v1/orders":
                order, events = exchange.account.place(params, now_ms)
                exchange.publish_private(events)
                return HttpResponse.json(201, order.rest_json(created), headers)
            if request.path == "/v1/accounts":
                return HttpResponse.json(200, self._accounts(), headers)
            order = exchange.account.find(params.get("uuid"), params.get("identifier"))
            answer = order.rest_json(created)
            if request.method == "DELETE":
                # Upbit answers with the order as accepted for cancellation (still
                # "wait"); the "cancel" state arrives as a myOrder event.
                exchange.publish_private(exchange.account.cancel(order.uuid, now_ms))
            return HttpResponse.json(200, answer, headers)
        except OrderError as exc:
            return _error(exc.status, exc.name, exc.message, headers)

    def _accounts(self) -> list[dict[str, Any]]:
        return [
            {
                "currency": currency,
                "balance": format(balance, "f"),
                "locked": format(locked, "f"),
                "avg_buy_price": "0",
                "avg_buy_price_modified": False,
                "unit_currency": "KRW",
            }
            for currency, (balance, locked) in self.exchange.account.balances.items()
        ]
