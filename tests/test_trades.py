import orjson

from feedhandler.rest import RestTrade
from feedhandler.trades import TradeSequencer, rest_trade_json


def _rest(sid, ts, price="100", prev="90"):
    return RestTrade("KRW-BTC", "2026-11-25", "10:00:00", ts, price, "0.5", prev, "10", "BID", sid)


def _live(seq, sid, ts):
    seq.on_live("KRW-BTC", sid, ts, orjson.dumps({"sequential_id": sid}), ts * 1000, 0)


def _collect():
    published, sys_events = [], []

    def publish(code, data, recv_ns, origin_ns, backfill):
        published.append((orjson.loads(data)["sequential_id"], backfill))

    seq = TradeSequencer(publish, lambda event, fields: sys_events.append((event, fields)))
    return seq, published, sys_events


def test_duplicates_are_dropped_by_sequential_id():
    seq, published, _ = _collect()
    for sid in (5, 7, 5, 9, 7):
        _live(seq, sid, 1000 + sid)
    assert published == [(5, False), (7, False), (9, False)]
    assert seq.duplicates == 2


def test_gap_buffers_live_trades_and_merges_backfill_by_time():
    seq, published, sys_events = _collect()
    _live(seq, 10, 1000)
    seq.on_gap(["KRW-BTC"])
    _live(seq, 14, 1004)  # first live trade after the drop (before resubscribe completes)
    assert published == [(10, False)]
    seq.on_resubscribed(["KRW-BTC"])
    assert seq.jobs.get_nowait() == "KRW-BTC"
    _live(seq, 15, 1005)
    assert seq.anchor("KRW-BTC") == (10, 1000)
    # REST answers newest first and overlaps both the anchor and the live buffer
    seq.complete(
        "KRW-BTC", [_rest(14, 1004), _rest(13, 1003), _rest(12, 1002), _rest(11, 1001)], None
    )
    assert published == [(10, False), (11, True), (12, True), (13, True), (14, False), (15, False)]
    assert ("backfill", {"code": "KRW-BTC", "trades": 3}) in sys_events
    _live(seq, 16, 1006)
    _live(seq, 15, 1005)
    assert published[-1] == (16, False)


def test_failed_backfill_is_reported_as_a_gap_and_buffer_flushed():
    seq, published, sys_events = _collect()
    _live(seq, 1, 100)
    seq.on_gap(["KRW-BTC"])
    seq.on_resubscribed(["KRW-BTC"])
    _live(seq, 3, 300)
    seq.complete("KRW-BTC", None, "banned for 60 s")
    assert published == [(1, False), (3, False)]
    assert sys_events[0][0] == "gap"
    assert sys_events[0][1]["after_sequential_id"] == 1
    assert sys_events[0][1]["reason"] == "banned for 60 s"


def test_no_gap_before_the_first_trade():
    seq, published, _ = _collect()
    seq.on_gap(["KRW-BTC"])
    _live(seq, 1, 100)
    assert published == [(1, False)]


def test_quiet_code_is_queued_after_resubscribe():
    seq, _, _ = _collect()
    _live(seq, 1, 100)
    seq.on_gap(["KRW-BTC"])
    seq.on_resubscribed(["KRW-BTC"])
    assert seq.jobs.empty()
    seq.flush_quiet(["KRW-BTC"])
    assert seq.jobs.get_nowait() == "KRW-BTC"


def test_rest_trade_renders_as_websocket_trade_with_exact_decimals():
    data = orjson.loads(
        rest_trade_json(_rest(17510687993360001, 1751068799336, "0.00001234", "0.00001300"))
    )
    assert data["trade_price"] == "0.00001234"
    assert data["change"] == "FALL"
    assert data["change_price"] == "0.00000066"
    assert data["sequential_id"] == 17510687993360001
    assert data["trade_date"] == "2026-11-25"
    assert data["code"] == "KRW-BTC"


