"""Snapshot segments within one process: layout, values, ring semantics, lifecycle."""

from __future__ import annotations

import gc
import math
import mmap
import os
import stat

import numpy as np
import pytest

import shm
from shm import layout as L
from shm import native as shm_native
from tests import shm_helpers as H

CODES = ["KRW-BTC", "KRW-ETH", "BTC-XRP"]


@pytest.fixture(params=[True, False], ids=["c_copy", "python_copy"])
def native(request: pytest.FixtureRequest) -> bool:
    """Ring reads through the C copy and through the Python one: the same results."""
    if request.param and shm_native.copy_ring is None:
        pytest.skip(shm_native.READER_STATUS)
    return bool(request.param)


def docs_ticker(**changes: object) -> H.TickerMsg:
    """The Upbit docs' DEFAULT ticker example (KRW-BTC, 2023-02-21)."""
    msg = H.TickerMsg(
        code="KRW-BTC",
        opening_price=31883000.0,
        high_price=32310000.0,
        low_price=31855000.0,
        trade_price=32287000.0,
        prev_closing_price=31883000.0,
        change_price=404000.0,
        signed_change_price=404000.0,
        change_rate=0.0126713295,
        signed_change_rate=0.0126713295,
        trade_volume=0.03103806,
        acc_trade_volume=2429.58834336,
        acc_trade_volume_24h=7158.80283560,
        acc_trade_price=78039261076.51241,
        acc_trade_price_24h=228827082483.70729,
        acc_ask_volume=1146.25573608,
        acc_bid_volume=1283.33260728,
        highest_52_week_price=57678000.0,
        lowest_52_week_price=20700000.0,
        trade_timestamp=1676965262139,
        timestamp=1676965262177,
        change="RISE",
        ask_bid="ASK",
        market_state="ACTIVE",
        market_warning="NONE",
        is_trading_suspended=False,
        stream_type="REALTIME",
        sim_ns=0,
    )
    for key, value in changes.items():
        setattr(msg, key, value)
    return msg


def test_segment_files_are_named_by_contract_and_private(prefix: str) -> None:
    with shm.TickerWriter(prefix, CODES, capacity=8), shm.OrderbookWriter(prefix, CODES):
        for kind in ("ticker", "orderbook"):
            path = os.path.join("/dev/shm", f"{prefix}.{kind}")
            assert shm.segment_path(shm.segment_name(prefix, kind)) == path
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert H.leftover_segments(prefix) == [f"{prefix}.orderbook", f"{prefix}.ticker"]
    assert H.leftover_segments(prefix) == []


def test_ticker_record_holds_every_field(prefix: str) -> None:
    with shm.TickerWriter(prefix, CODES, capacity=8) as writer:
        reader = shm.attach(prefix, "ticker", timeout=1)
        assert reader.latest("KRW-BTC") is None
        msg = docs_ticker(sim_ns=123456789)
        feed_seq = writer.write_ticker(msg, recv_ns=1676965262180000001)
        rec = reader.latest("KRW-BTC")
        assert isinstance(rec, np.void)
        assert rec.dtype == reader.dtype == shm.TICKER_DTYPE
        assert rec["feed_seq"] == feed_seq == 1
        assert rec["seq"] == 2
        assert rec["symbol"] == 0 and reader.codes[rec["symbol"]] == "KRW-BTC"
        assert rec["recv_ns"] == 1676965262180000001
        assert rec["origin_ns"] == 123456789
        assert rec["timestamp"] == 1676965262177
        assert rec["trade_timestamp"] == 1676965262139
        for name in L.TICKER_FLOAT_FIELDS:
            assert rec[name] == getattr(msg, name), name
        assert rec["change"] == shm.CHANGE["RISE"]
        assert rec["ask_bid"] == shm.ASK_BID["ASK"]
        assert rec["market_state"] == shm.MARKET_STATE["ACTIVE"]
        assert rec["market_warning"] == shm.MARKET_WARNING["NONE"]
        assert rec["trading_suspended"] == 0
        assert rec["stream_type"] == shm.STREAM_TYPE["REALTIME"]
        reader.close()


