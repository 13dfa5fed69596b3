"""Record raw upstream frames with their receive times; replay them through the feed path.

File format (gzip-compressed stream)::

    b"UFREC\\x00\\x01\\n"                      magic and format version
    <u32 length> <JSON metadata>             format, markets, shm prefix, start time
    { <i64 recv_ns> <u8 len(name)> <u32 len(frame)> <name> <frame> } ...

The recorder sits on ``Router.tap``: the connection thread encodes the record (copying
the frame, which may be a view into a reused receive buffer) and appends it to a
bounded deque; a writer thread joins batches, compresses and writes. When the deque is
full the frame is counted as dropped: the connection thread never waits for the disk.

Replay builds the feed's own parts without upstream connections (shm writers,
publisher, trade sequencer, router, a control server for workers and ``status``) and
routes every recorded frame through them at the original pace, a multiple of it, or
as fast as possible.
"""

from __future__ import annotations

import gzip
import logging
import struct
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import orjson

from feedhandler.backoff import sleep_interruptibly
from feedhandler.control import ControlServer, WorkerRegistry
from feedhandler.publisher import Publisher
from feedhandler.router import Router, UpstreamError, publish_trade_to, publish_trades_to
from feedhandler.trades import TradeSequencer
from feedhandler.upbit import ProtocolError
from feedhandler.upbit.hot import HotDecoder
from shm import OrderbookWriter, TickerWriter

if TYPE_CHECKING:
    from feedhandler.app import FeedProcess
    from feedhandler.config import Settings

log = logging.getLogger("feedhandler.record")

MAGIC = b"UFREC\x00\x01\n"
FORMAT_VERSION = 1
_RECORD = struct.Struct("<qBI")
_LENGTH = struct.Struct("<I")
MAX_METADATA_BYTES = 16 * 1024 * 1024
MAX_FRAME_BYTES = 64 * 1024 * 1024
DEFAULT_QUEUE_FRAMES = 32_768
_WRITE_CHUNK = 1 << 20
_READ_CHUNK = 1 << 20
_IDLE_WAIT_S = 0.01
_BATCH = 4096
_DROP_REPORT_INTERVAL_S = 5.0
# A sync flush costs a little compression ratio; once a second bounds what a crash loses.
_SYNC_INTERVAL_S = 1.0


class RecordingError(Exception):
    """A recording that cannot be written or read; the message names the file."""


def _open_compressed(path: Path, mode: str, compresslevel: int = 1) -> IO[bytes]:
    if path.suffix == ".zst":
        raise RecordingError(
            f"{path}: zstd needs the zstandard package, which is not a dependency; use .gz"
        )
    if path.suffix != ".gz":
        raise RecordingError(f"{path}: a recording file name must end in .gz")
    try:
        if mode == "wb":
            return gzip.open(path, "wb", compresslevel=compresslevel)
        return gzip.open(path, "rb")
    except OSError as exc:
        raise RecordingError(f"{path}: cannot open: {exc}") from exc


def encode_frame(name: bytes, frame: bytes | memoryview, recv_ns: int) -> bytes:
    """One record of the file: header, connection name, frame."""
    return _RECORD.pack(recv_ns, len(name), len(frame)) + name + frame


class RecordingWriter:
    """Writes the header and frames of one recording file. Not thread-safe."""

    def __init__(
        self, path: str | Path, metadata: dict[str, Any], *, compresslevel: int = 1
    ) -> None:
        self.path = Path(path)
        self._file = _open_compressed(self.path, "wb", compresslevel)
        meta = orjson.dumps({"version": FORMAT_VERSION, **metadata})
        self._buffer = bytearray(MAGIC + _LENGTH.pack(len(meta)) + meta)
        self.frames = 0
        self.bytes = 0

    def write(self, connection: str, frame: bytes | memoryview, recv_ns: int) -> None:
        self.write_encoded([encode_frame(connection.encode(), frame, recv_ns)])

    def write_encoded(self, records: list[bytes]) -> None:
        """Append records made by :func:`encode_frame`."""
        data = b"".join(records)
        self._buffer += data
        self.frames += len(records)
        self.bytes += len(data)
        if len(self._buffer) >= _WRITE_CHUNK:
            self.flush()

    def flush(self, *, sync: bool = False) -> None:
        """Hand buffered records to the compressor; ``sync`` also pushes the compressed
        bytes to the file, so a killed recorder leaves a readable prefix behind."""
        if self._buffer:
            self._file.write(self._buffer)
            self._buffer.clear()
        if sync:
            self._file.flush()

    def close(self) -> None:
        self.flush()
        self._file.close()


@dataclass(frozen=True, slots=True)
class RecordedFrame:
    connection: str
    recv_ns: int
    frame: bytes


