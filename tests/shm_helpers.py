"""Input records, payload checks and child-process entry points for the shm tests.

The message structs carry the attribute names the decoder hands to the shm writer; they
are input data. Every generated payload is a function of a counter ``k`` and the symbol,
and carries a checksum (ticker: ``lowest_52_week_price`` is the sum of the other 17
prices; order book: the totals are the sums of the level sizes), so a reader can prove
each record it got is exactly one message and not a mix of two.
"""

from __future__ import annotations

import contextlib
import os
import queue
import random
import signal
import time
import uuid
from typing import Any

import msgspec
import numpy as np

import shm
from shm import layout as L
from shm.layout import TICKER_FLOAT_FIELDS
from shm.writer import WRITER_CLASSES


class TickerMsg(msgspec.Struct):
    code: str
    opening_price: float | None
    high_price: float | None
    low_price: float | None
    trade_price: float | None
    prev_closing_price: float | None
    change_price: float | None
    signed_change_price: float | None
    change_rate: float | None
    signed_change_rate: float | None
    trade_volume: float | None
    acc_trade_volume: float | None
    acc_trade_volume_24h: float | None
    acc_trade_price: float | None
    acc_trade_price_24h: float | None
    acc_ask_volume: float | None
    acc_bid_volume: float | None
    highest_52_week_price: float | None
    lowest_52_week_price: float | None
    trade_timestamp: int | None
    timestamp: int | None
    change: str | None
    ask_bid: str | None
    market_state: str | None
    market_warning: str | None
    is_trading_suspended: bool | None
    stream_type: str | None
    sim_ns: int = 0


class OrderbookUnit(msgspec.Struct):
    ask_price: float
    bid_price: float
    ask_size: float
    bid_size: float


class OrderbookMsg(msgspec.Struct):
    code: str
    timestamp: int | None
    total_ask_size: float | None
    total_bid_size: float | None
    level: float | None
    orderbook_units: list[OrderbookUnit]
    stream_type: str | None
    sim_ns: int = 0


_CHANGES = ("RISE", "EVEN", "FALL")


def ticker_prices(k: int, symbol: int) -> list[float]:
    """17 prices from (k, symbol) plus their sum as the checksum; exact in float64."""
    values = [(k * 31 + i * 7 + symbol * 1000) * 0.25 for i in range(len(TICKER_FLOAT_FIELDS) - 1)]
    return [*values, float(sum(values))]


def make_ticker(code: str, k: int, symbol: int, sim_ns: int = 0) -> TickerMsg:
    return TickerMsg(
        code,
        *ticker_prices(k, symbol),
        trade_timestamp=k,
        timestamp=k + symbol,
        change=_CHANGES[k % 3],
        ask_bid="ASK" if k % 2 else "BID",
        market_state="ACTIVE",
        market_warning="NONE",
        is_trading_suspended=bool(k % 5 == 0),
        stream_type="REALTIME",
        sim_ns=sim_ns,
    )


def bad_tickers(records: np.ndarray) -> int:
    """How many ticker records are not exactly one message of :func:`make_ticker`."""
    if len(records) == 0:
        return 0
    k = records["trade_timestamp"].astype(np.float64)
    symbol = records["symbol"].astype(np.float64)
    ok = records["timestamp"] == records["trade_timestamp"] + records["symbol"]
    total = np.zeros(len(records))
    for i, name in enumerate(TICKER_FLOAT_FIELDS[:-1]):
        expected = (k * 31 + i * 7 + symbol * 1000) * 0.25
        ok &= records[name] == expected
        total += records[name]
    ok &= records["lowest_52_week_price"] == total
    ok &= (
        records["change"]
        == np.array([shm.CHANGE[c] for c in _CHANGES])[records["trade_timestamp"] % 3]
    )
    ok &= records["seq"] == 2 * records["feed_seq"]
    return int(len(records) - np.count_nonzero(ok))


def make_orderbook(code: str, k: int, n_levels: int, sim_ns: int = 0) -> OrderbookMsg:
    units = [
        OrderbookUnit(
            ask_price=float(2 * k + 1 + i),
            bid_price=float(2 * k - i),
            ask_size=(k % 97 + i) * 0.5,
            bid_size=(k % 89 + 2 * i) * 0.25,
        )
        for i in range(n_levels)
    ]
    return OrderbookMsg(
        code,
        timestamp=k,
        total_ask_size=float(sum(u.ask_size for u in units)),
        total_bid_size=float(sum(u.bid_size for u in units)),
        level=0.0,
        orderbook_units=units,
        stream_type="REALTIME",
        sim_ns=sim_ns,
    )