def test_absent_fields_become_nan_zero_and_unknown(prefix: str) -> None:
    with shm.TickerWriter(prefix, CODES, capacity=8) as writer:
        reader = shm.attach(prefix, "ticker", timeout=1)
        msg = docs_ticker(
            code="KRW-ETH",
            acc_trade_price_24h=None,
            highest_52_week_price=None,
            trade_timestamp=None,
            change=None,
            market_warning="SOMETHING-NEW",
            is_trading_suspended=None,
            stream_type="SNAPSHOT",
        )
        writer.write_ticker(msg, recv_ns=5)
        rec = reader.latest("KRW-ETH")
        assert rec is not None
        assert math.isnan(rec["acc_trade_price_24h"]) and math.isnan(rec["highest_52_week_price"])
        assert rec["trade_price"] == msg.trade_price
        assert rec["trade_timestamp"] == 0
        assert rec["change"] == 0 and rec["market_warning"] == 0
        assert rec["trading_suspended"] == -1
        assert rec["stream_type"] == shm.STREAM_TYPE["SNAPSHOT"]
        reader.close()


def test_field_that_cannot_be_stored_fails_without_advancing(prefix: str) -> None:
    with shm.TickerWriter(prefix, CODES, capacity=4) as writer:
        reader = shm.attach(prefix, "ticker", timeout=1)
        writer.write_ticker(docs_ticker(), recv_ns=1)
        with pytest.raises(TypeError, match="KRW-BTC"):
            writer.write_ticker(docs_ticker(trade_price="32287000"), recv_ns=2)
        assert writer.head == reader.head == 1
        assert writer.write_ticker(docs_ticker(), recv_ns=3) == 2
        records, cursor, overrun = reader.since(0)
        assert list(records["feed_seq"]) == [1, 2] and cursor == 2 and overrun == 0
        reader.close()


@pytest.mark.parametrize("depth", [1, 2, 15, 30])
def test_orderbook_levels_and_zero_tail(prefix: str, depth: int) -> None:
    with shm.OrderbookWriter(prefix, CODES, capacity=4) as writer:
        reader = shm.attach(prefix, "orderbook", timeout=1)
        writer.write_orderbook(H.make_orderbook("KRW-BTC", 1000, 30), recv_ns=1)
        msg = H.make_orderbook("KRW-BTC", 77, depth, sim_ns=42)
        writer.write_orderbook(msg, recv_ns=2)
        rec = reader.latest("KRW-BTC")
        assert rec is not None and rec.dtype == shm.ORDERBOOK_DTYPE
        assert rec["n_levels"] == depth and rec["origin_ns"] == 42 and rec["recv_ns"] == 2
        levels = rec["levels"]
        assert levels.shape == (shm.MAX_LEVELS,)
        assert list(levels["bid_price"][:depth]) == [u.bid_price for u in msg.orderbook_units]
        assert list(levels["ask_size"][:depth]) == [u.ask_size for u in msg.orderbook_units]
        # The slot held a 30-level book before: nothing of it may survive past depth.
        assert not levels[depth:].tobytes().strip(b"\x00")
        assert rec["total_ask_size"] == msg.total_ask_size and rec["level"] == 0.0
        assert H.bad_orderbooks(np.array([rec])) == 0
        reader.close()


def test_orderbook_zero_padded_units_and_missing_level(prefix: str) -> None:
    units = [H.OrderbookUnit(101.0, 99.0, 1.5, 2.5), H.OrderbookUnit(0.0, 98.0, 0.0, 3.0)]
    msg = H.OrderbookMsg("KRW-ETH", 17, 1.5, 5.5, None, units, "SNAPSHOT")
    with shm.OrderbookWriter(prefix, CODES, capacity=4) as writer:
        reader = shm.attach(prefix, "orderbook", timeout=1)
        writer.write_orderbook(msg, recv_ns=3)
        rec = reader.latest("KRW-ETH")
        assert rec is not None
        assert rec["n_levels"] == 2
        assert list(rec["levels"]["ask_price"][:2]) == [101.0, 0.0]
        assert list(rec["levels"]["bid_price"][:2]) == [99.0, 98.0]
        assert math.isnan(rec["level"])
        assert rec["stream_type"] == shm.STREAM_TYPE["SNAPSHOT"]
        reader.close()


