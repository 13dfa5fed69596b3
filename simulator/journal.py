"""What clients did and what the exchange sent: the record tests query through the control API."""

from __future__ import annotations

from array import array
from collections import deque
from dataclasses import dataclass, field
from typing import Any

MAX_EVENTS_PER_CONNECTION = 1_000


class SidHistory:
    """The last ``maxlen`` trade ids sent on a connection for one market, oldest first.

    Plain int64 storage rather than a deque of ints: a collection of the generation
    that holds a deque visits every item, and after a few throughput bursts the
    connections' histories hold hundreds of thousands of ids (200,000: 4-9 ms per full
    collection on the project's machine), time in which the event loop, and so the
    paced stream, stands still.
    """

    __slots__ = ("_ids", "_oldest", "maxlen")

    def __init__(self, maxlen: int) -> None:
        if maxlen < 1:
            raise ValueError(f"sid history must hold at least one id, not {maxlen}")
        self.maxlen = maxlen
        self._ids = array("q")
        self._oldest = 0

    def append(self, sid: int) -> None:
        ids = self._ids
        if len(ids) < self.maxlen:
            ids.append(sid)
        else:
            oldest = self._oldest
            ids[oldest] = sid
            self._oldest = oldest + 1 if oldest + 1 < self.maxlen else 0

    def tolist(self) -> list[int]:
        ids, oldest = self._ids, self._oldest
        return ids[oldest:].tolist() + ids[:oldest].tolist()

    def __len__(self) -> int:
        return len(self._ids)


@dataclass(slots=True)
class ConnectionRecord:
    id: int
    path: str
    client: str
    origin: bool
    authorization: bool
    connected_at: float
    sid_history: int
    disconnected_at: float | None = None
    compression: bool = False
    reason: str | None = None
    requests: deque[dict[str, Any]] = field(
        default_factory=lambda: deque(maxlen=MAX_EVENTS_PER_CONNECTION)
    )
    violations: deque[dict[str, Any]] = field(
        default_factory=lambda: deque(maxlen=MAX_EVENTS_PER_CONNECTION)
    )
    errors: deque[dict[str, Any]] = field(
        default_factory=lambda: deque(maxlen=MAX_EVENTS_PER_CONNECTION)
    )
    sids: dict[str, SidHistory] = field(default_factory=dict)

    def sent_sid(self, code: str, sid: int) -> None:
        sids = self.sids.get(code)
        if sids is None:
            sids = self.sids[code] = SidHistory(self.sid_history)
        sids.append(sid)

    def as_json(self, with_sids: bool = True) -> dict[str, Any]:
        """The record as JSON; each market's sent trade ids, or only how many with
        ``with_sids`` False (listing a few hundred thousand ids holds up the event loop)."""
        return {
            "id": self.id,
            "path": self.path,
            "client": self.client,
            "origin": self.origin,
            "authorization": self.authorization,
            "compression": self.compression,
            "connected_at": self.connected_at,
            "disconnected_at": self.disconnected_at,
            "reason": self.reason,
            "requests": list(self.requests),
            "violations": list(self.violations),
            "errors": list(self.errors),
            "sids": {
                code: sids.tolist() if with_sids else len(sids) for code, sids in self.sids.items()
            },
        }


class Journal:
    """Connections (bounded to the most recent ``max_connections``) and exchange-wide events."""

    def __init__(self, sid_history: int = 100_000, max_connections: int = 10_000) -> None:
        self.sid_history = sid_history
        self.max_connections = max_connections
        self.connections: dict[int, ConnectionRecord] = {}
        self.rejected: deque[dict[str, Any]] = deque(maxlen=MAX_EVENTS_PER_CONNECTION)
        self.rest: deque[dict[str, Any]] = deque(maxlen=MAX_EVENTS_PER_CONNECTION)
        self._next_id = 1

    def open(
        self, path: str, client: str, origin: bool, authorization: bool, now: float
    ) -> ConnectionRecord:
        record = ConnectionRecord(
            self._next_id, path, client, origin, authorization, now, self.sid_history
        )
        self._next_id += 1
        self.connections[record.id] = record
        while len(self.connections) > self.max_connections:
            del self.connections[next(iter(self.connections))]
        return record

    def reset(self) -> None:
        """Forget closed connections and every per-connection history of open ones."""
        for key in [key for key, rec in self.connections.items() if rec.reason is not None]:
            del self.connections[key]
        for record in self.connections.values():
            record.requests.clear()
            record.violations.clear()
            record.errors.clear()
            record.sids.clear()
        self.rejected.clear()
        self.rest.clear()
