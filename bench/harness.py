"""Shared parts of the whole-system benchmarks: processes, machine facts, percentiles, output.

Every system benchmark runs the simulator, the feed process and its consumers as
separate OS processes (clocks on one host), so what is measured is what a user runs:

* :class:`SimProcess`: ``python -m simulator serve`` with its URLs read from stdout;
* :class:`FeedRun`: ``python -m feedhandler run --config`` with a generated YAML, a
  unique shm prefix and a private ipc directory; ``control`` talks to it;
* :func:`machine_info`: cores, CPU model, Python, package versions, load average;
* :func:`cpu_interruptions`: what other tasks take from a thread that never sleeps;
* :func:`pin_process` / :func:`fifo_process`: a process's cores and scheduling policy;
* :func:`percentiles`: p50 / p99 / p99.9 / max of a sample (microseconds);
* :func:`write_result`: one JSON file per scenario under ``bench/results/``.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import platform
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import psutil
import yaml

from feedhandler.control import ControlClient, ControlTimeout
from simulator.control import ControlClient as SimControl

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent
SHM_DIR = Path("/dev/shm")
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
#: Upbit lists about this many markets (SPEC.md section 10); "every market" in the benchmarks.
ALL_MARKETS = 855

PACKAGES = (
    "numpy",
    "orjson",
    "msgspec",
    "pyzmq",
    "websocket-client",
    "websockets",
    "pydantic",
    "psutil",
    "matplotlib",
)


class BenchError(RuntimeError):
    """A benchmark could not run (a process did not start, a count never arrived)."""


def package_versions(names: Sequence[str] = PACKAGES) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def machine_info() -> dict[str, Any]:
    """What a figure depends on: cores, CPU, Python, package versions, background load."""
    return {
        "cores": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "packages": package_versions(),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "cpu_percent_1s": psutil.cpu_percent(interval=1.0),
        "damon_monitors": _damon(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


_SPIN_SOURCE = """
import json, os, sys, time
cpu, seconds, threshold_ns = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
os.sched_setaffinity(0, {cpu})
clock = time.perf_counter_ns
start = last = clock()
end = start + int(seconds * 1e9)
gaps = []
while last < end:
    now = clock()
    if now - last >= threshold_ns:
        gaps.append(now - last)
    last = now
