"""Recording raw frames and replaying them through the codec, shm and the ZeroMQ bus."""

from __future__ import annotations

import gzip
import logging
import subprocess
import sys
import time
import uuid
from types import SimpleNamespace

import numpy as np
import orjson
import pytest

import shm
from feedhandler.app import FeedProcess
from feedhandler.record import (
    MAGIC,
    Recorder,
    Recording,
    RecordingError,
    RecordingWriter,
    Replayer,
)
from simulator import Simulator
from tests.conftest import SESSION_PREFIX, SHM_DIR, wait_until

PUBLIC = [
    {"type": "ticker", "codes": "all"},
    {"type": "orderbook", "codes": "all", "depth": 15},
    {"type": "trade", "codes": "all"},
]


# ------------------------------------------------------------------------ file format


def test_writer_and_reader_round_trip_frames_names_and_times(tmp_path):
    path = tmp_path / "r.gz"
    buffer = bytearray(b'{"type":"trade","code":"KRW-BTC"}xxxx')
    writer = RecordingWriter(path, {"format": "DEFAULT", "markets": ["KRW-BTC"]})
    writer.write("public-0", memoryview(buffer)[:-4], 11)
    writer.write("private", b"", 12)
    writer.write("public-1", bytes(range(256)) * 10, -5)
    writer.close()
    recording = Recording(path)
    assert recording.metadata["markets"] == ["KRW-BTC"]
    frames = [(f.connection, f.recv_ns, f.frame) for f in recording]
    assert frames == [
        ("public-0", 11, b'{"type":"trade","code":"KRW-BTC"}'),
        ("private", 12, b""),
        ("public-1", -5, bytes(range(256)) * 10),
    ]
    assert not recording.truncated


def test_a_cut_file_yields_its_complete_frames_and_says_so(tmp_path):
    path = tmp_path / "r.gz"
    writer = RecordingWriter(path, {"markets": []})
    for i in range(100):
        writer.write("public-0", b"x" * 100 + str(i).encode(), i)
    writer.close()
    raw = gzip.decompress(path.read_bytes())
    cut = tmp_path / "cut.gz"
    cut.write_bytes(gzip.compress(raw[: len(raw) - 50]))
    recording = Recording(cut)
    frames = list(recording)
    assert recording.truncated
    assert [f.recv_ns for f in frames] == list(range(99))


def test_foreign_and_unsupported_files_are_refused_with_the_file_name(tmp_path):
    bad = tmp_path / "bad.gz"
    bad.write_bytes(gzip.compress(b"not a recording at all"))
    with pytest.raises(RecordingError, match=r"bad\.gz.*bad magic"):
        Recording(bad)
    with pytest.raises(RecordingError, match="zstandard"):
        RecordingWriter(tmp_path / "x.zst", {})
    with pytest.raises(RecordingError, match=r"\.gz"):
        Recorder(tmp_path / "x.bin")
    assert MAGIC.startswith(b"UFREC")


def test_recorder_never_blocks_and_counts_what_it_could_not_queue(tmp_path, caplog):
    recorder = Recorder(tmp_path / "r.gz", max_queue=10)
    # Not opened: nothing drains the queue, so the eleventh frame on is dropped.
    for i in range(25):
        recorder.tap("public-0", b"frame", i)
    assert recorder.dropped == 15
    with caplog.at_level(logging.WARNING, logger="feedhandler.record"):
        recorder.open({"markets": []})
        recorder.stop()
    assert "event=recording_dropped" in caplog.text and "dropped=15" in caplog.text
    assert [f.recv_ns for f in Recording(tmp_path / "r.gz")] == list(range(10))
    assert recorder.status()["frames"] == 10


# ------------------------------------------------------------ record a feed, replay it


def _shm_state(prefix: str, codes: list[str]) -> dict[str, np.ndarray]:
    out = {}
    for kind in ("ticker", "orderbook"):
        reader = shm.attach(prefix, kind, timeout=5)
        try:
            out[kind] = reader.latest_many(codes)
        finally:
            reader.close()
    return out


