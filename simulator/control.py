"""Blocking client of the simulator's HTTP control API (stdlib only, every call with a timeout)."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from typing import Any


class ControlError(RuntimeError):
    """The control API answered with an error status."""

    def __init__(self, status: int, action: str, body: str) -> None:
        super().__init__(f"control {action} failed with HTTP {status}: {body[:300]}")
        self.status = status
        self.action = action
        self.body = body


class ControlClient:
    def __init__(self, control_url: str, timeout: float = 10.0) -> None:
        self.url = control_url.rstrip("/")
        self.timeout = timeout

    def _call(self, method: str, action: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.url}/{action}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise ControlError(exc.code, action, exc.read().decode(errors="replace")) from exc

    def post(self, action: str, **body: Any) -> dict[str, Any]:
        return self._call("POST", action, body)

    def status(self) -> dict[str, Any]:
        return self._call("GET", "status")

    def journal(
        self, sids: bool = True, connection: int | None = None, codes: list[str] | None = None
    ) -> dict[str, Any]:
        params = [] if sids else ["sids=0"]
        if connection is not None:
            params.append(f"connection={connection}")
        if codes:
            params.append("codes=" + ",".join(codes))
        return self._call("GET", "journal" + ("?" + "&".join(params) if params else ""))

    def reset_journal(self) -> None:
        self.post("journal/reset")

    def drop_all(self) -> int:
        return int(self.post("drop_all")["dropped"])

    def stall(self, seconds: float, connection: int | str = "all") -> list[int]:
        return list(self.post("stall", seconds=seconds, connection=connection)["stalled"])

    def malformed(self, kind: str = "garbage", connection: int | str = "all") -> list[int]:
        return list(self.post("malformed", kind=kind, connection=connection)["sent"])

    def restart(self, seconds: float) -> None:
        self.post("restart", seconds=seconds)

    def ratelimit_errors(self, count: int, rest_count: int = 0) -> None:
        self.post("ratelimit_errors", count=count, rest_count=rest_count)

    def duplicate_trades(self, count: int) -> None:
        self.post("duplicate_trades", count=count)

    def reorder_trades(self, count: int) -> None:
        self.post("reorder_trades", count=count)

    def slow(self, factor: float = 1.0, delay: float = 0.0) -> None:
        self.post("slow", factor=factor, delay=delay)

    def set_rate(self, rate: float) -> None:
        self.post("set_rate", rate=rate)

    def place_order(self, **order: Any) -> dict[str, Any]:
        return self.post("place_order", **order)

    def fill_order(self, uuid: str, volume: str | None = None, price: str | None = None) -> None:
        body: dict[str, Any] = {"uuid": uuid}
        if volume is not None:
            body["volume"] = volume
        if price is not None:
            body["price"] = price
        self.post("fill_order", **body)

    def cancel_order(self, uuid: str) -> None:
        self.post("cancel_order", uuid=uuid)

    def rest_outage(self, seconds: float) -> None:
        """REST answers 503 for ``seconds`` (the WebSocket endpoints stay up)."""
        self.post("rest_outage", seconds=seconds)

    def error(self, name: str, connection: int | str = "all") -> list[int]:
        """Send the error frame ``name`` and close, as after a rejected request."""
        return list(self.post("error", name=name, connection=connection)["sent"])

    def inject(
        self, payloads: list[bytes], connection: int | str = "all", text: bool = False
    ) -> list[int]:
        """Write raw payloads, one complete frame each, to the connection(s)."""
        frames = [base64.b64encode(p).decode("ascii") for p in payloads]
        return list(self.post("inject", frames=frames, connection=connection, text=text)["sent"])

    def burst(
        self, count: int, connection: int | str = "all", types: list[str] | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"count": count, "connection": connection}
        if types:
            body["types"] = types
        return self.post("burst", **body)