def test_unknown_code_is_refused_and_symbols_can_be_added(prefix: str) -> None:
    with shm.TickerWriter(prefix, CODES, capacity=8, max_symbols=4) as writer:
        reader = shm.attach(prefix, "ticker", timeout=1)
        with pytest.raises(shm.UnknownSymbolError, match="KRW-SOL"):
            writer.write_ticker(docs_ticker(code="KRW-SOL"), recv_ns=1)
        assert writer.head == 0
        with pytest.raises(shm.UnknownSymbolError):
            reader.latest("KRW-SOL")
        assert writer.add_symbol("KRW-SOL") == 3
        assert writer.add_symbol("KRW-SOL") == 3
        writer.write_ticker(docs_ticker(code="KRW-SOL"), recv_ns=1)
        rec = reader.latest("KRW-SOL")
        assert rec is not None and rec["symbol"] == 3
        assert reader.codes == (*CODES, "KRW-SOL")
        with pytest.raises(shm.SymbolTableFullError):
            writer.add_symbol("KRW-ADA")
        reader.close()


def test_since_reports_exact_overrun(prefix: str, native: bool) -> None:
    with shm.TickerWriter(prefix, CODES, capacity=4) as writer:
        reader = shm.attach(prefix, "ticker", timeout=1, native=native)
        records, cursor, overrun = reader.since(0)
        assert len(records) == 0 and cursor == 0 and overrun == 0
        for k in range(10):
            writer.write_ticker(H.make_ticker(CODES[k % 3], k, k % 3), recv_ns=k)
        records, cursor, overrun = reader.since(0)
        assert list(records["feed_seq"]) == [7, 8, 9, 10]
        assert cursor == 10 and overrun == 6
        assert H.bad_tickers(records) == 0
        assert records.flags.writeable
        records, cursor, overrun = reader.since(8)
        assert list(records["feed_seq"]) == [9, 10] and overrun == 0
        writer.write_ticker(H.make_ticker("KRW-BTC", 10, 0), recv_ns=10)
        records, cursor, overrun = reader.since(10)
        assert list(records["feed_seq"]) == [11] and cursor == 11 and overrun == 0
        records, cursor, overrun = reader.since(reader.head)
        assert len(records) == 0 and cursor == 11 and overrun == 0
        with pytest.raises(ValueError, match="cursor"):
            reader.since(-1)
        reader.close()


def test_quiet_symbol_keeps_its_latest_when_the_ring_wraps(prefix: str) -> None:
    with shm.TickerWriter(prefix, CODES, capacity=4) as writer:
        reader = shm.attach(prefix, "ticker", timeout=1)
        writer.write_ticker(H.make_ticker("BTC-XRP", 5, 2), recv_ns=1)
        for k in range(100):
            writer.write_ticker(H.make_ticker("KRW-BTC", k, 0), recv_ns=k)
        rec = reader.latest("BTC-XRP")
        assert rec is not None and rec["feed_seq"] == 1 and H.bad_tickers(np.array([rec])) == 0
        latest_btc = reader.latest("KRW-BTC")
        assert latest_btc is not None and latest_btc["feed_seq"] == 101
        reader.close()


