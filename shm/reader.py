"""Lock-free readers of snapshot segments, usable from any process.

A reader maps the segment read-only and takes seqlocked copies: read the record's seq
word, copy the bytes, read seq again; an odd or changed seq means the writer was inside
the record, so the copy is retried. Results are plain numpy: ``latest`` returns an
``np.void`` of the record dtype, ``latest_many`` and ``since`` structured arrays, all
copies that stay valid after the writer moves on (or the reader closes).

Readers never write a record, never unlink the segment and never register it with
``multiprocessing``'s resource tracker. A reader waiting for the next record
(:meth:`SnapshotReader.wait_for_head`, :func:`wait_for_heads`) sleeps in the kernel
until the writer publishes when both sides have the C helpers of :mod:`shm.native`
(it then maps the header writable as well, to count itself among the sleepers: the
writer wakes them only when there are any), and polls otherwise.

When the writer closes or a restarted writer replaces the segment (the old header's
state word changes), the reader re-attaches to the new generation on its next call;
``since`` first drains what was left in the old one.
"""

from __future__ import annotations

import contextlib
import math
import mmap
import os
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Self

import numpy as np

from shm import layout as L
from shm import native as _native
from shm.errors import (
    InconsistentReadError,
    LayoutMismatchError,
    SegmentNotFoundError,
    UnknownSymbolError,
)
from shm.segment import (
    HeaderInfo,
    current_inode,
    open_header_for_waiting,
    open_readonly,
    process_start_ticks,
    read_descr,
    read_header,
    read_symbols,
    segment_name,
    segment_path,
)

_FAST_TRIES = 64
# since() copies batches up to this size record by record, larger ones with numpy.
_SMALL_BATCH = 16
_SPIN_READS = 200
_HEAD = L.H_HEAD
_frombuffer = np.frombuffer
_INT64 = struct.Struct("<q")
_FOLLOW_CHECK_NS = 1_000_000
_DEFAULT_POLL_INTERVAL = 0.0005
# A sleep on the heads is cut into slices this long, so that a state change nobody woke
# the reader for (a writer without the C helpers replacing the segment) is seen anyway.
_SLEEP_SLICE = 0.25
_WAIT_UNSUPPORTED = -2


class _Mapping:
    """One generation of the segment, mapped read-only, with views over its sections."""

    def __init__(self, name: str, buf: mmap.mmap, inode: int, info: HeaderInfo) -> None:
        geometry = info.geometry
        # Parsed first: nothing below may hold a view of buf if these raise.
        self.dtype = L.dtype_from_descr_text(read_descr(buf, info))
        if self.dtype.itemsize != geometry.record_size:
            raise ValueError(
                f"record dtype is {self.dtype.itemsize} bytes, records are {geometry.record_size}"
            )
        self.codes = read_symbols(buf, info, info.n_symbols)
        self.buf = buf
        self.inode = inode
        self.generation = info.generation
        self.writer_pid = info.writer_pid
        self.writer_start_ticks = info.writer_start_ticks
        self.q = memoryview(buf).cast("Q")
        self.size = geometry.record_size
        self.capacity = geometry.capacity
        self.max_symbols = geometry.max_symbols
        self.latest_off = geometry.latest_off
        self.ring_off = geometry.ring_off
        self.index_word = geometry.index_off // 8
        self.ids = {code: i for i, code in enumerate(self.codes)}
        self.slots = self._slots_of(self.ids)
        self.no_records = np.empty(0, self.dtype)
        self.path = segment_path(name)
        self._wait_header: mmap.mmap | None = None
        self._wait_header_tried = False
        self.ring_seq = np.ndarray(
            (self.capacity,), "<u8", buffer=buf, offset=self.ring_off, strides=(self.size,)
        )
        self.ring_bytes = np.ndarray(
            (self.capacity * self.size,), np.uint8, buffer=buf, offset=self.ring_off
        )
        self.name = name

    def _slots_of(self, ids: dict[str, int]) -> dict[str, tuple[int, int, int]]:
        """Per code: the latest slot's start and end offsets and its seq word index."""
        slots = {}
        for code, symbol in ids.items():
            start = self.latest_off + symbol * self.size
            slots[code] = (start, start + self.size, start >> 3)
        return slots

    def refresh_symbols(self) -> None:
        count = min(self.q[L.H_N_SYMBOLS], self.max_symbols)
        if count > len(self.codes):
            info = read_header(self.name, self.buf)
            self.codes = read_symbols(self.buf, info, count)
            self.ids = {code: i for i, code in enumerate(self.codes)}
            self.slots = self._slots_of(self.ids)

    def header_to_sleep_on(self) -> mmap.mmap | None:
        """A writable mapping of the header if a reader may sleep on this head now: the
        segment is live and its writer wakes sleepers. None: poll instead."""
        q = self.q
        if q[L.H_WAKES_READERS] != 1 or q[L.H_STATE] != L.STATE_LIVE:
            return None
        if not self._wait_header_tried:
            self._wait_header_tried = True
            self._wait_header = open_header_for_waiting(self.path, self.inode)
        return self._wait_header

    def close(self) -> None:
        del self.ring_seq, self.ring_bytes
        self.q.release()
        if self._wait_header is not None:
            with contextlib.suppress(BufferError):
                self._wait_header.close()
        # A caller may still hold a numpy view it made of the buffer; the mapping is then
        # released by garbage collection instead of here.
        with contextlib.suppress(BufferError):
            self.buf.close()


