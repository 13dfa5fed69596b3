"""HTTP JSON control API of the simulator: journal queries and fault injection.

Routes (all under ``/control``):

``GET  status``                 urls, markets, rate, open connections, trades generated
``GET  journal``                connections (+ sids sent), generated sids per code,
                                rejected handshakes, REST rate-limit answers.
                                Query: ``sids=0`` omits sid lists, ``connection=<id>``,
                                ``codes=A,B`` limits the generated lists.
``POST journal/reset``
``POST drop_all``               abort every WebSocket connection (no close frame)
``POST stall``                  ``{"connection": id|"all", "seconds": s}``
``POST malformed``              ``{"kind", "connection"}``, kind: ``garbage``,
                                ``truncated_json``, ``truncated`` or ``oversized``
                                (a frame header announcing 64 MiB)
``POST restart``                ``{"seconds": s}``: listeners down, then back on the same ports
``POST ratelimit_errors``       ``{"count": n, "rest_count": m}``
``POST duplicate_trades``       ``{"count": n}``;  ``POST reorder_trades`` ``{"count": n}``
``POST slow``                   ``{"factor": f, "delay": s}`` (factor 1 and delay 0 = normal)
``POST set_rate``               ``{"rate": events_per_second}``
``POST place_order``            Upbit order body (``market``, ``side``, ``ord_type``, ...)
``POST fill_order``             ``{"uuid", "volume"?, "price"?}``
``POST cancel_order``           ``{"uuid"}``
``POST burst``                  ``{"count": n, "connection"?, "types"?}``
``POST rest_outage``            ``{"seconds": s}``: REST answers 503 for that long
``POST error``                  ``{"name", "connection"?}``: error frame ``name``, then close
                                (as after a rejected request; counts as a violation)
``POST inject``                 ``{"frames": [base64, ...], "connection"?, "text"?}``: raw
                                payloads, one complete frame each (at most 10,000)
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from simulator.frames import OP_BINARY, OP_TEXT
from simulator.http import HttpError, HttpRequest, HttpResponse
from simulator.private import OrderError

if TYPE_CHECKING:
    from simulator.server import Exchange

PREFIX = "/control/"
MAX_INJECTED_FRAMES = 10_000


def _number(body: dict[str, Any], name: str, default: float | None = None) -> float:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise HttpError(400, f"{name} must be a non-negative number, got {value!r}")
    return float(value)


class ControlApi:
    def __init__(self, exchange: Exchange) -> None:
        self.exchange = exchange

    async def handle(self, request: HttpRequest) -> HttpResponse:
        if not request.path.startswith(PREFIX):
            raise HttpError(404, f"no route {request.path}")
        action = request.path[len(PREFIX) :]
        if request.method == "GET":
            if action == "status":
                return HttpResponse.json(200, self._status())
            if action == "journal":
                return HttpResponse.json(200, self._journal(request.query))
            raise HttpError(404, f"no GET route {request.path}")
        if request.method != "POST":
            raise HttpError(405, f"{request.method} not allowed")
        body = request.json()
        if not isinstance(body, dict):
            raise HttpError(400, "body must be a JSON object")
        try:
            result = await self._post(action, body)
        except KeyError as exc:
            raise HttpError(404, str(exc.args[0]) if exc.args else "not found") from exc
        except ValueError as exc:
            raise HttpError(400, str(exc)) from exc
        except OrderError as exc:
            return HttpResponse.json(
                exc.status, {"error": {"name": exc.name, "message": exc.message}}
            )
        return HttpResponse.json(200, {"ok": True, **result})

    def _status(self) -> dict[str, Any]:
        exchange = self.exchange
        return {
            **exchange.urls,
            "markets": [info.code for info in exchange.markets],
            "rate": exchange.rate,
            "listening": exchange.listening,
            "connections": sorted(exchange.clients),
            "generated": exchange.generator.generated,
        }

    def _journal(self, query: dict[str, list[str]]) -> dict[str, Any]:
        exchange = self.exchange
        with_sids = query.get("sids", ["1"])[-1] != "0"
        only = query.get("connection", [None])[-1]
        codes_text = query.get("codes", [None])[-1]
        codes = codes_text.split(",") if codes_text else list(exchange.generator.states)
        connections = []
        for record in exchange.journal.connections.values():
            if only is not None and str(record.id) != only:
                continue
            connections.append(record.as_json(with_sids))
        generated: dict[str, Any] = {}
        for code in codes:
            state = exchange.generator.states.get(code)
            if state is not None:
                generated[code] = list(state.sids) if with_sids else len(state.sids)
        return {
            "connections": connections,
            "generated": generated,
            "rejected": list(exchange.journal.rejected),
            "rest": list(exchange.journal.rest),
        }

    async def _post(self, action: str, body: dict[str, Any]) -> dict[str, Any]:
        exchange = self.exchange
        now_ms = exchange.wall_ms()
        if action == "journal/reset":
            exchange.journal.reset()
            return {}
        if action == "drop_all":
            return {"dropped": exchange.drop_all()}
        if action == "stall":
            seconds = _number(body, "seconds")
            return {"stalled": exchange.stall(body.get("connection"), seconds)}
        if action == "malformed":
            kind = body.get("kind", "garbage")
            return {"sent": exchange.malformed(body.get("connection"), kind)}
        if action == "restart":
            seconds = _number(body, "seconds", 1.0)
            exchange.spawn(exchange.restart(seconds))
            await asyncio.sleep(0)
            while not exchange.down:
                await asyncio.sleep(0.005)
            return {"down_for": seconds}
        if action == "ratelimit_errors":
            exchange.forced_ws_errors = int(_number(body, "count", 0))
            exchange.rest_api.forced_errors = int(_number(body, "rest_count", 0))
            return {}
        if action == "duplicate_trades":
            exchange.duplicate_left = int(_number(body, "count"))
            return {}
        if action == "reorder_trades":
            exchange.reorder_left = int(_number(body, "count"))
            return {}
        if action == "slow":
            factor = _number(body, "factor", 1.0)
            if factor < 1.0:
                raise ValueError("slow factor must be >= 1")
            exchange.slow_factor = factor
            exchange.slow_delay = _number(body, "delay", 0.0)
            return {}
        if action == "set_rate":
            exchange.rate = _number(body, "rate")
            return {"rate": exchange.rate}
        if action == "place_order":
            order, events = exchange.account.place(body, now_ms)
            exchange.publish_private(events)
            return {"uuid": order.uuid, "state": order.state}
        if action == "fill_order":
            volume = body.get("volume")
            price = body.get("price")
            events = exchange.account.fill(
                str(body.get("uuid")),
                now_ms,
                Decimal(str(volume)) if volume is not None else None,
                Decimal(str(price)) if price is not None else None,
            )
            exchange.publish_private(events)
            return {"events": len(events)}
        if action == "cancel_order":
            exchange.publish_private(exchange.account.cancel(str(body.get("uuid")), now_ms))
            return {}
        if action == "burst":
            count = int(_number(body, "count"))
            return await exchange.burst(count, body.get("connection"), body.get("types"))
        if action == "rest_outage":
            exchange.rest_api.outage_until = exchange.monotonic() + _number(body, "seconds")
            return {}
        if action == "error":
            return {"sent": exchange.error(body.get("connection"), str(body.get("name", "")))}
        if action == "inject":
            frames = body.get("frames")
            if not isinstance(frames, list) or len(frames) > MAX_INJECTED_FRAMES:
                raise ValueError(f"frames must be a list of at most {MAX_INJECTED_FRAMES}")
            try:
                payloads = [base64.b64decode(item, validate=True) for item in frames]
            except (TypeError, binascii.Error) as exc:
                raise ValueError(f"frames must be base64 strings: {exc}") from exc
            opcode = OP_TEXT if body.get("text") else OP_BINARY
            return {"sent": exchange.inject(body.get("connection"), payloads, opcode)}
        raise KeyError(f"unknown control action {action!r}")
