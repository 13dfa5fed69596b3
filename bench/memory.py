"""Memory: feed process RSS with 1, 50 and every market, and its growth over a soak.

For each market count the simulator lists exactly that many markets and runs paced;
the feed process subscribes ticker, 15-level orderbook and trade for all of them
(``codes: all``), a ZeroMQ subscriber takes the trades. RSS is read (psutil) after
``--warm`` seconds of flow. Then, with every market, RSS is sampled once a second for
the soak (60 s by default, 600 s with ``--long``): first, last, max and the slope of
a straight-line fit over the second half (MB/min; flat means no leak).

Baselines in the same run: the floor loop (websocket-client + orjson) on the same
stream, a bare interpreter that only imports the feed's third-party dependencies,
and one that imports the feed's own modules (``feedhandler.cli``) without running.

    python -m bench memory [--quick | --long] [--markets 1,50,855] [--soak S]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from typing import Any

import numpy as np
import psutil

from bench.harness import (
    ALL_MARKETS,
    REPO,
    FeedRun,
    SimProcess,
    emit,
    feed_config,
    floor_consumer,
    machine_info,
    ratio,
    zmq_consumer,
)

IMPORTS = "import numpy, orjson, msgspec, zmq, websocket, pydantic, psutil, yaml"


FEED_IMPORTS = "import psutil, feedhandler.cli"


def imports_rss_mb(imports: str = IMPORTS) -> float:
    """RSS of a fresh interpreter that only ran ``imports``."""
    code = f"{imports}; print(psutil.Process().memory_info().rss)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        cwd=REPO,
    )
    return round(int(out.stdout.strip()) / 1e6, 1)


def subscriptions() -> list[dict[str, Any]]:
    return [
        {"type": "ticker", "codes": "all"},
        {"type": "orderbook", "codes": "all", "depth": 15},
        {"type": "trade", "codes": "all"},
    ]


def measure(markets: int, rate: float, warm: float, soak: float) -> dict[str, Any]:
    out: dict[str, Any] = {"markets": markets, "rate_events_per_s": rate}
    with SimProcess(markets=markets, rate=rate) as sim:
        codes = sim.control.status()["markets"]
        with floor_consumer(sim, codes, "ticker,orderbook,trade", book_depth=15) as floor:
            time.sleep(warm)
            out["floor_rss_mb"] = round(floor.rss_mb(), 1)
        with FeedRun(sim, feed_config(subscriptions())) as feed, zmq_consumer(feed.pub_endpoint):
            time.sleep(warm)
            out["feed_rss_mb"] = round(feed.rss_mb(), 1)
            out["feed_vs_floor"] = ratio(out["feed_rss_mb"], out["floor_rss_mb"])
            if soak > 0:
                out["soak"] = soak_samples(feed, soak)
            counts = feed.metrics()["messages"]
            out["messages_routed"] = {k: counts.get(k, 0) for k in ("ticker", "orderbook", "trade")}
    return out


def soak_samples(feed: FeedRun, seconds: float) -> dict[str, Any]:
    proc = psutil.Process(feed.pid)
    times: list[float] = []
    rss: list[float] = []
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        times.append(time.monotonic() - started)
        rss.append(proc.memory_info().rss / 1e6)
        time.sleep(1.0)
    half = len(rss) // 2
    slope = None
    if len(rss) - half >= 3:
        slope = float(np.polyfit(times[half:], rss[half:], 1)[0]) * 60.0
    return {
        "seconds": seconds,
        "samples": len(rss),
        "first_mb": round(rss[0], 1),
        "last_mb": round(rss[-1], 1),
        "max_mb": round(max(rss), 1),
        "second_half_slope_mb_per_min": None if slope is None else round(slope, 3),
        "rss_mb_series": [round(x, 1) for x in rss],
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    counts = [int(m) for m in args.markets.split(",") if m]
    result: dict[str, Any] = {
        "bench": "memory",
        "mode": "long" if args.long else "quick" if args.quick else "default",
        "machine_before": machine_info(),
        "settings": {
            "markets": counts,
            "rate_events_per_s": args.rate,
            "warm_seconds": args.warm,
            "soak_seconds": args.soak,
        },
        "imports_only_rss_mb": imports_rss_mb(),
        "feed_modules_imported_rss_mb": imports_rss_mb(FEED_IMPORTS),
    }
    runs = []
    for n in counts:
        soak = args.soak if n == max(counts) else 0.0
        runs.append(measure(n, args.rate, args.warm, soak))
    result["runs"] = runs
    biggest = runs[-1]
    result["goals"] = {
        "rss_le_60mb_every_market": {
            "markets": biggest["markets"],
            "rss_mb": biggest["feed_rss_mb"],
            "met": biggest["feed_rss_mb"] <= 60,
        },
        "flat_over_soak": {
            "slope_mb_per_min": biggest.get("soak", {}).get("second_half_slope_mb_per_min"),
        },
    }
    result["machine_after"] = {"load_avg": machine_info()["load_avg"]}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench memory", description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--long", action="store_true", help="10-minute soak")
    parser.add_argument("--markets", default=None)
    parser.add_argument("--rate", type=float, default=1000.0, help="simulator events/s")
    parser.add_argument("--warm", type=float, default=None)
    parser.add_argument("--soak", type=float, default=None)
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    args.markets = args.markets or (f"1,{ALL_MARKETS}" if args.quick else f"1,50,{ALL_MARKETS}")
    args.warm = args.warm or (1.5 if args.quick else 4.0)
    if args.soak is None:
        args.soak = 600.0 if args.long else 5.0 if args.quick else 60.0
    return emit("memory", run(args), args.output)
