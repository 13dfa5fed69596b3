"""Server-side WebSocket frames (RFC 6455: unmasked, FIN set) and permessage-deflate (RFC 7692)."""

from __future__ import annotations

import struct
import zlib

OP_TEXT = 0x1
OP_BINARY = 0x2
RSV1 = 0x40

_SHORT = struct.Struct("!BB")
_MEDIUM = struct.Struct("!BBH")
_LONG = struct.Struct("!BBQ")
_SYNC_TAIL = b"\x00\x00\xff\xff"

# A market frame's "sim_ns" stamp, written into fixed-width digits just before the frame
# goes out (time.time_ns() has 19 digits until the year 2286).
STAMP_SLOT = b',"sim_ns":0000000000000000000}'
STAMP_DIGITS = 19


def header(length: int, opcode: int = OP_BINARY, compressed: bool = False) -> bytes:
    first = 0x80 | opcode | (RSV1 if compressed else 0)
    if length < 126:
        return _SHORT.pack(first, length)
    if length < 65536:
        return _MEDIUM.pack(first, 126, length)
    return _LONG.pack(first, 127, length)


def frame(payload: bytes, opcode: int = OP_BINARY) -> bytes:
    """One complete unfragmented frame carrying ``payload``."""
    return header(len(payload), opcode) + payload


def with_stamp_slot(payload: bytes, list_format: bool) -> bytes:
    """``payload`` (a JSON object) ending in a zeroed ``"sim_ns"`` slot; in ``[ ]`` for
    the list formats."""
    body = payload[:-1] + STAMP_SLOT
    return b"[" + body + b"]" if list_format else body


def stamp_digits_back(list_format: bool) -> int:
    """How far before the end of a :func:`with_stamp_slot` body its first stamp digit is:
    the digits, ``}`` and, for the list formats, ``]``."""
    return STAMP_DIGITS + 1 + (1 if list_format else 0)


class Deflater:
    """Compresses whole messages into frames for one connection that negotiated
    permessage-deflate with these parameters (our side's window and context takeover)."""

    __slots__ = ("_compressor", "_reset", "_window_bits")

    def __init__(self, window_bits: int, no_context_takeover: bool) -> None:
        if not 8 <= window_bits <= 15:
            raise ValueError(f"window bits must be 8..15, got {window_bits}")
        self._window_bits = window_bits
        self._reset = no_context_takeover
        self._compressor = self._new()

    def _new(self) -> zlib._Compress:
        return zlib.compressobj(wbits=-self._window_bits, memLevel=5)

    def frame(self, payload: bytes) -> bytes:
        if self._reset:
            self._compressor = self._new()
        data = self._compressor.compress(payload) + self._compressor.flush(zlib.Z_SYNC_FLUSH)
        if data.endswith(_SYNC_TAIL):
            data = data[:-4]
        return header(len(data), OP_BINARY, compressed=True) + data
