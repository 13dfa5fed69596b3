"""Trades: de-duplication by sequential_id, gap buffering and REST backfill.

After a connection gap (drop, stall) every trade code of that connection enters the
*gap* state: live trades are buffered from then on. Once the connection is subscribed
again and the first live trade of the code arrives (Upbit sends the newest trade as a
SNAPSHOT first), the code is queued for backfill: REST ``/v1/trades/ticks`` is paged
backwards to the last trade seen before the gap, and the missed trades plus the
buffered live ones are published merged by trade time, each ``sequential_id`` once.
Backfill that fails is published as a ``sys.gap`` event: a loss is never silent.
``sequential_id`` is used for identity only, never for order (SPEC.md section 10).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

import orjson

from feedhandler.backoff import sleep_interruptibly
from feedhandler.rest import RestClient, RestError, RestTrade

log = logging.getLogger("feedhandler.trades")

# publish(code, data_json, recv_ns, origin_ns, backfill)
PublishTrade = Callable[[str, bytes, int, int, bool], None]
# publish_sys(event, fields)
PublishSys = Callable[[str, dict[str, object]], None]
# publish_many([(code, data_json, recv_ns, origin_ns), ...]): live trades, in order
PublishTrades = Callable[[list[tuple[str, bytes, int, int]]], None]
# on_live_many's items: (code, sequential_id, trade_timestamp, data_json, recv_ns, origin_ns)
LiveItem = tuple[str, int, int, bytes, int, int]

# Trade ids remembered per market. Duplicates arrive close together (a re-sent frame,
# the SNAPSHOT trade after a resubscribe, REST pages overlapping the last live trade), so
# a short window suffices; it bounds memory at ~16 KiB per market (~14 MB for 855).
DEDUP_WINDOW = 256
BACKFILL_ATTEMPTS = 5
BACKFILL_RETRY_BASE = 0.25  # seconds; doubles per attempt (0.25 .. 4 s)
MAX_BUFFERED = 200_000


@dataclass(slots=True)
class LiveTrade:
    """A live trade kept while its code waits for backfill."""

    sequential_id: int
    trade_timestamp: int
    data_json: bytes
    recv_ns: int
    origin_ns: int


@dataclass(slots=True)
class _CodeState:
    last_sid: int | None = None
    last_timestamp: int | None = None
    recent: set[int] = field(default_factory=set)
    order: deque[int] = field(default_factory=deque)
    gap_anchor: tuple[int, int] | None = None  # (sid, timestamp) of the last trade before a gap
    in_gap: bool = False
    resubscribed: bool = False
    queued: bool = False
    regap: bool = False  # another gap opened while a backfill was in flight
    buffer: list[LiveTrade] = field(default_factory=list)
    overflowed: int = 0

    def remember(self, sid: int) -> bool:
        """Record ``sid``; False if it was seen already."""
        if sid in self.recent:
            return False
        self.recent.add(sid)
        self.order.append(sid)
        if len(self.order) > DEDUP_WINDOW:
            self.recent.discard(self.order.popleft())
        return True


def rest_trade_json(trade: RestTrade) -> bytes:
    """A REST trade as the WebSocket trade object (DEFAULT names, exact decimal strings)."""
    price = Decimal(trade.trade_price)
    prev = Decimal(trade.prev_closing_price)
    change = "RISE" if price > prev else "FALL" if price < prev else "EVEN"
    return orjson.dumps(
        {
            "type": "trade",
            "code": trade.market,
            "trade_price": trade.trade_price,
            "trade_volume": trade.trade_volume,
            "ask_bid": trade.ask_bid,
            "prev_closing_price": trade.prev_closing_price,
            "change": change,
            "change_price": format(abs(price - prev), "f"),
            "trade_date": trade.trade_date_utc,
            "trade_time": trade.trade_time_utc,
            "trade_timestamp": trade.timestamp,
            "timestamp": trade.timestamp,
            "sequential_id": trade.sequential_id,
            "stream_type": "REALTIME",
        }
    )


class TradeSequencer:
    """Per-code trade state shared by the connection threads and the backfill thread."""

    def __init__(
        self,
        publish: PublishTrade,
        publish_sys: PublishSys,
        publish_many: PublishTrades | None = None,
    ) -> None:
        """``publish_many``, if given, takes the live trades of one :meth:`on_live_many`
        call together (``publish`` one by one otherwise)."""
        self._publish = publish
        self._publish_sys = publish_sys
        self._publish_many = publish_many or self._publish_each
        self._lock = threading.Lock()
        self._acquire, self._release = self._lock.acquire, self._lock.release
        self._codes: dict[str, _CodeState] = {}
        self.jobs: queue.Queue[str] = queue.Queue(maxsize=10_000)
        self.duplicates = 0
        self.published = 0
        self.backfilled = 0
        self.gaps_reported = 0

    def _state(self, code: str) -> _CodeState:
        state = self._codes.get(code)
        if state is None:
            state = self._codes[code] = _CodeState()
        return state

    # -- called by connection threads ------------------------------------------------

    def on_live(
        self, code: str, sid: int, timestamp: int, data_json: bytes, recv_ns: int, origin_ns: int
    ) -> None:
        # acquire/release rather than a with-block: this runs for every trade.
        self._acquire()
        try:
            state = self._codes.get(code) or self._state(code)
            if state.in_gap:
                self._hold_for_backfill(code, state, sid, timestamp, data_json, recv_ns, origin_ns)
                return
            if not state.remember(sid):
                self.duplicates += 1
                return
            state.last_sid, state.last_timestamp = sid, timestamp
            self.published += 1
            self._publish(code, data_json, recv_ns, origin_ns, False)
        finally:
            self._release()

    def on_live_many(self, trades: Sequence[LiveItem]) -> None:
        """:meth:`on_live` for each of ``trades`` in order, under one lock acquisition;
        the ones to publish go to ``publish_many`` in one call."""
        self._acquire()
        try:
            codes = self._codes
            out: list[tuple[str, bytes, int, int]] = []
            for code, sid, timestamp, data_json, recv_ns, origin_ns in trades:
                state = codes.get(code) or self._state(code)
                if state.in_gap:
                    self._hold_for_backfill(
                        code, state, sid, timestamp, data_json, recv_ns, origin_ns
                    )
                elif not state.remember(sid):
                    self.duplicates += 1
                else:
                    state.last_sid, state.last_timestamp = sid, timestamp
                    out.append((code, data_json, recv_ns, origin_ns))
            if out:
                self.published += len(out)
                self._publish_many(out)
        finally:
            self._release()

    def _hold_for_backfill(
        self,
        code: str,
        state: _CodeState,
        sid: int,
        timestamp: int,
        data_json: bytes,
        recv_ns: int,
        origin_ns: int,
    ) -> None:
        # Called with the lock held, for a live trade of a code whose gap is still open.
        if len(state.buffer) >= MAX_BUFFERED:
            state.overflowed += 1
        else:
            state.buffer.append(LiveTrade(sid, timestamp, data_json, recv_ns, origin_ns))
        if state.resubscribed and not state.queued:
            self._enqueue(code, state)

    def _publish_each(self, trades: list[tuple[str, bytes, int, int]]) -> None:
        for code, data_json, recv_ns, origin_ns in trades:
            self._publish(code, data_json, recv_ns, origin_ns, False)

    def on_gap(self, codes: Iterable[str]) -> None:
        """A connection carrying these trade codes lost data flow."""
        with self._lock:
            for code in codes:
                state = self._state(code)
                if state.in_gap:
                    state.resubscribed = False
                    state.regap = state.queued
                    continue
                if state.last_sid is None or state.last_timestamp is None:
                    continue  # nothing received yet: there is no gap to fill
                state.in_gap = True
                state.resubscribed = False
                state.gap_anchor = (state.last_sid, state.last_timestamp)

    def on_resubscribed(self, codes: Iterable[str]) -> None:
        """The connection sent its subscription again; trades will flow."""
        with self._lock:
            for code in codes:
                state = self._codes.get(code)
                if state is not None and state.in_gap:
                    state.resubscribed = True
                    if state.buffer and not state.queued:
                        self._enqueue(code, state)

    def flush_quiet(self, codes: Iterable[str]) -> None:
        """Queue backfill for gap codes that stayed silent since resubscribing."""
        with self._lock:
            for code in codes:
                state = self._codes.get(code)
                if state is not None and state.in_gap and state.resubscribed and not state.queued:
                    self._enqueue(code, state)

    def _enqueue(self, code: str, state: _CodeState) -> None:
        try:
            self.jobs.put_nowait(code)
            state.queued = True
        except queue.Full:
            log.error("event=backfill_queue_full code=%s", code)

    # -- called by the backfill thread -----------------------------------------------

    def anchor(self, code: str) -> tuple[int, int] | None:
        with self._lock:
            state = self._codes.get(code)
            return None if state is None else state.gap_anchor

    def complete(self, code: str, missed: list[RestTrade] | None, error: str | None) -> None:
        """Publish ``missed`` (newest first, as REST answers) merged with the buffer.

        ``missed`` None means the backfill failed: the gap is reported, the buffer flushed.
        """
        with self._lock:
            state = self._state(code)
            if state.regap and missed is not None:
                # The answer predates a newer gap: fetch again from the same anchor once
                # the connection is back, so nothing published comes out of order.
                state.regap = state.queued = False
                if state.resubscribed and state.buffer:
                    self._enqueue(code, state)
                return
            anchor = state.gap_anchor
            buffer, state.buffer = state.buffer, []
            overflowed, state.overflowed = state.overflowed, 0
            state.in_gap = state.queued = state.resubscribed = state.regap = False
            state.gap_anchor = None
            if missed is None or overflowed:
                self.gaps_reported += 1
                self._publish_sys(
                    "gap",
                    {
                        "code": code,
                        "after_sequential_id": None if anchor is None else anchor[0],
                        "after_timestamp": None if anchor is None else anchor[1],
                        "reason": error or f"{overflowed} live trades dropped while buffering",
                    },
                )
            # The SNAPSHOT trade sent after a resubscribe is usually the last one published
            # before the gap: drop what was published already before merging, or it would
            # land after the newer REST trades.
            fresh = [t for t in buffer if t.sequential_id not in state.recent]
            self.duplicates += len(buffer) - len(fresh)
            merged = _merge(missed or [], fresh)
            backfilled_before = self.backfilled
            now_ns = time.time_ns()
            for item in merged:
                if isinstance(item, LiveTrade):
                    if not state.remember(item.sequential_id):
                        self.duplicates += 1
                        continue
                    state.last_sid, state.last_timestamp = item.sequential_id, item.trade_timestamp
                    self.published += 1
                    self._publish(code, item.data_json, item.recv_ns, item.origin_ns, False)
                else:
                    if not state.remember(item.sequential_id):
                        self.duplicates += 1
                        continue
                    state.last_sid, state.last_timestamp = item.sequential_id, item.timestamp
                    self.published += 1
                    self.backfilled += 1
                    self._publish(code, rest_trade_json(item), now_ns, 0, True)
            backfilled = self.backfilled - backfilled_before
            if backfilled:
                self._publish_sys("backfill", {"code": code, "trades": backfilled})

    def status(self) -> dict[str, object]:
        with self._lock:
            return {
                "codes": len(self._codes),
                "in_gap": sorted(c for c, s in self._codes.items() if s.in_gap),
                "published": self.published,
                "duplicates_dropped": self.duplicates,
                "backfilled": self.backfilled,
                "gaps_reported": self.gaps_reported,
            }


def _merge(rest_newest_first: list[RestTrade], live: list[LiveTrade]) -> list:
    """The exchange's order: every trade REST knows at its REST position (the live copy
    where there is one), then the live trades that are newer than the REST answer."""
    live_by_sid = {t.sequential_id: t for t in live}
    out: list[RestTrade | LiveTrade] = []
    rest_sids = set()
    for trade in reversed(rest_newest_first):
        rest_sids.add(trade.sequential_id)
        out.append(live_by_sid.get(trade.sequential_id, trade))
    out.extend(t for t in live if t.sequential_id not in rest_sids)
    return out


def fetch_missed(
    rest: RestClient, code: str, anchor: tuple[int, int], *, page_size: int, max_pages: int
) -> list[RestTrade]:
    """Trades newer than ``anchor`` (sid, timestamp), newest first.

    Pages backwards until the anchor trade itself or an older trade shows up. Raises
    RestError when the history runs out of pages before reaching the anchor.
    """
    anchor_sid, anchor_ts = anchor
    missed: list[RestTrade] = []
    cursor: int | None = None
    for _ in range(max_pages):
        page = rest.trades(code, count=page_size, cursor=cursor)
        for trade in page:
            if trade.sequential_id == anchor_sid or trade.timestamp < anchor_ts:
                return missed
            missed.append(trade)
        if len(page) < page_size:
            return missed
        cursor = page[-1].sequential_id
    raise RestError("/v1/trades/ticks", 200, f"{code}: gap longer than {max_pages} pages")


class Backfiller(threading.Thread):
    """Runs queued backfills one at a time, within the REST rate limits."""

    def __init__(
        self,
        sequencer: TradeSequencer,
        rest: RestClient,
        stop: threading.Event,
        *,
        page_size: int = 500,
        max_pages: int = 20,
    ) -> None:
        super().__init__(name="backfill", daemon=True)
        self._sequencer = sequencer
        self._rest = rest
        self._stop_event = stop
        self._page_size = page_size
        self._max_pages = max_pages

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                code = self._sequencer.jobs.get(timeout=0.2)
            except queue.Empty:
                continue
            anchor = self._sequencer.anchor(code)
            if anchor is None:
                self._sequencer.complete(code, [], None)
                continue
            missed, error = self._fetch_with_retries(code, anchor)
            self._sequencer.complete(code, missed, error)

    def _fetch_with_retries(
        self, code: str, anchor: tuple[int, int]
    ) -> tuple[list[RestTrade] | None, str | None]:
        """Transient REST failures are retried with backoff (live trades keep buffering);
        a 418 ban is waited out by the rate limiter on the next attempt."""
        error = ""
        for attempt in range(BACKFILL_ATTEMPTS):
            try:
                missed = fetch_missed(
                    self._rest, code, anchor, page_size=self._page_size, max_pages=self._max_pages
                )
            except RestError as exc:
                error = str(exc)
                log.warning(
                    "event=backfill_retry code=%s attempt=%d error=%r", code, attempt + 1, error
                )
                if sleep_interruptibly(self._stop_event, BACKFILL_RETRY_BASE * 2**attempt):
                    break
                continue
            return missed, None
        log.error(
            "event=backfill_failed code=%s attempts=%d error=%r", code, BACKFILL_ATTEMPTS, error
        )
        return None, error or "stopped"
