"""Segment files in /dev/shm: naming, creation with exclusive publication, header access.

Segments are plain files in ``/dev/shm`` (what POSIX ``shm_open`` uses on Linux), opened
with ``os.open`` and mapped with ``mmap``. ``multiprocessing.shared_memory`` is not used:
on Python < 3.13 it registers every segment a process touches with the resource tracker,
which unlinks it when that process exits; readers here never register anything and map
the file read-only, so a reader cannot destroy a segment.

One writer per segment is enforced with ``flock(LOCK_EX)`` held on the segment file for
the writer's lifetime. The kernel drops the lock when the writer dies, even by SIGKILL,
so a lock that can be taken marks a stale segment, without trusting pids that the system
may have reused. A new segment is fully built under a temporary name, locked, and only
then published under its real name (``link`` when the name is free, atomic ``rename``
over a stale one), so no reader ever maps a half-initialised header.

The writer reserves all of a segment's memory when it creates it (``posix_fallocate``):
a /dev/shm without room for it fails the start with :class:`SegmentSpaceError`, where a
sparse file would let the writer die of SIGBUS at the first write into a page tmpfs cannot
supply. Writer and readers map with ``MAP_POPULATE``, so no record write or read pays the
page fault of a first touch (about 3.5 us for the writer, 2 us for a reader here): the
first lap round a ring is as fast as the later ones.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import secrets
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from shm import layout as L
from shm import native as _native
from shm.errors import LayoutMismatchError, SegmentOwnedError, SegmentSpaceError

SHM_DIR = "/dev/shm"
_MAP_FLAGS = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
SEGMENT_MODE = 0o600
_NAME_MAX = 200


def segment_name(prefix: str, kind: str) -> str:
    """``<prefix>.<kind>``, the segment's file name in /dev/shm (contract)."""
    if kind not in L.KIND_IDS:
        raise ValueError(f"unknown segment kind {kind!r}; expected one of {', '.join(L.KIND_IDS)}")
    if not prefix or "/" in prefix or "\x00" in prefix or prefix.startswith("."):
        raise ValueError(f"invalid shm prefix {prefix!r}: non-empty, no '/', not starting with '.'")
    name = f"{prefix}.{kind}"
    if len(name.encode()) > _NAME_MAX:
        raise ValueError(f"shm prefix {prefix!r} is too long")
    return name


def segment_path(name: str) -> str:
    return os.path.join(SHM_DIR, name)


def process_start_ticks(pid: int) -> int | None:
    """Start time of a running process in clock ticks since boot; None if it is gone.

    A zombie (killed, not yet reaped) counts as gone. Comparing start times guards a pid
    check against pid reuse.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat_file:
            data = stat_file.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = data[data.rindex(b")") + 2 :].split()
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


def encode_symbol(segment: str, code: str) -> bytes:
    raw = code.encode("ascii") if code.isascii() else b""
    if not raw or len(raw) >= L.SYMBOL_SIZE or b"\x00" in raw:
        raise ValueError(
            f"market code {code!r} for shm segment {segment!r} must be 1..{L.SYMBOL_SIZE - 1} "
            "ASCII characters"
        )
    return raw


@dataclass(frozen=True, slots=True)
class HeaderInfo:
    """A snapshot of a segment header's words."""

    version: int
    kind_id: int
    state: int
    generation: int
    writer_pid: int
    writer_start_ticks: int
    created_ns: int
    heartbeat_ns: int
    head: int
    n_symbols: int
    descr_len: int
    geometry: L.SegmentGeometry


