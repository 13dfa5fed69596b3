"""Running the exchange: in a background thread (tests) or in the foreground (CLI)."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import signal
import sys
import threading
from dataclasses import fields
from types import TracebackType
from typing import Any

from simulator.control import ControlClient
from simulator.server import Exchange, SimulatorConfig

log = logging.getLogger("simulator")
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0


def _close_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Close ``loop`` as ``asyncio.run`` does: cancel what is still pending (handshakes
    the stop cut short) and let it finish first. A task destroyed while pending runs its
    clean-up later, inside whatever code the garbage collector interrupts."""
    pending = asyncio.all_tasks(loop)
    for task in pending:
        task.cancel()
    if pending:
        loop.run_until_complete(asyncio.wait(pending, timeout=1.0))
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()


class Simulator:
    """The exchange on its own asyncio loop in a daemon thread; a context manager.

    ``Simulator(markets=20, rate=1000.0, seed=1, ...)`` takes every
    :class:`SimulatorConfig` field as a keyword argument.
    """

    def __init__(self, **options: Any) -> None:
        known = {f.name for f in fields(SimulatorConfig)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"unknown Simulator option(s): {', '.join(unknown)}")
        self.config = SimulatorConfig(**options)
        self.exchange: Exchange | None = None
        self.urls: dict[str, str] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stopped: asyncio.Event | None = None

    @property
    def public_url(self) -> str:
        return self.urls["public_url"]

    @property
    def private_url(self) -> str:
        return self.urls["private_url"]

    @property
    def rest_url(self) -> str:
        return self.urls["rest_url"]

    @property
    def control_url(self) -> str:
        return self.urls["control_url"]

    @property
    def control(self) -> ControlClient:
        return ControlClient(self.control_url)

    @property
    def markets(self) -> list[str]:
        if self.exchange is None:
            raise RuntimeError("the simulator is not running")
        return [info.code for info in self.exchange.markets]

    def start(self) -> Simulator:
        if self._thread is not None:
            raise RuntimeError("the simulator is already started")
        self._thread = threading.Thread(target=self._run, name="simulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT):
            raise TimeoutError(f"the simulator did not start within {START_TIMEOUT} s")
        if self._error is not None:
            raise RuntimeError("the simulator failed to start") from self._error
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            raise
        finally:
            _close_loop(loop)

    async def _main(self) -> None:
        self._stopped = asyncio.Event()
        self.exchange = Exchange(self.config)
        self.urls = await self.exchange.start()
        self._ready.set()
        await self._stopped.wait()
        await self.exchange.stop()

    def stop(self) -> None:
        loop, thread, stopped = self._loop, self._thread, self._stopped
        if loop is None or thread is None or stopped is None:
            return
        if not loop.is_closed():
            loop.call_soon_threadsafe(stopped.set)
        thread.join(STOP_TIMEOUT)
        if thread.is_alive():
            raise TimeoutError(f"the simulator did not stop within {STOP_TIMEOUT} s")
        self._thread = None

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


async def serve_forever(config: SimulatorConfig) -> None:
    """Serve until SIGINT or SIGTERM; print the URLs as one JSON line once listening."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    exchange = Exchange(config)
    urls = await exchange.start()
    # A full collection over the start-up heap stalls the event loop for ~10 ms, which
    # would show up as a burst in every paced stream; the feed process does the same.
    gc.collect()
    gc.freeze()
    sys.stdout.write(json.dumps(urls) + "\n")
    sys.stdout.flush()
    await stop.wait()
    log.info("event=simulator_stopping")
    await exchange.stop()
