"""Readers that sleep until the writer publishes (a futex on the head, shm/_notify.h).

The sleeps are cut into slices (``shm.reader._SLEEP_SLICE``) so that a state change
nobody announced is seen anyway; the tests make the slice longer than any wait, so that
a wake-up the writer failed to give shows as a wait that ran to its timeout.
"""

from __future__ import annotations

import contextlib
import mmap
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

import shm
from shm import layout as L
from shm import native
from shm import reader as reader_module
from tests import shm_helpers as H

SPAWN = multiprocessing.get_context("spawn")
# Longer than any wait in this file: only a wake-up ends a sleep early.
NO_SLICE = 120.0
WAIT = 20.0

pytestmark = pytest.mark.skipif(
    native.wait_heads is None or not native.available(),
    reason=f"shm C helpers not in use: {native.STATUS} / {native.READER_STATUS}",
)


@pytest.fixture(autouse=True)
def one_long_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reader_module, "_SLEEP_SLICE", NO_SLICE)


@pytest.fixture
def ticker(prefix: str) -> Iterator[tuple[shm.SnapshotWriter, shm.SnapshotReader]]:
    writer = shm.TickerWriter(prefix, ["KRW-BTC"], capacity=64)
    reader = shm.attach(prefix, "ticker", timeout=5)
    yield writer, reader
    reader.close()
    writer.close()


def _words(reader: shm.SnapshotReader) -> memoryview:
    return reader._live().q


def _later(seconds: float, action: object) -> threading.Thread:
    def run() -> None:
        time.sleep(seconds)
        action()  # type: ignore[operator]

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _when_asleep(writer: shm.SnapshotWriter, action: object, sleepers: int = 1) -> threading.Thread:
    """Run ``action`` in a thread once ``writer``'s segment counts ``sleepers`` readers."""
    return _when_asleep_on(writer._q, action, sleepers)


def _when_asleep_on(words: memoryview, action: object, sleepers: int = 1) -> threading.Thread:
    """Run ``action`` in a thread once the header ``words`` count ``sleepers`` readers."""

    def run() -> None:
        deadline = time.monotonic() + WAIT
        while words[L.H_WAITERS] < sleepers and time.monotonic() < deadline:
            time.sleep(0.001)
        action()  # type: ignore[operator]

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_a_writer_with_the_c_helpers_says_it_wakes_readers(prefix: str) -> None:
    with shm.TickerWriter(prefix, ["KRW-BTC"]) as waking, shm.attach(prefix, "ticker") as r:
        assert waking.native and _words(r)[L.H_WAKES_READERS] == 1
    with (
        shm.TickerWriter(prefix, ["KRW-BTC"], native=False),
        shm.attach(prefix, "ticker") as r,
    ):
        assert _words(r)[L.H_WAKES_READERS] == 0


@pytest.mark.timeout(60)
def test_a_sleeping_reader_is_woken_by_the_next_record(ticker: tuple) -> None:
    writer, reader = ticker
    _when_asleep(writer, lambda: writer.write(H.make_ticker("KRW-BTC", 1, 0), time.time_ns()))
    started = time.monotonic()
    assert reader.wait_for_head(0, timeout=WAIT) == 1
    assert time.monotonic() - started < WAIT / 2, "woken by the timeout, not the writer"
    assert _words(reader)[L.H_WAITERS] == 0


@pytest.mark.timeout(60)
def test_a_record_the_python_path_stores_wakes_a_sleeping_reader(ticker: tuple) -> None:
    writer, reader = ticker
    message = H.make_ticker("KRW-BTC", 1, 0)
    message.change = "SIDEWAYS"  # outside the C store's enum map: stored by Python
    _when_asleep(writer, lambda: writer.write(message, time.time_ns()))
    started = time.monotonic()
    assert reader.wait_for_head(0, timeout=WAIT) == 1
    assert time.monotonic() - started < WAIT / 2, "woken by the timeout, not the writer"
    assert reader.latest("KRW-BTC")["change"] == 0


@pytest.mark.timeout(30)
def test_a_wait_with_nothing_written_times_out_and_leaves_no_waiter(ticker: tuple) -> None:
    _, reader = ticker
    started = time.monotonic()
    assert reader.wait_for_head(0, timeout=0.2) == 0
    assert time.monotonic() - started >= 0.2
    assert _words(reader)[L.H_WAITERS] == 0
    assert reader.wait_for_update("KRW-BTC", 0, timeout=0.05) is None


