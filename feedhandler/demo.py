"""The demo: simulator + feed process + example workers, with a live view.

Every part runs as its own process, as in production: ``python -m simulator serve``
(with send stamps, so latency can be measured from the wire), ``python -m feedhandler
run --config config/demo.yaml`` and three example workers (order-book spread from shm,
trade flow from ZeroMQ, a wire-to-worker latency probe). The demo itself attaches
shm readers (wire-to-shm latency, last price and spread) and asks the feed's control
channel for status once a second. When the time is up (or on Ctrl-C) everything is
stopped and the demo checks that no process and no shm segment is left behind.
"""

from __future__ import annotations

import collections
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import numpy as np
import orjson

import shm
from feedhandler.control import ControlClient, ControlError, ControlTimeout

DEMO_CONFIG = Path(__file__).resolve().parent.parent / "config" / "demo.yaml"
SHOWN_MARKETS = ("KRW-BTC", "KRW-ETH", "KRW-XRP")
WORKERS = (
    ("spread", "workers.examples.spread:SpreadMonitor"),
    ("trades", "workers.examples.vwap:TradeFlow"),
    ("latency", "workers.examples.latency:LatencyProbe"),
)
START_TIMEOUT = 20.0


class DemoError(RuntimeError):
    """A part of the demo did not start."""