class Recording:
    """A recording opened for reading: ``metadata``, then iterate for the frames.

    A file cut short (the recorder was killed) yields every complete frame and sets
    ``truncated``.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.truncated = False
        with _open_compressed(self.path, "rb") as f:
            self.metadata, self._data_offset = self._read_header(f)

    def _read_header(self, f: IO[bytes]) -> tuple[dict[str, Any], int]:
        try:
            head = f.read(len(MAGIC) + _LENGTH.size)
        except (OSError, EOFError) as exc:
            raise RecordingError(f"{self.path}: not a readable recording: {exc}") from exc
        if len(head) < len(MAGIC) + _LENGTH.size or head[: len(MAGIC)] != MAGIC:
            raise RecordingError(f"{self.path}: not an upfeed recording (bad magic)")
        (length,) = _LENGTH.unpack_from(head, len(MAGIC))
        if length > MAX_METADATA_BYTES:
            raise RecordingError(f"{self.path}: metadata of {length} bytes is implausible")
        raw = f.read(length)
        try:
            metadata = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise RecordingError(f"{self.path}: damaged metadata: {exc}") from exc
        if not isinstance(metadata, dict) or metadata.get("version") != FORMAT_VERSION:
            raise RecordingError(f"{self.path}: unsupported recording version")
        return metadata, len(head) + length

    def __iter__(self) -> Iterator[RecordedFrame]:
        names: dict[bytes, str] = {}
        unpack = _RECORD.unpack_from
        header_size = _RECORD.size
        with _open_compressed(self.path, "rb") as f:
            f.read(self._data_offset)
            buffer = b""
            position = 0
            at_end = False
            while True:
                # Records are parsed out of large decompressed chunks: reading each
                # field from the gzip stream costs several times more than the replay.
                if len(buffer) - position < header_size and not at_end:
                    buffer, position, at_end = self._refill(f, buffer, position)
                    continue
                if position + header_size > len(buffer):
                    if position < len(buffer):
                        self._cut("cut inside a record header")
                    return
                recv_ns, name_len, frame_len = unpack(buffer, position)
                if frame_len > MAX_FRAME_BYTES:
                    raise RecordingError(f"{self.path}: frame of {frame_len} bytes is implausible")
                start = position + header_size
                stop = start + name_len + frame_len
                if stop > len(buffer):
                    if at_end:
                        self._cut("cut inside a frame")
                        return
                    buffer, position, at_end = self._refill(f, buffer, position)
                    continue
                raw_name = buffer[start : start + name_len]
                name = names.get(raw_name)
                if name is None:
                    name = names[raw_name] = raw_name.decode()
                position = stop
                yield RecordedFrame(name, recv_ns, buffer[start + name_len : stop])

    def _refill(self, f: IO[bytes], buffer: bytes, position: int) -> tuple[bytes, int, bool]:
        """The unread rest of ``buffer`` plus the next chunk; True once the stream ended."""
        try:
            # read1: one decompression step, so a cut stream loses only its broken tail.
            chunk = f.read1(_READ_CHUNK)
        except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
            self._cut(str(exc))
            return buffer[position:], 0, True
        return buffer[position:] + chunk, 0, not chunk

    def _cut(self, why: str) -> None:
        self.truncated = True
        log.warning("event=recording_truncated path=%s error=%r", self.path, why)


class Recorder:
    """Feed add-on: every raw frame to a compressed file, written by its own thread."""

    name = "recorder"

    def __init__(
        self,
        path: str | Path,
        *,
        max_queue: int = DEFAULT_QUEUE_FRAMES,
        compresslevel: int = 1,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        self.path = Path(path)
        self.max_queue = max_queue
        self.compresslevel = compresslevel
        self._clock_ns = clock_ns
        self._queue: deque[bytes] = deque()
        self._names: dict[str, bytes] = {}
        self._drop_lock = threading.Lock()
        self.dropped = 0
        self._writer: RecordingWriter | None = None
        self._router: Router | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: str | None = None
        # Checked up front so a bad name fails the start, not the writer thread.
        _open_compressed(self.path, "wb", compresslevel).close()

    def start(self, feed: FeedProcess) -> None:
        assert feed.router is not None
        metadata = {
            "started_ns": self._clock_ns(),
            "format": feed.settings.upbit.format,
            "markets": list(feed.market_codes),
            "shm_prefix": feed.settings.shm.prefix,
            "source": feed.settings.source,
        }
        self.open(metadata)
        self._router = feed.router
        feed.router.tap = self.tap

    def open(self, metadata: dict[str, Any]) -> None:
        """Start writing (also usable without a feed: call :meth:`tap`, then :meth:`stop`)."""
        self._writer = RecordingWriter(self.path, metadata, compresslevel=self.compresslevel)
        self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)
        self._thread.start()
        log.info("event=recording_started path=%s", self.path)

    def tap(self, connection: str, frame: bytes | memoryview, recv_ns: int) -> None:
        """Called on the connection thread for every frame: copy and enqueue, never wait."""
        if len(self._queue) >= self.max_queue:
            with self._drop_lock:
                self.dropped += 1
            return
        name = self._names.get(connection)
        if name is None:
            name = self._names[connection] = connection.encode()
        # Encoding here copies the frame once and leaves the writer thread no per-frame
        # Python work to compete with connection threads for the GIL.
        self._queue.append(_RECORD.pack(recv_ns, len(name), len(frame)) + name + frame)

    def _run(self) -> None:
        writer = self._writer
        assert writer is not None
        queue = self._queue
        popleft = queue.popleft
        reported_drops = 0
        next_drop_report = 0.0
        next_sync = time.monotonic() + _SYNC_INTERVAL_S
        try:
            while True:
                if time.monotonic() >= next_sync:
                    writer.flush(sync=True)
                    next_sync = time.monotonic() + _SYNC_INTERVAL_S
                if self.dropped != reported_drops and time.monotonic() >= next_drop_report:
                    reported_drops = self.dropped
                    next_drop_report = time.monotonic() + _DROP_REPORT_INTERVAL_S
                    log.warning(
                        "event=recording_dropped path=%s dropped=%d queue_limit=%d",
                        self.path,
                        reported_drops,
                        self.max_queue,
                    )
                pending = len(queue)
                if not pending:
                    if self._stop.is_set():
                        break
                    writer.flush()
                    self._stop.wait(_IDLE_WAIT_S)
                    continue
                writer.write_encoded([popleft() for _ in range(min(pending, _BATCH))])
        except OSError as exc:
            self.error = str(exc)
            log.error("event=recording_failed path=%s error=%r", self.path, str(exc))
        finally:
            try:
                writer.close()
            except OSError as exc:
                self.error = self.error or str(exc)
                log.error("event=recording_close_failed path=%s error=%r", self.path, str(exc))

    def stop(self) -> None:
        if self._router is not None and self._router.tap == self.tap:
            self._router.tap = None
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30.0)
        writer = self._writer
        log.info(
            "event=recording_stopped path=%s frames=%d dropped=%d",
            self.path,
            writer.frames if writer else 0,
            self.dropped,
        )

    def status(self) -> dict[str, Any]:
        writer = self._writer
        return {
            "path": str(self.path),
            "frames": writer.frames if writer else 0,
            "bytes": writer.bytes if writer else 0,
            "queued": len(self._queue),
            "dropped": self.dropped,
            "error": self.error,
        }


# --------------------------------------------------------------------------- replay


@dataclass(slots=True)
class ReplayStats:
    frames: int = 0
    errors: int = 0
    seconds: float = 0.0
    truncated: bool = False

    def to_json(self) -> dict[str, Any]:
        rate = self.frames / self.seconds if self.seconds > 0 else 0.0
        return {
            "frames": self.frames,
            "errors": self.errors,
            "seconds": round(self.seconds, 6),
            "frames_per_s": round(rate, 1),
            "truncated": self.truncated,
        }


class Replayer:
    """Routes a recording through shm writers and the ZeroMQ bus of ``settings``.

    ``speed``: None replays as fast as possible, 1.0 at the recorded pace, 2.0 twice as
    fast. ``preload`` reads (and decompresses) the whole file before the clock starts, so
    a maximum-speed replay measures the feed path alone (the file must fit in memory;
    decompressing costs about 3.5 us per 1 kB frame). ``keep_timestamps`` stamps records
    and bus messages with the recorded receive times (byte-identical shm records);
    otherwise with the replay's clock, so readers' ages and latencies make sense. Call
    :meth:`open`, then :meth:`run`, then :meth:`close` (or use it as a context manager).
    """

    def __init__(
        self,
        settings: Settings,
        path: str | Path,
        *,
        speed: float | None = None,
        keep_timestamps: bool = False,
        preload: bool = False,
        control: bool = True,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        if speed is not None and not speed > 0:
            raise ValueError(f"speed must be > 0 (or None for maximum), got {speed}")
        self.settings = settings
        self.recording = Recording(path)
        self.speed = speed
        self.keep_timestamps = keep_timestamps
        self.preload = preload
        self._want_control = control
        self._clock_ns = clock_ns
        self.ticker_writer: TickerWriter | None = None
        self.orderbook_writer: OrderbookWriter | None = None
        self.publisher: Publisher | None = None
        self.trades: TradeSequencer | None = None
        self.router: Router | None = None
        self.control: ControlServer | None = None
        self.stats = ReplayStats()
        self._started_at = time.time()

    def open(self) -> None:
        s = self.settings
        markets = [str(code) for code in self.recording.metadata.get("markets", [])]
        self.ticker_writer = TickerWriter(
            s.shm.prefix, markets, capacity=s.shm.ticker_capacity, max_symbols=len(markets) + 256
        )
        self.orderbook_writer = OrderbookWriter(
            s.shm.prefix, markets, capacity=s.shm.orderbook_capacity, max_symbols=len(markets) + 256
        )
        self.publisher = Publisher(s.pub_endpoint(), sndhwm=s.zmq.sndhwm)
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
        if self._want_control:
            self.control = ControlServer(
                s.control_endpoint(),
                handlers={
                    "status": lambda _req: self.status(),
                    "health": lambda _req: {"state": "healthy", "replay": True},
                    "metrics": lambda _req: self.metrics(),
                    "segments": lambda _req: {"segments": self.segments()},
                },
                registry=WorkerRegistry(),
                hello=self.hello,
            )
            self.control.start()
        log.info(
            "event=replay_opened path=%s markets=%d pub=%s",
            self.recording.path,
            len(markets),
            self.publisher.endpoint,
        )

    def _on_bad_frame(self, connection: str, error: ProtocolError) -> None:
        self.stats.errors += 1
        log.debug("event=replay_bad_frame connection=%s error=%r", connection, str(error))

    def run(self, stop: threading.Event | None = None) -> ReplayStats:
        """Replay every frame (until ``stop`` is set); returns the counts."""
        assert self.router is not None, "call open() first"
        stop = stop or threading.Event()
        route = self.router.route
        fmt = str(self.recording.metadata.get("format", "DEFAULT"))
        decoders: dict[str, HotDecoder] = {}
        frames: Iterable[RecordedFrame] = list(self.recording) if self.preload else self.recording
        speed = self.speed
        keep = self.keep_timestamps
        clock_ns = self._clock_ns
        started_mono = time.monotonic()
        started_ns = clock_ns()
        first_ns: int | None = None
        last_original = -1
        stamp = 0
        for item in frames:
            if stop.is_set():
                break
            if first_ns is None:
                first_ns = item.recv_ns
            if speed is not None:
                due = (item.recv_ns - first_ns) / speed * 1e-9
                wait = due - (time.monotonic() - started_mono)
                if wait > 0.0005 and sleep_interruptibly(stop, wait):
                    break
            if keep:
                stamp = item.recv_ns
            elif item.recv_ns != last_original:
                # Frames received in one batch share one time, as they did live.
                stamp = (
                    clock_ns()
                    if speed is None
                    else started_ns + int((item.recv_ns - first_ns) / speed)
                )
                last_original = item.recv_ns
            decoder = decoders.get(item.connection)
            if decoder is None:
                decoder = decoders[item.connection] = HotDecoder(format=fmt)
            try:
                route(item.connection, decoder, item.frame, stamp)
            except UpstreamError as exc:
                self.stats.errors += 1
                log.info(
                    "event=replay_upstream_error connection=%s name=%s", exc.connection, exc.name
                )
            self.stats.frames += 1
        self.stats.seconds = time.monotonic() - started_mono
        self.stats.truncated = self.recording.truncated
        log.info(
            "event=replay_done %s", " ".join(f"{k}={v}" for k, v in self.stats.to_json().items())
        )
        return self.stats

    def hello(self) -> dict[str, Any]:
        assert self.publisher is not None
        return {
            "pub_endpoint": self.publisher.endpoint,
            "shm_prefix": self.settings.shm.prefix,
            "segments": [w.name for w in (self.ticker_writer, self.orderbook_writer) if w],
        }

    def segments(self) -> list[dict[str, Any]]:
        return [
            writer.describe()
            for writer in (self.ticker_writer, self.orderbook_writer)
            if writer is not None and not writer.closed
        ]

    def metrics(self) -> dict[str, Any]:
        assert self.router is not None and self.publisher is not None and self.trades
        return {
            "messages": dict(self.router.counts),
            "publisher": self.publisher.stats(),
            "trades": self.trades.status(),
        }

    def status(self) -> dict[str, Any]:
        return {
            "state": "healthy",
            "replay": {"path": str(self.recording.path), **self.stats.to_json()},
            "uptime_s": time.time() - self._started_at,
            "markets": len(self.recording.metadata.get("markets", [])),
            "segments": self.segments(),
            "metrics": self.metrics(),
        }

    def close(self) -> None:
        if self.control is not None:
            self.control.stop()
            self.control = None
        if self.publisher is not None:
            self.publisher.close()
        for writer in (self.ticker_writer, self.orderbook_writer):
            if writer is not None and not writer.closed:
                writer.close(unlink=True)

    def __enter__(self) -> Replayer:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