@pytest.mark.timeout(60)
def test_closing_the_writer_wakes_a_sleeping_reader(prefix: str) -> None:
    writer = shm.TickerWriter(prefix, ["KRW-BTC"])
    reader = shm.attach(prefix, "ticker")
    words = reader._live().q
    heads: list[int] = []
    waiting = threading.Thread(target=lambda: heads.append(reader.wait_for_head(0, WAIT)))
    successor = None
    try:
        waiting.start()
        _when_asleep(writer, writer.close).join(WAIT)
        # Woken by the close, the reader stops sleeping on the head (a closed segment is
        # polled for its successor); without the wake it would sleep until its timeout.
        deadline = time.monotonic() + WAIT / 2
        while words[L.H_WAITERS] != 0 and time.monotonic() < deadline:
            time.sleep(0.001)
        assert words[L.H_WAITERS] == 0, "the close did not wake the sleeping reader"
        successor = shm.TickerWriter(prefix, ["KRW-BTC"])
        successor.write(H.make_ticker("KRW-BTC", 1, 0), 0)
        waiting.join(WAIT)
        assert heads == [1]
    finally:
        writer.close()
        waiting.join(WAIT)
        reader.close()
        if successor is not None:
            successor.close()


@contextlib.contextmanager
def _paced_writer(
    prefix: str,
    kinds: list[str],
    count: int,
    max_pause_us: float,
    native: bool,
    acknowledged: object = None,
    burst: int = 1,
) -> Iterator[SimpleNamespace]:
    """A child process running H.paced_writer_main: ``process``, ``results``, ``go`` and
    ``release``; on the way out a living child is let go and joined, and killed if it
    still runs."""
    child = SimpleNamespace(results=SPAWN.Queue(), go=SPAWN.Event(), release=SPAWN.Event())
    child.process = SPAWN.Process(
        target=H.paced_writer_main,
        args=(
            *(prefix, kinds, count, max_pause_us, native),
            *(child.results, child.go, child.release, acknowledged, burst),
        ),
    )
    child.process.start()
    try:
        yield child
    finally:
        # A child killed inside its wait on an event can leave that event's lock held
        # (multiprocessing documents this): a dead child's events are left alone.
        if child.process.is_alive():
            child.go.set()
            child.release.set()
            child.process.join(20)
        H.kill_hard(child.process)


@pytest.mark.timeout(90)
def test_a_reader_asleep_on_a_dead_writer_follows_its_successor(prefix: str) -> None:
    successor = None
    with _paced_writer(prefix, ["ticker"], 1, 0.0, True) as victim:
        try:
            assert H.get(victim.results)[0] == "ready"
            reader = shm.attach(prefix, "ticker", timeout=10)
            with reader:
                first_generation = reader.generation

                def replace() -> None:
                    nonlocal successor
                    H.kill_hard(victim.process)
                    # Replacing the dead writer's segment marks it superseded and wakes
                    # its sleepers; they follow and sleep on the new one, which the write
                    # wakes.
                    fresh = shm.TickerWriter(prefix, ["KRW-BTC"], capacity=64)
                    successor = fresh
                    _when_asleep(fresh, lambda: fresh.write(H.make_ticker("KRW-BTC", 1, 0), 0))

                _when_asleep_on(reader._live().q, replace)
                started = time.monotonic()
                head = reader.wait_for_head(0, timeout=WAIT)
                assert head == 1 and reader.generation != first_generation
                assert time.monotonic() - started < WAIT / 2, "woken by the timeout"
        finally:
            if successor is not None:
                successor.close()


