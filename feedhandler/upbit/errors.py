"""Typed errors of the Upbit codec.

A :class:`ProtocolError` means the *remote* sent something this codec cannot accept
(malformed JSON, a wrong type, an unknown message type, an oversized frame). Misuse of
the API by the caller (a bad subscription set) raises
:class:`~feedhandler.upbit.subscription.SubscriptionError` instead.
"""

from __future__ import annotations

EXCERPT_CHARS = 80


def frame_excerpt(frame: object, limit: int = EXCERPT_CHARS) -> str:
    """A short, printable excerpt of a frame for error messages and logs.

    Bytes are decoded leniently (invalid UTF-8 shows as U+FFFD) and the result is
    passed through ``repr`` semantics for control characters, so an excerpt never
    carries raw control bytes into a log line. The result is at most ``limit`` chars.
    """
    if isinstance(frame, bytes | bytearray | memoryview):
        head = bytes(frame[: limit * 4]).decode("utf-8", errors="replace")
    elif isinstance(frame, str):
        head = frame[: limit * 4]
    else:
        head = f"<{type(frame).__name__}>"
    text = repr(head)[1:-1]
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


class ProtocolError(ValueError):
    """A frame from Upbit (or the simulator) that breaks the message protocol.

    ``reason`` says what is wrong, ``excerpt`` holds at most 80 printable characters
    of the offending frame.
    """

    def __init__(self, reason: str, frame: object = None) -> None:
        self.reason = reason
        self.excerpt = frame_excerpt(frame) if frame is not None else ""
        message = f"{reason}: {self.excerpt!r}" if frame is not None else reason
        super().__init__(message)
