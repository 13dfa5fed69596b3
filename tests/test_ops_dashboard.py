"""The dashboard in a real headless Chromium, driven over the DevTools protocol.

Chromium comes from Debian (``make test`` installs it when missing, as root). The page
must load, show numbers that change while the feed runs, request nothing but its own
origin, and log no console error or exception.
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest
import websocket

from feedhandler.app import FeedProcess
from feedhandler.metrics import addons_from_settings
from simulator import Simulator
from tests.conftest import wait_until

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--remote-debugging-port=0",
)

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (make test installs it as root)"
)


class DevTools:
    """A minimal Chrome DevTools Protocol client over websocket-client."""

    def __init__(self, ws_url: str) -> None:
        self._ws = websocket.create_connection(ws_url, timeout=10, suppress_origin=True)
        self._ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, timeout: float = 10.0, **params: Any) -> dict[str, Any]:
        call_id = next(self._ids)
        self._ws.send(orjson.dumps({"id": call_id, "method": method, "params": params}).decode())
        deadline = time.monotonic() + timeout
        while True:
            self._ws.settimeout(max(0.05, deadline - time.monotonic()))
            message = orjson.loads(self._ws.recv())
            if message.get("id") == call_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            if "method" in message:
                self.events.append(message)
            if time.monotonic() > deadline:
                raise TimeoutError(f"no reply to {method} within {timeout} s")

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def close(self) -> None:
        self._ws.close()


def _devtools_port(profile: Path, proc: subprocess.Popen, timeout: float = 15.0) -> int:
    marker = profile / "DevToolsActivePort"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"chromium exited with {proc.returncode}")
        if marker.exists():
            text = marker.read_text().split()
            if text:
                return int(text[0])
        time.sleep(0.05)
    raise TimeoutError("chromium did not open its DevTools port")


@pytest.fixture
def browser():
    profile = Path(tempfile.mkdtemp(prefix="uf-chromium-"))
    proc = subprocess.Popen(
        [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = None
    try:
        port = _devtools_port(profile, proc)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as response:
            targets = orjson.loads(response.read())
        page = next(t for t in targets if t["type"] == "page")
        client = DevTools(page["webSocketDebuggerUrl"])
        yield client
    finally:
        if client is not None:
            client.close()
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        shutil.rmtree(profile, ignore_errors=True)


def _errors(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    bad = []
    for event in events:
        method, params = event["method"], event.get("params", {})
        thrown = method == "Runtime.exceptionThrown"
        if thrown or (
            method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert")
        ):
            bad.append(params)
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            bad.append(params["entry"])
    return bad


def test_dashboard_shows_live_numbers_offline_without_console_errors(feed_harness, browser):
    with Simulator(markets=5, rate=300.0, seed=5, stamp=True) as sim:
        harness = feed_harness(
            sim,
            {
                "subscriptions": [
                    {"type": "ticker", "codes": "all"},
                    {"type": "orderbook", "codes": "all", "depth": 15},
                    {"type": "trade", "codes": "all"},
                ],
                # The feed shares the test process's memory with the whole suite.
                "health": {"memory_usage_mb": 1_000_000},
            },
        )
        settings = harness.settings()
        feed = FeedProcess(settings, addons=addons_from_settings(settings, dashboard_port=0))
        harness.feed = feed
        feed.start()
        url = feed.status()["addons"]["dashboard"]["url"]
        for domain in ("Runtime", "Log", "Network", "Page"):
            browser.call(f"{domain}.enable")
        browser.call("Page.navigate", url=url)

        def updates() -> int:
            # Before the new document exists (navigation in progress) there is no body.
            return int(browser.evaluate("Number(document.body?.dataset.updates || 0)"))

        wait_until(lambda: updates() >= 1, 10, interval=0.1)
        first = browser.evaluate("document.getElementById('total-messages').textContent")
        seen = updates()
        wait_until(lambda: updates() >= seen + 2, 10, interval=0.1)
        second = browser.evaluate("document.getElementById('total-messages').textContent")
        assert first != second
        assert int(second.replace(",", "")) > int(first.replace(",", "")) > 0
        assert browser.evaluate("document.getElementById('state').textContent") == "healthy"
        wait_until(
            lambda: browser.evaluate("document.querySelectorAll('#markets tbody tr').length") == 5,
            10,
            interval=0.1,
        )
        codes = browser.evaluate(
            "[...document.querySelectorAll('#markets tbody tr td:first-child')]"
            ".map((td) => td.textContent)"
        )
        assert sorted(codes) == sorted(sim.markets)
        assert browser.evaluate("document.querySelectorAll('#conns tbody tr').length") == 1
        # The latency histogram has bars and a summary once samples arrived.
        wait_until(
            lambda: (
                "p50" in browser.evaluate("document.getElementById('hist-summary').textContent")
            ),
            10,
            interval=0.1,
        )
        assert browser.evaluate("document.querySelectorAll('#hist div').length") > 5
        wait_until(
            lambda: (
                "CPU per frame"
                in browser.evaluate("document.getElementById('route-summary').textContent")
            ),
            10,
            interval=0.2,
        )
        requested = {
            e["params"]["request"]["url"]
            for e in browser.events
            if e["method"] == "Network.requestWillBeSent"
        }
        assert requested and all(u.startswith(url) for u in requested), requested
        assert _errors(browser.events) == []
