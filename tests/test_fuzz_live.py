"""Fuzz at volume: 100,000 mutated frames through the codec, and thousands through a live
connection from the simulator into a running feed.

The mutators are those of ``test_codec_fuzz.py`` (which runs 12,000 mutations through
every decoder entry point); here the bulk goes through the feed's hot path only, and the
live run checks what the codec tests cannot: the feed keeps its connection, counts every
bad frame exactly once and logs them once (rate-limited), and keeps streaming.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from pathlib import Path

import pytest

from feedhandler.logs import FIELDS_ATTR
from feedhandler.publisher import Publisher
from feedhandler.router import Router, UpstreamError, publish_trade_to
from feedhandler.trades import TradeSequencer
from feedhandler.upbit import HotDecoder, HotTrade, ProtocolError, trade_to_json
from feedhandler.upbit.events import ErrorMessage
from shm import OrderbookWriter, TickerWriter
from simulator import Simulator
from tests.conftest import SESSION_PREFIX, wait_until
from tests.test_codec_fuzz import (
    SAMPLES,
    duplicate_span,
    flip_bytes,
    odd_number,
    splice,
    swap_value,
    truncate,
    wrong_top_level,
)

CODEC_MUTATIONS = 100_000
LIVE_MUTATIONS = 3_000
INJECT_BATCH = 500
# Mutators that keep frames small (the nesting one builds 250 kB frames; the codec
# fuzz covers it); the cheap byte-level ones are weighted up for speed.
FAST_MUTATORS = [truncate, flip_bytes, flip_bytes, splice, splice, duplicate_span, odd_number]
ALL_MUTATORS = [*FAST_MUTATORS, swap_value, wrong_top_level]


def default_samples() -> list[bytes]:
    """Recorded DEFAULT-format frames of the public types (no error frames)."""
    names = ("ticker_default_", "trade_default_", "orderbook_default_", "candle_default_")
    paths = sorted(p for p in Path(SAMPLES).glob("*.json") if p.name.startswith(names))
    assert len(paths) >= 5, paths
    return [p.read_bytes().strip() for p in paths]


def hot_outcome(decoder: HotDecoder, frame: bytes) -> str:
    """What the feed's router makes of ``frame``: bad, error (closes the connection) or ok."""
    try:
        msg = decoder.decode(frame)
        if isinstance(msg, HotTrade):
            trade_to_json(msg)  # the router renders trades, which checks their decimals
    except ProtocolError as exc:
        assert len(exc.excerpt) <= 80
        return "bad"
    return "error" if isinstance(msg, ErrorMessage) else "ok"


@pytest.mark.timeout(90)
def test_100k_mutated_frames_through_the_hot_codec() -> None:
    rng = random.Random(91)
    samples = default_samples()
    decoder = HotDecoder(format="DEFAULT")
    outcomes = {"bad": 0, "ok": 0, "error": 0}
    for index in range(CODEC_MUTATIONS):
        mutator = rng.choice(ALL_MUTATORS if index % 10 == 0 else FAST_MUTATORS)
        frame = mutator(rng, rng.choice(samples))
        try:
            outcomes[hot_outcome(decoder, frame)] += 1
        except AssertionError:
            raise
        except Exception as exc:  # noqa: BLE001 - any other exception is the finding
            pytest.fail(f"mutation {index} ({mutator.__name__}) leaked {exc!r}: {frame[:120]!r}")
    assert sum(outcomes.values()) == CODEC_MUTATIONS
    # both outcomes must be common, or the mutations test nothing
    assert outcomes["bad"] > CODEC_MUTATIONS // 3, outcomes
    assert outcomes["ok"] > CODEC_MUTATIONS // 20, outcomes


