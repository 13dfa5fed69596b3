"""The sans-IO frame parser and builders, byte for byte.

Frames are built by an encoder written here from RFC 6455 5.2 and, as a second
reference, by the ``websockets`` package. Every reader case runs with the bytes fed
whole, one byte at a time, in random chunks and through ``recv_buffer``/``commit``.
"""

from __future__ import annotations

import random
import struct
import zlib
from collections.abc import Callable, Iterator

import pytest
from websockets.extensions.permessage_deflate import PerMessageDeflate
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from feedhandler.wsframe import (
    NEED_DATA,
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    DeflateParams,
    FrameBuildError,
    FrameParser,
    WebSocketProtocolError,
    build_close_payload,
    build_frame,
    deflate_offer,
    mask_payload,
    parse_close_payload,
    parse_deflate_response,
)

MiB = 1024 * 1024


def encode(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    rsv: int = 0,
    mask_key: bytes | None = None,
    length_override: bytes | None = None,
) -> bytes:
    """Independent RFC 6455 5.2 encoder (``length_override`` writes a raw length field)."""
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    mask_bit = 0x80 if mask_key is not None else 0
    if length_override is not None:
        head = bytes([first]) + length_override
    elif len(payload) <= 125:
        head = bytes([first, mask_bit | len(payload)])
    elif len(payload) <= 0xFFFF:
        head = bytes([first, mask_bit | 126]) + len(payload).to_bytes(2, "big")
    else:
        head = bytes([first, mask_bit | 127]) + len(payload).to_bytes(8, "big")
    if mask_key is None:
        return head + payload
    masked = bytes(b ^ mask_key[i % 4] for i, b in enumerate(payload))
    return head + mask_key + masked