def test_latest_many_in_requested_order(prefix: str) -> None:
    with shm.TickerWriter(prefix, CODES, capacity=8) as writer:
        reader = shm.attach(prefix, "ticker", timeout=1)
        writer.write_ticker(H.make_ticker("KRW-BTC", 1, 0), recv_ns=1)
        writer.write_ticker(H.make_ticker("BTC-XRP", 2, 2), recv_ns=2)
        rows = reader.latest_many(["BTC-XRP", "KRW-ETH", "KRW-BTC"])
        assert rows.dtype == shm.TICKER_DTYPE and rows.shape == (3,)
        assert list(rows["feed_seq"]) == [2, 0, 1]
        assert list(rows["symbol"][[0, 2]]) == [2, 0]
        assert H.bad_tickers(rows[rows["feed_seq"] > 0]) == 0
        with pytest.raises(shm.UnknownSymbolError):
            reader.latest_many(["KRW-BTC", "NOPE-NOPE"])
        reader.close()


def test_age_heartbeat_and_liveness_use_the_injected_clock(prefix: str) -> None:
    now = [1_000_000_000_000]
    with shm.TickerWriter(prefix, CODES, capacity=8, clock_ns=lambda: now[0]) as writer:
        reader = shm.attach(
            prefix, "ticker", timeout=1, heartbeat_timeout=2.0, clock_ns=lambda: now[0]
        )
        assert reader.age("KRW-BTC") == math.inf
        writer.write_ticker(docs_ticker(), recv_ns=now[0])
        now[0] += 1_500_000_000
        assert reader.age("KRW-BTC") == pytest.approx(1.5)
        assert reader.age("KRW-BTC", now_ns=now[0] + 500_000_000) == pytest.approx(2.0)
        assert reader.writer_alive
        now[0] += 1_000_000_000
        assert not reader.writer_alive, "heartbeat 2.5 s old must count as a dead writer"
        writer.heartbeat()
        assert reader.writer_alive
        assert reader.heartbeat_ns == now[0]
        assert reader.writer_pid == os.getpid()
        reader.close()


def test_second_writer_is_refused(prefix: str) -> None:
    with shm.TickerWriter(prefix, CODES, capacity=8) as writer:
        with pytest.raises(shm.SegmentOwnedError, match=f"pid {os.getpid()}") as info:
            shm.TickerWriter(prefix, ["KRW-BTC"], capacity=8)
        assert info.value.pid == os.getpid()
        writer.write_ticker(docs_ticker(), recv_ns=1)
        assert writer.head == 1


def test_reader_close_leaves_segment_and_writer_close_is_seen(prefix: str) -> None:
    writer = shm.TickerWriter(prefix, CODES, capacity=8)
    writer.write_ticker(docs_ticker(), recv_ns=1)
    reader = shm.attach(prefix, "ticker", timeout=1)
    reader.close()
    reader.close()
    assert H.leftover_segments(prefix) == [f"{prefix}.ticker"]
    with pytest.raises(ValueError, match="closed"):
        reader.latest("KRW-BTC")
    reader = shm.attach(prefix, "ticker", timeout=1)
    assert reader.state == "live" and reader.writer_alive
    writer.close()
    writer.close()
    assert H.leftover_segments(prefix) == []
    assert reader.state == "closed" and not reader.writer_alive
    rec = reader.latest("KRW-BTC")
    assert rec is not None and rec["feed_seq"] == 1, "data stays readable after the writer left"
    with pytest.raises(ValueError, match="closed"):
        writer.write_ticker(docs_ticker(), recv_ns=2)
    reader.close()


def test_attach_times_out_with_a_typed_error(prefix: str) -> None:
    with pytest.raises(shm.SegmentNotFoundError, match=f"{prefix}.ticker"):
        shm.attach(prefix, "ticker", timeout=0.05, poll_interval=0.01)


def test_foreign_file_is_neither_read_nor_replaced(prefix: str) -> None:
    path = shm.segment_path(shm.segment_name(prefix, "ticker"))
    with open(path, "wb") as foreign:
        foreign.write(b"not a segment" * 1000)
    with pytest.raises(shm.LayoutMismatchError):
        shm.attach(prefix, "ticker", timeout=0.1)
    with pytest.raises(shm.LayoutMismatchError):
        shm.TickerWriter(prefix, CODES)
    with open(path, "rb") as foreign:
        assert foreign.read(13) == b"not a segment"
    os.unlink(path)


