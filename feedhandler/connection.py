"""One upstream WebSocket connection, owned by one thread.

The thread connects (within the connect rate limit), sends its connection's full
desired subscription whenever the pending-state flusher allows, receives frames with
the project's own frame parser, routes them, pings, watches for stalls, and on any
loss reconnects with backoff and jitter. A lost connection opens a trade gap that the
backfill closes once the connection is subscribed again.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from feedhandler.backoff import Backoff, sleep_interruptibly
from feedhandler.health import ConnectionHealth
from feedhandler.publisher import Publisher
from feedhandler.ratelimit import RateLimiter
from feedhandler.router import Router, UpstreamError
from feedhandler.subscriptions import ConnectionPlan, PendingFlush, SubscriptionRegistry
from feedhandler.trades import TradeSequencer
from feedhandler.transport import ConnectionClosed, WsConnectError, WsTransport
from feedhandler.upbit import build_request, new_ticket
from feedhandler.upbit.auth import Credentials, authorization_header
from feedhandler.upbit.hot import HotDecoder
from feedhandler.wsframe import WebSocketProtocolError

log = logging.getLogger("feedhandler.connection")

# Upper bound of one receive wait: how late a stop request or a pending flush is noticed.
MAX_RECV_WAIT = 0.2
QUIET_BACKFILL_AFTER = 3.0


class StallDetected(Exception):
    """No frame for too long while subscribed (or no pong on a quiet connection)."""


class AuthRejected(Exception):
    """The exchange refused the credentials; retrying with the same keys cannot help."""


@dataclass(frozen=True, slots=True)
class ConnectionSettings:
    url: str
    private: bool
    format: str = "DEFAULT"
    heartbeat_interval: float = 30.0
    connect_timeout: float = 10.0
    recv_timeout: float = 1.0
    busy_poll: float = 0.0
    compression: bool = False
    stall_seconds: float = 10.0
    base_delay: float = 1.0
    max_delay: float = 30.0
    exponential_base: float = 2.0
    jitter: bool = True
    max_attempts: int = 5
    give_up: bool = False
    jwt_algorithm: str = "HS512"


class UpstreamConnection:
    """A connection thread with its flusher and health record."""

    def __init__(
        self,
        name: str,
        settings: ConnectionSettings,
        *,
        registry: SubscriptionRegistry,
        limiter: RateLimiter,
        router: Router,
        bus: Publisher,
        trades: TradeSequencer,
        health: ConnectionHealth,
        credentials: Credentials | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if settings.private and credentials is None:
            raise ValueError(f"{name}: the private connection needs API credentials")
        self.name = name
        self.settings = settings
        self._registry = registry
        self._limiter = limiter
        self._router = router
        self._bus = bus
        self._trades = trades
        self.health = health
        self._credentials = credentials
        self._rng = rng or random.Random()
        self._clock = clock
        self._stop = threading.Event()
        self._generation = 0
        self._conn_key = f"{name}#0"
        self.flush = PendingFlush(lambda: self._limiter.acquire_message(self._conn_key), clock)
        self._thread = threading.Thread(target=self._run, name=f"conn-{name}", daemon=True)
        self.failed: str | None = None
        self.last_message_at: float | None = None
        self.requests_sent = 0
        self._delivered = False
        self._session_trade_codes: frozenset[str] = frozenset()
        # Built once: the decoders are reused by every session of this connection.
        self._decoder = HotDecoder(format=settings.format)

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def plan_changed(self) -> None:
        self.flush.mark_dirty()

    # -- thread ----------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._run_connection()
        except Exception as exc:
            # A bug must not end the connection quietly: it is logged with its traceback
            # through the redacting log handler (not the thread's default hook, which
            # would print unredacted text), published, and shown as failed in status.
            log.exception("event=connection_crashed connection=%s", self.name)
            self._give_up(f"internal error: {type(exc).__name__}: {exc}")

    def _run_connection(self) -> None:
        s = self.settings
        backoff = Backoff(
            base=s.base_delay,
            factor=s.exponential_base,
            cap=s.max_delay,
            jitter=s.jitter,
            max_attempts=s.max_attempts,
            rng=self._rng,
        )
        down_reported = False
        while not self._stop.is_set():
            if not self._wait_connect_token():
                break
            try:
                transport = self._connect()
            except AuthRejected as exc:
                self._give_up(f"authentication rejected: {exc}")
                return
            except (OSError, ConnectionClosed, WebSocketProtocolError, ValueError) as exc:
                self.health.on_error("connect")
                log.warning(
                    "event=connect_failed connection=%s attempt=%d error=%r",
                    self.name,
                    backoff.attempts + 1,
                    _describe(exc),
                )
            else:
                healthy = self._serve(transport)
                if healthy:
                    backoff.reset()
                    down_reported = False
                    continue
            if self._stop.is_set():
                break
            delay = backoff.next_delay()
            if backoff.exhausted and not down_reported:
                down_reported = True
                self._bus.publish_sys(
                    "connection_down",
                    {
                        "connection": self.name,
                        "attempts": backoff.attempts,
                        "retrying": not s.give_up,
                    },
                )
                log.error(
                    "event=connection_down connection=%s attempts=%d retrying=%s",
                    self.name,
                    backoff.attempts,
                    not s.give_up,
                )
                if s.give_up:
                    self._give_up(f"gave up after {backoff.attempts} attempts")
                    return
            if sleep_interruptibly(self._stop, delay):
                break

    def _give_up(self, reason: str) -> None:
        self.failed = reason
        self.health.on_error("fatal")
        log.error("event=connection_failed connection=%s reason=%r", self.name, reason)
        self._bus.publish_sys(
            "connection_down",
            {
                "connection": self.name,
                "reason": reason,
                "retrying": False,
            },
        )

    def _wait_connect_token(self) -> bool:
        wait = self._limiter.acquire_connect()
        while wait > 0:
            if sleep_interruptibly(self._stop, wait):
                return False
            wait = self._limiter.acquire_connect()
        return True

    def _connect(self) -> WsTransport:
        s = self.settings
        headers: dict[str, str] = {}
        if s.private:
            assert self._credentials is not None
            headers.update(authorization_header(self._credentials, algorithm=s.jwt_algorithm))
        try:
            return WsTransport.connect(
                s.url, headers=headers, timeout=s.connect_timeout, compression=s.compression
            )
        except WsConnectError as exc:
            if s.private and exc.status in (401, 403):
                raise AuthRejected(f"HTTP {exc.status}") from exc
            raise

    def _serve(self, transport: WsTransport) -> bool:
        """Run one connected session; True if it delivered data before it ended."""
        self._generation += 1
        self._conn_key = f"{self.name}#{self._generation}"
        self.flush.reset()
        if self._generation > 1:
            self.health.on_reconnect()
        self.health.on_connected()
        self._bus.publish_sys(
            "connection_up", {"connection": self.name, "generation": self._generation}
        )
        log.info("event=connected connection=%s generation=%d", self.name, self._generation)
        reason = "stopped"
        # Set by the session as it goes: a session ends with an exception far more often
        # than with a return, and what it delivered and subscribed still counts then.
        self._delivered = False
        self._session_trade_codes = frozenset()
        try:
            self._session(transport, self._decoder)
        except UpstreamError as exc:
            reason = f"exchange error {exc.name}"
            self.health.on_error("upstream")
            if exc.is_rate_limit:
                self._limiter.record_rate_limit_error(f"message:{self._conn_key}")
                self._bus.publish_sys("rate_limit", {"connection": self.name, "name": exc.name})
            elif exc.is_auth and self.settings.private:
                # On the public endpoint INVALID_AUTH rejects one request, not the keys.
                self.failed = "authentication rejected (INVALID_AUTH)"
            log.warning("event=upstream_error connection=%s name=%s", self.name, exc.name)
        except StallDetected as exc:
            reason = f"stall: {exc}"
            self.health.on_error("stall")
            self._bus.publish_sys("stale", {"connection": self.name, "reason": str(exc)})
            log.warning("event=stall connection=%s detail=%r", self.name, str(exc))
        except ConnectionClosed as exc:
            reason = f"closed: {exc}"
            self.health.on_error("closed")
        except (OSError, WebSocketProtocolError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
            self.health.on_error("io")
        finally:
            transport.close(timeout=0.5)
            self._limiter.forget_connection(self._conn_key)
            self.health.on_disconnected(reason)
            self.health.subscribed = False
            plan_codes = self._trade_codes(self._registry.plan(self.name))
            plan_codes |= self._session_trade_codes
            if not self._stop.is_set():
                self._trades.on_gap(plan_codes)
                self._bus.publish_sys(
                    "connection_lost", {"connection": self.name, "reason": reason}
                )
                log.warning("event=disconnected connection=%s reason=%r", self.name, reason)
        if self.failed and self.settings.private:
            self._give_up(self.failed)
            self._stop.set()
        return self._delivered

    @staticmethod
    def _trade_codes(plan: ConnectionPlan) -> frozenset[str]:
        return frozenset(c for s in plan.subscriptions if s.type == "trade" for c in s.codes)

    def _session(self, transport: WsTransport, decoder: HotDecoder) -> None:
        s = self.settings
        route_batch = self._router.route_batch
        # What a batch publishes goes out together when the batch is done.
        hold, release = self._bus.hold, self._bus.release
        health = self.health
        clock = self._clock
        name = self.name
        last_ping = clock()
        last_pong_ns = transport.last_pong_ns
        quiet_deadline: float | None = None
        trade_codes: frozenset[str] = frozenset()
        recv_wait = min(s.recv_timeout, MAX_RECV_WAIT)
        busy_poll = s.busy_poll
        recv_messages = transport.recv_messages
        while not self._stop.is_set():
            version = self.flush.poll()
            if version is not None:
                plan = self._registry.plan(name)
                if not plan.subscriptions:
                    return
                transport.send_text(
                    build_request(plan.subscriptions, ticket=new_ticket(), format=s.format).decode()
                )
                self.flush.sent(version)
                self.requests_sent += 1
                health.subscribed = True
                trade_codes = self._session_trade_codes = self._trade_codes(plan)
                self._trades.on_resubscribed(trade_codes)
                quiet_deadline = clock() + QUIET_BACKFILL_AFTER
            messages = recv_messages(recv_wait, busy_poll)
            if messages:
                recv_ns = time.time_ns()
                hold()
                try:
                    route_batch(name, decoder, messages, recv_ns)
                finally:
                    release()
                health.on_messages(len(messages))
                if not self._delivered:
                    health.on_success()
                self._delivered = True
            now = clock()
            if messages:
                self.last_message_at = time.time()
            if transport.last_pong_ns != last_pong_ns:
                last_pong_ns = transport.last_pong_ns
                health.on_pong()
            if now - last_ping >= s.heartbeat_interval:
                transport.ping()
                last_ping = now
            if quiet_deadline is not None and now >= quiet_deadline:
                self._trades.flush_quiet(trade_codes)
                quiet_deadline = None
            if not s.private and health.is_stalled():
                raise StallDetected(f"no frame for {s.stall_seconds:g} s while subscribed")
            if transport.pong_overdue(2 * s.heartbeat_interval + 5.0):
                raise StallDetected("no pong to keepalive pings")

    # -- status ----------------------------------------------------------------------

    def status(self) -> dict[str, object]:
        snap = self.health.snapshot()
        snap.update(
            {
                "name": self.name,
                "private": self.settings.private,
                "url": self.settings.url,
                "generation": self._generation,
                "requests_sent": self.requests_sent,
                "changes_absorbed": self.flush.changes_absorbed,
                "pending": self.flush.dirty,
                "failed": self.failed,
            }
        )
        return snap


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:200]