print(json.dumps({"gaps_ns": gaps, "seconds": (last - start) / 1e9}))
"""


def cpu_interruptions(
    seconds: float = 2.0, threshold_us: float = 200.0, short_threshold_us: float = 30.0
) -> dict[str, Any]:
    """What other tasks (kernel threads, the VM's host) take from a thread that never
    sleeps, with every core busy at once, as in the low-latency setup: one spinning
    process pinned to each core; per core, the interruptions of ``threshold_us`` or more
    per second, the milliseconds per second they took, and the longest interruption of
    any size counted. A quiet machine shows none; each one delays whatever the feed
    receives meanwhile.

    ``short_per_s`` / ``short_ms_per_s`` count from ``short_threshold_us`` on: the size
    that sets a p99 of a path of tens of microseconds, as the low-latency one is. A record
    on such a path meets one with a probability of about its rate times the path's
    length on that core."""
    if not 0 < short_threshold_us <= threshold_us:
        raise ValueError(
            f"short_threshold_us must be > 0 and <= threshold_us ({threshold_us}),"
            f" got {short_threshold_us}"
        )
    cpus = sorted(os.sched_getaffinity(0))
    spinners = {
        cpu: subprocess.Popen(
            [
                sys.executable,
                "-c",
                _SPIN_SOURCE,
                str(cpu),
                str(seconds),
                str(int(short_threshold_us * 1e3)),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for cpu in cpus
    }
    per_core: dict[str, Any] = {}
    for cpu, process in spinners.items():
        out, _ = process.communicate(timeout=seconds + START_TIMEOUT)
        report = json.loads(out)
        short_us = np.asarray(report["gaps_ns"], dtype=np.float64) / 1e3
        gaps_us = short_us[short_us >= threshold_us]
        span = report["seconds"] or seconds
        per_core[str(cpu)] = {
            "per_s": round(gaps_us.size / span, 1),
            "ms_per_s": round(float(gaps_us.sum()) / 1e3 / span, 2),
            "longest_us": round(float(short_us.max()), 1) if short_us.size else 0.0,
            "short_per_s": round(short_us.size / span, 1),
            "short_ms_per_s": round(float(short_us.sum()) / 1e3 / span, 2),
        }
    return {
        "seconds": seconds,
        "threshold_us": threshold_us,
        "short_threshold_us": short_threshold_us,
        "per_core": per_core,
    }


def _damon() -> list[dict[str, Any]]:
    """Running DAMON monitors (``kdamond``): on the VMs seen here one samples memory
    every 0.5 s and runs about 1 ms each time, which shows as a millisecond tail."""
    found = []
    for state in sorted(Path("/sys/kernel/mm/damon/admin/kdamonds").glob("*/state")):
        with contextlib.suppress(OSError, ValueError):
            if state.read_text().strip() != "on":
                continue
            intervals = state.parent / "contexts" / "0" / "monitoring_attrs" / "intervals"
            found.append(
                {
                    "operations": (state.parent / "contexts/0/operations").read_text().strip(),
                    "sample_us": int((intervals / "sample_us").read_text()),
                }
            )
    return found


def percentiles(values_us: Sequence[float] | np.ndarray) -> dict[str, float]:
    """p50 / p99 / p99.9 / max (and n) of a latency sample in microseconds."""
    arr = np.asarray(values_us, dtype=np.float64)
    if arr.size == 0:
        return {"n": 0}
    p50, p99, p999 = np.percentile(arr, [50, 99, 99.9])
    return {
        "n": int(arr.size),
        "p50": round(float(p50), 1),
        "p99": round(float(p99), 1),
        "p99.9": round(float(p999), 1),
        "max": round(float(arr.max()), 1),
    }


def ratio(value: float | None, floor: float | None) -> float | None:
    if value is None or not floor:
        return None
    return round(value / floor, 3)


def write_result(name: str, result: dict[str, Any], output: str | None = None) -> Path:
    path = Path(output) if output else RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def emit(name: str, result: dict[str, Any], output: str | None = None) -> int:
    """Write the result file and print the JSON on one line (what ``python -m bench`` shows)."""
    write_result(name, result, output)
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


def _stop_process(process: subprocess.Popen[Any], timeout: float = STOP_TIMEOUT) -> int | None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)
    return process.returncode


def _stop_group(process: subprocess.Popen[Any]) -> None:
    """SIGTERM the child's process group, then SIGKILL whatever is left of it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(STOP_TIMEOUT / 2)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(STOP_TIMEOUT)
    # Helpers of the library (pyupbit's socket process) may outlive the runner itself.
    time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


class SimProcess:
    """``python -m simulator serve`` in its own process; URLs from its first stdout line."""

    def __init__(
        self, *, markets: int = 20, rate: float = 0.0, stamp: bool = False, seed: int = 1
    ) -> None:
        argv = [
            sys.executable,
            "-m",
            "simulator",
            "serve",
            "--markets",
            str(markets),
            "--rate",
            str(rate),
            "--seed",
            str(seed),
            "--idle-timeout",
            "600",
        ]
        if stamp:
            argv.append("--stamp")
        self.process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd=REPO)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            _stop_process(self.process)
            raise BenchError(f"simulator exited before reporting its URLs: {argv}")
        self.urls: dict[str, str] = json.loads(line)
        self.pid = self.process.pid
        self.control = SimControl(self.urls["control_url"], timeout=60.0)

    def close(self) -> None:
        _stop_process(self.process)
        if self.process.stdout is not None:
            self.process.stdout.close()

    def __enter__(self) -> SimProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def feed_config(
    subscriptions: list[dict[str, Any]],
    *,
    backfill: bool = False,
    base_delay: float = 0.2,
    stall_seconds: float = 10.0,
    sndhwm: int | None = None,
    capacity: int | None = None,
    busy_poll_us: int = 0,
) -> dict[str, Any]:
    """A feed YAML body for a benchmark (URLs, prefix and ipc directory come from the env).

    ``sndhwm`` and ``capacity`` (shm ring records) default to the product's defaults: a
    bigger ring or bus queue shows up in RSS as soon as it is touched.
    """
    shm_section = (
        {} if capacity is None else {"ticker_capacity": capacity, "orderbook_capacity": capacity}
    )
    return {
        "subscriptions": subscriptions,
        "connection": {"connect_timeout": 5, "busy_poll_us": busy_poll_us},
        "shm": shm_section,
        "zmq": {} if sndhwm is None else {"sndhwm": sndhwm},
        "reconnection": {"base_delay": base_delay, "max_delay": 2.0},
        "health": {"stall_seconds": stall_seconds, "memory_usage_mb": 1024},
        "backfill": {"enabled": backfill},
        "logging": {"level": "WARNING", "format": "kv"},
    }


