"""The control channel: worker leases and commands, JSON over a ZeroMQ ROUTER socket.

Request: one JSON object ``{"cmd": "<name>", ...fields}``, optionally with a
``req_id`` that the reply echoes. Reply: ``{"ok": true, ...}`` or
``{"ok": false, "error": {"name": ..., "message": ...}}``. Built-in commands:

* ``register {worker_id, subscriptions: [{type, codes, level?, ...}], lease_s}``: the
  reply also carries the feed's ``hello`` info (pub endpoint, shm prefix, ...).
* ``renew {worker_id, gaps?, received?}``: extends the lease; ``gaps`` is the number of
  messages the worker has lost so far (sequence holes), ``received`` its message count.
* ``unregister {worker_id}`` and ``workers`` (the leases, with gap counts).

Other commands go to the handlers the feed passes in. A worker that stops renewing
(crash, SIGKILL) loses its lease and, with it, its share of the desired subscriptions:
the cross-process form of weak-reference cleanup.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson
import zmq

from feedhandler.publisher import (
    BusConfigError,
    CurveKeys,
    apply_curve_client,
    bind_socket,
    check_endpoint,
)
from feedhandler.subscriptions import merge
from feedhandler.upbit.subscription import Subscription, SubscriptionError

log = logging.getLogger(__name__)

MIN_LEASE_S = 0.1
MAX_LEASE_S = 3600.0
MAX_WORKER_ID_LEN = 128
# A status reply of a feed with every market subscribed is well under 1 MiB.
MAX_REPLY_BYTES = 16 * 1024 * 1024
SUBSCRIPTION_KEYS = frozenset({"type", "codes", "level", "is_only_snapshot", "is_only_realtime"})
BUILTIN_COMMANDS = ("register", "renew", "unregister", "workers")

Handler = Callable[[dict[str, Any]], Mapping[str, Any]]


class ControlError(Exception):
    """A request the control server refuses; ``name`` is the error name in the reply."""

    name = "ControlError"


class BadRequest(ControlError):
    name = "BadRequest"


class UnknownCommand(ControlError):
    name = "UnknownCommand"


class UnknownWorker(ControlError):
    """The worker holds no lease (never registered, expired, or the feed restarted)."""

    name = "UnknownWorker"


class MessageTooLarge(ControlError):
    name = "MessageTooLarge"


class ControlTimeout(TimeoutError):
    """No reply within the client's timeout."""

    def __init__(self, cmd: str, endpoint: str, timeout: float) -> None:
        super().__init__(f"no reply to {cmd!r} from {endpoint} within {timeout:g} s")
        self.cmd = cmd
        self.endpoint = endpoint
        self.timeout = timeout


class ControlRequestError(RuntimeError):
    """The server answered ``ok: false``."""

    def __init__(self, cmd: str, name: str, message: str) -> None:
        super().__init__(f"{cmd}: {name}: {message}")
        self.cmd = cmd
        self.name = name
        self.message = message


# ------------------------------------------------------------------- subscriptions


def subscription_from_json(raw: object) -> Subscription:
    """``{"type": "orderbook", "codes": ["KRW-BTC.15"], "level": 10000}`` -> Subscription."""
    if not isinstance(raw, dict):
        raise BadRequest(f"a subscription must be an object, got {type(raw).__name__}")
    unknown = set(raw) - SUBSCRIPTION_KEYS
    if unknown:
        raise BadRequest(f"unknown subscription key(s) {sorted(unknown)} in {raw!r}")
    if "type" not in raw:
        raise BadRequest(f"subscription {raw!r} has no type")
    codes = raw.get("codes", [])
    if not isinstance(codes, list):
        raise BadRequest(f"codes must be a list in {raw!r}")
    level = raw.get("level")
    if isinstance(level, bool) or not (level is None or isinstance(level, int | float | str)):
        raise BadRequest(f"level must be a number in {raw!r}")
    flags = {k: raw.get(k, False) for k in ("is_only_snapshot", "is_only_realtime")}
    if not all(isinstance(v, bool) for v in flags.values()):
        raise BadRequest(f"is_only_snapshot / is_only_realtime must be booleans in {raw!r}")
    try:
        return Subscription(
            raw["type"],
            tuple(codes),
            None if level is None else Decimal(str(level)),
            flags["is_only_snapshot"],
            flags["is_only_realtime"],
        )
    except SubscriptionError as exc:
        raise BadRequest(f"invalid subscription: {exc}") from exc


