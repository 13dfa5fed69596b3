"""Typed errors of the shared-memory segments; each names the segment it is about."""

from __future__ import annotations


class ShmError(Exception):
    """Base class of every shared-memory error."""


class SegmentOwnedError(ShmError):
    """The segment is held by a live writer; a second writer for it is refused."""

    def __init__(self, name: str, pid: int) -> None:
        super().__init__(
            f"shm segment {name!r} is owned by a live writer (pid {pid}); "
            "only one writer per segment is allowed"
        )
        self.name = name
        self.pid = pid


class SegmentSpaceError(ShmError):
    """The segment's memory cannot be reserved: /dev/shm has no room for it (or the
    process's file size limit forbids it). Raised when the writer creates the segment,
    instead of a SIGBUS on some later write."""

    def __init__(self, name: str, size: int, free: int | None, reason: str) -> None:
        room = "" if free is None else f", {free} bytes free"
        super().__init__(
            f"shm segment {name!r} needs {size} bytes, which cannot be reserved "
            f"({reason}{room}); lower the ring capacity or free space in /dev/shm"
        )
        self.name = name
        self.size = size
        self.free = free


class SegmentNotFoundError(ShmError, TimeoutError):
    """No usable segment appeared under the name within the reader's timeout."""

    def __init__(self, name: str, timeout: float) -> None:
        super().__init__(f"shm segment {name!r} did not appear within {timeout:g} s")
        self.name = name
        self.timeout = timeout


class LayoutMismatchError(ShmError):
    """The segment exists but its layout is not the one this code reads."""

    def __init__(self, name: str, detail: str) -> None:
        super().__init__(f"shm segment {name!r} has an unexpected layout: {detail}")
        self.name = name


class UnknownSymbolError(ShmError, KeyError):
    """A market code that is not in the segment's symbol table."""

    def __init__(self, name: str, code: object) -> None:
        super().__init__(f"market code {code!r} is not in the symbol table of shm segment {name!r}")
        self.name = name
        self.code = code

    def __str__(self) -> str:
        return str(self.args[0])


class SymbolTableFullError(ShmError):
    """Adding a symbol would exceed the segment's max_symbols."""

    def __init__(self, name: str, max_symbols: int) -> None:
        super().__init__(f"symbol table of shm segment {name!r} is full ({max_symbols} symbols)")
        self.name = name
        self.max_symbols = max_symbols


class InconsistentReadError(ShmError):
    """No consistent copy of a record could be taken before the read deadline.

    Happens only when the writer stays inside one record longer than the deadline (a
    writer descheduled mid-write on a loaded machine, or killed mid-write).
    """

    def __init__(self, name: str, what: str, waited_s: float) -> None:
        super().__init__(
            f"no consistent copy of {what} in shm segment {name!r} after {waited_s:.3f} s"
        )
        self.name = name