def _sync_collector(publisher, bus, timeout: float = 5.0) -> None:
    """Publish probes until the subscriber has joined (PUB drops before that)."""
    deadline = time.monotonic() + timeout
    while not bus.topics("sys.probe"):
        assert time.monotonic() < deadline, "subscriber never joined"
        publisher.publish_sys("probe", {})
        time.sleep(0.02)


def test_replay_reproduces_shm_records_and_published_trades(feed_harness, collectors, tmp_path):
    path = tmp_path / "session.gz"
    with Simulator(markets=6, rate=600.0, seed=11, stamp=True) as sim:
        harness = feed_harness(sim, {"subscriptions": PUBLIC})
        recorder = Recorder(path)
        feed = FeedProcess(harness.settings(), addons=[recorder])
        harness.feed = feed
        feed.start()
        live_bus = collectors(feed.publisher.endpoint, (b"trade.", b"sys.probe"))
        _sync_collector(feed.publisher, live_bus)
        wait_until(lambda: len(live_bus.topics("trade.")) >= 300, 20)
        sim.control.set_rate(0)
        # Quiet: no frame routed for a while, so shm and the bus are final.
        last = -1
        while (count := sum(feed.router.counts.values())) != last:
            last = count
            time.sleep(0.3)
        codes = list(feed.market_codes)
        live_shm = _shm_state(harness.prefix, codes)
        live_trades = {(t, m["seq"]): m for t, m in live_bus.topics("trade.")}
        assert feed.status()["addons"]["recorder"]["dropped"] == 0
        feed.stop()
        harness.feed = None
    recorded = sum(1 for _ in Recording(path))
    assert recorded == sum(feed.router.counts.values())

    replay_prefix = f"{SESSION_PREFIX}{uuid.uuid4().hex[:8]}"
    settings = harness.settings({"UPFEED__SHM__PREFIX": replay_prefix})
    with Replayer(settings, path, speed=None, keep_timestamps=True, preload=True) as replayer:
        bus = collectors(replayer.publisher.endpoint, (b"trade.", b"sys.probe"))
        _sync_collector(replayer.publisher, bus)
        stats = replayer.run()
        assert stats.frames == recorded and stats.errors == 0
        wait_until(lambda: len(bus.topics("trade.")) >= len(live_bus.topics("trade.")), 10)
        replay_shm = _shm_state(replay_prefix, codes)
        replay_trades = {(t, m["seq"]): m for t, m in bus.topics("trade.")}
    assert not (SHM_DIR / f"{replay_prefix}.ticker").exists()
    # Byte-identical records (the recorded receive times were kept).
    for kind in ("ticker", "orderbook"):
        assert live_shm[kind].tobytes() == replay_shm[kind].tobytes(), kind
    # The live subscriber joined late; every message it saw is replayed unchanged.
    assert live_trades and set(live_trades) <= set(replay_trades)
    for key, message in live_trades.items():
        assert replay_trades[key] == message
    assert any("origin_ns" in m for m in replay_trades.values())