def test_stale_segment_is_replaced_and_readers_follow(prefix: str) -> None:
    first = shm.TickerWriter(prefix, CODES, capacity=4)
    reader = shm.attach(prefix, "ticker", timeout=1)
    for k in range(6):
        first.write_ticker(H.make_ticker("KRW-ETH", k, 1), recv_ns=k)
    old_generation = reader.generation
    records, cursor, overrun = reader.since(0)
    assert cursor == 6 and overrun == 2
    # Left behind without unlinking: the lock is gone, so the next writer may replace it.
    first.close(unlink=False)
    assert H.leftover_segments(prefix) == [f"{prefix}.ticker"]

    with shm.TickerWriter(prefix, ["BTC-XRP", "KRW-SOL"], capacity=4) as second:
        assert second.replaced_stale
        assert second.head == 6, "feed sequence continues across generations"
        assert second.codes == (*CODES, "KRW-SOL"), "symbol ids survive the restart"
        second.write_ticker(H.make_ticker("KRW-SOL", 6, 3), recv_ns=6)
        records, cursor, overrun = reader.since(cursor)
        assert list(records["feed_seq"]) == [7] and overrun == 0
        assert reader.generation != old_generation
        assert H.bad_tickers(records) == 0
        rec = reader.latest("KRW-SOL")
        assert rec is not None and rec["feed_seq"] == 7
        assert reader.writer_alive
    reader.close()


def test_wait_helpers(prefix: str) -> None:
    with shm.TickerWriter(prefix, CODES, capacity=8) as writer:
        reader = shm.attach(prefix, "ticker", timeout=1)
        assert reader.wait_for_update("KRW-BTC", 0, timeout=0.02) is None
        assert reader.wait_for_head(0, timeout=0.02) == 0
        writer.write_ticker(docs_ticker(), recv_ns=1)
        rec = reader.wait_for_update("KRW-BTC", 0, timeout=1)
        assert rec is not None and rec["feed_seq"] == 1
        assert reader.wait_for_update("KRW-BTC", 1, timeout=0.02) is None
        assert reader.wait_for_head(0, timeout=1) == 1
        reader.close()


def test_payload_check_detects_a_spliced_record() -> None:
    first = np.zeros(1, shm.TICKER_DTYPE)
    second = np.zeros(1, shm.TICKER_DTYPE)
    for records, k in ((first, 10), (second, 11)):
        msg = H.make_ticker("KRW-BTC", k, 0)
        records["feed_seq"], records["seq"] = k, 2 * k
        records["trade_timestamp"], records["timestamp"] = k, k
        records["change"] = shm.CHANGE[msg.change]
        for name in L.TICKER_FLOAT_FIELDS:
            records[name] = getattr(msg, name)
    assert H.bad_tickers(first) == 0 and H.bad_tickers(second) == 0
    spliced = np.frombuffer(first.tobytes()[:120] + second.tobytes()[120:], shm.TICKER_DTYPE)
    assert H.bad_tickers(spliced) == 1


def test_reader_never_returns_a_record_the_writer_is_inside(prefix: str, native: bool) -> None:
    with shm.TickerWriter(prefix, CODES, capacity=4) as writer:
        reader = shm.attach(prefix, "ticker", timeout=1, read_timeout=0.05, native=native)
        writer.write_ticker(docs_ticker(), recv_ns=1)
        # Freeze the writer between its two seq stores on KRW-BTC's latest slot.
        latest_word = writer._targets["KRW-BTC"][1]
        writer._q[latest_word] = 3
        with pytest.raises(shm.InconsistentReadError, match="KRW-BTC"):
            reader.latest("KRW-BTC")
        rows = None
        with pytest.raises(shm.InconsistentReadError):
            rows = reader.latest_many(["KRW-BTC"])
        assert rows is None
        writer._q[latest_word] = 2
        rec = reader.latest("KRW-BTC")
        assert rec is not None and rec["feed_seq"] == 1
        # A ring slot caught mid-write is reported as lost, not returned.
        writer._q[(writer._ring_off) >> 3] = 3
        records, cursor, overrun = reader.since(0)
        assert len(records) == 0 and cursor == 1 and overrun == 1
        reader.close()


