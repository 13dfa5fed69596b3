"""The feed's ZeroMQ PUB socket: one frame per event, a sequence number per topic.

Frame (contract, DESIGN.md section 4)::

    <topic> {"seq":<n>,"recv_ns":<ns>[,"origin_ns":<ns>],"data":<event JSON>}

The header lives inside the single frame because a multipart send costs several times
more (PERF.md). ``data`` is passed in already serialised and is never re-encoded.

``seq`` counts per topic, starting at 1. Subscribers filter by topic prefix, so a
counter shared by all topics would show every message of an unsubscribed topic as a
loss; per topic, a hole in ``seq`` means exactly that messages of that topic were
dropped (the PUB socket drops for a subscriber whose high-water mark is reached, which
keeps a slow subscriber from ever blocking the feed).

Endpoint rules (also used by the control socket): ``ipc://`` sockets live in a runtime
directory that is private to the user (mode 0700, owned by us); ``tcp://`` on a
loopback address is allowed in the clear; ``tcp://`` on any other address needs CURVE
keys, otherwise :class:`BusConfigError`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import socket
import stat
import threading
import time
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import orjson
import zmq
import zmq.auth
import zmq.backend

log = logging.getLogger(__name__)

# sockaddr_un.sun_path is 108 bytes on Linux, including the terminating NUL.
MAX_IPC_PATH_BYTES = 107
IPC_PROBE_TRIES = 10
IPC_PROBE_INTERVAL_S = 0.02
LOOPBACK_NAMES = frozenset({"localhost", "lo", "ip6-localhost"})


class BusConfigError(ValueError):
    """An endpoint or key setting that would be unsafe or cannot work."""


@dataclass(frozen=True, slots=True)
class CurveKeys:
    """A CURVE key pair (Z85 text, 40 bytes each). The secret key never appears in repr."""

    public: bytes
    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        for name, key in (("public", self.public), ("secret", self.secret)):
            if not isinstance(key, bytes) or len(key) != 40:
                raise BusConfigError(f"CURVE {name} key must be 40 bytes of Z85 text")

    def __repr__(self) -> str:
        return f"CurveKeys(public={self.public.decode('ascii', 'replace')}, secret=***)"

    @classmethod
    def generate(cls) -> CurveKeys:
        public, secret = zmq.curve_keypair()
        return cls(public, secret)

    @classmethod
    def load(cls, secret_file: str | os.PathLike[str]) -> CurveKeys:
        """Load a ZeroMQ certificate file (``*.key_secret``, as written by :meth:`save`)."""
        path = Path(secret_file)
        try:
            public, secret = zmq.auth.load_certificate(path)
        except (OSError, ValueError) as exc:
            raise BusConfigError(f"cannot load CURVE certificate {path}: {exc}") from exc
        if secret is None:
            raise BusConfigError(f"{path} holds no secret key (a .key_secret file is needed)")
        return cls(public, secret)

    def save(self, directory: str | os.PathLike[str], name: str) -> tuple[Path, Path]:
        """Write ``<name>.key`` (public) and ``<name>.key_secret`` (mode 0600)."""
        folder = Path(directory)
        public_file = folder / f"{name}.key"
        secret_file = folder / f"{name}.key_secret"
        _write_certificate(public_file, self.public, None)
        _write_certificate(secret_file, self.public, self.secret)
        return public_file, secret_file


class CurveClientAuthorizer:
    """Admit only CURVE clients whose public keys are in ``keys_dir`` (``*.key`` files).

    Without it, any client that knows the server's public key may connect (the traffic
    is still encrypted). It applies to every CURVE server socket of ``context``; start
    it before binding and :meth:`stop` it after the sockets are closed.
    """

    def __init__(self, context: zmq.Context, keys_dir: str | os.PathLike[str]) -> None:
        folder = Path(keys_dir)
        if not folder.is_dir():
            raise BusConfigError(f"CURVE client keys directory {folder} does not exist")
        if not any(folder.glob("*.key")):
            raise BusConfigError(f"CURVE client keys directory {folder} holds no *.key file")
        # Imported here: the authenticator's thread machinery costs ~2 MB of memory in
        # every process, and only a feed that authorises CURVE clients needs it.
        from zmq.auth.thread import ThreadAuthenticator  # noqa: PLC0415

        self._auth = ThreadAuthenticator(context, log=log.getChild("zap"))
        self._auth.start()
        self._auth.configure_curve(domain="*", location=str(folder))
        self.keys_dir = folder

    def reload(self) -> None:
        """Re-read the key directory (after adding or removing a client key)."""
        self._auth.configure_curve(domain="*", location=str(self.keys_dir))

    def stop(self) -> None:
        self._auth.stop()

    def __enter__(self) -> CurveClientAuthorizer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def load_public_key(path: str | os.PathLike[str]) -> bytes:
    """The public key from a ZeroMQ certificate file (``.key`` or ``.key_secret``)."""
    try:
        public, _ = zmq.auth.load_certificate(Path(path))
    except (OSError, ValueError) as exc:
        raise BusConfigError(f"cannot load CURVE public key {path}: {exc}") from exc
    return public


def _write_certificate(path: Path, public: bytes, secret: bytes | None) -> None:
    lines = ["metadata", "curve", f'    public-key = "{public.decode("ascii")}"']
    if secret is not None:
        lines.append(f'    secret-key = "{secret.decode("ascii")}"')
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if secret else 0o644)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write("\n".join(lines) + "\n")


def ensure_runtime_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` with mode 0700, or tighten it to 0700 if it is ours.

    A directory owned by another user is refused: whoever owns it could replace our
    sockets and read or forge the feed.
    """
    folder = Path(path)
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = folder.lstat()
    except OSError as exc:
        raise BusConfigError(f"cannot create runtime directory {folder}: {exc}") from exc
    if not stat.S_ISDIR(info.st_mode):
        raise BusConfigError(f"runtime directory {folder} is not a directory (or is a symlink)")
    if info.st_uid != os.getuid():
        raise BusConfigError(
            f"runtime directory {folder} is owned by uid {info.st_uid}, not by us "
            f"(uid {os.getuid()}); refusing to put sockets there"
        )
    if stat.S_IMODE(info.st_mode) != 0o700:
        log.warning(
            "event=runtime_dir_mode_fixed dir=%s mode=%o", folder, stat.S_IMODE(info.st_mode)
        )
        os.chmod(folder, 0o700)
    return folder


