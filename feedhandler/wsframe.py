"""Sans-IO RFC 6455 framing: a parser for server frames and builders for client frames.

No sockets, no clocks. Bytes go in through a buffer the parser owns (the transport
``recv_into``\\s :meth:`FrameParser.recv_buffer` and reports the count with
:meth:`FrameParser.commit`; tests may use :meth:`FrameParser.feed`), and complete
messages come out of :meth:`FrameParser.messages` (everything that is complete, as one
batch) or :meth:`FrameParser.next_message` (one at a time, :data:`NEED_DATA` when the
buffer holds no complete message).

A message is ``(opcode, payload)``:

* data messages (:data:`OP_TEXT`, :data:`OP_BINARY`) after continuation frames have
  been reassembled (and permessage-deflate undone when it was negotiated). An
  unfragmented uncompressed payload is a ``memoryview`` into the parser's buffer, valid
  until the next :meth:`~FrameParser.recv_buffer` / :meth:`~FrameParser.feed` call:
  decode it right away or take ``bytes(payload)``. Reassembled or inflated payloads are
  ``bytes``. Text payloads are validated UTF-8 but left as bytes: the JSON decoders
  downstream take bytes.
* control frames as they arrive, also between the fragments of a data message:
  :data:`OP_PING` / :data:`OP_PONG` with their payload as ``bytes``, and
  :data:`OP_CLOSE` with its raw payload; the parsed code and reason are in
  :attr:`FrameParser.close_code` / :attr:`FrameParser.close_reason`. Nothing after a
  close frame is parsed.

A frame that breaks the protocol raises :class:`WebSocketProtocolError` carrying the
close code to fail the connection with. Messages completed before the bad frame are
still returned; the error is raised by the next call.
"""

from __future__ import annotations

import codecs
import struct
import zlib
from collections import deque
from dataclasses import dataclass
from typing import Final

OP_CONTINUATION: Final = 0x0
OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA

CLOSE_NORMAL: Final = 1000
CLOSE_GOING_AWAY: Final = 1001
CLOSE_PROTOCOL_ERROR: Final = 1002
CLOSE_NO_STATUS: Final = 1005
CLOSE_ABNORMAL: Final = 1006
CLOSE_INVALID_PAYLOAD: Final = 1007
CLOSE_MESSAGE_TOO_BIG: Final = 1009

MAX_CONTROL_PAYLOAD: Final = 125
DEFAULT_MAX_MESSAGE_SIZE: Final = 4 * 1024 * 1024
DEFAULT_BUFFER_SIZE: Final = 256 * 1024
PERMESSAGE_DEFLATE: Final = "permessage-deflate"

Message = tuple[int, bytes | memoryview]

_FIN: Final = 0x80
_RSV1: Final = 0x40
_RSV_ALL: Final = 0x70
_MASKED: Final = 0x80
# Frame header byte 0 of an unfragmented, uncompressed binary frame: the hot path.
_FIN_BINARY: Final = _FIN | OP_BINARY
_MAX_HEADER: Final = 14
# RFC 7692 7.2.2: the sender strips this empty stored block; the receiver appends it.
_DEFLATE_TAIL: Final = b"\x00\x00\xff\xff"
_U16 = struct.Struct("!H")
_U64 = struct.Struct("!Q")
_utf8_decode = codecs.utf_8_decode

# RFC 6455 7.4 plus the IANA registry: codes a peer may put in a close frame.
# 1004 is reserved, 1005/1006/1015 are local-only, 1016-2999 are unassigned.
_VALID_PEER_CLOSE_CODES: Final = frozenset({1000, 1001, 1002, 1003, *range(1007, 1015)})


