"""Reconnect: from a dropped connection to fresh data in shm and the first backfilled trade.

The simulator runs paced (``--rate`` events/s over ``--markets`` markets); the feed
process subscribes ticker and trade for every market with backfill on. Each round,
the simulator aborts every connection (``drop_all``, no close frame) and this process
watches the feed's bus (``sys.connection_lost``, ``sys.connection_up``, trades with
``"backfill": true``) and its ticker ring. Per round, seconds after the drop:

* ``noticed``: the feed published ``sys.connection_lost``;
* ``reconnected``: ``sys.connection_up`` of the new connection (the first attempt
  after a session that delivered data is immediate; ``--base-delay`` applies to the
  attempts after a failed one);
* ``fresh_shm``: the first ticker record written from the new connection reached a
  shm reader;
* ``first_backfilled_trade``: the first trade marked ``backfill`` reached a subscriber.

Baseline in the same run: the floor loop's reconnect done by hand (websocket-client
connect + subscribe + first message), the least any client pays.

    python -m bench reconnect [--quick] [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
import uuid
from typing import Any

import orjson
import websocket
import zmq

import shm
from bench.harness import BenchError, FeedRun, SimProcess, emit, feed_config, machine_info


class BusWatch:
    """A SUB socket on a thread keeping (local_ns, topic, envelope) of sys.* and backfills."""

    def __init__(self, endpoint: str) -> None:
        self._sock = zmq.Context.instance().socket(zmq.SUB)
        self._sock.linger = 0
        self._sock.rcvhwm = 0
        self._sock.subscribe(b"sys.")
        self._sock.subscribe(b"trade.")
        self._sock.connect(endpoint)
        self.events: list[tuple[int, str, dict[str, Any]]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self._sock.poll(20):
                continue
            while True:
                try:
                    frame = self._sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                now = time.time_ns()
                topic, _, body = frame.partition(b" ")
                if topic.startswith(b"trade.") and b'"backfill":true' not in body:
                    continue
                with self._lock:
                    self.events.append((now, topic.decode(), orjson.loads(body)))

    def first(self, after_ns: int, prefix: str) -> tuple[int, dict[str, Any]] | None:
        with self._lock:
            for local_ns, topic, envelope in self.events:
                if local_ns >= after_ns and topic.startswith(prefix):
                    return local_ns, envelope
        return None

    def count(self, after_ns: int, prefix: str) -> int:
        with self._lock:
            return sum(
                1 for t, topic, _ in self.events if t >= after_ns and topic.startswith(prefix)
            )

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._sock.close(0)


def _wait(predicate: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.002)
    return None


def feed_round(sim: SimProcess, bus: BusWatch, reader: Any, timeout: float) -> dict[str, Any]:
    cursor = reader.head
    t_drop = time.time_ns()
    sim.control.drop_all()
    lost = _wait(lambda: bus.first(t_drop, "sys.connection_lost"), timeout)
    up = _wait(lambda: bus.first(t_drop, "sys.connection_up"), timeout)
    if up is None:
        raise BenchError(f"no sys.connection_up within {timeout} s of the drop")
    up_ns = up[1]["recv_ns"]
    state = {"cursor": cursor}

    def fresh() -> int | None:
        records, state["cursor"], _ = reader.since(state["cursor"])
        now = time.time_ns()
        return now if len(records) and bool((records["recv_ns"] >= up_ns).any()) else None

    fresh_at = _wait(fresh, timeout)
    backfill = _wait(lambda: bus.first(t_drop, "trade."), timeout)
    time.sleep(0.3)

    def secs(ns: int | None) -> float | None:
        return None if ns is None else round((ns - t_drop) / 1e9, 4)

    return {
        "noticed": secs(lost[0] if lost else None),
        "reconnected": secs(up[0]),
        "fresh_shm": secs(fresh_at),
        "first_backfilled_trade": secs(backfill[0] if backfill else None),
        "backfilled_trades": bus.count(t_drop, "trade."),
        "gap_events": bus.count(t_drop, "sys.gap"),
    }


def floor_round(sim: SimProcess, codes: list[str]) -> float:
    """Seconds for a plain client to connect, subscribe and get its first message."""
    started = time.perf_counter()
    ws = websocket.WebSocket()
    ws.connect(sim.urls["public_url"], timeout=10, suppress_origin=True)
    try:
        ws.send(json.dumps([{"ticket": uuid.uuid4().hex}, {"type": "ticker", "codes": codes}]))
        ws.recv()
        return round(time.perf_counter() - started, 4)
    finally:
        ws.close(timeout=1)


def _summary(rounds: list[dict[str, Any]], key: str) -> dict[str, float | None]:
    values = [r[key] for r in rounds if r.get(key) is not None]
    if not values:
        return {"median": None, "max": None}
    return {"median": round(statistics.median(values), 4), "max": round(max(values), 4)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {
        "bench": "reconnect",
        "mode": "quick" if args.quick else "default",
        "machine_before": machine_info(),
        "settings": {
            "rounds": args.rounds,
            "rate_events_per_s": args.rate,
            "markets": args.markets,
            "reconnection_base_delay_s": args.base_delay,
            "jitter": True,
        },
    }
    rounds: list[dict[str, Any]] = []
    with SimProcess(markets=args.markets, rate=args.rate) as sim:
        codes = sim.control.status()["markets"][: args.markets]
        floor = [floor_round(sim, codes) for _ in range(args.rounds)]
        body = feed_config(
            [{"type": "ticker", "codes": codes}, {"type": "trade", "codes": codes}],
            backfill=True,
            base_delay=args.base_delay,
        )
        with FeedRun(sim, body) as feed:
            bus = BusWatch(feed.pub_endpoint)
            reader = shm.attach(feed.prefix, "ticker", timeout=10.0)
            try:
                time.sleep(0.5)
                for _ in range(args.rounds):
                    rounds.append(feed_round(sim, bus, reader, 15.0))
                    time.sleep(args.pause)
            finally:
                reader.close()
                bus.close()
    floor_median = statistics.median(floor)
    result["rounds"] = rounds
    result["summary"] = {
        key: _summary(rounds, key)
        for key in ("noticed", "reconnected", "fresh_shm", "first_backfilled_trade")
    }
    result["floor_connect_subscribe_first_message_s"] = {
        "median": round(floor_median, 4),
        "all": floor,
    }
    fresh = result["summary"]["fresh_shm"]["median"]
    result["fresh_shm_vs_floor"] = (
        round(fresh / floor_median, 2) if fresh and floor_median else None
    )
    result["machine_after"] = {"load_avg": machine_info()["load_avg"]}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench reconnect", description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--long", action="store_true", help="accepted for `bench all --long`")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--markets", type=int, default=10)
    parser.add_argument("--base-delay", type=float, default=0.2)
    parser.add_argument("--pause", type=float, default=1.0)
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (2 if args.quick else 5)
    return emit("reconnect", run(args), args.output)