def reference_encode(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    return Frame(Opcode(opcode), payload, fin=fin).serialize(mask=False)


ENCODERS: dict[str, Callable[..., bytes]] = {"rfc": encode, "websockets": reference_encode}


def chunkings(data: bytes, mode: str) -> Iterator[bytes]:
    if mode == "whole":
        yield data
    elif mode == "bytewise":
        for i in range(len(data)):
            yield data[i : i + 1]
    else:
        rng = random.Random(len(data))
        pos = 0
        while pos < len(data):
            step = rng.randint(1, 3000)
            yield data[pos : pos + step]
            pos += step


FEEDS = ["whole", "bytewise", "random", "recv_into"]


def run(data: bytes, mode: str, parser: FrameParser | None = None) -> list[tuple[int, bytes]]:
    """Feed ``data`` in the given way and collect every message (payloads copied)."""
    parser = parser or FrameParser(max_message_size=2 * MiB, buffer_size=4096)
    out: list[tuple[int, bytes]] = []

    def drain() -> None:
        while (message := parser.next_message()) is not NEED_DATA:
            assert isinstance(message, tuple)
            out.append((message[0], bytes(message[1])))

    if mode == "recv_into":
        rng = random.Random(7)
        pos = 0
        while pos < len(data):
            free = parser.recv_buffer()
            assert len(free) > 0
            step = min(len(free), rng.randint(1, 5000), len(data) - pos)
            free[:step] = data[pos : pos + step]
            parser.commit(step)
            pos += step
            drain()
    else:
        for chunk in chunkings(data, mode):
            parser.feed(chunk)
            drain()
    return out


def expect_error(data: bytes, mode: str, code: int, parser: FrameParser | None = None) -> str:
    with pytest.raises(WebSocketProtocolError) as info:
        run(data, mode, parser)
    assert info.value.code == code
    return info.value.reason


# ---- data frames ------------------------------------------------------------------------

SIZES = [0, 1, 125, 126, 65535, 65536, MiB]


# A 1 MiB frame fed byte by byte would take seconds; random 1..3000-byte chunks cover it.
LENGTH_CASES = [
    (size, mode) for size in SIZES for mode in FEEDS if not (mode == "bytewise" and size > 65536)
]


@pytest.mark.parametrize("encoder", sorted(ENCODERS))
@pytest.mark.parametrize(("size", "mode"), LENGTH_CASES)
def test_binary_frame_of_every_length_class(encoder: str, size: int, mode: str) -> None:
    payload = random.Random(size).randbytes(size)
    frame = ENCODERS[encoder](OP_BINARY, payload)
    assert run(frame, mode) == [(OP_BINARY, payload)]


@pytest.mark.parametrize("mode", FEEDS)
def test_text_frame_with_multibyte_utf8(mode: str) -> None:
    payload = '{"code":"KRW-BTC","note":"가격 ₩"}'.encode()
    assert run(encode(OP_TEXT, payload), mode) == [(OP_TEXT, payload)]


@pytest.mark.parametrize("mode", FEEDS)
def test_trailing_bytes_of_the_next_frame_stay_buffered(mode: str) -> None:
    first, second = b"A" * 300, b"B" * 70000
    data = encode(OP_BINARY, first) + encode(OP_BINARY, second)
    parser = FrameParser(buffer_size=4096)
    cut = len(encode(OP_BINARY, first)) + 5
    assert run(data[:cut], mode, parser) == [(OP_BINARY, first)]
    assert parser.buffered == 5
    assert run(data[cut:], mode, parser) == [(OP_BINARY, second)]
    assert parser.buffered == 0
    assert parser.frames_received == 2


def test_batch_returns_every_complete_message_of_one_read() -> None:
    payloads = [random.Random(i).randbytes(n) for i, n in enumerate([450, 900, 1500, 0, 126])]
    data = b"".join(encode(OP_BINARY, p) for p in payloads)
    parser = FrameParser()
    parser.feed(data + encode(OP_BINARY, b"x" * 50)[:3])
    batch = parser.messages()
    assert [(op, bytes(p)) for op, p in batch] == [(OP_BINARY, p) for p in payloads]
    assert parser.messages() == []
    assert parser.buffered == 3


@pytest.mark.parametrize("mode", FEEDS)
def test_fragmented_message_with_interleaved_control_frames(mode: str) -> None:
    text = "체결 ".encode() * 40
    parts = [text[:7], text[7:100], text[100:]]  # the first cut splits a character
    data = (
        encode(OP_TEXT, parts[0], fin=False)
        + encode(OP_PING, b"ping-1")
        + encode(OP_CONTINUATION, parts[1], fin=False)
        + encode(OP_PONG, b"pong-1")
        + encode(OP_CONTINUATION, parts[2], fin=True)
        + encode(OP_BINARY, b"after")
    )
    assert run(data, mode) == [
        (OP_PING, b"ping-1"),
        (OP_PONG, b"pong-1"),
        (OP_TEXT, text),
        (OP_BINARY, b"after"),
    ]


@pytest.mark.parametrize("mode", FEEDS)
def test_fragmented_binary_from_the_reference_encoder(mode: str) -> None:
    payload = random.Random(3).randbytes(100_000)
    data = (
        reference_encode(OP_BINARY, payload[:1], fin=False)
        + reference_encode(OP_CONTINUATION, payload[1:70_000], fin=False)
        + reference_encode(OP_PING, b"")
        + reference_encode(OP_CONTINUATION, b"", fin=False)
        + reference_encode(OP_CONTINUATION, payload[70_000:], fin=True)
    )
    assert run(data, mode) == [(OP_PING, b""), (OP_BINARY, payload)]


def test_fast_path_payload_is_a_view_and_frames_are_counted() -> None:
    parser = FrameParser()
    parser.feed(encode(OP_BINARY, b"abc") + encode(OP_PING, b"p") + encode(OP_BINARY, b"de"))
    batch = parser.messages()
    assert isinstance(batch[0][1], memoryview)
    assert [(op, bytes(p)) for op, p in batch] == [
        (OP_BINARY, b"abc"),
        (OP_PING, b"p"),
        (OP_BINARY, b"de"),
    ]
    assert parser.frames_received == 3
    assert parser.control_frames == 1


def test_messages_not_yet_handed_out_survive_buffer_compaction() -> None:
    parser = FrameParser(buffer_size=400)
    frames = [encode(OP_BINARY, bytes([i]) * 100) for i in range(3)]
    parser.feed(frames[0] + frames[1] + frames[2][:50])
    first = parser.next_message()
    assert isinstance(first, tuple) and bytes(first[1]) == b"\x00" * 100
    # Compaction moves the partial third frame over the bytes of the first two.
    parser.feed(frames[2][50:] + encode(OP_BINARY, b"z" * 200))
    rest = []
    while (message := parser.next_message()) is not NEED_DATA:
        assert isinstance(message, tuple)
        rest.append(bytes(message[1]))
    assert rest == [b"\x01" * 100, b"\x02" * 100, b"z" * 200]


def test_buffer_grows_for_a_big_frame_and_shrinks_back() -> None:
    parser = FrameParser(max_message_size=2 * MiB, buffer_size=4096)
    big = random.Random(1).randbytes(MiB)
    data = encode(OP_BINARY, big) + encode(OP_BINARY, b"small")
    assert run(data[: len(data) - 7], "recv_into", parser) == [(OP_BINARY, big)]
    assert parser.capacity > MiB
    assert parser.capacity <= 2 * MiB + 4096
    assert run(data[len(data) - 7 :], "recv_into", parser) == [(OP_BINARY, b"small")]
    parser.recv_buffer()
    assert parser.capacity == 4096


def test_recv_buffer_is_never_empty_even_with_unparsed_frames() -> None:
    parser = FrameParser(buffer_size=4096)
    frame = encode(OP_BINARY, b"q" * 1020)  # 1024 bytes: four fill the buffer exactly
    for _ in range(5):
        free = parser.recv_buffer()
        assert len(free) > 0
        free[: len(frame)] = frame
        parser.commit(len(frame))
    assert [bytes(p) for _, p in parser.messages()] == [b"q" * 1020] * 5


def test_commit_beyond_the_free_space_is_refused() -> None:
    parser = FrameParser(buffer_size=4096)
    free = len(parser.recv_buffer())
    with pytest.raises(ValueError, match="exceeds"):
        parser.commit(free + 1)


# ---- close frames ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", FEEDS)
def test_close_with_code_and_reason_ends_parsing(mode: str) -> None:
    payload = struct.pack("!H", 1001) + "서버 점검".encode()
    parser = FrameParser()
    data = encode(OP_BINARY, b"last") + encode(OP_CLOSE, payload) + encode(OP_BINARY, b"ignored")
    assert run(data, mode, parser) == [(OP_BINARY, b"last"), (OP_CLOSE, payload)]
    assert parser.closed
    assert (parser.close_code, parser.close_reason) == (1001, "서버 점검")


def test_empty_close_means_no_status() -> None:
    parser = FrameParser()
    assert run(encode(OP_CLOSE, b""), "whole", parser) == [(OP_CLOSE, b"")]
    assert parser.close_code == 1005


@pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, 1007, 1008, 1011, 1012, 1014, 3000, 4999])
def test_valid_close_codes(code: int) -> None:
    assert parse_close_payload(struct.pack("!H", code) + b"bye") == (code, "bye")


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535])
def test_invalid_close_codes(code: int) -> None:
    for mode in FEEDS:
        expect_error(encode(OP_CLOSE, struct.pack("!H", code)), mode, 1002)