def bad_orderbooks(records: np.ndarray) -> int:
    """How many order-book records are not exactly one message of :func:`make_orderbook`."""
    bad = 0
    for rec in records:
        k = int(rec["timestamp"])
        n = int(rec["n_levels"])
        levels = rec["levels"]
        i = np.arange(shm.MAX_LEVELS)
        used = i < n
        expected = {
            "ask_price": np.where(used, 2 * k + 1 + i, 0.0),
            "bid_price": np.where(used, 2 * k - i, 0.0),
            "ask_size": np.where(used, (k % 97 + i) * 0.5, 0.0),
            "bid_size": np.where(used, (k % 89 + 2 * i) * 0.25, 0.0),
        }
        ok = all(np.array_equal(levels[name], value) for name, value in expected.items())
        ok = ok and rec["total_ask_size"] == levels["ask_size"][:n].sum()
        ok = ok and rec["total_bid_size"] == levels["bid_size"][:n].sum()
        ok = ok and rec["seq"] == 2 * rec["feed_seq"]
        bad += not ok
    return bad


def assert_same_records(readers: list[Any], codes: list[str]) -> list[Any]:
    """Two readers of twin segments see the same ring (records, cursor, losses) and the
    same latest records; returns each reader's ``since(0)``."""
    found = [r.since(0) for r in readers]
    assert found[0][0].tobytes() == found[1][0].tobytes()
    assert found[0][1:] == found[1][1:]
    latest = [r.latest_many(dict.fromkeys(codes)) for r in readers]
    assert latest[0].tobytes() == latest[1].tobytes()
    return found


def unique_prefix() -> str:
    return f"upfeed-test-{uuid.uuid4().hex[:12]}"


def leftover_segments(prefix: str) -> list[str]:
    return sorted(n for n in os.listdir(shm.SHM_DIR) if n.startswith(prefix))


def remove_segments(prefix: str) -> list[str]:
    """Remove every /dev/shm file of ``prefix``; return the names that were there."""
    names = leftover_segments(prefix)
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(shm.SHM_DIR, name))
    return names


# -- child processes (spawned; results travel back on a multiprocessing queue) ---------


def write_for(writer: shm.SnapshotWriter, codes: list[str], seconds: float, pace_s: float) -> int:
    """Write generated messages round-robin over ``codes`` for ``seconds``; return count."""
    ticker = writer.kind == shm.KIND_TICKER
    deadline = time.monotonic() + seconds
    next_beat = 0.0
    n = 0
    while True:
        now = time.monotonic()
        if now >= deadline:
            return n
        if now >= next_beat:
            writer.heartbeat()
            next_beat = now + 0.05
        for _ in range(64):
            code = codes[n % len(codes)]
            symbol = writer.symbol_id(code)
            if ticker:
                writer.write(make_ticker(code, n, symbol), time.time_ns())
            else:
                writer.write(make_orderbook(code, n, n % (shm.MAX_LEVELS + 1)), time.time_ns())
            n += 1
        if pace_s:
            time.sleep(pace_s)


def writer_main(
    prefix: str,
    kind: str,
    codes: list[str],
    capacity: int,
    seconds: float,
    results: Any,
    close_event: Any,
    pace_s: float = 0.0,
) -> None:
    """Create the segment, report ("ready", pid, generation), write, report ("done", head),
    then keep the segment until ``close_event`` (or forever with seconds < 0: killed)."""
    writer = shm.create_writer(prefix, kind, codes, capacity=capacity)
    try:
        results.put(("ready", os.getpid(), writer.generation, writer.head))
        if seconds < 0:
            while True:
                write_for(writer, codes, 0.5, pace_s)
        write_for(writer, codes, seconds, pace_s)
        results.put(("done", writer.head))
        close_event.wait(30)
    finally:
        writer.close()


def reader_main(
    prefix: str,
    kind: str,
    slow_s: float,
    results: Any,
    stop_event: Any,
    final_head: Any,
) -> None:
    """Hammer since()/latest()/latest_many() until told to stop, then drain to the final
    head and report counts: received, overrun, torn, latest checks, monotonic breaks."""
    reader = shm.attach(prefix, kind, timeout=10)
    bad = bad_tickers if kind == shm.KIND_TICKER else bad_orderbooks
    cursor = received = overrun = torn = gap_mismatch = checks = backwards = 0
    newest: dict[str, int] = {}
    codes = list(reader.codes)
    rounds = 0
    try:

        def consume() -> None:
            nonlocal cursor, received, overrun, torn, gap_mismatch
            records, new_cursor, lost = reader.since(cursor)
            seqs = records["feed_seq"].astype(np.int64)
            missing = int(new_cursor - cursor - len(records))
            if missing != lost or (len(seqs) and (np.any(np.diff(seqs) <= 0))):
                gap_mismatch += 1
            # Records lie in (cursor, new_cursor], and the newest one is there unless
            # something was lost: a reader preempted mid-copy can see the writer lap the
            # whole ring, head record included, and then counts it as overrun.
            if len(seqs) and (
                seqs[0] <= cursor or seqs[-1] > new_cursor or (not lost and seqs[-1] != new_cursor)
            ):
                gap_mismatch += 1
            received += len(records)
            overrun += lost
            torn += bad(records)
            cursor = new_cursor

        while not stop_event.is_set():
            consume()
            for code in codes:
                rec = reader.latest(code)
                if rec is None:
                    continue
                checks += 1
                torn += bad(np.array([rec], dtype=reader.dtype))
                if int(rec["feed_seq"]) < newest.get(code, 0):
                    backwards += 1
                newest[code] = int(rec["feed_seq"])
            rows = reader.latest_many(codes)
            torn += bad(rows[rows["feed_seq"] > 0])
            rounds += 1
            if slow_s:
                time.sleep(slow_s)
        target = final_head.get(timeout=30)
        while cursor < target:
            reader.wait_for_head(cursor, timeout=5)
            consume()
        results.put(
            {
                "received": received,
                "overrun": overrun,
                "torn": torn,
                "gap_mismatch": gap_mismatch,
                "latest_checks": checks,
                "backwards": backwards,
                "rounds": rounds,
                "cursor": cursor,
            }
        )
    finally:
        reader.close()


