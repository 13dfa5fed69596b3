"""Soak: forced disconnects with traffic flowing, against the simulator.

The feed runs as its own process (``python -m feedhandler run``) against an in-process
simulator. Every ``--interval`` seconds the simulator drops every connection without a
close frame; the feed reconnects, resubscribes and backfills the missed trades from
REST. At the end the market stops, the last backfills finish, and every trade the feed
published on the bus is checked against the simulator's journal of generated trades:
none lost (a hole not announced by ``sys.gap``), none duplicated, none invented, in the
exchange's order. The feed's resident memory is sampled after a warm-up and at the end.

    python -m bench soak                 # 100 disconnects, under a minute
    python -m bench soak --long          # 1000 disconnects, about seven minutes
    python -m bench soak --disconnects N --interval S --markets M --rate R

The defaults keep one disconnect per 0.4 s with 2 markets to backfill inside the feed's
own connect and REST limits; more markets or a shorter interval measure its waiting.

Prints one JSON object. ``tests/test_soak.py`` runs the short form and asserts on the
counts; this module never asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson
import psutil
import yaml
import zmq

from feedhandler.control import ControlClient
from simulator import Simulator

SHM_DIR = Path("/dev/shm")
STOP_TIMEOUT = 10.0


class SoakError(RuntimeError):
    """The soak could not run to its end (the feed died, never came up, never settled)."""


# --- trade accounting (shared with the tests) -----------------------------------------


def account_trades(
    published: Mapping[str, Sequence[int]],
    generated: Mapping[str, Sequence[int]],
    gaps: Iterable[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """Compare the sids the feed published per code with the exchange's journal.

    For each code the reference is the exchange's list from the first published trade on.
    ``lost`` counts reference trades never published; ``unexplained_lost`` those that are
    not right after the anchor of a ``sys.gap`` event of the code (a gap the feed
    announced is a reported loss, not a silent one). ``out_of_order`` counts codes whose
    published order differs from the exchange's.
    """
    gap_anchors: dict[str, set[int]] = {}
    for gap in gaps:
        anchor = gap.get("after_sequential_id")
        if anchor is not None:
            gap_anchors.setdefault(str(gap["code"]), set()).add(int(anchor))
    result: dict[str, Any] = {
        "codes": 0,
        "checked": 0,
        "lost": 0,
        "unexplained_lost": 0,
        "duplicated": 0,
        "invented": 0,
        "out_of_order": [],
        "lost_sids": {},
    }
    for code, got in published.items():
        if not got:
            continue
        truth = list(generated.get(code, ()))
        truth_set = set(truth)
        got_set = set(got)
        result["codes"] += 1
        result["checked"] += len(got)
        result["duplicated"] += len(got) - len(got_set)
        result["invented"] += len(got_set - truth_set)
        known = [sid for sid in got if sid in truth_set]
        if not known:
            continue
        start = truth.index(known[0])
        reference = truth[start:]
        seen: set[int] = set()
        once = [sid for sid in known if not (sid in seen or seen.add(sid))]
        if once != [sid for sid in reference if sid in got_set]:
            result["out_of_order"].append(code)
        anchors = gap_anchors.get(code, set())
        lost_here = []
        unexplained = 0
        run_reported = False
        previous: int | None = None
        for sid in reference:
            if sid in got_set:
                run_reported = False
            else:
                if previous is not None and previous in got_set:
                    run_reported = previous in anchors
                lost_here.append(sid)
                if not run_reported:
                    unexplained += 1
            previous = sid
        result["lost"] += len(lost_here)
        result["unexplained_lost"] += unexplained
        if lost_here:
            result["lost_sids"][code] = lost_here[:20]
    return result


# --- bus subscriber ---------------------------------------------------------------------


class BusRecorder:
    """A SUB socket in a thread keeping every message, parsed (topic, object)."""

    def __init__(self, endpoint: str, prefixes: tuple[bytes, ...] = (b"",)) -> None:
        self._sock = zmq.Context.instance().socket(zmq.SUB)
        self._sock.linger = 0
        self._sock.rcvhwm = 0
        for prefix in prefixes:
            self._sock.subscribe(prefix)
        self._sock.connect(endpoint)
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bus-recorder", daemon=True)
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

    def count(self, prefix: str) -> int:
        with self._lock:
            return sum(1 for t, _ in self.messages if t.startswith(prefix))

    def trade_sids(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for topic, msg in self.topics("trade."):
            out.setdefault(topic[len("trade.") :], []).append(msg["data"]["sequential_id"])
        return out

    def gaps(self) -> list[dict[str, Any]]:
        return [msg["data"] for _, msg in self.topics("sys.gap")]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._sock.close(0)


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise SoakError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


# --- the feed as a process --------------------------------------------------------------


class FeedSubprocess:
    """``python -m feedhandler run`` against a simulator, with its own prefix and run dir."""

    def __init__(self, sim: Simulator, body: Mapping[str, Any], workdir: Path) -> None:
        self.prefix = f"soak-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.workdir = workdir
        self.runtime_dir = workdir / "run"
        self.config_path = workdir / "feed.yaml"
        self.config_path.write_text(yaml.safe_dump(dict(body)))
        self.log_path = workdir / "feed.log"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("UPFEED__")}
        self.env.update(
            {
                "UPFEED__UPBIT__PUBLIC_URL": sim.public_url,
                "UPFEED__UPBIT__PRIVATE_URL": sim.private_url,
                "UPFEED__UPBIT__REST_URL": sim.rest_url,
                "UPFEED__SHM__PREFIX": self.prefix,
                "UPFEED__ZMQ__RUNTIME_DIR": str(self.runtime_dir),
            }
        )
        self.pub_endpoint = f"ipc://{self.runtime_dir / f'{self.prefix}.pub'}"
        self.control_endpoint = f"ipc://{self.runtime_dir / f'{self.prefix}.ctl'}"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None

    def start(self) -> None:
        self._log_file = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "feedhandler", "run", "--config", str(self.config_path)],
            env=self.env,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )

        def up() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                tail = self.output()[-2000:].decode(errors="replace")
                raise SoakError(f"the feed exited with {self.proc.returncode}: {tail}")
            return (self.runtime_dir / f"{self.prefix}.ctl").exists()

        wait_for(up, 30, "the feed")

    def rss(self) -> int:
        assert self.proc is not None
        return int(psutil.Process(self.proc.pid).memory_info().rss)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def metrics(self) -> dict[str, Any]:
        client = ControlClient(self.control_endpoint, timeout=5)
        try:
            return client.request("metrics")
        finally:
            client.close()

    def stop(self) -> int:
        """SIGTERM and wait; the exit status (SIGKILL after ``STOP_TIMEOUT``)."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._log_file is not None:
            self._log_file.close()
        return int(self.proc.returncode)

    def output(self) -> bytes:
        return self.log_path.read_bytes() if self.log_path.exists() else b""

    def cleanup(self) -> None:
        self.stop()
        for kind in ("ticker", "orderbook"):
            (SHM_DIR / f"{self.prefix}.{kind}").unlink(missing_ok=True)