def test_close_payload_builder_round_trip_and_truncation() -> None:
    assert parse_close_payload(build_close_payload(1000, "done")) == (1000, "done")
    long_reason = "가" * 60  # 180 bytes of UTF-8
    payload = build_close_payload(4000, long_reason)
    assert len(payload) <= 125
    code, reason = parse_close_payload(payload)
    assert code == 4000 and long_reason.startswith(reason) and len(reason) == 41
    for bad in (1005, 1006, 999):
        with pytest.raises(FrameBuildError):
            build_close_payload(bad)


# ---- protocol errors ---------------------------------------------------------------------

ERROR_CASES: dict[str, tuple[bytes, int]] = {
    "masked server frame": (encode(OP_BINARY, b"abc", mask_key=b"\x01\x02\x03\x04"), 1002),
    "rsv1 without extension": (encode(OP_BINARY, b"abc", rsv=4), 1002),
    "rsv2": (encode(OP_BINARY, b"abc", rsv=2), 1002),
    "rsv3": (encode(OP_TEXT, b"abc", rsv=1), 1002),
    "rsv on a ping": (encode(OP_PING, b"", rsv=4), 1002),
    **{f"opcode {op:#x}": (encode(op, b"x"), 1002) for op in (3, 4, 5, 6, 7, 11, 12, 13, 14, 15)},
    "ping of 126 bytes": (encode(OP_PING, b"p" * 126), 1002),
    "close of 126 bytes": (encode(OP_CLOSE, b"\x03\xe8" + b"r" * 124), 1002),
    "fragmented ping": (encode(OP_PING, b"p", fin=False), 1002),
    "fragmented close": (encode(OP_CLOSE, b"\x03\xe8", fin=False), 1002),
    "continuation without start": (encode(OP_CONTINUATION, b"x"), 1002),
    "new data frame inside a fragmented message": (
        encode(OP_TEXT, b"a", fin=False) + encode(OP_BINARY, b"b"),
        1002,
    ),
    "frame over max size": (encode(OP_BINARY, b"x" * 5000), 1009),
    "fragments over max size": (
        encode(OP_BINARY, b"x" * 3000, fin=False) + encode(OP_CONTINUATION, b"y" * 1500),
        1009,
    ),
    "invalid utf-8 text": (encode(OP_TEXT, b"ok \xff"), 1007),
    "truncated utf-8 at the end of a text message": (encode(OP_TEXT, "가".encode()[:2]), 1007),
    "invalid utf-8 across fragments": (
        encode(OP_TEXT, b"\xea\xb0", fin=False) + encode(OP_CONTINUATION, b"A"),
        1007,
    ),
    "close of 1 byte": (encode(OP_CLOSE, b"\x03"), 1002),
    "close reason not utf-8": (encode(OP_CLOSE, b"\x03\xe8\xc3\x28"), 1007),
    "64-bit length with the high bit set": (
        encode(OP_BINARY, b"", length_override=b"\x7f" + (1 << 63 | 5).to_bytes(8, "big")),
        1002,
    ),
    "16-bit length under 126": (
        encode(OP_BINARY, b"x" * 5, length_override=b"\x7e\x00\x05") + b"x" * 5,
        1002,
    ),
    "64-bit length under 65536": (
        encode(OP_BINARY, b"", length_override=b"\x7f" + (200).to_bytes(8, "big")) + b"x" * 200,
        1002,
    ),
    "huge announced length": (
        encode(OP_BINARY, b"", length_override=b"\x7f" + (1 << 40).to_bytes(8, "big")),
        1009,
    ),
}


