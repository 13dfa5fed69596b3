"""The asyncio exchange: WebSocket endpoints, market pacing, faults, journal.

The ``websockets`` server does the opening handshake, reads client frames and
answers pings; market data is written as pre-framed binary frames straight to the
connection's transport, batched per connection, which is many times cheaper than
``websockets``' per-message send path (PERF.md). A connection whose transport
buffers more than ``max_write_buffer`` bytes is dropped as a slow consumer, so
one stuck client never stalls the market or grows memory without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.extensions.permessage_deflate import PerMessageDeflate
from websockets.http11 import Request, Response
from websockets.protocol import State

from simulator import encode
from simulator.burst import run_burst
from simulator.control_api import ControlApi
from simulator.encode import (
    STATUS_UP,
    base_format,
    encode_candle,
    encode_error,
    encode_orderbook,
    encode_ticker,
    encode_trade,
    is_list_format,
)
from simulator.frames import (
    OP_BINARY,
    STAMP_DIGITS,
    Deflater,
    frame,
    header,
    stamp_digits_back,
    with_stamp_slot,
)
from simulator.generator import MarketGenerator, MarketState, Trade
from simulator.http import HttpServer
from simulator.journal import ConnectionRecord, Journal
from simulator.limits import SlidingWindow, WindowSet
from simulator.markets import market_list
from simulator.numbers import to_decimal
from simulator.private import Account, Authenticator, AuthError, encode_private
from simulator.request import ParsedRequest, RequestError, Stream, parse_request
from simulator.rest import RestApi
from simulator.timer import LoopTimer

log = logging.getLogger("simulator")


def _stamped_frames(payloads: list[bytes], list_format: bool) -> bytearray:
    """Uncompressed frames of ``payloads``, each ending in ``"sim_ns"``: the time is
    taken after framing, just before the caller writes them, as the stamp promises."""
    back = stamp_digits_back(list_format)
    frames = [frame(with_stamp_slot(p, list_format)) for p in payloads]
    data = bytearray(b"".join(frames))
    ends = list(itertools.accumulate(map(len, frames)))
    # Nothing the garbage collector counts is allocated from here to the write, so a
    # collection (tens of ms on a big journal) cannot fall between stamp and send.
    stamp = b"%d" % time.time_ns()
    for end in ends:
        data[end - back : end - back + STAMP_DIGITS] = stamp
    return data


# The paced stream wakes at most this often; at higher rates several events share a wake-up.
PACE_MIN_WAIT = 0.0002

PUBLIC_PATH = "/websocket/v1"
PRIVATE_PATH = "/websocket/v1/private"


@dataclass(slots=True)
class SimulatorConfig:
    """Every knob of the simulated exchange; the defaults are Upbit's documented values."""

    host: str = "127.0.0.1"
    port: int = 0
    rest_port: int = 0
    control_port: int = 0
    markets: int = 20
    rate: float = 1000.0
    """Market events per second; each event is one trade in one market (see module doc)."""
    seed: int = 1
    access_key: str | None = None
    secret_key: str | None = None
    stamp: bool = False
    idle_timeout: float = 120.0
    status_interval: float = 10.0
    error_close_delay: float = 0.15
    connect_limit: tuple[int, float] | None = (5, 1.0)
    request_limits: tuple[tuple[int, float], ...] | None = ((5, 1.0), (100, 60.0))
    origin_limit: tuple[int, float] = (1, 10.0)
    rest_limit: int = 10
    rest_teapot_after: int = 3
    rest_block_seconds: float = 10.0
    sid_history: int = 100_000
    trade_history: int = 20_000
    max_write_buffer: int = 64 * 1024 * 1024
    balances: dict[str, str] | None = None


