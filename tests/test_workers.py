import os
import random
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import orjson
import pytest
import zmq

from feedhandler.control import ControlServer, WorkerRegistry
from feedhandler.publisher import (
    CurveClientAuthorizer,
    CurveKeys,
    Publisher,
    encode_frame,
    ensure_runtime_dir,
)
from feedhandler.upbit import Subscription
from workers import Supervisor, Trade, Worker, WorkerError, WorkerSpec
from workers.events import ASSET_DECODER, ORDER_DECODER, TRADE_DECODER

REPO = Path(__file__).resolve().parent.parent
SAMPLES = Path("/work/shared/upbit/samples")
WORKERS_RUN = (sys.executable, "-m", "workers", "run")
WORKERS_SUPERVISE = (sys.executable, "-m", "workers", "supervise")
BIG_SEQUENTIAL_ID = 17303368620800007  # odd and > 2**53: a float would change it


# ------------------------------------------------- workers run in child processes


def emit(**fields):
    sys.stdout.write(orjson.dumps(fields).decode() + "\n")
    sys.stdout.flush()


class RecordingWorker(Worker):
    """Prints one JSON line per hook call, for the test process to read."""

    types = ("trade", "myAsset")

    def on_start(self):
        emit(ev="start", worker_id=self.worker_id, pub=self.hello.get("pub_endpoint"))

    def on_trade(self, event: Trade):
        assert isinstance(event.trade_price, Decimal)
        emit(
            ev="trade",
            code=event.code,
            seq=self.current.seq,
            sid=event.sequential_id,
            price=str(event.trade_price),
            volume=str(event.trade_volume),
            buy=event.is_buy,
        )

    def on_asset(self, event):
        emit(ev="asset", balance=str(event.assets[0].balance))

    def on_sys(self, topic, payload):
        emit(ev="sys", topic=topic, payload=payload)

    def on_gap(self, expected_seq, got_seq):
        emit(ev="gap", topic=self.current_topic, expected=expected_seq, got=got_seq)

    def on_stop(self):
        emit(ev="stop", received=self.received, gaps=self.gaps)


class CrashingWorker(Worker):
    types = ("trade",)

    def on_start(self):
        raise RuntimeError("strategy bug on start")


# ------------------------------------------------------------------- harness


class ChildLines:
    """Reads a child's stdout JSON lines with deadlines (never blocks forever)."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self.events: list[dict] = []
        self._buffer = b""
        self._selector = selectors.DefaultSelector()
        self._selector.register(proc.stdout, selectors.EVENT_READ)

    def pump(self, timeout: float) -> None:
        for _ in self._selector.select(timeout):
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        self.events += [orjson.loads(line) for line in lines if line.startswith(b"{")]

    def wait_for(self, predicate, timeout: float = 10.0, what: str = "event"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events:
                if predicate(event):
                    return event
            if self.proc.poll() is not None:
                self.pump(0.05)
                for event in self.events:
                    if predicate(event):
                        return event
                raise AssertionError(f"child exited ({self.proc.returncode}) before {what}")
            self.pump(0.05)
        raise AssertionError(f"timed out waiting for {what}; got {self.events[-5:]}")

    def of(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["ev"] == kind]

    def close(self):
        self._selector.close()


def spawn_worker(target, symbols, control, *extra, stderr_path):
    with open(stderr_path, "ab") as stderr:
        return subprocess.Popen(
            [*WORKERS_RUN, target, "--symbols", symbols, "--control", control, *extra],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=stderr,
        )


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(5)
    if proc.stdout:
        proc.stdout.close()


def wait_until(predicate, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def run_dir():
    root = Path(tempfile.mkdtemp(prefix="upf-wrk-"))
    run = ensure_runtime_dir(root / "run")
    yield run
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def ctx():
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


@pytest.fixture
def feed(run_dir, ctx):
    """A real Publisher and ControlServer, as the feed process runs them."""
    expired: list[str] = []
    changes: list[list[Subscription]] = []
    registry = WorkerRegistry(
        on_expired=expired.append, on_change=lambda: changes.append(registry.desired())
    )
    publisher = Publisher(f"ipc://{run_dir}/pub.sock", context=ctx)
    hellos = []
    hello_info = {"pub_endpoint": publisher.endpoint, "shm_prefix": "upfeed-test-none"}

    def hello():
        hellos.append(time.monotonic())
        return dict(hello_info)

    server = ControlServer(f"ipc://{run_dir}/ctl.sock", registry=registry, hello=hello, context=ctx)
    server.start()
    yield SimpleNamespace(
        publisher=publisher,
        server=server,
        registry=registry,
        expired=expired,
        hellos=hellos,
        changes=changes,
        hello_info=hello_info,
    )
    server.stop()
    publisher.close()


def trade_json(code, i):
    return orjson.dumps(
        {
            "type": "trade",
            "code": code,
            "trade_price": f"1.16539E{i % 3 + 6}",
            "trade_volume": f"0.{i:08d}",
            "ask_bid": "BID" if i % 2 else "ASK",
            "sequential_id": BIG_SEQUENTIAL_ID + i,
            "trade_timestamp": 1730336862047 + i,
            "timestamp": 1730336862082 + i,
            "stream_type": "REALTIME",
        }
    )


def warm_up(send_sys, lines: ChildLines, timeout=10.0):
    """Publish sys events until the worker's SUB has joined (ZeroMQ's slow joiner)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        send_sys()
        lines.pump(0.05)
        if lines.of("sys"):
            return
    raise AssertionError("the worker never received a sys event")


