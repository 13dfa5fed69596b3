"""Security: secrets never leave the process, fresh JWT nonces, file modes, bounded inputs.

Covered elsewhere and not repeated: wrong keys (``test_feed_process.py``), shm segment
modes in detail (``test_shm_*.py``), the control server's unit behaviour
(``test_control.py``), the curve/tcp rules of ``check_endpoint`` (``test_publisher.py``).
"""

from __future__ import annotations

import logging
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import jwt
import orjson
import pytest
import zmq

from feedhandler.config import ConfigError, load_settings, secret_exposure
from feedhandler.control import ControlClient
from feedhandler.publisher import BusConfigError, CurveKeys, check_endpoint
from feedhandler.upbit.auth import Credentials, authorization_header
from simulator import Simulator
from tests.conftest import SHM_DIR, wait_until

ACCESS = "security-test-access-key-7f3a9c1e5b"
SECRET = "security-test-secret-key-d41d8cd98f00b204e9800998ecf8427e-0123456789abcdef"
JWT_SHAPE = re.compile(rb"eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.")
PRIVATE_AND_PUBLIC = [
    {"type": "ticker", "codes": ["KRW-BTC"]},
    {"type": "trade", "codes": ["KRW-BTC"]},
    {"type": "myOrder", "codes": []},
    {"type": "myAsset"},
]


def assert_no_secret(blob: bytes, where: str) -> None:
    for secret in (ACCESS.encode(), SECRET.encode()):
        assert secret not in blob, f"a key appears in {where}"
    assert not JWT_SHAPE.search(blob), f"a JWT appears in {where}"


