"""What clients did and what the exchange sent: the record tests query through the control API."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

MAX_EVENTS_PER_CONNECTION = 1_000


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
    sids: dict[str, deque[int]] = field(default_factory=dict)

    def sent_sid(self, code: str, sid: int) -> None:
        sids = self.sids.get(code)
        if sids is None:
            sids = self.sids[code] = deque(maxlen=self.sid_history)
        sids.append(sid)

    def as_json(self) -> dict[str, Any]:
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
            "sids": {code: list(sids) for code, sids in self.sids.items()},
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