def subscription_to_json(sub: Subscription) -> dict[str, Any]:
    out: dict[str, Any] = {"type": sub.type, "codes": list(sub.codes)}
    if sub.level is not None:
        out["level"] = str(sub.level)
    if sub.is_only_snapshot:
        out["is_only_snapshot"] = True
    if sub.is_only_realtime:
        out["is_only_realtime"] = True
    return out


def merge_union(subscriptions: Iterable[Subscription]) -> list[Subscription]:
    """The union per type and options; ``myOrder`` without codes (= all markets) wins."""
    subs = list(subscriptions)
    all_markets = {
        (s.type, s.level, s.is_only_snapshot, s.is_only_realtime)
        for s in subs
        if s.type == "myOrder" and not s.codes
    }
    coded = [
        s
        for s in subs
        if s.codes and (s.type, s.level, s.is_only_snapshot, s.is_only_realtime) not in all_markets
    ]
    codeless = {
        (s.type, s.level, s.is_only_snapshot, s.is_only_realtime): s for s in subs if not s.codes
    }
    merged = merge(coded) + list(codeless.values())
    return sorted(merged, key=_union_order)


def _union_order(sub: Subscription) -> tuple[str, Decimal, bool, bool, tuple[str, ...]]:
    level = Decimal(-1) if sub.level is None else sub.level
    return (sub.type, level, sub.is_only_snapshot, sub.is_only_realtime, sub.codes)


# -------------------------------------------------------------------------- registry


@dataclass(slots=True)
class WorkerLease:
    worker_id: str
    subscriptions: tuple[Subscription, ...]
    lease_s: float
    registered_at: float
    expires_at: float
    gaps: int = 0
    received: int = 0
    renewals: int = 0
    pid: int | None = None

    def to_json(self, now: float) -> dict[str, Any]:
        return {
            "worker_id": self.worker_id,
            "pid": self.pid,
            "subscriptions": [subscription_to_json(s) for s in self.subscriptions],
            "lease_s": self.lease_s,
            "expires_in_s": round(self.expires_at - now, 3),
            "age_s": round(now - self.registered_at, 3),
            "renewals": self.renewals,
            "gaps": self.gaps,
            "received": self.received,
        }