@pytest.mark.parametrize("lost_in_the_middle", [False, True])
def test_since_large_batches(prefix: str, lost_in_the_middle: bool, native: bool) -> None:
    with shm.TickerWriter(prefix, CODES, capacity=64) as writer:
        reader = shm.attach(prefix, "ticker", timeout=1, native=native)
        for k in range(200):
            writer.write_ticker(H.make_ticker(CODES[k % 3], k, k % 3), recv_ns=k)
        if lost_in_the_middle:
            # The writer caught inside the record of feed_seq 150: not returned, counted.
            writer._q[(writer._ring_off + (150 - 1) % 64 * writer.dtype.itemsize) >> 3] = 299
        records, cursor, overrun = reader.since(0)
        expected = [p for p in range(137, 201) if not (lost_in_the_middle and p == 150)]
        assert list(records["feed_seq"]) == expected
        assert cursor == 200 and overrun == 136 + lost_in_the_middle
        assert H.bad_tickers(records) == 0
        records, cursor, overrun = reader.since(180)
        assert list(records["feed_seq"]) == list(range(181, 201)) and overrun == 0
        reader.close()


def test_dropped_writer_releases_its_segment(prefix: str) -> None:
    writer = shm.TickerWriter(prefix, CODES, capacity=8)
    writer.write_ticker(docs_ticker(), recv_ns=1)
    reader = shm.attach(prefix, "ticker", timeout=1)
    del writer
    assert H.leftover_segments(prefix) == []
    assert reader.state == "closed" and not reader.writer_alive
    reader.close()


def test_damaged_segment_is_refused_by_readers_and_replaced_by_writers(prefix: str) -> None:
    first = shm.TickerWriter(prefix, CODES, capacity=8)
    first.write_ticker(docs_ticker(), recv_ns=1)
    path = first.path
    first.close(unlink=False)
    with open(path, "r+b") as damaged:
        damaged.seek(L.H_RING_OFF * 8)
        damaged.write((12345).to_bytes(8, "little"))
    with pytest.raises(shm.LayoutMismatchError, match="offsets"):
        shm.attach(prefix, "ticker", timeout=0.1)
    with shm.TickerWriter(prefix, CODES, capacity=8) as second:
        assert second.replaced_stale
        assert second.head == 0, "nothing is continued from a damaged segment"
        with shm.attach(prefix, "ticker", timeout=1) as reader:
            assert reader.codes == tuple(CODES) and reader.latest("KRW-BTC") is None


def test_message_missing_a_field_leaves_the_ring_consistent(prefix: str) -> None:
    class Partial:
        code = "KRW-BTC"

    with shm.TickerWriter(prefix, CODES, capacity=4) as writer:
        reader = shm.attach(prefix, "ticker", timeout=1)
        for k in range(5):
            writer.write_ticker(H.make_ticker("KRW-ETH", k, 1), recv_ns=k)
        with pytest.raises(AttributeError):
            writer.write_ticker(Partial(), recv_ns=9)
        assert writer.write_ticker(H.make_ticker("KRW-BTC", 5, 0), recv_ns=10) == 6
        records, cursor, overrun = reader.since(0)
        assert list(records["feed_seq"]) == [3, 4, 5, 6] and cursor == 6 and overrun == 2
        assert H.bad_tickers(records) == 0
        reader.close()


