"""The README's first command, in a short run: everything starts, shows data, stops clean."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_demo_runs_shows_live_figures_and_leaves_nothing_behind():
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "feedhandler",
            "demo",
            "--duration",
            "4",
            "--markets",
            "5",
            "--rate",
            "500",
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    for expected in (
        "simulator    ws://127.0.0.1:",
        "feed process pid=",
        "messages/s ",
        "trade=",
        "ticker=",
        "orderbook=",
        "wire->shm    p50=",
        "wire->worker n=",
        "connection   public-0: connected=True",
        "market       KRW-BTC: last=",
        "worker       spread: spread updates=",
        "worker       trades: trades KRW-BTC",
        "shm left     none",
    ):
        assert expected in out, f"missing {expected!r} in:\n{out[-3000:]}"
    stopped = next(line for line in out.splitlines() if line.startswith("stopped"))
    assert all(part.endswith("=0") for part in stopped.split()[1:]), stopped
    assert not list(Path("/dev/shm").glob("upfeed-demo-*"))