class Client:
    """One accepted WebSocket connection and everything the exchange tracks about it."""

    __slots__ = (
        "auth_error",
        "closing",
        "conn",
        "format",
        "framer",
        "index_keys",
        "last_rx",
        "last_tx",
        "list_format",
        "pending",
        "private",
        "record",
        "request",
        "stalled_until",
        "status_next",
        "windows",
    )

    def __init__(
        self,
        conn: ServerConnection,
        record: ConnectionRecord,
        *,
        private: bool,
        windows: WindowSet | None,
        auth_error: str | None,
        now: float,
    ) -> None:
        self.conn = conn
        self.record = record
        self.private = private
        self.windows = windows
        self.auth_error = auth_error
        self.format = "DEFAULT"
        self.list_format = False
        self.request: ParsedRequest | None = None
        self.index_keys: list[tuple[str, str]] = []
        self.pending: list[bytes] = []
        self.last_rx = now
        self.last_tx = now
        self.status_next: float | None = None
        self.stalled_until = 0.0
        self.closing = False
        self.framer = frame
        for extension in conn.protocol.extensions:
            if isinstance(extension, PerMessageDeflate):
                deflater = Deflater(
                    extension.local_max_window_bits or 15, extension.local_no_context_takeover
                )
                self.framer = deflater.frame
                record.compression = True

    @property
    def id(self) -> int:
        return self.record.id


class TrackedConnection(ServerConnection):
    """A ServerConnection that notes when any bytes arrive (idle timeout accounting)."""

    last_rx: float = 0.0

    def data_received(self, data: bytes) -> None:
        self.last_rx = time.monotonic()
        super().data_received(data)


