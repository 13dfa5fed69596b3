import os
import resource
import shutil
import socket
import stat
import tempfile
import threading
import time
from pathlib import Path

import orjson
import pytest
import zmq

from feedhandler.publisher import (
    MAX_HELD_FRAMES,
    BusConfigError,
    CurveClientAuthorizer,
    CurveKeys,
    Publisher,
    apply_curve_client,
    check_endpoint,
    encode_frame,
    ensure_runtime_dir,
    fit_io_threads_to_cpus,
    io_thread_ids,
    load_public_key,
    start_io_threads_as_batch,
    subscription_prefix,
    topic_for,
)

RECV_TIMEOUT_MS = 2000


@pytest.fixture
def run_dir():
    # pytest's tmp_path can exceed the 107-byte unix socket path limit; keep it short.
    root = Path(tempfile.mkdtemp(prefix="upf-pub-"))
    yield root / "run"
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def ctx():
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


def make_sub(ctx, endpoint, *prefixes, rcvhwm=1000, curve_server_key=None):
    sub = ctx.socket(zmq.SUB)
    sub.linger = 0
    sub.rcvhwm = rcvhwm
    sub.rcvtimeo = RECV_TIMEOUT_MS
    if curve_server_key is not None:
        apply_curve_client(sub, curve_server_key, None)
    for prefix in prefixes:
        sub.subscribe(prefix)
    sub.connect(endpoint)
    return sub


def wait_joined(pub, sub, deadline_s=5.0):
    """Publish on a warm-up topic until the subscriber sees it (ZeroMQ's slow joiner)."""
    sub.subscribe(b"warmup ")
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        pub.publish(b"warmup", b"{}", 1)
        if sub.poll(20):
            frame = sub.recv()
            assert frame.startswith(b"warmup ")
            break
    else:
        raise AssertionError("subscriber never joined")
    sub.unsubscribe(b"warmup ")
    # Drain warm-up frames still in flight.
    while sub.poll(50):
        sub.recv()


def test_frame_format_is_exact(run_dir, ctx):
    endpoint = f"ipc://{run_dir}/pub.sock"
    with Publisher(endpoint, context=ctx) as pub:
        sub = make_sub(ctx, pub.endpoint, b"trade.KRW-BTC ")
        wait_joined(pub, sub)
        data = b'{"code":"KRW-BTC","trade_price":"1.16539E8","sequential_id":17303368620800006}'
        assert pub.publish(b"trade.KRW-BTC", data, 1700000000000000001) == 1
        assert pub.publish(b"trade.KRW-BTC", data, 1700000000000000002, 1700000000000000000) == 2
        # Another market must not reach a subscriber of exactly KRW-BTC.
        pub.publish(b"trade.KRW-BTCX", data, 5)
        first, second = sub.recv(), sub.recv()
        assert first == (
            b'trade.KRW-BTC {"seq":1,"recv_ns":1700000000000000001,"data":' + data + b"}"
        )
        assert second == (
            b'trade.KRW-BTC {"seq":2,"recv_ns":1700000000000000002,'
            b'"origin_ns":1700000000000000000,"data":' + data + b"}"
        )
        assert second == encode_frame(
            b"trade.KRW-BTC", 2, 1700000000000000002, data, 1700000000000000000
        )
        topic, _, body = second.partition(b" ")
        parsed = orjson.loads(body)
        assert topic == b"trade.KRW-BTC"
        assert parsed["data"]["sequential_id"] == 17303368620800006
        assert parsed["data"]["trade_price"] == "1.16539E8"
        assert not sub.poll(100), "a frame of trade.KRW-BTCX leaked through the exact filter"
        sub.close(0)


def test_seq_is_monotonic_per_topic_from_one(run_dir, ctx):
    with Publisher(f"ipc://{run_dir}/pub.sock", context=ctx) as pub:
        sub = make_sub(ctx, pub.endpoint, b"trade.", b"candle.")
        wait_joined(pub, sub)
        sent_before = pub.stats()["sent"]
        returned = []
        for i in range(300):
            topic = (b"trade.KRW-BTC", b"trade.KRW-ETH", b"candle.1m.KRW-BTC")[i % 3]
            returned.append((topic, pub.publish(topic, b"{}", i)))
        seen: dict[bytes, list[int]] = {}
        for _ in range(300):
            topic, _, body = sub.recv().partition(b" ")
            seen.setdefault(topic, []).append(orjson.loads(body)["seq"])
        for topic, seqs in seen.items():
            assert seqs == list(range(1, 101)), topic
        assert [s for t, s in returned if t == b"trade.KRW-ETH"] == list(range(1, 101))
        stats = pub.stats()
        assert stats["sent"] - sent_before == 300
        assert stats["dropped"] == 0
        assert stats["topics"] == 4  # the three above and the warm-up topic
        sub.close(0)


