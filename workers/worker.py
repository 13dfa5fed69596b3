"""The worker base class: register with the feed, read shm rings, subscribe to the bus.

A strategy subclasses :class:`Worker`, declares the data it wants in ``types`` and
overrides hooks. :meth:`Worker.run` does the rest on the calling thread:

* registers its subscriptions with the feed's control channel (a lease it renews every
  ``lease_s / 3``, reporting how many bus messages it lost); the reply names the PUB
  endpoint and the shm prefix;
* attaches shm readers for ``ticker`` / ``orderbook`` and calls ``on_ticker`` /
  ``on_orderbook`` with the newest record of each of its symbols that changed since
  the previous look (shm holds snapshots, so intermediate states are conflated). It
  looks when the feed writes: a thread sleeps on the rings' heads
  (``shm.wait_for_heads``) and makes the worker's one poll of the bus return;
  without the shm C helpers, or with ``shm_poll_interval_s`` given, it looks every
  that many seconds (2 ms) instead;
* SUBscribes to ``trade.<CODE> ``, ``candle.<unit>.<CODE> ``, ``myOrder.<CODE> ``,
  ``myAsset `` and ``sys.``, decodes frames into typed events (:mod:`workers.events`)
  and checks each topic's ``seq`` for holes (``on_gap``).

On the way out (stop event, duration, or an exception from a hook) it calls
``on_stop``, unregisters, and closes every socket and reader.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar, Protocol

import msgspec
import zmq

from feedhandler.control import (
    ControlClient,
    ControlRequestError,
    ControlTimeout,
    UnknownWorker,
)
from feedhandler.publisher import (
    CurveKeys,
    apply_curve_client,
    check_endpoint,
    subscription_prefix,
)
from feedhandler.upbit.subscription import ALL_TYPES, CANDLE_TYPES, Subscription, split_code
from workers.events import (
    ASSET_DECODER,
    CANDLE_DECODER,
    ORDER_DECODER,
    SYS_DECODER,
    TRADE_DECODER,
    Candle,
    Message,
    MyAsset,
    MyOrder,
    Trade,
)

log = logging.getLogger(__name__)

SHM_TYPES = ("ticker", "orderbook")
MAX_DRAIN = 1000
MAX_BUS_MESSAGE_BYTES = 16 * 1024 * 1024
# A drain also ends after this long, so a slow hook cannot starve lease renewal, the
# timer or the shm rings.
MAX_DRAIN_SECONDS = 0.05
DECODE_ERROR_LOG_EVERY = 1000
# How long one poll of the bus waits when nothing needs the worker sooner.
_IDLE_POLL_MS = 50
_FALLBACK_SHM_POLL_S = 0.002
# The doorbell thread looks at its stop flag at least this often.
_DOORBELL_SLICE_S = 0.25


# decoder, hook, topic as text
_Route = tuple[msgspec.json.Decoder, Callable[[Any], None], str]


class WorkerError(RuntimeError):
    """The worker cannot start or run (bad declaration, missing feed info, no shm)."""


class StopSignal(Protocol):
    def is_set(self) -> bool: ...


class ShmReader(Protocol):
    """The part of ``shm.attach(...)``'s reader that a worker uses."""

    @property
    def codes(self) -> tuple[str, ...]: ...

    @property
    def head(self) -> int: ...

    @property
    def writer_alive(self) -> bool: ...

    def latest(self, code: str) -> Any: ...

    def since(self, cursor: int) -> tuple[Any, int, int]: ...

    def close(self) -> None: ...


def _attach_shm(prefix: str, kind: str, timeout: float) -> ShmReader:
    try:
        import shm  # noqa: PLC0415 - only workers that want ticker/orderbook need it
    except ImportError as exc:
        raise WorkerError(f"{kind} needs the shm package, which cannot be imported: {exc}") from exc
    attach = getattr(shm, "attach", None)
    if attach is None:
        raise WorkerError(f"{kind} needs shm.attach, which this installation does not provide")
    try:
        reader: ShmReader = attach(prefix, kind, timeout=timeout)
    except shm.ShmError as exc:
        raise WorkerError(f"cannot attach the {kind} ring of prefix {prefix!r}: {exc}") from exc
    return reader


