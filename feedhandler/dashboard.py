"""A small live dashboard served by the feed process itself, fully offline.

``GET /`` is one HTML page with its CSS and JavaScript inline (no CDN, no fonts, no
external requests); it polls ``GET /api/snapshot`` every second and redraws:
connections and health, message rates, the wire-latency histogram, a per-market table
and the active warnings. The server is a stdlib ``ThreadingHTTPServer`` on 127.0.0.1
in its own thread; every figure comes from the feed's status calls and the
:class:`~feedhandler.metrics.Telemetry` sampler, never from the hot path.
"""

from __future__ import annotations

import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import orjson

from feedhandler.metrics import DEFAULT_HOST, Histogram, OpsStartError, Telemetry
from feedhandler.top import active_warnings

if TYPE_CHECKING:
    from feedhandler.app import FeedProcess

log = logging.getLogger("feedhandler.dashboard")


def histogram_json(hist: Histogram, label: str) -> dict[str, Any]:
    """Per-bucket (not cumulative) counts with their upper bounds, and p50/p99 bounds."""
    buckets, total, count = hist.snapshot()
    cumulative = [c for _, c in buckets]
    counts = [b - a for a, b in zip([0, *cumulative[:-1]], cumulative, strict=True)]
    return {
        "label": label,
        "bounds": [le for le, _ in buckets],
        "counts": counts,
        "count": count,
        "mean_s": total / count if count else None,
        "p50_s": hist.quantile(0.5),
        "p99_s": hist.quantile(0.99),
    }


def snapshot(feed: FeedProcess, telemetry: Telemetry) -> dict[str, Any]:
    """Everything the page shows, as one JSON-able dict."""
    health = feed.health()
    metrics = feed.metrics()
    wire = next(
        (
            (f"{kind} wire to shm ({clock} clock)", telemetry.wire[(kind, clock)])
            for clock in ("origin", "exchange")
            for kind in ("ticker", "orderbook")
            if telemetry.wire[(kind, clock)].count
        ),
        ("ticker wire to shm", telemetry.wire[("ticker", "exchange")]),
    )
    route = telemetry.route_timer.histogram if telemetry.route_timer else None
    status_like = {"health": health, "metrics": metrics}
    return {
        "time_ns": time.time_ns(),
        "state": health["state"],
        "health_score": health["health_score"],
        "uptime_s": round(time.time() - feed.started_at, 1),
        "markets_listed": len(feed.market_codes),
        "connections": [
            {
                key: c.get(key)
                for key in (
                    "name",
                    "connected",
                    "messages_total",
                    "messages_per_s",
                    "reconnects",
                    "errors",
                    "silence_s",
                    "health_score",
                )
            }
            for c in health["connections"].values()
        ],
        "messages": metrics["messages"],
        "rates": telemetry.message_rates(),
        "zmq": metrics["publisher"],
        "trades": metrics["trades"],
        "process": health["process"],
        "latency": histogram_json(wire[1], wire[0]),
        "route": histogram_json(route, "decode + route per frame (sampled)") if route else None,
        "markets": telemetry.markets(),
        "frame_cpu_us": {k: round(v * 1e6, 2) for k, v in telemetry.frame_cpu_s.items()},
        "warnings": active_warnings(status_like),
    }


class _Handler(BaseHTTPRequestHandler):
    server: _DashboardHTTPServer
    server_version = "upfeed-dashboard"

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path in ("/", "/index.html"):
            self._send(200, "text/html; charset=utf-8", PAGE.encode())
        elif path == "/api/snapshot":
            body = orjson.dumps(
                snapshot(self.server.feed, self.server.telemetry), option=orjson.OPT_SERIALIZE_NUMPY
            )
            self._send(200, "application/json", body)
        elif path == "/favicon.ico":
            self._send(204, "image/x-icon", b"")
        else:
            self._send(404, "text/plain; charset=utf-8", b"not found\n")

    def _send(self, code: int, content_type: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Security-Policy", CSP)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug(
            "event=dashboard_request client=%s request=%r", self.client_address[0], format % args
        )


class _DashboardHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], feed: FeedProcess, telemetry: Telemetry) -> None:
        self.feed = feed
        self.telemetry = telemetry
        super().__init__(address, _Handler)


