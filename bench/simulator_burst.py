"""Simulator burst mode into a raw loopback receiver that only counts frames.

The simulator runs as its own process (``python -m simulator serve --rate 0``); this
process opens one WebSocket connection with a plain socket (hand-written handshake,
no Origin header), subscribes, asks the control API for a burst of N frames and
counts complete frames by walking the headers in a ``recv_into`` buffer.

Baseline, measured in the same run: a plain process that writes the same kind of
frames (pre-built, one big buffer per pass) to a raw TCP socket, received by the same
counter. It shows the receiver's ceiling: when the simulator's figure is close to it,
the simulator is not what limits the measurement.

    python -m bench.simulator_burst [--frames N] [--runs R] [--types trade,ticker,orderbook]
                                    [--paced-rate EVENTS_PER_S]

Also measures paced mode once: a simulator at ``--paced-rate`` events/s over 20
markets, the receiver subscribed to every trade; reports the frames/s delivered.

Prints one JSON object (best run of each; all runs listed).
"""

from __future__ import annotations

import argparse
import base64
import json
import multiprocessing
import os
import platform
import socket
import subprocess
import sys
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import psutil

from simulator.control import ControlClient
from simulator.encode import encode_orderbook, encode_ticker, encode_trade
from simulator.frames import frame
from simulator.generator import MarketGenerator
from simulator.markets import market_list

IO_TIMEOUT = 30.0
BUFFER = 8 * 1024 * 1024
CODES = ["KRW-BTC", "KRW-ETH", "KRW-XRP", "KRW-SOL"]


def count_frames(sock: socket.socket, expected: int) -> tuple[int, int, float]:
    """Receive ``expected`` complete frames: (frames, bytes, seconds since the first byte)."""
    buf = bytearray(BUFFER)
    view = memoryview(buf)
    start = end = 0
    frames = 0
    total = 0
    first: float | None = None
    sock.settimeout(IO_TIMEOUT)
    while frames < expected:
        if end == BUFFER:
            buf[: end - start] = buf[start:end]
            end -= start
            start = 0
        n = sock.recv_into(view[end:])
        if n == 0:
            raise ConnectionError(f"stream ended after {frames} of {expected} frames")
        if first is None:
            first = time.perf_counter()
        end += n
        total += n
        while end - start >= 2:
            length = buf[start + 1] & 0x7F
            if length < 126:
                size = 2 + length
            elif length == 126:
                if end - start < 4:
                    break
                size = 4 + int.from_bytes(buf[start + 2 : start + 4], "big")
            else:
                if end - start < 10:
                    break
                size = 10 + int.from_bytes(buf[start + 2 : start + 10], "big")
            if end - start < size:
                break
            start += size
            frames += 1
        if start == end:
            start = end = 0
    assert first is not None
    return frames, total, time.perf_counter() - first


def masked_text(payload: bytes) -> bytes:
    key = os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    length = len(payload)
    head = (
        bytes([0x81, 0x80 | length])
        if length < 126
        else bytes([0x81, 0xFE]) + length.to_bytes(2, "big")
    )
    return head + key + masked


def ws_connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=IO_TIMEOUT)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET {parts.path} HTTP/1.1\r\nHost: {parts.hostname}:{parts.port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("handshake: connection closed")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(f"handshake refused: {head.splitlines()[0]!r}")
    if head.index(b"\r\n\r\n") + 4 != len(head):
        raise ConnectionError("unexpected data right after the handshake")
    return sock


def sample_frames(types: list[str], count: int) -> bytes:
    """The kind of frames the simulator sends for ``types``, pre-built, ``count`` of them."""
    generator = MarketGenerator(market_list(4), seed=1)
    frames: list[bytes] = []
    i = 0
    while len(frames) < count:
        code = CODES[i % len(CODES)]
        i += 1
        trade = generator.trade_in(code, int(time.time() * 1000))
        state = generator.states[code]
        if "trade" in types:
            frames.append(frame(encode_trade(trade, "DEFAULT", "REALTIME")))
        if "ticker" in types:
            frames.append(frame(encode_ticker(state, "DEFAULT", "REALTIME")))
        if "orderbook" in types:
            book = state.book(30, 0)
            assert book is not None
            frames.append(frame(encode_orderbook(state, book, "DEFAULT", "REALTIME", 0)))
    return b"".join(frames[:count])


def _baseline_sender(
    listener: socket.socket, pool: bytes, passes: int, tail: bytes, report: Any
) -> None:
    conn, _ = listener.accept()
    started = time.process_time()
    with conn:
        for _ in range(passes):
            conn.sendall(pool)
        conn.sendall(tail)
    report.put(time.process_time() - started)


def baseline_run(types: list[str], frames: int) -> dict[str, Any]:
    pool_frames = min(frames, 8192)
    pool = sample_frames(types, pool_frames)
    passes, rest = divmod(frames, pool_frames)
    tail = sample_frames(types, rest) if rest else b""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    context = multiprocessing.get_context("fork")
    report = context.Queue()
    sender = context.Process(
        target=_baseline_sender, args=(listener, pool, passes, tail, report), daemon=True
    )
    sender.start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT) as sock:
            got, nbytes, seconds = count_frames(sock, frames)
        cpu = float(report.get(timeout=IO_TIMEOUT))
    finally:
        sender.join(IO_TIMEOUT)
        if sender.is_alive():
            sender.kill()
        listener.close()
    return {"frames": got, "bytes": nbytes, "seconds": seconds, "sender_cpu_seconds": cpu}


