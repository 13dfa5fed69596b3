"""``python -m simulator serve``: one JSON line of URLs, serves, exits cleanly on signals."""

import json
import selectors
import signal
import subprocess
import sys
import urllib.request

import pytest

from simulator.testing import connect, recv_json, request


def _first_line(process, timeout=10.0):
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    if not selector.select(timeout):
        raise TimeoutError("the simulator printed nothing")
    return process.stdout.readline()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_serve_prints_urls_and_stops_on_signal(signum):
    process = subprocess.Popen(
        [sys.executable, "-m", "simulator", "serve", "--port", "0", "--markets", "4",
         "--rate", "100", "--seed", "3", "--stamp"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        urls = json.loads(_first_line(process))
        assert set(urls) == {"public_url", "private_url", "rest_url", "control_url"}
        ws = connect(urls["public_url"])
        try:
            ws.send(request({"type": "ticker", "codes": ["KRW-BTC"]}))
            ticker = recv_json(ws)
            assert ticker["code"] == "KRW-BTC" and "sim_ns" in ticker
        finally:
            ws.close()
        with urllib.request.urlopen(f"{urls['control_url']}/status", timeout=5) as response:
            assert json.loads(response.read())["markets"] == [
                "KRW-BTC",
                "KRW-ETH",
                "KRW-XRP",
                "KRW-SOL",
            ]
        process.send_signal(signum)
        assert process.wait(timeout=5) == 0
        assert "Traceback" not in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=5)
        process.stdout.close()
        process.stderr.close()


def test_serve_rejects_half_a_key_pair():
    result = subprocess.run(
        [sys.executable, "-m", "simulator", "serve", "--access-key", "only-one"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "go together" in result.stderr
    assert "only-one" not in result.stderr
