"""Blocking WebSocket client transport: websocket-client handshakes, our parser reads.

websocket-client does what it is good at (URL handling, TLS, proxies, the HTTP upgrade
without an Origin header); it reads the handshake response one byte at a time, so no
frame bytes stay behind in it. From then on this module reads server frames straight
from the connected socket with ``recv_into`` into :class:`~feedhandler.wsframe.FrameParser`'s
buffer, which costs a fraction of websocket-client's per-frame ``recv`` (see PERF.md).

One thread receives (:meth:`WsTransport.recv_messages` in a loop); any thread may send
(sends are serialised by a lock). Pings are answered, a server close is answered and
raised as :class:`ConnectionClosed`. Keepalive is :meth:`WsTransport.ping` plus
:meth:`WsTransport.pong_overdue`. permessage-deflate (RFC 7692) is offered on request
and inflated by the parser; this side always sends uncompressed frames.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import websocket

from feedhandler.wsframe import (
    CLOSE_ABNORMAL,
    CLOSE_NO_STATUS,
    CLOSE_NORMAL,
    CLOSE_PROTOCOL_ERROR,
    DEFAULT_BUFFER_SIZE,
    DEFAULT_MAX_MESSAGE_SIZE,
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    DeflateParams,
    FrameParser,
    Message,
    WebSocketProtocolError,
    build_close_payload,
    build_frame,
    deflate_offer,
    parse_deflate_response,
)

log = logging.getLogger(__name__)

_POLL_EVENTS = select.POLLIN | select.POLLPRI | select.POLLERR | select.POLLHUP


class ConnectionClosed(Exception):
    """The WebSocket connection is over; ``code`` is the close code (1006: no close frame)."""

    def __init__(self, code: int, reason: str) -> None:
        text = f"websocket closed {code}"
        super().__init__(f"{text}: {reason}" if reason else text)
        self.code = code
        self.reason = reason


class WsConnectError(ConnectionError):
    """The TCP/TLS connection or the WebSocket handshake failed.

    ``status`` is the HTTP status when the server answered the upgrade with something
    other than 101 (401/403: credentials rejected, 429: too many connections).
    """

    def __init__(self, url: str, detail: str, status: int | None = None) -> None:
        super().__init__(f"websocket connect to {url} failed: {detail}")
        self.url = url
        self.detail = detail
        self.status = status


@dataclass(slots=True)
class TransportStats:
    """Counters of one connection (read by health/metrics)."""

    bytes_received: int = 0
    messages_received: int = 0
    pings_received: int = 0
    pongs_received: int = 0
    protocol_errors: int = 0
    frames_sent: int = 0


class WsTransport:
    """A connected WebSocket; build it with :meth:`connect`."""

    def __init__(
        self,
        ws: websocket.WebSocket,
        parser: FrameParser,
        *,
        timeout: float,
        clock: Callable[[], int] = time.monotonic_ns,
        mask_key_source: Callable[[int], bytes] = os.urandom,
    ) -> None:
        sock = ws.sock
        if sock is None:
            raise ValueError("the websocket-client connection is not open")
        # Kept so the socket's owner object lives as long as the transport.
        self._ws = ws
        self._sock: socket.socket = sock
        self._is_tls = isinstance(sock, ssl.SSLSocket)
        self._parser = parser
        self._clock = clock
        self._mask_key_source = mask_key_source
        self._send_lock = threading.Lock()
        self._poller = select.poll()
        self._poller.register(sock.fileno(), _POLL_EVENTS)
        self._closed: ConnectionClosed | None = None
        self._close_sent = False
        self._socket_closed = False
        self._controls_seen = parser.control_frames
        self.stats = TransportStats()
        self.last_recv_ns = clock()
        self.last_ping_ns = 0
        self.last_pong_ns = 0
        self._unanswered_ping_ns: int | None = None
        self.last_pong_payload = b""
        sock.settimeout(timeout)

    @classmethod
    def connect(
        cls,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        timeout: float,
        compression: bool = False,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        sslopt: dict[str, Any] | None = None,
        http_proxy_host: str | None = None,
        http_proxy_port: int | None = None,
        clock: Callable[[], int] = time.monotonic_ns,
        mask_key_source: Callable[[int], bytes] = os.urandom,
    ) -> WsTransport:
        """Open ``url`` (``ws://`` or ``wss://``) and complete the handshake.

        ``timeout`` bounds the connect, the handshake and every later send. With
        ``compression`` permessage-deflate is offered; messages the server compresses
        are inflated, and a server that declines gets plain frames as usual.
        Raises :class:`WsConnectError`; its text never contains the request headers.
        """
        request_headers = dict(headers or {})
        if compression:
            request_headers["Sec-WebSocket-Extensions"] = deflate_offer()
        ws = websocket.WebSocket(sslopt=sslopt, skip_utf8_validation=True)
        options: dict[str, Any] = {}
        if http_proxy_host is not None:
            options["http_proxy_host"] = http_proxy_host
            options["http_proxy_port"] = http_proxy_port
        try:
            ws.connect(
                url, header=request_headers, timeout=timeout, suppress_origin=True, **options
            )
        except websocket.WebSocketBadStatusException as exc:
            ws.shutdown()
            raise WsConnectError(
                url, f"handshake answered with HTTP {exc.status_code}", exc.status_code
            ) from None
        except (websocket.WebSocketException, OSError) as exc:
            ws.shutdown()
            raise WsConnectError(url, f"{type(exc).__name__}: {exc}") from None
        accepted = (ws.getheaders() or {}).get("sec-websocket-extensions")
        deflate: DeflateParams | None = None
        if accepted:
            try:
                if not compression:
                    raise WebSocketProtocolError(
                        CLOSE_PROTOCOL_ERROR, f"server accepted an unoffered extension {accepted!r}"
                    )
                deflate = parse_deflate_response(accepted)
            except WebSocketProtocolError as exc:
                ws.shutdown()
                raise WsConnectError(url, exc.reason) from None
        parser = FrameParser(
            max_message_size=max_message_size, buffer_size=buffer_size, deflate=deflate
        )
        return cls(ws, parser, timeout=timeout, clock=clock, mask_key_source=mask_key_source)

    # ---- state ------------------------------------------------------------------------

    @property
    def deflate(self) -> bool:
        """True when permessage-deflate was negotiated."""
        return self._parser.deflate is not None

    @property
    def frames_received(self) -> int:
        """Frames read so far, control and continuation frames included."""
        return self._parser.frames_received

    @property
    def closed(self) -> bool:
        """True once the connection is over (closed, failed or lost)."""
        return self._closed is not None

    def fileno(self) -> int:
        """The socket's descriptor, for a selector that watches several connections."""
        return self._sock.fileno()

    # ---- receiving --------------------------------------------------------------------

    def recv_messages(self, timeout: float, spin: float = 0.0) -> list[Message]:
        """Data messages completed by one read, waiting at most ``timeout`` seconds.

        With ``spin`` > 0 the thread first polls the socket without sleeping for up to
        ``spin`` seconds, and only then blocks for the rest of ``timeout``: data that
        arrives meanwhile is read without the scheduler's wake-up (tens of microseconds
        on a VM), at the price of a busy core while it spins.

        Returns ``[]`` on timeout. memoryview payloads are valid until the next call.
        Raises :class:`ConnectionClosed` after the server's close frame (messages that
        came before it are returned first), on EOF (1006) and after a protocol error
        (whose code it carries).
        """
        if self._closed is not None:
            raise self._closed
        sock = self._sock
        if not (self._is_tls and sock.pending()) and not self._readable(timeout, spin):
            return []
        parser = self._parser
        try:
            received = sock.recv_into(parser.recv_buffer())
        except (TimeoutError, ssl.SSLWantReadError):
            # Readable but only part of a TLS record arrived within the socket timeout.
            return []
        except OSError as exc:
            raise self._abort(CLOSE_ABNORMAL, f"receive failed: {exc}") from None
        if received == 0:
            pending = parser.buffered
            detail = f" with {pending} bytes of an incomplete frame" if pending else ""
            raise self._abort(CLOSE_ABNORMAL, f"EOF without a close frame{detail}")
        parser.commit(received)
        self.stats.bytes_received += received
        self.last_recv_ns = self._clock()
        try:
            batch = parser.messages()
        except WebSocketProtocolError as exc:
            raise self._fail(exc) from exc
        if parser.control_frames != self._controls_seen:
            self._controls_seen = parser.control_frames
            batch = self._handle_controls(batch)
        if parser.error is not None:
            # Messages before the bad frame are delivered; the next call raises.
            self._fail(parser.error)
        self.stats.messages_received += len(batch)
        if not batch and self._closed is not None:
            raise self._closed
        return batch

    def _readable(self, timeout: float, spin: float) -> bool:
        poll = self._poller.poll
        if spin > 0.0:
            spin = min(spin, max(timeout, 0.0))
            deadline = time.perf_counter() + spin
            # poll(0) releases the GIL on every turn, and sched_yield hands the core to
            # any thread waiting for it (ZeroMQ's I/O thread, which never preempts).
            while not poll(0):
                if time.perf_counter() >= deadline:
                    return bool(poll(max(timeout - spin, 0.0) * 1000.0))
                os.sched_yield()
            return True
        return bool(poll(max(timeout, 0.0) * 1000.0))

    def _handle_controls(self, batch: list[Message]) -> list[Message]:
        data: list[Message] = []
        for message in batch:
            opcode = message[0]
            if opcode in (OP_BINARY, OP_TEXT):
                data.append(message)
            elif opcode == OP_PING:
                self.stats.pings_received += 1
                # A failed pong marks the connection closed; this batch is still returned.
                if not self._close_sent:
                    with contextlib.suppress(ConnectionClosed):
                        self._send_frame(OP_PONG, bytes(message[1]))
            elif opcode == OP_PONG:
                self.stats.pongs_received += 1
                self.last_pong_ns = self._clock()
                self._unanswered_ping_ns = None
                self.last_pong_payload = bytes(message[1])
            elif opcode == OP_CLOSE:
                self._on_server_close()
        return data

    def _on_server_close(self) -> None:
        parser = self._parser
        code = parser.close_code if parser.close_code is not None else CLOSE_NO_STATUS
        if not self._close_sent:
            # Echo the code (RFC 6455 5.5.1); an empty close is answered with an empty one.
            payload = b"" if code == CLOSE_NO_STATUS else build_close_payload(code)
            # The server may already have dropped TCP; its close is known either way.
            with contextlib.suppress(ConnectionClosed):
                self._send_frame(OP_CLOSE, payload)
        self._closed = ConnectionClosed(code, parser.close_reason)
        self._close_socket()
        log.info("event=ws_closed_by_server code=%d reason=%r", code, parser.close_reason)

    def _fail(self, exc: WebSocketProtocolError) -> ConnectionClosed:
        """Fail the connection (RFC 6455 7.1.7): send a close with the error's code, drop TCP."""
        if self._closed is not None:
            return self._closed
        self.stats.protocol_errors += 1
        log.warning("event=ws_protocol_error code=%d reason=%r", exc.code, exc.reason)
        if not self._close_sent:
            # Best effort: the connection is dropped in any case.
            with contextlib.suppress(ConnectionClosed):
                self._send_frame(OP_CLOSE, build_close_payload(exc.code, exc.reason))
        self._closed = ConnectionClosed(exc.code, exc.reason)
        self._close_socket()
        return self._closed

    def _abort(self, code: int, reason: str) -> ConnectionClosed:
        # The first cause wins: a sender thread's failure closes the socket under the
        # receiver, whose read then fails too.
        if self._closed is None:
            self._closed = ConnectionClosed(code, reason)
            log.info("event=ws_connection_lost code=%d reason=%r", code, reason)
        self._close_socket()
        return self._closed

    # ---- sending ----------------------------------------------------------------------

    def send_text(self, text: str) -> None:
        self._send_frame(OP_TEXT, text.encode("utf-8"))

    def send_binary(self, data: bytes | bytearray | memoryview) -> None:
        self._send_frame(OP_BINARY, data)

    def ping(self, payload: bytes = b"") -> None:
        """Send a ping; the answer shows up in :attr:`last_pong_ns`."""
        self._send_frame(OP_PING, payload)
        self.last_ping_ns = self._clock()
        if self._unanswered_ping_ns is None:
            self._unanswered_ping_ns = self.last_ping_ns

    def pong_overdue(self, limit: float) -> bool:
        """True when a ping has waited ``limit`` seconds or more without any pong since.

        Measured from the oldest unanswered ping, so regular keepalive pings do not keep
        pushing the deadline away.
        """
        since = self._unanswered_ping_ns
        return since is not None and self._clock() - since >= limit * 1e9

    def _send_frame(self, opcode: int, payload: bytes | bytearray | memoryview) -> None:
        frame = build_frame(opcode, payload, mask_key=self._mask_key_source(4))
        with self._send_lock:
            if self._close_sent or self._socket_closed:
                raise self._closed or ConnectionClosed(CLOSE_NORMAL, "close already sent")
            try:
                self._sock.sendall(frame)
            except OSError as exc:
                failure = f"send failed: {exc}"
            else:
                failure = ""
                if opcode == OP_CLOSE:
                    self._close_sent = True
                self.stats.frames_sent += 1
        if failure:
            raise self._abort(CLOSE_ABNORMAL, failure)

    # ---- closing ----------------------------------------------------------------------

    def close(self, code: int = CLOSE_NORMAL, reason: str = "", timeout: float = 1.0) -> int | None:
        """Close handshake from this side: send a close, wait up to ``timeout`` for the
        server's, then close the socket. Returns the server's close code, or None when it
        did not answer in time. Call it from the receiving thread.
        """
        try:
            return self._close_handshake(code, reason, timeout)
        finally:
            if self._closed is not None:
                # The kept exception's traceback holds frames that hold this transport and
                # its receive buffer: a cycle only a full garbage collection would free.
                self._closed.__traceback__ = None
                self._closed.__context__ = None

    def _close_handshake(self, code: int, reason: str, timeout: float) -> int | None:
        if self._closed is not None:
            self._close_socket()
            return self._closed.code if self._parser.closed else None
        try:
            self._send_frame(OP_CLOSE, build_close_payload(code, reason))
        except ConnectionClosed:
            self._close_socket()
            return None
        deadline = time.monotonic() + timeout
        server_code: int | None = None
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                self.recv_messages(remaining)
            except ConnectionClosed as closed:
                server_code = closed.code if self._parser.closed else None
                break
        if self._closed is None:
            self._closed = ConnectionClosed(code, reason)
        self._close_socket()
        return server_code

    def _close_socket(self) -> None:
        with self._send_lock:
            if self._socket_closed:
                return
            self._socket_closed = True
        with contextlib.suppress(KeyError, ValueError):
            self._poller.unregister(self._sock.fileno())
        # The peer may have reset the connection already.
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
