"""Blocking client for the Upbit quotation REST endpoints the feed process needs.

Every call first asks the rate limiter for its group's token; a 429 is reported to the
limiter (dynamic adjustment) and the group waits for the next second; a 418 bans every
REST group for the period the answer states (or a default when it states none).
Decimals are kept as the exact wire text (``parse_float=str``), integers exact.
"""

from __future__ import annotations

import http.client
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

from feedhandler.backoff import sleep_interruptibly
from feedhandler.ratelimit import RateLimiter

DEFAULT_BAN_SECONDS = 60.0
MAX_RESPONSE_BYTES = 16 * 1024 * 1024


class RestError(RuntimeError):
    """A REST call failed; carries the path and the HTTP status (0 for transport errors)."""

    def __init__(self, path: str, status: int, message: str) -> None:
        super().__init__(f"GET {path}: {status or 'transport error'}: {message}")
        self.path = path
        self.status = status


class RestBanned(RestError):
    """The exchange answered 418: no REST call is allowed until ``until`` (monotonic)."""


@dataclass(frozen=True, slots=True)
class RestTrade:
    """One trade from ``/v1/trades/ticks``; decimals are exact wire text."""

    market: str
    trade_date_utc: str
    trade_time_utc: str
    timestamp: int
    trade_price: str
    trade_volume: str
    prev_closing_price: str
    change_price: str
    ask_bid: str
    sequential_id: int


def _text(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise TypeError(f"expected a number, got {value!r}")
    return str(value)


def parse_trade(item: dict[str, Any]) -> RestTrade:
    return RestTrade(
        market=str(item["market"]),
        trade_date_utc=str(item["trade_date_utc"]),
        trade_time_utc=str(item["trade_time_utc"]),
        timestamp=int(item["timestamp"]),
        trade_price=_text(item["trade_price"]),
        trade_volume=_text(item["trade_volume"]),
        prev_closing_price=_text(item["prev_closing_price"]),
        change_price=_text(item["change_price"]),
        ask_bid=str(item["ask_bid"]),
        sequential_id=int(item["sequential_id"]),
    )


_BAN_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(?:s|sec|seconds?)\b", re.IGNORECASE)


def ban_seconds(headers: http.client.HTTPMessage, body: bytes) -> float:
    """Ban length of a 418: Retry-After if present, else a number of seconds in the body."""
    retry_after = headers.get("Retry-After")
    if retry_after:
        try:
            return max(0.0, float(retry_after))
        except ValueError:
            pass
    match = _BAN_RE.search(body[:2048].decode("utf-8", "replace"))
    return float(match.group(1)) if match else DEFAULT_BAN_SECONDS


class RestClient:
    """Quotation REST calls with rate limiting; safe to use from several threads."""

    def __init__(
        self,
        base_url: str,
        limiter: RateLimiter,
        *,
        timeout: float = 5.0,
        stop: threading.Event | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"rest_url must be an http(s) URL, got {base_url!r}")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")
        self._limiter = limiter
        self._timeout = timeout
        self._stop = stop or threading.Event()
        self._clock = clock
        self.calls = 0
        self.rate_limited = 0

    def _connection(self) -> http.client.HTTPConnection:
        if self._https:
            return http.client.HTTPSConnection(self._host, self._port, timeout=self._timeout)
        return http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)

    def get(self, group: str, path: str, params: dict[str, Any] | None = None) -> Any:
        """GET a JSON document, waiting for the group's token; retries once after a 429."""
        query = f"?{urlencode(params)}" if params else ""
        target = f"{self._prefix}{path}{query}"
        for _ in range(3):
            wait = self._limiter.acquire_rest(group)
            while wait > 0:
                if sleep_interruptibly(self._stop, wait):
                    raise RestError(path, 0, "stopped")
                wait = self._limiter.acquire_rest(group)
            status, headers, body = self._request(target, path)
            self.calls += 1
            if status == 200:
                try:
                    return json.loads(body, parse_float=str)
                except ValueError as exc:
                    raise RestError(path, status, f"invalid JSON ({exc})") from exc
            if status == 429:
                self.rate_limited += 1
                self._limiter.record_rate_limit_error(f"rest:{group}")
                if sleep_interruptibly(self._stop, 1.0):
                    raise RestError(path, status, "stopped")
                continue
            if status == 418:
                seconds = ban_seconds(headers, body)
                self._limiter.record_ban(seconds)
                raise RestBanned(path, status, f"banned for {seconds:g} s")
            raise RestError(path, status, body[:200].decode("utf-8", "replace"))
        raise RestError(path, 429, "still rate limited after retries")

    def _request(self, target: str, path: str) -> tuple[int, http.client.HTTPMessage, bytes]:
        conn = self._connection()
        try:
            conn.request("GET", target, headers={"Accept": "application/json"})
            response = conn.getresponse()
            body = response.read(MAX_RESPONSE_BYTES + 1)
            if len(body) > MAX_RESPONSE_BYTES:
                raise RestError(path, response.status, "response too large")
            return response.status, response.headers, body
        except (OSError, http.client.HTTPException) as exc:
            raise RestError(path, 0, f"{type(exc).__name__}: {exc}") from exc
        finally:
            conn.close()

    def market_codes(self) -> list[str]:
        items = self.get("market", "/v1/market/all", {"is_details": "false"})
        if not isinstance(items, list):
            raise RestError("/v1/market/all", 200, "expected a JSON array")
        return [str(item["market"]) for item in items]

    def trades(
        self, market: str, *, count: int = 500, cursor: int | None = None
    ) -> list[RestTrade]:
        """Recent trades of one market, newest first; ``cursor`` pages backwards."""
        params: dict[str, Any] = {"market": market, "count": count}
        if cursor is not None:
            params["cursor"] = cursor
        items = self.get("trade", "/v1/trades/ticks", params)
        if not isinstance(items, list):
            raise RestError("/v1/trades/ticks", 200, "expected a JSON array")
        try:
            return [parse_trade(item) for item in items]
        except (KeyError, TypeError, ValueError) as exc:
            raise RestError("/v1/trades/ticks", 200, f"malformed trade ({exc})") from exc