# --------------------------------------------------------------------- tests


def test_worker_process_gets_every_trade_in_order_and_unregisters_on_sigterm(feed, run_dir):
    publisher = feed.publisher
    server = feed.server
    registry = feed.registry
    expired = feed.expired
    proc = spawn_worker(
        "tests.test_workers:RecordingWorker",
        "KRW-BTC,KRW-ETH",
        server.endpoint,
        "--worker-id",
        "rec-1",
        "--lease",
        "30",
        stderr_path=run_dir / "stderr",
    )
    lines = ChildLines(proc)
    try:
        started = lines.wait_for(lambda e: e["ev"] == "start", what="worker start")
        assert started["worker_id"] == "rec-1"
        assert started["pub"] == publisher.endpoint
        assert registry.desired() == [
            Subscription("myAsset"),
            Subscription("trade", ("KRW-BTC", "KRW-ETH")),
        ]
        warm_up(lambda: publisher.publish_sys("warmup", {"n": 1}), lines)

        sent = {"KRW-BTC": [], "KRW-ETH": []}
        for i in range(600):
            code = ("KRW-BTC", "KRW-ETH", "KRW-XRP")[i % 3]
            data = trade_json(code, i)
            publisher.publish(f"trade.{code}".encode(), data, time.time_ns())
            if code in sent:
                sent[code].append(orjson.loads(data))
        balance = "1386929.37231066771348207123"
        asset = b'{"type":"myAsset","assets":[{"currency":"KRW","balance":"%s","locked":"0"}]}'
        publisher.publish(b"myAsset", asset % balance.encode(), time.time_ns())
        lines.wait_for(lambda e: e["ev"] == "asset", what="the myAsset event")

        trades = lines.of("trade")
        assert len(trades) == 400, "every KRW-BTC/KRW-ETH trade, none of KRW-XRP"
        for code, expected in sent.items():
            got = [t for t in trades if t["code"] == code]
            assert [t["seq"] for t in got] == list(range(1, 201))
            assert [t["sid"] for t in got] == [d["sequential_id"] for d in expected]
            assert [Decimal(t["price"]) for t in got] == [
                Decimal(d["trade_price"]) for d in expected
            ]
            assert [Decimal(t["volume"]) for t in got] == [
                Decimal(d["trade_volume"]) for d in expected
            ]
            assert [t["buy"] for t in got] == [d["ask_bid"] == "BID" for d in expected]
        assert lines.of("asset")[0]["balance"] == balance
        assert not lines.of("gap")

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        lines.pump(0.1)
        assert lines.of("stop")[0]["gaps"] == 0
        assert "rec-1" not in registry
        assert expired == [], "the worker left by unregistering, not by lease expiry"
        assert registry.desired() == []
    finally:
        lines.close()
        stop_process(proc)