def test_slow_subscriber_never_blocks_and_sees_gaps(run_dir, ctx):
    total = 200_000
    with Publisher(f"ipc://{run_dir}/pub.sock", sndhwm=100, context=ctx) as pub:
        sub = make_sub(ctx, pub.endpoint, b"trade.KRW-BTC ", rcvhwm=10)
        sub.setsockopt(zmq.RCVBUF, 4096)
        wait_joined(pub, sub)
        payload = b'{"trade_price":"100"}'
        # The subscriber reads nothing while the publisher sends: this loop would hang
        # (and pytest-timeout would fail the test) if the PUB blocked on it.
        last = 0
        for i in range(total):
            last = pub.publish(b"trade.KRW-BTC", payload, i)
        assert last == total
        seqs = []
        while sub.poll(200):
            seqs.append(orjson.loads(sub.recv().partition(b" ")[2])["seq"])
        assert seqs, "the subscriber should still get what fitted in its queues"
        assert seqs == sorted(set(seqs))
        assert len(seqs) < total
        # Once it reads again, the next message shows the subscriber the hole.
        pub.publish(b"trade.KRW-BTC", payload, total)
        following = orjson.loads(sub.recv().partition(b" ")[2])["seq"]
        assert following == total + 1
        assert following - seqs[-1] > 1
        sub.close(0)


def test_non_loopback_tcp_needs_curve(ctx):
    for endpoint in ("tcp://0.0.0.0:5599", "tcp://*:5599", "tcp://10.1.2.3:5599", "tcp://eth0:1"):
        with pytest.raises(BusConfigError, match="CURVE"):
            Publisher(endpoint, context=ctx)
        assert check_endpoint(endpoint, curve=True) == endpoint
    for endpoint in ("tcp://127.0.0.1:5599", "tcp://localhost:5599", "tcp://[::1]:5599"):
        assert check_endpoint(endpoint, curve=False) == endpoint
    with pytest.raises(BusConfigError, match="transport"):
        check_endpoint("udp://127.0.0.1:5599", curve=False)
    with pytest.raises(BusConfigError, match="absolute"):
        check_endpoint("ipc://relative/pub.sock", curve=False)


def test_loopback_tcp_with_random_port(ctx):
    with Publisher("tcp://127.0.0.1:*", context=ctx) as pub:
        assert pub.endpoint.startswith("tcp://127.0.0.1:")
        assert not pub.endpoint.endswith(":*")


def test_runtime_dir_is_created_private_and_fixed(run_dir, ctx):
    with Publisher(f"ipc://{run_dir}/pub.sock", context=ctx):
        assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
        assert (run_dir / "pub.sock").exists()
    os.chmod(run_dir, 0o755)
    ensure_runtime_dir(run_dir)
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700


def test_runtime_dir_owned_by_someone_else_is_refused(run_dir, ctx):
    if os.getuid() == 0:
        run_dir.mkdir(mode=0o700)
        os.chown(run_dir, 65534, 65534)
        foreign = run_dir
    else:
        foreign = Path("/")
    with pytest.raises(BusConfigError, match="owned by uid"):
        ensure_runtime_dir(foreign)
    with pytest.raises(BusConfigError, match="owned by uid"):
        Publisher(f"ipc://{foreign}/pub.sock", context=ctx)


def test_too_long_ipc_path_is_refused(run_dir, ctx):
    with pytest.raises(BusConfigError, match="longer than"):
        Publisher(f"ipc://{run_dir}/{'x' * 120}.sock", context=ctx)


def test_curve_round_trip_and_plain_subscriber_gets_nothing(run_dir, ctx):
    run_dir.mkdir(mode=0o700)
    _, secret_file = CurveKeys.generate().save(run_dir, "feed")
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    keys = CurveKeys.load(secret_file)
    assert "secret=***" in repr(keys)
    assert keys.secret.decode() not in repr(keys)
    server_key = load_public_key(run_dir / "feed.key")
    assert server_key == keys.public
    with Publisher("tcp://127.0.0.1:*", curve=keys, context=ctx) as pub:
        assert pub.curve_public_key == keys.public
        secure = make_sub(ctx, pub.endpoint, b"trade.", curve_server_key=server_key)
        plain = make_sub(ctx, pub.endpoint, b"trade.", b"warmup")
        wait_joined(pub, secure)
        pub.publish(b"trade.KRW-BTC", b'{"x":1}', 7)
        assert secure.recv() == b'trade.KRW-BTC {"seq":1,"recv_ns":7,"data":{"x":1}}'
        assert not plain.poll(300), "a subscriber without the server key must get nothing"
        secure.close(0)
        plain.close(0)


