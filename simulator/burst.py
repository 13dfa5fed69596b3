"""Burst mode: pre-built frames written straight to a client's transport, as fast as it drains.

For throughput benchmarks of a consumer: the simulator must never be the limit. A
pool of up to ``POOL_FRAMES`` real frames is built once for the client's current
subscription (trade, ticker and orderbook streams; real generator events in the
subscribed markets, so the pool's trades are in the journal and REST history), then
the pool is written over and over as one buffer per pass until ``count`` frames are
out. Only the first pass is journaled per connection.

Trades stay unique: in pass r every trade frame's ``sequential_id`` is rewritten in
place to ``sid + r * span`` (span = the range of the pool's ids in that market), and
the generator is told never to issue ids up to the highest one used, so later real
trades cannot collide. Only the pool's own trades are real (journaled as generated,
served by REST); the rewritten copies are not.

With ``stamp`` on, every frame carries ``sim_ns``: one 19-digit value per pass
(written into fixed-width slots just before the pass is handed to the transport).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np
from websockets.exceptions import ConnectionClosed

from simulator.encode import encode_orderbook, encode_ticker, encode_trade
from simulator.frames import STAMP_DIGITS, header, stamp_digits_back, with_stamp_slot

if TYPE_CHECKING:
    from simulator.server import Client, Exchange

POOL_FRAMES = 8192
CHUNK_BYTES = 128 * 1024
_WRITE_HIGH = 512 * 1024
BURST_TYPES = ("trade", "ticker", "orderbook")


class Pool:
    """Pre-built frames for one client and where to rewrite them between passes."""

    __slots__ = ("chunk_ends", "data", "ends", "sid_slots", "span", "stamp_slots")

    def __init__(self) -> None:
        self.data = b""
        self.ends: list[int] = []
        self.stamp_slots: list[int] = []
        self.sid_slots: list[tuple[int, int, str]] = []
        """(offset of the id digits, id, code) of every trade frame."""
        self.span: dict[str, int] = {}
        self.chunk_ends: list[int] = []
        """Frame ends about every ``CHUNK_BYTES``, the last one the end of the pool."""


def build_pool(exchange: Exchange, client: Client, size: int, types: list[str] | None) -> Pool:
    pool = Pool()
    request = client.request
    if request is None:
        return pool
    wanted = set(types or BURST_TYPES) & set(BURST_TYPES)
    streams = [s for s in request.streams if s.type in wanted and not s.only_snapshot]
    states = exchange.generator.states
    codes = sorted({code for s in streams for code in s.codes if code in states})
    if not codes:
        return pool
    fmt = client.format
    sid_key = b'"sequential_id":' if fmt == "DEFAULT" else b'"sid":'
    stamp = exchange.config.stamp
    parts: list[bytes] = []
    ends = pool.ends
    slots = pool.stamp_slots
    offset = 0
    now_ms = exchange.wall_ms()
    i = 0
    while len(ends) < size:
        code = codes[i % len(codes)]
        i += 1
        trade = exchange.generator.trade_in(code, now_ms)
        state = states[code]
        payloads: list[tuple[bytes, bool]] = []
        for stream in streams:
            if code not in stream.codes:
                continue
            if stream.type == "trade":
                payloads.append((encode_trade(trade, fmt, "REALTIME"), True))
                client.record.sent_sid(code, trade.sequential_id)
            elif stream.type == "ticker":
                payloads.append((encode_ticker(state, fmt, "REALTIME"), False))
            else:
                book = state.book(stream.codes[code], stream.level)
                if book is not None:
                    payloads.append(
                        (
                            encode_orderbook(state, book, fmt, "REALTIME", state.book_timestamp),
                            False,
                        )
                    )
        for payload, is_trade in payloads:
            if len(ends) >= size:
                break
            if stamp:
                body = with_stamp_slot(payload, client.list_format)
            else:
                body = b"[" + payload + b"]" if client.list_format else payload
            head = header(len(body))
            parts.append(head)
            parts.append(body)
            if is_trade:
                at = offset + len(head) + body.index(sid_key) + len(sid_key)
                pool.sid_slots.append((at, trade.sequential_id, code))
            if stamp:
                back = stamp_digits_back(client.list_format)
                slots.append(offset + len(head) + len(body) - back)
            offset += len(head) + len(body)
            ends.append(offset)
        if i > size * 4 and not ends:
            break
    pool.data = b"".join(parts)
    by_code: dict[str, list[int]] = {}
    for _, sid, code in pool.sid_slots:
        by_code.setdefault(code, []).append(sid)
    pool.span = {code: max(sids) - min(sids) + 1 for code, sids in by_code.items()}
    mark = CHUNK_BYTES
    for end in ends:
        if end >= mark:
            pool.chunk_ends.append(end)
            mark = end + CHUNK_BYTES
    if ends and (not pool.chunk_ends or pool.chunk_ends[-1] != ends[-1]):
        pool.chunk_ends.append(ends[-1])
    return pool


async def run_burst(
    exchange: Exchange, count: int, connection: int | str | None, types: list[str] | None
) -> dict[str, Any]:
    if count < 1:
        raise ValueError("burst count must be at least 1")
    bad = set(types or ()) - set(BURST_TYPES)
    if bad:
        raise ValueError(f"burst types must be among {', '.join(BURST_TYPES)}, not {sorted(bad)}")
    clients = [c for c in exchange.targets(connection) if not c.private and c.request]
    pools: dict[Client, Pool] = {}
    for client in clients:
        pool = build_pool(exchange, client, min(count, POOL_FRAMES), types)
        if pool.ends:
            pools[client] = pool
            # Reserve the ids of every pass now: paced trades go on during the burst.
            passes = -(-count // len(pool.ends))
            for code, span in pool.span.items():
                top = max(sid for _, sid, c in pool.sid_slots if c == code)
                exchange.generator.reserve_sids(code, top + (passes - 1) * span)
    started = time.perf_counter()
    sent = 0
    written = 0
    for client, pool in pools.items():
        sent_here, written_here = await _write_passes(exchange, client, pool, count)
        sent += sent_here
        written += written_here
    seconds = time.perf_counter() - started
    return {
        "sent": sent,
        "bytes": written,
        "seconds": seconds,
        "connections": [client.id for client in pools],
        "pool": min(count, POOL_FRAMES),
    }


async def _write_passes(
    exchange: Exchange, client: Client, pool: Pool, count: int
) -> tuple[int, int]:
    ends = pool.ends
    rewrite = bool(pool.stamp_slots or pool.sid_slots)
    buffer = bytearray(pool.data) if rewrite else bytearray()
    view = np.frombuffer(buffer, dtype=np.uint8) if rewrite else None
    # Vectorised rewrites: per-frame Python slicing would halve the frame rate.
    if pool.sid_slots:
        sid_at = np.array([at for at, _, _ in pool.sid_slots], dtype=np.int64)
        sid_width = len(str(pool.sid_slots[0][1]))
        sid_index = sid_at[:, None] + np.arange(sid_width, dtype=np.int64)
        sid_base = np.array([sid for _, sid, _ in pool.sid_slots], dtype=np.int64)
        sid_step = np.array([pool.span[code] for _, _, code in pool.sid_slots], dtype=np.int64)
        powers = 10 ** np.arange(sid_width - 1, -1, -1, dtype=np.int64)
    if pool.stamp_slots:
        stamp_index = np.array(pool.stamp_slots, dtype=np.int64)[:, None] + np.arange(
            STAMP_DIGITS, dtype=np.int64
        )
    remaining = count
    sent = written = 0
    passes = 0
    conn = client.conn
    while remaining > 0:
        transport = conn.transport
        if client.closing or transport is None or transport.is_closing():
            break
        frames = min(remaining, len(ends))
        size = ends[frames - 1]
        if view is not None:
            if passes and pool.sid_slots:
                sids = sid_base + passes * sid_step
                view[sid_index] = (sids[:, None] // powers % 10 + 48).astype(np.uint8)
            if pool.stamp_slots:
                digits = np.frombuffer(b"%d" % time.time_ns(), dtype=np.uint8)
                view[stamp_index] = digits
            data: bytes | bytearray = buffer
        else:
            data = pool.data
        # Chunks that end on frame boundaries (other frames may be written between
        # them), small enough that the socket usually takes each whole: a big chunk
        # would sit in asyncio's buffer, which is shifted after every partial send.
        start = 0
        for chunk_end in pool.chunk_ends:
            if client.closing or transport.is_closing():
                # The client went away mid-burst: report what it was sent, do not write on.
                return sent, written + start
            end = min(chunk_end, size)
            # bytes(): a copy, since the transport may keep it while ``buffer`` is rewritten.
            transport.write(bytes(data[start:end]) if rewrite else data[start:end])
            start = end
            if transport.get_write_buffer_size() > _WRITE_HIGH:
                try:
                    await conn.drain()
                except (ConnectionError, ConnectionClosed):
                    return sent, written + start
            if start >= size:
                break
        client.last_tx = exchange.monotonic()
        remaining -= frames
        sent += frames
        written += size
        passes += 1
        try:
            await conn.drain()
        except (ConnectionError, ConnectionClosed):
            break
    return sent, written