@pytest.mark.parametrize("mode", FEEDS)
@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_protocol_errors_carry_their_close_code(case: str, mode: str) -> None:
    data, code = ERROR_CASES[case]
    expect_error(data, mode, code, FrameParser(max_message_size=4096, buffer_size=4096))


def test_messages_before_an_error_are_delivered_then_the_error_sticks() -> None:
    parser = FrameParser()
    parser.feed(encode(OP_BINARY, b"good") + encode(OP_BINARY, b"bad", rsv=2))
    batch = parser.messages()
    assert [(op, bytes(p)) for op, p in batch] == [(OP_BINARY, b"good")]
    assert parser.error is not None and parser.error.code == 1002
    for _ in range(2):
        with pytest.raises(WebSocketProtocolError):
            parser.messages()


def test_large_frame_is_refused_from_its_header_alone() -> None:
    parser = FrameParser(max_message_size=1000)
    parser.feed(encode(OP_BINARY, b"x" * 1001)[:4])
    with pytest.raises(WebSocketProtocolError) as info:
        parser.messages()
    assert info.value.code == 1009


# ---- permessage-deflate ----------------------------------------------------------------


def deflate_message(compressor: zlib._Compress, payload: bytes) -> bytes:
    data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert data.endswith(b"\x00\x00\xff\xff")
    return data[:-4]