def test_curve_keys_reject_garbage(run_dir):
    with pytest.raises(BusConfigError, match="40 bytes"):
        CurveKeys(b"short", b"x" * 40)
    with pytest.raises(BusConfigError, match="cannot load"):
        CurveKeys.load(run_dir / "missing.key_secret")
    run_dir.mkdir(mode=0o700)
    public_file, _ = CurveKeys.generate().save(run_dir, "only")
    with pytest.raises(BusConfigError, match="no secret key"):
        CurveKeys.load(public_file)


def test_topics():
    assert topic_for("trade", "KRW-BTC") == b"trade.KRW-BTC"
    assert topic_for("candle.1m", "KRW-BTC") == b"candle.1m.KRW-BTC"
    assert topic_for("myOrder", "KRW-ETH") == b"myOrder.KRW-ETH"
    assert topic_for("myAsset") == b"myAsset"
    assert topic_for("sys", "worker_lease_expired") == b"sys.worker_lease_expired"
    assert subscription_prefix(b"trade.KRW-BTC") == b"trade.KRW-BTC "
    with pytest.raises(ValueError, match="needs a code"):
        topic_for("trade")
    with pytest.raises(ValueError, match="spaces"):
        topic_for("trade", "KRW BTC")


def test_publish_sys_uses_injected_clock(run_dir, ctx):
    with Publisher(f"ipc://{run_dir}/pub.sock", context=ctx, clock_ns=lambda: 42) as pub:
        sub = make_sub(ctx, pub.endpoint, b"sys.")
        wait_joined(pub, sub)
        seq = pub.publish_sys("connection_up", {"connection": "public-1", "codes": 3})
        frame = sub.recv()
        topic, _, body = frame.partition(b" ")
        assert topic == b"sys.connection_up"
        assert orjson.loads(body) == {
            "seq": seq,
            "recv_ns": 42,
            "data": {"connection": "public-1", "codes": 3},
        }
        sub.close(0)


def test_close_is_idempotent_and_releases_the_endpoint(run_dir, ctx):
    endpoint = f"ipc://{run_dir}/pub.sock"
    pub = Publisher(endpoint, context=ctx)
    pub.close()
    pub.close()
    with Publisher(endpoint, context=ctx) as again:
        assert again.endpoint == endpoint


def test_concurrent_publishers_keep_each_topic_gapless_and_ordered(run_dir, ctx):
    threads_n, per_thread = 4, 5000
    with Publisher(f"ipc://{run_dir}/pub.sock", context=ctx) as pub:
        sub = make_sub(ctx, pub.endpoint, b"trade.KRW-BTC ", rcvhwm=0)
        wait_joined(pub, sub)
        start = threading.Barrier(threads_n)

        def publish_many():
            start.wait(5)
            for i in range(per_thread):
                pub.publish(b"trade.KRW-BTC", b"{}", i)

        workers = [threading.Thread(target=publish_many) for _ in range(threads_n)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(30)
        seqs = [
            orjson.loads(sub.recv().partition(b" ")[2])["seq"]
            for _ in range(threads_n * per_thread)
        ]
        assert seqs == list(range(1, threads_n * per_thread + 1))
        assert pub.stats()["dropped"] == 0
        sub.close(0)


def test_ipc_endpoint_of_a_live_process_is_refused_and_a_stale_one_replaced(run_dir, ctx):
    endpoint = f"ipc://{run_dir}/pub.sock"
    with Publisher(endpoint, context=ctx), pytest.raises(BusConfigError, match="in use"):
        Publisher(endpoint, context=ctx)
    # A socket file left behind by a crashed process answers nobody: it is replaced.
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(run_dir / "stale.sock"))
    stale.close()
    assert (run_dir / "stale.sock").exists()
    with Publisher(f"ipc://{run_dir}/stale.sock", context=ctx) as pub:
        sub = make_sub(ctx, pub.endpoint, b"warmup")
        wait_joined(pub, sub)
        sub.close(0)
    (run_dir / "other").write_text("not a socket")
    with pytest.raises(BusConfigError, match="not a socket"):
        Publisher(f"ipc://{run_dir}/other", context=ctx)


