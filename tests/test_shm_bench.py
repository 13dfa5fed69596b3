"""bench.shm runs end to end at a tiny size and reports every figure it promises."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import shm as shm_bench


@pytest.mark.timeout(90)
def test_bench_shm_reports_costs_latencies_and_baseline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "shm.json"
    argv = ["--seconds", "0.3", "--rate", "2000", "--number", "200", "--repeats", "1"]
    assert shm_bench.main([*argv, "--output", str(output)]) == 0
    report = json.loads(output.read_text())
    assert json.loads(capsys.readouterr().out) == report
    assert set(report["write_ns"]) >= {"ticker", "orderbook15", "orderbook30"}
    assert "baseline_numpy_fieldwise_ticker" in report["write_ns"]
    floors = {"floor_pack_into_ticker", "floor_pack_into_orderbook15"}
    assert floors | {"floor_seqlocked_ticker_from_struct"} <= set(report["write_ns"])
    assert set(report["read_ns"]) >= {"latest_ticker", "latest_orderbook15"}
    assert all(value > 0 for value in (*report["write_ns"].values(), *report["read_ns"].values()))
    visibility = report["visibility_us"]
    # Every update sent at 2000/s for 0.3 s is seen once by each consumer.
    for consumer in (
        "shm",
        "shm_write_call",
        "shm_spinning_writer",
        "shm_spinning_writer_write_call",
        "baseline_mp_queue_pickle",
    ):
        assert 500 <= visibility[consumer]["n"] <= 700, visibility
        assert 0 < visibility[consumer]["p50"] <= visibility[consumer]["p99"]
    assert set(report["within_target"]) == set(report["targets"])
