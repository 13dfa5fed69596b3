"""WebSocket receive throughput: websocket-client's recv against WsTransport.

A raw loopback server in a separate process does the 101 handshake and writes N
pre-built binary frames (trade ~450 B, ticker ~900 B, orderbook ~1.5 kB, mixed) as
fast as the socket takes them. The same stream is received by

* ``websocket_client``: ``WebSocket.recv_data_frame()`` per frame (the baseline), and
* ``wstransport``: :meth:`feedhandler.transport.WsTransport.recv_messages` batches,

alternating, several runs each; the best run of each counts (pyperf-style minimum on a
noisy machine). Every run checks the received byte count. The parser alone, over the
same bytes already in memory, is timed too (its share of the wstransport figure).
Prints one JSON object.

    python -m bench.wsrecv [--frames N] [--runs R]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import multiprocessing
import os
import platform
import socket
import sys
import time
from collections.abc import Callable

import websocket

from feedhandler.transport import WsTransport
from feedhandler.wsframe import OP_BINARY, OP_CLOSE, FrameParser, build_close_payload, build_frame

IO_TIMEOUT = 30.0
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def realistic_payloads() -> list[bytes]:
    """A trade, a ticker and a 15-level orderbook in Upbit's DEFAULT format."""
    trade = (
        b'{"type":"trade","code":"KRW-BTC","timestamp":1727061237071,"trade_date":"2024-09-23",'
        b'"trade_time":"03:13:57","trade_timestamp":1727061236931,"trade_price":85513000.00000000,'
        b'"trade_volume":0.00116934,"ask_bid":"BID","prev_closing_price":85166000.00000000,'
        b'"change":"RISE","change_price":347000.00000000,"sequential_id":17270612369310000,'
        b'"best_ask_price":85513000,"best_ask_size":0.03577473,"best_bid_price":85500000,'
        b'"best_bid_size":0.00117212,"stream_type":"REALTIME"}'
    )
    ticker = (
        b'{"type":"ticker","code":"KRW-BTC","opening_price":85166000.00000000,'
        b'"high_price":85750000.00000000,"low_price":84980000.00000000,'
        b'"trade_price":85513000.00000000,"prev_closing_price":85166000.00000000,'
        b'"change":"RISE","change_price":347000.00000000,"signed_change_price":347000.00000000,'
        b'"change_rate":0.0040743957,"signed_change_rate":0.0040743957,'
        b'"trade_volume":0.00116934,"acc_trade_volume":412.51245787,'
        b'"acc_trade_volume_24h":2217.91232651,"acc_trade_price":35259834451.38960000,'
        b'"acc_trade_price_24h":189418120583.56543000,"trade_date":"20240923",'
        b'"trade_time":"031357","trade_timestamp":1727061236931,"ask_bid":"BID",'
        b'"acc_ask_volume":203.62148126,"acc_bid_volume":208.89097661,'
        b'"highest_52_week_price":105000000.00000000,"highest_52_week_date":"2024-03-14",'
        b'"lowest_52_week_price":34100000.00000000,"lowest_52_week_date":"2023-10-01",'
        b'"market_state":"ACTIVE","is_trading_suspended":false,"delisting_date":null,'
        b'"market_warning":"NONE","timestamp":1727061237071,"stream_type":"REALTIME"}'
    )
    units = b",".join(
        b'{"ask_price":%d,"bid_price":%d,"ask_size":0.%08d,"bid_size":0.%08d}'
        % (85513000 + i * 1000, 85500000 - i * 1000, 3577473 + i * 7919, 117212 + i * 104729)
        for i in range(15)
    )
    book = (
        b'{"type":"orderbook","code":"KRW-BTC","timestamp":1727061237071,'
        b'"total_ask_size":4.79158413,"total_bid_size":2.65609343,"orderbook_units":['
        + units
        + b'],"level":0,"stream_type":"REALTIME"}'
    )
    return [trade, ticker, book]


def build_stream(frames: int) -> bytes:
    payloads = realistic_payloads()
    encoded = [build_frame(0x2, p, mask_key=None) for p in payloads]
    body = b"".join(encoded[i % 3] for i in range(frames))
    return body + build_frame(OP_CLOSE, build_close_payload(1000, "end"), mask_key=None)


def serve(listener: socket.socket, stream: bytes, connections: int) -> None:
    """Child process: for each connection, handshake, write the stream, wait for EOF."""
    listener.settimeout(IO_TIMEOUT)
    for _ in range(connections):
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(IO_TIMEOUT)
            request = b""
            while not request.endswith(b"\r\n\r\n"):
                chunk = conn.recv(1)
                if not chunk:
                    raise ConnectionError("client left during the handshake")
                request += chunk
            key = next(
                line.split(b":", 1)[1].strip()
                for line in request.split(b"\r\n")
                if line.lower().startswith(b"sec-websocket-key:")
            )
            accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
            conn.sendall(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
            )
            # A client that stops reading closes with unread bytes: the kernel sends a reset.
            with contextlib.suppress(ConnectionResetError, BrokenPipeError):
                conn.sendall(stream)
                while conn.recv(65536):
                    pass