def test_curve_authorizer_admits_only_listed_client_keys(run_dir, ctx):
    run_dir.mkdir(mode=0o700)
    clients_dir = run_dir / "clients"
    clients_dir.mkdir()
    server = CurveKeys.generate()
    allowed = CurveKeys.generate()
    stranger = CurveKeys.generate()
    allowed.save(run_dir, "allowed")
    (clients_dir / "allowed.key").write_bytes((run_dir / "allowed.key").read_bytes())
    with (
        CurveClientAuthorizer(ctx, clients_dir),
        Publisher("tcp://127.0.0.1:*", curve=server, context=ctx) as pub,
    ):
        good = ctx.socket(zmq.SUB)
        bad = ctx.socket(zmq.SUB)
        for sock, keys in ((good, allowed), (bad, stranger)):
            sock.linger = 0
            apply_curve_client(sock, server.public, keys)
            sock.subscribe(b"trade.")
            sock.connect(pub.endpoint)
        wait_joined(pub, good)
        pub.publish(b"trade.KRW-BTC", b"{}", 1)
        assert good.poll(2000) and good.recv().startswith(b"trade.KRW-BTC ")
        assert not bad.poll(300), "a client key outside the directory must get nothing"
        good.close(0)
        bad.close(0)
    empty = run_dir / "empty"
    empty.mkdir()
    with pytest.raises(BusConfigError, match=r"no \*\.key"):
        CurveClientAuthorizer(ctx, empty)


def seq_of(frame: bytes) -> int:
    return orjson.loads(frame.partition(b" ")[2])["seq"]


def test_held_frames_go_out_at_release_in_publish_order(run_dir, ctx):
    with Publisher(f"ipc://{run_dir}/pub.sock", context=ctx) as pub:
        sub = make_sub(ctx, pub.endpoint, b"trade.", b"sys.")
        wait_joined(pub, sub)
        sent_before = pub.stats()["sent"]
        pub.hold()
        pub.hold()  # a second holder (another connection thread)
        topics = [(b"trade.KRW-BTC", b"trade.KRW-ETH")[i % 2] for i in range(10)]
        seqs = [pub.publish(topic, b"{}", i) for i, topic in enumerate(topics)]
        pub.publish_sys("connected", {"connection": "c"})
        assert seqs == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
        assert pub.stats()["sent"] == sent_before, "a held frame was sent before release"
        assert not sub.poll(100)
        pub.release()  # any release sends everything queued, whoever queued it
        assert pub.stats()["sent"] == sent_before + 11
        frames = [sub.recv() for _ in range(11)]
        got = [(f.partition(b" ")[0], seq_of(f)) for f in frames]
        assert got == [*zip(topics, seqs, strict=True), (b"sys.connected", 1)]
        # Still held by the first holder, but MAX_HELD_FRAMES forces a send.
        for i in range(MAX_HELD_FRAMES):
            pub.publish(b"trade.KRW-XRP", b"{}", i)
        assert pub.stats()["sent"] == sent_before + 11 + MAX_HELD_FRAMES
        forced = [seq_of(sub.recv()) for _ in range(MAX_HELD_FRAMES)]
        assert forced == list(range(1, MAX_HELD_FRAMES + 1))
        pub.publish(b"trade.KRW-XRP", b"{}", 0)
        pub.release()
        assert seq_of(sub.recv()) == MAX_HELD_FRAMES + 1
        # Not held any more: a publish is sent at once.
        pub.publish(b"trade.KRW-XRP", b"{}", 0)
        assert sub.poll(RECV_TIMEOUT_MS)
        sub.close(0)


def test_publish_many_frames_equal_one_at_a_time_and_respect_holding(run_dir, ctx):
    with Publisher(f"ipc://{run_dir}/pub.sock", context=ctx) as pub:
        sub = make_sub(ctx, pub.endpoint, b"trade.")
        wait_joined(pub, sub)
        pub.publish(b"trade.KRW-BTC", b'{"a":1}', 10, 20)
        frames = [sub.recv()]
        events = [
            (b"trade.KRW-BTC", b'{"a":2}', 11, 21),
            (b"trade.KRW-ETH", b'{"a":3}', 12, 0),
            (b"trade.KRW-BTC", b'{"a":4}', 13, 23),
        ]
        pub.hold()
        pub.publish_many(events)
        assert not sub.poll(100), "held frames went out before release"
        pub.release()
        frames += [sub.recv() for _ in range(3)]
        # Sequence numbers continue per topic across publish and publish_many.
        expected = [encode_frame(b"trade.KRW-BTC", 1, 10, b'{"a":1}', 20)] + [
            encode_frame(topic, seq, recv_ns, data, origin_ns)
            for (topic, data, recv_ns, origin_ns), seq in zip(events, (2, 1, 3), strict=True)
        ]
        assert frames == expected
        # Not held: sent at once.
        pub.publish_many([(b"trade.KRW-ETH", b"{}", 1, 0)])
        assert seq_of(sub.recv()) == 2
        sub.close(0)
    sent = pub.stats()["sent"]
    pub.publish_many([(b"trade.KRW-ETH", b"{}", 1, 0)])  # closed: counted as dropped
    assert pub.stats()["sent"] == sent and pub.stats()["dropped"] == 1


