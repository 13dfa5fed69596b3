"""Server-side WebSocket frame headers (RFC 6455: unmasked, FIN set, no extensions)."""

from __future__ import annotations

import struct

OP_TEXT = 0x1
OP_BINARY = 0x2

_SHORT = struct.Struct("!BB")
_MEDIUM = struct.Struct("!BBH")
_LONG = struct.Struct("!BBQ")


def header(length: int, opcode: int = OP_BINARY) -> bytes:
    first = 0x80 | opcode
    if length < 126:
        return _SHORT.pack(first, length)
    if length < 65536:
        return _MEDIUM.pack(first, 126, length)
    return _LONG.pack(first, 127, length)


def frame(payload: bytes, opcode: int = OP_BINARY) -> bytes:
    """One complete unfragmented frame carrying ``payload``."""
    return header(len(payload), opcode) + payload
