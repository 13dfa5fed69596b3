"""Desired subscription state: merged from every source, spread over connections.

Upbit replaces a connection's whole subscription with each request, so the unit of
change is never a delta: each connection has a *desired set* (a tuple of
:class:`Subscription`) and a :class:`PendingFlush` that sends the latest desired set
once the rate limiter allows, however many changes happened meanwhile.

Sources are named (``"config"``, a worker id, ...). The merged state is the union over
sources, per (type, options). Public codes are assigned to connections as whole
markets (every type of a market on the same connection) and stay where they are when
other codes come and go, so a change touches as few connections as possible.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

from feedhandler.upbit.subscription import Subscription, SubscriptionError, split_code

PRIVATE_CONNECTION = "private"

# (type, level, is_only_snapshot, is_only_realtime): the options that make two
# subscriptions separate objects in one request.
OptionKey = tuple[str, Decimal | None, bool, bool]


class CapacityError(RuntimeError):
    """More public codes are wanted than the configured connections can carry."""


def _options(sub: Subscription) -> OptionKey:
    return (sub.type, sub.level, sub.is_only_snapshot, sub.is_only_realtime)


def merge(subscriptions: Iterable[Subscription]) -> list[Subscription]:
    """Union per (type, options); an orderbook code asked at several depths gets the deepest.

    A depth suffix of None means Upbit's default depth (30, the deepest), so it wins.
    """
    codes_by_key: dict[OptionKey, dict[str, int | None]] = {}
    every_market: set[OptionKey] = set()
    for sub in subscriptions:
        if sub.type == "myOrder" and not sub.codes:
            every_market.add(_options(sub))  # no codes = every market; it absorbs the others
        codes = codes_by_key.setdefault(_options(sub), {})
        for entry in sub.codes:
            code, depth = split_code(entry)
            if code not in codes:
                codes[code] = depth
            else:
                known = codes[code]
                codes[code] = None if known is None or depth is None else max(known, depth)
    merged = []
    for key, codes in sorted(codes_by_key.items(), key=_sort_key):
        type_, level, snap, real = key
        kept = {} if key in every_market else codes
        entries = tuple(c if d is None else f"{c}.{d}" for c, d in kept.items())
        merged.append(Subscription(type_, entries, level, snap, real))
    return merged


def _sort_key(item: tuple[OptionKey, object]) -> tuple[str, Decimal, bool, bool]:
    (type_, level, snap, real), _ = item
    return (type_, Decimal(-1) if level is None else level, snap, real)


def restrict(subscriptions: Sequence[Subscription], codes: set[str]) -> tuple[Subscription, ...]:
    """The part of ``subscriptions`` that concerns ``codes`` (public types only)."""
    out = []
    for sub in subscriptions:
        kept = tuple(e for e in sub.codes if split_code(e)[0] in codes)
        if kept:
            out.append(
                Subscription(sub.type, kept, sub.level, sub.is_only_snapshot, sub.is_only_realtime)
            )
    return tuple(out)


@dataclass(slots=True)
class ConnectionPlan:
    """What one upstream connection should be subscribed to."""

    name: str
    private: bool
    subscriptions: tuple[Subscription, ...] = ()
    codes: frozenset[str] = frozenset()
    since: float = 0.0


@dataclass(slots=True)
class _Assignment:
    codes: set[str] = field(default_factory=set)
    load: int = 0


class SubscriptionRegistry:
    """Merged desired state from named sources, assigned to named connections.

    ``on_plan_change(name, plan)`` is called (outside the lock) for every connection
    whose desired set changed, including connections that became empty.
    """

    def __init__(
        self,
        *,
        max_codes_per_connection: int,
        max_connections: int,
        on_plan_change: Callable[[str, ConnectionPlan], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_codes_per_connection < 1 or max_connections < 1:
            raise ValueError("connection caps must be at least 1")
        self._max_load = max_codes_per_connection
        self._max_connections = max_connections
        self._on_plan_change = on_plan_change
        self._clock = clock
        self._lock = threading.Lock()
        self._sources: dict[str, tuple[Subscription, ...]] = {}
        self._assignments: dict[str, _Assignment] = {}
        self._plans: dict[str, ConnectionPlan] = {}

    # -- sources ---------------------------------------------------------------------

    def set_source(self, source: str, subscriptions: Iterable[Subscription]) -> None:
        subs = tuple(subscriptions)
        for sub in subs:
            if not isinstance(sub, Subscription):
                raise SubscriptionError(f"source {source!r}: not a Subscription: {sub!r}")
        with self._lock:
            previous = self._sources.get(source)
            if subs:
                self._sources[source] = subs
            else:
                self._sources.pop(source, None)
            try:
                changed = self._replan()
            except CapacityError:
                if previous is None:
                    self._sources.pop(source, None)
                else:
                    self._sources[source] = previous
                self._replan()
                raise
        self._notify(changed)

    def remove_source(self, source: str) -> None:
        self.set_source(source, ())

    # -- views -----------------------------------------------------------------------

    def desired(self) -> list[Subscription]:
        with self._lock:
            return merge(s for subs in self._sources.values() for s in subs)

    def plan(self, name: str) -> ConnectionPlan:
        with self._lock:
            return self._plans.get(name) or ConnectionPlan(name, name == PRIVATE_CONNECTION)

    def plans(self) -> dict[str, ConnectionPlan]:
        with self._lock:
            return dict(self._plans)

    def sources(self) -> dict[str, tuple[Subscription, ...]]:
        with self._lock:
            return dict(self._sources)

    # -- planning --------------------------------------------------------------------

    def _replan(self) -> list[tuple[str, ConnectionPlan]]:
        merged = merge(s for subs in self._sources.values() for s in subs)
        public = [s for s in merged if not s.is_private]
        private = tuple(s for s in merged if s.is_private)

        weight: dict[str, int] = {}
        for sub in public:
            for code in sub.market_codes:
                weight[code] = weight.get(code, 0) + 1

        for assignment in self._assignments.values():
            assignment.codes &= weight.keys()
        assigned = {c for a in self._assignments.values() for c in a.codes}
        for assignment in self._assignments.values():
            assignment.load = sum(weight[c] for c in assignment.codes)
        for code in sorted(weight.keys() - assigned):
            self._assign(code, weight[code])
        for assignment in self._assignments.values():
            assignment.load = sum(weight[c] for c in assignment.codes)

        new_plans: dict[str, ConnectionPlan] = {}
        for name, assignment in self._assignments.items():
            subs = restrict(public, assignment.codes)
            new_plans[name] = ConnectionPlan(name, False, subs, frozenset(assignment.codes))
        if private or PRIVATE_CONNECTION in self._plans:
            codes = frozenset(c for s in private for c in s.market_codes)
            new_plans[PRIVATE_CONNECTION] = ConnectionPlan(PRIVATE_CONNECTION, True, private, codes)

        changed = []
        now = self._clock()
        for name, plan in new_plans.items():
            old = self._plans.get(name)
            if old is not None and old.subscriptions == plan.subscriptions:
                plan.since = old.since
                continue
            plan.since = now
            changed.append((name, plan))
        for name in [n for n, p in new_plans.items() if not p.subscriptions]:
            self._assignments.pop(name, None)
            del new_plans[name]
        self._plans = new_plans
        return changed

    def _assign(self, code: str, weight: int) -> None:
        candidates = sorted(
            (a.load, name)
            for name, a in self._assignments.items()
            if a.load + weight <= self._max_load
        )
        name = candidates[0][1] if candidates else self._new_connection_name()
        assignment = self._assignments.setdefault(name, _Assignment())
        assignment.codes.add(code)
        assignment.load += weight

    def _new_connection_name(self) -> str:
        for index in range(self._max_connections):
            name = f"public-{index}"
            if name not in self._assignments:
                return name
        raise CapacityError(
            f"more codes than {self._max_connections} public connections of "
            f"{self._max_load} code subscriptions each can carry; raise "
            "connection.max_connections or connection.max_codes_per_connection"
        )

    def _notify(self, changed: list[tuple[str, ConnectionPlan]]) -> None:
        if self._on_plan_change is None:
            return
        for name, plan in changed:
            self._on_plan_change(name, plan)

    def summary(self, last_message: Mapping[str, float] | None = None) -> list[dict[str, object]]:
        """Types, codes, connection, since when and last message time, for status."""
        last_message = last_message or {}
        rows: list[dict[str, object]] = []
        with self._lock:
            for name, plan in sorted(self._plans.items()):
                for sub in plan.subscriptions:
                    rows.append(
                        {
                            "connection": name,
                            "type": sub.type,
                            "codes": list(sub.codes),
                            "level": None if sub.level is None else str(sub.level),
                            "since": plan.since,
                            "last_message": last_message.get(name),
                        }
                    )
        return rows


class PendingFlush:
    """Pending-state batching for one connection.

    Any number of :meth:`mark_dirty` calls (from any thread) cost one request: the
    owning connection thread calls :meth:`poll`, which asks the rate limiter and, when
    granted, returns the latest desired state to send. ``acquire()`` returns the seconds
    to wait (0.0 means granted, token taken), as :class:`feedhandler.ratelimit.RateLimiter`
    does.
    """

    def __init__(self, acquire: Callable[[], float], clock: Callable[[], float] = time.monotonic):
        self._acquire = acquire
        self._clock = clock
        self._lock = threading.Lock()
        self._version = 0
        self._sent_version = 0
        self._not_before = 0.0
        self.requests_sent = 0
        self.changes_absorbed = 0

    def mark_dirty(self) -> None:
        with self._lock:
            self._version += 1

    @property
    def dirty(self) -> bool:
        return self._version != self._sent_version

    def reset(self) -> None:
        """A new connection knows nothing: its full state must be sent again."""
        with self._lock:
            self._sent_version = -1
            self._not_before = 0.0

    def poll(self) -> int | None:
        """Return the version to send now, or None (nothing pending, or not yet allowed).

        The caller builds the request from the state *at this moment* and, once sent,
        calls :meth:`sent` with the returned version.
        """
        with self._lock:
            if self._version == self._sent_version:
                return None
            now = self._clock()
            if now < self._not_before:
                return None
            wait = self._acquire()
            if wait > 0:
                self._not_before = now + wait
                return None
            return self._version

    def sent(self, version: int) -> None:
        with self._lock:
            if self._sent_version >= 0:
                self.changes_absorbed += max(0, version - self._sent_version - 1)
            self._sent_version = version
            self.requests_sent += 1

    def seconds_until_due(self) -> float | None:
        """None when nothing is pending; otherwise how long before poll() may grant."""
        with self._lock:
            if self._version == self._sent_version:
                return None
            return max(0.0, self._not_before - self._clock())