def _is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_endpoint(endpoint: str, *, curve: bool, bind: bool = False) -> str:
    """Validate an endpoint; for ``bind``, also prepare its ipc directory.

    Returns the endpoint unchanged. ``inproc://`` is allowed (same process).
    """
    transport, sep, address = endpoint.partition("://")
    if not sep or not address:
        raise BusConfigError(f"endpoint {endpoint!r} is not of the form transport://address")
    if transport == "ipc":
        path = Path(address)
        if not path.is_absolute():
            raise BusConfigError(f"ipc endpoint {endpoint!r} must use an absolute path")
        if len(os.fsencode(address)) > MAX_IPC_PATH_BYTES:
            raise BusConfigError(
                f"ipc path {address!r} is longer than {MAX_IPC_PATH_BYTES} bytes, the limit "
                "of a unix socket address; use a shorter runtime directory"
            )
        if bind:
            ensure_runtime_dir(path.parent)
            _refuse_live_ipc_socket(path)
    elif transport == "tcp":
        # "tcp://host:port", "tcp://[::1]:port", "tcp://iface;host:port" (source spec).
        target = address.rsplit(";", 1)[-1]
        host, colon, port = target.rpartition(":")
        if not colon or not port:
            raise BusConfigError(f"tcp endpoint {endpoint!r} needs a port")
        if not curve and not _is_loopback(host):
            raise BusConfigError(
                f"tcp endpoint {endpoint!r} is not a loopback address: traffic leaving this "
                "host must be encrypted and authenticated, so configure CURVE keys "
                "(or use ipc:// or tcp://127.0.0.1)"
            )
    elif transport != "inproc":
        raise BusConfigError(f"endpoint {endpoint!r}: transport must be ipc, tcp or inproc")
    return endpoint


