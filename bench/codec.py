"""Decode throughput of the Upbit codec: typed events and the hot path, per message type.

Every figure is compared with plain ``orjson.loads`` of the same frames, measured in the
same run (orjson builds dicts of floats: no typing, no exact decimals). Frames are the
shared recorded samples, compacted the way Upbit sends them (no whitespace); the order
book is measured at 15 and 30 levels.

    python -m bench codec [--seconds S]

Each (frame, method) pair runs in windows of ``--seconds`` (best of ``--repeats``; the
methods of one frame take turns window by window), with the garbage collector paused
as timeit does. Prints JSON; also writes
bench/results/codec.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import orjson

from feedhandler.upbit import Decoder, HotDecoder, HotTrade, event_to_json, trade_to_json

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT.parent / "shared/upbit/samples"
RESULTS = ROOT / "bench/results/codec.json"

# Messages per second per core the hot path is meant to sustain.
TARGETS = {"ticker": 600_000, "trade": 1_000_000, "orderbook15": 250_000}


def _compact(data: bytes) -> bytes:
    return msgspec.json.format(data, indent=-1)


def _book(levels: int) -> bytes:
    tree = msgspec.json.decode(
        (SAMPLES / "orderbook_default_KRW-BTC_1.json").read_bytes(), type=dict[str, msgspec.Raw]
    )
    units = msgspec.json.decode(tree["orderbook_units"], type=list[msgspec.Raw])[:levels]
    tree["orderbook_units"] = msgspec.Raw(msgspec.json.encode(units))
    return _compact(msgspec.json.encode(tree))


def frames() -> dict[str, bytes]:
    def sample(name: str) -> bytes:
        return _compact((SAMPLES / name).read_bytes())

    return {
        "ticker": sample("ticker_default_KRW-BTC_1.json"),
        "trade": sample("trade_default_KRW-BTC_1.json"),
        "orderbook15": _book(15),
        "orderbook30": _book(30),
        "candle": sample("candle_default_KRW-BTC_1.json"),
        "myOrder": sample("myorder_default_KRW-BTC_1.json"),
        "myAsset": sample("myasset_default_KRW_1.json"),
        "ticker_simple": sample("ticker_simple_KRW-BTC_1.json"),
        "trade_simple": sample("trade_simple_KRW-LAMB_1.json"),
        "orderbook15_simple": sample("orderbook_simple_KRW-LAMB_1.json"),
    }


def _batch_size(call: Callable[[Any], Any], arg: Any, seconds: float) -> int:
    """Calls per batch so that one batch takes about 1/20 of a window."""
    call(arg)
    batch = 1
    while True:
        start = time.perf_counter()
        for _ in range(batch):
            call(arg)
        if time.perf_counter() - start > seconds / 20:
            return batch
        batch *= 2


def _window(call: Callable[[Any], Any], arg: Any, batch: int, seconds: float) -> float:
    """Calls per second over one window of about ``seconds``."""
    calls = 0
    start = now = time.perf_counter()
    deadline = start + seconds
    while now < deadline:
        for _ in range(batch):
            call(arg)
        calls += batch
        now = time.perf_counter()
    return calls / (now - start)


def rates(
    methods: dict[str, tuple[Callable[[Any], Any], Any]], seconds: float, repeats: int
) -> dict[str, float]:
    """Best calls/s of each method; windows alternate between methods, so that a burst
    of load from other processes hits the baseline and the codec alike."""
    batches = {name: _batch_size(call, arg, seconds) for name, (call, arg) in methods.items()}
    best = dict.fromkeys(methods, 0.0)
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeats):
            for name, (call, arg) in methods.items():
                best[name] = max(best[name], _window(call, arg, batches[name], seconds))
    finally:
        if gc_was_enabled:
            gc.enable()
    return best


def measure(seconds: float, repeats: int) -> dict[str, Any]:
    typed = Decoder()
    hot = HotDecoder(format="DEFAULT")
    hot_simple = HotDecoder(format="SIMPLE")
    results: dict[str, Any] = {}
    for name, frame in frames().items():
        decoder = hot_simple if name.endswith("_simple") else hot
        row: dict[str, Any] = {"bytes": len(frame)}
        methods = {
            "orjson_loads": (orjson.loads, frame),
            "typed_decode": (typed.decode, frame),
            "hot_decode": (decoder.decode, frame),
        }
        if name in TARGETS:
            # The frame parser hands over memoryviews into its receive buffer.
            methods["hot_decode_memoryview"] = (decoder.decode, memoryview(bytearray(frame)))
        row |= rates(methods, seconds, repeats)
        row["hot_result"] = type(decoder.decode(frame)).__name__
        row["typed_vs_orjson"] = round(row["typed_decode"] / row["orjson_loads"], 3)
        row["hot_vs_orjson"] = round(row["hot_decode"] / row["orjson_loads"], 3)
        results[name] = row
    trade_frame = frames()["trade"]
    hot_trade = hot.decode(trade_frame)
    assert isinstance(hot_trade, HotTrade)
    results["render_trade"] = rates(
        {
            "trade_to_json": (trade_to_json, hot_trade),
            "event_to_json": (event_to_json, typed.decode(trade_frame)),
            "orjson_dumps_of_loads": (orjson.dumps, orjson.loads(trade_frame)),
        },
        seconds,
        repeats,
    )
    if typed.unknown_fields or hot.unknown_fields:
        raise RuntimeError(f"benchmark frames carry unknown keys: {typed.unknown_fields}")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench codec", description=__doc__)
    parser.add_argument("--seconds", type=float, default=0.15, help="one timing window")
    parser.add_argument("--repeats", type=int, default=3, help="windows per figure (best)")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.repeats < 1:
        parser.error("need --seconds > 0 and --repeats >= 1")
    load_before = os.getloadavg()
    results = measure(args.seconds, args.repeats)
    hot_rates = {name: results[name]["hot_decode"] for name in TARGETS}
    report = {
        "bench": "codec",
        "unit": "messages per second, one thread",
        "results": {
            name: {k: round(v) if isinstance(v, float) else v for k, v in row.items()}
            | {k: row[k] for k in row if k.endswith("_vs_orjson")}
            for name, row in results.items()
        },
        "targets_hot_decode": TARGETS,
        "within_target": {name: hot_rates[name] >= TARGETS[name] for name in TARGETS},
        "seconds_per_window": args.seconds,
        "repeats": args.repeats,
        "gc_during_windows": False,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "msgspec": msgspec.__version__,
        "orjson": orjson.__version__,
        "platform": platform.platform(),
    }
    text = json.dumps(report, indent=2)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text + "\n")
    sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
