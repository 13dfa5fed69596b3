"""Telemetry of a running feed and its Prometheus endpoint, collected off the hot path.

Nothing here adds work per frame unless the route timer is switched on (it times one
frame in ``route_sample_every`` but wraps every call: about 0.3 us a frame). Everything
else is read when asked for:

* a sampler thread reads the shm rings every ``interval`` seconds with an ordinary
  reader (``since``), so the wire-to-shm latency histogram, the per-market update
  counts and the per-market table cost the connection threads nothing;
* the CPU time of each connection thread (``/proc`` via psutil) divided by its frames
  gives the cost of receiving, decoding and routing a frame, without timing any frame;
* the Prometheus collector turns ``FeedProcess.health()`` / ``metrics()`` /
  ``segments()`` and the telemetry into metric families at scrape time.

The endpoint binds 127.0.0.1 unless told otherwise: the figures describe the host's
trading, and nothing else on the network needs them.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import psutil
from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

import shm
from shm import ShmError

if TYPE_CHECKING:
    from feedhandler.app import Addon, FeedProcess
    from feedhandler.config import Settings

log = logging.getLogger("feedhandler.metrics")

DEFAULT_HOST = "127.0.0.1"
SAMPLE_INTERVAL = 0.5
# Message rates are averaged over this window (several sampler intervals).
RATE_WINDOW_S = 2.0
CONNECTION_THREAD_PREFIX = "conn-"
MAX_TABLE_MARKETS = 500

# Upper bounds in seconds. Wire latency spans a local simulator (tens of microseconds)
# to a remote exchange with clock skew (hundreds of milliseconds).
WIRE_BUCKETS: tuple[float, ...] = (
    50e-6,
    100e-6,
    250e-6,
    500e-6,
    1e-3,
    2.5e-3,
    5e-3,
    10e-3,
    25e-3,
    50e-3,
    100e-3,
    250e-3,
    500e-3,
    1.0,
    2.5,
)
ROUTE_BUCKETS: tuple[float, ...] = (
    1e-6,
    2e-6,
    5e-6,
    10e-6,
    20e-6,
    50e-6,
    100e-6,
    250e-6,
    500e-6,
    1e-3,
)

Route = Callable[[str, Any, Any, int], None]


class OpsStartError(RuntimeError):
    """An operations add-on cannot start (port in use, file not writable)."""


class Histogram:
    """Cumulative bucket counts and a sum, Prometheus style (``le`` bounds). Thread-safe."""

    def __init__(self, bounds: Sequence[float]) -> None:
        if list(bounds) != sorted(bounds) or len(set(bounds)) != len(bounds):
            raise ValueError(f"histogram bounds must be strictly increasing: {bounds}")
        self.bounds = tuple(float(b) for b in bounds)
        self._edges = np.asarray(self.bounds)
        self._counts = np.zeros(len(self.bounds) + 1, dtype=np.int64)
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        index = int(np.searchsorted(self._edges, value, side="left"))
        with self._lock:
            self._counts[index] += 1
            self._sum += value

    def observe_many(self, values: np.ndarray) -> None:
        if values.size == 0:
            return
        counts = np.bincount(
            np.searchsorted(self._edges, values, side="left"), minlength=len(self._counts)
        )
        total = float(values.sum())
        with self._lock:
            self._counts += counts
            self._sum += total

    @property
    def count(self) -> int:
        with self._lock:
            return int(self._counts.sum())

    def snapshot(self) -> tuple[list[tuple[str, int]], float, int]:
        """(cumulative ``(le, count)`` pairs ending with ``+Inf``, sum, count)."""
        with self._lock:
            counts = self._counts.copy()
            total = self._sum
        cumulative = np.cumsum(counts).tolist()
        labels = [_le(b) for b in self.bounds] + ["+Inf"]
        return list(zip(labels, cumulative, strict=True)), total, int(cumulative[-1])

    def quantile(self, q: float) -> float | None:
        """The upper bound of the bucket holding quantile ``q`` (None when empty)."""
        buckets, _, count = self.snapshot()
        if count == 0:
            return None
        rank = q * count
        for (label, cumulative), bound in zip(buckets, (*self.bounds, float("inf")), strict=True):
            if cumulative >= rank:
                return bound if label != "+Inf" else float("inf")
        return float("inf")


def _le(bound: float) -> str:
    return f"{bound:.6g}"


class RouteTimer:
    """Times one routed frame in ``every`` (decode, shm write or publish, trade sequencing)."""

    def __init__(self, every: int = 64) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.every = every
        self.histogram = Histogram(ROUTE_BUCKETS)

    def wrap(self, route: Route) -> Route:
        every = self.every
        counter = itertools.count()
        perf = time.perf_counter_ns
        observe = self.histogram.observe

        def timed_route(connection: str, decoder: Any, frame: Any, recv_ns: int) -> None:
            if next(counter) % every:
                return route(connection, decoder, frame, recv_ns)
            started = perf()
            try:
                return route(connection, decoder, frame, recv_ns)
            finally:
                observe((perf() - started) * 1e-9)

        return timed_route


class Telemetry:
    """Samples the feed's shm rings and counters in a thread; the shared source for the
    Prometheus collector and the dashboard.

    Add it to the feed's add-ons before the metrics endpoint and the dashboard.
    """

    name = "telemetry"

    def __init__(
        self,
        *,
        interval: float = SAMPLE_INTERVAL,
        route_sample_every: int | None = None,
        clock_ns: Callable[[], int] = time.time_ns,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be > 0 s, got {interval}")
        self.interval = interval
        self._clock_ns = clock_ns
        self._monotonic = monotonic
        self.route_timer = RouteTimer(route_sample_every) if route_sample_every else None
        # Keyed by (kind, clock): clock "origin" is the simulator's send stamp,
        # "exchange" the message's millisecond timestamp.
        self.wire: dict[tuple[str, str], Histogram] = {
            (kind, clock): Histogram(WIRE_BUCKETS)
            for kind in ("ticker", "orderbook")
            for clock in ("origin", "exchange")
        }
        self.sampled: dict[str, int] = {"ticker": 0, "orderbook": 0}
        self.overrun: dict[str, int] = {"ticker": 0, "orderbook": 0}
        self.feed: FeedProcess | None = None
        self._lock = threading.Lock()
        self._updates: dict[str, int] = {}
        self._market_rates: dict[str, float] = {}
        self._table: list[dict[str, Any]] = []
        self._rates: dict[str, float] = {}
        self._count_samples: deque[tuple[float, dict[str, int], dict[str, int]]] = deque()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.samples_taken = 0
        self._process = psutil.Process()
        self._cpu_last: dict[str, tuple[float, int]] = {}
        self.thread_cpu_s: dict[str, float] = {}
        self.frame_cpu_s: dict[str, float] = {}

    # -- add-on ----------------------------------------------------------------------

    def start(self, feed: FeedProcess) -> None:
        self.feed = feed
        if self.route_timer is not None and feed.router is not None:
            # Router.route_batch sends every frame through a wrapped route (per-frame timing).
            feed.router.route = self.route_timer.wrap(feed.router.route)  # type: ignore[method-assign]
        self._thread = threading.Thread(target=self._run, name="telemetry", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)

    def status(self) -> dict[str, Any]:
        return {
            "samples": self.samples_taken,
            "sampled_records": dict(self.sampled),
            "overrun": dict(self.overrun),
        }

    # -- sampler thread --------------------------------------------------------------

    def _run(self) -> None:
        assert self.feed is not None
        prefix = self.feed.settings.shm.prefix
        readers: dict[str, shm.SnapshotReader] = {}
        cursors: dict[str, int] = {}
        try:
            for kind in ("ticker", "orderbook"):
                readers[kind] = shm.attach(prefix, kind, timeout=2.0)
                cursors[kind] = readers[kind].head
            while not self._stop.wait(self.interval):
                self.sample(readers, cursors)
        except ShmError as exc:
            log.error("event=telemetry_stopped error=%r", str(exc))
        finally:
            for reader in readers.values():
                reader.close()

    def sample(self, readers: dict[str, shm.SnapshotReader], cursors: dict[str, int]) -> None:
        """One sampling round: new ring records, market table, message rates."""
        now_ns = self._clock_ns()
        updates: dict[str, int] = {}
        for kind, reader in readers.items():
            records, cursors[kind], overrun = reader.since(cursors[kind])
            self.overrun[kind] += overrun
            self.sampled[kind] += len(records)
            if len(records) == 0:
                continue
            recv = records["recv_ns"]
            origin = records["origin_ns"]
            stamped = origin > 0
            if stamped.any():
                self.wire[(kind, "origin")].observe_many((recv[stamped] - origin[stamped]) * 1e-9)
            exchange = records["timestamp"]
            known = exchange > 0
            if known.any():
                self.wire[(kind, "exchange")].observe_many(
                    (recv[known] - exchange[known] * 1_000_000) * 1e-9
                )
            codes = reader.codes
            ids, counts = np.unique(records["symbol"], return_counts=True)
            for symbol, count in zip(ids.tolist(), counts.tolist(), strict=True):
                if symbol < len(codes):
                    code = codes[symbol]
                    updates[code] = updates.get(code, 0) + count
        table = self._market_table(readers, now_ns)
        self._update_rates(updates)
        self._update_thread_cpu()
        with self._lock:
            self._table = table
        self.samples_taken += 1

    def _market_table(
        self, readers: dict[str, shm.SnapshotReader], now_ns: int
    ) -> list[dict[str, Any]]:
        ticker = readers["ticker"]
        codes = list(ticker.codes[:MAX_TABLE_MARKETS])
        if not codes:
            return []
        tickers = ticker.latest_many(codes)
        books = readers["orderbook"].latest_many(codes)
        rows = []
        for i, code in enumerate(codes):
            t = tickers[i]
            b = books[i]
            has_ticker = t["seq"] != 0
            has_book = b["seq"] != 0
            if not (has_ticker or has_book):
                continue
            newest = max(int(t["recv_ns"]), int(b["recv_ns"]))
            row: dict[str, Any] = {
                "code": code,
                "trade_price": _num(t["trade_price"]) if has_ticker else None,
                "change_rate": _num(t["signed_change_rate"]) if has_ticker else None,
                "volume_24h": _num(t["acc_trade_price_24h"]) if has_ticker else None,
                "bid": _num(b["levels"][0]["bid_price"]) if has_book else None,
                "ask": _num(b["levels"][0]["ask_price"]) if has_book else None,
                # Records written after now_ns was read are simply fresh.
                "age_s": round(max(0, now_ns - newest) * 1e-9, 3),
            }
            rows.append(row)
        return rows

    def _update_rates(self, updates: dict[str, int]) -> None:
        now = self._monotonic()
        counts = dict(self.feed.router.counts) if self.feed and self.feed.router else {}
        with self._lock:
            for code, n in updates.items():
                self._updates[code] = self._updates.get(code, 0) + n
            totals = dict(self._updates)
            samples = self._count_samples
            samples.append((now, counts, totals))
            while len(samples) > 2 and now - samples[1][0] >= RATE_WINDOW_S:
                samples.popleft()
            base_t, base_counts, base_totals = samples[0]
            elapsed = now - base_t
            if elapsed > 0:
                self._rates = {
                    k: round((v - base_counts.get(k, 0)) / elapsed, 2) for k, v in counts.items()
                }
                self._market_rates = {
                    k: round((v - base_totals.get(k, 0)) / elapsed, 2) for k, v in totals.items()
                }

    def _update_thread_cpu(self) -> None:
        """CPU seconds of each connection thread and per frame since the last sample."""
        if self.feed is None:
            return
        native = {
            t.name: t.native_id
            for t in threading.enumerate()
            if t.name.startswith(CONNECTION_THREAD_PREFIX)
        }
        try:
            cpu_by_tid = {t.id: t.user_time + t.system_time for t in self._process.threads()}
        except psutil.Error as exc:
            log.debug("event=thread_cpu_unavailable error=%r", str(exc))
            return
        for name, conn in list(self.feed.connections.items()):
            cpu = cpu_by_tid.get(native.get(CONNECTION_THREAD_PREFIX + name, -1))
            if cpu is None:
                continue
            frames = conn.health.messages_total
            self.thread_cpu_s[name] = cpu
            last = self._cpu_last.get(name)
            # Clock ticks are 10 ms: judge the cost over enough frames to mean something.
            if last is None or frames < last[1]:
                self._cpu_last[name] = (cpu, frames)
            elif frames - last[1] >= 1000 and cpu - last[0] >= 0.05:
                self.frame_cpu_s[name] = (cpu - last[0]) / (frames - last[1])
                self._cpu_last[name] = (cpu, frames)

    # -- readers ---------------------------------------------------------------------

    def message_rates(self) -> dict[str, float]:
        with self._lock:
            return dict(self._rates)

    def markets(self) -> list[dict[str, Any]]:
        with self._lock:
            updates = dict(self._updates)
            rates = dict(self._market_rates)
            rows = [dict(row) for row in self._table]
        for row in rows:
            row["updates"] = updates.get(row["code"], 0)
            row["updates_per_s"] = rates.get(row["code"], 0.0)
        return rows

    def histograms(self) -> Iterator[tuple[str, dict[str, str], Histogram]]:
        """(metric name, labels, histogram) of every latency histogram."""
        for (kind, clock), hist in self.wire.items():
            yield "upfeed_wire_latency_seconds", {"kind": kind, "clock": clock}, hist
        if self.route_timer is not None:
            yield "upfeed_route_seconds", {}, self.route_timer.histogram


def _num(value: Any) -> float | None:
    number = float(value)
    return None if math.isnan(number) else number  # NaN: the field was absent


# ----------------------------------------------------------------------- prometheus


def _gauge(name: str, doc: str, value: float, **labels: str) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=list(labels))
    family.add_metric(list(labels.values()), value)
    return family


class FeedCollector(Collector):
    """Builds every upfeed metric family from the feed's own figures at scrape time."""

    def __init__(self, feed: FeedProcess, telemetry: Telemetry | None = None) -> None:
        self.feed = feed
        self.telemetry = telemetry

    def collect(self) -> Iterable[Metric]:
        feed = self.feed
        if feed.router is None or feed.publisher is None or feed.trades is None:
            yield _gauge("upfeed_up", "1 once the feed has started", 0)
            return
        health = feed.health()
        metrics = feed.metrics()
        yield _gauge("upfeed_up", "1 once the feed has started", 1)
        yield _gauge(
            "upfeed_health_score", "lowest connection health score (0..1)", health["health_score"]
        )
        state = GaugeMetricFamily(
            "upfeed_health_state", "1 for the current state", labels=["state"]
        )
        for name in ("healthy", "degraded", "down"):
            state.add_metric([name], 1.0 if health["state"] == name else 0.0)
        yield state
        yield from self._connections(health["connections"])
        messages = CounterMetricFamily("upfeed_messages", "frames routed, by type", labels=["type"])
        for kind, count in sorted(metrics["messages"].items()):
            messages.add_metric([kind], count)
        yield messages
        unknown = sum(metrics["unknown_codes"].values())
        yield CounterMetricFamily(
            "upfeed_unknown_code_messages",
            "frames for markets the shm table had no room for",
            value=unknown,
        )
        pub = metrics["publisher"]
        yield CounterMetricFamily("upfeed_zmq_sent", "bus messages sent", value=pub["sent"])
        yield CounterMetricFamily(
            "upfeed_zmq_dropped", "bus messages dropped (send would block)", value=pub["dropped"]
        )
        yield _gauge("upfeed_zmq_topics", "topics published so far", pub["topics"])
        yield from self._trades(metrics["trades"])
        yield from self._rate_limiter(metrics["rate_limiter"])
        rest = metrics["rest"]
        yield CounterMetricFamily("upfeed_rest_calls", "REST requests", value=rest["calls"])
        yield CounterMetricFamily(
            "upfeed_rest_rate_limited", "REST answers 429/418", value=rest["rate_limited"]
        )
        workers = metrics["workers"]
        yield _gauge("upfeed_workers", "workers holding a lease", workers.get("workers", 0))
        yield CounterMetricFamily(
            "upfeed_worker_gaps", "bus messages workers reported lost", value=workers.get("gaps", 0)
        )
        yield from self._shm(feed.segments()["segments"])
        proc = health["process"]
        yield _gauge("upfeed_process_rss_bytes", "resident memory", proc["rss_mb"] * 1024 * 1024)
        yield _gauge("upfeed_process_threads", "threads", proc["threads"])
        yield _gauge("upfeed_uptime_seconds", "seconds since start", time.time() - feed.started_at)
        yield from self._gc(metrics["gc"])
        if self.telemetry is not None:
            yield from self._telemetry(self.telemetry)
        recorder = next((a for a in feed.addons if a.name == "recorder"), None)
        if recorder is not None:
            rec = recorder.status()
            yield CounterMetricFamily(
                "upfeed_recorder_frames", "frames written to the recording", value=rec["frames"]
            )
            yield CounterMetricFamily(
                "upfeed_recorder_dropped", "frames not recorded (queue full)", value=rec["dropped"]
            )

    @staticmethod
    def _connections(conns: dict[str, dict[str, Any]]) -> Iterator[Metric]:
        labels = ["connection"]
        up = GaugeMetricFamily("upfeed_connection_up", "1 while connected", labels=labels)
        score = GaugeMetricFamily("upfeed_connection_health_score", "0..1", labels=labels)
        msgs = CounterMetricFamily("upfeed_connection_messages", "frames received", labels=labels)
        rate = GaugeMetricFamily(
            "upfeed_connection_messages_per_second", "recent receive rate", labels=labels
        )
        reconnects = CounterMetricFamily("upfeed_reconnects", "reconnects", labels=labels)
        silence = GaugeMetricFamily(
            "upfeed_connection_silence_seconds", "time since the last sign of life", labels=labels
        )
        errors = CounterMetricFamily(
            "upfeed_connection_errors", "errors by kind", labels=["connection", "kind"]
        )
        for name, c in sorted(conns.items()):
            up.add_metric([name], 1.0 if c["connected"] else 0.0)
            score.add_metric([name], c["health_score"])
            msgs.add_metric([name], c["messages_total"])
            rate.add_metric([name], c["messages_per_s"])
            reconnects.add_metric([name], c["reconnects"])
            silence.add_metric([name], c["silence_s"])
            for kind, count in sorted(c["errors_by_kind"].items()):
                errors.add_metric([name, kind], count)
        yield from (up, score, msgs, rate, reconnects, silence, errors)

    @staticmethod
    def _trades(trades: dict[str, Any]) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "upfeed_trades_published", "trades published", value=trades["published"]
        )
        yield CounterMetricFamily(
            "upfeed_trades_duplicates_dropped",
            "duplicate trades dropped",
            value=trades["duplicates_dropped"],
        )
        yield CounterMetricFamily(
            "upfeed_trades_backfilled", "trades recovered from REST", value=trades["backfilled"]
        )
        yield CounterMetricFamily(
            "upfeed_trade_gaps_reported",
            "gaps that could not be filled",
            value=trades["gaps_reported"],
        )
        yield _gauge(
            "upfeed_trade_codes_in_gap", "markets waiting for a backfill", len(trades["in_gap"])
        )

    @staticmethod
    def _rate_limiter(rl: dict[str, Any]) -> Iterator[Metric]:
        yield _gauge(
            "upfeed_rate_limiter_rate_factor",
            "dynamic slow-down factor (1 = none)",
            rl["rate_factor"],
        )
        yield _gauge(
            "upfeed_rate_limiter_effective_fraction",
            "share of the exchange limit used",
            rl["effective_fraction"],
        )
        yield CounterMetricFamily(
            "upfeed_rate_limit_errors",
            "rate-limit errors from the exchange",
            value=rl["errors"]["total"],
        )
        yield CounterMetricFamily(
            "upfeed_rate_limiter_reductions",
            "slow-downs applied",
            value=rl["adjustments"]["reductions"],
        )
        yield CounterMetricFamily("upfeed_rate_limiter_bans", "REST bans (418)", value=rl["bans"])
        yield _gauge("upfeed_rate_limiter_ban_remaining_seconds", "", rl["ban_remaining_s"])
        available = GaugeMetricFamily(
            "upfeed_rate_limiter_available", "grants left in each window", labels=["bucket"]
        )
        for bucket, status in sorted(rl["buckets"].items()):
            available.add_metric([bucket], status["available"])
        yield available

    @staticmethod
    def _gc(gc: dict[str, Any]) -> Iterator[Metric]:
        yield _gauge(
            "upfeed_gc_frozen_objects", "start-up objects exempt from collection", gc["frozen"]
        )
        runs = CounterMetricFamily(
            "upfeed_gc_collections", "garbage collections", labels=["generation"]
        )
        paused = CounterMetricFamily(
            "upfeed_gc_pause_seconds", "time stopped in collections", labels=["generation"]
        )
        longest = GaugeMetricFamily(
            "upfeed_gc_pause_max_seconds", "longest collection", labels=["generation"]
        )
        for entry in gc["generations"]:
            label = [str(entry["generation"])]
            runs.add_metric(label, entry["collections"])
            paused.add_metric(label, entry["pause_ms_total"] / 1000)
            longest.add_metric(label, entry["pause_ms_max"] / 1000)
        yield runs
        yield paused
        yield longest

    @staticmethod
    def _shm(segments: list[dict[str, Any]]) -> Iterator[Metric]:
        labels = ["segment"]
        head = CounterMetricFamily(
            "upfeed_shm_records", "records written (ring head)", labels=labels
        )
        capacity = GaugeMetricFamily(
            "upfeed_shm_capacity", "ring capacity in records", labels=labels
        )
        wraps = CounterMetricFamily(
            "upfeed_shm_ring_wraps",
            "times the ring wrapped; a reader slower than that overruns",
            labels=labels,
        )
        for seg in segments:
            head.add_metric([seg["kind"]], seg["head"])
            capacity.add_metric([seg["kind"]], seg["capacity"])
            wraps.add_metric([seg["kind"]], seg["head"] // seg["capacity"])
        yield from (head, capacity, wraps)

    @staticmethod
    def _telemetry(telemetry: Telemetry) -> Iterator[Metric]:
        cpu = CounterMetricFamily(
            "upfeed_connection_cpu_seconds",
            "CPU time of the connection thread",
            labels=["connection"],
        )
        for name, seconds in sorted(telemetry.thread_cpu_s.items()):
            cpu.add_metric([name], seconds)
        yield cpu
        per_frame = GaugeMetricFamily(
            "upfeed_connection_cpu_per_frame_seconds",
            "receive + decode + route CPU per frame, recent average",
            labels=["connection"],
        )
        for name, seconds in sorted(telemetry.frame_cpu_s.items()):
            per_frame.add_metric([name], seconds)
        yield per_frame
        overrun = CounterMetricFamily(
            "upfeed_shm_sampler_overruns", "records the telemetry reader missed", labels=["segment"]
        )
        for kind, count in telemetry.overrun.items():
            overrun.add_metric([kind], count)
        yield overrun
        families: dict[str, HistogramMetricFamily] = {}
        for name, labels, hist in telemetry.histograms():
            family = families.get(name)
            if family is None:
                family = families[name] = HistogramMetricFamily(
                    name,
                    "wire to shm latency"
                    if name.startswith("upfeed_wire")
                    else "decode and route time per frame (sampled)",
                    labels=list(labels),
                )
            buckets, total, _count = hist.snapshot()
            family.add_metric(list(labels.values()), buckets, total)
        yield from families.values()


class MetricsServer:
    """The Prometheus endpoint (``/metrics``) as a feed add-on."""

    name = "metrics"

    def __init__(
        self, port: int, *, host: str = DEFAULT_HOST, telemetry: Telemetry | None = None
    ) -> None:
        self.port = port
        self.host = host
        self.telemetry = telemetry
        self.registry = CollectorRegistry()
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def start(self, feed: FeedProcess) -> None:
        self.registry.register(FeedCollector(feed, self.telemetry))
        ProcessCollector(registry=self.registry)
        try:
            self._server, self._thread = start_http_server(self.port, self.host, self.registry)
        except OSError as exc:
            raise OpsStartError(f"metrics endpoint {self.host}:{self.port}: {exc}") from exc
        self.port = self._server.server_address[1]
        log.info("event=metrics_started url=%s", self.url)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(2.0)

    def status(self) -> dict[str, Any]:
        return {"url": self.url}


def addons_from_settings(
    settings: Settings,
    *,
    metrics_port: int | None = None,
    dashboard_port: int | None = None,
    record_path: str | None = None,
    host: str = DEFAULT_HOST,
    route_sample_every: int | None = None,
) -> list[Addon]:
    """The add-ons a feed runs: the telemetry when anything reads it, the metrics endpoint
    (``metrics_port`` or ``metrics.prometheus_port``, 0 = any free port), the dashboard
    (``dashboard_port`` or ``metrics.dashboard_port``) on ``metrics.host``, and the
    recorder. ``route_sample_every`` switches the per-frame route timer on."""
    addons: list[Addon] = []
    if metrics_port is None:
        metrics_port = settings.metrics.prometheus_port
    if dashboard_port is None:
        dashboard_port = settings.metrics.dashboard_port
    if host == DEFAULT_HOST:
        host = settings.metrics.host
    wanted = metrics_port is not None or dashboard_port is not None
    telemetry = Telemetry(route_sample_every=route_sample_every) if wanted else None
    if telemetry is not None:
        addons.append(telemetry)
    if metrics_port is not None:
        addons.append(MetricsServer(metrics_port, host=host, telemetry=telemetry))
    if dashboard_port is not None:
        from feedhandler.dashboard import DashboardServer  # noqa: PLC0415 - optional part

        assert telemetry is not None
        addons.append(DashboardServer(dashboard_port, telemetry, host=host))
    if record_path is not None:
        from feedhandler.record import Recorder  # noqa: PLC0415 - optional part

        addons.append(Recorder(record_path))
    return addons
