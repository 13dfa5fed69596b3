"""The simulator's loop timer: sub-millisecond sleeps that never end early."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

import simulator.timer as timer_module
from simulator.timer import LoopTimer

pytestmark = pytest.mark.timeout(20)

T = TypeVar("T")


@pytest.fixture(params=["timerfd", "asyncio_sleep"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs with the timerfd and with the fallback used where it is missing."""
    if request.param == "asyncio_sleep":
        monkeypatch.setattr(timer_module, "_libc", lambda: None)
    return str(request.param)


def run(coro_fn: Callable[[asyncio.AbstractEventLoop], Awaitable[T]]) -> T:
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro_fn(loop))
    finally:
        loop.close()


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="timerfd is Linux's")
def test_the_timer_uses_a_timerfd_on_linux_unless_it_is_missing(mode: str) -> None:
    async def body(loop: asyncio.AbstractEventLoop) -> bool:
        timer = LoopTimer(loop)
        try:
            return timer.precise
        finally:
            timer.close()

    assert run(body) is (mode == "timerfd")


@pytest.mark.parametrize("step", [0.00005, 0.0002, 0.0007, 0.003])
def test_sleep_until_never_returns_before_its_deadline(step: float, mode: str) -> None:
    async def body(loop: asyncio.AbstractEventLoop) -> list[float]:
        timer = LoopTimer(loop)
        early = []
        try:
            deadline = loop.time()
            for _ in range(40):
                deadline += step
                await timer.sleep_until(deadline)
                if loop.time() < deadline:
                    early.append(deadline - loop.time())
        finally:
            timer.close()
        return early

    assert run(body) == []


def test_a_deadline_in_the_past_returns_at_once_and_other_tasks_still_run(mode: str) -> None:
    async def body(loop: asyncio.AbstractEventLoop) -> list[str]:
        timer = LoopTimer(loop)
        order: list[str] = []

        async def other() -> None:
            order.append("other")

        try:
            task = loop.create_task(other())
            await timer.sleep_until(loop.time() - 1.0)
            order.append("slept")
            await task
        finally:
            timer.close()
        return order

    assert run(body) == ["other", "slept"]


def test_other_callbacks_run_while_the_timer_waits(mode: str) -> None:
    async def body(loop: asyncio.AbstractEventLoop) -> list[str]:
        timer = LoopTimer(loop)
        order: list[str] = []
        loop.call_soon(order.append, "callback")
        try:
            await timer.sleep_until(loop.time() + 0.02)
            order.append("woke")
        finally:
            timer.close()
        return order

    assert run(body) == ["callback", "woke"]


def test_a_cancelled_sleep_leaves_the_timer_usable_and_close_releases_the_fd(
    mode: str,
) -> None:
    before = open_fds()

    async def body(loop: asyncio.AbstractEventLoop) -> bool:
        timer = LoopTimer(loop)
        sleeper = loop.create_task(timer.sleep_until(loop.time() + 0.005))
        await asyncio.sleep(0)
        sleeper.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sleeper
        # The cancelled deadline fires meanwhile and must not end the next sleep early.
        await asyncio.sleep(0.01)
        deadline = loop.time() + 0.002
        await timer.sleep_until(deadline)
        on_time = loop.time() >= deadline
        timer.close()
        timer.close()
        return on_time

    assert run(body) is True
    assert open_fds() == before


def test_two_waiters_at_once_are_refused(mode: str) -> None:
    async def body(loop: asyncio.AbstractEventLoop) -> None:
        timer = LoopTimer(loop)
        if not timer.precise:
            timer.close()
            pytest.skip("the asyncio.sleep fallback has no single waiter")
        first = loop.create_task(timer.sleep_until(loop.time() + 0.05))
        await asyncio.sleep(0)
        try:
            with pytest.raises(RuntimeError, match="already awaited"):
                await timer.sleep_until(loop.time() + 0.01)
        finally:
            first.cancel()
            timer.close()

    run(body)


def test_closing_cancels_a_pending_sleep(mode: str) -> None:
    async def body(loop: asyncio.AbstractEventLoop) -> bool:
        timer = LoopTimer(loop)
        if not timer.precise:
            timer.close()
            pytest.skip("the asyncio.sleep fallback has nothing to cancel on close")
        sleeper = loop.create_task(timer.sleep_until(loop.time() + 10.0))
        await asyncio.sleep(0)
        timer.close()
        with pytest.raises(asyncio.CancelledError):
            await sleeper
        return True

    assert run(body) is True


def test_arm_then_wait_ends_at_the_deadline_after_work_done_in_between(mode: str) -> None:
    async def body(loop: asyncio.AbstractEventLoop) -> tuple[bool, bool]:
        timer = LoopTimer(loop)
        try:
            deadline = loop.time() + 0.01
            timer.arm(deadline)
            time.sleep(0.002)  # the work between arming and waiting, e.g. a write
            await timer.wait()
            on_time = loop.time() >= deadline
            # Work longer than the armed wait: the deadline has passed when wait() starts.
            timer.arm(loop.time() + 0.001)
            time.sleep(0.005)
            started = loop.time()
            await timer.wait()
            return on_time, loop.time() - started < 0.5
        finally:
            timer.close()

    assert run(body) == (True, True)


def test_arming_again_before_waiting_replaces_the_deadline(mode: str) -> None:
    async def body(loop: asyncio.AbstractEventLoop) -> tuple[bool, bool]:
        timer = LoopTimer(loop)
        try:
            timer.arm(loop.time() + 0.001)
            later = loop.time() + 0.02
            timer.arm(later)
            time.sleep(0.003)  # the first deadline passes: it must not end the wait
            await timer.wait()
            not_early = loop.time() >= later
            timer.arm(loop.time() + 30.0)
            timer.arm(loop.time() + 0.002)
            started = loop.time()
            await timer.wait()
            return not_early, loop.time() - started < 5.0
        finally:
            timer.close()

    assert run(body) == (True, True)