@pytest.mark.timeout(90)
def test_a_reader_killed_asleep_stops_costing_the_writer_wake_calls(prefix: str) -> None:
    writer = shm.TickerWriter(prefix, ["KRW-BTC"], capacity=64)
    sleeper = SPAWN.Process(target=H.sleeping_reader_main, args=(prefix, "ticker"))
    try:
        sleeper.start()
        _when_asleep(writer, lambda: None).join(WAIT)
        H.kill_hard(sleeper)
        assert writer._q[L.H_WAITERS] == 1, "a reader killed asleep stays counted"
        for k in range(1, 201):
            writer.write(H.make_ticker("KRW-BTC", k, 0), 0)
        # The wakes that found nobody stop at the threshold: no wake call after it.
        assert writer._q[L.H_WAKE_MISSES] == native.module().WAKE_MISSES_TO_DOUBT
        described = shm.describe(prefix, "ticker")
        assert described is not None and described["sleeping_readers"] == 1
        assert described["wake_misses"] == native.module().WAKE_MISSES_TO_DOUBT
        with shm.attach(prefix, "ticker") as reader:
            _when_asleep(writer, lambda: writer.write(H.make_ticker("KRW-BTC", 201, 0), 0), 2)
            started = time.monotonic()
            assert reader.wait_for_head(200, timeout=WAIT) == 201
            assert time.monotonic() - started < WAIT / 2, "a live sleeper was not woken"
            assert writer._q[L.H_WAKE_MISSES] == 0
    finally:
        H.kill_hard(sleeper)
        writer.close()


def _read_all(
    readers: list[shm.SnapshotReader], total: int, acknowledged: object = None
) -> tuple[int, list[int], list[float]]:
    """Wait and read until ``total`` records have arrived, counting them in
    ``acknowledged`` if given: (records, heads, how long each sleep in C lasted, in s)."""
    sleeps: list[float] = []
    sleep = native.wait_heads

    def counted(headers: object, cursors: object, timeout: float, spin: float) -> int:
        started = time.monotonic()
        result = sleep(headers, cursors, timeout, spin)
        sleeps.append(time.monotonic() - started)
        return result

    for reader in readers:
        reader._wait_heads = counted
    cursors = [0] * len(readers)
    seen = 0
    while seen < total:
        heads = shm.wait_for_heads(readers, cursors, timeout=WAIT)
        if heads == cursors:
            break
        for i, reader in enumerate(readers):
            records, cursors[i], overrun = reader.since(cursors[i])
            seen += len(records) + overrun
        if acknowledged is not None:
            acknowledged.value = seen  # type: ignore[attr-defined]
    return seen, cursors, sleeps


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("kinds", "burst"),
    [(["ticker"], 1), (["ticker", "orderbook"], 1), (["ticker"], 80)],
    ids=["one", "two", "bursts"],
)
def test_no_wake_up_is_lost_across_processes(prefix: str, kinds: list[str], burst: int) -> None:
    # The writer writes each record (or burst) a random few microseconds after the reader
    # has seen the one before, which is when the reader is on its way to sleep: the race
    # the waiter count closes. A reader left asleep would sleep until its timeout. In a
    # burst the reader is awake for most records, so the writer's wakes find nobody and
    # it stops waking (WAKE_MISSES); the reader's clear on its way to sleep must undo that.
    total = 3000 if burst == 1 else 200 * burst
    acknowledged = SPAWN.Value("Q", 0, lock=False)
    with _paced_writer(prefix, kinds, total, 30.0, True, acknowledged, burst) as writer:
        assert H.get(writer.results) == ("ready", [1] * len(kinds))
        readers = [shm.attach(prefix, kind, timeout=10) for kind in kinds]
        try:
            writer.go.set()
            seen, heads, sleeps = _read_all(readers, total, acknowledged)
            assert seen == total
            assert H.get(writer.results) == ("done", heads)
            # Each sleep ended because a head moved, not by its timeout (WAIT) nor by a
            # close (the writer closes only after release).
            assert max(sleeps) < WAIT / 2, f"a sleep lasted {max(sleeps):.1f} s"
            assert len(sleeps) > total // burst // 10, f"the reader slept {len(sleeps)} times"
            assert all(_words(r)[L.H_WAITERS] == 0 for r in readers)
        finally:
            writer.release.set()
            for reader in readers:
                reader.close()
        writer.process.join(20)
        assert writer.process.exitcode == 0


@pytest.mark.timeout(60)
def test_readers_poll_a_writer_that_does_not_wake_them(prefix: str) -> None:
    with _paced_writer(prefix, ["ticker"], 200, 200.0, False) as writer:
        assert H.get(writer.results) == ("ready", [0])
        with shm.attach(prefix, "ticker", timeout=10) as reader:
            writer.go.set()
            seen, heads, sleeps = _read_all([reader], 200)
            assert seen == 200 and sleeps == []
            assert H.get(writer.results) == ("done", heads)


