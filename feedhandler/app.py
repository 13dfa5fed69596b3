"""The feed process: every part wired together, started and stopped in order.

Start-up: market list from REST (retried until the upstream answers, so an
unreachable exchange at start is survived), shm writers for every listed market,
the ZeroMQ publisher and control server, the subscription registry fed by the config
and by worker leases, one thread per upstream connection, the backfill thread and a
housekeeping thread (shm heartbeats, health warnings). Stop: connections first, then
the bus, then the shm segments (unlinked), within about a second.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import zmq

from feedhandler.backoff import Backoff, sleep_interruptibly
from feedhandler.config import Settings
from feedhandler.connection import ConnectionSettings, UpstreamConnection
from feedhandler.control import ControlServer, WorkerRegistry
from feedhandler.gcstats import GcPauses, freeze_startup_heap
from feedhandler.health import ConnectionHealth, HealthThresholds, process_health
from feedhandler.logs import RateLimitedLog, register_secret
from feedhandler.publisher import (
    CurveKeys,
    Publisher,
    fit_io_threads_to_cpus,
    start_io_threads_as_batch,
)
from feedhandler.ratelimit import RateLimiter, RateLimitSettings
from feedhandler.rest import RestClient, RestError
from feedhandler.router import Router, publish_trade_to, publish_trades_to
from feedhandler.subscriptions import (
    PRIVATE_CONNECTION,
    CapacityError,
    ConnectionPlan,
    SubscriptionRegistry,
)
from feedhandler.trades import Backfiller, TradeSequencer
from feedhandler.upbit import ProtocolError
from shm import OrderbookWriter, TickerWriter

log = logging.getLogger("feedhandler.app")

HOUSEKEEPING_INTERVAL = 0.5
PROCESS_CHECK_EVERY = 10  # housekeeping ticks between psutil readings (5 s)
STOP_JOIN_SECONDS = 1.0


class StartupAborted(RuntimeError):
    """Stop was requested before the feed finished starting."""


class Addon(Protocol):
    """An optional part run inside the feed (metrics endpoint, dashboard, recorder).

    ``start`` runs after the router, bus and control channel exist and before the first
    connection opens, so a recorder's tap sees every frame; ``stop`` runs after the
    connections have stopped and before the bus and shm are closed.
    """

    name: str

    def start(self, feed: FeedProcess) -> None: ...

    def stop(self) -> None: ...

    def status(self) -> dict[str, Any]: ...


def _limiter_settings(settings: Settings) -> RateLimitSettings:
    rl = settings.rate_limiter
    return RateLimitSettings(
        enabled=rl.enable_rate_limiter,
        dynamic=rl.enable_dynamic_adjustment,
        strategy=rl.strategy,
        error_threshold=rl.error_threshold,
        reduction_ratio=rl.reduction_ratio,
        recovery_delay=rl.recovery_delay,
    )


def _thresholds(settings: Settings) -> HealthThresholds:
    h = settings.health
    return HealthThresholds(
        health_score=h.health_score,
        consecutive_errors=h.consecutive_errors,
        inactive_seconds=h.inactive_seconds,
        memory_usage_mb=h.memory_usage_mb,
        reconnect_count=h.reconnect_count,
        stall_seconds=h.stall_seconds,
    )


def _curve(settings: Settings) -> CurveKeys | None:
    secret_file = settings.zmq.curve_server_secret_key_file
    return CurveKeys.load(secret_file) if secret_file else None


class FeedProcess:
    """The running feed: build with settings, then :meth:`start`, :meth:`stop`."""

    def __init__(
        self,
        settings: Settings,
        *,
        rng: random.Random | None = None,
        addons: Sequence[Addon] | None = None,
    ) -> None:
        self.settings = settings
        if addons is None:
            from feedhandler.metrics import addons_from_settings  # noqa: PLC0415 - import cycle

            addons = addons_from_settings(settings)
        self.addons: list[Addon] = list(addons)
        self._started_addons: list[Addon] = []
        self._rng = rng or random.Random()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.limiter = RateLimiter(_limiter_settings(settings))
        self.rest = RestClient(settings.upbit.rest_url, self.limiter, stop=self._stop)
        self.connections: dict[str, UpstreamConnection] = {}
        self.market_codes: list[str] = []
        self.ticker_writer: TickerWriter | None = None
        self.orderbook_writer: OrderbookWriter | None = None
        self.publisher: Publisher | None = None
        self.control: ControlServer | None = None
        self.registry: SubscriptionRegistry | None = None
        self.workers: WorkerRegistry | None = None
        self.trades: TradeSequencer | None = None
        self.router: Router | None = None
        self._threads: list[threading.Thread] = []
        self._bad_frames = RateLimitedLog(log, interval=10.0)
        self.gc_pauses = GcPauses()
        self.started_at = time.time()
        self.io_thread_policy: str | None = None

    # -- start -----------------------------------------------------------------------

    def request_stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def start(self) -> None:
        s = self.settings
        self.gc_pauses.install()
        self.market_codes = self._fetch_market_codes()
        self.ticker_writer = TickerWriter(
            s.shm.prefix,
            self.market_codes,
            capacity=s.shm.ticker_capacity,
            max_symbols=len(self.market_codes) + 256,
        )
        self.orderbook_writer = OrderbookWriter(
            s.shm.prefix,
            self.market_codes,
            capacity=s.shm.orderbook_capacity,
            max_symbols=len(self.market_codes) + 256,
        )
        curve = _curve(s)
        if s.zmq.io_thread_sched_batch:
            # Before the process's first socket: the context starts its threads then.
            start_io_threads_as_batch(zmq.Context.instance())
        self.publisher = Publisher(s.pub_endpoint(), sndhwm=s.zmq.sndhwm, curve=curve)
        self._fit_io_threads()
        self.trades = TradeSequencer(
            publish_trade_to(self.publisher),
            self.publisher.publish_sys,
            publish_trades_to(self.publisher),
        )
        self.router = Router(
            ticker_writer=self.ticker_writer,
            orderbook_writer=self.orderbook_writer,
            bus=self.publisher,
            trades=self.trades,
            on_bad_frame=self._on_bad_frame,
        )
        self.registry = SubscriptionRegistry(
            max_codes_per_connection=s.connection.max_codes_per_connection,
            max_connections=s.connection.max_connections,
            on_plan_change=self._on_plan_change,
        )
        self.workers = WorkerRegistry(
            on_change=self._on_workers_changed, on_expired=self._on_lease_expired
        )
        self.control = ControlServer(
            s.control_endpoint(),
            handlers={
                "status": lambda _req: self.status(),
                "health": lambda _req: self.health(),
                "metrics": lambda _req: self.metrics(),
                "segments": lambda _req: self.segments(),
                "subscriptions": lambda _req: {"subscriptions": self.registry_summary()},
            },
            registry=self.workers,
            hello=self.hello,
            curve=curve,
        )
        self.control.start()
        for addon in self.addons:
            addon.start(self)
            self._started_addons.append(addon)
        self.registry.set_source("config", s.subscription_objects(self.market_codes))
        if s.backfill.enabled:
            backfiller = Backfiller(
                self.trades,
                self.rest,
                self._stop,
                page_size=s.backfill.page_size,
                max_pages=s.backfill.max_pages,
            )
            backfiller.start()
            self._threads.append(backfiller)
        housekeeping = threading.Thread(target=self._housekeeping, name="housekeeping", daemon=True)
        housekeeping.start()
        self._threads.append(housekeeping)
        log.info(
            "event=feed_started markets=%d pub=%s control=%s shm_prefix=%s",
            len(self.market_codes),
            self.publisher.endpoint,
            self.control.endpoint,
            s.shm.prefix,
        )

    def _fetch_market_codes(self) -> list[str]:
        r = self.settings.reconnection
        backoff = Backoff(
            base=r.base_delay,
            factor=r.exponential_base,
            cap=r.max_delay,
            jitter=r.jitter,
            max_attempts=r.max_attempts,
            rng=self._rng,
        )
        while True:
            try:
                codes = self.rest.market_codes()
            except RestError as exc:
                delay = backoff.next_delay()
                log.warning(
                    "event=market_list_failed attempt=%d retry_in=%.2f error=%r",
                    backoff.attempts,
                    delay,
                    str(exc),
                )
                if sleep_interruptibly(self._stop, delay):
                    raise StartupAborted("stopped while waiting for the market list") from exc
                continue
            if not codes:
                raise RestError("/v1/market/all", 200, "the exchange lists no markets")
            return codes

    # -- registry and connections ----------------------------------------------------

    def _on_plan_change(self, name: str, plan: ConnectionPlan) -> None:
        with self._lock:
            if self._stop.is_set():
                return
            conn = self.connections.get(name)
            if not plan.subscriptions:
                if conn is not None:
                    conn.stop()
                    del self.connections[name]
                return
            if conn is None or not conn.alive:
                conn = self._new_connection(name, plan.private)
                self.connections[name] = conn
                conn.plan_changed()
                conn.start()
            else:
                conn.plan_changed()

    def _new_connection(self, name: str, private: bool) -> UpstreamConnection:
        s = self.settings
        url = s.upbit.private_url if private else s.upbit.public_url
        credentials = s.credentials if private else None
        if credentials is not None:
            register_secret(credentials.access_key)
            register_secret(credentials.secret_key)
        assert self.router is not None and self.publisher is not None and self.trades
        assert self.registry is not None
        return UpstreamConnection(
            name,
            ConnectionSettings(
                url=url,
                private=private,
                format=s.upbit.format,
                heartbeat_interval=s.connection.heartbeat_interval,
                connect_timeout=s.connection.connect_timeout,
                recv_timeout=s.connection.recv_timeout,
                busy_poll=s.connection.busy_poll_us / 1e6,
                compression=s.connection.enable_compression,
                stall_seconds=s.health.stall_seconds,
                base_delay=s.reconnection.base_delay,
                max_delay=s.reconnection.max_delay,
                exponential_base=s.reconnection.exponential_base,
                jitter=s.reconnection.jitter,
                max_attempts=s.reconnection.max_attempts,
                give_up=s.reconnection.give_up,
                jwt_algorithm=s.upbit.jwt_algorithm,
            ),
            registry=self.registry,
            limiter=self.limiter,
            router=self.router,
            bus=self.publisher,
            trades=self.trades,
            health=ConnectionHealth(name, _thresholds(s), expects_data=not private),
            credentials=credentials,
            rng=random.Random(self._rng.random()),
        )

    def _on_workers_changed(self) -> None:
        assert self.workers is not None and self.registry is not None
        try:
            self.registry.set_source("workers", self.workers.desired())
        except CapacityError as exc:
            log.error("event=worker_subscriptions_rejected error=%r", str(exc))
            if self.publisher is not None:
                self.publisher.publish_sys("error", {"name": "capacity", "message": str(exc)})

    def _on_lease_expired(self, worker_id: str) -> None:
        log.warning("event=worker_lease_expired worker_id=%s", worker_id)
        if self.publisher is not None:
            self.publisher.publish_sys("worker_lease_expired", {"worker_id": worker_id})

    def _on_bad_frame(self, connection: str, error: ProtocolError) -> None:
        self._bad_frames.log(
            logging.WARNING,
            f"bad_frame:{connection}",
            "bad_frame",
            connection=connection,
            error=str(error),
        )

    # -- housekeeping ----------------------------------------------------------------

    def _housekeeping(self) -> None:
        active: dict[tuple[str, str], str] = {}
        ticks = 0
        process_warnings: list[str] = []
        while not sleep_interruptibly(self._stop, HOUSEKEEPING_INTERVAL):
            for writer in (self.ticker_writer, self.orderbook_writer):
                if writer is not None and not writer.closed:
                    writer.heartbeat()
            self._bad_frames.flush_due()
            # The process may have been confined to one core since the last tick.
            self._fit_io_threads()
            if ticks % PROCESS_CHECK_EVERY == 0:
                process_warnings = process_health(self.settings.health.memory_usage_mb).get(
                    "warnings", []
                )
            ticks += 1
            now_active = {("process", w.split(" ", 1)[0]): w for w in process_warnings}
            for name, conn in list(self.connections.items()):
                for warning in conn.health.snapshot().get("warnings", []):
                    now_active[(name, warning.split(" ", 1)[0])] = warning
            self._report_warnings(active, now_active)
            active = now_active

    def _fit_io_threads(self) -> None:
        if self.settings.zmq.io_thread_sched_batch:
            self.io_thread_policy = fit_io_threads_to_cpus()

    def _report_warnings(
        self, before: dict[tuple[str, str], str], now: dict[tuple[str, str], str]
    ) -> None:
        """Each threshold crossing is logged and published once, and so is its end."""
        for (source, check), warning in now.items():
            if (source, check) not in before:
                log.warning("event=health_warning source=%s warning=%r", source, warning)
                if self.publisher is not None:
                    self.publisher.publish_sys(
                        "health_warning", {"source": source, "warning": warning}
                    )
        for source, check in before.keys() - now.keys():
            log.info("event=health_recovered source=%s check=%s", source, check)
            if self.publisher is not None:
                self.publisher.publish_sys("health_recovered", {"source": source, "check": check})

    # -- status ----------------------------------------------------------------------

    def hello(self) -> dict[str, Any]:
        assert self.publisher is not None
        return {
            "pub_endpoint": self.publisher.endpoint,
            "shm_prefix": self.settings.shm.prefix,
            "segments": self.segment_names(),
            "pid": os.getpid(),
        }

    def segment_names(self) -> list[str]:
        return [w.name for w in (self.ticker_writer, self.orderbook_writer) if w is not None]

    def registry_summary(self) -> list[dict[str, object]]:
        if self.registry is None:
            return []
        last = {n: c.last_message_at for n, c in self.connections.items() if c.last_message_at}
        return self.registry.summary(last)

    def health(self) -> dict[str, Any]:
        conns = {name: c.status() for name, c in list(self.connections.items())}
        scores = [c["health_score"] for c in conns.values()]
        score = min(scores) if scores else 1.0
        proc = process_health(self.settings.health.memory_usage_mb)
        if any(c.get("failed") for c in conns.values()) or (conns and score == 0.0):
            state = "down"
        elif score < self.settings.health.health_score or proc.get("warnings"):
            state = "degraded"
        else:
            state = "healthy"
        return {"state": state, "health_score": score, "connections": conns, "process": proc}

    def segments(self) -> dict[str, Any]:
        out = [
            writer.describe()
            for writer in (self.ticker_writer, self.orderbook_writer)
            if writer is not None
        ]
        return {"segments": out}

    def metrics(self) -> dict[str, Any]:
        assert self.router is not None and self.publisher is not None and self.trades
        return {
            "messages": dict(self.router.counts),
            "unknown_codes": dict(self.router.unknown_codes),
            "publisher": self.publisher.stats(),
            "trades": self.trades.status(),
            "rest": {"calls": self.rest.calls, "rate_limited": self.rest.rate_limited},
            "rate_limiter": self.limiter.status(),
            "workers": self.workers.totals() if self.workers else {},
            "gc": self.gc_pauses.snapshot(),
            # ZeroMQ's I/O threads: "batch", "idle" (confined to one core) or None.
            "zmq_io_thread_policy": self.io_thread_policy,
        }

    def status(self) -> dict[str, Any]:
        health = self.health()
        return {
            "state": health["state"],
            "health": health,
            "uptime_s": time.time() - self.started_at,
            "markets": len(self.market_codes),
            "subscriptions": self.registry_summary(),
            "rate_limiter": self.limiter.status(),
            "segments": self.segments()["segments"],
            "metrics": self.metrics(),
            "workers": self.workers.workers() if self.workers else [],
            "private": PRIVATE_CONNECTION in self.connections,
            "addons": {addon.name: addon.status() for addon in self._started_addons},
        }

    def freeze_gc(self) -> int:
        """Freeze the heap as it is now (see :mod:`feedhandler.gcstats`); returns the
        object count. The full collection this starts with is not counted as a pause."""
        installed = self.gc_pauses.installed
        self.gc_pauses.uninstall()
        try:
            self.gc_pauses.frozen = freeze_startup_heap()
            return self.gc_pauses.frozen
        finally:
            if installed:
                self.gc_pauses.install()

    # -- stop ------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            conns = list(self.connections.values())
        for conn in conns:
            conn.stop()
        deadline = time.monotonic() + STOP_JOIN_SECONDS
        for conn in conns:
            conn.join(max(0.0, deadline - time.monotonic()))
        if self.control is not None:
            self.control.stop()
        for thread in self._threads:
            thread.join(max(0.05, deadline - time.monotonic()))
        while self._started_addons:
            addon = self._started_addons.pop()
            try:
                addon.stop()
            except Exception:
                # One add-on failing to stop must not keep the shm segments alive.
                log.exception("event=addon_stop_failed addon=%s", addon.name)
        if self.publisher is not None:
            self.publisher.close()
        for writer in (self.ticker_writer, self.orderbook_writer):
            if writer is not None and not writer.closed:
                writer.close(unlink=True)
        self.gc_pauses.uninstall()
        log.info("event=feed_stopped")


def run_until_stopped(feed: FeedProcess, wait: Callable[[float], bool]) -> None:
    """Start ``feed`` and block until ``wait`` reports a stop request, then stop it.

    This is the process's main loop: once the feed has started, the start-up heap is
    frozen, so that a full garbage collection no longer stalls the connection threads
    for milliseconds (see :mod:`feedhandler.gcstats`).
    """
    try:
        feed.start()
        log.info("event=gc_frozen objects=%d", feed.freeze_gc())
        while not wait(0.2) and not feed.stopping:
            pass
    finally:
        feed.stop()