def read_header(name: str, buf: mmap.mmap) -> HeaderInfo:
    """Parse and sanity-check a mapped header; raise LayoutMismatchError if it is not ours."""
    if len(buf) < L.HEADER_SIZE + L.DESCR_SIZE or buf[: len(L.MAGIC)] != L.MAGIC:
        raise LayoutMismatchError(name, "not an upfeed snapshot segment (bad magic or size)")
    # struct, not a numpy view: a view would pin the mapping open if this raises.
    w = struct.unpack_from(f"<{L.HEADER_SIZE // 8}Q", buf, 0)
    try:
        geometry = L.SegmentGeometry.compute(
            w[L.H_RECORD_SIZE], w[L.H_CAPACITY], w[L.H_MAX_SYMBOLS]
        )
    except ValueError as exc:
        raise LayoutMismatchError(name, str(exc)) from exc
    stored = (
        w[L.H_SYMTAB_OFF],
        w[L.H_INDEX_OFF],
        w[L.H_LATEST_OFF],
        w[L.H_RING_OFF],
        w[L.H_TOTAL_SIZE],
    )
    expected = (
        geometry.symtab_off,
        geometry.index_off,
        geometry.latest_off,
        geometry.ring_off,
        geometry.total_size,
    )
    if stored != expected or len(buf) < geometry.total_size:
        raise LayoutMismatchError(name, f"section offsets {stored} != {expected}")
    return HeaderInfo(
        version=w[L.H_VERSION],
        kind_id=w[L.H_KIND],
        state=w[L.H_STATE],
        generation=w[L.H_GENERATION],
        writer_pid=w[L.H_WRITER_PID],
        writer_start_ticks=w[L.H_WRITER_START],
        created_ns=w[L.H_CREATED_NS],
        heartbeat_ns=w[L.H_HEARTBEAT_NS],
        head=w[L.H_HEAD],
        n_symbols=w[L.H_N_SYMBOLS],
        descr_len=w[L.H_DESCR_LEN],
        geometry=geometry,
    )


def read_descr(buf: mmap.mmap, info: HeaderInfo) -> bytes:
    return buf[L.HEADER_SIZE : L.HEADER_SIZE + info.descr_len]


def read_symbols(buf: mmap.mmap, info: HeaderInfo, count: int) -> list[str]:
    off = info.geometry.symtab_off
    count = min(count, info.geometry.max_symbols)
    return [
        buf[off + i * L.SYMBOL_SIZE : off + (i + 1) * L.SYMBOL_SIZE].rstrip(b"\x00").decode("ascii")
        for i in range(count)
    ]


@dataclass(frozen=True, slots=True)
class Continuation:
    """What a new generation inherits from the stale segment it replaces."""

    head: int
    codes: tuple[str, ...]


class _StaleSegment:
    """An existing segment whose writer is gone, locked by us until it is replaced."""

    def __init__(self, fd: int, continuation: Continuation | None) -> None:
        self.fd = fd
        self.continuation = continuation

    def mark_superseded(self) -> None:
        # Readers still mapping the old file see this word change and look for the new one.
        with mmap.mmap(self.fd, L.HEADER_SIZE) as header:
            header[L.H_STATE * 8 : L.H_STATE * 8 + 8] = L.STATE_SUPERSEDED.to_bytes(8, "little")
            with memoryview(header) as view:
                _native.wake_readers(view)

    def close(self) -> None:
        os.close(self.fd)


