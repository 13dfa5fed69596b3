import shutil
import tempfile
import threading
import time
from decimal import Decimal
from pathlib import Path

import orjson
import pytest
import zmq

from feedhandler.control import (
    BadRequest,
    ControlClient,
    ControlRequestError,
    ControlServer,
    ControlTimeout,
    UnknownWorker,
    WorkerRegistry,
    merge_union,
    subscription_from_json,
)
from feedhandler.publisher import CurveKeys
from feedhandler.upbit import Subscription


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


@pytest.fixture
def run_dir():
    root = Path(tempfile.mkdtemp(prefix="upf-ctl-"))
    yield root / "run"
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def ctx():
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


def trade(*codes):
    return Subscription("trade", codes)


# -------------------------------------------------------------------------- registry


def test_union_merges_overlapping_workers():
    registry = WorkerRegistry(clock=FakeClock())
    registry.register("w1", [trade("KRW-BTC", "KRW-ETH"), Subscription("ticker", ("KRW-BTC",))], 10)
    registry.register(
        "w2",
        [
            trade("KRW-ETH", "KRW-XRP"),
            Subscription("orderbook", ("KRW-BTC.5",)),
            Subscription("myAsset"),
        ],
        10,
    )
    registry.register("w3", [Subscription("orderbook", ("KRW-BTC.15", "KRW-ETH"))], 10)
    assert registry.desired() == [
        Subscription("myAsset"),
        Subscription("orderbook", ("KRW-BTC.15", "KRW-ETH")),
        Subscription("ticker", ("KRW-BTC",)),
        trade("KRW-BTC", "KRW-ETH", "KRW-XRP"),
    ]


def test_union_keeps_options_apart_and_all_markets_myorder_wins():
    union = merge_union(
        [
            Subscription("orderbook", ("KRW-BTC",), level=Decimal(10000)),
            Subscription("orderbook", ("KRW-BTC",)),
            Subscription("myOrder", ("KRW-BTC",)),
            Subscription("myOrder"),
            Subscription("myOrder", ("KRW-ETH",)),
            trade("KRW-BTC"),
            Subscription("trade", ("KRW-ETH",), is_only_realtime=True),
        ]
    )
    assert union == [
        Subscription("myOrder"),
        Subscription("orderbook", ("KRW-BTC",)),
        Subscription("orderbook", ("KRW-BTC",), level=Decimal(10000)),
        trade("KRW-BTC"),
        Subscription("trade", ("KRW-ETH",), is_only_realtime=True),
    ]


def test_lease_expiry_with_fake_clock_and_change_notifications():
    clock = FakeClock()
    changes = []
    expired = []
    registry = WorkerRegistry(
        clock=clock, on_change=lambda: changes.append(registry.desired()), on_expired=expired.append
    )
    registry.register("a", [trade("KRW-BTC")], lease_s=3)
    registry.register("b", [trade("KRW-BTC", "KRW-ETH")], lease_s=10)
    assert len(changes) == 2
    # A worker whose wants are already covered does not change the union.
    registry.register("c", [trade("KRW-ETH")], lease_s=10)
    assert len(changes) == 2

    clock.advance(2)
    registry.renew("a", gaps=4, received=100)
    assert len(changes) == 2, "a plain renew must not signal a change"
    clock.advance(2.5)
    assert registry.expire() == []  # a was renewed at t+2, lease 3 s: alive until t+5
    clock.advance(1)
    assert registry.expire() == ["a"]
    assert expired == ["a"]
    assert len(changes) == 2, "a's codes are still wanted by b"
    assert "a" not in registry

    registry.unregister("b")
    assert changes[-1] == [trade("KRW-ETH")]
    clock.advance(10)
    assert registry.expire() == ["c"]
    assert changes[-1] == []
    assert registry.totals() == {"workers": 0, "gaps": 4, "received": 100}
    with pytest.raises(UnknownWorker):
        registry.renew("a")


def test_reregistering_replaces_wants_and_counters_follow_the_process():
    registry = WorkerRegistry(clock=FakeClock())
    registry.register("w", [trade("KRW-BTC")], 5, pid=100)
    registry.renew("w", gaps=2, received=10)
    registry.register("w", [trade("KRW-ETH")], 5, pid=100)
    assert registry.desired() == [trade("KRW-ETH")]
    (info,) = registry.workers()
    assert (info["gaps"], info["received"]) == (2, 10)
    # A restarted worker (new pid, same id) counts from zero; the old counts stay in totals.
    registry.register("w", [trade("KRW-ETH")], 5, pid=200)
    registry.renew("w", gaps=1, received=3)
    (info,) = registry.workers()
    assert (info["pid"], info["gaps"], info["received"]) == (200, 1, 3)
    assert registry.totals() == {"workers": 1, "gaps": 3, "received": 13}