class FeedRun:
    """The feed process (``python -m feedhandler run``) pointed at a simulator.

    ``prefix`` names its shm segments, ``pub_endpoint`` its bus; ``control`` is a
    :class:`feedhandler.control.ControlClient`. ``close`` stops it with SIGTERM and
    removes whatever it left (segments, ipc directory).
    """

    def __init__(self, sim: SimProcess, body: dict[str, Any], *, ready_codes: int = 1) -> None:
        self.prefix = f"ufb-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.workdir = Path(tempfile.mkdtemp(prefix="ufb-", dir="/tmp"))
        self.config_path = self.workdir / "feed.yaml"
        self.config_path.write_text(yaml.safe_dump(body))
        runtime = self.workdir / "run"
        self.pub_endpoint = f"ipc://{runtime}/{self.prefix}.pub"
        self.control_endpoint = f"ipc://{runtime}/{self.prefix}.ctl"
        env = {k: v for k, v in os.environ.items() if not k.startswith("UPFEED__")}
        env.update(
            {
                "UPFEED__UPBIT__PUBLIC_URL": sim.urls["public_url"],
                "UPFEED__UPBIT__PRIVATE_URL": sim.urls["private_url"],
                "UPFEED__UPBIT__REST_URL": sim.urls["rest_url"],
                "UPFEED__SHM__PREFIX": self.prefix,
                "UPFEED__ZMQ__RUNTIME_DIR": str(runtime),
            }
        )
        self.log_path = self.workdir / "feed.log"
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "feedhandler", "run", "--config", str(self.config_path)],
            env=env,
            cwd=REPO,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.pid = self.process.pid
        self.control = ControlClient(self.control_endpoint, timeout=5.0)
        try:
            self._wait_ready(ready_codes)
        except BaseException:
            self.close()
            raise

    def _wait_ready(self, ready_codes: int) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchError(f"feed exited with {self.process.returncode}: {self.log_tail()}")
            if (SHM_DIR / f"{self.prefix}.ticker").exists():
                try:
                    subs = self.control.request("subscriptions").get("subscriptions", [])
                except ControlTimeout:
                    subs = []
                if ready_codes == 0 or any(row.get("last_message") for row in subs):
                    return
            time.sleep(0.05)
        raise BenchError(f"feed not ready within {START_TIMEOUT} s: {self.log_tail()}")

    def log_tail(self, lines: int = 10) -> str:
        self._log.flush()
        return " | ".join(self.log_path.read_text().splitlines()[-lines:])

    def metrics(self) -> dict[str, Any]:
        return self.control.request("metrics")

    def heads(self) -> dict[str, int]:
        reply = self.control.request("segments")
        return {seg["kind"]: int(seg["head"]) for seg in reply["segments"]}

    def rss_mb(self) -> float:
        return psutil.Process(self.pid).memory_info().rss / 1e6

    def cpu_seconds(self) -> float:
        times = psutil.Process(self.pid).cpu_times()
        return times.user + times.system

    def close(self) -> None:
        _stop_process(self.process)
        self.control.close()
        self._log.close()
        for kind in ("ticker", "orderbook"):
            (SHM_DIR / f"{self.prefix}.{kind}").unlink(missing_ok=True)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> FeedRun:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def wait_for(predicate: Any, timeout: float, interval: float = 0.005, what: str = "") -> Any:
    """Poll ``predicate`` until truthy; raise BenchError naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise BenchError(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(interval)


@contextlib.contextmanager
def child(argv: list[str], env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[str]]:
    """A consumer process whose stdout carries JSON lines; stopped on exit."""
    # Its own session, so that a library's helper processes are stopped with it.
    process = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stdin=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=env,
        start_new_session=True,
    )
    try:
        yield process
    finally:
        _stop_group(process)
        for stream in (process.stdout, process.stdin):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


def read_json_line(process: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    """The next JSON line a child prints, within ``timeout`` seconds."""
    assert process.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(process.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise BenchError(f"child {process.args!r} printed nothing within {timeout} s")
    line = process.stdout.readline()
    if not line:
        raise BenchError(f"child {process.args!r} exited ({process.poll()}) without output")
    return json.loads(line)


def thread_ids(pid: int) -> list[int]:
    """The ids of ``pid``'s threads now (a thread may end before the caller uses its id)."""
    return [int(name) for name in os.listdir(f"/proc/{pid}/task")]


