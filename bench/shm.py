"""Shared-memory snapshot rings: write and read costs, cross-process visibility latency.

* ``write_ns``: ``write_ticker`` and ``write_orderbook`` (15 and 30 levels) per update,
  from prebuilt decoder-shaped structs; baseline: the same ticker written into a numpy
  structured row field by field; floor: one ``struct.pack_into`` of a whole record from
  values already in hand (nothing a write can skip).
* ``read_ns``: ``latest()`` returning a numpy record (ticker, 15-level book),
  ``latest_many`` per row, ``since`` per record.
* ``visibility_us``: a writer process stamps ``origin_ns`` (CLOCK_MONOTONIC) and writes
  tickers paced at ``--rate`` updates/s; a reader process spins on the head and takes
  ``now - origin_ns`` for every record it sees; once with a writer that sleeps between
  updates, once with one that spins. Baseline: the same structs through a
  ``multiprocessing.Queue`` (pickle) at the same rate, in the same run.

CPU figures are the minimum over repeats (pyperf-style on a noisy machine); the load
average is reported with them. Prints one JSON object and writes bench/results/shm.json.

    python -m bench shm [--seconds S] [--rate R] [--output PATH]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import queue
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

import shm
from shm.layout import (
    ORDERBOOK_DTYPE,
    ORDERBOOK_STRUCTS,
    TICKER_DTYPE,
    TICKER_FLOAT_FIELDS,
    TICKER_STRUCT,
)

RESULTS = Path(__file__).resolve().parent / "results" / "shm.json"
CODES = ["KRW-BTC", "KRW-ETH", "KRW-XRP", "KRW-SOL", "BTC-ETH"]
TARGETS = {
    "write_ticker_ns": 1000,
    "write_orderbook15_ns": 1500,
    "latest_ticker_ns": 1500,
    "visibility_p99_us": 10.0,
}


class Ticker(msgspec.Struct):
    code: str
    opening_price: float
    high_price: float
    low_price: float
    trade_price: float
    prev_closing_price: float
    change_price: float
    signed_change_price: float
    change_rate: float
    signed_change_rate: float
    trade_volume: float
    acc_trade_volume: float
    acc_trade_volume_24h: float
    acc_trade_price: float
    acc_trade_price_24h: float
    acc_ask_volume: float
    acc_bid_volume: float
    highest_52_week_price: float
    lowest_52_week_price: float
    trade_timestamp: int
    timestamp: int
    change: str
    ask_bid: str
    market_state: str
    market_warning: str
    is_trading_suspended: bool
    stream_type: str
    sim_ns: int = 0


class Unit(msgspec.Struct):
    ask_price: float
    bid_price: float
    ask_size: float
    bid_size: float


class Orderbook(msgspec.Struct):
    code: str
    timestamp: int
    total_ask_size: float
    total_bid_size: float
    level: float
    orderbook_units: list[Any]
    stream_type: str
    sim_ns: int = 0


def sample_ticker(code: str = "KRW-BTC", sim_ns: int = 0) -> Ticker:
    """Values of the Upbit docs' DEFAULT ticker example."""
    prices = [
        31883000.0,
        32310000.0,
        31855000.0,
        32287000.0,
        31883000.0,
        404000.0,
        404000.0,
        0.0126713295,
        0.0126713295,
        0.03103806,
        2429.58834336,
        7158.8028356,
        78039261076.51241,
        228827082483.70729,
        1146.25573608,
        1283.33260728,
        57678000.0,
        20700000.0,
    ]
    return Ticker(
        code,
        *prices,
        trade_timestamp=1676965262139,
        timestamp=1676965262177,
        change="RISE",
        ask_bid="ASK",
        market_state="ACTIVE",
        market_warning="NONE",
        is_trading_suspended=False,
        stream_type="REALTIME",
        sim_ns=sim_ns,
    )


def sample_orderbook(levels: int, code: str = "KRW-BTC") -> Orderbook:
    units = [
        Unit(116539000.0 + 1000 * i, 116538000.0 - 1000 * i, 0.0205 + i, 0.0661 + i)
        for i in range(levels)
    ]
    return Orderbook(
        code,
        1790134743006,
        sum(u.ask_size for u in units),
        sum(u.bid_size for u in units),
        0.0,
        units,
        "REALTIME",
    )