class WorkerRegistry:
    """Worker leases and the union of what live workers want. Thread-safe.

    ``on_change()`` runs after every change of :meth:`desired` (never on a plain
    renew); ``on_expired(worker_id)`` after a lease ran out, so the feed can publish
    ``sys.worker_lease_expired``. Both run outside the registry's lock.
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[], None] | None = None,
        on_expired: Callable[[str], None] | None = None,
    ) -> None:
        self._clock = clock
        self._on_change = on_change
        self._on_expired = on_expired
        self._lock = threading.Lock()
        self._leases: dict[str, WorkerLease] = {}
        self._desired: list[Subscription] = []
        self._departed_gaps = 0
        self._departed_received = 0

    def register(
        self,
        worker_id: str,
        subscriptions: Sequence[Subscription],
        lease_s: float,
        *,
        pid: int | None = None,
    ) -> WorkerLease:
        """Add or replace a worker's lease.

        Re-registering from the same pid keeps the gap and message counters; a new pid
        (a restarted worker) starts them afresh, the old ones going into :meth:`totals`.
        """
        _check_worker_id(worker_id)
        if not MIN_LEASE_S <= lease_s <= MAX_LEASE_S:
            raise BadRequest(f"lease_s {lease_s} outside [{MIN_LEASE_S}, {MAX_LEASE_S}]")
        now = self._clock()
        with self._lock:
            old = self._leases.get(worker_id)
            lease = WorkerLease(
                worker_id, tuple(subscriptions), float(lease_s), now, now + lease_s, pid=pid
            )
            if old is not None and old.pid == pid:
                # The same process asking again (its lease was lost): its counters go on.
                lease.gaps, lease.received, lease.renewals = old.gaps, old.received, old.renewals
            elif old is not None:
                # A restarted process under the same id counts from zero again.
                self._retire(old)
            self._leases[worker_id] = lease
            changed = self._recompute()
        self._notify(changed, ())
        return lease

    def renew(
        self, worker_id: str, *, gaps: int | None = None, received: int | None = None
    ) -> WorkerLease:
        now = self._clock()
        with self._lock:
            lease = self._leases.get(worker_id)
            if lease is None:
                raise UnknownWorker(f"worker {worker_id!r} holds no lease; register again")
            lease.expires_at = now + lease.lease_s
            lease.renewals += 1
            if gaps is not None:
                lease.gaps = gaps
            if received is not None:
                lease.received = received
            return lease

    def unregister(self, worker_id: str) -> bool:
        """Drop a lease; False if there was none."""
        with self._lock:
            lease = self._leases.pop(worker_id, None)
            if lease is None:
                return False
            self._retire(lease)
            changed = self._recompute()
        self._notify(changed, ())
        return True

    def expire(self) -> list[str]:
        """Drop every lease that ran out; returns their worker ids."""
        now = self._clock()
        with self._lock:
            gone = [w for w, lease in self._leases.items() if lease.expires_at <= now]
            for worker_id in gone:
                self._retire(self._leases.pop(worker_id))
            changed = self._recompute() if gone else False
        for worker_id in gone:
            log.warning("event=worker_lease_expired worker_id=%s", worker_id)
        self._notify(changed, gone)
        return gone

    def desired(self) -> list[Subscription]:
        with self._lock:
            return list(self._desired)

    def subscriptions_by_worker(self) -> dict[str, tuple[Subscription, ...]]:
        with self._lock:
            return {w: lease.subscriptions for w, lease in self._leases.items()}

    def workers(self) -> list[dict[str, Any]]:
        now = self._clock()
        with self._lock:
            return [lease.to_json(now) for lease in self._leases.values()]

    def totals(self) -> dict[str, int]:
        """Gap and message counts summed over live workers and those that left."""
        with self._lock:
            live = self._leases.values()
            return {
                "workers": len(self._leases),
                "gaps": self._departed_gaps + sum(lease.gaps for lease in live),
                "received": self._departed_received + sum(lease.received for lease in live),
            }

    def __len__(self) -> int:
        with self._lock:
            return len(self._leases)

    def __contains__(self, worker_id: object) -> bool:
        with self._lock:
            return worker_id in self._leases

    def _retire(self, lease: WorkerLease) -> None:
        self._departed_gaps += lease.gaps
        self._departed_received += lease.received

    def _recompute(self) -> bool:
        union = merge_union(s for lease in self._leases.values() for s in lease.subscriptions)
        if union == self._desired:
            return False
        self._desired = union
        return True

    def _notify(self, changed: bool, expired: Iterable[str]) -> None:
        if self._on_expired is not None:
            for worker_id in expired:
                self._on_expired(worker_id)
        if changed and self._on_change is not None:
            self._on_change()


def _check_worker_id(worker_id: object) -> str:
    if not isinstance(worker_id, str) or not worker_id or len(worker_id) > MAX_WORKER_ID_LEN:
        raise BadRequest(f"worker_id must be a non-empty string of at most {MAX_WORKER_ID_LEN}")
    if not worker_id.isprintable() or " " in worker_id:
        raise BadRequest(f"worker_id {worker_id!r} must be printable without spaces")
    return worker_id


def _optional_count(request: Mapping[str, Any], key: str) -> int | None:
    value = request.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadRequest(f"{key} must be a non-negative integer, got {value!r}")
    return value


# ---------------------------------------------------------------------------- server


def error_reply(name: str, message: str) -> dict[str, Any]:
    return {"ok": False, "error": {"name": name, "message": message}}


class ControlServer:
    """A ROUTER socket served by its own thread; requests are answered one at a time.

    Every failure of a single request becomes an error reply and a log line; the
    server keeps serving. The thread also expires leases every ``expire_interval_s``.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        handlers: Mapping[str, Handler] | None = None,
        registry: WorkerRegistry,
        max_message_bytes: int = 65536,
        context: zmq.Context | None = None,
        hello: Callable[[], Mapping[str, Any]] | None = None,
        curve: CurveKeys | None = None,
        expire_interval_s: float = 0.1,
    ) -> None:
        handlers = dict(handlers or {})
        clash = sorted(set(handlers) & set(BUILTIN_COMMANDS))
        if clash:
            raise ValueError(f"handlers must not replace built-in commands: {clash}")
        self.registry = registry
        self._handlers = handlers
        self._hello = hello
        self._max_message_bytes = max_message_bytes
        self._expire_interval_s = expire_interval_s
        self._context = context or zmq.Context.instance()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        sock = self._context.socket(zmq.ROUTER)
        sock.linger = 0
        # Hard cap in libzmq (it disconnects the peer) far above the polite limit, so an
        # oversized request still gets a reply while a runaway one cannot eat memory.
        sock.maxmsgsize = max(16 * max_message_bytes, 1 << 20)
        sock.router_mandatory = False
        try:
            self.endpoint = bind_socket(sock, endpoint, curve)
        except BusConfigError:
            sock.close(0)
            raise
        self._sock = sock
        self.served = 0
        self.errors = 0

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("control server already started")
        self._thread = threading.Thread(target=self._serve, name="control-server", daemon=True)
        self._thread.start()
        log.info("event=control_started endpoint=%s", self.endpoint)

    def stop(self, timeout: float = 1.0) -> None:
        """Stop serving and close the socket (within ``timeout`` seconds)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise RuntimeError(f"control server thread did not stop within {timeout} s")
        else:
            self._sock.close(0)

    def __enter__(self) -> ControlServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _serve(self) -> None:
        poll_ms = max(1, int(self._expire_interval_s * 1000))
        next_expire = time.monotonic()
        try:
            while not self._stop.is_set():
                if self._sock.poll(poll_ms, zmq.POLLIN):
                    # Serve a burst, but come back to expire leases and check for stop.
                    for _ in range(256):
                        try:
                            frames = self._sock.recv_multipart(zmq.NOBLOCK, copy=True)
                        except zmq.Again:
                            break
                        self._serve_one(frames)
                if time.monotonic() >= next_expire:
                    next_expire = time.monotonic() + self._expire_interval_s
                    self.registry.expire()
        finally:
            self._sock.close(0)
            log.info("event=control_stopped endpoint=%s served=%d", self.endpoint, self.served)

    def _serve_one(self, frames: list[bytes]) -> None:
        if len(frames) < 2:
            log.warning("event=control_bad_envelope frames=%d", len(frames))
            return
        envelope, payload = frames[:-1], frames[-1]
        reply = self.handle(payload)
        self.served += 1
        if not reply.get("ok"):
            self.errors += 1
        try:
            body = orjson.dumps(reply)
        except TypeError as exc:
            log.error("event=control_reply_not_json cmd_reply=%r error=%s", reply, exc)
            body = orjson.dumps(error_reply("InternalError", f"reply is not JSON: {exc}"))
        try:
            self._sock.send_multipart([*envelope, body], zmq.NOBLOCK)
        except zmq.Again:
            log.warning("event=control_reply_dropped reason=peer_queue_full")

    def handle(self, payload: bytes) -> dict[str, Any]:
        """Answer one raw request (the socket-free core of the server)."""
        if len(payload) > self._max_message_bytes:
            log.warning("event=control_rejected reason=too_large bytes=%d", len(payload))
            return error_reply(
                MessageTooLarge.name,
                f"request of {len(payload)} bytes exceeds {self._max_message_bytes}",
            )
        try:
            request = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            log.warning("event=control_rejected reason=malformed_json error=%s", exc)
            return error_reply(BadRequest.name, f"malformed JSON: {exc}")
        if not isinstance(request, dict):
            return error_reply(BadRequest.name, "a request must be a JSON object")
        cmd = request.get("cmd")
        req_id = request.get("req_id")
        try:
            if not isinstance(cmd, str):
                raise BadRequest("a request needs a string 'cmd'")
            reply = {"ok": True, **self._dispatch(cmd, request)}
        except ControlError as exc:
            log.warning("event=control_rejected cmd=%s error=%s message=%s", cmd, exc.name, exc)
            reply = error_reply(exc.name, str(exc))
        except Exception as exc:
            # A handler's bug must not kill the control channel; it is logged in full.
            log.exception("event=control_handler_failed cmd=%s", cmd)
            reply = error_reply(type(exc).__name__, str(exc))
        if req_id is not None:
            reply["req_id"] = req_id
        return reply

    def _dispatch(self, cmd: str, request: dict[str, Any]) -> Mapping[str, Any]:
        if cmd == "register":
            return self._register(request)
        if cmd == "renew":
            lease = self.registry.renew(
                _worker_id(request),
                gaps=_optional_count(request, "gaps"),
                received=_optional_count(request, "received"),
            )
            return {"worker_id": lease.worker_id, "lease_s": lease.lease_s}
        if cmd == "unregister":
            worker_id = _worker_id(request)
            if not self.registry.unregister(worker_id):
                raise UnknownWorker(f"worker {worker_id!r} holds no lease")
            log.info("event=worker_unregistered worker_id=%s", worker_id)
            return {"worker_id": worker_id}
        if cmd == "workers":
            return {"workers": self.registry.workers(), "totals": self.registry.totals()}
        handler = self._handlers.get(cmd)
        if handler is None:
            known = ", ".join(sorted((*BUILTIN_COMMANDS, *self._handlers)))
            raise UnknownCommand(f"unknown command {cmd!r}; known: {known}")
        result = handler(request)
        if not isinstance(result, Mapping):
            raise TypeError(f"handler for {cmd!r} returned {type(result).__name__}, not a dict")
        return result

    def _register(self, request: dict[str, Any]) -> dict[str, Any]:
        worker_id = _worker_id(request)
        raw_subs = request.get("subscriptions")
        if not isinstance(raw_subs, list):
            raise BadRequest("register needs a list 'subscriptions'")
        subs = [subscription_from_json(raw) for raw in raw_subs]
        lease_s = request.get("lease_s", 10.0)
        if isinstance(lease_s, bool) or not isinstance(lease_s, int | float):
            raise BadRequest(f"lease_s must be a number, got {lease_s!r}")
        if not math.isfinite(lease_s):
            raise BadRequest("lease_s must be finite")
        pid = request.get("pid")
        # Before registering: a failing hello must not leave a lease the worker never saw.
        hello = dict(self._hello()) if self._hello is not None else {}
        lease = self.registry.register(
            worker_id, subs, float(lease_s), pid=pid if isinstance(pid, int) else None
        )
        log.info(
            "event=worker_registered worker_id=%s pid=%s subscriptions=%d lease_s=%g",
            worker_id,
            lease.pid,
            len(subs),
            lease.lease_s,
        )
        return {**hello, "worker_id": worker_id, "lease_s": lease.lease_s}


def _worker_id(request: Mapping[str, Any]) -> str:
    return _check_worker_id(request.get("worker_id"))


# ---------------------------------------------------------------------------- client


class ControlClient:
    """Request/reply over a DEALER socket with a real timeout (Lazy Pirate).

    A REQ socket is stuck forever after a lost reply; here a timed-out socket is closed
    and a fresh one opened, and replies are matched to requests by ``req_id`` so a late
    answer to an earlier request is never taken for the current one. Not thread-safe.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        timeout: float = 2.0,
        curve_server_key: bytes | None = None,
        curve_client: CurveKeys | None = None,
        context: zmq.Context | None = None,
    ) -> None:
        check_endpoint(endpoint, curve=curve_server_key is not None)
        self.endpoint = endpoint
        self.timeout = timeout
        self._curve_server_key = curve_server_key
        self._curve_client = curve_client
        self._context = context or zmq.Context.instance()
        self._ids = itertools.count(1)
        self._sock: zmq.Socket | None = None

    def _socket(self) -> zmq.Socket:
        if self._sock is None:
            sock = self._context.socket(zmq.DEALER)
            sock.linger = 0
            sock.maxmsgsize = MAX_REPLY_BYTES
            if self._curve_server_key is not None:
                apply_curve_client(sock, self._curve_server_key, self._curve_client)
            sock.connect(self.endpoint)
            self._sock = sock
        return self._sock

    def request(self, cmd: str, **fields: Any) -> dict[str, Any]:
        """Send one command; the reply as a dict (``ok`` may be false). Raises ControlTimeout."""
        req_id = next(self._ids)
        payload = orjson.dumps({"cmd": cmd, "req_id": req_id, **fields})
        sock = self._socket()
        deadline = time.monotonic() + self.timeout
        try:
            sock.send(payload, zmq.NOBLOCK)
        except zmq.Again:
            self._reset()
            raise ControlTimeout(cmd, self.endpoint, self.timeout) from None
        while True:
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0 or not sock.poll(remaining_ms, zmq.POLLIN):
                self._reset()
                raise ControlTimeout(cmd, self.endpoint, self.timeout)
            raw = sock.recv()
            try:
                reply = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                self._reset()
                raise ControlRequestError(cmd, "BadReply", f"reply is not JSON: {exc}") from exc
            if isinstance(reply, dict) and reply.get("req_id") == req_id:
                return reply
            log.debug("event=control_stale_reply cmd=%s req_id=%s", cmd, req_id)

    def call(self, cmd: str, **fields: Any) -> dict[str, Any]:
        """Like :meth:`request`, but an error reply raises :class:`ControlRequestError`."""
        reply = self.request(cmd, **fields)
        if not reply.get("ok"):
            error = reply.get("error") or {}
            raise ControlRequestError(cmd, str(error.get("name")), str(error.get("message")))
        return reply

    def register(
        self,
        worker_id: str,
        subscriptions: Iterable[Subscription],
        lease_s: float,
        *,
        pid: int | None = None,
    ) -> dict[str, Any]:
        return self.call(
            "register",
            worker_id=worker_id,
            subscriptions=[subscription_to_json(s) for s in subscriptions],
            lease_s=lease_s,
            pid=pid,
        )

    def renew(
        self, worker_id: str, *, gaps: int | None = None, received: int | None = None
    ) -> dict[str, Any]:
        return self.call("renew", worker_id=worker_id, gaps=gaps, received=received)

    def unregister(self, worker_id: str) -> dict[str, Any]:
        return self.call("unregister", worker_id=worker_id)

    def status(self) -> dict[str, Any]:
        return self.call("status")

    def _reset(self) -> None:
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None

    def close(self) -> None:
        self._reset()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