def test_worker_detects_an_injected_seq_gap_and_reports_it_on_renew(run_dir, ctx):
    # The feed side here is a bare PUB socket sending hand-made frames with a hole.
    pub = ctx.socket(zmq.PUB)
    pub.linger = 0
    pub.bind(f"ipc://{run_dir}/raw-pub.sock")
    registry = WorkerRegistry()
    hello = {"pub_endpoint": f"ipc://{run_dir}/raw-pub.sock"}
    server = ControlServer(
        f"ipc://{run_dir}/ctl.sock", registry=registry, hello=lambda: hello, context=ctx
    )
    server.start()
    proc = spawn_worker(
        "tests.test_workers:RecordingWorker",
        "KRW-BTC",
        server.endpoint,
        "--worker-id",
        "gappy",
        "--lease",
        "0.6",
        stderr_path=run_dir / "stderr",
    )
    lines = ChildLines(proc)
    try:
        lines.wait_for(lambda e: e["ev"] == "start", what="worker start")
        warm = iter(range(1, 10_000))
        warm_up(lambda: pub.send(encode_frame(b"sys.warmup", next(warm), 1, b"{}")), lines)
        for seq in (1, 2, 3, 7, 8):
            pub.send(encode_frame(b"trade.KRW-BTC", seq, 1, trade_json("KRW-BTC", seq)))
        lines.wait_for(lambda e: e["ev"] == "trade" and e["seq"] == 8, what="the last trade")
        assert [t["seq"] for t in lines.of("trade")] == [1, 2, 3, 7, 8]
        assert lines.of("gap") == [{"ev": "gap", "topic": "trade.KRW-BTC", "expected": 4, "got": 7}]
        # Renewals (every lease/3) carry the loss count to the feed's status.
        wait_until(
            lambda: any(w["gaps"] == 3 for w in registry.workers()),
            what="the renew that reports 3 lost messages",
        )
        assert registry.totals()["gaps"] == 3
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        lines.close()
        stop_process(proc)
        server.stop()
        pub.close(0)


def test_sigkilled_worker_loses_its_lease_and_the_union_shrinks(feed, run_dir):
    server = feed.server
    registry = feed.registry
    expired = feed.expired
    changes = feed.changes
    registry.register("config", [Subscription("trade", ("KRW-ETH",))], 3600)
    proc = spawn_worker(
        "tests.test_workers:RecordingWorker",
        "KRW-BTC",
        server.endpoint,
        "--worker-id",
        "doomed",
        "--lease",
        "0.5",
        stderr_path=run_dir / "stderr",
    )
    lines = ChildLines(proc)
    try:
        lines.wait_for(lambda e: e["ev"] == "start", what="worker start")
        assert Subscription("trade", ("KRW-BTC", "KRW-ETH")) in registry.desired()
        proc.kill()
        proc.wait(5)
        wait_until(lambda: expired == ["doomed"], timeout=5, what="lease expiry")
        assert registry.desired() == [Subscription("trade", ("KRW-ETH",))]
        assert changes[-1] == [Subscription("trade", ("KRW-ETH",))]
    finally:
        lines.close()
        stop_process(proc)


