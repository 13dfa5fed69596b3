"""Peers: the same order-book stream consumed by upfeed, the floor and Upbit client libraries.

Entrants, each in its own process against one simulator (``--stamp``):

* ``floor``: a plain websocket-client + orjson receive loop (``bench/peers/floor.py``);
* ``upfeed``: the feed process writing shm, read by a shm reader process;
* ``cryptofeed``, ``pyupbit``, ``ccxt_pro``: the libraries a user would pick instead,
  installed in ``bench/.peers/venv`` (created here with pip when missing) and pointed at
  the simulator by the runner scripts in ``bench/peers/`` (each says how).

For each: throughput on a burst of N order books written to its own connection
(messages/s as the user code sees them), latency at paced rates (send stamp to user
code), and RSS (with helper processes). Every figure also as a ratio to the floor. A
peer that cannot be installed or pointed at the simulator is reported with the reason.

    python -m bench peers [--quick] [--frames N] [--rates 1000,5000] [--seconds S]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from bench.harness import (
    PEERS_DIR,
    BenchError,
    Consumer,
    ConsumerError,
    FeedRun,
    SimProcess,
    emit,
    feed_config,
    floor_argv,
    machine_info,
    new_connection,
    ratio,
    shm_consumer,
    wait_for,
)
from simulator.control import ControlError

VENV = Path(__file__).resolve().parent / ".peers" / "venv"
PEER_PACKAGES = ("cryptofeed", "pyupbit", "ccxt", "orjson", "websocket-client", "psutil")
LIBRARIES = {
    "cryptofeed": "peer_cryptofeed.py",
    "pyupbit": "peer_pyupbit.py",
    "ccxt_pro": "peer_ccxt.py",
}
MARKETS = 10
WARM_RATE = 50.0
#: The shm reader's sleep between idle polls, as in bench.feed's latency runs.
SHM_SLEEP_US = 100.0


def ensure_venv() -> dict[str, Any]:
    """Create bench/.peers/venv and install the peers (pip, PyPI) unless already there."""
    python = VENV / "bin" / "python"
    log: dict[str, Any] = {"path": str(VENV)}
    if not python.exists():
        made = subprocess.run(
            [sys.executable, "-m", "venv", str(VENV)],
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
        if made.returncode != 0:
            log["error"] = f"venv creation failed: {made.stderr[-500:]}"
            return log
    check = subprocess.run(
        [str(python), "-c", "import cryptofeed, pyupbit, ccxt, orjson, websocket, psutil"],
        capture_output=True,
        check=False,
        timeout=120,
    )
    if check.returncode != 0:
        installed = subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", *PEER_PACKAGES],
            capture_output=True,
            text=True,
            check=False,
            timeout=1200,
        )
        log["pip_returncode"] = installed.returncode
        if installed.returncode != 0:
            log["error"] = f"pip install failed: {installed.stderr[-800:]}"
    versions = subprocess.run(
        [
            str(python),
            "-c",
            "import importlib.metadata as m, json, sys;"
            "print(json.dumps({n: m.version(n) for n in sys.argv[1:]}))",
            *PEER_PACKAGES,
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if versions.returncode == 0:
        log["versions"] = json.loads(versions.stdout)
    else:
        log.setdefault("error", f"peers not importable: {versions.stderr[-500:]}")
    return log


def _count_burst(sim: SimProcess, conn_id: int, consumer: Consumer, frames: int) -> dict[str, Any]:
    consumer.command("reset")
    try:
        reply = sim.control.burst(frames, conn_id, ["orderbook"])
    except (ControlError, OSError) as exc:
        # The simulator fails the call when the client's connection ends mid-burst.
        report = consumer.command("report")
        raise BenchError(
            f"connection ended during the burst after {report['count']} of {frames} messages"
            f" (simulator: {exc!r})"
        ) from exc
    last = {"count": -1, "at": time.monotonic()}

    def done() -> dict[str, Any] | None:
        report = consumer.command("report")
        if report["count"] >= frames:
            return report
        if report["count"] != last["count"]:
            last.update(count=report["count"], at=time.monotonic())
        elif time.monotonic() - last["at"] > 10:
            raise BenchError(f"stuck at {report['count']} of {frames} messages")
        return None

    report = wait_for(done, max(120.0, frames / 500), 0.2, "the burst to be consumed")
    return {
        "sent": reply.get("sent"),
        "received": report["count"],
        "msgs_per_s": report["msgs_per_s"],
    }


def _settle(sim: SimProcess, conn_id: int, quiet: float = 1.0, timeout: float = 20.0) -> None:
    """Wait until the client has sent its last subscription request (ccxt sends one per
    symbol): a request arriving during a burst replaces the set being written."""
    deadline = time.monotonic() + timeout
    seen, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        journal = sim.control.journal(sids=False, connection=conn_id)["connections"]
        count = len(journal[0]["requests"]) if journal else 0
        if count != seen:
            seen, since = count, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
        time.sleep(0.1)


def _latency(sim: SimProcess, consumer: Consumer, rate: float, seconds: float) -> dict[str, Any]:
    sim.control.set_rate(rate)
    try:
        time.sleep(0.3)
        consumer.command("reset")
        time.sleep(seconds)
        report = consumer.command("report")
    finally:
        sim.control.set_rate(0)
    time.sleep(0.2)
    return {"received": report["count"], "latency_us": report["latency_us"]}


def run_runner(
    sim: SimProcess, name: str, argv: list[str], args: argparse.Namespace
) -> dict[str, Any]:
    """Throughput, latency and RSS of one runner process (floor or a library)."""
    before = sim.control.status()["connections"]
    # Some libraries ask for realtime data only: a trickle lets their first message
    # (the runner's "ready") arrive; it stops before the measurements.
    sim.control.set_rate(WARM_RATE)
    try:
        consumer = Consumer(argv, ready_timeout=60.0)
    except (ConsumerError, BenchError) as exc:
        return {"error": str(exc)}
    finally:
        sim.control.set_rate(0)
    time.sleep(0.3)
    with consumer:
        conn_id = new_connection(sim, before)
        _settle(sim, conn_id)
        out: dict[str, Any] = {"version": None, "notes": []}
        try:
            out["throughput"] = _count_burst(sim, conn_id, consumer, args.frames)
            out["latency"] = {
                str(int(r)): _latency(sim, consumer, r, args.seconds) for r in args.rate_list
            }
        except BenchError as exc:
            out["error"] = str(exc)
        try:
            final = consumer.command("report")
            out["version"] = final.get("version")
            out["notes"] = final.get("notes", [])
            out["rss_mb"] = round(consumer.rss_mb(), 1)
        except (BenchError, psutil.Error) as exc:
            out.setdefault("error", str(exc))
    return out


def run_upfeed(sim: SimProcess, codes: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """The feed process into shm (30-level books, as the libraries get), a shm reader."""
    before = sim.control.status()["connections"]
    body = feed_config([{"type": "orderbook", "codes": codes, "depth": 30}])
    with FeedRun(sim, body) as feed:
        conn_id = new_connection(sim, before)
        with shm_consumer(feed.prefix, "orderbook", sleep_us=SHM_SLEEP_US) as reader:
            base = int(feed.metrics()["messages"].get("orderbook", 0))
            started = time.perf_counter()
            reader.command("reset")
            sim.control.burst(args.frames, conn_id, ["orderbook"])
            wait_for(
                lambda: int(feed.metrics()["messages"].get("orderbook", 0)) - base >= args.frames,
                max(60.0, args.frames / 1000),
                0.02,
                "the feed to route the burst",
            )
            shm_report = reader.command("report")
            # The reader may be overrun during a burst (it reads the ring, not a queue):
            # throughput is the feed's, the writer's head counts what reached shm.
            elapsed = shm_report["seconds_first_to_last"] or (time.perf_counter() - started)
            throughput = {
                "sent": args.frames,
                "received": args.frames,
                "msgs_per_s": round(args.frames / elapsed) if elapsed else None,
                "reader_saw": shm_report["count"],
                "reader_overrun": shm_report["overrun"],
            }
            latency = {str(int(r)): _latency(sim, reader, r, args.seconds) for r in args.rate_list}
            rss_feed = feed.rss_mb()
            rss_reader = reader.rss_mb()
    return {
        "version": "this repository",
        "throughput": throughput,
        "latency": latency,
        "rss_mb": round(rss_feed, 1),
        "reader_rss_mb": round(rss_reader, 1),
        "notes": [
            "throughput: the shm reader's first-to-last time over the burst; "
            "latency: send stamp to the shm reader"
        ],
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {
        "bench": "peers",
        "mode": "quick" if args.quick else "default",
        "machine_before": machine_info(),
        "settings": {
            "stream": "orderbook, 30 levels, DEFAULT (cryptofeed asks SIMPLE)",
            "markets": MARKETS,
            "frames_per_burst": args.frames,
            "rates_msgs_per_s": args.rate_list,
            "latency_seconds": args.seconds,
        },
    }
    venv = ensure_venv() if not args.no_install else {"path": str(VENV), "skipped": True}
    result["peers_venv"] = venv
    python = str(VENV / "bin" / "python")
    entrants: dict[str, Any] = {}
    with SimProcess(markets=MARKETS, rate=0, stamp=True) as sim:
        codes = sim.control.status()["markets"][:MARKETS]
        entrants["floor"] = run_runner(sim, "floor", floor_argv(sim, codes, "orderbook"), args)
        entrants["upfeed"] = run_upfeed(sim, codes, args)
        for name, script in LIBRARIES.items():
            if name not in args.only:
                continue
            if "error" in venv:
                entrants[name] = {"error": f"not installed: {venv['error']}"}
                continue
            argv = [
                python,
                str(PEERS_DIR / script),
                "--url",
                sim.urls["public_url"],
                "--rest-url",
                sim.urls["rest_url"],
                "--codes",
                ",".join(codes),
                "--types",
                "orderbook",
            ]
            entrants[name] = run_runner(sim, name, argv, args)
    floor_entry = entrants["floor"]
    floor_rate = floor_entry.get("throughput", {}).get("msgs_per_s")
    for entry in entrants.values():
        if "throughput" in entry:
            entry["throughput"]["vs_floor"] = ratio(entry["throughput"]["msgs_per_s"], floor_rate)
        if "rss_mb" in entry:
            entry["rss_vs_floor"] = ratio(entry["rss_mb"], floor_entry.get("rss_mb"))
        for key, lat in entry.get("latency", {}).items():
            floor_p99 = floor_entry.get("latency", {}).get(key, {}).get("latency_us", {}).get("p99")
            lat["p99_vs_floor"] = ratio(lat["latency_us"].get("p99"), floor_p99)
    result["entrants"] = entrants
    upfeed_rate = entrants["upfeed"]["throughput"]["msgs_per_s"]
    crypto = entrants.get("cryptofeed", {}).get("throughput", {}).get("msgs_per_s")
    result["goals"] = {
        "upfeed_ge_10x_cryptofeed_on_orderbooks": {
            "ratio": ratio(upfeed_rate, crypto),
            "met": bool(crypto and upfeed_rate and upfeed_rate >= 10 * crypto),
        },
        "upfeed_ge_2_5x_floor_on_orderbooks": {
            "ratio": ratio(upfeed_rate, floor_rate),
            "met": bool(floor_rate and upfeed_rate and upfeed_rate >= 2.5 * floor_rate),
        },
    }
    result["machine_after"] = {"load_avg": machine_info()["load_avg"]}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench peers", description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--long", action="store_true", help="accepted for `bench all --long`")
    parser.add_argument("--frames", type=int, default=None)
    parser.add_argument("--rates", default=None)
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--only", default=",".join(LIBRARIES), help="libraries to run")
    parser.add_argument("--no-install", action="store_true", help="never run pip")
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    args.frames = args.frames or (5_000 if args.quick else 50_000)
    args.rate_list = [
        float(r) for r in (args.rates or ("1000" if args.quick else "1000,5000")).split(",")
    ]
    args.seconds = args.seconds or (1.5 if args.quick else 4.0)
    args.only = [n for n in args.only.split(",") if n]
    return emit("peers", run(args), args.output)