def test_describe_reports_the_header(prefix: str) -> None:
    assert shm.describe(prefix, "ticker") is None
    with shm.OrderbookWriter(prefix, CODES, capacity=16) as writer:
        writer.write_orderbook(H.make_orderbook("KRW-ETH", 3, 5), recv_ns=1)
        info = shm.describe(prefix, "orderbook")
        assert info is not None
        assert info["name"] == f"{prefix}.orderbook" and info["state"] == "live"
        assert info["writer_pid"] == os.getpid() and info["writer_running"] is True
        assert info["head"] == 1 and info["capacity"] == 16
        assert info["record_size"] == shm.ORDERBOOK_DTYPE.itemsize
        assert info["codes"] == CODES and info["generation"] == writer.generation
        assert info["wakes_readers"] is writer.native
        assert info["sleeping_readers"] == 0 and info["wake_misses"] == 0
        assert {k: writer.describe()[k] for k in ("head", "sleeping_readers")} == {
            "head": 1,
            "sleeping_readers": 0,
        }
        writer.close(unlink=False)
        closed = shm.describe(prefix, "orderbook")
        assert closed is not None and closed["state"] == "closed"
    os.unlink(shm.segment_path(f"{prefix}.orderbook"))


def test_reading_the_dtype_description_leaves_the_collector_as_it_was() -> None:
    # No collection may run while the description is parsed (a CPython 3.11 AST bug),
    # and the collector's state is restored afterwards, errors included.
    text = L.dtype_descr_text(L.ORDERBOOK_DTYPE)
    for enabled in (True, False):
        (gc.enable if enabled else gc.disable)()
        try:
            L.dtype_from_descr_text.cache_clear()
            assert L.dtype_from_descr_text(text) == L.ORDERBOOK_DTYPE
            assert gc.isenabled() is enabled
            with pytest.raises(ValueError, match="unreadable"):
                L.dtype_from_descr_text(text[:-5])
            assert gc.isenabled() is enabled
        finally:
            gc.enable()
    assert L.dtype_from_descr_text(text) is L.dtype_from_descr_text(text)  # parsed once


def _resident_bytes_of(path: str) -> list[int]:
    """Rss of each of this process's mappings of the file at ``path`` (by inode: the
    writer maps the file under its temporary name)."""
    inode = str(os.stat(path).st_ino)
    resident, mapping_of_path = [], False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if "-" in fields[0] and len(fields) >= 5:
                mapping_of_path = fields[4] == inode
            elif mapping_of_path and fields[0] == "Rss:":
                resident.append(int(fields[1]) * 1024)
    return resident


def test_segment_memory_is_reserved_and_mapped_before_the_first_write(prefix: str) -> None:
    capacity = 4096
    with shm.TickerWriter(prefix, CODES, capacity=capacity) as writer:
        path = shm.segment_path(shm.segment_name(prefix, "ticker"))
        size = os.stat(path).st_size
        assert size > capacity * L.TICKER_DTYPE.itemsize
        pages = -(-size // mmap.PAGESIZE) * mmap.PAGESIZE
        # Allocated on tmpfs, not a sparse file that a full /dev/shm turns into SIGBUS.
        assert os.stat(path).st_blocks * 512 >= size
        assert _resident_bytes_of(path) == [pages], "the writer's first lap must not fault"
        reader = shm.attach(prefix, "ticker", timeout=1)
        try:
            assert _resident_bytes_of(path) == [pages, pages]
            writer.write_ticker(docs_ticker(), recv_ns=1)
            assert reader.latest("KRW-BTC")["feed_seq"] == 1
        finally:
            reader.close()


def test_segment_without_room_in_dev_shm_is_refused_at_creation(prefix: str) -> None:
    fs = os.statvfs(shm.SHM_DIR)
    room = fs.f_blocks * fs.f_frsize
    capacity = 16
    while capacity * L.TICKER_DTYPE.itemsize <= room:
        capacity *= 2
    with pytest.raises(shm.SegmentSpaceError, match=f"{prefix}.ticker") as info:
        shm.TickerWriter(prefix, CODES, capacity=capacity)
    assert info.value.size > room and "/dev/shm" in str(info.value)
    assert H.leftover_segments(prefix) == [], "the half-built segment must be removed"
    with shm.TickerWriter(prefix, CODES, capacity=16) as writer:
        writer.write_ticker(docs_ticker(), recv_ns=1)
        assert writer.head == 1