@pytest.mark.parametrize("mode", FEEDS)
def test_inflates_with_context_takeover(mode: str) -> None:
    compressor = zlib.compressobj(wbits=-15)
    messages = [b'{"type":"trade","code":"KRW-BTC"}' * 20, b'{"type":"trade","code":"KRW-ETH"}' * 5]
    data = b"".join(encode(OP_BINARY, deflate_message(compressor, m), rsv=4) for m in messages)
    parser = FrameParser(deflate=DeflateParams())
    assert run(data, mode, parser) == [(OP_BINARY, m) for m in messages]


@pytest.mark.parametrize("mode", FEEDS)
def test_inflates_frames_of_the_reference_extension(mode: str) -> None:
    extension = PerMessageDeflate(False, True, 15, 15)  # the encoder resets per message
    payloads = [b'{"status":"UP"}', b'{"type":"ticker","trade_price":1.16539E8}']
    data = b"".join(
        Frame(Opcode.TEXT, p).serialize(mask=False, extensions=[extension]) for p in payloads
    )
    assert data[0] & 0x40
    parser = FrameParser(deflate=DeflateParams(server_no_context_takeover=True))
    assert run(data, mode, parser) == [(OP_TEXT, p) for p in payloads]


def test_inflates_a_fragmented_compressed_message_with_a_ping_inside() -> None:
    compressor = zlib.compressobj(wbits=-15)
    payload = b"orderbook " * 500
    body = deflate_message(compressor, payload)
    data = (
        encode(OP_BINARY, body[:10], fin=False, rsv=4)
        + encode(OP_PING, b"x")
        + encode(OP_CONTINUATION, body[10:])
    )
    for mode in FEEDS:
        parser = FrameParser(deflate=DeflateParams())
        assert run(data, mode, parser) == [(OP_PING, b"x"), (OP_BINARY, payload)]


def test_deflate_errors() -> None:
    params = DeflateParams()
    expect_error(
        encode(OP_BINARY, b"\xff\xff\xff", rsv=4), "whole", 1007, FrameParser(deflate=params)
    )
    bomb = deflate_message(zlib.compressobj(wbits=-15), b"\x00" * 100_000)
    expect_error(
        encode(OP_BINARY, bomb, rsv=4),
        "whole",
        1009,
        FrameParser(max_message_size=50_000, deflate=params),
    )
    expect_error(
        encode(OP_BINARY, b"a", fin=False, rsv=4) + encode(OP_CONTINUATION, b"b", rsv=4),
        "whole",
        1002,
        FrameParser(deflate=params),
    )


def test_deflate_negotiation() -> None:
    assert deflate_offer().startswith("permessage-deflate")
    assert parse_deflate_response("permessage-deflate") == DeflateParams(False)
    assert parse_deflate_response(
        "permessage-deflate; server_no_context_takeover; client_max_window_bits=15"
    ) == DeflateParams(True)
    assert (
        parse_deflate_response('permessage-deflate; server_max_window_bits="10"') == DeflateParams()
    )
    for bad in (
        "x-webkit-deflate-frame",
        "permessage-deflate, permessage-deflate",
        "permessage-deflate; server_max_window_bits=7",
        "permessage-deflate; server_max_window_bits=16",
        "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
        "permessage-deflate; server_no_context_takeover=1",
        "permessage-deflate; mystery",
    ):
        with pytest.raises(WebSocketProtocolError):
            parse_deflate_response(bad)