def _open_mapping(name: str, kind: str) -> _Mapping | None:
    """The current generation if it is published and usable; None if not (yet)."""
    opened = open_readonly(segment_path(name))
    if opened is None:
        return None
    buf, inode = opened
    try:
        info = read_header(name, buf)
        if info.version != L.LAYOUT_VERSION:
            raise LayoutMismatchError(
                name, f"layout version {info.version}, this reader knows {L.LAYOUT_VERSION}"
            )
        if info.kind_id != L.KIND_IDS[kind]:
            raise LayoutMismatchError(name, f"kind id {info.kind_id}, expected {kind!r}")
        if info.state == L.STATE_SUPERSEDED:
            buf.close()
            return None
        try:
            mapping = _Mapping(name, buf, inode, info)
        except ValueError as exc:
            raise LayoutMismatchError(name, str(exc)) from exc
        if mapping.dtype != L.RECORD_DTYPES[kind]:
            mapping.close()
            raise LayoutMismatchError(name, f"record dtype {mapping.dtype} is not the {kind} dtype")
        return mapping
    except LayoutMismatchError:
        if not buf.closed:
            buf.close()
        raise


class SnapshotReader:
    """Reads one segment (``<prefix>.ticker`` or ``<prefix>.orderbook``); see :func:`attach`.

    One reader object serves one thread (it swaps its mapping when the writer is
    replaced); threads that read concurrently each attach their own reader.
    """

    def __init__(
        self,
        name: str,
        kind: str,
        mapping: _Mapping,
        *,
        heartbeat_timeout: float,
        read_timeout: float,
        clock_ns: Callable[[], int],
        copy_ring: Callable[[object, int, int, int, int, int], bytearray] | None = None,
        wait_heads: Callable[[object, object, float, float], int] | None = None,
    ) -> None:
        self.name = name
        self.kind = kind
        self._m: _Mapping | None = mapping
        self._heartbeat_timeout_ns = int(heartbeat_timeout * 1e9)
        self._read_timeout = read_timeout
        self._clock_ns = clock_ns
        self._next_follow_ns = 0
        self._copy_ring = copy_ring
        self._wait_heads = wait_heads

    # -- properties ---------------------------------------------------------------------

    @property
    def dtype(self) -> np.dtype:
        """Structured dtype of the records (see :mod:`shm.layout`)."""
        return self._live().dtype

    @property
    def codes(self) -> tuple[str, ...]:
        """Symbol table: a record's ``symbol`` field indexes this tuple."""
        m = self._live()
        m.refresh_symbols()
        return tuple(m.codes)

    @property
    def generation(self) -> int:
        return self._live().generation

    @property
    def writer_pid(self) -> int:
        return self._live().writer_pid

    @property
    def capacity(self) -> int:
        return self._live().capacity

    @property
    def head(self) -> int:
        """feed_seq of the newest record; pass it to :meth:`since` to start from now."""
        return self._live().q[L.H_HEAD]

    @property
    def heartbeat_ns(self) -> int:
        return self._live().q[L.H_HEARTBEAT_NS]

    @property
    def state(self) -> str:
        """ "live", "closed" (writer exited cleanly) or "superseded" (replaced)."""
        return L.STATE_NAMES.get(self._live().q[L.H_STATE], "unknown")

    @property
    def writer_alive(self) -> bool:
        """The writer process exists (pid and start time match) and its heartbeat is fresh."""
        m = self._follow_if_replaced()
        q = m.q
        if q[L.H_STATE] != L.STATE_LIVE:
            return False
        if not self._writer_process_exists(m):
            return False
        return self._clock_ns() - q[L.H_HEARTBEAT_NS] <= self._heartbeat_timeout_ns

    # -- reads --------------------------------------------------------------------------

    def latest(self, code: str) -> np.void | None:
        """A consistent copy of ``code``'s newest record, or None if it has none.

        None also when the writer died in the middle of this record and nothing newer
        exists. Raises UnknownSymbolError for codes outside the symbol table.
        """
        m = self._m
        if m is None:
            raise ValueError(f"shm reader for {self.name!r} is closed")
        if m.q[L.H_STATE] != L.STATE_LIVE:
            m = self._follow_if_replaced()
        slot = m.slots.get(code)
        if slot is None:
            self._symbol_slow(m, code)
            slot = m.slots[code]
        start, end, word = slot
        q = m.q
        buf = m.buf
        seq = q[word]
        if seq and not seq & 1:
            data = buf[start:end]
            if q[word] == seq:
                return _frombuffer(data, m.dtype)[0]
        for _ in range(_FAST_TRIES):
            seq = q[word]
            if seq & 1:
                continue
            if seq == 0:
                return None
            data = buf[start:end]
            if q[word] == seq:
                return _frombuffer(data, m.dtype)[0]
        data = self._copy_slow(m, start, code)
        return None if data is None else _frombuffer(data, m.dtype)[0]

    def latest_many(self, codes: Iterable[str]) -> np.ndarray:
        """Newest records of several codes as one structured array, in the given order.

        Rows of codes without data yet are all zero (``feed_seq == 0``).
        """
        m = self._live()
        if m.q[L.H_STATE] != L.STATE_LIVE:
            m = self._follow_if_replaced()
        codes = list(codes)
        size = m.size
        out = bytearray(len(codes) * size)
        q, buf = m.q, m.buf
        for row, code in enumerate(codes):
            slot = m.slots.get(code)
            if slot is None:
                self._symbol_slow(m, code)
                slot = m.slots[code]
            start, end, word = slot
            seq = q[word]
            if seq and not seq & 1:
                data = buf[start:end]
                if q[word] == seq:
                    out[row * size : row * size + size] = data
                    continue
            copied = self._copy_slow(m, start, code)
            if copied is not None:
                out[row * size : row * size + size] = copied
        return np.frombuffer(out, m.dtype)

    def since(self, cursor: int) -> tuple[np.ndarray, int, int]:
        """Records after ``cursor`` (a feed_seq), the new cursor, and how many were lost.

        Start with ``cursor=0`` for everything still in the ring, or ``reader.head`` for
        only what comes next. The records are a writable copy in feed order. ``overrun``
        counts the records after ``cursor`` that the ring no longer held (overwritten
        before this call could copy them). If a new writer restarted the feed sequence
        below ``cursor``, reading restarts at 0.
        """
        if cursor < 0:
            raise ValueError(f"cursor must be >= 0, got {cursor}")
        m = self._live()
        q = m.q
        if q[L.H_STATE] != L.STATE_LIVE and cursor >= q[L.H_HEAD]:
            m = self._follow_if_replaced()
            q = m.q
        head = q[L.H_HEAD]
        if cursor > head:
            cursor = 0
        if cursor == head:
            return m.no_records, head, 0
        capacity, size = m.capacity, m.size
        first = max(cursor + 1, head - capacity + 1)
        count = head - first + 1
        copy_ring = self._copy_ring
        if copy_ring is not None:
            copied = copy_ring(m.buf, m.ring_off, size, capacity, first, head)
            lost = count - len(copied) // size
            return np.frombuffer(copied, m.dtype), head, first - 1 - cursor + lost
        if count <= _SMALL_BATCH:
            return self._since_small(m, first, head, cursor)
        start = (first - 1) % capacity
        records = np.empty(count, m.dtype)
        out = records.view(np.uint8)
        chunk = min(count, capacity - start)
        out[: chunk * size] = m.ring_bytes[start * size : (start + chunk) * size]
        if chunk < count:
            out[chunk * size :] = m.ring_bytes[: (count - chunk) * size]
        positions = np.arange(first, head + 1, dtype=np.uint64)
        seq_now = m.ring_seq[(positions - 1) % capacity]
        seq_copied = records["seq"]
        valid = (seq_copied == positions * 2) & (seq_now == seq_copied)
        lost = count - int(np.count_nonzero(valid))
        if lost:
            records = records[valid]
        return records, head, first - 1 - cursor + lost

    def _since_small(
        self, m: _Mapping, first: int, head: int, cursor: int
    ) -> tuple[np.ndarray, int, int]:
        """since() for a few records: per-record seqlocked copies, no array arithmetic."""
        q, buf, size, capacity, ring_off = m.q, m.buf, m.size, m.capacity, m.ring_off
        out = bytearray((head - first + 1) * size)
        kept = 0
        for position in range(first, head + 1):
            start = ring_off + (position - 1) % capacity * size
            word = start >> 3
            if q[word] != 2 * position:
                continue  # overwritten by a newer record, or being overwritten now
            data = buf[start : start + size]
            if q[word] == 2 * position:
                out[kept * size : (kept + 1) * size] = data
                kept += 1
        lost = head - first + 1 - kept
        if lost:
            del out[kept * size :]
        return np.frombuffer(out, m.dtype), head, first - 1 - cursor + lost

    def age(self, code: str, now_ns: int | None = None) -> float:
        """Seconds since ``code``'s newest record was received; inf if it has none."""
        m = self._live()
        symbol = m.ids.get(code)
        if symbol is None:
            symbol = self._symbol_slow(m, code)
        offset = m.latest_off + symbol * m.size
        if m.q[offset >> 3] == 0:
            return math.inf
        # recv_ns is one aligned 8-byte word: a single load never tears.
        (recv_ns,) = _INT64.unpack_from(m.buf, offset + 16)
        now = self._clock_ns() if now_ns is None else now_ns
        return (now - recv_ns) / 1e9

    # -- waiting ------------------------------------------------------------------------

    def wait_for_update(
        self,
        code: str,
        after_seq: int = 0,
        timeout: float = 1.0,
        poll_interval: float | None = None,
    ) -> np.void | None:
        """Wait until ``code`` has a record with feed_seq > ``after_seq``; None on timeout.

        Waits for the code to appear in the symbol table too; ``poll_interval`` as in
        :meth:`wait_for_head`.
        """
        deadline = time.monotonic() + timeout
        while True:
            m = self._current()
            head = m.q[_HEAD]
            symbol = m.ids.get(code)
            if symbol is None:
                m.refresh_symbols()
                symbol = m.ids.get(code)
            if symbol is not None and m.q[m.index_word + symbol] > after_seq:
                record = self.latest(code)
                if record is not None and record["feed_seq"] > after_seq:
                    return record
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.wait_for_head(head, left, poll_interval)

    def wait_for_head(
        self,
        cursor: int,
        timeout: float = 1.0,
        poll_interval: float | None = None,
        *,
        spin: float = 0.0,
    ) -> int:
        """Wait until the head moves past ``cursor``; return the head (== cursor on timeout).

        ``poll_interval=None`` sleeps until the writer publishes a record or closes (a
        futex on the head word, woken by the writer) when the reader and the writer both
        have the C helpers of :mod:`shm.native`, after looking for ``spin`` seconds
        first; otherwise it polls every 0.5 ms. A number polls at that interval; 0 spins,
        which keeps a core busy.
        """
        return wait_for_heads((self,), (cursor,), timeout, poll_interval, spin=spin)[0]

    # -- lifecycle ----------------------------------------------------------------------

    def close(self) -> None:
        """Unmap this process's view; the segment itself is left untouched."""
        m, self._m = self._m, None
        if m is not None:
            m.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        if self._m is None:
            return f"SnapshotReader({self.name!r}, closed)"
        return f"SnapshotReader({self.name!r}, generation={self._m.generation}, head={self.head})"

    # -- internals ----------------------------------------------------------------------

    def _current(self) -> _Mapping:
        """The mapping, switched to a newer generation once this one is no longer live."""
        m = self._live()
        if m.q[L.H_STATE] != L.STATE_LIVE:
            m = self._follow_if_replaced()
        return m

    def _live(self) -> _Mapping:
        m = self._m
        if m is None:
            raise ValueError(f"shm reader for {self.name!r} is closed")
        return m

    def _symbol_slow(self, m: _Mapping, code: str) -> int:
        m.refresh_symbols()
        symbol = m.ids.get(code)
        if symbol is None:
            raise UnknownSymbolError(self.name, code)
        return symbol

    def _writer_process_exists(self, m: _Mapping) -> bool:
        if m.writer_start_ticks:
            return process_start_ticks(m.writer_pid) == m.writer_start_ticks
        try:
            os.kill(m.writer_pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def _copy_slow(self, m: _Mapping, offset: int, what: str) -> bytes | None:
        """Retry a seqlocked copy, yielding the CPU, until the read deadline."""
        q, word, end = m.q, offset >> 3, offset + m.size
        started = time.monotonic()
        while True:
            seq = q[word]
            if seq == 0:
                return None
            if not seq & 1:
                data = m.buf[offset:end]
                if q[word] == seq:
                    return data
            elif not self._writer_process_exists(m):
                # The writer died inside this record; it will never be completed.
                return None
            waited = time.monotonic() - started
            if waited > self._read_timeout:
                raise InconsistentReadError(self.name, f"the record of {what!r}", waited)
            time.sleep(0)

    def _follow_if_replaced(self) -> _Mapping:
        """Switch to a newer generation published under the same name, if there is one."""
        m = self._live()
        now = time.monotonic_ns()
        if now < self._next_follow_ns:
            return m
        self._next_follow_ns = now + _FOLLOW_CHECK_NS
        inode = current_inode(segment_path(self.name))
        if inode is None or inode == m.inode:
            return m
        fresh = _open_mapping(self.name, self.kind)
        if fresh is None:
            return m
        self._m = fresh
        m.close()
        return fresh


def wait_for_heads(
    readers: Sequence[SnapshotReader],
    cursors: Sequence[int],
    timeout: float = 1.0,
    poll_interval: float | None = None,
    *,
    spin: float = 0.0,
) -> list[int]:
    """Wait until any reader's head moves past its cursor; every reader's head, in order
    (each equal to its cursor on timeout). Waiting is as in
    :meth:`SnapshotReader.wait_for_head`: one sleep covers all the segments (up to
    ``shm.native.MAX_WAIT_SEGMENTS``), so a strategy of tickers and order books waits for
    whichever comes first."""
    if not readers or len(readers) != len(cursors):
        raise ValueError(
            f"wait_for_heads needs one cursor per reader, got {len(readers)} readers "
            f"and {len(cursors)} cursors"
        )
    if any(cursor < 0 for cursor in cursors):
        raise ValueError(f"cursors must be >= 0, got {list(cursors)}")
    deadline = time.monotonic() + timeout
    sleep = readers[0]._wait_heads
    if (
        poll_interval is not None
        or len(readers) > _native.MAX_WAIT_SEGMENTS
        or any(reader._wait_heads is None for reader in readers)
    ):
        sleep = None
    interval = _DEFAULT_POLL_INTERVAL if poll_interval is None else poll_interval
    while True:
        mappings = [reader._current() for reader in readers]
        words = [m.q for m in mappings]
        heads = [q[_HEAD] for q in words]
        if any(head != cursor for head, cursor in zip(heads, cursors, strict=True)):
            return heads
        left = deadline - time.monotonic()
        if left <= 0:
            return heads
        if sleep is not None:
            headers = [m.header_to_sleep_on() for m in mappings]
            if None not in headers:
                if sleep(headers, cursors, min(left, _SLEEP_SLICE), spin) != _WAIT_UNSUPPORTED:
                    continue
                sleep = None
        if interval > 0:
            time.sleep(min(interval, left))
            continue
        # Several plain loads of the head words per clock check keep a spinning reader's
        # notice delay at a fraction of a microsecond.
        for _ in range(_SPIN_READS):
            for q, cursor in zip(words, cursors, strict=True):
                if q[_HEAD] != cursor:
                    return [q[_HEAD] for q in words]


def ring_on_heads(
    readers: Sequence[SnapshotReader],
    cursors: Sequence[int],
    answered: bool,
    answer_fd: int,
    ring_fd: int,
    timeout: float,
) -> tuple[bool, list[int]] | None:
    """A doorbell over the readers' heads, for up to ``timeout`` s, in C with the GIL
    released: unless ``answered``, wait until ``answer_fd`` is readable and take it; sleep
    until a head moves past its cursor; write 1 to ``ring_fd`` (an eventfd); take the
    heads as cursors; again until the timeout. Returns ``(answered, heads)``, early when a
    segment stops being live (call again: the readers follow a successor). While it waits
    for the answer it is not asleep on a head, so the writer makes no wake calls for it.

    None when this cannot run here (no C helpers on either side, a segment not live, more
    than ``shm.native.MAX_WAIT_SEGMENTS`` readers, a kernel without futex_waitv): the
    caller waits another way."""
    doorbell = _native.doorbell
    if (
        doorbell is None
        or not readers
        or len(readers) > _native.MAX_WAIT_SEGMENTS
        or len(readers) != len(cursors)
        or any(reader._wait_heads is None for reader in readers)
    ):
        return None
    headers = [reader._current().header_to_sleep_on() for reader in readers]
    if None in headers:
        return None
    return doorbell(headers, cursors, answered, answer_fd, ring_fd, timeout)


def attach(
    prefix: str,
    kind: str,
    timeout: float = 5.0,
    *,
    poll_interval: float = 0.01,
    heartbeat_timeout: float = 5.0,
    read_timeout: float = 0.1,
    clock_ns: Callable[[], int] = time.time_ns,
    native: bool | None = None,
) -> SnapshotReader:
    """Attach to ``<prefix>.<kind>``, waiting up to ``timeout`` s for a writer to create it.

    ``heartbeat_timeout``: a writer whose heartbeat is older counts as dead.
    ``read_timeout``: how long one record read may wait for a writer stuck inside it.
    ``clock_ns``: wall clock for heartbeat and age (the writer's ``recv_ns`` clock).
    ``native``: copy ring records and sleep on the head in C (:mod:`shm.native`) when
    built (None), always (True: RuntimeError if it is not built) or never (False: waits
    poll); the results are the same.
    Raises SegmentNotFoundError on timeout, LayoutMismatchError for a foreign layout.
    """
    if native is True and _native.copy_ring is None:
        raise RuntimeError(f"shm C ring copy is unavailable: {_native.READER_STATUS}")
    name = segment_name(prefix, kind)
    deadline = time.monotonic() + timeout
    while True:
        mapping = _open_mapping(name, kind)
        if mapping is not None:
            return SnapshotReader(
                name,
                kind,
                mapping,
                heartbeat_timeout=heartbeat_timeout,
                read_timeout=read_timeout,
                clock_ns=clock_ns,
                copy_ring=None if native is False else _native.copy_ring,
                wait_heads=None if native is False else _native.wait_heads,
            )
        if time.monotonic() >= deadline:
            raise SegmentNotFoundError(name, timeout)
        time.sleep(poll_interval)