@pytest.mark.timeout(60)
def test_a_reader_without_the_c_helpers_polls(prefix: str) -> None:
    with (
        shm.TickerWriter(prefix, ["KRW-BTC"]) as writer,
        shm.attach(prefix, "ticker", native=False) as reader,
    ):
        _later(0.1, lambda: writer.write(H.make_ticker("KRW-BTC", 1, 0), 0))
        assert reader.wait_for_head(0, timeout=WAIT) == 1
        assert _words(reader)[L.H_WAITERS] == 0  # it never slept on the head


class _Interrupted(Exception):
    pass


@pytest.mark.timeout(60)
def test_a_signal_handler_runs_while_a_reader_sleeps(ticker: tuple) -> None:
    _, reader = ticker

    def handler(signum: int, frame: object) -> None:
        raise _Interrupted

    previous = signal.signal(signal.SIGALRM, handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        started = time.monotonic()
        with pytest.raises(_Interrupted):
            reader.wait_for_head(0, timeout=WAIT)
        assert time.monotonic() - started < WAIT / 2
        assert _words(reader)[L.H_WAITERS] == 0
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.timeout(60)
def test_a_handled_signal_does_not_end_the_wait(ticker: tuple) -> None:
    _, reader = ticker
    calls = []
    previous = signal.signal(signal.SIGALRM, lambda signum, frame: calls.append(signum))
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        started = time.monotonic()
        assert reader.wait_for_head(0, timeout=0.3) == 0
        assert calls == [signal.SIGALRM] and time.monotonic() - started >= 0.3
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_wait_for_heads_wants_one_cursor_per_reader(ticker: tuple) -> None:
    _, reader = ticker
    with pytest.raises(ValueError, match="one cursor per reader"):
        shm.wait_for_heads([reader], [0, 0])
    with pytest.raises(ValueError, match="one cursor per reader"):
        shm.wait_for_heads([], [])
    with pytest.raises(ValueError, match=">= 0"):
        shm.wait_for_heads([reader], [-1])


def test_the_c_sleep_checks_its_arguments() -> None:
    wait = native.wait_heads
    header = mmap.mmap(-1, L.HEADER_SIZE)
    try:
        with pytest.raises(TypeError, match="4 arguments"):
            wait([header], [0], 0.0)  # type: ignore[call-arg]
        with pytest.raises(ValueError, match="as many cursors"):
            wait([header], [0, 0], 0.0, 0.0)
        with pytest.raises(ValueError, match="as many cursors"):
            too_many = native.MAX_WAIT_SEGMENTS + 1
            wait([header] * too_many, [0] * too_many, 0.0, 0.0)
        with pytest.raises(ValueError, match=">= 0"):
            wait([header], [0], -1.0, 0.0)
        with pytest.raises(ValueError, match="256 aligned bytes"):
            wait([bytearray(8)], [0], 0.0, 0.0)
        with pytest.raises(BufferError):
            wait([b"\0" * 256], [0], 0.0, 0.0)  # read-only: the waiter count is written
        # An anonymous header is never live (state 0): the wait returns at once.
        assert wait([header], [0], 5.0, 0.0) == 0
        header[L.H_STATE * 8] = L.STATE_LIVE
        assert wait([header], [0], 0.01, 0.0) == -1
        assert wait([header], [1], 5.0, 0.0) == 0
        assert wait([header, header], [0, 1], 5.0, 0.0) == 1
    finally:
        header.close()


def test_the_writer_checks_what_it_wakes() -> None:
    module = native.module()
    with pytest.raises(ValueError, match="outside"):
        module.publish_head(memoryview(bytearray(64)), 1)
    with pytest.raises(TypeError):
        module.wake_readers(b"\0" * 256)
    header = bytearray(L.HEADER_SIZE)
    module.publish_head(memoryview(header), 7)
    assert memoryview(header).cast("Q")[L.H_HEAD] == 7
    module.wake_readers(memoryview(header))  # no sleeper: nothing happens


def test_no_reader_leaves_its_header_mapping_open(prefix: str) -> None:
    with shm.TickerWriter(prefix, ["KRW-BTC"]):
        reader = shm.attach(prefix, "ticker")
        reader.wait_for_head(0, timeout=0.01)
        mapping = reader._live()
        header = mapping._wait_header
        assert header is not None
        reader.close()
        assert header.closed


class _Bell:
    """The two eventfds of a doorbell: ``ring`` (it writes), ``answer`` (we write)."""

    def __init__(self) -> None:
        self.ring = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.answer = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)

    def rings(self) -> int:
        try:
            return os.eventfd_read(self.ring)
        except BlockingIOError:
            return 0

    def close(self) -> None:
        os.close(self.ring)
        os.close(self.answer)