def test_subscription_from_json_validates():
    sub = subscription_from_json({"type": "orderbook", "codes": ["KRW-BTC.15"], "level": 10000})
    assert sub == Subscription("orderbook", ("KRW-BTC.15",), level=Decimal(10000))
    for bad, message in [
        ({"type": "trade", "codes": ["krw-btc"]}, "malformed market code"),
        ({"type": "nope", "codes": ["KRW-BTC"]}, "unknown data type"),
        ({"type": "trade", "codes": "KRW-BTC"}, "must be a list"),
        ({"type": "trade", "codes": ["KRW-BTC"], "extra": 1}, "unknown subscription key"),
        ({"codes": ["KRW-BTC"]}, "has no type"),
        ({"type": "trade", "codes": ["KRW-BTC"], "is_only_realtime": "yes"}, "booleans"),
        ([1], "must be an object"),
    ]:
        with pytest.raises(BadRequest, match=message):
            subscription_from_json(bad)


# ---------------------------------------------------------------------------- server


@pytest.fixture
def served(run_dir, ctx):
    """A running ControlServer on ipc with a status handler and one that raises."""
    clock = FakeClock()
    expired = []
    registry = WorkerRegistry(clock=clock, on_expired=expired.append)

    def status(request):
        return {"workers": len(registry), "totals": registry.totals()}

    def broken(request):
        raise RuntimeError("handler bug")

    server = ControlServer(
        f"ipc://{run_dir}/control.sock",
        handlers={"status": status, "broken": broken, "not_a_dict": lambda r: [1]},
        registry=registry,
        max_message_bytes=4096,
        context=ctx,
        hello=lambda: {"pub_endpoint": "ipc:///x/pub.sock", "shm_prefix": "upfeed-test"},
    )
    server.start()
    client = ControlClient(server.endpoint, timeout=2.0, context=ctx)
    yield server, client, registry, clock, expired
    client.close()
    server.stop()


def raw_request(ctx, endpoint, payload: bytes) -> dict:
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(endpoint)
    try:
        sock.send(payload)
        assert sock.poll(2000), "no reply"
        return orjson.loads(sock.recv())
    finally:
        sock.close(0)


def test_every_builtin_command(served):
    _, client, registry, _, _ = served
    reply = client.register("w1", [trade("KRW-BTC")], lease_s=5, pid=1234)
    assert reply["ok"] is True
    assert reply["pub_endpoint"] == "ipc:///x/pub.sock"
    assert reply["shm_prefix"] == "upfeed-test"
    assert reply["lease_s"] == 5
    assert registry.desired() == [trade("KRW-BTC")]

    assert client.renew("w1", gaps=3, received=50)["ok"] is True
    listing = client.call("workers")
    (worker,) = listing["workers"]
    assert worker["worker_id"] == "w1"
    assert worker["pid"] == 1234
    assert worker["subscriptions"] == [{"type": "trade", "codes": ["KRW-BTC"]}]
    assert (worker["gaps"], worker["received"], worker["renewals"]) == (3, 50, 1)
    assert listing["totals"] == {"workers": 1, "gaps": 3, "received": 50}

    assert client.status() == {
        "ok": True,
        "workers": 1,
        "totals": {"workers": 1, "gaps": 3, "received": 50},
        "req_id": 4,
    }
    assert client.unregister("w1")["worker_id"] == "w1"
    assert len(registry) == 0
    with pytest.raises(ControlRequestError, match="UnknownWorker"):
        client.renew("w1")


def test_error_replies_and_the_server_keeps_serving(served, ctx):
    server, client, registry, _, _ = served
    cases = [
        (client.request("nope"), "UnknownCommand"),
        (client.request("broken"), "RuntimeError"),
        (client.request("not_a_dict"), "TypeError"),
        (client.request("register", worker_id="w", subscriptions=[{"type": "x"}]), "BadRequest"),
        (
            client.request(
                "register", worker_id="w", subscriptions=[{"type": "trade", "codes": ["btc"]}]
            ),
            "BadRequest",
        ),
        (client.request("register", worker_id="w", subscriptions=[], lease_s=0), "BadRequest"),
        (client.request("register", worker_id="", subscriptions=[]), "BadRequest"),
        (client.request("renew", worker_id="ghost"), "UnknownWorker"),
        (client.request("renew", worker_id="ghost", gaps=-1), "BadRequest"),
        (raw_request(ctx, server.endpoint, b"{not json"), "BadRequest"),
        (raw_request(ctx, server.endpoint, b"[1, 2]"), "BadRequest"),
        (raw_request(ctx, server.endpoint, b'{"no_cmd": 1}'), "BadRequest"),
        (
            raw_request(ctx, server.endpoint, b'{"cmd": "x", "pad": "' + b"y" * 5000 + b'"}'),
            "MessageTooLarge",
        ),
    ]
    for reply, name in cases:
        assert reply["ok"] is False, reply
        assert reply["error"]["name"] == name, reply
        assert reply["error"]["message"]
    assert "handler bug" in cases[1][0]["error"]["message"]
    assert len(registry) == 0
    assert client.register("alive", [trade("KRW-BTC")], 5)["ok"] is True
    assert server.errors == len(cases)