class Child:
    """A child process whose output lines are kept (the last few) by a reader thread."""

    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str]) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            list(argv),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        self.lines: collections.deque[str] = collections.deque(maxlen=200)
        self._first = threading.Event()
        self._thread = threading.Thread(target=self._read, name=f"read-{name}", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            self._first.set()
        self._first.set()

    def first_line(self, timeout: float) -> str:
        if not self._first.wait(timeout) or not self.lines:
            raise DemoError(f"{self.name} printed nothing within {timeout:g} s")
        return self.lines[0]

    def last_matching(self, prefix: str) -> str | None:
        for line in reversed(self.lines):
            if line.startswith(prefix):
                return line
        return None

    def stop(self, timeout: float = 3.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        self._thread.join(1.0)
        return self.proc.returncode


class ShmLatency:
    """Follows both rings and measures simulator send -> visible in shm."""

    def __init__(self, prefix: str) -> None:
        self.readers = {
            kind: shm.attach(prefix, kind, timeout=START_TIMEOUT)
            for kind in ("ticker", "orderbook")
        }
        self.samples: collections.deque[int] = collections.deque(maxlen=50_000)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="shm-latency", daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        cursors = {kind: reader.head for kind, reader in self.readers.items()}
        while not self._stop.is_set():
            seen = False
            for kind, reader in self.readers.items():
                records, cursors[kind], _overrun = reader.since(cursors[kind])
                if len(records):
                    now = time.time_ns()
                    origin = records["origin_ns"]
                    self.samples.extend((now - origin[origin > 0]).tolist())
                    seen = True
            if not seen:
                time.sleep(0.0002)

    def percentiles(self) -> tuple[float, float] | None:
        if not self.samples:
            return None
        values = np.fromiter(self.samples, dtype=np.int64)
        p50, p99 = np.percentile(values, [50, 99])
        return p50 / 1e3, p99 / 1e3

    def close(self) -> None:
        self._stop.set()
        self._thread.join(1.0)
        for reader in self.readers.values():
            reader.close()


def _env(runtime_dir: str, prefix: str, urls: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("UPFEED__")}
    env.update(
        {
            "UPFEED__ZMQ__RUNTIME_DIR": runtime_dir,
            "UPFEED__SHM__PREFIX": prefix,
            "UPFEED__LOGGING__LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
        }
    )
    if urls:
        env["UPFEED__UPBIT__PUBLIC_URL"] = urls["public_url"]
        env["UPFEED__UPBIT__PRIVATE_URL"] = urls["private_url"]
        env["UPFEED__UPBIT__REST_URL"] = urls["rest_url"]
    return env


def _wait_for_feed(control_endpoint: str, feed: Child) -> ControlClient:
    client = ControlClient(control_endpoint, timeout=1.0)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if feed.proc.poll() is not None:
            raise DemoError("the feed process exited:\n  " + "\n  ".join(list(feed.lines)[-10:]))
        try:
            client.call("status")
            return client
        except (ControlTimeout, ControlError):
            time.sleep(0.2)
    raise DemoError(f"the feed process did not answer on {control_endpoint}")


def _fmt(value: float | None, unit: str = "") -> str:
    return "-" if value is None else f"{value:,.1f}{unit}"


def _render(
    out: TextIO,
    elapsed: float,
    status: dict[str, Any],
    rates: dict[str, float],
    latency: tuple[float, float] | None,
    tickers: Any,
    books: Any,
    workers: list[Child],
) -> None:
    lines = [
        f"-- upfeed demo  t={elapsed:5.1f}s  state={status.get('state')} "
        f"markets={status.get('markets')} " + "-" * 20
    ]
    lines.append(
        "messages/s   "
        + "  ".join(
            f"{kind}={rate:,.0f}" for kind, rate in sorted(rates.items()) if kind != "bad_frame"
        )
    )
    p = latency
    lines.append(f"wire->shm    p50={_fmt(p and p[0], 'us')} p99={_fmt(p and p[1], 'us')}")
    probe = next((w for w in workers if w.name == "latency"), None)
    probe_line = probe.last_matching("latency") if probe else None
    lines.append(f"wire->worker {probe_line.removeprefix('latency ') if probe_line else '-'}")
    for name, conn in sorted(status.get("health", {}).get("connections", {}).items()):
        lines.append(
            f"connection   {name}: connected={conn.get('connected')} "
            f"msgs/s={conn.get('messages_per_s', 0):,.0f} "
            f"health={conn.get('health_score', 0):.2f} reconnects={conn.get('reconnects', 0)}"
        )
    for code in SHOWN_MARKETS:
        t = tickers.latest(code) if code in tickers.codes else None
        b = books.latest(code) if code in books.codes else None
        if t is None and b is None:
            continue
        price = "-" if t is None else f"{t['trade_price']:,.8g}"
        spread = "-"
        if b is not None and b["n_levels"]:
            top = b["levels"][0]
            spread = f"{top['ask_price'] - top['bid_price']:,.8g}"
        lines.append(f"market       {code}: last={price} spread={spread}")
    for worker in workers:
        if worker.name == "latency":
            continue
        last = worker.lines[-1] if worker.lines else "(starting)"
        lines.append(f"worker       {worker.name}: {last[:150]}")
    out.write("\n".join(lines) + "\n")
    out.flush()


def run_demo(
    *,
    duration: float | None = 20.0,
    markets: int = 12,
    rate: float = 2000.0,
    out: TextIO | None = None,
) -> int:
    """Run the whole system; ``duration`` None runs until Ctrl-C. Returns the exit code."""
    out = out or sys.stdout
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    runtime_dir = tempfile.mkdtemp(prefix="upfeed-demo-", dir="/tmp")
    prefix = f"upfeed-demo-{os.getpid()}"
    children: list[Child] = []
    workers: list[Child] = []
    latency: ShmLatency | None = None
    control: ControlClient | None = None
    try:
        py = sys.executable
        sim = Child(
            "simulator",
            [
                py,
                "-m",
                "simulator",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--markets",
                str(markets),
                "--rate",
                str(rate),
                "--stamp",
            ],
            _env(runtime_dir, prefix),
        )
        children.append(sim)
        urls = orjson.loads(sim.first_line(START_TIMEOUT))
        out.write(f"simulator    {urls['public_url']} ({markets} markets, {rate:g} msgs/s)\n")
        env = _env(runtime_dir, prefix, urls)
        feed = Child("feed", [py, "-m", "feedhandler", "run", "--config", str(DEMO_CONFIG)], env)
        children.append(feed)
        control_endpoint = f"ipc://{runtime_dir}/{prefix}.ctl"
        control = _wait_for_feed(control_endpoint, feed)
        out.write(f"feed process pid={feed.proc.pid} control={control_endpoint}\n")
        symbols = ",".join(SHOWN_MARKETS)
        for name, target in WORKERS:
            worker = Child(
                name,
                [
                    py,
                    "-m",
                    "workers",
                    "run",
                    target,
                    "--symbols",
                    symbols,
                    "--control",
                    control_endpoint,
                ],
                env,
            )
            workers.append(worker)
            children.append(worker)
        out.write("workers      " + ", ".join(f"{n} ({t})" for n, t in WORKERS) + "\n")
        out.flush()
        latency = ShmLatency(prefix)
        tickers, books = latency.readers["ticker"], latency.readers["orderbook"]
        started = time.monotonic()
        last_counts: dict[str, int] = {}
        last_at = started
        while not stop.wait(1.0):
            now = time.monotonic()
            try:
                status = control.call("status")
            except (ControlTimeout, ControlError) as exc:
                out.write(f"status unavailable: {exc}\n")
                continue
            counts = status.get("metrics", {}).get("messages", {})
            rates = {k: (v - last_counts.get(k, 0)) / (now - last_at) for k, v in counts.items()}
            last_counts, last_at = counts, now
            _render(
                out, now - started, status, rates, latency.percentiles(), tickers, books, workers
            )
            dead = [c.name for c in children if c.proc.poll() is not None]
            if dead:
                raise DemoError(f"process exited early: {', '.join(dead)}")
            if duration is not None and now - started >= duration:
                break
        return 0
    except DemoError as exc:
        out.write(f"demo failed: {exc}\n")
        return 1
    finally:
        if latency is not None:
            latency.close()
        if control is not None:
            control.close()
        codes = {c.name: c.stop() for c in reversed(children)}
        shutil.rmtree(runtime_dir, ignore_errors=True)
        leftovers = sorted(p.name for p in Path("/dev/shm").glob(f"{prefix}.*"))
        out.write("stopped      " + " ".join(f"{n}={c}" for n, c in codes.items()) + "\n")
        out.write(f"shm left     {', '.join(leftovers) if leftovers else 'none'}\n")
        out.flush()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