def test_a_gap_during_backfill_restarts_it_from_the_first_anchor():
    seq, published, _ = _collect()
    _live(seq, 10, 1000)
    seq.on_gap(["KRW-BTC"])
    seq.on_resubscribed(["KRW-BTC"])
    _live(seq, 13, 1003)
    assert seq.jobs.get_nowait() == "KRW-BTC"
    seq.on_gap(["KRW-BTC"])  # dropped again while the REST call is running
    seq.complete("KRW-BTC", [_rest(13, 1003), _rest(12, 1002), _rest(11, 1001)], None)
    assert published == [(10, False)]  # nothing out of order yet
    assert seq.jobs.empty()
    seq.on_resubscribed(["KRW-BTC"])
    assert seq.jobs.get_nowait() == "KRW-BTC"
    assert seq.anchor("KRW-BTC") == (10, 1000)
    _live(seq, 16, 1006)
    seq.complete(
        "KRW-BTC",
        [
            _rest(16, 1006),
            _rest(15, 1005),
            _rest(14, 1004),
            _rest(13, 1003),
            _rest(12, 1002),
            _rest(11, 1001),
        ],
        None,
    )
    assert [sid for sid, _ in published] == [10, 11, 12, 13, 14, 15, 16]


def test_the_snapshot_of_the_anchor_trade_is_not_published_again_after_a_long_backfill():
    seq, published, _ = _collect()
    _live(seq, 10, 1000)
    seq.on_gap(["KRW-BTC"])
    seq.on_resubscribed(["KRW-BTC"])
    _live(seq, 10, 1000)  # the SNAPSHOT after resubscribing: the anchor trade again
    missed = [_rest(11 + i, 1001 + i) for i in range(400)][::-1]  # more than the window
    seq.complete("KRW-BTC", missed, None)
    sids = [sid for sid, _ in published]
    assert sids == list(range(10, 411))
    assert seq.duplicates == 1


def _item(sid, ts, code="KRW-BTC"):
    return (code, sid, ts, orjson.dumps({"sequential_id": sid}), ts * 1000, 7)


def test_a_batch_of_live_trades_is_sequenced_like_one_at_a_time():
    batches = []
    seq, published, _ = _collect()
    batched = TradeSequencer(
        lambda *args: None, lambda event, fields: None, publish_many=batches.append
    )
    items = [_item(5, 1005), _item(7, 1007), _item(5, 1005), _item(3, 1003, "KRW-ETH")]
    batched.on_live_many(items)
    for code, sid, ts, data, recv_ns, origin_ns in items:
        seq.on_live(code, sid, ts, data, recv_ns, origin_ns)
    # One publish call for the batch, with what one-by-one published, in order.
    assert len(batches) == 1
    assert [(orjson.loads(d)["sequential_id"], False) for _, d, _, _ in batches[0]] == published
    assert [(c, r, o) for c, _, r, o in batches[0]] == [
        ("KRW-BTC", 1005000, 7),
        ("KRW-BTC", 1007000, 7),
        ("KRW-ETH", 1003000, 7),
    ]
    assert batched.duplicates == seq.duplicates == 1
    assert batched.published == seq.published == 3
    # A later duplicate of the batch is dropped; a batch of only duplicates publishes nothing.
    batched.on_live_many([_item(7, 1007)])
    assert len(batches) == 1 and batched.duplicates == 2


def test_a_batch_during_a_gap_is_held_for_backfill():
    seq, published, _ = _collect()  # no publish_many: falls back to publish per trade
    seq.on_live_many([_item(10, 1000)])
    seq.on_gap(["KRW-BTC"])
    seq.on_resubscribed(["KRW-BTC"])
    seq.on_live_many([_item(12, 1002), _item(13, 1003, "KRW-ETH")])
    # KRW-ETH had no gap (nothing received before it): published; KRW-BTC waits.
    assert published == [(10, False), (13, False)]
    assert seq.jobs.get_nowait() == "KRW-BTC"
    seq.complete("KRW-BTC", [_rest(12, 1002), _rest(11, 1001)], None)
    assert published == [(10, False), (13, False), (11, True), (12, False)]
