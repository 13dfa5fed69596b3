"""The bench harness's process controls, on a real child process with two threads."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from bench.harness import fifo_process, restore_policies

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