def pin_process(pid: int, cpus: set[int]) -> dict[int, set[int]]:
    """Restrict every thread of ``pid`` to ``cpus``; returns each thread's previous CPUs
    (for :func:`unpin_process`). Threads started later inherit their creator's set."""
    before: dict[int, set[int]] = {}
    for tid in thread_ids(pid):
        with contextlib.suppress(ProcessLookupError):
            before[tid] = os.sched_getaffinity(tid)
            os.sched_setaffinity(tid, cpus)
    return before


def unpin_process(before: dict[int, set[int]]) -> None:
    for tid, cpus in before.items():
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(tid, cpus)


def fifo_process(pid: int, priority: int = 1) -> dict[int, tuple[int, int]]:
    """Runs every thread of ``pid`` under SCHED_FIFO at ``priority``: on its core it then
    runs as soon as it wakes and no normal task preempts it. Returns each thread's
    previous policy and priority (for :func:`restore_policies`). Raises PermissionError
    (with nothing changed) where this process may not raise a priority (no root,
    CAP_SYS_NICE or RLIMIT_RTPRIO)."""
    before: dict[int, tuple[int, int]] = {}
    try:
        for tid in thread_ids(pid):
            with contextlib.suppress(ProcessLookupError):
                previous = (os.sched_getscheduler(tid), os.sched_getparam(tid).sched_priority)
                os.sched_setscheduler(tid, os.SCHED_FIFO, os.sched_param(priority))
                before[tid] = previous
    except PermissionError:
        restore_policies(before)
        raise
    return before


def restore_policies(before: dict[int, tuple[int, int]]) -> None:
    for tid, (policy, priority) in before.items():
        with contextlib.suppress(ProcessLookupError):
            os.sched_setscheduler(tid, policy, os.sched_param(priority))


class ConsumerError(BenchError):
    """A consumer process reported that it cannot run (``{"ready": false, "error": ...}``)."""


