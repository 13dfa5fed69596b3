"""The reader's C ring copy (shm/_fastread.c) against the Python one.

Two readers of one ring, one copying in C and one in Python, must return the same
records, cursors and loss counts for any cursor, with the ring wrapping and with slots
caught mid-write or already rewritten.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

import shm
from shm import native
from tests import shm_helpers as H

CODES = ["KRW-BTC", "KRW-ETH", "KRW-XRP"]
pytestmark = pytest.mark.timeout(60)


def test_the_c_copy_is_built_and_in_use() -> None:
    if native.turned_off():
        pytest.skip(f"{native.DISABLE_ENV} is set")
    assert native.copy_ring is not None, (
        f"shm C ring copy {native.READER_STATUS}: install a C compiler and the Python "
        f"headers and reinstall (make test), or set {native.DISABLE_ENV}=1"
    )


def c_copy() -> object:
    if native.copy_ring is None:
        pytest.skip(native.READER_STATUS)
    return native.copy_ring


def field_bytes(records: np.ndarray) -> list[bytes]:
    """Every field of every record as stored (NaN included); not the padding between
    fields, which numpy does not copy when it selects records."""
    return [records[name].tobytes() for name in records.dtype.names]


def write_one(writer: shm.SnapshotWriter, kind: str, k: int) -> None:
    code = CODES[k % len(CODES)]
    if kind == "ticker":
        writer.write(H.make_ticker(code, k, k % len(CODES)), recv_ns=k)
    else:
        writer.write(H.make_orderbook(code, k, 1 + k % 30), recv_ns=k)


@pytest.mark.parametrize("kind", ["ticker", "orderbook"])
def test_since_gives_the_same_records_as_python_through_wraps_and_torn_slots(
    prefix: str, kind: str
) -> None:
    c_copy()
    rng = random.Random(11)
    capacity = 32
    cls = shm.TickerWriter if kind == "ticker" else shm.OrderbookWriter
    with cls(prefix, CODES, capacity=capacity) as writer:
        fast = shm.attach(prefix, kind, timeout=1, native=True)
        slow = shm.attach(prefix, kind, timeout=1, native=False)
        size = writer.dtype.itemsize
        k = 0
        checked = torn = 0
        for _ in range(80):
            for _ in range(rng.choice([0, 1, 2, 5, 40])):
                write_one(writer, kind, k)
                k += 1
            head = writer.head
            for _ in range(rng.randint(0, 3) if head else 0):
                # A slot the writer is inside (odd) or has filled with a newer record.
                position = rng.randint(max(1, head - capacity + 1), head)
                word = (writer._ring_off + (position - 1) % capacity * size) >> 3
                writer._q[word] = rng.choice([2 * position - 1, 2 * (position + capacity)])
                torn += 1
            cursors = {0, head, max(head - 1, 0), max(head - 20, 0), rng.randint(0, head + 3)}
            for cursor in sorted(cursors):
                got_fast = fast.since(cursor)
                got_slow = slow.since(cursor)
                assert field_bytes(got_fast[0]) == field_bytes(got_slow[0]), (cursor, head)
                assert got_fast[1:] == got_slow[1:], (cursor, head)
                assert got_fast[0].dtype == got_slow[0].dtype and got_fast[0].flags.writeable
                checked += len(got_fast[0])
        fast.close()
        slow.close()
    assert checked > 1000 and torn > 50


def test_a_ring_read_keeps_only_records_complete_while_copied(prefix: str) -> None:
    copy_ring = c_copy()
    with shm.TickerWriter(prefix, CODES, capacity=8) as writer:
        for k in range(12):
            write_one(writer, "ticker", k)
        size = writer.dtype.itemsize
        ring_off = writer._ring_off

        def word(position: int) -> int:
            return (ring_off + (position - 1) % 8 * size) >> 3

        writer._q[word(10)] = 19  # the writer is inside feed_seq 10
        writer._q[word(11)] = 2 * 19  # feed_seq 11's slot already holds feed_seq 19
        with shm.attach(prefix, "ticker", timeout=1) as reader:
            copied = copy_ring(reader._m.buf, ring_off, size, 8, 5, 12)
        seqs = [
            int.from_bytes(copied[i : i + 8], "little") // 2 for i in range(0, len(copied), size)
        ]
        assert seqs == [5, 6, 7, 8, 9, 12]


def test_bad_arguments_raise_instead_of_reading_outside_the_buffer(prefix: str) -> None:
    copy_ring = c_copy()
    with shm.TickerWriter(prefix, CODES, capacity=8) as writer:
        for k in range(3):
            write_one(writer, "ticker", k)
        size, ring_off = writer.dtype.itemsize, writer._ring_off
        with shm.attach(prefix, "ticker", timeout=1) as reader:
            buf = reader._m.buf
            assert len(copy_ring(buf, ring_off, size, 8, 1, 3)) == 3 * size
            bad = [
                (ring_off, size, 8, 0, 3),  # feed_seq starts at 1
                (ring_off, size, 8, 3, 2),  # empty range
                (ring_off, size, 8, 1, 9),  # more records than the ring holds
                (ring_off + 4, size, 8, 1, 3),  # unaligned ring
                (ring_off, size + 4, 8, 1, 3),  # unaligned records
                (ring_off, size, 0, 1, 1),  # no capacity
                (ring_off, size, 1 << 40, 1, 3),  # a ring bigger than the buffer
                (len(buf) - size + 8, size, 8, 1, 3),  # a ring past the buffer's end
            ]
            for args in bad:
                with pytest.raises(ValueError, match="copy_ring"):
                    copy_ring(buf, *args)
            with pytest.raises(TypeError, match="6 arguments"):
                copy_ring(buf, ring_off, size, 8, 1)
            with pytest.raises(TypeError):
                copy_ring("not a buffer", ring_off, size, 8, 1, 3)
            with pytest.raises(OverflowError):
                copy_ring(buf, ring_off, size, 8, 1, 1 << 70)


def test_attach_can_insist_on_or_refuse_the_c_copy(prefix: str) -> None:
    with shm.TickerWriter(prefix, CODES, capacity=8):
        with shm.attach(prefix, "ticker", timeout=1, native=False) as reader:
            assert reader._copy_ring is None
        if native.copy_ring is None:
            with pytest.raises(RuntimeError, match="unavailable"):
                shm.attach(prefix, "ticker", timeout=1, native=True)
        else:
            with shm.attach(prefix, "ticker", timeout=1, native=True) as reader:
                assert reader._copy_ring is native.copy_ring