# ---- builders ------------------------------------------------------------------------------


def reference_parse(data: bytes) -> Frame:
    """Parse one client frame with the websockets package as the server would."""
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    parsing = Frame.parse(reader.read_exact, mask=True)
    with pytest.raises(StopIteration) as done:
        next(parsing)
    return done.value.value


@pytest.mark.parametrize("size", [0, 1, 3, 125, 126, 65535, 65536, 300_000])
def test_built_client_frames_parse_with_the_reference(size: int) -> None:
    payload = random.Random(size).randbytes(size)
    key = bytes([0x37, 0xFA, 0x21, 0x3D])
    frame = build_frame(OP_BINARY, payload, mask_key=key)
    assert frame == encode(OP_BINARY, payload, mask_key=key)
    parsed = reference_parse(frame)
    assert (parsed.opcode, parsed.data, parsed.fin) == (Opcode.BINARY, payload, True)


def test_built_control_and_fragment_frames() -> None:
    key = b"\x00\x01\x02\x03"
    close = reference_parse(build_frame(OP_CLOSE, build_close_payload(1000, "bye"), mask_key=key))
    assert (close.opcode, close.data) == (Opcode.CLOSE, b"\x03\xe8bye")
    part = reference_parse(build_frame(OP_TEXT, b"ab", mask_key=key, fin=False))
    assert (part.opcode, part.data, part.fin) == (Opcode.TEXT, b"ab", False)
    assert build_frame(OP_PONG, b"x", mask_key=None) == b"\x8a\x01x"


def test_builder_refuses_what_rfc_forbids() -> None:
    with pytest.raises(FrameBuildError):
        build_frame(OP_PING, b"x" * 126, mask_key=b"abcd")
    with pytest.raises(FrameBuildError):
        build_frame(OP_CLOSE, b"", mask_key=b"abcd", fin=False)
    with pytest.raises(FrameBuildError):
        build_frame(3, b"", mask_key=b"abcd")
    with pytest.raises(FrameBuildError):
        build_frame(OP_BINARY, b"", mask_key=b"abc")


def test_mask_is_its_own_inverse() -> None:
    payload = random.Random(5).randbytes(1001)
    key = b"\x9a\x00\xff\x10"
    masked = mask_payload(payload, key)
    assert masked != payload
    assert masked == bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    assert mask_payload(masked, key) == payload


def random_session(rng: random.Random) -> tuple[bytes, list[tuple[int, bytes]]]:
    """Random messages, randomly fragmented, with control frames between fragments."""
    wire: list[bytes] = []
    expect: list[tuple[int, bytes]] = []
    for _ in range(rng.randint(1, 40)):
        opcode = rng.choice((OP_TEXT, OP_BINARY))
        size = rng.choice((0, 1, 125, 126, rng.randint(0, 3000), rng.randint(60_000, 70_000)))
        payload = "가a".encode() * (size // 4) if opcode == OP_TEXT else rng.randbytes(size)
        cuts = sorted(rng.randint(0, len(payload)) for _ in range(rng.choice((0, 0, 1, 3))))
        pieces = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)], strict=True)]
        for index, piece in enumerate(pieces):
            last = index == len(pieces) - 1
            wire.append(encode(OP_CONTINUATION if index else opcode, piece, fin=last))
            if rng.random() < 0.3:
                control = rng.choice((OP_PING, OP_PONG))
                data = rng.randbytes(rng.randint(0, 125))
                wire.append(encode(control, data))
                if not last:
                    expect.append((control, data))
                else:
                    expect.extend([(opcode, payload), (control, data)])
                    break
        else:
            expect.append((opcode, payload))
    return b"".join(wire), expect


@pytest.mark.parametrize("seed", range(12))
def test_random_sessions_in_random_chunks(seed: int) -> None:
    rng = random.Random(seed)
    data, expect = random_session(rng)
    for mode in ("whole", "random", "recv_into"):
        assert run(data, mode) == expect
