"""Sub-millisecond sleeps inside the asyncio loop, for the paced market stream.

asyncio's timers wake the loop through ``epoll_wait``, whose timeout is whole
milliseconds (rounded up), so a stream paced at thousands of events per second would
leave in clumps of several events once per millisecond or more, which is unlike an
exchange that sends each event as it happens. A Linux ``timerfd`` armed at an absolute
``CLOCK_MONOTONIC`` deadline (the clock of ``loop.time()``) wakes the loop at the
microsecond instead. Elsewhere, or if the call fails, ``asyncio.sleep`` is used.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import sys
import time

log = logging.getLogger("simulator")

_CLOCK_MONOTONIC = 1
_TFD_TIMER_ABSTIME = 1
_TFD_CLOEXEC = os.O_CLOEXEC
_TFD_NONBLOCK = os.O_NONBLOCK


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.timerfd_create.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.timerfd_settime.argtypes = [
            ctypes.c_int,
            ctypes.c_int,
            ctypes.POINTER(_Itimerspec),
            ctypes.c_void_p,
        ]
    except (OSError, AttributeError):
        return None
    return libc


class LoopTimer:
    """``await timer.sleep_until(deadline)``: resumes at ``deadline`` (``loop.time()``
    seconds), never before it, to the microsecond where a timerfd is available.

    ``arm(deadline)`` then ``await wait()`` is the same sleep in two steps, so that a
    caller can set its next wake-up before its last piece of work, e.g. a write whose
    reader shares a core with this process and runs only once this one sleeps.

    One waiter at a time (the pacing task); :meth:`close` releases the descriptor.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._fd = -1
        self._waiter: asyncio.Future[None] | None = None
        self._deadline: float | None = None
        self._awaited = False
        libc = _libc()
        if libc is None or abs(loop.time() - time.monotonic()) > 0.01:
            # A loop on another clock than CLOCK_MONOTONIC cannot use absolute deadlines.
            return
        fd = libc.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC)
        if fd < 0:
            log.warning("event=timerfd_unavailable errno=%d", ctypes.get_errno())
            return
        self._libc = libc
        self._fd = fd
        self._spec = _Itimerspec()
        loop.add_reader(fd, self._fired)

    @property
    def precise(self) -> bool:
        """True when sleeps use the timerfd (microseconds), not epoll's milliseconds."""
        return self._fd >= 0

    async def sleep_until(self, deadline: float) -> None:
        self.arm(deadline)
        await self.wait()

    def arm(self, deadline: float) -> None:
        """Sets the deadline the next :meth:`wait` returns at (replacing an armed one
        that nobody awaits yet)."""
        if self._awaited:
            raise RuntimeError("LoopTimer.sleep_until is already awaited")
        self._deadline = deadline
        self._waiter = None
        if self._fd < 0 or deadline <= self._loop.time():
            return
        seconds = int(deadline)
        self._spec.it_value.tv_sec = seconds
        self._spec.it_value.tv_nsec = min(int((deadline - seconds) * 1e9), 999_999_999)
        waiter = self._loop.create_future()
        if self._libc.timerfd_settime(self._fd, _TFD_TIMER_ABSTIME, self._spec, None) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"timerfd_settime failed: {os.strerror(errno)}")
        self._waiter = waiter

    async def wait(self) -> None:
        """Returns at the armed deadline (at once, after one pass of the loop, if it is
        past or nothing is armed)."""
        deadline, self._deadline = self._deadline, None
        waiter = self._waiter
        if deadline is None or deadline <= self._loop.time():
            self._waiter = None
            await asyncio.sleep(0)
            return
        if waiter is None:
            # asyncio may wake a timer up to its clock resolution early.
            while (left := deadline - self._loop.time()) > 0:
                await asyncio.sleep(left)
            return
        self._awaited = True
        try:
            await waiter
        finally:
            self._awaited = False
            self._waiter = None

    def _fired(self) -> None:
        try:
            os.read(self._fd, 8)
        except BlockingIOError:
            return  # re-armed after it fired: the old expiry was consumed already
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def close(self) -> None:
        if self._fd < 0:
            return
        self._loop.remove_reader(self._fd)
        os.close(self._fd)
        self._fd = -1
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.cancel()
