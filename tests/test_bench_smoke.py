"""The system benchmarks run end to end in quick mode and emit the JSON they promise.

Each scenario runs as ``python -m bench NAME --quick`` (its own simulator, feed and
consumer processes) with its output in a temporary directory; the report then turns
those files into markdown and plots. Only shapes, types and counts are checked: speed
is what the benchmarks report, never what a test asserts. The peers scenario needs
downloads and is left out.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(110)


def run_bench(name: str, out: Path, *extra: str, timeout: float = 60.0) -> dict[str, Any]:
    path = out / f"{name}.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", name, "--quick", "--output", str(path), *extra],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    printed = json.loads(done.stdout.strip().splitlines()[-1])
    stored = json.loads(path.read_text())
    assert printed == stored
    return stored


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value >= 0


def _latency(figures: dict[str, Any]) -> None:
    assert figures["n"] > 0
    for key in ("p50", "p99", "p99.9", "max"):
        assert _number(figures[key]), key
    assert figures["p50"] <= figures["p99"] <= figures["p99.9"] <= figures["max"]
    assert len(figures["cdf_us"]) == len(figures["cdf_percent"])


def _machine(machine: dict[str, Any]) -> None:
    assert isinstance(machine["cores"], int)
    assert machine["python"].count(".") == 2
    assert machine["packages"]["pyzmq"]
    assert len(machine["load_avg"]) == 3
    assert isinstance(machine["damon_monitors"], list)


def _interruptions(report: dict[str, Any]) -> None:
    cores = report["per_core"]
    assert set(cores) == {str(cpu) for cpu in os.sched_getaffinity(0)}
    assert 0 < report["short_threshold_us"] <= report["threshold_us"]
    for core in cores.values():
        assert _number(core["per_s"]) and _number(core["ms_per_s"])
        assert _number(core["short_per_s"]) and _number(core["short_ms_per_s"])
        # The long ones are among the short ones.
        assert core["short_per_s"] >= core["per_s"]
        assert core["short_ms_per_s"] >= core["ms_per_s"]
        if core["per_s"]:  # every one counted lasted at least the threshold
            assert core["longest_us"] >= report["threshold_us"]
        elif core["short_per_s"]:
            assert report["short_threshold_us"] <= core["longest_us"]
            assert core["longest_us"] < report["threshold_us"] and core["ms_per_s"] == 0
        else:
            assert core["short_ms_per_s"] == core["ms_per_s"] == core["longest_us"] == 0


def test_system_benchmarks_quick(tmp_path: Path) -> None:
    # Enough for several of the bench's 50 ms rate samples at 150k+ msgs/s: a burst that
    # ends within one sample has no rate.
    frames = 24_000
    feed = run_bench(
        "feed", tmp_path, "--frames", str(frames), "--sets", "mixed", "--seconds", "0.8"
    )
    _machine(feed["machine_before"])
    _interruptions(feed["cpu_interruptions_before"])
    _interruptions(feed["cpu_interruptions_after"])
    for name in ("mixed",):
        run = feed["throughput"][name]
        # Everything the simulator wrote was routed: ticker/orderbook into shm, trades
        # to the subscriber, with no hole in the bus sequence.
        assert run["simulator_sent"] == frames
        assert sum(run["routed"].values()) == frames
        assert run["shm_written"]["ticker"] == run["routed"]["ticker"]
        assert run["bus_received"] == run["routed"]["trade"]
        assert run["bus_seq_gaps"] == 0
        assert isinstance(run["no_loss"], bool)
        assert _number(run["msgs_per_s"]) and _number(run["floor_msgs_per_s"])
        assert _number(run["vs_floor"])
    assert min(feed["throughput"]["mixed"]["routed"].values()) > 0
    if len(os.sched_getaffinity(0)) > 1:  # the feed on one core, the rest on the others
        one_core = feed["throughput"]["mixed_feed_on_one_core"]
        assert one_core["no_loss"] is True and len(one_core["feed_cpus"]) == 1
    entry = feed["latency"]["1000"]
    for path in ("floor_websocket_client_orjson", "wire_to_shm", "wire_to_zmq_worker"):
        _latency(entry[path]["latency_us"])
    assert entry["wire_to_shm"]["gaps"] == 0
    # A workers.Worker's shm hooks, woken by the feed's writes and polling every 2 ms.
    woken = entry["wire_to_worker_shm_hook"]
    polling = entry["wire_to_worker_shm_hook_polling_2ms"]
    for figures in (woken, polling):
        _latency(figures["latency_us"])
        assert _number(figures["cpu_seconds"])
    assert woken["shm_wakeups"] > 0 and polling["shm_wakeups"] == 0
    for part in ("wire_to_feed_recv_us", "feed_recv_to_reader_us"):
        assert _number(entry["wire_to_shm"][part]["p99"])
    # The low-latency setup: a busy-polling feed pinned to a core of its own.
    low = entry["low_latency_busy_poll_2000us_pinned"]
    for path in ("wire_to_shm", "wire_to_zmq_worker"):
        _latency(low[path]["latency_us"])
        assert low[path]["gaps"] == 0 and _number(low[path]["feed_cores_used"])
    # The simulator, the exchange's stand-in, runs ahead of the readers on its core.
    for figures in (low["wire_to_shm"], low["wire_to_shm_sleeping_reader"]):
        scheduling = figures["simulator_scheduling"]
        assert scheduling == "SCHED_FIFO 1" or scheduling.startswith("normal (SCHED_FIFO")
    # The same with a reader that sleeps on the heads until the writer publishes.
    sleeping = low["wire_to_shm_sleeping_reader"]
    _latency(sleeping["latency_us"])
    assert sleeping["gaps"] == 0 and sleeping["received"] > 0
    assert "wait_for_heads" in sleeping["shm_reader"]
    stages = feed["stages_ns"]
    for key in (
        "parse_mixed",
        "decode_orderbook",
        "shm_write_orderbook",
        "route_mixed",
        "bare_pipeline_floor_mixed",
    ):
        assert _number(stages[key]) and stages[key] > 0
    assert set(feed["goals"]) >= {"mixed_msgs_per_core_ge_150k", "mixed_ge_2_5x_floor"}

    batching = run_bench("batching", tmp_path)
    run = batching["runs"][0]
    assert run["upfeed"]["changes"] == 10
    assert 1 <= run["upfeed"]["requests_sent"] < 10
    assert run["upfeed"]["violations"] == 0 and run["upfeed"]["still_connected"]
    assert run["naive"]["requests_attempted"] == 10
    # Ten requests at once break the 5/s limit: the exchange says so and closes.
    assert "TOO_MANY_REQ" in run["naive"]["errors"]
    assert run["naive"]["converged"] is False

    reconnect = run_bench("reconnect", tmp_path, "--pause", "0.3")
    assert len(reconnect["rounds"]) == 2
    for key in ("noticed", "reconnected", "fresh_shm"):
        for each in reconnect["rounds"]:
            assert _number(each[key]), key
    assert reconnect["rounds"][0]["reconnected"] <= reconnect["rounds"][0]["fresh_shm"]

    memory = run_bench("memory", tmp_path, "--markets", "1,20", "--soak", "2", "--warm", "0.8")
    assert [r["markets"] for r in memory["runs"]] == [1, 20]
    for each in memory["runs"]:
        assert each["feed_rss_mb"] > each["floor_rss_mb"] > 0
        assert each["messages_routed"]["trade"] > 0
    assert memory["runs"][-1]["soak"]["samples"] >= 2
    assert _number(memory["imports_only_rss_mb"])

    done = subprocess.run(
        [sys.executable, "-m", "bench", "report", "--results", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    summary = (tmp_path / "summary.md").read_text()
    for heading in ("## Feed throughput", "## Latency", "## Subscription batching", "## Memory"):
        assert heading in summary
    for plot in ("latency_cdf_feed.png", "throughput_feed.png", "soak_rss.png"):
        assert (tmp_path / plot).read_bytes()[:4] == b"\x89PNG"