def per_call_ns(call: Callable[[], object], number: int, repeats: int) -> float:
    """Minimum over ``repeats`` of the mean cost of ``call`` over ``number`` calls."""
    best = float("inf")
    for _ in range(repeats + 1):  # the first round warms up
        started = time.perf_counter_ns()
        for _ in range(number):
            call()
        best = min(best, (time.perf_counter_ns() - started) / number)
    return round(best, 1)


def numpy_fieldwise_write(row: np.ndarray, msg: Ticker, recv_ns: int) -> None:
    row["recv_ns"] = recv_ns
    row["timestamp"] = msg.timestamp
    row["trade_timestamp"] = msg.trade_timestamp
    row["change"] = shm.CHANGE[msg.change]
    row["ask_bid"] = shm.ASK_BID[msg.ask_bid]
    for name in TICKER_FLOAT_FIELDS:
        row[name] = getattr(msg, name)


def pack_floor(number: int, repeats: int) -> dict[str, float]:
    """What a record write costs at least in Python, measured two ways.

    ``floor_pack_into_*``: one ``struct.pack_into`` of a whole record from values already
    in hand. ``floor_seqlocked_ticker_from_struct``: what no writer of a decoded ticker
    can skip: seq word odd, the pack with every value read from the struct (enums
    through their maps), seq word even, head; no lock, symbol lookup or latest copy.
    """
    target = bytearray(TICKER_DTYPE.itemsize + ORDERBOOK_DTYPE.itemsize)
    words = memoryview(target).cast("Q")
    ticker_values = (1, 1, 1, 1, 0, 1, 1, 2, 1, 0, 2, 1, *(1.5,) * len(TICKER_FLOAT_FIELDS))
    book_values = (1, 1, 1, 1, 0, 15, 2, 1.5, 1.5, 0.0, *(1.5,) * 60)
    pack_ticker = TICKER_STRUCT.pack_into
    pack_book = ORDERBOOK_STRUCTS[15].pack_into
    change, ask_bid, state = shm.CHANGE, shm.ASK_BID, shm.MARKET_STATE
    warning, stream, suspended = shm.MARKET_WARNING, shm.STREAM_TYPE, shm.TRADING_SUSPENDED
    m = sample_ticker()

    def seqlocked_ticker() -> None:
        words[0] = 1
        pack_ticker(
            target,
            8,
            1,
            1,
            m.sim_ns,
            m.timestamp,
            0,
            change[m.change],
            ask_bid[m.ask_bid],
            state[m.market_state],
            warning[m.market_warning],
            suspended[m.is_trading_suspended],
            stream[m.stream_type],
            m.trade_timestamp,
            m.opening_price,
            m.high_price,
            m.low_price,
            m.trade_price,
            m.prev_closing_price,
            m.change_price,
            m.signed_change_price,
            m.change_rate,
            m.signed_change_rate,
            m.trade_volume,
            m.acc_trade_volume,
            m.acc_trade_volume_24h,
            m.acc_trade_price,
            m.acc_trade_price_24h,
            m.acc_ask_volume,
            m.acc_bid_volume,
            m.highest_52_week_price,
            m.lowest_52_week_price,
        )
        words[0] = 2
        words[1] = 1

    return {
        "floor_pack_into_ticker": per_call_ns(
            lambda: pack_ticker(target, 8, *ticker_values), number, repeats
        ),
        "floor_pack_into_orderbook15": per_call_ns(
            lambda: pack_book(target, 8, *book_values), number, repeats
        ),
        "floor_seqlocked_ticker_from_struct": per_call_ns(seqlocked_ticker, number, repeats),
    }


