"""Helpers for tests that talk to the simulator with a plain websocket-client client."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import jwt
import websocket

DEFAULT_TIMEOUT = 5.0


def connect(
    url: str, origin: bool = False, timeout: float = DEFAULT_TIMEOUT, **headers: str
) -> websocket.WebSocket:
    """A websocket-client connection without an Origin header (the library adds one by default)
    unless ``origin`` is true."""
    header = [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    options: dict[str, Any] = {"timeout": timeout, "header": header}
    if origin:
        options["origin"] = "http://localhost"
    else:
        options["suppress_origin"] = True
    return websocket.create_connection(url, **options)


def request(*streams: dict[str, Any], fmt: str | None = None, ticket: str = "test") -> str:
    items: list[dict[str, Any]] = [{"ticket": ticket}, *streams]
    if fmt is not None:
        items.append({"format": fmt})
    return json.dumps(items)


def decode(payload: bytes | str) -> Any:
    """JSON with exact numbers: Decimal for fractions, int for integers."""
    return json.loads(payload, parse_float=Decimal)


def recv_json(ws: websocket.WebSocket) -> Any:
    opcode, payload = ws.recv_data()
    if opcode == websocket.ABNF.OPCODE_CLOSE:
        raise ConnectionError("server closed the connection")
    return decode(payload)


def collect(
    ws: websocket.WebSocket,
    until: Callable[[list[Any]], bool],
    timeout: float = DEFAULT_TIMEOUT,
) -> list[Any]:
    """Receive messages until ``until(messages)`` holds; TimeoutError after ``timeout`` s."""
    messages: list[Any] = []
    deadline = time.monotonic() + timeout
    while not until(messages):
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"condition not met after {timeout} s ({len(messages)} messages)")
        ws.settimeout(left)
        messages.append(recv_json(ws))
    return messages


def collect_for(ws: websocket.WebSocket, seconds: float) -> list[Any]:
    """Everything received during ``seconds``."""
    messages: list[Any] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        ws.settimeout(left)
        try:
            messages.append(recv_json(ws))
        except websocket.WebSocketTimeoutException:
            break
    return messages


def token(
    access_key: str, secret_key: str, algorithm: str = "HS512", nonce: str | None = None
) -> str:
    payload = {"access_key": access_key, "nonce": nonce or str(uuid.uuid4())}
    return jwt.encode(payload, secret_key, algorithm=algorithm)


def type_of(message: dict[str, Any]) -> str | None:
    return message.get("type", message.get("ty"))
