"""Run worker specs as subprocesses; restart crashed ones with backoff, stop all on request.

A worker that exits with status 0 (its ``--duration`` ran out) is done. One that exits
otherwise (exception, signal, SIGKILL) is restarted after an exponentially growing,
jittered delay; after ``max_restarts`` consecutive failures it is given up. A worker
that stayed up for ``stable_after_s`` has its failure count reset. Each spec keeps its
worker id across restarts, so a restarted worker replaces its own lease at the feed
instead of leaving a stale one behind.
"""

from __future__ import annotations

import logging
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from feedhandler.backoff import backoff_delay

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """``target`` is ``package.module:Class``; ``name`` becomes the worker id."""

    target: str
    symbols: tuple[str, ...]
    name: str = ""
    args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        module, colon, cls = self.target.partition(":")
        if not module or not colon or not cls:
            raise ValueError(f"worker target {self.target!r} must look like package.module:Class")
        if not self.symbols:
            raise ValueError(f"worker {self.target} needs at least one symbol")

    @classmethod
    def parse(cls, text: str, index: int = 0) -> WorkerSpec:
        """``pkg.mod:Class=KRW-BTC,KRW-ETH`` (optionally ``@name`` at the end)."""
        target, eq, rest = text.partition("=")
        if not eq:
            raise ValueError(f"worker spec {text!r} must look like pkg.mod:Class=KRW-BTC,KRW-ETH")
        symbols_text, _, name = rest.partition("@")
        symbols = tuple(s.strip() for s in symbols_text.split(",") if s.strip())
        default_name = f"{target.rpartition(':')[2]}-{index}"
        return cls(target.strip(), symbols, name or default_name)


@dataclass(slots=True)
class _Child:
    spec: WorkerSpec
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    failures: int = 0
    restarts: int = 0
    restart_at: float | None = None
    done: bool = False
    exit_codes: list[int] = field(default_factory=list)


class Supervisor:
    """Keeps a set of worker processes running until stopped."""

    def __init__(
        self,
        specs: Sequence[WorkerSpec],
        *,
        control_endpoint: str | None = None,
        max_restarts: int = 5,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        stable_after_s: float = 30.0,
        stop_grace_s: float = 5.0,
        extra_args: Sequence[str] = (),
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        python: str = sys.executable,
        env: Mapping[str, str] | None = None,
        poll_interval_s: float = 0.05,
    ) -> None:
        names = [s.name or s.target for s in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"worker names must be unique, got {names}")
        self._children = [_Child(s) for s in specs]
        self._control_endpoint = control_endpoint
        self._max_restarts = max_restarts
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._stable_after_s = stable_after_s
        self._stop_grace_s = stop_grace_s
        self._extra_args = tuple(extra_args)
        self._rng = rng or random.Random()
        self._clock = clock
        self._python = python
        self._env = dict(env) if env is not None else None
        self._poll_interval_s = poll_interval_s
        self._stop = threading.Event()

    def restart_delay(self, failures: int) -> float:
        """The wait before restarting after ``failures`` consecutive failures (>= 1)."""
        return backoff_delay(
            failures - 1,
            base=self._backoff_base,
            factor=2.0,
            cap=self._backoff_cap,
            jitter=True,
            rng=self._rng,
        )

    def command(self, spec: WorkerSpec) -> list[str]:
        symbols = ",".join(spec.symbols)
        cmd = [self._python, "-m", "workers", "run", spec.target, "--symbols", symbols]
        if spec.name:
            cmd += ["--worker-id", spec.name]
        if self._control_endpoint:
            cmd += ["--control", self._control_endpoint]
        return [*cmd, *self._extra_args, *spec.args]

    def stop(self) -> None:
        self._stop.set()

    def stats(self) -> dict[str, dict[str, object]]:
        return {
            c.spec.name or c.spec.target: {
                "pid": c.process.pid if c.process else None,
                "restarts": c.restarts,
                "failures": c.failures,
                "done": c.done,
                "exit_codes": list(c.exit_codes),
            }
            for c in self._children
        }

    def run(self) -> dict[str, dict[str, object]]:
        """Supervise until :meth:`stop` or until every worker is done or given up."""
        try:
            for child in self._children:
                self._start(child)
            while not self._stop.is_set():
                now = self._clock()
                for child in self._children:
                    self._check(child, now)
                if all(c.done for c in self._children):
                    break
                self._stop.wait(self._poll_interval_s)
        finally:
            self._terminate_all()
        return self.stats()

    def _start(self, child: _Child) -> None:
        cmd = self.command(child.spec)
        child.process = subprocess.Popen(cmd, env=self._env)
        child.started_at = self._clock()
        child.restart_at = None
        log.info("event=worker_started name=%s pid=%d", child.spec.name, child.process.pid)

    def _check(self, child: _Child, now: float) -> None:
        if child.done:
            return
        if child.process is None:
            if child.restart_at is not None and now >= child.restart_at:
                child.restarts += 1
                self._start(child)
            return
        code = child.process.poll()
        if code is None:
            if child.failures and now - child.started_at >= self._stable_after_s:
                child.failures = 0
            return
        child.exit_codes.append(code)
        child.process = None
        if code == 0:
            log.info("event=worker_finished name=%s", child.spec.name)
            child.done = True
            return
        if now - child.started_at >= self._stable_after_s:
            child.failures = 0
        child.failures += 1
        if child.failures > self._max_restarts:
            log.error(
                "event=worker_given_up name=%s exit_code=%d failures=%d",
                child.spec.name,
                code,
                child.failures,
            )
            child.done = True
            return
        delay = self.restart_delay(child.failures)
        child.restart_at = now + delay
        log.warning(
            "event=worker_crashed name=%s exit_code=%d failures=%d restart_in_s=%.3f",
            child.spec.name,
            code,
            child.failures,
            delay,
        )

    def _terminate_all(self) -> None:
        running = [c for c in self._children if c.process is not None]
        for child in running:
            assert child.process is not None
            child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self._stop_grace_s
        for child in running:
            assert child.process is not None
            try:
                code = child.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("event=worker_killed name=%s reason=no_sigterm_exit", child.spec.name)
                child.process.kill()
                code = child.process.wait()
            child.exit_codes.append(code)
            child.process = None