class Consumer:
    """A child speaking the consumers' line protocol: ready, then reset / report / stop.

    Used for :mod:`bench.consumers` and for the peer runners in ``bench/peers/``. The
    child runs in its own session so that helper processes a library forks are stopped
    with it.
    """

    def __init__(
        self, argv: list[str], *, ready_timeout: float = 30.0, env: dict[str, str] | None = None
    ) -> None:
        self.argv = argv
        self._stack = contextlib.ExitStack()
        self.process = self._stack.enter_context(child(argv, env))
        self.pid = self.process.pid
        try:
            hello = read_json_line(self.process, ready_timeout)
        except BaseException:
            self.close()
            raise
        if not hello.get("ready"):
            self.close()
            raise ConsumerError(str(hello.get("error", hello)))
        self.hello = hello

    def command(self, command: str, timeout: float = 15.0) -> dict[str, Any]:
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(command + "\n")
            self.process.stdin.flush()
        except OSError as exc:
            raise BenchError(f"{self.argv[1]} is gone ({self.process.poll()}): {exc}") from exc
        return read_json_line(self.process, timeout)

    def rss_mb(self, with_children: bool = True) -> float:
        proc = psutil.Process(self.pid)
        total = proc.memory_info().rss
        if with_children:
            total += sum(c.memory_info().rss for c in proc.children(recursive=True))
        return total / 1e6

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> Consumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def new_connection(sim: SimProcess, before: Sequence[int], timeout: float = 10.0) -> int:
    """The id of the simulator connection that appeared since ``before`` was taken."""
    known = set(before)

    def fresh() -> list[int]:
        return [c for c in sim.control.status()["connections"] if c not in known]

    found = wait_for(fresh, timeout, 0.02, "a new simulator connection")
    return int(max(found))


def shm_consumer(
    prefix: str,
    kinds: str = "ticker,orderbook",
    sleep_us: float = 0.0,
    wait_spin_us: float | None = None,
) -> Consumer:
    """A shm reader process; ``sleep_us`` > 0 sleeps between idle checks, else it yields;
    ``wait_spin_us`` given: it sleeps on the heads until the writer publishes instead,
    looking that long first."""
    argv = [sys.executable, "-m", "bench.consumers", "shm", "--prefix", prefix, "--kinds", kinds]
    if wait_spin_us is not None:
        return Consumer([*argv, "--wait", "--wait-spin-us", str(wait_spin_us)])
    return Consumer([*argv, "--sleep-us", str(sleep_us)])


def worker_consumer(
    control_endpoint: str, codes: Sequence[str], shm_poll_s: float | None = None
) -> Consumer:
    """A :class:`workers.Worker` of ticker and orderbook timing its hooks; it looks at shm
    when the feed writes, or every ``shm_poll_s`` seconds."""
    argv = [sys.executable, "-m", "bench.consumers", "worker", "--control", control_endpoint]
    argv += ["--codes", ",".join(codes)]
    if shm_poll_s is not None:
        argv += ["--shm-poll-s", str(shm_poll_s)]
    return Consumer(argv)


def zmq_consumer(endpoint: str, topic: str = "trade.") -> Consumer:
    return Consumer(
        [sys.executable, "-m", "bench.consumers", "zmq", "--endpoint", endpoint, "--topic", topic]
    )


PEERS_DIR = Path(__file__).resolve().parent / "peers"


def floor_argv(
    sim: SimProcess,
    codes: Sequence[str],
    types: str,
    *,
    book_depth: int = 0,
    python: str = sys.executable,
) -> list[str]:
    """Command line of the plain websocket-client + orjson loop (bench/peers/floor.py)."""
    return [
        python,
        str(PEERS_DIR / "floor.py"),
        "--url",
        sim.urls["public_url"],
        "--codes",
        ",".join(codes),
        "--types",
        types,
        "--book-depth",
        str(book_depth),
    ]


def floor_consumer(
    sim: SimProcess, codes: Sequence[str], types: str, *, book_depth: int = 0
) -> Consumer:
    """The floor loop on ``codes``, started and ready."""
    return Consumer(floor_argv(sim, codes, types, book_depth=book_depth))