class WebSocketProtocolError(Exception):
    """The server broke RFC 6455; ``code`` is the close code to fail the connection with."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"websocket protocol error {code}: {reason}")
        self.code = code
        self.reason = reason


class FrameBuildError(ValueError):
    """This side asked the builders for a frame RFC 6455 forbids (local misuse)."""


class _NeedData:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData()
"""Returned by :meth:`FrameParser.next_message` when no complete message is buffered."""


@dataclass(frozen=True, slots=True)
class DeflateParams:
    """The permessage-deflate parameters the server accepted (RFC 7692).

    Only what matters to a receiver is kept: this client never compresses what it sends
    (RFC 7692 lets a sender leave any message uncompressed), and inflating with the
    largest window decodes any smaller window the server picked.
    """

    server_no_context_takeover: bool = False


def deflate_offer() -> str:
    """The ``Sec-WebSocket-Extensions`` value offering permessage-deflate."""
    return f"{PERMESSAGE_DEFLATE}; client_max_window_bits"


def parse_deflate_response(value: str) -> DeflateParams:
    """Validate the server's ``Sec-WebSocket-Extensions`` answer to :func:`deflate_offer`.

    Raises :class:`WebSocketProtocolError` (1002) for an extension that was not offered,
    several extensions, unknown, repeated or out-of-range parameters.
    """
    extensions = [part.strip() for part in value.split(",") if part.strip()]
    if len(extensions) != 1:
        raise WebSocketProtocolError(
            CLOSE_PROTOCOL_ERROR, f"expected one accepted extension, got {value!r}"
        )
    name, *params = (p.strip() for p in extensions[0].split(";"))
    if name.lower() != PERMESSAGE_DEFLATE:
        raise WebSocketProtocolError(CLOSE_PROTOCOL_ERROR, f"extension not offered: {name!r}")
    seen: set[str] = set()
    no_context_takeover = False
    for param in params:
        key, has_value, raw = param.partition("=")
        key = key.strip().lower()
        raw = raw.strip().strip('"')
        if key in seen:
            raise WebSocketProtocolError(CLOSE_PROTOCOL_ERROR, f"repeated deflate parameter {key}")
        seen.add(key)
        if key in ("server_no_context_takeover", "client_no_context_takeover"):
            if has_value:
                raise WebSocketProtocolError(
                    CLOSE_PROTOCOL_ERROR, f"deflate parameter {key} takes no value"
                )
            no_context_takeover = no_context_takeover or key == "server_no_context_takeover"
        elif key in ("server_max_window_bits", "client_max_window_bits"):
            if not (raw.isdigit() and 8 <= int(raw) <= 15):
                raise WebSocketProtocolError(
                    CLOSE_PROTOCOL_ERROR, f"deflate parameter {key}={raw!r} is not 8..15"
                )
        else:
            raise WebSocketProtocolError(CLOSE_PROTOCOL_ERROR, f"unknown deflate parameter {key}")
    return DeflateParams(server_no_context_takeover=no_context_takeover)


def parse_close_payload(payload: bytes | memoryview) -> tuple[int, str]:
    """``(code, reason)`` of a received close frame; ``(1005, "")`` when it is empty.

    Raises :class:`WebSocketProtocolError`: 1002 for a 1-byte payload or a code a peer
    may not send, 1007 for a reason that is not UTF-8.
    """
    if len(payload) == 0:
        return CLOSE_NO_STATUS, ""
    if len(payload) == 1:
        raise WebSocketProtocolError(CLOSE_PROTOCOL_ERROR, "close payload of 1 byte")
    (code,) = _U16.unpack_from(payload)
    if code not in _VALID_PEER_CLOSE_CODES and not 3000 <= code <= 4999:
        raise WebSocketProtocolError(CLOSE_PROTOCOL_ERROR, f"invalid close code {code}")
    try:
        reason = _utf8_decode(payload[2:], "strict", True)[0]
    except UnicodeDecodeError as exc:
        raise WebSocketProtocolError(
            CLOSE_INVALID_PAYLOAD, f"close reason is not UTF-8: {exc.reason} at {exc.start}"
        ) from None
    return code, reason


def build_close_payload(code: int = CLOSE_NORMAL, reason: str = "") -> bytes:
    """The payload of a close frame this side sends; the reason is cut to fit 125 bytes."""
    if code not in _VALID_PEER_CLOSE_CODES and not 3000 <= code <= 4999:
        raise FrameBuildError(f"close code {code} may not be sent")
    encoded = reason.encode("utf-8")
    if len(encoded) > MAX_CONTROL_PAYLOAD - 2:
        # Cut on a character boundary so the reason stays valid UTF-8.
        encoded = encoded[: MAX_CONTROL_PAYLOAD - 2].decode("utf-8", "ignore").encode("utf-8")
    return _U16.pack(code) + encoded


def mask_payload(payload: bytes | bytearray | memoryview, mask_key: bytes) -> bytes:
    """XOR ``payload`` with the 4-byte ``mask_key`` (RFC 6455 5.3); its own inverse."""
    size = len(payload)
    if size == 0:
        return b""
    # One big-integer XOR runs in C over the whole payload.
    key = (mask_key * (size // 4 + 1))[:size]
    masked = int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")
    return masked.to_bytes(size, "little")


def build_frame(
    opcode: int,
    payload: bytes | bytearray | memoryview = b"",
    *,
    mask_key: bytes | None,
    fin: bool = True,
    rsv: int = 0,
) -> bytes:
    """One frame. Client frames must be masked: pass a fresh random 4-byte ``mask_key``.

    ``mask_key=None`` builds an unmasked (server-style) frame. ``rsv`` is the three RSV
    bits as an integer 0..7 (RSV1 = 4).
    """
    if opcode not in (OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG):
        raise FrameBuildError(f"unknown opcode {opcode:#x}")
    if not 0 <= rsv <= 7:
        raise FrameBuildError(f"rsv must be 0..7, got {rsv}")
    size = len(payload)
    if opcode >= OP_CLOSE and (size > MAX_CONTROL_PAYLOAD or not fin):
        raise FrameBuildError(f"control frame {opcode:#x} must be final and at most 125 bytes")
    head = (_FIN if fin else 0) | (rsv << 4) | opcode
    mask_bit = 0 if mask_key is None else _MASKED
    if size < 126:
        header = bytes((head, mask_bit | size))
    elif size < 65536:
        header = bytes((head, mask_bit | 126)) + _U16.pack(size)
    else:
        header = bytes((head, mask_bit | 127)) + _U64.pack(size)
    if mask_key is None:
        return header + bytes(payload)
    if len(mask_key) != 4:
        raise FrameBuildError("mask_key must be 4 bytes")
    return header + mask_key + mask_payload(payload, mask_key)


class FrameParser:
    """Client-side parser of server frames over a preallocated, bounded buffer.

    ``buffer_size`` is the resting size of the receive buffer. A frame bigger than it
    grows the buffer (to at most ``max_message_size`` + 14 + ``buffer_size // 4``);
    once the big frame is consumed the buffer shrinks back. ``deflate`` enables RFC 7692 inflation
    when the handshake negotiated it.
    """

    __slots__ = (
        "_base_size",
        "_buf",
        "_closed",
        "_decompressor",
        "_deflate",
        "_end",
        "_error",
        "_fast_frames",
        "_frag",
        "_frag_compressed",
        "_frag_opcode",
        "_max_message_size",
        "_need",
        "_ready",
        "_slow_frames",
        "_slow_messages",
        "_start",
        "_view",
        "close_code",
        "close_reason",
        "control_frames",
    )

    def __init__(
        self,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        deflate: DeflateParams | None = None,
    ) -> None:
        if max_message_size < MAX_CONTROL_PAYLOAD:
            raise ValueError(f"max_message_size must be at least {MAX_CONTROL_PAYLOAD}")
        if buffer_size < 2 * _MAX_HEADER + MAX_CONTROL_PAYLOAD:
            raise ValueError("buffer_size is too small to hold a control frame")
        self._max_message_size = max_message_size
        self._base_size = buffer_size
        self._buf = bytearray(buffer_size)
        self._view = memoryview(self._buf)
        self._start = 0
        self._end = 0
        self._need = 0
        self._frag = bytearray()
        self._frag_opcode = 0
        self._frag_compressed = False
        self._deflate = deflate
        self._decompressor: zlib._Decompress | None = None
        self._error: WebSocketProtocolError | None = None
        self._closed = False
        self._ready: deque[Message] = deque()
        self.close_code: int | None = None
        self.close_reason: str = ""
        self.control_frames = 0
        self._fast_frames = 0
        self._slow_frames = 0
        self._slow_messages = 0

    # ---- input ------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once a close frame was parsed; later bytes are ignored."""
        return self._closed

    @property
    def deflate(self) -> DeflateParams | None:
        """The negotiated permessage-deflate parameters, or None."""
        return self._deflate

    @property
    def error(self) -> WebSocketProtocolError | None:
        """The protocol error the next :meth:`messages` call will raise, if any."""
        return self._error

    @property
    def frames_received(self) -> int:
        """Frames parsed so far, control and continuation frames included."""
        return self._fast_frames + self._slow_frames

    @property
    def buffered(self) -> int:
        """Bytes received but not yet consumed (an incomplete frame, usually)."""
        return self._end - self._start

    @property
    def capacity(self) -> int:
        """Current size of the receive buffer."""
        return len(self._buf)

    def recv_buffer(self) -> memoryview:
        """The free space to receive into; report how much was written with :meth:`commit`.

        Invalidates payload views returned earlier (their bytes may be moved).
        """
        if self._ready:
            # Messages parsed but not yet handed out must survive the bytes moving.
            self._ready = deque((op, bytes(data)) for op, data in self._ready)
        start, end = self._start, self._end
        pending = end - start
        cap = len(self._buf)
        need = max(self._need, pending)
        if need > cap:
            # Room for the big frame plus the start of the next one.
            self._reallocate(need + self._base_size // 4, start, end)
        elif cap > self._base_size and need <= self._base_size // 2:
            self._reallocate(self._base_size, start, end)
        elif pending == 0:
            self._start = self._end = 0
        elif start + max(need, pending) > cap or cap - end < cap // 2:
            self._buf[:pending] = self._view[start:end]
            self._start, self._end = 0, pending
        if self._end == len(self._buf):
            # Only reachable when complete frames were left unparsed; never hand out an
            # empty buffer, which a recv_into would mistake for EOF.
            self._reallocate(len(self._buf) + self._base_size // 4, self._start, self._end)
        return self._view[self._end :]

    def commit(self, nbytes: int) -> None:
        """Record that ``nbytes`` were written at the start of :meth:`recv_buffer`."""
        if not 0 <= nbytes <= len(self._buf) - self._end:
            raise ValueError(f"commit of {nbytes} bytes exceeds the free buffer space")
        self._end += nbytes

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Copy ``data`` into the buffer (for callers that do not ``recv_into``).

        The buffer grows to hold all of ``data``; it shrinks back once parsed.
        """
        size = len(data)
        free = self.recv_buffer()
        if len(free) < size:
            self._reallocate(self.buffered + size, self._start, self._end)
            free = self._view[self._end :]
        free[:size] = data
        self._end += size

    def _reallocate(self, size: int, start: int, end: int) -> None:
        # A fresh buffer, not an in-place resize: views handed out earlier keep the old one.
        buf = bytearray(size)
        buf[: end - start] = self._view[start:end]
        self._buf = buf
        self._view = memoryview(buf)
        self._start, self._end = 0, end - start

    # ---- output -----------------------------------------------------------------------

    def next_message(self) -> Message | _NeedData:
        """The next complete message, or :data:`NEED_DATA`."""
        if not self._ready:
            self._ready.extend(self.messages())
            if not self._ready:
                return NEED_DATA
        return self._ready.popleft()

    def messages(self) -> list[Message]:
        """Every message completed by the bytes buffered so far (possibly none)."""
        if self._error is not None:
            raise self._error
        if self._ready:
            out = list(self._ready)
            self._ready.clear()
        else:
            out = []
        if self._closed:
            return out
        buf = self._buf
        view = self._view
        pos = self._start
        end = self._end
        max_size = self._max_message_size
        fragmenting = self._frag_opcode
        self._need = 0
        # Fast-path frames are counted once per batch, from the output length.
        first = len(out)
        slow_before = self._slow_messages
        try:
            while end - pos >= 2:
                b0 = buf[pos]
                length = buf[pos + 1]
                if length & _MASKED:
                    raise WebSocketProtocolError(
                        CLOSE_PROTOCOL_ERROR, "server frames must not be masked"
                    )
                if length < 126:
                    start = pos + 2
                elif length == 126:
                    if end - pos < 4:
                        break
                    length = (buf[pos + 2] << 8) | buf[pos + 3]
                    start = pos + 4
                    if length < 126:
                        raise WebSocketProtocolError(
                            CLOSE_PROTOCOL_ERROR, f"length {length} not minimally encoded"
                        )
                else:
                    if end - pos < 10:
                        break
                    (length,) = _U64.unpack_from(buf, pos + 2)
                    start = pos + 10
                    if length >> 63:
                        raise WebSocketProtocolError(
                            CLOSE_PROTOCOL_ERROR, "64-bit payload length with the high bit set"
                        )
                    if length < 65536:
                        raise WebSocketProtocolError(
                            CLOSE_PROTOCOL_ERROR, f"length {length} not minimally encoded"
                        )
                stop = start + length
                if b0 == _FIN_BINARY and not fragmenting:
                    if length > max_size:
                        raise WebSocketProtocolError(
                            CLOSE_MESSAGE_TOO_BIG, f"message of {length} bytes exceeds {max_size}"
                        )
                    if stop > end:
                        self._need = stop - pos
                        break
                    out.append((OP_BINARY, view[start:stop]))
                    pos = stop
                    continue
                self._check_header(b0, length)
                if stop > end:
                    self._need = stop - pos
                    break
                self._frame(b0, view[start:stop], out)
                fragmenting = self._frag_opcode
                pos = stop
                if self._closed:
                    break
        except WebSocketProtocolError as exc:
            self._error = exc
            self._start = pos
            self._fast_frames += len(out) - first - (self._slow_messages - slow_before)
            if not out:
                raise
            return out
        self._start = pos
        self._fast_frames += len(out) - first - (self._slow_messages - slow_before)
        return out

    def _check_header(self, b0: int, length: int) -> None:
        opcode = b0 & 0x0F
        rsv = b0 & _RSV_ALL
        if opcode >= OP_CLOSE:
            if opcode > OP_PONG:
                raise WebSocketProtocolError(CLOSE_PROTOCOL_ERROR, f"unknown opcode {opcode:#x}")
            if not b0 & _FIN:
                raise WebSocketProtocolError(
                    CLOSE_PROTOCOL_ERROR, f"fragmented control frame {opcode:#x}"
                )
            if length > MAX_CONTROL_PAYLOAD:
                raise WebSocketProtocolError(
                    CLOSE_PROTOCOL_ERROR, f"control frame {opcode:#x} of {length} bytes"
                )
            if rsv:
                raise WebSocketProtocolError(
                    CLOSE_PROTOCOL_ERROR, f"RSV bits {rsv >> 4:#05b} on a control frame"
                )
            return
        if opcode > OP_BINARY:
            raise WebSocketProtocolError(CLOSE_PROTOCOL_ERROR, f"unknown opcode {opcode:#x}")
        if rsv:
            if rsv != _RSV1 or self._deflate is None:
                raise WebSocketProtocolError(
                    CLOSE_PROTOCOL_ERROR, f"RSV bits {rsv >> 4:#05b} without a negotiated extension"
                )
            if opcode == OP_CONTINUATION:
                raise WebSocketProtocolError(CLOSE_PROTOCOL_ERROR, "RSV1 on a continuation frame")
        if opcode == OP_CONTINUATION:
            if not self._frag_opcode:
                raise WebSocketProtocolError(
                    CLOSE_PROTOCOL_ERROR, "continuation frame without a message to continue"
                )
            total = len(self._frag) + length
        else:
            if self._frag_opcode:
                raise WebSocketProtocolError(
                    CLOSE_PROTOCOL_ERROR, "new data frame inside a fragmented message"
                )
            total = length
        if total > self._max_message_size:
            raise WebSocketProtocolError(
                CLOSE_MESSAGE_TOO_BIG,
                f"message of {total}+ bytes exceeds {self._max_message_size}",
            )

    def _frame(self, b0: int, payload: memoryview, out: list[Message]) -> None:
        opcode = b0 & 0x0F
        self._slow_frames += 1
        if opcode >= OP_CLOSE:
            data = bytes(payload)
            if opcode == OP_CLOSE:
                self.close_code, self.close_reason = parse_close_payload(data)
                self._closed = True
            self.control_frames += 1
            self._slow_messages += 1
            out.append((opcode, data))
            return
        if opcode == OP_CONTINUATION:
            self._frag += payload
            if not b0 & _FIN:
                return
            opcode = self._frag_opcode
            compressed = self._frag_compressed
            message: bytes | memoryview = bytes(self._frag)
            self._frag = bytearray()
            self._frag_opcode = 0
        elif not b0 & _FIN:
            self._frag_opcode = opcode
            self._frag_compressed = bool(b0 & _RSV1)
            self._frag = bytearray(payload)
            return
        else:
            compressed = bool(b0 & _RSV1)
            message = payload
        if compressed:
            message = self._inflate(message)
        if opcode == OP_TEXT:
            try:
                _utf8_decode(message, "strict", True)
            except UnicodeDecodeError as exc:
                raise WebSocketProtocolError(
                    CLOSE_INVALID_PAYLOAD,
                    f"text message is not UTF-8: {exc.reason} at byte {exc.start}",
                ) from None
        self._slow_messages += 1
        out.append((opcode, message))

    def _inflate(self, data: bytes | memoryview) -> bytes:
        decompressor = self._decompressor
        if decompressor is None:
            decompressor = zlib.decompressobj(wbits=-zlib.MAX_WBITS)
        limit = self._max_message_size
        try:
            # The cap keeps a small compressed message from inflating without bound.
            result = decompressor.decompress(bytes(data) + _DEFLATE_TAIL, limit + 1)
        except zlib.error as exc:
            raise WebSocketProtocolError(
                CLOSE_INVALID_PAYLOAD, f"permessage-deflate data is corrupt: {exc}"
            ) from None
        if len(result) > limit or decompressor.unconsumed_tail:
            raise WebSocketProtocolError(
                CLOSE_MESSAGE_TOO_BIG, f"inflated message exceeds {limit} bytes"
            )
        assert self._deflate is not None
        self._decompressor = None if self._deflate.server_no_context_takeover else decompressor
        return result