def _probe_existing(name: str, path: str, kind: str, dtype: np.dtype) -> _StaleSegment | None:
    """None if the name is free; a locked stale segment; or SegmentOwnedError if live."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _peek_pid(fd)
            raise SegmentOwnedError(name, pid) from None
        size = os.fstat(fd).st_size
        if size < L.HEADER_SIZE + L.DESCR_SIZE:
            raise LayoutMismatchError(name, f"existing file is {size} bytes, not a segment")
        with mmap.mmap(fd, size, prot=mmap.PROT_READ) as buf:
            if buf[: len(L.MAGIC)] != L.MAGIC:
                raise LayoutMismatchError(name, "not an upfeed segment; refusing to replace it")
            continuation = _continuation(name, buf, kind, dtype)
    except BaseException:
        os.close(fd)
        raise
    return _StaleSegment(fd, continuation)


def _continuation(name: str, buf: mmap.mmap, kind: str, dtype: np.dtype) -> Continuation | None:
    """Head and symbols of a stale segment of the same layout; None if it differs or is
    damaged (it is replaced all the same, starting a fresh feed sequence)."""
    try:
        info = read_header(name, buf)
        if (
            info.version != L.LAYOUT_VERSION
            or info.kind_id != L.KIND_IDS[kind]
            or info.geometry.record_size != dtype.itemsize
            or L.dtype_from_descr_text(read_descr(buf, info)) != dtype
        ):
            return None
        return Continuation(info.head, tuple(read_symbols(buf, info, info.n_symbols)))
    except (LayoutMismatchError, ValueError):
        return None


def _peek_pid(fd: int) -> int:
    header = os.pread(fd, L.HEADER_SIZE, 0)
    if len(header) < L.HEADER_SIZE:
        return 0
    return int.from_bytes(header[L.H_WRITER_PID * 8 : L.H_WRITER_PID * 8 + 8], "little")


class WritableSegment:
    """A published segment mapped read-write, with this process holding its writer lock."""

    def __init__(
        self,
        name: str,
        path: str,
        *,
        fd: int,
        buf: mmap.mmap,
        geometry: L.SegmentGeometry,
        inode: int,
        replaced_stale: bool,
    ) -> None:
        self.name = name
        self.path = path
        self.fd = fd
        self.buf = buf
        self.geometry = geometry
        self.inode = inode
        self.replaced_stale = replaced_stale

    def write_symbol(self, index: int, raw: bytes) -> None:
        off = self.geometry.symtab_off + index * L.SYMBOL_SIZE
        self.buf[off : off + L.SYMBOL_SIZE] = raw.ljust(L.SYMBOL_SIZE, b"\x00")

    def still_published(self) -> bool:
        try:
            return os.stat(self.path).st_ino == self.inode
        except FileNotFoundError:
            return False

    def close(self, unlink: bool) -> None:
        if unlink and self.still_published():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        self.buf.close()
        os.close(self.fd)  # releases the writer lock


def create_segment(
    name: str,
    kind: str,
    codes: Sequence[str],
    capacity: int,
    max_symbols: int,
    *,
    clock_ns: Callable[[], int],
    continue_stale: bool = True,
) -> tuple[WritableSegment, tuple[str, ...], int]:
    """Build, lock and publish a new generation of ``name``.

    Returns the segment, its symbol table and its initial head. When a stale segment of a
    dead writer holds the name, it is replaced; if its layout matches, the new generation
    keeps its symbol ids and continues its feed sequence (so readers' cursors stay valid).
    """
    dtype = L.RECORD_DTYPES[kind]
    path = segment_path(name)
    raws = [encode_symbol(name, c) for c in codes]
    if len(set(raws)) != len(raws):
        raise ValueError(f"duplicate market codes for shm segment {name!r}")
    for _attempt in range(3):
        stale = _probe_existing(name, path, kind, dtype)
        try:
            carried = stale.continuation if stale is not None and continue_stale else None
            table = list(carried.codes) if carried else []
            table += [c for c in codes if c not in table]
            head = carried.head if carried else 0
            geometry = L.SegmentGeometry.compute(
                dtype.itemsize, capacity, max(max_symbols, len(table))
            )
            segment = _build(
                name,
                path,
                kind=kind,
                dtype=dtype,
                geometry=geometry,
                table=table,
                head=head,
                clock_ns=clock_ns,
            )
            tmp_path = segment.path
            try:
                if stale is None:
                    try:
                        os.link(tmp_path, path)
                    except FileExistsError:
                        segment.close(unlink=False)
                        continue
                else:
                    os.rename(tmp_path, path)
                    stale.mark_superseded()
            except BaseException:
                if not segment.buf.closed:
                    segment.close(unlink=False)
                raise
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp_path)
            segment.path = path
            segment.replaced_stale = stale is not None
            return segment, tuple(table), head
        finally:
            if stale is not None:
                stale.close()
    raise SegmentOwnedError(name, 0)


def _build(
    name: str,
    path: str,
    *,
    kind: str,
    dtype: np.dtype,
    geometry: L.SegmentGeometry,
    table: list[str],
    head: int,
    clock_ns: Callable[[], int],
) -> WritableSegment:
    tmp_path = f"{path}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp_path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, SEGMENT_MODE)
    try:
        os.fchmod(fd, SEGMENT_MODE)
        os.ftruncate(fd, geometry.total_size)
        _reserve(fd, name, geometry.total_size)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        buf = mmap.mmap(fd, geometry.total_size, flags=_MAP_FLAGS)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_path)
        raise
    segment = WritableSegment(
        name,
        tmp_path,
        fd=fd,
        buf=buf,
        geometry=geometry,
        inode=os.fstat(fd).st_ino,
        replaced_stale=False,
    )
    try:
        _initialise(segment, kind=kind, dtype=dtype, table=table, head=head, clock_ns=clock_ns)
    except BaseException:
        segment.close(unlink=False)
        os.unlink(tmp_path)
        raise
    return segment


def _reserve(fd: int, name: str, size: int) -> None:
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):
            return  # a file system that cannot reserve: the file stays sparse
        if exc.errno not in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            raise
        raise SegmentSpaceError(name, size, _free_bytes(fd), os.strerror(exc.errno)) from exc


def _free_bytes(fd: int) -> int | None:
    try:
        stat = os.fstatvfs(fd)
    except OSError:
        return None
    return stat.f_bavail * stat.f_frsize


def _initialise(
    segment: WritableSegment,
    *,
    kind: str,
    dtype: np.dtype,
    table: list[str],
    head: int,
    clock_ns: Callable[[], int],
) -> None:
    buf, geometry, name = segment.buf, segment.geometry, segment.name
    descr = L.dtype_descr_text(dtype)
    if len(descr) > L.DESCR_SIZE:
        raise AssertionError("record dtype description does not fit the header")
    buf[L.HEADER_SIZE : L.HEADER_SIZE + len(descr)] = descr
    for index, code in enumerate(table):
        segment.write_symbol(index, encode_symbol(name, code))
    now = clock_ns()
    start_ticks = process_start_ticks(os.getpid()) or 0
    words = {
        L.H_VERSION: L.LAYOUT_VERSION,
        L.H_KIND: L.KIND_IDS[kind],
        L.H_STATE: L.STATE_LIVE,
        L.H_GENERATION: secrets.randbits(63) or 1,
        L.H_WRITER_PID: os.getpid(),
        L.H_WRITER_START: start_ticks,
        L.H_CREATED_NS: now,
        L.H_HEARTBEAT_NS: now,
        L.H_HEAD: head,
        L.H_RECORD_SIZE: geometry.record_size,
        L.H_CAPACITY: geometry.capacity,
        L.H_MAX_SYMBOLS: geometry.max_symbols,
        L.H_N_SYMBOLS: len(table),
        L.H_DESCR_LEN: len(descr),
        L.H_SYMTAB_OFF: geometry.symtab_off,
        L.H_INDEX_OFF: geometry.index_off,
        L.H_LATEST_OFF: geometry.latest_off,
        L.H_RING_OFF: geometry.ring_off,
        L.H_TOTAL_SIZE: geometry.total_size,
    }
    for index, value in words.items():
        buf[index * 8 : index * 8 + 8] = value.to_bytes(8, "little")
    buf[: len(L.MAGIC)] = L.MAGIC


def open_readonly(path: str) -> tuple[mmap.mmap, int] | None:
    """Map a published segment read-only; None if the name does not exist (yet)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        stat = os.fstat(fd)
        if stat.st_size == 0:
            return None
        try:
            buf = mmap.mmap(fd, stat.st_size, flags=_MAP_FLAGS, prot=mmap.PROT_READ)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                return None
            raise
        return buf, stat.st_ino
    finally:
        os.close(fd)


def open_header_for_waiting(path: str, inode: int) -> mmap.mmap | None:
    """The header of the segment file ``inode`` at ``path``, mapped writable for a reader
    that sleeps on its head (the waiter count is the one word such a reader writes);
    None if the path now names another file or cannot be opened for writing."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if os.fstat(fd).st_ino != inode:
            return None
        return mmap.mmap(fd, L.HEADER_SIZE)
    except OSError:
        return None
    finally:
        os.close(fd)


def current_inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return None


def sleepers_of(buf: mmap.mmap) -> dict[str, object]:
    """What a segment's header says about readers sleeping on its head: whether its writer
    wakes them, how many count themselves asleep (a reader killed asleep stays counted),
    and the writer's wakes in a row that found nobody (it stops waking at 64)."""
    waiters, wakes, misses = struct.unpack_from("<3Q", buf, L.H_WAITERS * 8)
    return {"wakes_readers": wakes == 1, "sleeping_readers": waiters, "wake_misses": misses}


def describe(prefix: str, kind: str) -> dict[str, object] | None:
    """Header facts of ``<prefix>.<kind>`` for status pages; None if it does not exist.

    Reads the header only (no records) from a read-only mapping that is closed again.
    """
    name = segment_name(prefix, kind)
    opened = open_readonly(segment_path(name))
    if opened is None:
        return None
    buf, inode = opened
    try:
        info = read_header(name, buf)
        codes = read_symbols(buf, info, info.n_symbols)
        sleepers = sleepers_of(buf)
    finally:
        buf.close()
    return {
        "name": name,
        "path": segment_path(name),
        "kind": kind,
        "layout_version": info.version,
        "state": L.STATE_NAMES.get(info.state, "unknown"),
        "generation": info.generation,
        "writer_pid": info.writer_pid,
        "writer_running": process_start_ticks(info.writer_pid) == info.writer_start_ticks,
        "heartbeat_ns": info.heartbeat_ns,
        "created_ns": info.created_ns,
        "head": info.head,
        "capacity": info.geometry.capacity,
        "record_size": info.geometry.record_size,
        "max_symbols": info.geometry.max_symbols,
        "codes": codes,
        "size_bytes": info.geometry.total_size,
        "inode": inode,
        **sleepers,
    }