def _refuse_live_ipc_socket(path: Path) -> None:
    """libzmq silently replaces an existing ipc socket file; refuse one that still answers.

    A file left by a crashed process refuses connections and is replaced as usual.
    """
    try:
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise BusConfigError(f"ipc path {path} exists and is not a socket")
    except FileNotFoundError:
        return
    # A listener being closed (also by this process) lingers for a moment: look again.
    for _ in range(IPC_PROBE_TRIES):
        if not _ipc_answers(path):
            return
        time.sleep(IPC_PROBE_INTERVAL_S)
    raise BusConfigError(f"ipc endpoint {path} is in use by another live process")


def _ipc_answers(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(0.5)
    try:
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


def apply_curve_server(sock: zmq.Socket, curve: CurveKeys) -> None:
    sock.curve_server = True
    sock.curve_secretkey = curve.secret
    sock.curve_publickey = curve.public


def apply_curve_client(sock: zmq.Socket, server_key: bytes, client: CurveKeys | None) -> None:
    """Client side of CURVE; an ephemeral client key pair unless one is given."""
    keys = client or CurveKeys.generate()
    sock.curve_serverkey = server_key
    sock.curve_publickey = keys.public
    sock.curve_secretkey = keys.secret


def bind_socket(sock: zmq.Socket, endpoint: str, curve: CurveKeys | None) -> str:
    """Check, secure and bind; returns the bound endpoint (a real port for ``tcp://*:*``)."""
    check_endpoint(endpoint, curve=curve is not None, bind=True)
    if curve is not None:
        apply_curve_server(sock, curve)
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as exc:
        raise BusConfigError(f"cannot bind {endpoint}: {exc}") from exc
    bound = sock.getsockopt(zmq.LAST_ENDPOINT)
    return bound.decode() if isinstance(bound, bytes) else str(bound)


# ---------------------------------------------------------------------------- topics


@lru_cache(maxsize=65536)
def topic_for(event_type: str, code: str | None = None) -> bytes:
    """The topic of an event: ``trade`` + ``KRW-BTC`` -> ``b"trade.KRW-BTC"``.

    ``candle.1m`` -> ``candle.1m.KRW-BTC``; ``myOrder`` -> ``myOrder.<CODE>``;
    ``myAsset`` -> ``myAsset`` (no code); ``sys`` + event -> ``sys.<event>``.
    """
    if event_type == "myAsset":
        return b"myAsset"
    if not code:
        raise ValueError(f"a {event_type} topic needs a code")
    if " " in code or " " in event_type:
        raise ValueError(f"topic parts must not contain spaces: {event_type!r} {code!r}")
    return f"{event_type}.{code}".encode()


def sys_topic(event: str) -> bytes:
    return topic_for("sys", event)


def subscription_prefix(topic: bytes) -> bytes:
    """The SUB filter that matches exactly ``topic`` (the space ends the topic)."""
    return topic + b" "


def encode_frame(
    topic: bytes, seq: int, recv_ns: int, data_json: bytes, origin_ns: int = 0
) -> bytes:
    """The wire frame; the same bytes :meth:`Publisher.publish` sends."""
    if origin_ns:
        return b'%s {"seq":%d,"recv_ns":%d,"origin_ns":%d,"data":%s}' % (
            topic,
            seq,
            recv_ns,
            origin_ns,
            data_json,
        )
    return b'%s {"seq":%d,"recv_ns":%d,"data":%s}' % (topic, seq, recv_ns, data_json)


# ------------------------------------------------------------------------- publisher


def _raw_send(sock: zmq.Socket) -> Callable[[bytes, int], object]:
    """``sock.send`` without pyzmq's Python layer (routing ids, groups, frames, which a
    bytes frame never needs): the compiled backend's send, bound to ``sock``. It saves
    about 0.2 us of the ~1 us a trade's send costs."""
    backend_send = getattr(zmq.backend.Socket, "send", None)
    if backend_send is None or not isinstance(sock, zmq.backend.Socket):
        return sock.send
    return types.MethodType(backend_send, sock)


def start_io_threads_as_batch(context: zmq.Context) -> bool:
    """Have ``context`` start its I/O threads (with its first socket) as SCHED_BATCH.

    A waking SCHED_BATCH thread never preempts the running one. With the default policy,
    on a core shared with a connection thread, ZeroMQ's I/O thread woke for the first
    frame of every batch the connection sent, preempted it, sent that one frame and
    slept: a switch every few messages, a third of the feed's throughput. As a batch
    thread it runs at once on an idle core, or on a shared one when the connection
    thread waits (or at the scheduler's next tick). No effect on a context whose threads
    already run; False where the policy does not exist (not Linux).
    """
    policy = getattr(os, "SCHED_BATCH", None)
    if policy is None:
        return False
    context.set(zmq.THREAD_SCHED_POLICY, policy)
    return True


def io_thread_ids(pid: int | None = None) -> list[int]:
    """Thread ids of a process's ZeroMQ I/O threads (they name themselves ``ZMQbg/IO/n``);
    [] where /proc does not exist."""
    tasks = Path(f"/proc/{pid or os.getpid()}/task")
    ids = []
    with contextlib.suppress(FileNotFoundError):
        for task in tasks.iterdir():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                if (task / "comm").read_text().startswith("ZMQbg/IO"):
                    ids.append(int(task.name))
    return sorted(ids)


def fit_io_threads_to_cpus(tids: Sequence[int] | None = None) -> str | None:
    """Give each of this process's SCHED_BATCH or SCHED_IDLE ZeroMQ I/O threads (or of
    ``tids``, the threads to look at) the policy that fits where it may run; the name of
    the policy in force (of the last one, if several), or None.

    Allowed on one CPU only (the feed confined to a core), an I/O thread runs as
    SCHED_IDLE: it then runs only when the connection thread on that core waits or
    yields. As SCHED_BATCH there, once the subscribers kept up it woke for every few
    messages and took the core from the connection thread each time, about 24,000
    times a second, and the feed's throughput fell by a third; it did so in about a
    third of the benchmark's one-core runs. Allowed on more CPUs, it stays (or goes
    back to) SCHED_BATCH: as SCHED_IDLE on cores busy with other work, it could wait
    indefinitely. A thread started with the default policy is left alone.
    """
    batch, idle = getattr(os, "SCHED_BATCH", None), getattr(os, "SCHED_IDLE", None)
    if batch is None or idle is None:
        return None
    in_force = None
    for tid in io_thread_ids() if tids is None else tids:
        try:
            policy = os.sched_getscheduler(tid)
            if policy not in (batch, idle):
                continue
            wanted = idle if len(os.sched_getaffinity(tid)) == 1 else batch
            if policy != wanted:
                with contextlib.suppress(PermissionError):
                    # Leaving SCHED_IDLE needs RLIMIT_NICE (or root): then it stays.
                    os.sched_setscheduler(tid, wanted, os.sched_param(0))
                policy = os.sched_getscheduler(tid)
        except ProcessLookupError:
            continue  # a thread of a context that just ended
        in_force = "idle" if policy == idle else "batch"
    return in_force


# Frames held between hold() and release() before they are sent anyway.
MAX_HELD_FRAMES = 64


class Publisher:
    """One PUB socket. ``publish`` may be called from several threads (a lock guards it).

    Sending never blocks: the high-water mark makes ZeroMQ drop for a subscriber that
    cannot keep up, and a send that would block (EAGAIN) is counted as dropped. A drop
    still consumes its sequence number, so subscribers see the hole.

    Between :meth:`hold` and :meth:`release` (a connection thread around one received
    batch) frames are queued and sent together at the release, or every
    ``MAX_HELD_FRAMES``: ZeroMQ's I/O thread then wakes once for several frames and
    writes them with one system call, instead of once per frame. Order and sequence
    numbers are those of the publish calls.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        sndhwm: int = 100_000,
        curve: CurveKeys | None = None,
        context: zmq.Context | None = None,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self._context = context or zmq.Context.instance()
        self._clock_ns = clock_ns
        self._lock = threading.Lock()
        self._acquire, self._release = self._lock.acquire, self._lock.release
        self._seqs: dict[bytes, int] = {}
        self._sent = 0
        self._dropped = 0
        self._holders = 0
        self._held: list[bytes] = []
        sock = self._context.socket(zmq.PUB)
        sock.linger = 0
        sock.sndhwm = sndhwm
        try:
            self.endpoint = bind_socket(sock, endpoint, curve)
        except BusConfigError:
            sock.close(0)
            raise
        self._sock = sock
        self._send = _raw_send(sock)
        self._closed = False
        self.curve_public_key = curve.public if curve else None
        log.info("event=publisher_bound endpoint=%s curve=%s", self.endpoint, curve is not None)

    def publish(self, topic: bytes, data_json: bytes, recv_ns: int, origin_ns: int = 0) -> int:
        """Send one event; returns the sequence number it took (also when dropped)."""
        # acquire/release rather than a with-block: this runs for every trade.
        self._acquire()
        try:
            seqs = self._seqs
            seq = seqs[topic] = seqs.get(topic, 0) + 1
            if origin_ns:
                frame = b'%s {"seq":%d,"recv_ns":%d,"origin_ns":%d,"data":%s}' % (
                    topic,
                    seq,
                    recv_ns,
                    origin_ns,
                    data_json,
                )
            else:
                frame = b'%s {"seq":%d,"recv_ns":%d,"data":%s}' % (topic, seq, recv_ns, data_json)
            if self._holders:
                held = self._held
                held.append(frame)
                if len(held) >= MAX_HELD_FRAMES:
                    self._send_held()
                return seq
            self._send_frames((frame,))
            return seq
        finally:
            self._release()

    def publish_many(self, events: Sequence[tuple[bytes, bytes, int, int]]) -> None:
        """:meth:`publish` for each of ``events`` (topic, data_json, recv_ns, origin_ns),
        in order, under one lock acquisition."""
        self._acquire()
        try:
            seqs = self._seqs
            held = self._held
            for topic, data_json, recv_ns, origin_ns in events:
                seq = seqs[topic] = seqs.get(topic, 0) + 1
                held.append(encode_frame(topic, seq, recv_ns, data_json, origin_ns))
            if not self._holders or len(held) >= MAX_HELD_FRAMES:
                self._send_held()
        finally:
            self._release()

    def hold(self) -> None:
        """Queue frames from now until the matching :meth:`release` (calls may nest)."""
        with self._lock:
            self._holders += 1

    def release(self) -> None:
        """End one :meth:`hold` and send every queued frame."""
        with self._lock:
            if self._holders > 0:
                self._holders -= 1
            if self._held:
                self._send_held()

    def _send_held(self) -> None:
        # Called with the lock held.
        held, self._held = self._held, []
        if self._closed:
            self._dropped += len(held)
            return
        self._send_frames(held)

    def _send_frames(self, frames: Sequence[bytes]) -> None:
        # Called with the lock held. A send that would block is a drop.
        send = self._send
        for frame in frames:
            try:
                send(frame, zmq.NOBLOCK)
            except zmq.Again:
                self._dropped += 1
            else:
                self._sent += 1

    def publish_sys(self, event: str, fields: Mapping[str, object]) -> int:
        """Publish a control event on ``sys.<event>``; ``fields`` must be JSON-serialisable."""
        return self.publish(sys_topic(event), orjson.dumps(fields), self._clock_ns())

    def stats(self) -> dict[str, object]:
        with self._lock:
            return {
                "endpoint": self.endpoint,
                "sent": self._sent,
                "dropped": self._dropped,
                "seq": sum(self._seqs.values()),
                "topics": len(self._seqs),
            }

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            if self._held:
                self._send_held()
            self._closed = True
            self._sock.close(0)
        log.info("event=publisher_closed endpoint=%s sent=%d", self.endpoint, self._sent)

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