def test_req_socket_clients_are_answered_too(served, ctx):
    server, _, _, _, _ = served
    req = ctx.socket(zmq.REQ)
    req.linger = 0
    req.connect(server.endpoint)
    req.send(b'{"cmd": "workers"}')
    assert req.poll(2000)
    assert orjson.loads(req.recv()) == {
        "ok": True,
        "workers": [],
        "totals": {"workers": 0, "gaps": 0, "received": 0},
    }
    req.close(0)


def test_server_thread_expires_leases(served):
    _, client, registry, clock, expired = served
    client.register("short", [trade("KRW-BTC")], lease_s=2)
    client.register("long", [trade("KRW-ETH")], lease_s=60)
    clock.advance(3)
    deadline = time.monotonic() + 3
    while "short" in registry and time.monotonic() < deadline:
        time.sleep(0.02)
    assert expired == ["short"]
    assert registry.desired() == [trade("KRW-ETH")]
    with pytest.raises(ControlRequestError, match="UnknownWorker"):
        client.renew("short")


def test_client_times_out_then_recovers_and_ignores_stale_replies(run_dir, ctx):
    endpoint = f"ipc://{run_dir}/control.sock"
    client = ControlClient(endpoint, timeout=0.2, context=ctx)
    started = time.monotonic()
    with pytest.raises(ControlTimeout, match="no reply to 'workers'"):
        client.request("workers")
    assert time.monotonic() - started < 2.0

    release = threading.Event()

    def slow(request):
        release.wait(2)
        return {"slow": True}

    registry = WorkerRegistry()
    with ControlServer(endpoint, handlers={"slow": slow}, registry=registry, context=ctx):
        with pytest.raises(ControlTimeout):
            client.request("slow")
        release.set()
        # The late answer to "slow" must not be taken for this request's reply.
        reply = client.call("workers")
        assert "slow" not in reply
        assert reply["workers"] == []
    client.close()


def test_stop_is_prompt_and_handlers_cannot_shadow_builtins(run_dir, ctx):
    registry = WorkerRegistry()
    with pytest.raises(ValueError, match="built-in"):
        ControlServer(f"ipc://{run_dir}/c.sock", handlers={"renew": dict}, registry=registry)
    server = ControlServer(f"ipc://{run_dir}/c.sock", registry=registry, context=ctx)
    server.start()
    started = time.monotonic()
    server.stop(timeout=1.0)
    assert time.monotonic() - started < 1.0
    # The endpoint is free again once stopped.
    ControlServer(f"ipc://{run_dir}/c.sock", registry=registry, context=ctx).stop()


def test_curve_control_round_trip(ctx):
    keys = CurveKeys.generate()
    registry = WorkerRegistry()
    with ControlServer("tcp://127.0.0.1:*", registry=registry, curve=keys, context=ctx) as server:
        secure = ControlClient(server.endpoint, curve_server_key=keys.public, context=ctx)
        assert secure.call("workers")["workers"] == []
        secure.close()
        plain = ControlClient(server.endpoint, timeout=0.3, context=ctx)
        with pytest.raises(ControlTimeout):
            plain.request("workers")
        plain.close()


def test_a_failing_hello_leaves_no_lease(run_dir, ctx):
    registry = WorkerRegistry()

    def hello():
        raise OSError("shm segment not created yet")

    with ControlServer(
        f"ipc://{run_dir}/c.sock", registry=registry, hello=hello, context=ctx
    ) as server:
        client = ControlClient(server.endpoint, context=ctx)
        reply = client.request(
            "register", worker_id="w", subscriptions=[{"type": "trade", "codes": ["KRW-BTC"]}]
        )
        assert reply["error"] == {"name": "OSError", "message": "shm segment not created yet"}
        assert len(registry) == 0
        assert registry.desired() == []
        client.close()
