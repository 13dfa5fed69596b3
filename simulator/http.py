"""A small HTTP/1.1 server for the REST and control endpoints (asyncio streams).

Only what those endpoints need: request line, headers, a Content-Length body
(bounded), keep-alive, and one response per request. The ``websockets`` server
cannot serve these, since it rejects requests that carry a body.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger("simulator.http")

MAX_HEAD = 16 * 1024
MAX_BODY = 1024 * 1024
KEEPALIVE_SECONDS = 30.0


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status} {message}")
        self.status = status
        self.message = message


@dataclass(slots=True)
class HttpRequest:
    method: str
    path: str
    query_string: str
    headers: dict[str, str]
    body: bytes
    client: str

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(self.query_string, keep_blank_values=True)

    def json(self) -> Any:
        if not self.body:
            return {}
        try:
            return json.loads(self.body)
        except ValueError as exc:
            raise HttpError(400, f"request body is not JSON: {exc}") from exc


@dataclass(slots=True)
class HttpResponse:
    status: int
    body: bytes = b""
    content_type: str = "application/json; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(
        cls, status: int, document: Any, headers: dict[str, str] | None = None
    ) -> HttpResponse:
        body = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()
        return cls(status, body, headers=headers or {})

    def encode(self, keep_alive: bool) -> bytes:
        try:
            reason = HTTPStatus(self.status).phrase
        except ValueError:
            reason = ""
        lines = [
            f"HTTP/1.1 {self.status} {reason}",
            f"Content-Type: {self.content_type}",
            f"Content-Length: {len(self.body)}",
            f"Connection: {'keep-alive' if keep_alive else 'close'}",
        ]
        lines.extend(f"{name}: {value}" for name, value in self.headers.items())
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + self.body


Handler = Callable[[HttpRequest], Awaitable[HttpResponse]]


def parse_head(head: bytes, client: str) -> tuple[HttpRequest, int]:
    """Parse a request head (up to the blank line); returns the request and its body length."""
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError as exc:  # pragma: no cover - latin-1 decodes every byte
        raise HttpError(400, "undecodable request head") from exc
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise HttpError(400, f"malformed request line {lines[0][:80]!r}")
    method, target, _ = parts
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, colon, value = line.partition(":")
        if not colon:
            raise HttpError(400, f"malformed header line {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    if "transfer-encoding" in headers:
        raise HttpError(501, "transfer codings are not supported")
    length_text = headers.get("content-length", "0")
    if not length_text.isdigit():
        raise HttpError(400, f"bad Content-Length {length_text!r}")
    length = int(length_text)
    if length > MAX_BODY:
        raise HttpError(413, f"body of {length} bytes exceeds {MAX_BODY}")
    split = urlsplit(target)
    return HttpRequest(method.upper(), split.path, split.query, headers, b"", client), length


class HttpServer:
    """Serves ``handler`` on one listening socket until :meth:`close`."""

    def __init__(self, handler: Handler, name: str) -> None:
        self.handler = handler
        self.name = name
        self.server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self, host: str, port: int) -> int:
        self.server = await asyncio.start_server(
            self._serve, host, port, limit=MAX_HEAD, reuse_address=True
        )
        return int(self.server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            await self.server.wait_closed()
            self.server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        client = f"{peer[0]}:{peer[1]}" if peer else "?"
        self._writers.add(writer)
        try:
            while True:
                try:
                    head = await asyncio.wait_for(
                        reader.readuntil(b"\r\n\r\n"), timeout=KEEPALIVE_SECONDS
                    )
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
                    return
                try:
                    request, length = parse_head(head, client)
                    if length:
                        request.body = await asyncio.wait_for(
                            reader.readexactly(length), timeout=KEEPALIVE_SECONDS
                        )
                except HttpError as exc:
                    response = HttpResponse.json(
                        exc.status, {"error": {"name": str(exc.status), "message": exc.message}}
                    )
                    writer.write(response.encode(keep_alive=False))
                    await writer.drain()
                    return
                try:
                    response = await self.handler(request)
                except HttpError as exc:
                    response = HttpResponse.json(
                        exc.status, {"error": {"name": str(exc.status), "message": exc.message}}
                    )
                keep_alive = request.headers.get("connection", "").lower() != "close"
                writer.write(response.encode(keep_alive))
                await writer.drain()
                if not keep_alive:
                    return
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            log.debug("event=http_client_gone server=%s client=%s error=%r", self.name, client, exc)
        finally:
            self._writers.discard(writer)
            writer.close()
