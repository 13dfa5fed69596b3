"""Shared part of the peer runners: stdin commands, counters, latency figures, RSS.

A runner connects its library to the simulator, prints ``{"ready": true}`` after the
first message, and then answers one command per stdin line on a thread: ``reset``
(zero the counters), ``report`` (figures so far) and ``stop`` (figures, then exit).
Latency is ``time.time_ns()`` when the library hands a message to user code minus the
simulator's ``sim_ns`` send stamp, in microseconds. Runs in the peers' virtualenv:
standard library only (plus psutil when present).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from typing import Any

try:
    import psutil
except ImportError:  # the peers' venv has it; a bare interpreter falls back to /proc
    psutil = None

CDF_POINTS = [float(p) for p in range(100)] + [99.1 + i * 0.1 for i in range(10)]


def peer_arguments(*, rest_url_required: bool) -> argparse.ArgumentParser:
    """The options every runner takes: the simulator's WebSocket and REST URLs, the
    market codes (comma-separated) and the stream types."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    if rest_url_required:
        parser.add_argument("--rest-url", required=True)
    else:
        parser.add_argument("--rest-url", default="")
    parser.add_argument("--codes", required=True)
    parser.add_argument("--types", default="orderbook")
    return parser


def _percentile(ordered: list[float], percent: float) -> float:
    if not ordered:
        return 0.0
    k = (len(ordered) - 1) * percent / 100.0
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def rss_mb() -> float:
    if psutil is not None:
        return psutil.Process().memory_info().rss / 1e6
    with open(f"/proc/{os.getpid()}/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def children_rss_mb() -> float:
    """RSS of this process's children (a library that runs its socket in another process)."""
    if psutil is None:
        return 0.0
    return sum(c.memory_info().rss for c in psutil.Process().children(recursive=True)) / 1e6


class Runner:
    def __init__(self, name: str, version: str) -> None:
        self.name = name
        self.version = version
        self.lock = threading.Lock()
        self.ready = threading.Event()
        self.notes: list[str] = []
        self._reset()

    def _reset(self) -> None:
        self.count = 0
        self.latencies: list[int] = []
        self.first: float | None = None
        self.last: float | None = None

    def on_message(self, sim_ns: int | None) -> None:
        """Call once per message a user of the library gets, with its sim_ns stamp."""
        now = time.time_ns()
        t = time.perf_counter()
        if self.first is None:
            self.first = t
        self.last = t
        self.count += 1
        if sim_ns:
            self.latencies.append(now - sim_ns)
        if not self.ready.is_set():
            self.ready.set()
            emit({"ready": True, "peer": self.name})

    def report(self) -> dict[str, Any]:
        lat = sorted(x / 1000.0 for x in self.latencies if x > 0)
        seconds = None if self.first is None or self.last is None else self.last - self.first
        out: dict[str, Any] = {
            "peer": self.name,
            "version": self.version,
            "count": self.count,
            "seconds_first_to_last": seconds,
            "msgs_per_s": round(self.count / seconds) if seconds else None,
            "rss_mb": round(rss_mb(), 1),
            "children_rss_mb": round(children_rss_mb(), 1),
            "notes": self.notes,
        }
        if lat:
            out["latency_us"] = {
                "n": len(lat),
                "p50": round(_percentile(lat, 50), 1),
                "p99": round(_percentile(lat, 99), 1),
                "p99.9": round(_percentile(lat, 99.9), 1),
                "max": round(lat[-1], 1),
                "cdf_percent": [round(p, 2) for p in CDF_POINTS],
                "cdf_us": [round(_percentile(lat, p), 1) for p in CDF_POINTS],
            }
        else:
            out["latency_us"] = {"n": 0}
        return out

    def serve_commands(self) -> None:
        """Start the stdin command thread (``stop`` ends the process)."""
        threading.Thread(target=self._commands, daemon=True).start()

    def _commands(self) -> None:
        for line in sys.stdin:
            command = line.strip()
            if command == "reset":
                self._reset()
                emit({"ok": True})
            elif command in ("report", "stop"):
                emit(self.report())
                if command == "stop":
                    os._exit(0)
        os._exit(0)


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def fail(name: str, reason: str) -> None:
    """Report that the peer cannot run here (never a made-up figure) and exit."""
    emit({"ready": False, "peer": name, "error": reason})
    os._exit(3)
