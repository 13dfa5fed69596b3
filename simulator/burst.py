"""Burst mode: pre-built frames written straight to a client's transport, as fast as it drains.

For throughput benchmarks of a consumer: the simulator must never be the limit. A
pool of up to ``POOL_FRAMES`` real frames is built once for the client's current
subscription (trade, ticker and orderbook streams; real generator events in the
subscribed markets, so the pool's trades are in the journal and REST history), then
the pool is written over and over as one buffer per pass until ``count`` frames are
out. Only the first pass is journaled per connection.

Known limit: frames of later passes repeat the pool, so their trades repeat the pool's
``sequential_id`` values; a consumer that de-duplicates trades by id sees them as
duplicates. Keep ``count`` within the pool or measure with ticker/orderbook types.

With ``stamp`` on, every frame carries ``sim_ns``: one 19-digit value per pass
(written into fixed-width slots just before the pass is handed to the transport).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from simulator.encode import encode_orderbook, encode_ticker, encode_trade
from simulator.frames import header

if TYPE_CHECKING:
    from simulator.server import Client, Exchange

POOL_FRAMES = 8192
BURST_TYPES = ("trade", "ticker", "orderbook")
_STAMP_SLOT = b',"sim_ns":0000000000000000000}'
_STAMP_DIGITS = 19


def build_pool(
    exchange: Exchange, client: Client, size: int, types: list[str] | None
) -> tuple[bytes, list[int], list[int]]:
    """(frames joined, end offset of each frame, offsets of stamp digit slots)."""
    request = client.request
    if request is None:
        return b"", [], []
    wanted = set(types or BURST_TYPES) & set(BURST_TYPES)
    streams = [s for s in request.streams if s.type in wanted and not s.only_snapshot]
    states = exchange.generator.states
    codes = sorted({code for s in streams for code in s.codes if code in states})
    if not codes:
        return b"", [], []
    fmt = client.format
    stamp = exchange.config.stamp
    parts: list[bytes] = []
    ends: list[int] = []
    slots: list[int] = []
    offset = 0
    now_ms = exchange.wall_ms()
    i = 0
    while len(ends) < size:
        code = codes[i % len(codes)]
        i += 1
        trade = exchange.generator.trade_in(code, now_ms)
        state = states[code]
        payloads: list[bytes] = []
        for stream in streams:
            if code not in stream.codes:
                continue
            if stream.type == "trade":
                payloads.append(encode_trade(trade, fmt, "REALTIME"))
                client.record.sent_sid(code, trade.sequential_id)
            elif stream.type == "ticker":
                payloads.append(encode_ticker(state, fmt, "REALTIME"))
            else:
                book = state.book(stream.codes[code], stream.level)
                if book is not None:
                    payloads.append(
                        encode_orderbook(state, book, fmt, "REALTIME", state.book_timestamp)
                    )
        for payload in payloads:
            if len(ends) >= size:
                break
            body = payload[:-1] + _STAMP_SLOT if stamp else payload
            if client.list_format:
                body = b"[" + body + b"]"
            head = header(len(body))
            parts.append(head)
            parts.append(body)
            if stamp:
                tail = _STAMP_DIGITS + 1 + (1 if client.list_format else 0)
                slots.append(offset + len(head) + len(body) - tail)
            offset += len(head) + len(body)
            ends.append(offset)
        if i > size * 4 and not ends:
            break
    return b"".join(parts), ends, slots


async def run_burst(
    exchange: Exchange, count: int, connection: int | str | None, types: list[str] | None
) -> dict[str, Any]:
    if count < 1:
        raise ValueError("burst count must be at least 1")
    bad = set(types or ()) - set(BURST_TYPES)
    if bad:
        raise ValueError(f"burst types must be among {', '.join(BURST_TYPES)}, not {sorted(bad)}")
    clients = [c for c in exchange.targets(connection) if not c.private and c.request]
    pools = {}
    for client in clients:
        pool, ends, slots = build_pool(exchange, client, min(count, POOL_FRAMES), types)
        if ends:
            pools[client] = (pool, ends, slots)
    started = time.perf_counter()
    sent = 0
    written = 0
    for client, (pool, ends, slots) in pools.items():
        buffer = bytearray(pool) if slots else bytearray()
        remaining = count
        conn = client.conn
        while remaining > 0:
            transport = conn.transport
            if client.closing or transport is None or transport.is_closing():
                break
            frames = min(remaining, len(ends))
            size = ends[frames - 1]
            if slots:
                digits = b"%d" % time.time_ns()
                for slot in slots:
                    if slot >= size:
                        break
                    buffer[slot : slot + _STAMP_DIGITS] = digits
                # A copy: the transport may keep it while the next pass is stamped.
                transport.write(bytes(buffer[:size]))
            else:
                transport.write(pool if size == len(pool) else pool[:size])
            client.last_tx = exchange.monotonic()
            remaining -= frames
            sent += frames
            written += size
            await conn.drain()
    seconds = time.perf_counter() - started
    return {
        "sent": sent,
        "bytes": written,
        "seconds": seconds,
        "connections": [client.id for client in pools],
        "pool": min(count, POOL_FRAMES),
    }