class _ShmDoorbell:
    """A thread that sleeps on the shm rings' heads and makes an eventfd readable when a
    head moves, so that one poll of the bus also wakes for shm. It has readers of its
    own (a reader serves one thread) and rings once per :meth:`answer`: a busy ring
    wakes the worker once per look, not once per record. It rings once at the start,
    for what was written before it first looked at the heads.

    With the shm C helpers the thread spends its life in ``shm.ring_on_heads``, which
    answers, sleeps and rings without the GIL, so a ring costs the worker's main thread
    no GIL hand-off; while a segment is not live it waits slice by slice in Python."""

    def __init__(
        self,
        readers: list[Any],
        wait_for_heads: Callable[..., list[int]],
        ring_on_heads: Callable[..., tuple[bool, list[int]] | None],
    ) -> None:
        self._readers = readers
        self._wait_for_heads = wait_for_heads
        self._ring_on_heads = ring_on_heads
        self.fd = os.eventfd(1, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._answer_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._stop = threading.Event()
        # The thread may outlive close() by a slice; whoever is last closes the fds, so
        # that a late ring never writes into a descriptor number reused meanwhile.
        self._fd_lock = threading.Lock()
        self._close_fd_at_exit = False
        self.failed = False
        self.rings = 0
        self._thread = threading.Thread(target=self._run, name="shm-doorbell", daemon=True)
        self._thread.start()

    @classmethod
    def open(cls, prefix: str, kinds: Sequence[str], timeout: float) -> _ShmDoorbell | None:
        """A doorbell for ``kinds``; None when the shm readers cannot sleep (no C helpers)."""
        import shm  # noqa: PLC0415 - only workers that read shm need it
        from shm import native  # noqa: PLC0415

        if native.wait_heads is None:
            return None
        readers = [_attach_shm(prefix, kind, timeout) for kind in kinds]
        return cls(readers, shm.wait_for_heads, shm.ring_on_heads)

    def _run(self) -> None:
        try:
            cursors = [reader.head for reader in self._readers]
            answered = False
            while not self._stop.is_set():
                served = self._ring_on_heads(
                    self._readers, cursors, answered, self._answer_fd, self.fd, _DOORBELL_SLICE_S
                )
                if served is not None:
                    answered, cursors = served
                elif not answered:
                    answered = self._take_answer(_DOORBELL_SLICE_S)
                else:
                    heads = self._wait_for_heads(self._readers, cursors, _DOORBELL_SLICE_S)
                    if heads != cursors:
                        cursors = heads
                        answered = False
                        os.eventfd_write(self.fd, 1)
        except Exception:
            # The worker sees the flag at the ring below and polls shm from then on.
            log.exception("event=shm_doorbell_failed")
            self.failed = True
            os.eventfd_write(self.fd, 1)
        finally:
            for reader in self._readers:
                reader.close()
            with self._fd_lock:
                if self._close_fd_at_exit:
                    self._close_fds()

    def _take_answer(self, timeout: float) -> bool:
        readable, _, _ = select.select([self._answer_fd], [], [], timeout)
        if not readable:
            return False
        try:
            os.eventfd_read(self._answer_fd)
        except BlockingIOError:
            return False
        return True

    def answer(self) -> bool:
        """Take the ring (the worker is about to look at shm); False if there was none."""
        try:
            os.eventfd_read(self.fd)
        except BlockingIOError:
            return False
        self.rings += 1
        os.eventfd_write(self._answer_fd, 1)
        return True

    def _close_fds(self) -> None:
        os.close(self.fd)
        os.close(self._answer_fd)

    def close(self) -> None:
        self._stop.set()
        os.eventfd_write(self._answer_fd, 1)  # a thread waiting for an answer looks up
        self._thread.join(_DOORBELL_SLICE_S * 4)
        with self._fd_lock:
            if self._thread.is_alive():
                self._close_fd_at_exit = True
            else:
                self._close_fds()


class Worker:
    """Base class of strategy processes. Override the ``on_*`` hooks you need.

    ``types`` may contain ``ticker``, ``orderbook``, ``trade``, ``candle.<unit>``,
    ``myOrder`` and ``myAsset``. ``sys.*`` events always arrive (``on_sys``).
    During a bus hook, :attr:`current` is the envelope of the message being handled
    (``seq``, ``recv_ns``, ``origin_ns``) and :attr:`current_topic` its topic.

    ``shm_poll_interval_s``: None looks at the shm rings when the feed writes to them
    (when the shm C helpers are built; else every 2 ms); a number looks every that many
    seconds (at least 1 ms).
    """

    types: ClassVar[tuple[str, ...]] = ()
    #: Orderbook depth to ask for (1, 5, 15 or 30); None = Upbit's default (30).
    orderbook_depth: ClassVar[int | None] = None
    #: Seconds between ``on_timer`` calls; 0 disables the timer.
    timer_interval_s: ClassVar[float] = 0.0

    def __init__(
        self,
        symbols: Sequence[str],
        *,
        control_endpoint: str,
        worker_id: str | None = None,
        lease_s: float = 10.0,
        control_timeout: float = 2.0,
        shm_timeout: float = 5.0,
        shm_poll_interval_s: float | None = None,
        curve_server_key: bytes | None = None,
        curve_client: CurveKeys | None = None,
        context: zmq.Context | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if isinstance(symbols, str):
            raise WorkerError("symbols must be a sequence of market codes, not one string")
        self.symbols: tuple[str, ...] = tuple(dict.fromkeys(symbols))
        for code in self.symbols:
            if split_code(code)[1] is not None:
                raise WorkerError(f"symbol {code!r}: give the depth in orderbook_depth instead")
        unknown = [t for t in self.types if t not in ALL_TYPES]
        if unknown:
            raise WorkerError(f"{type(self).__name__}.types has unknown type(s) {unknown}")
        self.subscriptions: tuple[Subscription, ...] = tuple(self._subscriptions())
        self.worker_id = worker_id or f"{type(self).__name__}-{socket.gethostname()}-{os.getpid()}"
        self.control_endpoint = control_endpoint
        self.lease_s = lease_s
        self._control_timeout = control_timeout
        self._shm_timeout = shm_timeout
        self._shm_poll_interval_s = shm_poll_interval_s
        self._curve_server_key = curve_server_key
        self._curve_client = curve_client
        self._context = context or zmq.Context.instance()
        self._clock = clock

        self.hello: dict[str, Any] = {}
        self.current: Message[Any] | None = None
        self.current_topic = ""
        self.received = 0
        self.gaps = 0
        self.gap_events = 0
        self.seq_resets = 0
        self.decode_errors = 0
        self.shm_overruns = 0
        self._shm_wakeups_closed = 0
        self.shm_writer_alive: dict[str, bool] = {}

        self._control: ControlClient | None = None
        self._sub: zmq.Socket | None = None
        self._readers: dict[str, ShmReader] = {}
        self._doorbell: _ShmDoorbell | None = None
        self._poller: zmq.Poller | None = None
        self._cursors: dict[str, int] = {}
        self._pending: dict[str, list[tuple[str, Any]]] = {}
        self._wanted = frozenset(self.symbols)
        self._last_seq: dict[bytes, int] = {}
        self._routes: dict[bytes, _Route] = {}
        self._registered = False

    # ------------------------------------------------------------------ hooks

    def on_start(self) -> None:
        """After registration and subscription, before the first event."""

    def on_ticker(self, code: str, record: Any) -> None:
        """The newest shm ticker record of ``code`` (a numpy record) changed."""

    def on_orderbook(self, code: str, record: Any) -> None:
        """The newest shm orderbook record of ``code`` (a numpy record) changed."""

    def on_trade(self, event: Trade) -> None: ...

    def on_candle(self, event: Candle) -> None: ...

    def on_order(self, event: MyOrder) -> None: ...

    def on_asset(self, event: MyAsset) -> None: ...

    def on_sys(self, topic: str, payload: dict[str, Any]) -> None:
        """A feed control event such as ``sys.connection_down`` or ``sys.gap``."""

    def on_gap(self, expected_seq: int, got_seq: int) -> None:
        """Messages ``expected_seq .. got_seq - 1`` of :attr:`current_topic` were lost."""

    def on_timer(self) -> None:
        """Every ``timer_interval_s`` seconds (when it is > 0)."""

    def on_shm_writer(self, kind: str, alive: bool) -> None:
        """The feed's ``kind`` ring writer died (or came back); checked at each renew."""

    def on_stop(self) -> None:
        """Before unregistering; also after a hook raised."""

    # ---------------------------------------------------------------- running

    def run(self, stop_event: StopSignal | None = None, duration: float | None = None) -> None:
        """Serve until ``stop_event`` is set or ``duration`` seconds have passed."""
        stop = stop_event if stop_event is not None else threading.Event()
        started = self._clock()
        deadline = None if duration is None else started + duration
        self._open()
        try:
            self.on_start()
            renew_every = self.lease_s / 3
            next_renew = started + renew_every
            next_timer = started + self.timer_interval_s
            while not stop.is_set():
                now = self._clock()
                if deadline is not None and now >= deadline:
                    break
                if now >= next_renew:
                    self._renew()
                    self._check_writers()
                    next_renew = now + renew_every
                if self.timer_interval_s > 0 and now >= next_timer:
                    self.on_timer()
                    next_timer = now + self.timer_interval_s
                self.poll(self._poll_ms())
        finally:
            try:
                self.on_stop()
            finally:
                self.close()

    def _poll_ms(self) -> int:
        """How long one poll of the bus may wait: until the next look at shm if it is
        polled, else the idle wait (the doorbell or a bus message ends it sooner)."""
        if not self._readers or self._doorbell is not None:
            return _IDLE_POLL_MS
        interval = self._shm_poll_interval_s
        if interval is None:
            interval = _FALLBACK_SHM_POLL_S
        return max(1, int(interval * 1000))

    def poll(self, timeout_ms: int) -> int:
        """Handle what is ready on the bus (waiting up to ``timeout_ms``) and in shm."""
        handled = 0
        sub = self._sub
        if self._poller is not None:
            ready = dict(self._poller.poll(timeout_ms))
            doorbell = self._doorbell
            if doorbell is not None and doorbell.fd in ready:
                doorbell.answer()
                if doorbell.failed:
                    self._stop_doorbell()
                    log.warning(
                        "event=shm_polled worker_id=%s reason=doorbell_failed", self.worker_id
                    )
            bus_ready = sub is not None and sub in ready
        else:
            bus_ready = sub is not None and bool(sub.poll(timeout_ms, zmq.POLLIN))
        if bus_ready and sub is not None:
            drain_until = self._clock() + MAX_DRAIN_SECONDS
            for _ in range(MAX_DRAIN):
                try:
                    frame = sub.recv(zmq.NOBLOCK, copy=True)
                except zmq.Again:
                    break
                self.handle_frame(frame)
                handled += 1
                if not handled % 16 and self._clock() >= drain_until:
                    break
        for kind, reader in self._readers.items():
            handled += self._poll_shm(kind, reader)
        return handled

    def handle_frame(self, frame: bytes) -> None:
        """Decode one bus frame, check its ``seq`` and call the matching hook."""
        topic, _, body = frame.partition(b" ")
        route = self._routes.get(topic)
        if route is None:
            route = self._route(topic)
            if route is None:
                log.warning("event=unexpected_topic worker_id=%s topic=%r", self.worker_id, topic)
                return
        decoder, deliver, topic_name = route
        try:
            message = decoder.decode(body)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            self.decode_errors += 1
            if self.decode_errors % DECODE_ERROR_LOG_EVERY == 1:
                log.warning(
                    "event=decode_error worker_id=%s topic=%s count=%d error=%s",
                    self.worker_id,
                    topic.decode(errors="replace"),
                    self.decode_errors,
                    exc,
                )
            return
        self.received += 1
        self.current = message
        self.current_topic = topic_name
        seq = message.seq
        last = self._last_seq.get(topic)
        self._last_seq[topic] = seq
        if last is not None and seq != last + 1:
            if seq > last + 1:
                self.gaps += seq - last - 1
                self.gap_events += 1
                self.on_gap(last + 1, seq)
            else:
                # The publisher restarted (its counters begin again at 1).
                self.seq_resets += 1
                log.info(
                    "event=seq_reset worker_id=%s topic=%s last=%d got=%d",
                    self.worker_id,
                    self.current_topic,
                    last,
                    seq,
                )
        deliver(message.data)

    # ---------------------------------------------------------------- set-up

    def _subscriptions(self) -> Iterable[Subscription]:
        for kind in self.types:
            if kind == "myAsset":
                yield Subscription("myAsset")
            elif kind == "orderbook" and self.orderbook_depth is not None:
                codes = tuple(f"{c}.{self.orderbook_depth}" for c in self.symbols)
                yield Subscription("orderbook", codes)
            else:
                yield Subscription(kind, self.symbols)

    def topic_prefixes(self) -> list[bytes]:
        """The SUB filters this worker sets, one per topic, plus ``sys.``."""
        prefixes = [b"sys."]
        for kind in self.types:
            if kind == "myAsset":
                prefixes.append(subscription_prefix(b"myAsset"))
            elif kind in ("trade", "myOrder", *CANDLE_TYPES):
                prefixes += [subscription_prefix(f"{kind}.{c}".encode()) for c in self.symbols]
        return prefixes

    def _route(self, topic: bytes) -> _Route | None:
        head = topic.split(b".", 1)[0]
        name = topic.decode(errors="replace")
        route: _Route
        if head == b"trade":
            route = (TRADE_DECODER, self.on_trade, name)
        elif head == b"candle":
            route = (CANDLE_DECODER, self.on_candle, name)
        elif head == b"myOrder":
            route = (ORDER_DECODER, self.on_order, name)
        elif topic == b"myAsset":
            route = (ASSET_DECODER, self.on_asset, name)
        elif head == b"sys":
            route = (SYS_DECODER, lambda payload: self.on_sys(name, payload), name)
        else:
            return None
        self._routes[topic] = route
        return route

    def _open(self) -> None:
        try:
            self._control = ControlClient(
                self.control_endpoint,
                timeout=self._control_timeout,
                curve_server_key=self._curve_server_key,
                curve_client=self._curve_client,
                context=self._context,
            )
            self._register()
            self._connect_bus()
            for kind in SHM_TYPES:
                if kind in self.types:
                    self._attach(kind)
            if self._readers and self._shm_poll_interval_s is None:
                self._open_doorbell()
        except BaseException:
            self.close()
            raise

    def _register(self) -> None:
        assert self._control is not None
        try:
            reply = self._control.register(
                self.worker_id, self.subscriptions, self.lease_s, pid=os.getpid()
            )
        except ControlTimeout as exc:
            raise WorkerError(f"the feed's control channel did not answer: {exc}") from exc
        except ControlRequestError as exc:
            raise WorkerError(f"the feed refused registration: {exc}") from exc
        self.hello = reply
        self._registered = True
        log.info(
            "event=worker_registered worker_id=%s pub_endpoint=%s shm_prefix=%s",
            self.worker_id,
            reply.get("pub_endpoint"),
            reply.get("shm_prefix"),
        )

    def _connect_bus(self) -> None:
        endpoint = self.hello.get("pub_endpoint")
        if not isinstance(endpoint, str):
            raise WorkerError("the feed's register reply carries no pub_endpoint")
        check_endpoint(endpoint, curve=self._curve_server_key is not None)
        sub = self._context.socket(zmq.SUB)
        sub.linger = 0
        # libzmq drops the peer on a larger message instead of buffering it.
        sub.maxmsgsize = MAX_BUS_MESSAGE_BYTES
        if self._curve_server_key is not None:
            apply_curve_client(sub, self._curve_server_key, self._curve_client)
        for prefix in self.topic_prefixes():
            sub.subscribe(prefix)
        sub.connect(endpoint)
        self._sub = sub

    def _attach(self, kind: str) -> None:
        prefix = self.hello.get("shm_prefix")
        if not isinstance(prefix, str):
            raise WorkerError(f"{kind} wanted but the feed's register reply has no shm_prefix")
        reader = _attach_shm(prefix, kind, self._shm_timeout)
        self._readers[kind] = reader
        # Start from now, and hand over the current state of each symbol once.
        self._cursors[kind] = reader.head
        known = set(reader.codes)
        self._pending[kind] = [
            (code, record)
            for code in self.symbols
            if code in known and (record := reader.latest(code)) is not None
        ]

    def _open_doorbell(self) -> None:
        prefix = self.hello.get("shm_prefix")
        if not isinstance(prefix, str):
            return
        self._doorbell = _ShmDoorbell.open(prefix, list(self._readers), self._shm_timeout)
        if self._doorbell is None:
            log.info("event=shm_polled worker_id=%s reason=no_shm_c_helpers", self.worker_id)
            return
        poller = zmq.Poller()
        if self._sub is not None:
            poller.register(self._sub, zmq.POLLIN)
        poller.register(self._doorbell.fd, zmq.POLLIN)
        self._poller = poller

    def _stop_doorbell(self) -> None:
        self._poller = None
        doorbell, self._doorbell = self._doorbell, None
        if doorbell is not None:
            self._shm_wakeups_closed += doorbell.rings
            doorbell.close()

    @property
    def shm_wakeups(self) -> int:
        """How often a write to the shm rings woke this worker (none while it polls)."""
        rings = self._shm_wakeups_closed
        return rings if self._doorbell is None else rings + self._doorbell.rings

    def _poll_shm(self, kind: str, reader: ShmReader) -> int:
        hook = self.on_ticker if kind == "ticker" else self.on_orderbook
        pending = self._pending.pop(kind, None)
        if pending:
            for code, record in pending:
                hook(code, record)
        records, cursor, overrun = reader.since(self._cursors[kind])
        self._cursors[kind] = cursor
        if overrun:
            self.shm_overruns += overrun
        if not len(records):
            return len(pending or ())
        codes = reader.codes
        wanted = self._wanted
        seen: set[int] = set()
        newest: list[tuple[str, Any]] = []
        # Newest first, so each symbol's latest record wins; delivered oldest first.
        for record in records[::-1]:
            symbol = int(record["symbol"])
            if symbol in seen:
                continue
            seen.add(symbol)
            if symbol < len(codes) and codes[symbol] in wanted:
                newest.append((codes[symbol], record))
        for code, record in reversed(newest):
            hook(code, record)
        return len(newest) + len(pending or ())

    def _check_writers(self) -> None:
        for kind, reader in self._readers.items():
            alive = reader.writer_alive
            if alive != self.shm_writer_alive.get(kind, True):
                self.shm_writer_alive[kind] = alive
                log.warning(
                    "event=shm_writer_%s worker_id=%s kind=%s",
                    "alive" if alive else "down",
                    self.worker_id,
                    kind,
                )
                self.on_shm_writer(kind, alive)

    def _renew(self) -> None:
        assert self._control is not None
        try:
            self._control.renew(self.worker_id, gaps=self.gaps, received=self.received)
        except ControlTimeout as exc:
            log.warning("event=renew_timeout worker_id=%s error=%s", self.worker_id, exc)
        except ControlRequestError as exc:
            if exc.name != UnknownWorker.name:
                raise
            # Our lease expired or the feed restarted: ask again for what we need.
            log.warning("event=lease_lost worker_id=%s action=register", self.worker_id)
            self._reregister()

    def _reregister(self) -> None:
        old_endpoint = self.hello.get("pub_endpoint")
        try:
            self._register()
        except WorkerError as exc:
            log.warning("event=reregister_failed worker_id=%s error=%s", self.worker_id, exc)
            return
        if self.hello.get("pub_endpoint") != old_endpoint and self._sub is not None:
            self._sub.close(0)
            self._sub = None
            self._last_seq.clear()
            self._connect_bus()

    def close(self) -> None:
        """Unregister and release sockets and shm readers; safe to call twice."""
        if self._registered and self._control is not None:
            self._registered = False
            try:
                self._control.unregister(self.worker_id)
            except (ControlTimeout, ControlRequestError) as exc:
                log.warning("event=unregister_failed worker_id=%s error=%s", self.worker_id, exc)
        self._stop_doorbell()
        if self._sub is not None:
            self._sub.close(0)
            self._sub = None
        if self._control is not None:
            self._control.close()
            self._control = None
        for kind, reader in list(self._readers.items()):
            try:
                reader.close()
            finally:
                del self._readers[kind]
        log.info(
            "event=worker_closed worker_id=%s received=%d gaps=%d decode_errors=%d",
            self.worker_id,
            self.received,
            self.gaps,
            self.decode_errors,
        )