def test_supervisor_restarts_a_crashing_worker_then_gives_up(feed):
    server = feed.server
    registry = feed.registry
    hellos = feed.hellos
    supervisor = Supervisor(
        [WorkerSpec("tests.test_workers:CrashingWorker", ("KRW-BTC",), name="crasher")],
        control_endpoint=server.endpoint,
        max_restarts=2,
        backoff_base=0.05,
        backoff_cap=0.2,
        rng=random.Random(7),
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    stats = supervisor.run()["crasher"]
    assert stats["restarts"] == 2
    assert stats["done"] is True
    assert stats["exit_codes"] == [1, 1, 1]
    assert len(hellos) == 3, "each run registered once before crashing"
    assert len(registry) == 0, "a crashing worker unregisters on its way out"


def test_supervisor_stop_terminates_workers_cleanly(feed):
    server = feed.server
    registry = feed.registry
    expired = feed.expired
    supervisor = Supervisor(
        [WorkerSpec("tests.test_workers:RecordingWorker", ("KRW-BTC",), name="steady")],
        control_endpoint=server.endpoint,
        stop_grace_s=5,
    )
    result = {}
    thread = threading.Thread(target=lambda: result.update(supervisor.run()))
    thread.start()
    try:
        wait_until(lambda: "steady" in registry, what="the supervised worker to register")
    finally:
        supervisor.stop()
        thread.join(15)
    assert not thread.is_alive()
    assert result["steady"]["exit_codes"] == [0]
    assert result["steady"]["restarts"] == 0
    assert "steady" not in registry
    assert expired == []


def test_restart_delays_grow_exponentially_with_jitter():
    supervisor = Supervisor(
        [WorkerSpec("a.b:C", ("KRW-BTC",))],
        backoff_base=1.0,
        backoff_cap=10.0,
        rng=random.Random(3),
    )
    delays = [supervisor.restart_delay(n) for n in range(1, 8)]
    for failures, delay in enumerate(delays, start=1):
        nominal = min(2.0 ** (failures - 1), 10.0)
        assert 0.5 * nominal <= delay <= min(1.5 * nominal, 10.0)
    assert delays[3] > delays[0]


def test_worker_spec_parsing():
    spec = WorkerSpec.parse("workers.examples.spread:SpreadMonitor=KRW-BTC,KRW-ETH@spread", 0)
    assert spec == WorkerSpec(
        "workers.examples.spread:SpreadMonitor", ("KRW-BTC", "KRW-ETH"), "spread"
    )
    assert WorkerSpec.parse("a.b:C=KRW-BTC", 3).name == "C-3"
    with pytest.raises(ValueError, match="must look like"):
        WorkerSpec.parse("a.b:C")
    with pytest.raises(ValueError, match=r"package\.module:Class"):
        WorkerSpec("nocolon", ("KRW-BTC",))


def test_run_refuses_a_target_that_is_not_a_worker(run_dir):
    proc = subprocess.run(
        [*WORKERS_RUN, "os.path:join", "--symbols", "KRW-BTC", "--control", f"ipc://{run_dir}/x"],
        cwd=REPO,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 2
    assert b"not a workers.Worker subclass" in proc.stderr


def test_worker_without_feed_fails_with_a_clear_error(run_dir):
    worker = RecordingWorker(
        ["KRW-BTC"], control_endpoint=f"ipc://{run_dir}/absent.sock", control_timeout=0.2
    )
    with pytest.raises(WorkerError, match="did not answer"):
        worker.run(duration=1)


# ------------------------------------------------------------------ events


@pytest.mark.parametrize(
    ("sample", "decoder"),
    [
        ("trade_default_KRW-BTC_1.json", TRADE_DECODER),
        ("trade_default_KRW-BTC_2.json", TRADE_DECODER),
        ("myorder_default_KRW-BTC_1.json", ORDER_DECODER),
        ("myorder_default_SGD-XRP_2.json", ORDER_DECODER),
        ("myasset_default_KRW_1.json", ASSET_DECODER),
    ],
)
def test_events_decode_real_samples_exactly_from_numbers_and_strings(sample, decoder):
    raw = (SAMPLES / sample).read_bytes()
    as_numbers = decoder.decode(b'{"seq":1,"recv_ns":2,"origin_ns":3,"data":' + raw + b"}")
    assert (as_numbers.seq, as_numbers.recv_ns, as_numbers.origin_ns) == (1, 2, 3)
    # The feed sends decimals as strings: the same event must come out.
    parsed = orjson.loads(raw)

    def stringify(value):
        if isinstance(value, float):
            return repr(value)
        if isinstance(value, dict):
            return {k: stringify(v) for k, v in value.items()}
        if isinstance(value, list):
            return [stringify(v) for v in value]
        return value

    text_raw = orjson.dumps(stringify(parsed))
    as_strings = decoder.decode(b'{"seq":1,"recv_ns":2,"data":' + text_raw + b"}")
    if "myasset" in sample:
        assert as_numbers.data.assets[0].balance == Decimal("1386929.37231066771348207123")
    else:
        assert as_strings.data == as_numbers.data


# ------------------------------------------------------------------ examples


class RunningWorker:
    """A worker running on a thread of the test process, stopped and joined on exit."""

    def __init__(self, worker: Worker):
        self.worker = worker
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        try:
            self.worker.run(self.stop, duration=60)
        except BaseException as exc:
            self.error = exc
            raise

    def __enter__(self):
        self.thread.start()
        return self.worker

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(10)
        assert not self.thread.is_alive(), "worker thread did not stop"
        assert self.error is None, self.error


def warm_up_in_process(publisher, worker, timeout=10.0):
    deadline = time.monotonic() + timeout
    while worker.received == 0:
        assert time.monotonic() < deadline, "the worker never joined the bus"
        publisher.publish_sys("warmup", {})
        time.sleep(0.02)


def test_trade_flow_vwap_and_sides_are_exact(feed, ctx):
    from workers.examples.vwap import TradeFlow

    publisher = feed.publisher
    server = feed.server
    registry = feed.registry
    flow = TradeFlow(["KRW-BTC", "KRW-ETH"], control_endpoint=server.endpoint, context=ctx)
    trades = [("KRW-BTC", "100.1", "0.3", "BID"), ("KRW-BTC", "100.2", "0.1", "ASK")]
    trades += [("KRW-ETH", "7.5E3", "2", "BID"), ("KRW-BTC", "99.9", "0.00000001", "BID")]
    with RunningWorker(flow):
        warm_up_in_process(publisher, flow)
        for i, (code, price, volume, side) in enumerate(trades):
            data = orjson.loads(trade_json(code, i))
            data.update(trade_price=price, trade_volume=volume, ask_bid=side)
            publisher.publish(f"trade.{code}".encode(), orjson.dumps(data), time.time_ns())
        wait_until(lambda: sum(f.trades for f in flow.flows.values()) == 4, what="4 trades")
        assert "TradeFlow" in registry.workers()[0]["worker_id"]
    btc = flow.flows["KRW-BTC"]
    notional = Decimal("100.1") * Decimal("0.3") + Decimal("100.2") * Decimal("0.1")
    notional += Decimal("99.9") * Decimal("0.00000001")
    assert btc.volume == Decimal("0.40000001")
    assert btc.vwap == notional / Decimal("0.40000001")
    assert (btc.buy_volume, btc.sell_volume) == (Decimal("0.30000001"), Decimal("0.1"))
    assert flow.flows["KRW-ETH"].vwap == Decimal(7500)
    assert "KRW-BTC n=3" in flow.summary()
    assert len(registry) == 0


def test_latency_probe_measures_from_origin_or_recv_stamps(feed, ctx):
    from workers.examples.latency import LatencyProbe

    publisher = feed.publisher
    server = feed.server
    now_ns = 5_000_000_000

    class FixedClockProbe(LatencyProbe):
        clock_ns = staticmethod(lambda: now_ns)

    probe = FixedClockProbe(["KRW-BTC"], control_endpoint=server.endpoint, context=ctx)
    with RunningWorker(probe):
        warm_up_in_process(publisher, probe)
        # 99 trades stamped by the upstream 10..990 us ago, one with only a feed stamp.
        for i in range(1, 100):
            origin = now_ns - i * 10_000
            publisher.publish(b"trade.KRW-BTC", trade_json("KRW-BTC", i), origin + 1, origin)
        publisher.publish(b"trade.KRW-BTC", trade_json("KRW-BTC", 100), now_ns - 2_000_000)
        wait_until(lambda: len(probe.samples_ns) == 100, what="100 latency samples")
    stats = probe.percentiles()
    assert (probe.from_origin, probe.from_recv) == (99, 1)
    assert stats["n"] == 100
    assert stats["max_us"] == 2000.0
    expected = np.percentile([*(i * 10 for i in range(1, 100)), 2000], [50, 99])
    assert stats["p50_us"] == pytest.approx(expected[0])
    assert stats["p99_us"] == pytest.approx(expected[1])
    assert probe.summary().startswith("latency n=100 p50=")


class Book:
    """The attribute shape the shm writer reads (a decoded orderbook message)."""

    def __init__(self, code, levels, timestamp=1):
        self.code = code
        self.orderbook_units = [
            _Unit(bid_price=b, bid_size=1.0, ask_price=a, ask_size=2.0) for b, a in levels
        ]
        self.timestamp = timestamp
        self.stream_type = "REALTIME"
        self.total_ask_size = 2.0 * len(levels)
        self.total_bid_size = 1.0 * len(levels)
        self.level = None


class _Unit:
    def __init__(self, **values):
        self.__dict__.update(values)


def test_spread_monitor_reads_order_books_from_shm(feed, ctx):
    shm = pytest.importorskip("shm")
    if not hasattr(shm, "attach") or not hasattr(shm, "OrderbookWriter"):
        pytest.skip("shm.attach / shm.OrderbookWriter not available")
    from workers.examples.spread import SpreadMonitor

    server = feed.server
    registry = feed.registry
    prefix = f"upft-{os.getpid()}-{time.monotonic_ns() % 1_000_000}"
    writer = shm.OrderbookWriter(prefix, ["KRW-BTC", "KRW-ETH", "KRW-XRP"], capacity=64)
    try:
        # State written before the worker starts is handed over once at start.
        writer.write_orderbook(Book("KRW-ETH", [(3000.0, 3002.0)]), 1)
        feed.hello_info["shm_prefix"] = prefix
        monitor = SpreadMonitor(
            ["KRW-BTC", "KRW-ETH"], control_endpoint=server.endpoint, context=ctx
        )
        with RunningWorker(monitor):
            wait_until(lambda: "KRW-ETH" in monitor.tops, what="the initial KRW-ETH book")
            for i in range(200):
                bid = 100_000.0 + i
                writer.write_orderbook(Book("KRW-BTC", [(bid, bid + 10.0), (bid - 5, bid + 20)]), i)
                writer.write_orderbook(Book("KRW-XRP", [(1.0, 1.1)]), i)
            wait_until(
                lambda: "KRW-BTC" in monitor.tops and monitor.tops["KRW-BTC"].bid == 100_199.0,
                what="the last KRW-BTC book",
            )
            assert registry.desired() == [Subscription("orderbook", ("KRW-BTC.1", "KRW-ETH.1"))]
        top = monitor.tops["KRW-BTC"]
        assert (top.ask, top.mid, top.spread) == (100_209.0, 100_204.0, 10.0)
        assert top.spread_bps == pytest.approx(10.0 / 100_204.0 * 1e4)
        assert monitor.tops["KRW-ETH"].mid == 3001.0
        assert "KRW-XRP" not in monitor.tops
        assert monitor.updates <= 201, "updates are conflated to the newest book per poll"
    finally:
        writer.close()


class TickerWatcher(Worker):
    types = ("ticker",)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen: list[int] = []

    def on_ticker(self, code, record):
        self.seen.append(int(record["feed_seq"]))


def _ticker(k):
    from tests.shm_helpers import make_ticker

    return make_ticker("KRW-BTC", k, 0)


@pytest.mark.timeout(60)
def test_a_worker_looks_at_shm_when_the_feed_writes(feed, ctx, monkeypatch):
    shm = pytest.importorskip("shm")
    import workers.worker as worker_module
    from shm import native

    if native.wait_heads is None:
        pytest.skip(f"shm readers cannot sleep here: {native.READER_STATUS}")
    # Each poll of the bus waits longer than the test may run: only a write to shm, by
    # way of the doorbell, can end one early.
    monkeypatch.setattr(worker_module, "_IDLE_POLL_MS", 120_000)
    prefix = f"upft-{os.getpid()}-{time.monotonic_ns() % 1_000_000}"
    writer = shm.TickerWriter(prefix, ["KRW-BTC"], capacity=64)
    try:
        feed.hello_info["shm_prefix"] = prefix
        watcher = TickerWatcher(
            ["KRW-BTC"], control_endpoint=feed.server.endpoint, context=ctx, lease_s=600
        )
        running = RunningWorker(watcher)
        with running:
            wait_until(lambda: watcher._poller is not None, what="the worker's start")
            time.sleep(0.1)  # into its first poll
            for k in range(1, 4):
                writer.write_ticker(_ticker(k), 1)
                wait_until(lambda k=k: watcher.seen[-1:] == [k], what=f"record {k}")
            assert watcher.shm_wakeups >= 3
            running.stop.set()
            writer.write_ticker(_ticker(4), 1)  # rings once more, so the loop sees stop
        assert watcher._doorbell is None, "close() stops the doorbell"
    finally:
        writer.close()


@pytest.mark.timeout(60)
def test_a_worker_whose_doorbell_fails_polls_shm_instead(feed, ctx, monkeypatch, caplog):
    shm = pytest.importorskip("shm")
    from shm import native

    if native.wait_heads is None:
        pytest.skip(f"shm readers cannot sleep here: {native.READER_STATUS}")

    def broken(*args, **kwargs):
        raise RuntimeError("the sleep broke")

    monkeypatch.setattr(shm, "wait_for_heads", broken)
    monkeypatch.setattr(shm, "ring_on_heads", broken)
    prefix = f"upft-{os.getpid()}-{time.monotonic_ns() % 1_000_000}"
    writer = shm.TickerWriter(prefix, ["KRW-BTC"], capacity=64)
    try:
        feed.hello_info["shm_prefix"] = prefix
        watcher = TickerWatcher(["KRW-BTC"], control_endpoint=feed.server.endpoint, context=ctx)
        with RunningWorker(watcher):
            wait_until(lambda: watcher._readers and watcher._doorbell is None, what="fallback")
            writer.write_ticker(_ticker(1), 1)
            wait_until(lambda: watcher.seen == [1], what="the record, polled")
        assert "event=shm_doorbell_failed" in caplog.text
        assert "reason=doorbell_failed" in caplog.text
    finally:
        writer.close()


@pytest.mark.timeout(60)
def test_a_worker_with_a_shm_poll_interval_polls(feed, ctx):
    shm = pytest.importorskip("shm")
    prefix = f"upft-{os.getpid()}-{time.monotonic_ns() % 1_000_000}"
    writer = shm.TickerWriter(prefix, ["KRW-BTC"], capacity=64)
    try:
        feed.hello_info["shm_prefix"] = prefix
        watcher = TickerWatcher(
            ["KRW-BTC"],
            control_endpoint=feed.server.endpoint,
            context=ctx,
            shm_poll_interval_s=0.005,
        )
        with RunningWorker(watcher):
            wait_until(lambda: watcher._readers, what="the worker's start")
            writer.write_ticker(_ticker(1), 1)
            wait_until(lambda: watcher.seen == [1], what="the record")
            assert watcher._doorbell is None and watcher.shm_wakeups == 0
    finally:
        writer.close()


def test_example_runs_from_the_command_line_for_a_duration(feed, run_dir):
    server = feed.server
    registry = feed.registry
    options = ("--duration", "1.2", "--control", server.endpoint, "--worker-id", "flow-cli")
    proc = subprocess.run(
        [*WORKERS_RUN, "workers.examples.vwap:TradeFlow", "--symbols", "KRW-BTC", *options],
        cwd=REPO,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    summaries = [line for line in proc.stdout.decode().splitlines() if line.startswith("trades ")]
    assert summaries, proc.stdout
    assert summaries[-1] == "trades KRW-BTC n=0 vwap=- buy=0 sell=0"
    assert b"event=worker_registered worker_id=flow-cli" in proc.stderr
    assert "flow-cli" not in registry


def test_worker_registers_again_when_its_lease_is_lost(feed, ctx):
    publisher = feed.publisher
    registry = feed.registry
    worker = RecordingWorker(
        ["KRW-BTC"],
        control_endpoint=feed.server.endpoint,
        worker_id="phoenix",
        lease_s=0.3,
        context=ctx,
    )
    with RunningWorker(worker):
        wait_until(lambda: "phoenix" in registry, what="registration")
        registrations = len(feed.hellos)
        # What the feed does when a lease runs out (or what a restarted feed knows).
        registry.unregister("phoenix")
        wait_until(lambda: "phoenix" in registry, what="the worker registering again")
        assert len(feed.hellos) == registrations + 1
        warm_up_in_process(publisher, worker)
    assert "phoenix" not in registry


def test_supervise_command_stops_its_workers_on_sigterm(feed, run_dir):
    server = feed.server
    registry = feed.registry
    spec = "tests.test_workers:RecordingWorker=KRW-BTC,KRW-ETH@sup-a"
    with open(run_dir / "stderr", "ab") as stderr:
        proc = subprocess.Popen(
            [*WORKERS_SUPERVISE, "--worker", spec, "--control", server.endpoint, "--lease", "30"],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        wait_until(lambda: "sup-a" in registry, what="the supervised worker to register")
        (info,) = registry.workers()
        assert info["pid"] != proc.pid, "the worker runs in its own process"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert "sup-a" not in registry
        assert feed.expired == []
    finally:
        stop_process(proc)


def test_worker_over_tcp_with_curve_keys_from_files(run_dir, ctx):
    server_keys = CurveKeys.generate()
    worker_keys = CurveKeys.generate()
    server_public, _ = server_keys.save(run_dir, "feed")
    _, worker_secret = worker_keys.save(run_dir, "worker")
    clients = run_dir / "clients"
    clients.mkdir()
    (clients / "worker.key").write_bytes((run_dir / "worker.key").read_bytes())
    registry = WorkerRegistry()
    with (
        CurveClientAuthorizer(ctx, clients),
        Publisher("tcp://127.0.0.1:*", curve=server_keys, context=ctx) as publisher,
        ControlServer(
            "tcp://127.0.0.1:*",
            registry=registry,
            curve=server_keys,
            hello=lambda: {"pub_endpoint": publisher.endpoint},
            context=ctx,
        ) as server,
    ):
        keys = ("--curve-server-key", str(server_public), "--curve-client-key", str(worker_secret))
        proc = spawn_worker(
            "tests.test_workers:RecordingWorker",
            "KRW-BTC",
            server.endpoint,
            "--worker-id",
            "remote",
            *keys,
            stderr_path=run_dir / "stderr",
        )
        lines = ChildLines(proc)
        try:
            lines.wait_for(lambda e: e["ev"] == "start", what="worker start over CURVE")
            warm_up(lambda: publisher.publish_sys("warmup", {}), lines)
            publisher.publish(b"trade.KRW-BTC", trade_json("KRW-BTC", 1), 1)
            trade = lines.wait_for(lambda e: e["ev"] == "trade", what="a trade over CURVE")
            assert trade["sid"] == BIG_SEQUENTIAL_ID + 1
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(10) == 0
            assert "remote" not in registry
        finally:
            lines.close()
            stop_process(proc)


def test_spread_monitor_process_reads_shm_and_leaves_the_segment_alone(feed, run_dir):
    shm = pytest.importorskip("shm")
    if not hasattr(shm, "attach") or not hasattr(shm, "OrderbookWriter"):
        pytest.skip("shm.attach / shm.OrderbookWriter not available")
    prefix = f"upft-{os.getpid()}-{time.monotonic_ns() % 1_000_000}"
    writer = shm.OrderbookWriter(prefix, ["KRW-BTC", "KRW-ETH"], capacity=64)
    feed.hello_info["shm_prefix"] = prefix
    try:
        writer.write_orderbook(Book("KRW-BTC", [(100_000.0, 100_008.0)]), 1)
        target = ("workers.examples.spread:SpreadMonitor", "--symbols", "KRW-BTC")
        options = ("--duration", "1.5", "--control", feed.server.endpoint)
        proc = subprocess.run(
            [*WORKERS_RUN, *target, *options],
            cwd=REPO,
            capture_output=True,
            timeout=30,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr.decode()
        last = proc.stdout.decode().splitlines()[-1]
        assert last == "spread updates=1 KRW-BTC mid=100004 spread=8 (0.80bp)"
        # A reader process exiting must not destroy the writer's segment.
        reader = shm.attach(prefix, "orderbook", timeout=1)
        assert reader.latest("KRW-BTC")["levels"][0]["ask_price"] == 100_008.0
        reader.close()
    finally:
        writer.close()


def test_worker_notices_when_the_shm_writer_goes_away(feed, ctx):
    shm = pytest.importorskip("shm")
    if not hasattr(shm, "attach") or not hasattr(shm, "OrderbookWriter"):
        pytest.skip("shm.attach / shm.OrderbookWriter not available")
    from workers.examples.spread import SpreadMonitor

    class WatchfulMonitor(SpreadMonitor):
        def on_shm_writer(self, kind, alive):
            self.writer_events.append((kind, alive))

    prefix = f"upft-{os.getpid()}-{time.monotonic_ns() % 1_000_000}"
    writer = shm.OrderbookWriter(prefix, ["KRW-BTC"], capacity=16)
    feed.hello_info["shm_prefix"] = prefix
    try:
        monitor = WatchfulMonitor(
            ["KRW-BTC"], control_endpoint=feed.server.endpoint, lease_s=0.3, context=ctx
        )
        monitor.writer_events = []
        with RunningWorker(monitor):
            wait_until(lambda: "WatchfulMonitor" in str(feed.registry.workers()), what="register")
            time.sleep(0.3)  # a few renew periods with a live writer: no event
            assert monitor.writer_events == []
            writer.close()
            wait_until(lambda: monitor.writer_events, timeout=5, what="the writer-down event")
        assert monitor.writer_events == [("orderbook", False)]
    finally:
        writer.close()


def test_candles_and_orders_reach_their_hooks_by_topic(feed, ctx):
    class CandlesAndOrders(Worker):
        types = ("candle.1m", "myOrder")

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.events = []

        def on_candle(self, event):
            self.events.append(("candle", event.code, event.unit, event.trade_price))

        def on_order(self, event):
            self.events.append(("order", event.code, event.state, event.paid_fee))

    candle = orjson.loads((SAMPLES / "candle_default_KRW-BTC_1.json").read_bytes())
    candle["type"] = "candle.1m"
    order = orjson.loads((SAMPLES / "myorder_default_KRW-BTC_1.json").read_bytes())
    worker = CandlesAndOrders(["KRW-BTC"], control_endpoint=feed.server.endpoint, context=ctx)
    assert worker.topic_prefixes() == [b"sys.", b"candle.1m.KRW-BTC ", b"myOrder.KRW-BTC "]
    with RunningWorker(worker):
        warm_up_in_process(feed.publisher, worker)
        assert feed.registry.desired() == [
            Subscription("candle.1m", ("KRW-BTC",)),
            Subscription("myOrder", ("KRW-BTC",)),
        ]
        publish = feed.publisher.publish
        publish(b"candle.5m.KRW-BTC", orjson.dumps({**candle, "type": "candle.5m"}), 1)
        publish(b"candle.1m.KRW-ETH", orjson.dumps({**candle, "code": "KRW-ETH"}), 1)
        publish(b"candle.1m.KRW-BTC", orjson.dumps(candle), 1)
        publish(b"myOrder.KRW-ETH", orjson.dumps({**order, "code": "KRW-ETH"}), 1)
        publish(b"myOrder.KRW-BTC", orjson.dumps(order), 1)
        wait_until(lambda: len(worker.events) >= 2, what="a candle and an order")
        time.sleep(0.1)  # anything filtered wrongly would arrive in this window
    assert worker.events == [
        ("candle", "KRW-BTC", "1m", Decimal("142009000.00000000")),
        ("order", "KRW-BTC", "trade", Decimal("22.467660028283017")),
    ]
    assert feed.registry.desired() == []


def test_backfilled_trades_are_marked():
    body = (
        b'{"seq":1,"recv_ns":5,"data":{"type":"trade","code":"KRW-BTC","trade_price":"100",'
        b'"trade_volume":"0.5","ask_bid":"BID","sequential_id":17103275719220001,'
        b'"trade_timestamp":1,"backfill":true}}'
    )
    event = TRADE_DECODER.decode(body).data
    assert event.backfill is True
    assert event.sequential_id == 17103275719220001
    live = TRADE_DECODER.decode(body.replace(b',"backfill":true', b"")).data
    assert live.backfill is False