def test_replay_cli_paces_at_the_recorded_speed(feed_harness, tmp_path):
    path = tmp_path / "paced.gz"
    writer = RecordingWriter(path, {"format": "DEFAULT", "markets": ["KRW-BTC"]})
    # Ten status frames 0.1 s apart: one second at speed 1, half at speed 2.
    for i in range(10):
        writer.write("public-0", b'{"status":"UP"}', 1_000_000_000 + i * 100_000_000)
    writer.close()
    # No upstream is contacted: the replay only needs the shm prefix and bus endpoints.
    nowhere = SimpleNamespace(
        public_url="ws://127.0.0.1:9/",
        private_url="ws://127.0.0.1:9/",
        rest_url="http://127.0.0.1:9",
    )
    harness = feed_harness(nowhere, {})

    def run(*speed: str) -> dict:
        started = time.monotonic()
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "feedhandler",
                "replay",
                str(path),
                "--config",
                str(harness.config_path),
                *speed,
            ],
            env=harness.process_env(),
            capture_output=True,
            timeout=30,
            check=True,
        )
        result = orjson.loads(out.stdout)
        result["wall"] = time.monotonic() - started
        return result

    paced = run("--speed", "2")
    fast = run("--speed", "max")
    assert paced["frames"] == fast["frames"] == 10
    assert 0.4 <= paced["seconds"] < 1.5
    assert fast["seconds"] < 0.4

    # A replay answers status like a feed, so scripts and workers can watch it.
    with Replayer(harness.settings(), path) as replayer:
        replayer.run()
        status = subprocess.run(
            [
                sys.executable,
                "-m",
                "feedhandler",
                "status",
                "--config",
                str(harness.config_path),
            ],
            env=harness.process_env(),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert status.returncode == 0, status.stdout
    assert f"replay {path}: 10 frames, 0 errors" in status.stdout


def test_record_command_stops_after_its_duration_and_replays(feed_harness, tmp_path):
    path = tmp_path / "cli.gz"
    with Simulator(markets=3, rate=300.0, seed=8) as sim:
        harness = feed_harness(sim, {"subscriptions": PUBLIC})
        started = time.monotonic()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "feedhandler",
                "record",
                "--config",
                str(harness.config_path),
                "--out",
                str(path),
                "--duration",
                "1.5",
            ],
            env=harness.process_env(),
            capture_output=True,
            timeout=30,
            check=True,
        )
        assert time.monotonic() - started < 15
    recording = Recording(path)
    assert recording.metadata["markets"] == sim.markets
    assert recording.metadata["shm_prefix"] == harness.prefix
    kinds = {orjson.loads(f.frame).get("type") for f in recording}
    assert {"ticker", "orderbook", "trade"} <= kinds
    assert not recording.truncated
    # The feed removed its segments; the replay creates (and removes) its own.
    assert not (SHM_DIR / f"{harness.prefix}.ticker").exists()
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "feedhandler",
            "replay",
            str(path),
            "--config",
            str(harness.config_path),
            "--speed",
            "max",
        ],
        env=harness.process_env(),
        capture_output=True,
        timeout=30,
        check=True,
    )
    stats = orjson.loads(out.stdout)
    assert stats["frames"] == sum(1 for _ in recording) > 100
    assert stats["errors"] == 0
    assert not (SHM_DIR / f"{harness.prefix}.ticker").exists()


def test_a_killed_recorder_leaves_a_readable_recording(feed_harness, tmp_path):
    path = tmp_path / "killed.gz"
    with Simulator(markets=3, rate=300.0, seed=12) as sim:
        harness = feed_harness(sim, {"subscriptions": PUBLIC})
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "feedhandler",
                "record",
                "--config",
                str(harness.config_path),
                "--out",
                str(path),
            ],
            env=harness.process_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            # Past the first periodic sync flush, with frames flowing.
            wait_until(lambda: path.exists() and path.stat().st_size > 20_000, 15, interval=0.1)
        finally:
            proc.kill()
            proc.wait(10)
    recording = Recording(path)
    frames = list(recording)
    assert recording.truncated
    assert len(frames) > 100
    assert all(orjson.loads(f.frame) for f in frames)


def test_frames_reach_the_file_within_about_a_second_while_recording(tmp_path):
    path = tmp_path / "live.gz"
    recorder = Recorder(path)
    recorder.open({"markets": []})
    try:
        for i in range(3):
            recorder.tap("public-0", b'{"status":"UP"}', i)

        def readable() -> list:
            try:
                return [f.recv_ns for f in Recording(path)]
            except RecordingError:  # not even the header has reached the file yet
                return []

        # Far too little data for zlib to emit a block on its own: only the sync flush
        # puts these frames into the file before it is closed.
        assert wait_until(lambda: readable() == [0, 1, 2], 5, interval=0.1)
    finally:
        recorder.stop()
    assert not Recording(path).truncated