def test_close_sends_what_is_held(run_dir, ctx):
    pub = Publisher(f"ipc://{run_dir}/pub.sock", context=ctx)
    sub = make_sub(ctx, pub.endpoint, b"trade.")
    wait_joined(pub, sub)
    pub.hold()
    pub.publish(b"trade.KRW-BTC", b"{}", 1)
    sent = pub.stats()["sent"]
    pub.close()
    assert pub.stats()["sent"] == sent + 1
    sub.close(0)


def _io_threads() -> dict[int, int]:
    """ZeroMQ I/O threads of this process: thread id -> scheduling policy."""
    threads = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as comm:
                if comm.read().startswith("ZMQbg/IO"):
                    threads[int(tid)] = os.sched_getscheduler(int(tid))
        except (FileNotFoundError, ProcessLookupError):
            continue  # a thread of another test's context that just ended
    return threads


def _new_io_threads(known: dict[int, int]) -> dict[int, int]:
    new: dict[int, int] = {}
    deadline = time.monotonic() + 5.0
    while not new and time.monotonic() < deadline:
        new = {t: p for t, p in _io_threads().items() if t not in known}
        time.sleep(0.01)
    return new


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="Linux scheduling policy")
def test_io_threads_start_as_sched_batch_when_asked():
    before = _io_threads()
    asked, plain = zmq.Context(), zmq.Context()
    try:
        assert start_io_threads_as_batch(asked)
        # A context starts its I/O thread with its first socket; the thread names itself.
        asked.socket(zmq.PUB)
        batch = _new_io_threads(before)
        plain.socket(zmq.PUB)
        other = _new_io_threads({**before, **batch})
        assert list(batch.values()) == [os.SCHED_BATCH]
        assert list(other.values()) == [os.SCHED_OTHER]
    finally:
        asked.destroy(linger=0)
        plain.destroy(linger=0)


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="Linux scheduling policy")
def test_io_threads_run_as_sched_idle_only_while_confined_to_one_cpu():
    cpus = sorted(os.sched_getaffinity(0))
    before = set(io_thread_ids())
    asked, plain = zmq.Context(), zmq.Context()
    try:
        start_io_threads_as_batch(asked)
        asked.socket(zmq.PUB)
        (tid,) = _new_io_threads(dict.fromkeys(before, 0))
        plain.socket(zmq.PUB)
        (plain_tid,) = _new_io_threads(dict.fromkeys([*before, tid], 0))
        # Only this test's threads: an I/O thread another test left in this process (of
        # zmq.Context.instance()) would otherwise be fitted too, and after the kernel's
        # thread ids wrap around it may come last and name the policy returned.
        ours = [tid, plain_tid]
        assert fit_io_threads_to_cpus(ours) == ("batch" if len(cpus) > 1 else "idle")
        os.sched_setaffinity(tid, {cpus[-1]})
        os.sched_setaffinity(plain_tid, {cpus[-1]})
        assert fit_io_threads_to_cpus(ours) == "idle"
        assert os.sched_getscheduler(tid) == os.SCHED_IDLE
        assert os.sched_getscheduler(plain_tid) == os.SCHED_OTHER  # not asked: left alone
        if len(cpus) > 1:
            os.sched_setaffinity(tid, set(cpus))
            may_leave_idle = os.geteuid() == 0 or resource.getrlimit(resource.RLIMIT_NICE)[0] >= 20
            expected = os.SCHED_BATCH if may_leave_idle else os.SCHED_IDLE
            assert fit_io_threads_to_cpus(ours) == ("batch" if may_leave_idle else "idle")
            assert os.sched_getscheduler(tid) == expected
        # Without ids it fits every I/O thread of this process, this test's among them.
        os.sched_setaffinity(tid, {cpus[-1]})
        assert fit_io_threads_to_cpus() in ("batch", "idle")
        assert os.sched_getscheduler(tid) == os.SCHED_IDLE
    finally:
        asked.destroy(linger=0)
        plain.destroy(linger=0)
