"""Fixtures shared by the integration tests: simulator, feed process, bus collectors."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench.soak import BusRecorder
from feedhandler.app import FeedProcess
from feedhandler.config import Settings, load_settings
from tests import shm_helpers as H

SHM_DIR = Path("/dev/shm")
# Segments this test session creates carry its pid, so concurrent sessions never judge
# (or remove) each other's segments.
SESSION_PREFIX = f"uft-{os.getpid()}-"


def output_or_kill(proc: subprocess.Popen, timeout: float) -> bytes:
    """Everything ``proc`` prints until it exits; killed (and the test failed by the
    timeout) if it is still running after ``timeout`` s."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=5)
    return out


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
def collectors() -> Iterator[Callable[..., BusRecorder]]:
    made: list[BusRecorder] = []

    def make(endpoint: str, prefixes: tuple[bytes, ...] = (b"",)) -> BusRecorder:
        collector = BusRecorder(endpoint, prefixes)
        made.append(collector)
        return collector

    yield make
    for collector in made:
        collector.close()


@pytest.fixture
def prefix() -> Iterator[str]:
    """A fresh shm prefix; the test must leave none of its segments behind."""
    name = H.unique_prefix()
    yield name
    assert H.remove_segments(name) == [], "a test left shm segments behind"


@pytest.fixture(scope="session", autouse=True)
def no_shm_leaks() -> Iterator[None]:
    """Fail loudly when this session leaves one of its segments behind in /dev/shm."""
    yield
    leaked = sorted(p.name for p in SHM_DIR.glob(f"{SESSION_PREFIX}*"))
    for name in leaked:
        (SHM_DIR / name).unlink(missing_ok=True)
    assert not leaked, f"shared-memory segments leaked: {leaked}"