def test_a_whole_run_with_known_keys_never_shows_them(feed_harness):
    """Simulator, feed process with private streams, reconnects, bad frames, every
    control query, then a stop: the keys and JWTs appear in no output and no answer;
    and every reconnect signs a fresh nonce (the simulator rejects a reused one)."""
    with Simulator(markets=2, rate=100.0, access_key=ACCESS, secret_key=SECRET) as sim:
        harness = feed_harness(
            sim,
            {
                "subscriptions": PRIVATE_AND_PUBLIC,
                "reconnection": {"base_delay": 0.1, "max_delay": 0.5},
                "logging": {"level": "DEBUG"},
            },
        )
        env = {**harness.process_env(), "UPBIT_ACCESS_KEY": ACCESS, "UPBIT_SECRET_KEY": SECRET}
        proc = subprocess.Popen(
            [sys.executable, "-m", "feedhandler", "run", "--config", str(harness.config_path)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        answers = b""
        try:

            def private_sessions() -> list[dict]:
                return [
                    c
                    for c in sim.control.journal(sids=False)["connections"]
                    if c["path"].endswith("/private") and c["requests"]
                ]

            wait_until(private_sessions, 20)
            for round_ in range(3):
                sim.control.drop_all()
                wait_until(lambda n=round_: len(private_sessions()) >= n + 2, 10)
            sim.control.malformed(kind="garbage")
            order = sim.control.place_order(
                market="KRW-BTC", side="bid", ord_type="limit", price="1000", volume="1"
            )
            sim.control.cancel_order(order["uuid"])
            ctl = Path(harness.runtime_dir) / f"{harness.prefix}.ctl"
            with ControlClient(f"ipc://{ctl}", timeout=5) as control:
                for cmd in ("status", "health", "metrics", "segments", "subscriptions", "workers"):
                    answers += orjson.dumps(control.request(cmd))
                answers += orjson.dumps(control.request("no-such-command"))
            time.sleep(0.3)
            sessions = private_sessions()
            assert len(sessions) >= 4
            rejected = [
                r for c in sessions for r in c["requests"] if r.get("rejected") == "INVALID_AUTH"
            ]
            assert rejected == [], "a reconnect reused a JWT nonce"
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=15)
    assert proc.returncode == 0, out.decode(errors="replace")[-2000:]
    assert b"event=connected connection=private" in out  # the run did what it should
    assert_no_secret(out, "the feed's output")
    assert_no_secret(answers, "control answers")


def test_crash_output_shows_no_keys(feed_harness):
    """A feed process that dies of a fatal signal with its private stream up: the crash
    report (every thread's stack, from faulthandler) carries no key and no token."""
    with Simulator(markets=2, rate=100.0, access_key=ACCESS, secret_key=SECRET) as sim:
        harness = feed_harness(sim, {"subscriptions": PRIVATE_AND_PUBLIC})
        env = {
            **harness.process_env(),
            "UPBIT_ACCESS_KEY": ACCESS,
            "UPBIT_SECRET_KEY": SECRET,
            "PYTHONFAULTHANDLER": "1",
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "feedhandler", "run", "--config", str(harness.config_path)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until(
                lambda: any(
                    c["path"].endswith("/private") and c["requests"]
                    for c in sim.control.journal(sids=False)["connections"]
                ),
                20,
            )
            proc.send_signal(signal.SIGSEGV)
            out, _ = proc.communicate(timeout=15)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=5)
    assert proc.returncode == -signal.SIGSEGV
    # the report is there, with the stacks of the connection threads
    assert b"Fatal Python error: Segmentation fault" in out
    assert out.count(b"Thread 0x") >= 3
    assert_no_secret(out, "the crash output")


def test_a_start_that_fails_on_config_does_not_echo_the_keys(tmp_path: Path):
    config = tmp_path / "feed.yaml"
    config.write_text("subscriptions:\n  - type: myAsset\n")
    config.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UPFEED__", "UPBIT_"))}
    env.update(
        {
            "UPBIT_ACCESS_KEY": ACCESS,
            "UPBIT_SECRET_KEY": SECRET,
            # an invalid value that is the secret itself: the error must not echo it
            "UPFEED__SHM__PREFIX": SECRET + "!",
        }
    )
    proc = subprocess.run(
        [sys.executable, "-m", "feedhandler", "run", "--config", str(config)],
        env=env,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 2
    assert b"shm.prefix" in proc.stderr
    assert_no_secret(proc.stdout + proc.stderr, "the config error")


def test_every_connection_signs_a_fresh_nonce():
    credentials = Credentials(ACCESS, SECRET)
    nonces = set()
    for _ in range(50):
        token = authorization_header(credentials)["Authorization"].removeprefix("Bearer ")
        claims = jwt.decode(token, SECRET, algorithms=["HS512"])
        assert claims["access_key"] == ACCESS
        nonces.add(claims["nonce"])
    assert len(nonces) == 50


def test_config_readable_by_others_with_secrets_gets_a_warning(tmp_path: Path, caplog):
    config = tmp_path / "feed.yaml"
    body = "subscriptions:\n  - type: ticker\n    codes: [KRW-BTC]\n"
    cases = {
        "clean": body,
        "pasted key": body + f"# UPBIT_SECRET_KEY={SECRET}\n",
        "url password": body + "upbit:\n  rest_url: https://user:hunter2hunter2@example.com\n",
    }
    caplog.set_level(logging.WARNING, logger="feedhandler.config")
    for name, text in cases.items():
        for mode in (0o644, 0o600):
            config.write_text(text)
            config.chmod(mode)
            caplog.clear()
            load_settings(config, environ={})
            warnings = [r.getMessage() for r in caplog.records]
            expect = name != "clean" and mode == 0o644
            assert bool(warnings) == expect, (name, oct(mode), warnings)
            for line in warnings:
                assert "event=config_secret_readable" in line
                assert SECRET not in line and "hunter2" not in line
    # the process's own keys written into a world-readable file
    config.write_text(body + f"# keys: {ACCESS}\n")
    config.chmod(0o644)
    settings = load_settings(
        config, environ={"UPBIT_ACCESS_KEY": ACCESS, "UPBIT_SECRET_KEY": SECRET}
    )
    reasons = secret_exposure(config, config.read_text(), settings.credentials, settings)
    assert len(reasons) == 1 and "API keys of this process" in reasons[0]
    assert ACCESS not in reasons[0]


def test_a_curve_secret_key_file_readable_by_others_gets_a_warning(tmp_path: Path, caplog):
    _, secret_file = CurveKeys.generate().save(tmp_path, "server")
    config = tmp_path / "feed.yaml"
    config.write_text(f"zmq:\n  curve_server_secret_key_file: {secret_file}\n")
    config.chmod(0o644)
    caplog.set_level(logging.WARNING, logger="feedhandler.config")
    load_settings(config, environ={})
    assert caplog.records == [], "saved with mode 0600: nothing to say"
    secret_file.chmod(0o644)
    load_settings(config, environ={})
    assert len(caplog.records) == 1
    assert "CURVE secret key file" in caplog.records[0].getMessage()


def test_an_oversized_config_file_is_refused(tmp_path: Path):
    config = tmp_path / "feed.yaml"
    config.write_text("# padding\n" * 200_000)
    with pytest.raises(ConfigError, match="larger than"):
        load_settings(config, environ={})


def test_file_modes_and_endpoints_of_a_running_feed(feed_harness):
    with Simulator(markets=2, rate=50.0) as sim:
        harness = feed_harness(sim, {"subscriptions": [{"type": "ticker", "codes": "all"}]})
        feed = harness.start()
        for kind in ("ticker", "orderbook"):
            mode = stat.S_IMODE((SHM_DIR / f"{harness.prefix}.{kind}").stat().st_mode)
            assert mode == 0o600, (kind, oct(mode))
        runtime = Path(harness.runtime_dir)
        assert stat.S_IMODE(runtime.stat().st_mode) == 0o700
        assert feed.publisher.endpoint.startswith(f"ipc://{runtime}/")
        assert feed.control.endpoint.startswith(f"ipc://{runtime}/")
    with pytest.raises(BusConfigError, match="CURVE"):
        check_endpoint("tcp://0.0.0.0:5555", curve=False, bind=True)
    assert check_endpoint("tcp://0.0.0.0:5555", curve=True, bind=True)


def test_the_live_control_channel_refuses_bad_input_and_keeps_serving(feed_harness):
    with Simulator(markets=2, rate=50.0) as sim:
        harness = feed_harness(sim, {"subscriptions": [{"type": "ticker", "codes": "all"}]})
        feed = harness.start()
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.linger = 0
        sock.connect(feed.control.endpoint)
        try:
            hostile = [
                b"not json",
                b"[1,2,3]",
                b'{"cmd": 7}',
                b'{"cmd": "shutdown"}',
                b'{"cmd": "register", "worker_id": "' + b"w" * 1000 + b'", "subscriptions": []}',
                b'{"cmd": "register", "worker_id": "w", "subscriptions": "all"}',
                b'{"cmd": "register", "worker_id": "w", "subscriptions": [], "lease_s": 1e308}',
                b'{"cmd": "status", "pad": "' + b"x" * 200_000 + b'"}',
                b"\xff\xfe\x00",
            ]
            for payload in hostile:
                sock.send(payload)
                assert sock.poll(5000), payload[:40]
                reply = orjson.loads(sock.recv())
                assert reply["ok"] is False, (payload[:40], reply)
                assert reply["error"]["name"], reply
            # far beyond the server's socket limit: dropped by libzmq, never parsed
            sock.send(b"x" * (4 << 20))
            with ControlClient(feed.control.endpoint, timeout=5) as control:
                assert control.status()["state"] in ("healthy", "degraded")
                assert control.call("workers")["workers"] == []
            assert feed.control.errors >= len(hostile)
        finally:
            sock.close(0)
