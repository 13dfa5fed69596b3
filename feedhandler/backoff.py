"""Reconnect delays: exponential backoff with jitter, and waits that shutdown can cut short.

Jitter is drawn uniformly from ``[0.5*d, min(1.5*d, cap)]`` where ``d`` is the
nominal delay: ``cap`` (``reconnection.max_delay``) is a true maximum that a user
can rely on, and clipping the range instead of clamping the draw leaves no pile-up
of clients at exactly ``cap`` (a clamp would send half of the capped draws to that
single value, re-synchronising the reconnect storm jitter is meant to spread).
"""

from __future__ import annotations

import random
import threading


def _check(base: float, factor: float, cap: float) -> None:
    if not base >= 0 or not cap >= 0:
        raise ValueError(f"backoff base and cap must be >= 0, got base={base}, cap={cap}")
    if not factor >= 1:
        raise ValueError(f"backoff factor must be >= 1, got {factor}")


def nominal_delay(attempt: int, *, base: float, factor: float, cap: float) -> float:
    """``base * factor**attempt`` capped at ``cap``, without jitter."""
    if attempt < 0:
        raise ValueError(f"backoff attempt must be >= 0, got {attempt}")
    _check(base, factor, cap)
    try:
        raw = base * factor**attempt
    except OverflowError:
        return cap
    return min(raw, cap)


def jittered(nominal: float, cap: float, rng: random.Random) -> float:
    """A uniform draw from ``[0.5*nominal, min(1.5*nominal, cap)]``."""
    low = 0.5 * nominal
    high = max(low, min(1.5 * nominal, cap))
    return low + (high - low) * rng.random()


def backoff_delay(
    attempt: int,
    *,
    base: float,
    factor: float,
    cap: float,
    jitter: bool,
    rng: random.Random,
) -> float:
    """The wait before retry number ``attempt`` (0 = the first retry), in seconds."""
    nominal = nominal_delay(attempt, base=base, factor=factor, cap=cap)
    return jittered(nominal, cap, rng) if jitter else nominal


class Backoff:
    """Successive backoff delays for one connection; :meth:`reset` after a good session.

    After ``max_attempts`` delays it is :attr:`exhausted` and keeps answering the
    (jittered) cap: whether to give up is the caller's decision.
    """

    __slots__ = ("_rng", "attempts", "base", "cap", "factor", "jitter", "max_attempts")

    def __init__(
        self,
        base: float = 1.0,
        factor: float = 2.0,
        cap: float = 30.0,
        jitter: bool = True,
        max_attempts: int = 5,
        *,
        rng: random.Random | None = None,
    ) -> None:
        _check(base, factor, cap)
        if max_attempts < 1:
            raise ValueError(f"backoff max_attempts must be >= 1, got {max_attempts}")
        self.base = base
        self.factor = factor
        self.cap = cap
        self.jitter = jitter
        self.max_attempts = max_attempts
        self._rng = rng if rng is not None else random.Random()
        self.attempts = 0

    @property
    def exhausted(self) -> bool:
        return self.attempts >= self.max_attempts

    def next_delay(self) -> float:
        if self.exhausted:
            nominal = self.cap
        else:
            nominal = nominal_delay(self.attempts, base=self.base, factor=self.factor, cap=self.cap)
        self.attempts += 1
        return jittered(nominal, self.cap, self._rng) if self.jitter else nominal

    def reset(self) -> None:
        self.attempts = 0

    def __repr__(self) -> str:
        return (
            f"Backoff(base={self.base}, factor={self.factor}, cap={self.cap}, "
            f"jitter={self.jitter}, attempts={self.attempts}/{self.max_attempts})"
        )


def sleep_interruptibly(event: threading.Event, seconds: float) -> bool:
    """Wait up to ``seconds``; True as soon as ``event`` is set (stop requested)."""
    if seconds <= 0:
        return event.is_set()
    return event.wait(seconds)