def cpu_costs(number: int, repeats: int) -> dict[str, Any]:
    prefix = f"upfeed-bench-{uuid.uuid4().hex[:8]}"
    ticker, book15, book30 = sample_ticker(), sample_orderbook(15), sample_orderbook(30)
    # The same book with units as (ask_price, bid_price, ask_size, bid_size) tuples: the
    # writer's path for a decoder that yields tuples instead of unit structs.
    book15_tuples = sample_orderbook(15)
    book15_tuples.orderbook_units = [msgspec.structs.astuple(u) for u in book15.orderbook_units]
    with (
        shm.TickerWriter(prefix, CODES, capacity=4096) as tickers,
        shm.OrderbookWriter(prefix, CODES, capacity=4096) as books,
    ):
        write = {
            "ticker": per_call_ns(lambda: tickers.write_ticker(ticker, 1), number, repeats),
            "orderbook15": per_call_ns(lambda: books.write_orderbook(book15, 1), number, repeats),
            "orderbook30": per_call_ns(lambda: books.write_orderbook(book30, 1), number, repeats),
            "orderbook15_tuple_units": per_call_ns(
                lambda: books.write_orderbook(book15_tuples, 1), number, repeats
            ),
        }
        write.update(pack_floor(number, repeats))
        row = np.zeros(1, shm.TICKER_DTYPE)[0:1]
        write["baseline_numpy_fieldwise_ticker"] = per_call_ns(
            lambda: numpy_fieldwise_write(row, ticker, 1), max(number // 10, 100), repeats
        )
        for code in CODES:
            tickers.write_ticker(sample_ticker(code), 1)
            books.write_orderbook(sample_orderbook(15, code), 1)
        for _ in range(1000):
            tickers.write_ticker(ticker, 1)
        with (
            shm.attach(prefix, "ticker", timeout=1) as ticker_reader,
            shm.attach(prefix, "orderbook", timeout=1) as book_reader,
        ):
            since_from = ticker_reader.head - 1000
            read = {
                "latest_ticker": per_call_ns(
                    lambda: ticker_reader.latest("KRW-BTC"), number, repeats
                ),
                "latest_orderbook15": per_call_ns(
                    lambda: book_reader.latest("KRW-BTC"), number, repeats
                ),
                "latest_many_ticker_per_row": round(
                    per_call_ns(lambda: ticker_reader.latest_many(CODES), number // 5, repeats)
                    / len(CODES),
                    1,
                ),
                "since_ticker_per_record_1000": round(
                    per_call_ns(lambda: ticker_reader.since(since_from), 200, repeats) / 1000, 1
                ),
            }
    return {"write_ns": write, "read_ns": read}


def _percentiles(samples_ns: list[int]) -> dict[str, float]:
    if not samples_ns:
        return {"n": 0}
    values = np.array(samples_ns, dtype=np.float64) / 1000.0
    p50, p99, p999 = np.percentile(values, [50, 99, 99.9])
    return {
        "n": len(samples_ns),
        "p50": round(float(p50), 2),
        "p99": round(float(p99), 2),
        "p99.9": round(float(p999), 2),
        "max": round(float(values.max()), 2),
    }


def _paced(rate: float, seconds: float, emit: Callable[[int], None], *, spin_ns: int = 0) -> int:
    """Call ``emit(origin_ns)`` about ``rate`` times a second for ``seconds``; return count.

    By default the writer sleeps between updates, so that on a small machine the spinning
    reader keeps a core (a late wake-up delays the next update, never its stamp), and
    every update is written by a thread that has just woken up. With ``spin_ns`` it
    sleeps only until that long before each update and busy-waits the rest, like a feed
    thread kept busy by traffic.
    """
    interval = 1e9 / rate
    started = time.perf_counter_ns()
    end = started + int(seconds * 1e9)
    sent = 0
    while True:
        now = time.perf_counter_ns()
        if now >= end:
            return sent
        due = started + int(sent * interval)
        if now < due:
            if due - now > spin_ns:
                time.sleep((due - now - spin_ns) / 1e9)
            continue
        emit(time.perf_counter_ns())
        sent += 1


def shm_writer_process(
    prefix: str, rate: float, seconds: float, ready: Any, go: Any, results: Any, spin_ns: int
) -> None:
    with shm.TickerWriter(prefix, CODES, capacity=65536) as writer:
        msg = sample_ticker()
        write_ns: list[int] = []
        ready.set()
        go.wait(30)

        def emit(origin_ns: int) -> None:
            msg.sim_ns = origin_ns
            writer.write_ticker(msg, origin_ns)
            write_ns.append(time.perf_counter_ns() - origin_ns)

        _paced(rate, seconds, emit, spin_ns=spin_ns)
        results.put(("writer", write_ns))
        # Keep the segment until the reader has drained it.
        go.clear()
        go.wait(30)


def shm_reader_process(prefix: str, seconds: float, ready: Any, results: Any) -> None:
    reader = shm.attach(prefix, "ticker", timeout=30)
    latencies: list[int] = []
    cursor = reader.head
    ready.set()
    deadline = time.monotonic() + seconds + 5
    idle_since = None
    while time.monotonic() < deadline:
        head = reader.wait_for_head(cursor, timeout=0.2, poll_interval=0)
        now = time.perf_counter_ns()
        if head == cursor:
            if latencies and idle_since is not None and time.monotonic() - idle_since > 0.5:
                break
            idle_since = idle_since or time.monotonic()
            continue
        idle_since = None
        records, cursor, _ = reader.since(cursor)
        latencies.extend((now - records["origin_ns"]).tolist())
    reader.close()
    results.put(("reader", latencies))


def queue_writer_process(channel: Any, rate: float, seconds: float, go: Any) -> None:
    msg = sample_ticker()
    go.wait(30)

    def emit(origin_ns: int) -> None:
        msg.sim_ns = origin_ns
        channel.put(msg)

    _paced(rate, seconds, emit)
    channel.put(None)


def shm_visibility(rate: float, seconds: float, *, spin_ns: int) -> dict[str, list[int]]:
    """One writer and one spinning reader process; their latency samples (ns)."""
    context = multiprocessing.get_context("spawn")
    prefix = f"upfeed-bench-{uuid.uuid4().hex[:8]}"
    results = context.Queue()
    writer_ready, reader_ready, go = context.Event(), context.Event(), context.Event()
    writer = context.Process(
        target=shm_writer_process,
        args=(prefix, rate, seconds, writer_ready, go, results, spin_ns),
    )
    writer.start()
    writer_ready.wait(30)
    reader = context.Process(
        target=shm_reader_process, args=(prefix, seconds, reader_ready, results)
    )
    reader.start()
    reader_ready.wait(30)
    go.set()
    try:
        reports = dict(results.get(timeout=seconds + 30) for _ in range(2))
    finally:
        go.set()
        for process in (reader, writer):
            process.join(30)
            if process.is_alive():
                process.kill()
                process.join(5)
    return reports


def visibility(rate: float, seconds: float) -> dict[str, Any]:
    sleeping = shm_visibility(rate, seconds, spin_ns=0)
    # Spinning for a whole interval: the writer never sleeps. (A shorter spin changes
    # nothing here: Linux's sleeps overshoot by ~50 us, past the 100 us interval.)
    busy = shm_visibility(rate, seconds, spin_ns=int(1e9 / rate))
    context = multiprocessing.get_context("spawn")
    channel, go = context.Queue(maxsize=100_000), context.Event()
    producer = context.Process(target=queue_writer_process, args=(channel, rate, seconds, go))
    producer.start()
    queue_latencies: list[int] = []
    go.set()
    try:
        while True:
            try:
                item = channel.get(timeout=seconds + 30)
            except queue.Empty:
                break
            now = time.perf_counter_ns()
            if item is None:
                break
            queue_latencies.append(now - item.sim_ns)
    finally:
        producer.join(30)
        if producer.is_alive():
            producer.kill()
            producer.join(5)
    return {
        "rate_per_s": rate,
        "seconds": seconds,
        "reader": "spins on the head (wait_for_head, poll_interval=0), then since()",
        # The writer sleeps between updates: every write runs right after a wake-up.
        "shm": _percentiles(sleeping["reader"]),
        # These figures start before write_ticker; this is the write call's share.
        "shm_write_call": _percentiles(sleeping["writer"]),
        # The writer spins between updates (warm, like a feed thread kept busy by
        # traffic); with the reader also spinning, both cores are taken and any other
        # task preempts one of them for a scheduler tick.
        "shm_spinning_writer": _percentiles(busy["reader"]),
        "shm_spinning_writer_write_call": _percentiles(busy["writer"]),
        "baseline_mp_queue_pickle": _percentiles(queue_latencies),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench shm",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--seconds", type=float, default=2.0, help="each latency phase")
    parser.add_argument("--rate", type=float, default=10_000.0, help="updates per second")
    parser.add_argument("--number", type=int, default=50_000, help="calls per CPU repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", type=Path, default=RESULTS, help="JSON report file")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.rate <= 0 or args.number < 100 or args.repeats < 1:
        parser.error("need --seconds > 0, --rate > 0, --number >= 100, --repeats >= 1")
    load_before = os.getloadavg()
    costs = cpu_costs(args.number, args.repeats)
    latency = visibility(args.rate, args.seconds)
    measured = {
        "write_ticker_ns": costs["write_ns"]["ticker"],
        "write_orderbook15_ns": costs["write_ns"]["orderbook15"],
        "latest_ticker_ns": costs["read_ns"]["latest_ticker"],
        "visibility_p99_us": latency["shm"].get("p99", float("inf")),
    }
    report = {
        "bench": "shm",
        **costs,
        "visibility_us": latency,
        "targets": TARGETS,
        "within_target": {k: measured[k] <= TARGETS[k] for k in TARGETS},
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "platform": platform.platform(),
    }
    text = json.dumps(report, indent=2)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text + "\n")
    sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
