"""Snapshot segments across real processes: hammering, writer crash and restart, exits."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections.abc import Callable

import pytest

import shm
from tests import shm_helpers as H

CODES = ["KRW-BTC", "KRW-ETH", "KRW-XRP", "BTC-ETH", "USDT-BTC"]
SPAWN = multiprocessing.get_context("spawn")


def _wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("kind", ["ticker", "orderbook"])
def test_one_writer_two_readers_hammer(prefix: str, kind: str) -> None:
    results, reader_results, final_heads = SPAWN.Queue(), SPAWN.Queue(), SPAWN.Queue()
    close_event, stop_event = SPAWN.Event(), SPAWN.Event()
    # A small ring guarantees wrap-arounds; the second reader naps so that it overruns.
    writer = SPAWN.Process(
        target=H.writer_main,
        args=(prefix, kind, CODES, 64, 2.5, results, close_event),
    )
    readers = [
        SPAWN.Process(
            target=H.reader_main,
            args=(prefix, kind, nap, reader_results, stop_event, final_heads),
        )
        for nap in (0.0, 0.005)
    ]
    processes = [*readers, writer]
    try:
        for process in readers:
            process.start()  # before the writer: attach() waits for the segment
        writer.start()
        assert H.get(results)[0] == "ready"
        status, head = H.get(results, timeout=30)
        assert status == "done" and head > 1000
        stop_event.set()
        for _ in readers:
            final_heads.put(head)
        reports = [H.get(reader_results, timeout=60) for _ in readers]
    finally:
        close_event.set()
        stop_event.set()
        for process in processes:
            process.join(20)
            H.kill_hard(process)
    for report in reports:
        assert report["torn"] == 0, report
        assert report["gap_mismatch"] == 0, report
        assert report["backwards"] == 0, report
        assert report["received"] + report["overrun"] == head, report
        assert report["cursor"] == head, report
        assert report["latest_checks"] > 100 and report["received"] > 0, report
    assert any(report["overrun"] > 0 for report in reports), "the napping reader must overrun"
    assert all(process.exitcode == 0 for process in processes)
    assert H.leftover_segments(prefix) == []


@pytest.mark.timeout(90)
def test_writer_sigkill_then_restart(prefix: str) -> None:
    # One queue per writer: a process killed while it shares a queue can leave the
    # queue's lock held (multiprocessing documents this), so the victim gets its own.
    first_results, results, close_event = SPAWN.Queue(), SPAWN.Queue(), SPAWN.Event()
    first = SPAWN.Process(
        target=H.writer_main,
        args=(prefix, "ticker", CODES, 256, -1, first_results, close_event, 0.001),
    )
    second = None
    try:
        first.start()
        _, first_pid, first_generation, _ = H.get(first_results)
        reader = shm.attach(prefix, "ticker", timeout=10, heartbeat_timeout=5.0)
        assert reader.wait_for_update("KRW-BTC", 0, timeout=10) is not None
        assert reader.writer_alive and reader.writer_pid == first_pid

        os.kill(first_pid, signal.SIGKILL)
        first.join(10)
        _wait_until(lambda: not reader.writer_alive, 5, "the reader to see the dead writer")
        # The dead writer's segment stays until a new writer replaces it.
        assert H.leftover_segments(prefix) == [f"{prefix}.ticker"]
        head_at_death = reader.head
        records, cursor, overrun = reader.since(0)
        assert H.bad_tickers(records) == 0 and cursor == head_at_death
        assert len(records) + overrun == head_at_death

        second = SPAWN.Process(
            target=H.writer_main,
            args=(prefix, "ticker", CODES, 256, 1.0, results, close_event, 0.001),
        )
        second.start()
        status, second_pid, second_generation, second_head = H.get(results)
        assert status == "ready" and second_generation != first_generation
        assert second_head == head_at_death, "the new generation continues the feed sequence"
        _wait_until(lambda: reader.writer_alive, 5, "the reader to see the new writer")
        assert reader.writer_pid == second_pid and reader.generation == second_generation
        rec = reader.wait_for_update("KRW-ETH", head_at_death, timeout=10)
        assert rec is not None and H.bad_tickers(rec.reshape(1)) == 0
        assert H.get(results)[0] == "done"
        records, cursor, overrun = reader.since(cursor)
        assert H.bad_tickers(records) == 0
        assert len(records) + overrun == cursor - head_at_death
        assert records["feed_seq"].min() > head_at_death
        close_event.set()
        second.join(20)
        assert second.exitcode == 0
        assert reader.state == "closed" and not reader.writer_alive
        reader.close()
    finally:
        close_event.set()
        H.kill_hard(first)
        if second is not None:
            H.kill_hard(second)
    assert H.leftover_segments(prefix) == []


@pytest.mark.timeout(60)
def test_reader_process_exit_leaves_segment_intact(prefix: str) -> None:
    results = SPAWN.Queue()
    with shm.TickerWriter(prefix, CODES, capacity=16) as writer:
        writer.write_ticker(H.make_ticker("KRW-BTC", 1, 0), recv_ns=1)
        for _ in range(2):
            child = SPAWN.Process(target=H.attach_read_exit_main, args=(prefix, "ticker", results))
            child.start()
            assert H.get(results) == 1
            child.join(20)
            assert child.exitcode == 0
            assert H.leftover_segments(prefix) == [f"{prefix}.ticker"]
        # Still the same live segment, still writable and readable.
        writer.write_ticker(H.make_ticker("KRW-BTC", 2, 0), recv_ns=2)
        with shm.attach(prefix, "ticker", timeout=1) as reader:
            rec = reader.latest("KRW-BTC")
            assert rec is not None and rec["feed_seq"] == 2 and reader.writer_alive
    assert H.leftover_segments(prefix) == []


@pytest.mark.timeout(60)
def test_second_writer_in_another_process_is_refused(prefix: str) -> None:
    results = SPAWN.Queue()
    with shm.OrderbookWriter(prefix, CODES, capacity=16):
        child = SPAWN.Process(target=H.second_writer_main, args=(prefix, "orderbook", results))
        child.start()
        status, pid, message = H.get(results)
        child.join(20)
    assert status == "owned" and pid == os.getpid()
    assert "live writer" in message and f"{prefix}.orderbook" in message
    assert H.leftover_segments(prefix) == []


@pytest.mark.timeout(60)
def test_writer_process_exiting_cleanly_unlinks_its_segment(prefix: str) -> None:
    results = SPAWN.Queue()
    child = SPAWN.Process(target=H.exit_without_close_main, args=(prefix, results))
    child.start()
    assert H.get(results) is True
    child.join(20)
    assert child.exitcode == 0
    assert H.leftover_segments(prefix) == []