def receive_websocket_client(url: str, frames: int) -> tuple[float, int]:
    ws = websocket.WebSocket(skip_utf8_validation=True)
    ws.connect(url, timeout=IO_TIMEOUT, suppress_origin=True)
    received = 0
    size = 0
    started = time.perf_counter()
    while received < frames:
        _, frame = ws.recv_data_frame()
        size += len(frame.data)
        received += 1
    elapsed = time.perf_counter() - started
    ws.shutdown()
    return elapsed, size


def receive_wstransport(url: str, frames: int) -> tuple[float, int]:
    transport = WsTransport.connect(url, timeout=IO_TIMEOUT)
    received = 0
    size = 0
    started = time.perf_counter()
    while received < frames:
        for _, payload in transport.recv_messages(IO_TIMEOUT):
            size += len(payload)
            received += 1
    elapsed = time.perf_counter() - started
    transport.close(timeout=IO_TIMEOUT)
    return elapsed, size


def parse_only(stream: bytes, frames: int) -> float:
    """Seconds spent in FrameParser.messages() alone over the stream, no socket."""
    parser = FrameParser()
    source = memoryview(stream)
    offset = received = 0
    spent = 0.0
    while received < frames:
        free = parser.recv_buffer()
        size = min(len(free), len(source) - offset)
        free[:size] = source[offset : offset + size]
        offset += size
        parser.commit(size)
        started = time.perf_counter()
        batch = parser.messages()
        spent += time.perf_counter() - started
        received += sum(1 for opcode, _ in batch if opcode == OP_BINARY)
    return spent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.wsrecv", description=__doc__)
    parser.add_argument("--frames", type=int, default=100_000, help="frames per run")
    parser.add_argument("--runs", type=int, default=3, help="measured runs per receiver")
    args = parser.parse_args(argv)
    frames, runs = args.frames, args.runs
    if frames < 3 or runs < 1:
        parser.error("need --frames >= 3 and --runs >= 1")

    payload_sizes = [len(p) for p in realistic_payloads()]
    expected_bytes = sum(payload_sizes[i % 3] for i in range(frames))
    receivers: dict[str, Callable[[str, int], tuple[float, int]]] = {
        "websocket_client": receive_websocket_client,
        "wstransport": receive_wstransport,
    }
    # One warm-up connection per receiver, then the measured runs, alternating.
    schedule = list(receivers) * (runs + 1)
    listener = socket.create_server(("127.0.0.1", 0))
    url = f"ws://127.0.0.1:{listener.getsockname()[1]}/websocket/v1"
    stream = build_stream(frames)
    context = multiprocessing.get_context("fork")
    server = context.Process(target=serve, args=(listener, stream, len(schedule)), daemon=True)
    server.start()
    listener.close()
    timings: dict[str, list[float]] = {name: [] for name in receivers}
    try:
        for index, name in enumerate(schedule):
            elapsed, size = receivers[name](url, frames)
            if size != expected_bytes:
                raise RuntimeError(f"{name} received {size} bytes, expected {expected_bytes}")
            if index >= len(receivers):
                timings[name].append(elapsed)
    finally:
        server.join(IO_TIMEOUT)
        if server.is_alive():
            server.terminate()
            server.join(IO_TIMEOUT)

    def summary(name: str) -> dict[str, float]:
        best = min(timings[name])
        return {
            "frames_per_s": round(frames / best),
            "us_per_frame": round(best / frames * 1e6, 3),
            "best_s": round(best, 4),
            "worst_s": round(max(timings[name]), 4),
        }

    parse_best = min(parse_only(stream, frames) for _ in range(runs))
    baseline, candidate = summary("websocket_client"), summary("wstransport")
    report = {
        "bench": "wsrecv",
        "frames": frames,
        "runs": runs,
        "payload_sizes": payload_sizes,
        "websocket_client": baseline,
        "wstransport": candidate,
        "speedup": round(candidate["frames_per_s"] / baseline["frames_per_s"], 2),
        # The sans-IO parser's share of the wstransport figure (bytes already in memory).
        "frame_parser_only_us_per_frame": round(parse_best / frames * 1e6, 3),
        "python": platform.python_version(),
        "websocket_client_version": websocket.__version__,
        "cpus": os.cpu_count(),
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
