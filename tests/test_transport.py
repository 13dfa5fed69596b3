"""WsTransport against real servers on 127.0.0.1.

Two kinds of server: the ``websockets`` asyncio server (a strict, independent RFC 6455
implementation: it refuses unmasked client frames) in a background thread, and a raw
``socket`` server that does the 101 handshake by hand, to control exactly which bytes
go out and when.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import queue
import random
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import websocket
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from feedhandler.transport import ConnectionClosed, WsConnectError, WsTransport
from feedhandler.wsframe import OP_BINARY, OP_TEXT, build_frame

TIMEOUT = 5.0
MiB = 1024 * 1024


# ---- servers -------------------------------------------------------------------------------


class WebsocketsServer:
    """A ``websockets`` server in its own event loop thread; ``events`` is what it saw."""

    def __init__(
        self,
        handler: Callable[[ServerConnection, queue.Queue[tuple[str, Any]]], Awaitable[None]],
        *,
        compression: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._handler = handler
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._server: Server = asyncio.run_coroutine_threadsafe(
            self._start(compression, ssl_context), self._loop
        ).result(TIMEOUT)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _start(self, compression: str | None, ssl_context: ssl.SSLContext | None) -> Server:
        async def handle(ws: ServerConnection) -> None:
            self.events.put(("headers", dict(ws.request.headers.raw_items())))
            await self._handler(ws, self.events)

        return await serve(
            handle,
            "127.0.0.1",
            0,
            compression=compression,
            ping_interval=None,
            max_size=None,
            close_timeout=TIMEOUT,
            ssl=ssl_context,
        )

    def url(self, path: str = "/", scheme: str = "ws") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def event(self, name: str) -> Any:
        while True:
            key, value = self.events.get(timeout=TIMEOUT)
            if key == name:
                return value

    def stop(self) -> None:
        async def shutdown() -> None:
            self._server.close()
            await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(TIMEOUT)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(TIMEOUT)
        self._loop.close()


@pytest.fixture
def ws_server() -> Iterator[Callable[..., WebsocketsServer]]:
    started: list[WebsocketsServer] = []

    def start(handler: Any, **kwargs: Any) -> WebsocketsServer:
        server = WebsocketsServer(handler, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def upgrade_response(request: bytes) -> bytes:
    key = next(
        line.split(b":", 1)[1].strip()
        for line in request.split(b"\r\n")
        if line.lower().startswith(b"sec-websocket-key:")
    )
    accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
    )


def read_until_eof(conn: socket.socket) -> bytes:
    chunks = []
    while chunk := conn.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def parse_client_frames(data: bytes) -> list[Frame]:
    """Client frames as the reference implementation parses them (masking enforced)."""
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    frames = []
    while reader.buffer:
        parsing = Frame.parse(reader.read_exact, mask=True)
        with pytest.raises(StopIteration) as done:
            next(parsing)
        frames.append(done.value.value)
    return frames


class RawServer:
    """One-connection server: reads the upgrade request, then runs ``script``."""

    def __init__(self, script: Callable[[socket.socket, bytes], Any]) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(TIMEOUT)
        self.port = self._listener.getsockname()[1]
        self._script = script
        self.results: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self._listener.accept()
            with conn:
                conn.settimeout(TIMEOUT)
                request = b""
                while not request.endswith(b"\r\n\r\n"):
                    request += conn.recv(1)
                self.results.put(("ok", self._script(conn, request)))
        except Exception as exc:  # noqa: BLE001 - handed to the test thread, which re-raises
            self.results.put(("error", exc))

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/websocket/v1"

    def result(self) -> Any:
        status, value = self.results.get(timeout=TIMEOUT)
        self._thread.join(TIMEOUT)
        self._listener.close()
        if status == "error":
            raise value
        return value


def receive_until_closed(
    transport: WsTransport,
) -> tuple[list[tuple[int, bytes]], ConnectionClosed]:
    received: list[tuple[int, bytes]] = []
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        try:
            batch = transport.recv_messages(0.5)
        except ConnectionClosed as closed:
            return received, closed
        received.extend((op, bytes(payload)) for op, payload in batch)
    raise AssertionError("the connection did not close")


def receive_count(transport: WsTransport, count: int) -> list[tuple[int, bytes]]:
    received: list[tuple[int, bytes]] = []
    deadline = time.monotonic() + TIMEOUT
    while len(received) < count and time.monotonic() < deadline:
        received.extend((op, bytes(p)) for op, p in transport.recv_messages(0.5))
    return received


# ---- against the websockets server ---------------------------------------------------------

PAYLOADS: list[bytes | str] = [
    *(random.Random(n).randbytes(n) for n in (0, 1, 125, 126, 65535, 65536, MiB)),
    '{"type":"trade","code":"KRW-BTC","trade_price":1.16539E8,"sequential_id":17303368620800006}',
]


async def stream_then_close(ws: ServerConnection, events: queue.Queue[tuple[str, Any]]) -> None:
    for payload in PAYLOADS[:4]:
        await ws.send(payload)
    pong = await ws.ping(b"server-ping")
    await ws.send([b"frag", b"men", b"ted"])
    for payload in PAYLOADS[4:]:
        await ws.send(payload)
    await ws.send(["체결", " 가격"])
    await asyncio.wait_for(pong, TIMEOUT)
    events.put(("pong", True))
    await ws.close(1000, "done")
    events.put(("client_close_code", ws.close_code))


def expected(payload: bytes | str) -> tuple[int, bytes]:
    return (OP_TEXT, payload.encode()) if isinstance(payload, str) else (OP_BINARY, payload)


def test_receives_every_byte_answers_pings_and_the_close(ws_server: Any) -> None:
    server = ws_server(stream_then_close)
    transport = WsTransport.connect(server.url("/websocket/v1"), timeout=TIMEOUT)
    received, closed = receive_until_closed(transport)
    want = [expected(p) for p in PAYLOADS[:4]]
    want += [(OP_BINARY, b"fragmented")]
    want += [expected(p) for p in PAYLOADS[4:]]
    want += [(OP_TEXT, "체결 가격".encode())]
    assert received == want
    assert (closed.code, closed.reason) == (1000, "done")
    assert server.event("pong") is True
    assert server.event("client_close_code") == 1000
    assert transport.stats.pings_received == 1
    assert transport.stats.messages_received == len(want)
    assert transport.stats.protocol_errors == 0
    assert transport.stats.bytes_received > sum(len(p) for _, p in want)
    # websockets ends a fragmented send with an empty final frame: 4 + 3 frames, then
    # the ping and the close.
    assert transport.frames_received == len(want) + 3 + 2 + 2
    with pytest.raises(ConnectionClosed):
        transport.recv_messages(0.1)


async def idle(ws: ServerConnection, events: queue.Queue[tuple[str, Any]]) -> None:
    await ws.wait_closed()
    events.put(("client_close_code", ws.close_code))
    events.put(("client_close_reason", ws.close_reason))


def test_no_origin_header_but_the_given_headers(ws_server: Any) -> None:
    server = ws_server(idle)
    transport = WsTransport.connect(
        server.url(), headers={"Authorization": "Bearer test-token"}, timeout=TIMEOUT
    )
    headers = {k.lower(): v for k, v in server.event("headers").items()}
    assert "origin" not in headers
    assert headers["authorization"] == "Bearer test-token"
    assert "sec-websocket-extensions" not in headers
    assert transport.close(timeout=TIMEOUT) == 1000
    # websocket-client on its own does send an Origin: the check above can fail.
    plain = websocket.create_connection(server.url(), timeout=TIMEOUT)
    assert "origin" in {k.lower() for k in server.event("headers")}
    plain.close()


def test_timeout_returns_an_empty_batch(ws_server: Any) -> None:
    server = ws_server(idle)
    transport = WsTransport.connect(server.url(), timeout=TIMEOUT)
    started = time.monotonic()
    assert transport.recv_messages(0.2) == []
    assert transport.recv_messages(0.0) == []
    assert time.monotonic() - started < TIMEOUT
    assert transport.close(1001, "going away", timeout=TIMEOUT) == 1001
    assert server.event("client_close_code") == 1001
    assert server.event("client_close_reason") == "going away"
    assert transport.closed


async def echo(ws: ServerConnection, events: queue.Queue[tuple[str, Any]]) -> None:
    async for message in ws:
        await ws.send(message)
    events.put(("client_close_code", ws.close_code))


def test_sends_arrive_masked_and_correct(ws_server: Any) -> None:
    server = ws_server(echo)
    ticks = iter(range(1_000_000, 10_000_000, 1000))
    transport = WsTransport.connect(server.url(), timeout=TIMEOUT, clock=lambda: next(ticks))
    big = random.Random(2).randbytes(70_000)
    transport.send_text('[{"ticket":"t"},{"type":"trade","codes":["KRW-BTC"]},{"format":"가"}]')
    transport.send_binary(big)
    transport.send_binary(b"")
    transport.ping(b"are-you-there")
    received = receive_count(transport, 3)
    assert received == [
        (OP_TEXT, '[{"ticket":"t"},{"type":"trade","codes":["KRW-BTC"]},{"format":"가"}]'.encode()),
        (OP_BINARY, big),
        (OP_BINARY, b""),
    ]
    deadline = time.monotonic() + TIMEOUT
    while transport.stats.pongs_received == 0 and time.monotonic() < deadline:
        transport.recv_messages(0.2)
    assert transport.last_pong_payload == b"are-you-there"
    assert transport.last_pong_ns > transport.last_ping_ns > 0
    assert transport.close(timeout=TIMEOUT) == 1000
    assert server.event("client_close_code") == 1000
    with pytest.raises(ConnectionClosed):
        transport.send_text("after close")


def test_concurrent_senders_do_not_interleave_frames(ws_server: Any) -> None:
    server = ws_server(echo)
    transport = WsTransport.connect(server.url(), timeout=TIMEOUT)
    per_thread = 100

    def sender(tag: int) -> None:
        for i in range(per_thread):
            transport.send_binary(bytes([tag]) + i.to_bytes(2, "big") + bytes([tag]) * 20_000)

    threads = [threading.Thread(target=sender, args=(tag,)) for tag in (1, 2)]
    for thread in threads:
        thread.start()
    received = receive_count(transport, 2 * per_thread)
    for thread in threads:
        thread.join(TIMEOUT)
    assert len(received) == 2 * per_thread
    for tag in (1, 2):
        mine = [p for _, p in received if p[0] == tag]
        assert [int.from_bytes(p[1:3], "big") for p in mine] == list(range(per_thread))
        assert all(p[3:] == bytes([tag]) * 20_000 for p in mine)
    assert transport.close(timeout=TIMEOUT) == 1000


async def stream_json(ws: ServerConnection, events: queue.Queue[tuple[str, Any]]) -> None:
    events.put(("extensions", [type(e).__name__ for e in ws.protocol.extensions]))
    for i in range(50):
        await ws.send(f'{{"type":"orderbook","code":"KRW-BTC","n":{i},"pad":"{"0" * 3000}"}}')
    await ws.close()


@pytest.mark.parametrize("compression", [True, False])
def test_permessage_deflate_is_negotiated_and_inflated(ws_server: Any, compression: bool) -> None:
    server = ws_server(stream_json, compression="deflate")
    transport = WsTransport.connect(server.url(), timeout=TIMEOUT, compression=compression)
    assert transport.deflate is compression
    received, closed = receive_until_closed(transport)
    assert closed.code == 1000
    assert [p for _, p in received] == [
        f'{{"type":"orderbook","code":"KRW-BTC","n":{i},"pad":"{"0" * 3000}"}}'.encode()
        for i in range(50)
    ]
    extensions = server.event("extensions")
    assert extensions == (["PerMessageDeflate"] if compression else [])
    if compression:
        # Compressed on the wire: far fewer bytes than the 150 kB of JSON.
        assert transport.stats.bytes_received < 20_000


def make_certificate(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )  # fmt: skip
    return cert, key


async def burst(ws: ServerConnection, events: queue.Queue[tuple[str, Any]]) -> None:
    for i in range(300):
        await ws.send(bytes([i % 256]) * (450 + (i % 3) * 500))
    await ws.close(1000, "burst done")


def test_wss_reads_through_tls(ws_server: Any, tmp_path: Path) -> None:
    cert, key = make_certificate(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = ws_server(burst, ssl_context=context)
    transport = WsTransport.connect(
        server.url(scheme="wss"), timeout=TIMEOUT, sslopt={"ca_certs": str(cert)}
    )
    received, closed = receive_until_closed(transport)
    assert [p for _, p in received] == [
        bytes([i % 256]) * (450 + (i % 3) * 500) for i in range(300)
    ]
    assert (closed.code, closed.reason) == (1000, "burst done")


def test_connect_failures_are_typed() -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    with pytest.raises(WsConnectError):
        WsTransport.connect(f"ws://127.0.0.1:{port}/", timeout=TIMEOUT)

    def refuse(conn: socket.socket, request: bytes) -> None:
        conn.sendall(b"HTTP/1.1 429 Too Many Requests\r\nContent-Length: 0\r\n\r\n")

    server = RawServer(refuse)
    with pytest.raises(WsConnectError, match="HTTP 429") as info:
        WsTransport.connect(server.url, headers={"Authorization": "Bearer s3cr3t"}, timeout=TIMEOUT)
    assert "s3cr3t" not in str(info.value)
    assert info.value.status == 429
    assert isinstance(info.value, OSError)  # a connection failure like any other
    server.result()


# ---- against the raw server ----------------------------------------------------------------


def test_frame_in_the_same_segment_as_the_101_response() -> None:
    first = b'{"type":"ticker","code":"KRW-BTC"}'

    def script(conn: socket.socket, request: bytes) -> bytes:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.sendall(
            upgrade_response(request)
            + build_frame(OP_BINARY, first, mask_key=None)
            + build_frame(0x9, b"hb", mask_key=None)
        )
        return request

    server = RawServer(script)
    transport = WsTransport.connect(server.url, timeout=TIMEOUT)
    assert receive_count(transport, 1) == [(OP_BINARY, first)]
    request = server.result()
    assert b"origin" not in request.lower()
    assert transport.stats.pings_received == 1
    # The server has hung up without a close frame: no close code comes back.
    assert transport.close(timeout=TIMEOUT) is None
    assert transport.closed


def test_busy_poll_reads_what_arrives_while_spinning_and_while_blocked() -> None:
    release = threading.Event()

    def script(conn: socket.socket, request: bytes) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.sendall(upgrade_response(request))
        time.sleep(0.05)
        conn.sendall(build_frame(OP_BINARY, b"during the spin", mask_key=None))
        assert release.wait(TIMEOUT)
        time.sleep(0.15)
        conn.sendall(build_frame(OP_BINARY, b"after the spin", mask_key=None))
        read_until_eof(conn)

    server = RawServer(script)
    transport = WsTransport.connect(server.url, timeout=TIMEOUT)
    started = time.monotonic()
    assert transport.recv_messages(TIMEOUT, spin=TIMEOUT) == [(OP_BINARY, b"during the spin")]
    # Woken by the data, not by the end of the spin.
    assert time.monotonic() - started < TIMEOUT / 2
    release.set()
    # A 10 ms spin finds nothing; the blocking wait that follows gets the frame.
    assert [(op, bytes(p)) for op, p in transport.recv_messages(TIMEOUT, spin=0.01)] == [
        (OP_BINARY, b"after the spin")
    ]
    started = time.monotonic()
    # The spin never outlasts the timeout.
    assert transport.recv_messages(0.05, spin=TIMEOUT) == []
    assert time.monotonic() - started < TIMEOUT / 2
    # Spinning is on the CPU, blocking is not.
    cpu = time.thread_time()
    assert transport.recv_messages(0.3, spin=0.3) == []
    spun = time.thread_time() - cpu
    cpu = time.thread_time()
    assert transport.recv_messages(0.3) == []
    blocked = time.thread_time() - cpu
    assert spun > 0.03 > blocked, (spun, blocked)
    transport.close(timeout=0.5)
    server.result()


def test_eof_without_close_frame_is_1006() -> None:
    def script(conn: socket.socket, request: bytes) -> None:
        conn.sendall(upgrade_response(request) + build_frame(OP_BINARY, b"x", mask_key=None))

    server = RawServer(script)
    transport = WsTransport.connect(server.url, timeout=TIMEOUT)
    received, closed = receive_until_closed(transport)
    server.result()
    assert received == [(OP_BINARY, b"x")]
    assert closed.code == 1006
    assert "incomplete" not in closed.reason


def test_eof_inside_a_frame_is_1006_and_says_so() -> None:
    def script(conn: socket.socket, request: bytes) -> None:
        conn.sendall(
            upgrade_response(request) + build_frame(OP_BINARY, b"y" * 500, mask_key=None)[:100]
        )

    server = RawServer(script)
    transport = WsTransport.connect(server.url, timeout=TIMEOUT)
    received, closed = receive_until_closed(transport)
    server.result()
    assert received == []
    assert closed.code == 1006
    assert "100 bytes of an incomplete frame" in closed.reason


def test_protocol_error_fails_the_connection_with_its_code() -> None:
    def script(conn: socket.socket, request: bytes) -> list[Frame]:
        conn.sendall(
            upgrade_response(request)
            + build_frame(OP_BINARY, b"good", mask_key=None)
            + build_frame(OP_BINARY, b"masked", mask_key=b"abcd")
        )
        return parse_client_frames(read_until_eof(conn))

    server = RawServer(script)
    transport = WsTransport.connect(server.url, timeout=TIMEOUT)
    received, closed = receive_until_closed(transport)
    assert received == [(OP_BINARY, b"good")]
    assert closed.code == 1002
    assert "masked" in closed.reason
    assert transport.stats.protocol_errors == 1
    (close_frame,) = server.result()
    assert close_frame.opcode == Opcode.CLOSE
    assert int.from_bytes(close_frame.data[:2], "big") == 1002


def test_empty_server_close_is_1005_and_answered_empty() -> None:
    def script(conn: socket.socket, request: bytes) -> list[Frame]:
        conn.sendall(upgrade_response(request) + build_frame(0x8, b"", mask_key=None))
        return parse_client_frames(read_until_eof(conn))

    server = RawServer(script)
    transport = WsTransport.connect(server.url, timeout=TIMEOUT)
    _, closed = receive_until_closed(transport)
    assert closed.code == 1005
    (reply,) = server.result()
    assert (reply.opcode, reply.data) == (Opcode.CLOSE, b"")


def test_messages_before_a_close_in_the_same_read_are_delivered() -> None:
    def script(conn: socket.socket, request: bytes) -> list[Frame]:
        conn.sendall(
            upgrade_response(request)
            + b"".join(build_frame(OP_BINARY, bytes([i]) * 10, mask_key=None) for i in range(5))
            + build_frame(0x8, b"\x0f\xa0maintenance", mask_key=None)
        )
        return parse_client_frames(read_until_eof(conn))

    server = RawServer(script)
    transport = WsTransport.connect(server.url, timeout=TIMEOUT)
    received, closed = receive_until_closed(transport)
    assert received == [(OP_BINARY, bytes([i]) * 10) for i in range(5)]
    assert (closed.code, closed.reason) == (4000, "maintenance")
    (reply,) = server.result()
    assert (reply.opcode, reply.data[:2]) == (Opcode.CLOSE, b"\x0f\xa0")


def test_close_without_an_answer_returns_none() -> None:
    def script(conn: socket.socket, request: bytes) -> list[Frame]:
        conn.sendall(upgrade_response(request))
        return parse_client_frames(read_until_eof(conn))

    server = RawServer(script)
    transport = WsTransport.connect(server.url, timeout=TIMEOUT)
    assert transport.close(1000, "bye", timeout=0.3) is None
    (sent,) = server.result()
    assert (sent.opcode, sent.data) == (Opcode.CLOSE, b"\x03\xe8bye")


def test_declined_compression_reads_plain_frames(ws_server: Any) -> None:
    server = ws_server(stream_json, compression=None)
    transport = WsTransport.connect(server.url(), timeout=TIMEOUT, compression=True)
    headers = {k.lower(): v for k, v in server.event("headers").items()}
    assert headers["sec-websocket-extensions"].startswith("permessage-deflate")
    assert transport.deflate is False
    received, closed = receive_until_closed(transport)
    assert len(received) == 50 and closed.code == 1000


def test_unoffered_extension_in_the_response_is_refused() -> None:
    def script(conn: socket.socket, request: bytes) -> bytes:
        response = upgrade_response(request)
        conn.sendall(response[:-2] + b"Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n")
        return read_until_eof(conn)

    server = RawServer(script)
    with pytest.raises(WsConnectError, match="unoffered extension"):
        WsTransport.connect(server.url, timeout=TIMEOUT)
    assert server.result() == b""


def test_invalid_close_code_from_the_server_is_a_protocol_error() -> None:
    def script(conn: socket.socket, request: bytes) -> list[Frame]:
        conn.sendall(upgrade_response(request) + build_frame(0x8, b"\x03\xee", mask_key=None))
        return parse_client_frames(read_until_eof(conn))

    server = RawServer(script)
    transport = WsTransport.connect(server.url, timeout=TIMEOUT)
    _, closed = receive_until_closed(transport)
    assert closed.code == 1002 and "1006" in closed.reason
    (reply,) = server.result()
    assert int.from_bytes(reply.data[:2], "big") == 1002


def test_send_after_the_peer_vanished_raises_connection_closed() -> None:
    def script(conn: socket.socket, request: bytes) -> None:
        conn.sendall(upgrade_response(request))
        # An abortive close: the next client send meets a reset.
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    server = RawServer(script)
    transport = WsTransport.connect(server.url, timeout=TIMEOUT)
    server.result()
    with pytest.raises(ConnectionClosed) as info:
        for _ in range(100):
            transport.send_binary(b"x" * 10_000)
            time.sleep(0.01)
    assert info.value.code == 1006
    assert transport.closed
    with pytest.raises(ConnectionClosed):
        transport.recv_messages(0.1)


def test_receive_benchmark_runs_and_checks_every_byte() -> None:
    """The bench itself verifies the byte count of every run; here it only has to finish."""
    result = subprocess.run(
        [sys.executable, "-m", "bench.wsrecv", "--frames", "300", "--runs", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    report = json.loads(result.stdout)
    assert report["frames"] == 300
    assert report["websocket_client"]["frames_per_s"] > 0
    assert report["wstransport"]["frames_per_s"] > 0


def test_pong_overdue_counts_from_the_oldest_unanswered_ping() -> None:
    def script(conn: socket.socket, request: bytes) -> list[Frame]:
        conn.sendall(upgrade_response(request))
        # Three masked pings with a 1-byte payload are 3 x 7 bytes; answer only the third.
        received = b""
        while len(received) < 21:
            received += conn.recv(21 - len(received))
        third = parse_client_frames(received)[2]
        conn.sendall(build_frame(0xA, third.data, mask_key=None))
        return parse_client_frames(received + read_until_eof(conn))

    now = [0]
    server = RawServer(script)
    transport = WsTransport.connect(server.url, timeout=TIMEOUT, clock=lambda: now[0])
    assert not transport.pong_overdue(3.0)
    transport.ping(b"1")
    now[0] = 2_000_000_000
    transport.ping(b"2")
    now[0] = 3_000_000_000
    assert transport.pong_overdue(3.0)  # three seconds since the first, unanswered ping
    assert not transport.pong_overdue(3.5)
    transport.ping(b"3")
    deadline = time.monotonic() + TIMEOUT
    while transport.stats.pongs_received == 0 and time.monotonic() < deadline:
        transport.recv_messages(0.2)
    assert transport.last_pong_payload == b"3"
    assert not transport.pong_overdue(0.0)
    transport.close(timeout=0.2)
    sent = server.result()
    assert [(f.opcode, f.data) for f in sent[:3]] == [
        (Opcode.PING, b"1"),
        (Opcode.PING, b"2"),
        (Opcode.PING, b"3"),
    ]
