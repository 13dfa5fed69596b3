"""Subscription batching: N changes from several workers -> requests sent, time to converge.

The feed process runs against the simulator with one configured code. ``--workers``
clients register worker leases over the feed's control socket (each its own DEALER
socket, on its own thread, as worker processes would), together making N changes as
fast as they can: every change adds one market to that worker's set. The simulator's
journal gives what reached the exchange: how many requests the feed sent after the
first change, whether any broke a limit, and when the request carrying the final set
arrived (converged).

Baseline in the same run: a naive client on its own connection that sends the full
set once per change, as the changes happen (Upbit replaces a connection's set with
each request). The simulator enforces Upbit's 5/s and 100/min per connection: the
journal shows how it is punished (TOO_MANY_REQ, then closed). The time a naive client
that paced itself to 5 requests/s would need is reported beside it (N / 5 s).

    python -m bench batching [--quick] [--changes 10,50,200] [--workers 4]
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import uuid
from typing import Any

import websocket

from bench.harness import (
    FeedRun,
    SimProcess,
    emit,
    feed_config,
    machine_info,
    new_connection,
    wait_for,
)
from feedhandler.control import ControlClient
from feedhandler.upbit.subscription import Subscription

UPBIT_REQUESTS_PER_S = 5
LEASE_SECONDS = 60.0


def _requests_since(sim: SimProcess, conn_id: int, since: float) -> list[dict[str, Any]]:
    journal = sim.control.journal(sids=False, connection=conn_id)["connections"]
    if not journal:
        return []
    return [r for r in journal[0]["requests"] if r["t"] >= since]


def _codes_of(request: dict[str, Any], kind: str) -> set[str]:
    for stream in request.get("subscription", []):
        if stream["type"] == kind:
            return set(stream["codes"])
    return set()


def feed_run(
    sim: SimProcess,
    feed: FeedRun,
    conn_id: int,
    codes: list[str],
    changes: int,
    workers: int,
    configured: str,
) -> dict[str, Any]:
    """``changes`` registrations spread over ``workers`` threads; what the exchange saw."""
    plan: list[list[str]] = [[] for _ in range(workers)]
    for i in range(changes):
        plan[i % workers].append(codes[i % len(codes)])
    final = {code for codes_ in plan for code in codes_} | {configured}
    ids = [f"bench-{uuid.uuid4().hex[:6]}-{w}" for w in range(workers)]
    endpoint = feed.control_endpoint
    errors: list[str] = []
    start = threading.Barrier(workers + 1)

    def worker(index: int) -> None:
        client = ControlClient(endpoint, timeout=5.0)
        held: list[str] = []
        start.wait(10)
        try:
            for code in plan[index]:
                held.append(code)
                client.register(
                    ids[index], [Subscription("ticker", tuple(sorted(set(held))))], LEASE_SECONDS
                )
        except (TimeoutError, RuntimeError) as exc:
            errors.append(f"worker {index}: {exc}")
        finally:
            client.close()

    threads = [threading.Thread(target=worker, args=(w,), daemon=True) for w in range(workers)]
    for thread in threads:
        thread.start()
    t0 = time.time()
    start.wait(10)
    for thread in threads:
        thread.join(60)
    issued = time.time()

    def converged() -> dict[str, Any] | None:
        for request in _requests_since(sim, conn_id, t0):
            if _codes_of(request, "ticker") >= final:
                return request
        return None

    last = wait_for(converged, 30.0, 0.01, "the final set to reach the simulator")
    time.sleep(0.5)
    sent = _requests_since(sim, conn_id, t0)
    journal = sim.control.journal(sids=False, connection=conn_id)["connections"][0]
    cleanup = ControlClient(endpoint, timeout=5.0)
    try:
        for worker_id in ids:
            cleanup.unregister(worker_id)
    finally:
        cleanup.close()
    return {
        "changes": changes,
        "workers": workers,
        "requests_sent": len(sent),
        "seconds_to_issue_changes": round(issued - t0, 4),
        "seconds_to_converge": round(last["t"] - t0, 4),
        "violations": len([v for v in journal["violations"] if v["t"] >= t0]),
        "errors": len([e for e in journal["errors"] if e["t"] >= t0]),
        "still_connected": journal["disconnected_at"] is None,
        "control_errors": errors,
    }


def naive_run(sim: SimProcess, codes: list[str], changes: int) -> dict[str, Any]:
    """One request with the full set per change, sent as the changes happen."""
    before = sim.control.status()["connections"]
    ws = websocket.WebSocket()
    ws.connect(sim.urls["public_url"], timeout=10, suppress_origin=True)
    conn_id = new_connection(sim, before)
    held: set[str] = set()
    sent = 0
    failed_send: str | None = None
    t0 = time.time()
    try:
        for i in range(changes):
            held.add(codes[i % len(codes)])
            request = [{"ticket": uuid.uuid4().hex}, {"type": "ticker", "codes": sorted(held)}]
            try:
                ws.send(json.dumps(request))
            except (OSError, websocket.WebSocketException) as exc:
                failed_send = f"{type(exc).__name__} after {sent} requests"
                break
            sent += 1
        issued = time.time()
        time.sleep(0.6)
    finally:
        ws.close(timeout=1)
    journal = sim.control.journal(sids=False, connection=conn_id)["connections"][0]
    accepted = [r for r in journal["requests"] if "subscription" in r]
    final_ok = bool(accepted) and _codes_of(accepted[-1], "ticker") >= held
    return {
        "changes": changes,
        "requests_attempted": sent,
        "requests_accepted": len(accepted),
        "violations": len(journal["violations"]),
        "errors": [e["name"] for e in journal["errors"]][:5],
        "closed_by_exchange": journal["reason"] not in (None, "closed"),
        "disconnect_reason": journal["reason"],
        "send_failed": failed_send,
        "converged": final_ok and not journal["errors"],
        "seconds_to_issue": round(issued - t0, 4),
        "paced_naive_seconds_to_converge": round(changes / UPBIT_REQUESTS_PER_S, 2),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    counts = [int(c) for c in args.changes.split(",") if c]
    result: dict[str, Any] = {
        "bench": "batching",
        "mode": "quick" if args.quick else "default",
        "machine_before": machine_info(),
        "settings": {"changes": counts, "workers": args.workers, "markets": args.markets},
    }
    runs = []
    with SimProcess(markets=args.markets, rate=50.0) as sim:
        codes = sim.control.status()["markets"][: args.markets]
        before = sim.control.status()["connections"]
        body = feed_config([{"type": "ticker", "codes": [codes[-1]]}])
        with FeedRun(sim, body) as feed:
            conn_id = new_connection(sim, before)
            for n in counts:
                # Let the request buckets refill between runs, as a quiet period would.
                time.sleep(args.pause)
                upfeed = feed_run(sim, feed, conn_id, codes[:-1], n, args.workers, codes[-1])
                naive = naive_run(sim, codes[:-1], n)
                runs.append(
                    {
                        "changes": n,
                        "upfeed": upfeed,
                        "naive": naive,
                        "requests_saved_ratio": round(n / max(upfeed["requests_sent"], 1), 1),
                    }
                )
    result["runs"] = runs
    result["machine_after"] = {"load_avg": machine_info()["load_avg"]}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench batching", description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--long", action="store_true", help="accepted for `bench all --long`")
    parser.add_argument("--changes", default=None)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--markets", type=int, default=60)
    parser.add_argument("--pause", type=float, default=None, help="seconds between runs")
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    args.changes = args.changes or ("10" if args.quick else "10,50,200")
    args.pause = args.pause if args.pause is not None else (0.3 if args.quick else 1.5)
    return emit("batching", run(args), args.output)