@pytest.fixture
def bell() -> Iterator[_Bell]:
    made = _Bell()
    yield made
    made.close()


@pytest.mark.timeout(60)
def test_the_doorbell_rings_once_per_answer_and_sleeps_on_no_head_meanwhile(
    ticker: tuple, bell: _Bell
) -> None:
    writer, reader = ticker
    served: list[tuple[bool, list[int]] | None] = []
    cycles = 3

    def doorbell() -> None:
        served.append(shm.ring_on_heads([reader], [0], True, bell.answer, bell.ring, 3.0))

    thread = threading.Thread(target=doorbell, daemon=True)
    thread.start()
    for k in range(1, cycles + 1):
        # Asleep on the head: the next record wakes it, and it rings.
        _when_asleep(writer, lambda k=k: writer.write(H.make_ticker("KRW-BTC", k, 0), 1)).join(WAIT)
        deadline = time.monotonic() + WAIT
        while not (rang := bell.rings()) and time.monotonic() < deadline:
            time.sleep(0.001)
        assert rang == 1, f"ring {k}"
        # Until it is answered it waits on the answer, not on the head: more records
        # neither ring nor cost the writer wake calls.
        writer.write(H.make_ticker("KRW-BTC", k, 1), 1)
        time.sleep(0.05)
        assert bell.rings() == 0 and _words(reader)[L.H_WAITERS] == 0
        os.eventfd_write(bell.answer, 1)
        if k < cycles:
            # Answered, it finds the record written meanwhile at once and rings again;
            # take that ring and answer it, so the next cycle starts asleep on the head.
            deadline = time.monotonic() + WAIT
            while not bell.rings() and time.monotonic() < deadline:
                time.sleep(0.001)
            os.eventfd_write(bell.answer, 1)
    thread.join(WAIT)
    assert not thread.is_alive()
    answered, heads = served[0]
    assert heads == [writer.head] and _words(reader)[L.H_WAITERS] == 0
    assert answered is False, "the last ring, for the record after the last answer, is open"


@pytest.mark.timeout(60)
def test_the_doorbell_returns_when_its_segment_closes(prefix: str, bell: _Bell) -> None:
    writer = shm.TickerWriter(prefix, ["KRW-BTC"])
    reader = shm.attach(prefix, "ticker")
    try:
        _when_asleep(writer, writer.close)
        started = time.monotonic()
        answered, heads = shm.ring_on_heads([reader], [0], True, bell.answer, bell.ring, WAIT)
        assert time.monotonic() - started < WAIT / 2, "ran to its timeout"
        assert (answered, heads, bell.rings()) == (True, [0], 0)
        # Not live any more: the caller has to wait another way.
        assert shm.ring_on_heads([reader], [0], True, bell.answer, bell.ring, WAIT) is None
    finally:
        reader.close()
        writer.close()


@pytest.mark.timeout(30)
def test_the_doorbell_waits_its_timeout_for_an_answer(ticker: tuple, bell: _Bell) -> None:
    writer, reader = ticker
    writer.write(H.make_ticker("KRW-BTC", 1, 0), 1)
    started = time.monotonic()
    assert shm.ring_on_heads([reader], [0], False, bell.answer, bell.ring, 0.2) == (False, [0])
    assert time.monotonic() - started >= 0.2 and bell.rings() == 0
    os.eventfd_write(bell.answer, 1)
    assert shm.ring_on_heads([reader], [0], False, bell.answer, bell.ring, 0.2) == (False, [1])
    assert bell.rings() == 1
    with shm.attach(prefix=writer.name.rsplit(".", 1)[0], kind="ticker", native=False) as plain:
        assert shm.ring_on_heads([plain], [1], True, bell.answer, bell.ring, 0.1) is None
    with pytest.raises(ValueError, match="fds and timeout"):
        native.doorbell([_words(reader)], [0], True, -1, bell.ring, 0.1)
