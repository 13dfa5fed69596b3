"""Consumer processes for the system benchmarks: a shm reader and a ZeroMQ subscriber.

    python -m bench.consumers shm --prefix P [--kinds ticker,orderbook] [--spin | --wait]
    python -m bench.consumers zmq --endpoint E [--topic trade.]
    python -m bench.consumers worker --control E --codes C1,C2 [--shm-poll-s S]

Each prints ``{"ready": true}`` once attached/connected, then obeys one command per
stdin line: ``reset`` (zero the counters), ``report`` (print the figures so far as
one JSON line) and ``stop`` (report and exit). Latency is ``time.time_ns()`` when the
consumer holds the message minus its ``origin_ns`` (the simulator's send stamp), in
microseconds; clocks are on one host.

The shm reader polls both rings' heads in a loop that yields the CPU between checks
(``os.sched_yield``): a pure spin would take a core from the feed on a 2-core box.
With ``--wait`` it sleeps on both heads instead (``shm.wait_for_heads``) until the
writer publishes, looking for ``--wait-spin-us`` first.

The worker consumer is a :class:`workers.Worker` of ticker and orderbook (registered
with the feed like any strategy) timing each ``on_ticker`` / ``on_orderbook`` call; it
looks at shm when the feed writes, or every ``--shm-poll-s`` seconds. It also reports
the CPU seconds of its process since the last reset.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import threading
import time
from typing import Any

import numpy as np
import zmq

import shm

CDF_POINTS = np.concatenate([np.linspace(0, 99, 100), np.linspace(99.1, 100, 10)])


class Commands:
    """stdin commands read on a thread; the receive loop checks ``pending`` cheaply."""

    def __init__(self) -> None:
        self.pending: str | None = None
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for line in sys.stdin:
            self.done.clear()
            self.pending = line.strip()
            self.done.wait()
        self.pending = "stop"

    def take(self) -> str:
        command, self.pending = self.pending or "", None
        self.done.set()
        return command


class Stats:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.count = 0
        self.by_kind: dict[str, int] = {}
        self.gaps = 0
        self.latencies: list[np.ndarray] = []
        # shm only: origin -> the feed's receive stamp, and that stamp -> the reader.
        self.wire_to_feed: list[np.ndarray] = []
        self.feed_to_reader: list[np.ndarray] = []
        self.started = time.perf_counter()
        # Seconds of the first and last record on one clock; only their difference counts.
        self.first: float | None = None
        self.last: float | None = None

    def report(self, extra: dict[str, Any]) -> dict[str, Any]:
        lat = np.concatenate(self.latencies) if self.latencies else np.empty(0)
        lat = lat[lat > 0] / 1000.0 if lat.size else lat
        out: dict[str, Any] = {
            "count": self.count,
            "by_kind": self.by_kind,
            "gaps": self.gaps,
            "seconds_first_to_last": (
                None if self.first is None or self.last is None else self.last - self.first
            ),
            **extra,
        }
        if lat.size:
            p50, p99, p999 = np.percentile(lat, [50, 99, 99.9])
            out["latency_us"] = {
                "n": int(lat.size),
                "p50": round(float(p50), 1),
                "p99": round(float(p99), 1),
                "p99.9": round(float(p999), 1),
                "max": round(float(lat.max()), 1),
                "cdf_percent": CDF_POINTS.round(2).tolist(),
                "cdf_us": np.percentile(lat, CDF_POINTS).round(1).tolist(),
            }
        else:
            out["latency_us"] = {"n": 0}
        for name, parts in (
            ("wire_to_feed_recv_us", self.wire_to_feed),
            ("feed_recv_to_reader_us", self.feed_to_reader),
        ):
            if parts:
                values = np.concatenate(parts) / 1000.0
                p50, p99, p999 = np.percentile(values, [50, 99, 99.9])
                out[name] = {
                    "p50": round(float(p50), 1),
                    "p99": round(float(p99), 1),
                    "p99.9": round(float(p999), 1),
                }
        return out


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


# Reads kept as they came until a command asks for figures: folding them into arrays
# takes milliseconds that a record arriving meanwhile would wait for. This bounds the
# memory they hold (a 15-level book record is about 1 KB) on long runs.
MAX_UNFOLDED_READS = 200_000


def _fold_shm_reads(stats: Stats, kinds: list[str], reads: list[tuple[int, Any, int]]) -> None:
    """Adds raw reads (reader index, records, time read) to ``stats``."""
    for i, records, now in reads:
        n = len(records)
        if stats.first is None:
            stats.first = now / 1e9
        stats.last = now / 1e9
        stats.count += n
        stats.by_kind[kinds[i]] = stats.by_kind.get(kinds[i], 0) + n
        if n:
            stats.latencies.append(now - records["origin_ns"])
            stats.wire_to_feed.append(records["recv_ns"] - records["origin_ns"])
            stats.feed_to_reader.append(now - records["recv_ns"])
    reads.clear()


# A sleeping reader wakes at least this often to look at the command queue.
WAIT_TIMEOUT_S = 0.05


def run_shm(
    prefix: str, kinds: list[str], spin: bool, sleep_us: float, wait_spin_us: float | None
) -> int:
    """``wait_spin_us`` None: poll (spin, sleep or yield); a number: sleep on the heads."""
    readers = [shm.attach(prefix, kind, timeout=10.0) for kind in kinds]
    cursors = [r.head for r in readers]
    stats = Stats()
    commands = Commands()
    overrun_total = 0
    reads: list[tuple[int, Any, int]] = []
    emit({"ready": True, "heads": cursors})
    # The raw reads are tuples the collector tracks: a full collection over a few
    # hundred thousand of them stalls this loop for milliseconds while records wait.
    # Nothing in the loop makes reference cycles, so the reader runs without it.
    gc.disable()
    now_ns = time.time_ns
    yield_cpu = os.sched_yield
    sleep = time.sleep
    polled = list(enumerate(readers))
    wait_for_heads = shm.wait_for_heads
    wait_spin = None if wait_spin_us is None else wait_spin_us / 1e6
    while True:
        if commands.pending is not None:
            command = commands.take()
            if command == "reset":
                stats.reset()
                reads.clear()
                overrun_total = 0
                emit({"ok": True})
            elif command in ("report", "stop"):
                _fold_shm_reads(stats, kinds, reads)
                emit(stats.report({"overrun": overrun_total, "heads": cursors}))
                if command == "stop":
                    break
        idle = True
        for i, reader in polled:
            if reader.head == cursors[i]:
                continue
            records, cursors[i], overrun = reader.since(cursors[i])
            reads.append((i, records, now_ns()))
            idle = False
            if overrun:
                overrun_total += overrun
                stats.gaps += overrun
        if idle:
            if len(reads) >= MAX_UNFOLDED_READS:
                _fold_shm_reads(stats, kinds, reads)
            if wait_spin is not None:
                wait_for_heads(readers, cursors, WAIT_TIMEOUT_S, spin=wait_spin)
            elif not spin:
                if sleep_us > 0:
                    sleep(sleep_us / 1e6)
                else:
                    yield_cpu()
    for reader in readers:
        reader.close()
    return 0


def run_zmq(endpoint: str, topic: str) -> int:
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.SUB)
    sock.linger = 0
    sock.rcvhwm = 0
    sock.subscribe(topic.encode())
    sock.connect(endpoint)
    # A PUB/SUB subscription takes a moment to reach the publisher.
    time.sleep(0.3)
    stats = Stats()
    commands = Commands()
    seqs: dict[bytes, int] = {}
    emit({"ready": True})
    recv = sock.recv
    poll = sock.poll
    now_ns = time.time_ns
    batch: list[int] = []
    origin_key = b'"origin_ns":'
    while True:
        if commands.pending is not None:
            if batch:
                stats.latencies.append(np.array(batch, dtype=np.int64))
                batch = []
            command = commands.take()
            if command == "reset":
                stats.reset()
                emit({"ok": True})
            elif command in ("report", "stop"):
                emit(stats.report({"topics": len(seqs)}))
                if command == "stop":
                    break
        if not poll(20):
            continue
        while True:
            try:
                frame = recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            now = now_ns()
            space = frame.index(b" ")
            name = frame[:space]
            # The envelope starts with {"seq":N, (publisher.encode_frame).
            seq = int(frame[space + 8 : frame.index(b",", space)])
            previous = seqs.get(name)
            if previous is not None and seq != previous + 1:
                stats.gaps += seq - previous - 1
            seqs[name] = seq
            at = frame.find(origin_key, space)
            if at > 0:
                start = at + len(origin_key)
                batch.append(now - int(frame[start : frame.index(b",", start)]))
            stats.count += 1
            if stats.first is None:
                stats.first = time.perf_counter()
        stats.last = time.perf_counter()
        if len(batch) > 4096:
            stats.latencies.append(np.array(batch, dtype=np.int64))
            batch = []
    sock.close(0)
    return 0


def run_worker(control: str, codes: list[str], shm_poll_s: float | None) -> int:
    from workers import Worker  # noqa: PLC0415 - only this consumer needs the feed's packages

    latencies: list[int] = []
    now_ns = time.time_ns

    class LatencyWorker(Worker):
        types = ("ticker", "orderbook")

        def on_ticker(self, code: str, record: Any) -> None:
            latencies.append(now_ns() - int(record["origin_ns"]))

        on_orderbook = on_ticker

    worker = LatencyWorker(codes, control_endpoint=control, shm_poll_interval_s=shm_poll_s)
    stop = threading.Event()
    failure: list[BaseException] = []

    def serve() -> None:
        try:
            worker.run(stop)
        except BaseException as exc:  # reported to the bench, which stops the run
            failure.append(exc)
            raise

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    gc.disable()
    stats = Stats()
    cpu_at_reset = time.process_time()
    emit({"ready": True})
    for line in sys.stdin:
        command = line.strip()
        if failure:
            emit({"error": repr(failure[0])})
            break
        if command == "reset":
            latencies.clear()
            stats.reset()
            cpu_at_reset = time.process_time()
            emit({"ok": True})
        elif command in ("report", "stop"):
            taken = latencies[:]
            stats.count = len(taken)
            stats.latencies = [np.array(taken, dtype=np.int64)]
            extra = {
                "cpu_seconds": round(time.process_time() - cpu_at_reset, 3),
                "shm_wakeups": worker.shm_wakeups,
            }
            emit(stats.report(extra))
            if command == "stop":
                break
    stop.set()
    thread.join(5)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.consumers")
    sub = parser.add_subparsers(dest="kind", required=True)
    s = sub.add_parser("shm")
    s.add_argument("--prefix", required=True)
    s.add_argument("--kinds", default="ticker,orderbook")
    s.add_argument("--spin", action="store_true", help="never yield the CPU between checks")
    s.add_argument(
        "--sleep-us", type=float, default=0.0, help="sleep between idle checks (0: sched_yield)"
    )
    s.add_argument(
        "--wait",
        action="store_true",
        help="sleep on the heads until the writer publishes (shm.wait_for_heads)",
    )
    s.add_argument(
        "--wait-spin-us", type=float, default=0.0, help="with --wait: look this long first"
    )
    z = sub.add_parser("zmq")
    z.add_argument("--endpoint", required=True)
    z.add_argument("--topic", default="trade.")
    w = sub.add_parser("worker")
    w.add_argument("--control", required=True, help="the feed's control endpoint")
    w.add_argument("--codes", required=True)
    w.add_argument(
        "--shm-poll-s", type=float, default=None, help="poll shm at this interval instead"
    )
    args = parser.parse_args(argv)
    if args.kind == "worker":
        return run_worker(args.control, [c for c in args.codes.split(",") if c], args.shm_poll_s)
    if args.kind == "shm":
        return run_shm(
            args.prefix,
            [k for k in args.kinds.split(",") if k],
            args.spin,
            args.sleep_us,
            args.wait_spin_us if args.wait else None,
        )
    return run_zmq(args.endpoint, args.topic)


if __name__ == "__main__":
    sys.exit(main())