def attach_read_exit_main(prefix: str, kind: str, results: Any) -> None:
    """A reader process that attaches, reads, and exits normally."""
    reader = shm.attach(prefix, kind, timeout=10)
    code = reader.codes[0]
    rec = reader.wait_for_update(code, 0, timeout=10)
    results.put(None if rec is None else int(rec["feed_seq"]))
    reader.close()


def second_writer_main(prefix: str, kind: str, results: Any) -> None:
    try:
        shm.create_writer(prefix, kind, ["KRW-BTC"], capacity=8)
    except shm.SegmentOwnedError as exc:
        results.put(("owned", exc.pid, str(exc)))
    else:
        results.put(("created", 0, ""))


def get(results: Any, timeout: float = 20.0) -> Any:
    try:
        return results.get(timeout=timeout)
    except queue.Empty:
        raise AssertionError(f"no result from child process within {timeout} s") from None


def kill_hard(process: Any) -> None:
    if process.pid is not None and process.is_alive():
        os.kill(process.pid, signal.SIGKILL)
    process.join(10)


def exit_without_close_main(prefix: str, results: Any) -> None:
    """A writer process that returns without closing its writer (a clean interpreter exit)."""
    writer = shm.create_writer(prefix, shm.KIND_TICKER, ["KRW-BTC"], capacity=8)
    writer.write(make_ticker("KRW-BTC", 1, 0), time.time_ns())
    results.put(os.path.exists(writer.path))


def paced_writer_main(
    prefix: str,
    kinds: list[str],
    count: int,
    max_pause_us: float,
    native: bool,
    results: Any,
    go: Any,
    release: Any,
    acknowledged: Any = None,
    burst: int = 1,
) -> None:
    """Write ``count`` records to the ``kinds`` segments in turn, in bursts of ``burst``
    records, each burst after a random pause of up to ``max_pause_us``. The first waits
    until a reader sleeps on every segment (the header's waiter count), so that it has to
    be woken; then report the heads and keep the segments open until ``release`` is set.

    With ``acknowledged`` (a shared counter of the records a reader has seen), each
    burst waits for the reader to have seen every record before it: a reader that was
    not woken for a burst then sleeps until its timeout instead of being woken by the
    next one."""
    writers = [
        WRITER_CLASSES[kind](prefix, ["KRW-BTC"], capacity=64, native=native) for kind in kinds
    ]
    try:
        results.put(("ready", [w._q[L.H_WAKES_READERS] for w in writers]))
        if not go.wait(20):
            return
        deadline = time.monotonic() + 20
        while native and any(w._q[L.H_WAITERS] == 0 for w in writers):
            if time.monotonic() > deadline:
                results.put(("no sleeping reader", []))
                return
            time.sleep(0.001)
        pause = random.Random(count).uniform
        for k in range(count):
            if k % burst == 0:
                while acknowledged is not None and acknowledged.value < k:
                    if time.monotonic() > deadline + 60:
                        results.put(("no acknowledgement", [k]))
                        return
                until = time.perf_counter() + pause(0, max_pause_us) / 1e6
                while time.perf_counter() < until:
                    pass
            kind_index = k % len(writers)
            writer = writers[kind_index]
            if kinds[kind_index] == shm.KIND_TICKER:
                writer.write(make_ticker("KRW-BTC", k + 1, 0), time.time_ns())
            else:
                writer.write(make_orderbook("KRW-BTC", k + 1, 15), time.time_ns())
        results.put(("done", [w.head for w in writers]))
        release.wait(20)
    finally:
        for writer in writers:
            writer.close()


def sleeping_reader_main(prefix: str, kind: str) -> None:
    """A reader that sleeps on the head until it is killed (or a minute passes)."""
    with shm.attach(prefix, kind, timeout=10) as reader:
        reader.wait_for_head(reader.head, timeout=60)
