"""Fixtures shared by the integration tests: simulator, feed process, bus collectors."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
import zmq

from feedhandler.app import FeedProcess
from feedhandler.config import Settings, load_settings

SHM_DIR = Path("/dev/shm")
# Segments this test session creates carry its pid, so concurrent sessions never judge
# (or remove) each other's segments.
SESSION_PREFIX = f"uft-{os.getpid()}-"


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"condition not met within {timeout} s: {predicate}")
        time.sleep(interval)


class BusCollector:
    """A SUB socket in a thread that keeps every message it receives, parsed."""

    def __init__(self, endpoint: str, prefixes: tuple[bytes, ...] = (b"",)) -> None:
        self._ctx = zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.SUB)
        self._sock.linger = 0
        self._sock.rcvhwm = 0
        for prefix in prefixes:
            self._sock.subscribe(prefix)
        self._sock.connect(endpoint)
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self._sock.poll(50):
                continue
            while True:
                try:
                    frame = self._sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                topic, _, body = frame.partition(b" ")
                with self._lock:
                    self.messages.append((topic.decode(), orjson.loads(body)))

    def topics(self, prefix: str) -> list[tuple[str, dict[str, Any]]]:
        with self._lock:
            return [(t, m) for t, m in self.messages if t.startswith(prefix)]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._sock.close(0)


def trade_sids(collector: BusCollector) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for topic, msg in collector.topics("trade."):
        out.setdefault(topic[len("trade.") :], []).append(msg["data"]["sequential_id"])
    return out


def write_config(directory: Path, body: dict[str, Any]) -> Path:
    path = directory / "feed.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


class FeedHarness:
    """Settings pointing at a simulator, a unique shm prefix and a short ipc directory."""

    def __init__(self, sim: Any, tmp_path: Path, body: dict[str, Any]) -> None:
        self.prefix = f"{SESSION_PREFIX}{uuid.uuid4().hex[:8]}"
        self.runtime_dir = tempfile.mkdtemp(prefix="uf-", dir="/tmp")
        self.env = {
            "UPFEED__UPBIT__PUBLIC_URL": sim.public_url,
            "UPFEED__UPBIT__PRIVATE_URL": sim.private_url,
            "UPFEED__UPBIT__REST_URL": sim.rest_url,
            "UPFEED__SHM__PREFIX": self.prefix,
            "UPFEED__ZMQ__RUNTIME_DIR": self.runtime_dir,
        }
        self.config_path = write_config(tmp_path, body)
        self.feed: FeedProcess | None = None

    def settings(self, extra_env: dict[str, str] | None = None) -> Settings:
        return load_settings(self.config_path, environ={**self.env, **(extra_env or {})})

    def start(self, extra_env: dict[str, str] | None = None) -> FeedProcess:
        self.feed = FeedProcess(self.settings(extra_env))
        self.feed.start()
        return self.feed

    def process_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("UPFEED__")}
        env.update(self.env)
        return env

    def cleanup(self) -> None:
        if self.feed is not None:
            self.feed.stop()
        for kind in ("ticker", "orderbook"):
            (SHM_DIR / f"{self.prefix}.{kind}").unlink(missing_ok=True)
        shutil.rmtree(self.runtime_dir, ignore_errors=True)


@pytest.fixture
def feed_harness(tmp_path: Path) -> Iterator[Callable[..., FeedHarness]]:
    harnesses: list[FeedHarness] = []

    def make(sim: Any, body: dict[str, Any]) -> FeedHarness:
        harness = FeedHarness(sim, tmp_path, body)
        harnesses.append(harness)
        return harness

    yield make
    for harness in harnesses:
        harness.cleanup()


@pytest.fixture
def collectors() -> Iterator[Callable[..., BusCollector]]:
    made: list[BusCollector] = []

    def make(endpoint: str, prefixes: tuple[bytes, ...] = (b"",)) -> BusCollector:
        collector = BusCollector(endpoint, prefixes)
        made.append(collector)
        return collector

    yield make
    for collector in made:
        collector.close()


@pytest.fixture(scope="session", autouse=True)
def no_shm_leaks() -> Iterator[None]:
    """Fail loudly when this session leaves one of its segments behind in /dev/shm."""
    yield
    leaked = sorted(p.name for p in SHM_DIR.glob(f"{SESSION_PREFIX}*"))
    for name in leaked:
        (SHM_DIR / name).unlink(missing_ok=True)
    assert not leaked, f"shared-memory segments leaked: {leaked}"