class LocalRouter:
    """The feed's own Router over throwaway shm segments: classifies frames exactly as the
    live feed will (decode, render, store in shm, new market codes)."""

    def __init__(self, codes: list[str]) -> None:
        self.prefix = f"{SESSION_PREFIX}fz{uuid.uuid4().hex[:6]}"
        extra = len(codes) + 256
        self.ticker = TickerWriter(self.prefix, codes, max_symbols=extra)
        self.orderbook = OrderbookWriter(self.prefix, codes, max_symbols=extra)
        self.bus = Publisher(f"inproc://fuzz-{uuid.uuid4().hex}")
        sequencer = TradeSequencer(publish_trade_to(self.bus), self.bus.publish_sys)
        self.router = Router(
            ticker_writer=self.ticker, orderbook_writer=self.orderbook, bus=self.bus,
            trades=sequencer,
        )  # fmt: skip
        self.decoder = HotDecoder(format="DEFAULT")

    def outcome(self, frame: bytes) -> str:
        bad = self.router.counts["bad_frame"]
        try:
            self.router.route("fuzz", self.decoder, frame, time.time_ns())
        except UpstreamError:
            return "error"
        return "bad" if self.router.counts["bad_frame"] > bad else "ok"

    def close(self) -> None:
        self.bus.close()
        self.ticker.close(unlink=True)
        self.orderbook.close(unlink=True)


def mutated_live_frames(
    rng: random.Random, count: int, codes: list[str]
) -> tuple[list[bytes], int]:
    """``count`` mutated frames that must not close the connection, and how many are bad."""
    samples = default_samples()
    local = LocalRouter(codes)
    frames: list[bytes] = []
    bad = 0
    try:
        while len(frames) < count:
            frame = rng.choice(ALL_MUTATORS)(rng, rng.choice(samples))
            outcome = local.outcome(frame) if frame else "error"
            if outcome == "error":
                continue  # exchange error frames are tested in test_faults.py
            frames.append(frame)
            bad += outcome == "bad"
    finally:
        local.close()
    return frames, bad


@pytest.mark.timeout(90)
def test_thousands_of_bad_frames_on_a_live_connection(feed_harness, collectors, caplog) -> None:
    with Simulator(markets=3, rate=100.0, seed=93) as sim:
        frames, bad = mutated_live_frames(random.Random(92), LIVE_MUTATIONS, sim.markets)
        assert bad > LIVE_MUTATIONS // 3
        harness = feed_harness(
            sim,
            {
                "subscriptions": [
                    {"type": "trade", "codes": "all"},
                    {"type": "ticker", "codes": "all"},
                ]
            },
        )
        feed = harness.start()
        bus = collectors(feed.publisher.endpoint, (b"trade.", b"sys."))
        wait_until(lambda: len(bus.topics("trade.")) > 10, 10)
        conn = feed.connections["public-0"]
        generation = conn.status()["generation"]
        caplog.set_level(logging.WARNING, logger="feedhandler.app")
        sent = 0
        for start in range(0, len(frames), INJECT_BATCH):
            batch = frames[start : start + INJECT_BATCH]
            assert sim.control.inject(batch) != []
            sent += len(batch)
        wait_until(lambda: feed.router.counts["bad_frame"] >= bad, 20)
        before = len(bus.topics("trade."))
        wait_until(lambda: len(bus.topics("trade.")) > before + 10, 10)
        time.sleep(0.3)
        assert sent == LIVE_MUTATIONS
        assert feed.router.counts["bad_frame"] == bad
        assert conn.alive and conn.status()["generation"] == generation
        assert conn.status()["failed"] is None
        assert bus.topics("sys.connection_lost") == []
        lines = [r for r in caplog.records if r.getMessage().startswith("bad_frame")]
        assert len(lines) == 1, [r.getMessage() for r in lines]
        # the rest are counted in one summary line when the window closes
        feed._bad_frames.flush()
        summary = [r for r in caplog.records if r.getMessage().startswith("bad_frame")][1:]
        assert len(summary) == 1
        assert getattr(summary[0], FIELDS_ATTR)["suppressed"] == bad - 1