class Exchange:
    """All exchange state; every method runs on the one asyncio loop."""

    def __init__(
        self,
        config: SimulatorConfig,
        wall_ms: Callable[[], int] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.wall_ms = wall_ms or (lambda: time.time_ns() // 1_000_000)
        self.monotonic = monotonic
        self.markets = market_list(config.markets)
        self.generator = MarketGenerator(
            self.markets, config.seed, self.wall_ms(), config.sid_history, config.trade_history
        )
        self.journal = Journal(config.sid_history)
        self.rate = float(config.rate)
        self.slow_factor = 1.0
        self.slow_delay = 0.0
        self.clients: dict[int, Client] = {}
        self.index: dict[tuple[str, str], dict[Client, list[Stream]]] = {}
        self.candle_dirty: dict[tuple[str, str], int] = {}
        self.candle_pushed: dict[tuple[str, str], int] = {}
        self.connect_windows: dict[tuple[str, bool], SlidingWindow] = {}
        self.forced_ws_errors = 0
        self.duplicate_left = 0
        self.reorder_left = 0
        self.held_trades: dict[str, Trade] = {}
        self.authenticator = (
            Authenticator(config.access_key, config.secret_key)
            if config.access_key and config.secret_key
            else None
        )
        self.account = Account(
            {info.code for info in self.markets}, self._best_price, config.balances
        )
        self.ws_server: Server | None = None
        self.ws_port = config.port
        self.listening = False
        self.down = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self.rest_api = RestApi(self)
        self.rest_http = HttpServer(self.rest_api.handle, "rest")
        self.control_http = HttpServer(ControlApi(self).handle, "control")
        self.rest_port = config.rest_port
        self.control_port = config.control_port

    # --- lifecycle ---

    @property
    def urls(self) -> dict[str, str]:
        host = self.config.host
        return {
            "public_url": f"ws://{host}:{self.ws_port}{PUBLIC_PATH}",
            "private_url": f"ws://{host}:{self.ws_port}{PRIVATE_PATH}",
            "rest_url": f"http://{host}:{self.rest_port}",
            "control_url": f"http://{host}:{self.control_port}/control",
        }

    async def start(self) -> dict[str, str]:
        await self._listen()
        self.control_port = await self.control_http.start(self.config.host, self.control_port)
        self.spawn(self._pace())
        self.spawn(self._watchdog())
        log.info("event=simulator_listening %s", " ".join(f"{k}={v}" for k, v in self.urls.items()))
        return self.urls

    async def _listen(self) -> None:
        self.ws_server = await serve(
            self._handler,
            self.config.host,
            self.ws_port,
            process_request=self._process_request,
            process_response=self._process_response,
            create_connection=TrackedConnection,
            compression="deflate",
            ping_interval=None,
            close_timeout=1.0,
            max_size=1024 * 1024,
            write_limit=1024 * 1024,
            reuse_address=True,
        )
        self.ws_port = int(next(iter(self.ws_server.sockets)).getsockname()[1])
        self.rest_port = await self.rest_http.start(self.config.host, self.rest_port)
        self.listening = True
        self.down = False

    async def _unlisten(self, reason: str) -> None:
        self.listening = False
        for client in list(self.clients.values()):
            self._abort(client, reason)
        if self.ws_server is not None:
            self.ws_server.close(close_connections=False)
            await self.ws_server.wait_closed()
            self.ws_server = None
        await self.rest_http.close()
        self.down = True

    async def stop(self) -> None:
        self._stopping = True
        for task in list(self._tasks):
            task.cancel()
        for client in list(self.clients.values()):
            self._abort(client, "shutdown")
        if self.ws_server is not None:
            self.ws_server.close(close_connections=False)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.ws_server.wait_closed(), timeout=1.0)
        await self.rest_http.close()
        await self.control_http.close()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        """Run ``coro`` as a task the exchange cancels on stop and logs if it fails."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("event=task_failed task=%s error=%r", task.get_name(), task.exception())

    # --- handshake and connections ---

    def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        client_ip = str(conn.remote_address[0]) if conn.remote_address else "?"
        origin = "Origin" in request.headers
        now = self.monotonic()
        if path not in (PUBLIC_PATH, PRIVATE_PATH):
            return conn.respond(404, "Not Found\n")
        limit = self.config.origin_limit if origin else self.config.connect_limit
        if limit is not None:
            window = self.connect_windows.get((client_ip, origin))
            if window is None:
                window = self.connect_windows[(client_ip, origin)] = SlidingWindow(*limit)
            if not window.allow(now):
                kind = "origin_connect_rate" if origin else "connect_rate"
                self.journal.rejected.append(
                    {"t": time.time(), "client": client_ip, "path": path, "kind": kind}
                )
                log.info("event=connect_rejected client=%s kind=%s", client_ip, kind)
                return conn.respond(429, "Too Many Requests\n")
        return None

    def _process_response(
        self, conn: ServerConnection, request: Request, response: Response
    ) -> Response:
        """Upbit's upgrade answer carries the connect budget (as the live probe saw)."""
        if response.status_code == 101:
            client_ip = str(conn.remote_address[0]) if conn.remote_address else "?"
            origin = "Origin" in request.headers
            window = self.connect_windows.get((client_ip, origin))
            left = window.remaining(self.monotonic()) if window is not None else 0
            group = "origin" if origin else "websocket"
            response.headers["Remaining-Req"] = f"group={group}; min=300; sec={left}"
            response.headers["Limit-By-IP"] = "Yes"
        return response

    async def _handler(self, conn: ServerConnection) -> None:
        request = conn.request
        assert request is not None
        path = urlsplit(request.path).path
        headers: Headers = request.headers
        private = path == PRIVATE_PATH
        origin = "Origin" in headers
        authorization = headers.get("Authorization")
        peer = conn.remote_address
        client_name = f"{peer[0]}:{peer[1]}" if peer else "?"
        now = self.monotonic()
        record = self.journal.open(
            path, client_name, origin, authorization is not None, time.time()
        )
        auth_error: str | None = None
        if private:
            if self.authenticator is None:
                auth_error = "no_keys_configured"
            else:
                try:
                    self.authenticator.verify(authorization)
                except AuthError as exc:
                    auth_error = exc.name
        if origin:
            windows: WindowSet | None = WindowSet(self.config.origin_limit)
        elif self.config.request_limits:
            windows = WindowSet(*self.config.request_limits)
        else:
            windows = None
        client = Client(
            conn, record, private=private, windows=windows, auth_error=auth_error, now=now
        )
        self.clients[record.id] = client
        log.info(
            "event=ws_open id=%s path=%s client=%s origin=%s", record.id, path, client_name, origin
        )
        try:
            async for message in conn:
                self._on_message(client, message)
        except ConnectionClosed:
            pass
        finally:
            self._unsubscribe(client)
            self.clients.pop(record.id, None)
            if record.reason is None:
                code = conn.close_code
                record.reason = "closed" if code is not None else "connection_lost"
            record.disconnected_at = time.time()
            log.info("event=ws_closed id=%s reason=%s", record.id, record.reason)

    def _abort(self, client: Client, reason: str) -> None:
        """Drop the TCP connection without a close frame."""
        if client.record.reason is None:
            client.record.reason = reason
        client.closing = True
        client.pending.clear()
        self._unsubscribe(client)
        transport = client.conn.transport
        if transport is not None:
            transport.abort()

    # --- client messages ---

    def _on_message(self, client: Client, message: str | bytes) -> None:
        now = self.monotonic()
        client.last_rx = now
        if client.closing:
            return
        if message in ("PING", b"PING"):
            client.status_next = now + self.config.status_interval
            self._send_direct(client, STATUS_UP)
            return
        wall = time.time()
        if self.forced_ws_errors > 0:
            self.forced_ws_errors -= 1
            client.record.violations.append({"t": wall, "kind": "injected_rate_limit"})
            self._fail(client, RequestError("TOO_MANY_REQ"))
            return
        if client.windows is not None and not client.windows.allow(now):
            kind = "origin_request_rate" if client.record.origin else "request_rate"
            client.record.violations.append({"t": wall, "kind": kind})
            self._fail(client, RequestError("TOO_MANY_REQ"))
            return
        if client.private and client.auth_error is not None:
            client.record.requests.append({"t": wall, "rejected": "INVALID_AUTH"})
            self._fail(client, RequestError("INVALID_AUTH"))
            return
        try:
            request = parse_request(message, client.private)
        except RequestError as exc:
            client.record.requests.append({"t": wall, "rejected": exc.name})
            self._fail(client, exc)
            return
        client.record.requests.append(
            {
                "t": wall,
                "ticket": request.ticket,
                "format": request.format,
                "subscription": request.describe(),
            }
        )
        self._subscribe(client, request)

    def _fail(self, client: Client, error: RequestError) -> None:
        client.record.errors.append({"t": time.time(), "name": error.name})
        self._unsubscribe(client)
        self._send_direct(client, encode_error(error.name, error.message))
        client.closing = True
        self.spawn(self._close_later(client))

    async def _close_later(self, client: Client) -> None:
        await asyncio.sleep(self.config.error_close_delay)
        if client.record.reason is None:
            client.record.reason = "error_close"
        await client.conn.close(1000)

    # --- subscriptions ---

    def _unsubscribe(self, client: Client) -> None:
        for key in client.index_keys:
            subscribers = self.index.get(key)
            if subscribers is not None:
                subscribers.pop(client, None)
                if not subscribers:
                    del self.index[key]
        client.index_keys = []
        client.request = None

    def _subscribe(self, client: Client, request: ParsedRequest) -> None:
        self._unsubscribe(client)
        client.request = request
        client.format = base_format(request.format)
        client.list_format = is_list_format(request.format)
        states = self.generator.states
        keys: dict[tuple[str, str], list[Stream]] = {}
        for stream in request.streams:
            if stream.type.startswith("candle."):
                self.generator.activate_candles(stream.type.split(".", 1)[1])
            if stream.type in ("myOrder", "myAsset"):
                codes = list(stream.codes) or ["*"]
                for code in codes:
                    keys.setdefault((stream.type, code), []).append(stream)
                continue
            for code in stream.codes:
                state = states.get(code)
                if state is None:
                    continue
                if not stream.only_realtime:
                    self._snapshot(client, stream, state)
                if not stream.only_snapshot:
                    keys.setdefault((stream.type, code), []).append(stream)
        for key, streams in keys.items():
            self.index.setdefault(key, {})[client] = streams
        client.index_keys = list(keys)
        self._flush(client)

    def _snapshot(self, client: Client, stream: Stream, state: MarketState) -> None:
        fmt = client.format
        kind = stream.type
        if kind == "trade":
            trade = state.last_trade
            if trade is not None:
                client.pending.append(encode_trade(trade, fmt, "SNAPSHOT"))
                client.record.sent_sid(state.code, trade.sequential_id)
        elif kind == "ticker":
            client.pending.append(encode_ticker(state, fmt, "SNAPSHOT"))
        elif kind == "orderbook":
            book = state.book(stream.codes[state.code], stream.level)
            if book is not None:
                client.pending.append(
                    encode_orderbook(state, book, fmt, "SNAPSHOT", state.book_timestamp)
                )
        else:
            candle = state.candle_snapshot(kind.split(".", 1)[1])
            if candle is not None:
                client.pending.append(encode_candle(state.code, candle, fmt, "SNAPSHOT"))

    # --- market data ---

    async def _pace(self) -> None:
        loop = asyncio.get_running_loop()
        timer = LoopTimer(loop)
        try:
            await self._pace_with(loop, timer)
        finally:
            timer.close()

    async def _pace_with(self, loop: asyncio.AbstractEventLoop, timer: LoopTimer) -> None:
        """Generates ``rate`` events per second, each when it is due (to the timer's
        precision, at most one wake-up per PACE_MIN_WAIT), and sends them at once."""
        anchor = loop.time()
        produced = 0
        while True:
            rate = self.rate / self.slow_factor
            now = loop.time()
            if rate <= 0 or not self.listening:
                anchor, produced = now, 0
                await asyncio.sleep(0.05)
                continue
            due = int((now - anchor) * rate) - produced
            burst_cap = max(1, int(rate * 0.05))
            if due > burst_cap * 4:
                # Fell far behind (paused, stalled loop): do not replay the backlog.
                anchor, produced, due = now - burst_cap / rate, 0, burst_cap
            if due > 0:
                now_ms = self.wall_ms()
                step = self.generator.step
                dispatch = self._dispatch
                for _ in range(due):
                    dispatch(step(now_ms))
                produced += due
                self._flush_candles(now_ms)
            now = loop.time()
            wait = min(max(anchor + (produced + 1) / rate - now, PACE_MIN_WAIT), 0.05)
            # Armed before the frames leave: until this process sleeps, a reader of them
            # that shares its core cannot run, so the least possible work follows a write.
            timer.arm(now + wait + self.slow_delay)
            if due > 0:
                self._flush_all()
            await timer.wait()

    def _dispatch(self, trade: Trade) -> None:
        code = trade.code
        index = self.index
        subscribers = index.get(("trade", code))
        if subscribers:
            # Faults apply to trades somebody receives, so a count is never used up
            # by markets nobody subscribed to.
            if self.reorder_left > 0 or self.duplicate_left > 0 or self.held_trades:
                trades = self._faulted_trades(trade)
            else:
                trades = (trade,)
            for item in trades:
                cache: dict[str, bytes] = {}
                for client in subscribers:
                    fmt = client.format
                    payload = cache.get(fmt)
                    if payload is None:
                        payload = cache[fmt] = encode_trade(item, fmt, "REALTIME")
                    client.pending.append(payload)
                    client.record.sent_sid(code, item.sequential_id)
        state = self.generator.states[code]
        subscribers = index.get(("ticker", code))
        if subscribers:
            cache = {}
            for client in subscribers:
                fmt = client.format
                payload = cache.get(fmt)
                if payload is None:
                    payload = cache[fmt] = encode_ticker(state, fmt, "REALTIME")
                client.pending.append(payload)
        subscribers = index.get(("orderbook", code))
        if subscribers:
            book_cache: dict[tuple[str, int, int], bytes | None] = {}
            for client, streams in subscribers.items():
                for stream in streams:
                    key = (client.format, stream.codes[code], stream.level)
                    if key not in book_cache:
                        book = state.book(key[1], key[2])
                        book_cache[key] = (
                            None
                            if book is None
                            else encode_orderbook(
                                state, book, key[0], "REALTIME", state.book_timestamp
                            )
                        )
                    payload = book_cache[key]
                    if payload is not None:
                        client.pending.append(payload)
        for unit in self.generator.candle_units:
            if (f"candle.{unit}", code) in index:
                self.candle_dirty.setdefault((unit, code), trade.timestamp)

    def _faulted_trades(self, trade: Trade) -> tuple[Trade, ...]:
        held = self.held_trades.pop(trade.code, None)
        if held is not None:
            return (trade, held)
        if self.reorder_left > 0:
            self.reorder_left -= 1
            self.held_trades[trade.code] = trade
            return ()
        if self.duplicate_left > 0:
            self.duplicate_left -= 1
            return (trade, trade)
        return (trade,)

    def _flush_candles(self, now_ms: int) -> None:
        if not self.candle_dirty:
            return
        states = self.generator.states
        for key in list(self.candle_dirty):
            if now_ms - self.candle_pushed.get(key, 0) < 1000:
                continue
            del self.candle_dirty[key]
            unit, code = key
            subscribers = self.index.get((f"candle.{unit}", code))
            candle = states[code].candles.get(unit)
            if not subscribers or candle is None:
                continue
            self.candle_pushed[key] = now_ms
            cache: dict[str, bytes] = {}
            for client in subscribers:
                fmt = client.format
                payload = cache.get(fmt)
                if payload is None:
                    payload = cache[fmt] = encode_candle(code, candle, fmt, "REALTIME")
                client.pending.append(payload)

    def _flush_all(self) -> None:
        for client in list(self.clients.values()):
            if client.pending:
                self._flush(client)

    def _flush(self, client: Client) -> None:
        pending = client.pending
        if not pending:
            return
        conn = client.conn
        transport = conn.transport
        if (
            client.stalled_until > self.monotonic()
            or conn.state is not State.OPEN
            or transport is None
            or transport.is_closing()
        ):
            pending.clear()
            return
        framer = client.framer
        client.pending = []
        if self.config.stamp and framer is frame:
            data = _stamped_frames(pending, client.list_format)
        else:
            if self.config.stamp:
                # Compressed frames cannot be patched after framing: stamp first.
                stamp = b',"sim_ns":%d}' % time.time_ns()
                pending = [p[:-1] + stamp for p in pending]
            if client.list_format:
                data = b"".join(framer(b"[" + p + b"]") for p in pending)
            else:
                data = b"".join(map(framer, pending))
        transport.write(data)
        client.last_tx = self.monotonic()
        if transport.get_write_buffer_size() > self.config.max_write_buffer:
            log.warning("event=slow_consumer id=%s", client.id)
            self._abort(client, "slow_consumer")

    def _send_direct(self, client: Client, payload: bytes, list_wrap: bool = False) -> None:
        """Write a frame that is not market data (status, error, private event) now,
        after whatever market frames are pending, never stamped."""
        self._flush(client)
        transport = client.conn.transport
        if (
            client.stalled_until > self.monotonic()
            or client.conn.state is not State.OPEN
            or transport is None
            or transport.is_closing()
        ):
            return
        transport.write(client.framer(b"[" + payload + b"]" if list_wrap else payload))
        client.last_tx = self.monotonic()

    # --- private events ---

    def publish_private(self, events: list[tuple[str, dict[str, Any]]]) -> None:
        for kind, event in events:
            targets: dict[Client, None] = {}
            for key in ((kind, "*"), (kind, str(event.get("code", "")))):
                for client in self.index.get(key, {}):
                    targets[client] = None
            for client in targets:
                payload = encode_private(event, simple=client.format == encode.SIMPLE)
                self._send_direct(client, payload, client.list_format)

    def _best_price(self, code: str, side: str) -> Decimal:
        state = self.generator.states[code]
        return to_decimal(state.best_ask if side == "ask" else state.best_bid)

    # --- keepalive and idle ---

    async def _watchdog(self) -> None:
        tick = max(0.02, min(1.0, self.config.idle_timeout / 8, self.config.status_interval / 4))
        while True:
            await asyncio.sleep(tick)
            now = self.monotonic()
            for client in list(self.clients.values()):
                conn = client.conn
                rx = max(client.last_rx, getattr(conn, "last_rx", 0.0))
                if now - max(rx, client.last_tx) > self.config.idle_timeout:
                    log.info("event=idle_drop id=%s", client.id)
                    self._abort(client, "idle_timeout")
                    continue
                if client.status_next is not None and now >= client.status_next:
                    client.status_next = now + self.config.status_interval
                    self._send_direct(client, STATUS_UP)

    # --- faults (called by the control API) ---

    def targets(self, connection: int | str | None) -> list[Client]:
        if connection in (None, "all"):
            return list(self.clients.values())
        client = self.clients.get(int(connection))
        if client is None:
            raise KeyError(f"no open connection with id {connection}")
        return [client]

    def drop_all(self) -> int:
        clients = list(self.clients.values())
        for client in clients:
            self._abort(client, "fault_drop")
        return len(clients)

    def stall(self, connection: int | str | None, seconds: float) -> list[int]:
        clients = self.targets(connection)
        until = self.monotonic() + seconds
        for client in clients:
            client.stalled_until = until
            transport = client.conn.transport
            transport.pause_reading()
            asyncio.get_running_loop().call_later(seconds, self._unstall, client)
        return [client.id for client in clients]

    def _unstall(self, client: Client) -> None:
        transport = client.conn.transport
        if transport is not None and not transport.is_closing():
            transport.resume_reading()
        # A stalled client's idle clock restarts, so a stall shorter than the idle
        # timeout does not also trigger an idle drop.
        client.last_tx = self.monotonic()

    def malformed(self, connection: int | str | None, kind: str) -> list[int]:
        clients = self.targets(connection)
        for client in clients:
            transport = client.conn.transport
            if transport is None or transport.is_closing():
                continue
            if kind == "garbage":
                transport.write(frame(b"\x00\x01garbage{]not json"))
            elif kind == "truncated_json":
                transport.write(frame(b'{"type":"trade","code":"KRW-BTC","trade_pri'))
            elif kind == "truncated":
                whole = frame(b'{"type":"trade","code":"KRW-BTC","trade_price":1.0}')
                transport.write(whole[: len(whole) // 2])
                self._abort(client, "fault_truncated")
            elif kind == "oversized":
                # A header announcing 64 MiB: a client must refuse it from the header
                # alone (close code 1009), not buffer it.
                transport.write(header(64 * 1024 * 1024) + b"x" * 1024)
            else:
                raise ValueError(f"unknown malformed kind {kind!r}")
        return [client.id for client in clients]

    def error(self, connection: int | str | None, name: str) -> list[int]:
        """Answer as if the client's last request failed: error frame ``name``, then close."""
        if not name or len(name) > 64:
            raise ValueError("error name must be 1..64 characters")
        clients = [c for c in self.targets(connection) if not c.closing]
        for client in clients:
            client.record.violations.append({"t": time.time(), "kind": "injected_error"})
            self._fail(client, RequestError(name))
        return [client.id for client in clients]

    def inject(
        self, connection: int | str | None, payloads: list[bytes], opcode: int = OP_BINARY
    ) -> list[int]:
        """Write each payload as one complete frame, after the pending market data."""
        clients = self.targets(connection)
        data = b"".join(frame(p, opcode) for p in payloads)
        sent = []
        for client in clients:
            self._flush(client)
            transport = client.conn.transport
            if client.closing or transport is None or transport.is_closing():
                continue
            transport.write(data)
            client.last_tx = self.monotonic()
            sent.append(client.id)
        return sent

    async def restart(self, seconds: float) -> None:
        await self._unlisten("fault_restart")
        await asyncio.sleep(seconds)
        if not self._stopping:
            await self._listen()

    async def burst(
        self, count: int, connection: int | str | None, types: list[str] | None
    ) -> dict[str, Any]:
        return await run_burst(self, count, connection, types)