# --- the soak ---------------------------------------------------------------------------


def _percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_soak(
    *,
    disconnects: int = 100,
    interval: float = 0.4,
    markets: int = 2,
    rate: float = 150.0,
    seed: int = 21,
    warmup_disconnects: int = 10,
) -> dict[str, Any]:
    """Run the soak and return its figures (see the module doc)."""
    workdir = Path(tempfile.mkdtemp(prefix="uf-soak-", dir="/tmp"))
    body = {
        "subscriptions": [
            {"type": "trade", "codes": "all"},
            {"type": "ticker", "codes": "all"},
        ],
        "reconnection": {"base_delay": 0.05, "max_delay": 0.5},
        "health": {"stall_seconds": 5.0},
    }
    started = time.monotonic()
    try:
        with Simulator(markets=markets, rate=rate, seed=seed) as sim:
            feed = FeedSubprocess(sim, body, workdir)
            bus: BusRecorder | None = None
            try:
                feed.start()
                bus = BusRecorder(feed.pub_endpoint, (b"trade.", b"sys."))
                wait_for(lambda: bus.count("trade.") > 20, 20, "the first trades")
                recoveries: list[float] = []
                rss: list[tuple[int, int]] = [(0, feed.rss())]
                for n in range(1, disconnects + 1):
                    ups = bus.count("sys.connection_up")
                    trades = bus.count("trade.")
                    dropped_at = time.monotonic()
                    sim.control.drop_all()
                    wait_for(
                        lambda u=ups, t=trades: (
                            bus.count("sys.connection_up") > u and bus.count("trade.") > t
                        ),
                        10,
                        f"recovery from disconnect {n}",
                    )
                    recoveries.append(time.monotonic() - dropped_at)
                    if not feed.alive():
                        raise SoakError(f"the feed exited during disconnect {n}")
                    if n == warmup_disconnects or n % 10 == 0:
                        rss.append((n, feed.rss()))
                    left = interval - (time.monotonic() - dropped_at)
                    if left > 0:
                        time.sleep(left)
                sim.control.set_rate(0)
                wait_for(lambda: not feed.metrics()["trades"]["in_gap"], 30, "the last backfills")
                count = -1
                while count != bus.count("trade."):
                    count = bus.count("trade.")
                    time.sleep(0.5)
                metrics = feed.metrics()
                published = bus.trade_sids()
                generated = sim.control.journal(codes=list(published))["generated"]
                accounting = account_trades(published, generated, bus.gaps())
                rss.append((disconnects, feed.rss()))
                exit_status = feed.stop()
                journal = sim.control.journal(sids=False)
            finally:
                if bus is not None:
                    bus.close()
                feed.cleanup()
        output = feed.output()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    warm = dict(rss).get(warmup_disconnects, rss[0][1])
    return {
        "benchmark": "soak",
        "disconnects": disconnects,
        "interval_s": interval,
        "markets": markets,
        "rate": rate,
        "seconds": round(time.monotonic() - started, 1),
        "trades": accounting,
        "gaps_reported": len(bus.gaps()),
        "backfilled": metrics["trades"]["backfilled"],
        "duplicates_dropped": metrics["trades"]["duplicates_dropped"],
        "rest_calls": metrics["rest"]["calls"],
        "rest_rate_limited": metrics["rest"]["rate_limited"],
        "connections_seen": len(journal["connections"]),
        "limit_violations": sum(
            1
            for c in journal["connections"]
            for v in c["violations"]
            if not v["kind"].startswith("injected")
        ),
        "recovery_s": {
            "p50": _percentile(recoveries, 0.5),
            "p99": _percentile(recoveries, 0.99),
            "max": max(recoveries) if recoveries else None,
        },
        "rss_mb": {
            "start": round(rss[0][1] / 2**20, 1),
            "after_warmup": round(warm / 2**20, 1),
            "end": round(rss[-1][1] / 2**20, 1),
            "growth_after_warmup": round((rss[-1][1] - warm) / 2**20, 1),
            "samples": [(n, round(v / 2**20, 1)) for n, v in rss],
        },
        "exit_status": exit_status,
        "tracebacks": output.count(b"Traceback"),
        "output_bytes": len(output),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench soak", description=__doc__)
    parser.add_argument("--long", action="store_true", help="1000 disconnects")
    parser.add_argument("--quick", action="store_true", help="20 disconnects")
    parser.add_argument("--disconnects", type=int, default=None)
    parser.add_argument("--interval", type=float, default=0.4)
    parser.add_argument("--markets", type=int, default=2)
    parser.add_argument("--rate", type=float, default=150.0)
    args = parser.parse_args(argv)
    disconnects = args.disconnects or (1000 if args.long else 20 if args.quick else 100)
    result = run_soak(
        disconnects=disconnects, interval=args.interval, markets=args.markets, rate=args.rate
    )
    result["trades"].pop("lost_sids", None)
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
