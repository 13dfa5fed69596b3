"""The bench harness's process controls, on a real child process with two threads, and its
measure of what the machine takes from a spinning thread."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from bench.harness import (
    cpu_interruptions,
    fifo_process,
    pin_process,
    restore_policies,
    thread_ids,
    unpin_process,
)

pytestmark = pytest.mark.timeout(30)

CHILD = """
import sys, threading, time
threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def child() -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        [sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None and process.stdout.readline() == "ready\n"
        yield process
    finally:
        process.kill()
        process.wait(timeout=10)


def policies(pid: int) -> dict[int, tuple[int, int]]:
    return {
        int(tid): (os.sched_getscheduler(int(tid)), os.sched_getparam(int(tid)).sched_priority)
        for tid in os.listdir(f"/proc/{pid}/task")
    }


def test_fifo_process_raises_every_thread_and_restores_what_it_found(
    child: subprocess.Popen[str],
) -> None:
    found = policies(child.pid)
    assert len(found) == 2
    assert all(policy == (os.SCHED_OTHER, 0) for policy in found.values())
    try:
        before = fifo_process(child.pid, priority=2)
    except PermissionError:
        # Refused as a whole: no thread is left half-changed.
        assert policies(child.pid) == found
        return
    assert before == found
    assert set(policies(child.pid).values()) == {(os.SCHED_FIFO, 2)}
    restore_policies(before)
    assert policies(child.pid) == found


def test_restoring_a_process_that_is_gone_is_not_an_error(
    child: subprocess.Popen[str],
) -> None:
    found = policies(child.pid)
    child.kill()
    child.wait(timeout=10)
    restore_policies(found)


def test_pin_process_confines_every_thread_and_unpin_gives_back_each_ones_cpus(
    child: subprocess.Popen[str],
) -> None:
    tids = thread_ids(child.pid)
    assert len(tids) == 2 and child.pid in tids
    cpus = sorted(os.sched_getaffinity(0))
    before = pin_process(child.pid, {cpus[-1]})
    assert sorted(before) == sorted(tids)
    assert all(os.sched_getaffinity(tid) == {cpus[-1]} for tid in tids)
    unpin_process(before)
    assert all(os.sched_getaffinity(tid) == before[tid] for tid in tids)


def test_cpu_interruptions_counts_the_long_ones_among_the_short_ones() -> None:
    report = cpu_interruptions(0.3, threshold_us=200.0, short_threshold_us=30.0)
    assert report["threshold_us"] == 200.0 and report["short_threshold_us"] == 30.0
    assert set(report["per_core"]) == {str(cpu) for cpu in os.sched_getaffinity(0)}
    for core in report["per_core"].values():
        assert core["short_per_s"] >= core["per_s"] >= 0
        assert core["short_ms_per_s"] >= core["ms_per_s"] >= 0
        if core["short_per_s"]:
            assert core["longest_us"] >= 30.0
        if core["per_s"]:
            assert core["longest_us"] >= 200.0


@pytest.mark.parametrize("short", [0.0, -1.0, 201.0])
def test_cpu_interruptions_refuses_a_short_threshold_outside_zero_to_the_long_one(
    short: float,
) -> None:
    with pytest.raises(ValueError, match="short_threshold_us"):
        cpu_interruptions(0.1, threshold_us=200.0, short_threshold_us=short)