class DashboardServer:
    """Feed add-on: the dashboard on ``http://host:port/`` (port 0 = any free port)."""

    name = "dashboard"

    def __init__(self, port: int, telemetry: Telemetry, *, host: str = DEFAULT_HOST) -> None:
        self.port = port
        self.host = host
        self.telemetry = telemetry
        self._server: _DashboardHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def start(self, feed: FeedProcess) -> None:
        try:
            self._server = _DashboardHTTPServer((self.host, self.port), feed, self.telemetry)
        except OSError as exc:
            raise OpsStartError(f"dashboard {self.host}:{self.port}: {exc}") from exc
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="dashboard",
            daemon=True,
        )
        self._thread.start()
        log.info("event=dashboard_started url=%s", self.url)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(2.0)

    def status(self) -> dict[str, Any]:
        return {"url": self.url}


# Everything is inline, so the policy allows inline code and same-origin fetches only.
CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline';"
    " connect-src 'self'; img-src 'self'"
)

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>upfeed dashboard</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:13px/1.4 system-ui,sans-serif;margin:0;background:#0f1419;color:#d8dee9}
header{display:flex;gap:16px;align-items:center;padding:10px 16px;background:#1b222c}
h1{font-size:16px;margin:0} h2{font-size:13px;margin:0 0 6px;color:#8fa1b3;text-transform:uppercase}
main{display:grid;grid-template-columns:repeat(auto-fit,minmax(420px,1fr));gap:12px;padding:12px}
section{background:#1b222c;border-radius:6px;padding:10px}
.state{padding:2px 8px;border-radius:4px;font-weight:600}
.healthy{background:#2e7d32}.degraded{background:#b26a00}.down{background:#b71c1c}
.cards{display:flex;gap:10px;flex-wrap:wrap}
.card{background:#10161d;padding:6px 10px;border-radius:4px}
.card b{display:block;font-size:18px;font-variant-numeric:tabular-nums}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th,td{padding:2px 6px;text-align:right;border-bottom:1px solid #26303b}
th:first-child,td:first-child{text-align:left}
#hist{display:flex;align-items:flex-end;gap:2px;height:120px;border-bottom:1px solid #3b4754}
#hist div{flex:1;background:#4c8bf5;min-height:1px}
#hist-labels{display:flex;gap:2px;font-size:9px;color:#8fa1b3}
#hist-labels span{flex:1;text-align:center;overflow:hidden}
#warnings li{color:#ffb74d} .muted{color:#8fa1b3} .wide{grid-column:1/-1}
</style></head>
<body>
<header><h1>upfeed</h1><span id="state" class="state down">loading</span>
<span>score <b id="score">-</b></span><span>uptime <b id="uptime">-</b></span>
<span class="muted" id="updated">waiting for data</span></header>
<main>
<section><h2>Throughput</h2><div class="cards">
<div class="card">messages<b id="total-messages">-</b></div>
<div class="card">msg/s<b id="rate-total">-</b></div>
<div class="card">zmq sent<b id="zmq-sent">-</b></div>
<div class="card">zmq dropped<b id="zmq-dropped">-</b></div>
<div class="card">trades<b id="trades">-</b></div>
<div class="card">RSS MB<b id="rss">-</b></div></div>
<table id="rates"><thead><tr><th>type</th><th>count</th><th>per s</th></tr></thead>
<tbody></tbody></table></section>
<section><h2>Connections</h2><table id="conns"><thead><tr><th>name</th><th>up</th><th>messages</th>
<th>msg/s</th><th>reconnects</th><th>errors</th><th>silence s</th><th>score</th></tr></thead>
<tbody></tbody></table>
<h2 style="margin-top:10px">Warnings</h2>
<ul id="warnings"><li class="muted">none</li></ul></section>
<section><h2 id="hist-title">Latency</h2><div id="hist"></div><div id="hist-labels"></div>
<p class="muted" id="hist-summary"></p><p class="muted" id="route-summary"></p></section>
<section class="wide"><h2>Markets</h2><table id="markets"><thead><tr><th>market</th><th>price</th>
<th>change %</th><th>bid</th><th>ask</th><th>updates</th><th>upd/s</th><th>age s</th></tr>
</thead><tbody></tbody></table></section>
</main>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const fmt = (v, d = 0) => v === null || v === undefined ? "-" :
  Number(v).toLocaleString("en-US", {minimumFractionDigits: d, maximumFractionDigits: d});
// Prices keep every significant digit the exchange sent (BTC-quoted markets are tiny).
const price = (v) => v === null || v === undefined ? "-" :
  Number(v).toLocaleString("en-US", {maximumFractionDigits: 8});
const us = (s) => s === null || s === undefined ? "-" :
  (s === Infinity ? "inf" : fmt(s * 1e6, 0) + " us");
function fillTable(id, rows) {
  const body = $(id).tBodies[0];
  const frag = document.createDocumentFragment();
  for (const row of rows) {
    const tr = document.createElement("tr");
    for (const cell of row) {
      const td = document.createElement("td");
      td.textContent = cell;
      tr.appendChild(td);
    }
    frag.appendChild(tr);
  }
  body.replaceChildren(frag);
}
function drawHistogram(h) {
  $("hist-title").textContent = "Latency: " + h.label;
  const max = Math.max(1, ...h.counts);
  const bars = [], labels = [];
  h.counts.forEach((c, i) => {
    const bar = document.createElement("div");
    bar.style.height = (100 * c / max) + "%";
    bar.title = "<= " + h.bounds[i] + " s: " + c;
    bars.push(bar);
    const label = document.createElement("span");
    const b = Number(h.bounds[i]);
    label.textContent = !isFinite(b) ? "inf" : b >= 1 ? fmt(b, 1) + "s" :
      b >= 1e-3 ? fmt(b * 1e3, b < 1e-2 ? 1 : 0) + "ms" : fmt(b * 1e6) + "us";
    labels.push(label);
  });
  $("hist").replaceChildren(...bars);
  $("hist-labels").replaceChildren(...labels);
  $("hist-summary").textContent = h.count ? ("samples " + fmt(h.count) + ", p50 <= " + us(h.p50_s) +
    ", p99 <= " + us(h.p99_s) + ", mean " + us(h.mean_s)) : "no samples yet";
}
function render(s) {
  const state = $("state");
  state.textContent = s.state; state.className = "state " + s.state;
  $("score").textContent = fmt(s.health_score, 2);
  $("uptime").textContent = fmt(s.uptime_s, 0) + " s";
  const total = Object.values(s.messages).reduce((a, b) => a + b, 0);
  const rate = Object.values(s.rates).reduce((a, b) => a + b, 0);
  $("total-messages").textContent = fmt(total);
  $("rate-total").textContent = fmt(rate, 1);
  $("zmq-sent").textContent = fmt(s.zmq.sent);
  $("zmq-dropped").textContent = fmt(s.zmq.dropped);
  $("trades").textContent = fmt(s.trades.published);
  $("rss").textContent = fmt(s.process.rss_mb, 1);
  fillTable("rates", Object.keys(s.messages).sort().map(
    (k) => [k, fmt(s.messages[k]), fmt(s.rates[k] || 0, 1)]));
  fillTable("conns", s.connections.map((c) => [c.name, c.connected ? "yes" : "no",
    fmt(c.messages_total), fmt(c.messages_per_s, 1), fmt(c.reconnects), fmt(c.errors),
    fmt(c.silence_s, 1), fmt(c.health_score, 2)]));
  fillTable("markets", s.markets.map((m) => [m.code, price(m.trade_price),
    m.change_rate === null ? "-" : fmt(m.change_rate * 100, 2), price(m.bid), price(m.ask),
    fmt(m.updates), fmt(m.updates_per_s, 1), fmt(m.age_s, 1)]));
  const warnings = s.warnings.length ? s.warnings : ["none"];
  $("warnings").replaceChildren(...warnings.map((w) => {
    const li = document.createElement("li"); li.textContent = w;
    if (!s.warnings.length) li.className = "muted";
    return li;
  }));
  drawHistogram(s.latency);
  const cpu = Object.entries(s.frame_cpu_us).map(([k, v]) => k + " " + fmt(v, 1) + " us");
  $("route-summary").textContent = (s.route && s.route.count ?
    ("decode + route per frame: p50 <= " + us(s.route.p50_s) + ", p99 <= " + us(s.route.p99_s) +
     " (" + fmt(s.route.count) + " sampled). ") : "") +
    (cpu.length ? "CPU per frame (receive, decode, route): " + cpu.join(", ") : "");
  $("updated").textContent = "updated " + new Date(s.time_ns / 1e6).toLocaleTimeString();
  document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
}
async function poll() {
  try {
    const response = await fetch("/api/snapshot", {cache: "no-store"});
    if (!response.ok) throw new Error("HTTP " + response.status);
    render(await response.json());
  } catch (err) {
    const state = $("state");
    state.textContent = "unreachable"; state.className = "state down";
    $("updated").textContent = String(err);
  } finally {
    setTimeout(poll, 1000);
  }
}
poll();
</script></body></html>
"""