def _cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def simulator_run(
    urls: dict[str, str], types: list[str], frames: int, process: psutil.Process
) -> dict[str, Any]:
    control = ControlClient(urls["control_url"], timeout=IO_TIMEOUT)
    sock = ws_connect(urls["public_url"])
    try:
        streams = [{"type": kind, "codes": CODES, "is_only_realtime": True} for kind in types]
        sock.sendall(masked_text(json.dumps([{"ticket": "bench"}, *streams]).encode()))
        deadline = time.monotonic() + 5
        while (
            not control.status()["connections"]
            or not control.journal(sids=False)["connections"][-1]["requests"]
        ):
            if time.monotonic() > deadline:
                raise TimeoutError("the subscription never reached the simulator")
            time.sleep(0.01)
        reported: dict[str, Any] = {}
        caller = threading.Thread(
            target=lambda: reported.update(control.burst(frames)), name="burst", daemon=True
        )
        cpu_before = _cpu_seconds(process)
        caller.start()
        got, nbytes, seconds = count_frames(sock, frames)
        caller.join(IO_TIMEOUT)
        cpu = _cpu_seconds(process) - cpu_before
    finally:
        sock.close()
    return {
        "frames": got,
        "bytes": nbytes,
        "seconds": seconds,
        "simulator": reported,
        "simulator_cpu_seconds": cpu,
    }


def _start_simulator(rate: float, markets: int) -> tuple[subprocess.Popen[str], dict[str, str]]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "simulator",
            "serve",
            "--rate",
            str(rate),
            "--markets",
            str(markets),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    return process, json.loads(process.stdout.readline())


def paced_run(rate: float, seconds: float = 2.0) -> dict[str, Any]:
    """Frames per second delivered by paced mode (trades of 20 markets) at ``rate`` events/s."""
    process, urls = _start_simulator(rate, 20)
    try:
        codes = ControlClient(urls["control_url"]).status()["markets"]
        sock = ws_connect(urls["public_url"])
        try:
            request = [{"ticket": "paced"}, {"type": "trade", "codes": codes}]
            sock.sendall(masked_text(json.dumps(request).encode()))
            count_frames(sock, max(int(rate / 2), 1))
            frames, nbytes, elapsed = count_frames(sock, max(int(rate * seconds), 1))
        finally:
            sock.close()
    finally:
        process.terminate()
        process.wait(10)
    return {
        "target_events_per_s": rate,
        "frames_per_s": round(frames / elapsed),
        "MB_per_s": round(nbytes / elapsed / 1e6, 1),
    }


def _rate(run: dict[str, Any]) -> float:
    return run["frames"] / run["seconds"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.simulator_burst")
    parser.add_argument("--frames", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--types", default="trade")
    parser.add_argument("--paced-rate", type=float, default=60_000.0, help="0 skips it")
    args = parser.parse_args(argv)
    types = [t for t in args.types.split(",") if t]
    process, urls = _start_simulator(0, 4)
    try:
        sim_runs, base_runs = [], []
        for _ in range(args.runs):
            base_runs.append(baseline_run(types, args.frames))
            sim_runs.append(simulator_run(urls, types, args.frames, psutil.Process(process.pid)))
            ControlClient(urls["control_url"]).reset_journal()
    finally:
        process.terminate()
        process.wait(10)
    best_sim = max(sim_runs, key=_rate)
    best_base = max(base_runs, key=_rate)
    best_cpu = min(run["simulator_cpu_seconds"] for run in sim_runs)
    base_cpu = min(run["sender_cpu_seconds"] for run in base_runs)
    result = {
        "bench": "simulator_burst",
        "types": types,
        "frames": args.frames,
        "avg_frame_bytes": round(best_sim["bytes"] / best_sim["frames"], 1),
        "simulator_msgs_per_s": round(_rate(best_sim)),
        "simulator_MB_per_s": round(best_sim["bytes"] / best_sim["seconds"] / 1e6, 1),
        # CPU the simulator process spent per frame (pool build, id rewrite, socket writes,
        # the control request): its own ceiling on one free core, whatever the receiver does.
        "simulator_cpu_us_per_frame": round(best_cpu * 1e6 / args.frames, 3),
        "simulator_cpu_bound_msgs_per_s": round(args.frames / best_cpu),
        "baseline_raw_sender_msgs_per_s": round(_rate(best_base)),
        "baseline_sender_cpu_us_per_frame": round(base_cpu * 1e6 / args.frames, 3),
        "simulator_vs_baseline": round(_rate(best_sim) / _rate(best_base), 3),
        "runs": {
            "simulator_msgs_per_s": [round(_rate(r)) for r in sim_runs],
            "baseline_msgs_per_s": [round(_rate(r)) for r in base_runs],
            "simulator_reported_seconds": [
                round(r["simulator"].get("seconds", 0.0), 4) for r in sim_runs
            ],
        },
        "paced": paced_run(args.paced_rate) if args.paced_rate > 0 else None,
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_avg_1m": os.getloadavg()[0],
        },
    }
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
