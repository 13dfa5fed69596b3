import os
import subprocess
import sys
import textwrap
from decimal import Decimal
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from feedhandler.config import (
    ConfigError,
    Settings,
    load_settings,
    load_settings_or_exit,
)
from feedhandler.logs import REDACTOR, forget_secret
from feedhandler.upbit.auth import Credentials
from feedhandler.upbit.subscription import Subscription

REPO = Path(__file__).resolve().parent.parent
SHIPPED = [REPO / "config" / "feedhandler.yaml", REPO / "config" / "demo.yaml"]
ACCESS = "AccessKeyForTests0123456789abcdefghijklmn"
SECRET = "SecretKeyForTests9876543210zyxwvutsrqponm"
KEYS = {"UPBIT_ACCESS_KEY": ACCESS, "UPBIT_SECRET_KEY": SECRET}


def write(tmp_path: Path, text: str, name: str = "upfeed.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def config_error(path: Path, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ or {})
    return str(caught.value)


def test_defaults_are_the_documented_values():
    s = Settings()
    assert s.upbit.model_dump() == {
        "public_url": "wss://api.upbit.com/websocket/v1",
        "private_url": "wss://api.upbit.com/websocket/v1/private",
        "rest_url": "https://api.upbit.com",
        "format": "DEFAULT",
        "jwt_algorithm": "HS512",
    }
    assert s.subscriptions == ()
    assert s.connection.model_dump() == {
        "heartbeat_interval": 30,
        "enable_compression": False,
        "connect_timeout": 10,
        "recv_timeout": 1.0,
        "max_codes_per_connection": 1000,
        "max_connections": 5,
        "busy_poll_us": 0,
    }
    assert s.shm.model_dump() == {
        "prefix": "upfeed",
        "ticker_capacity": 4096,
        "orderbook_capacity": 4096,
        "heartbeat_interval": 0.5,
    }
    assert s.zmq.model_dump() == {
        "pub_endpoint": None,
        "control_endpoint": None,
        "runtime_dir": None,
        "sndhwm": 100_000,
        "io_thread_sched_batch": True,
        "curve_server_secret_key_file": None,
        "curve_public_key_file": None,
    }
    assert s.rate_limiter.model_dump() == {
        "enable_rate_limiter": True,
        "enable_dynamic_adjustment": True,
        "strategy": "conservative",
        "error_threshold": 3,
        "reduction_ratio": 0.7,
        "recovery_delay": 60,
    }
    assert s.reconnection.model_dump() == {
        "max_attempts": 5,
        "base_delay": 1,
        "max_delay": 30,
        "exponential_base": 2,
        "jitter": True,
        "give_up": False,
    }
    assert s.health.model_dump() == {
        "stall_seconds": 10,
        "health_score": 0.8,
        "consecutive_errors": 3,
        "inactive_seconds": 120,
        "memory_usage_mb": 100,
        "reconnect_count": 5,
    }
    assert s.backfill.model_dump() == {"enabled": True, "max_pages": 20, "page_size": 500}
    assert s.logging.model_dump() == {"level": "INFO", "format": "kv"}
    assert s.metrics.model_dump() == {
        "prometheus_port": None,
        "dashboard_port": None,
        "host": "127.0.0.1",
    }
    assert s.credentials is None


def test_settings_are_frozen():
    s = Settings()
    with pytest.raises(ValidationError):
        s.shm.prefix = "other"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        s.logging = s.logging  # type: ignore[misc]


def test_shipped_feedhandler_yaml_loads_with_the_small_real_set():
    s = load_settings(SHIPPED[0], {})
    assert s.upbit.public_url == "wss://api.upbit.com/websocket/v1"
    assert s.upbit.private_url == "wss://api.upbit.com/websocket/v1/private"
    assert s.upbit.rest_url == "https://api.upbit.com"
    assert s.source == str(SHIPPED[0])
    subs = s.subscription_objects(None)
    by_type = {sub.type: sub for sub in subs}
    majors = ("KRW-BTC", "KRW-ETH", "KRW-XRP")
    assert set(by_type) == {"ticker", "orderbook", "trade", "candle.1m"}
    assert by_type["ticker"].codes == majors
    assert by_type["trade"].codes == majors
    assert by_type["orderbook"].market_codes == majors
    assert by_type["candle.1m"].codes == ("KRW-BTC",)


def test_shipped_feedhandler_yaml_spells_out_every_key():
    # The shipped file is the reference users copy: every section and key appears in it.
    data = yaml.safe_load(SHIPPED[0].read_text(encoding="utf-8"))
    assert set(data) == set(Settings.model_fields)
    for section, field in Settings.model_fields.items():
        if section == "subscriptions":
            continue
        assert set(data[section]) == set(field.annotation.model_fields), section


def test_shipped_feedhandler_yaml_shows_the_defaults():
    # Its header says every key shows its default; only the subscriptions are a choice.
    shipped = load_settings(SHIPPED[0], {}).model_dump(exclude={"subscriptions"})
    assert shipped == Settings().model_dump(exclude={"subscriptions"})


def test_shipped_demo_yaml_targets_the_simulator_and_resolves_all():
    s = load_settings(SHIPPED[1], {})
    assert s.upbit.public_url == "ws://127.0.0.1:28765/websocket/v1"
    assert s.upbit.private_url == "ws://127.0.0.1:28765/websocket/v1/private"
    assert s.upbit.rest_url == "http://127.0.0.1:28766"
    assert s.shm.prefix == "upfeed-demo"
    assert s.metrics.prometheus_port is None  # an empty section means defaults
    markets = ["KRW-BTC", "KRW-ETH", "BTC-XRP"]
    subs = {sub.type: sub for sub in s.subscription_objects(markets)}
    assert subs["ticker"].codes == ("BTC-XRP", "KRW-BTC", "KRW-ETH")
    assert subs["trade"].codes == ("BTC-XRP", "KRW-BTC", "KRW-ETH")
    assert subs["orderbook"].codes == ("BTC-XRP.15", "KRW-BTC.15", "KRW-ETH.15")
    assert subs["candle.1m"].codes == ("KRW-BTC", "KRW-ETH", "KRW-XRP")


def test_shipped_demo_urls_follow_the_launcher_overrides():
    env = {
        "UPFEED__UPBIT__PUBLIC_URL": "ws://127.0.0.1:40001/websocket/v1",
        "UPFEED__UPBIT__PRIVATE_URL": "ws://127.0.0.1:40001/websocket/v1/private",
        "UPFEED__UPBIT__REST_URL": "http://127.0.0.1:40002",
    }
    s = load_settings(SHIPPED[1], env)
    assert s.upbit.public_url == env["UPFEED__UPBIT__PUBLIC_URL"]
    assert s.upbit.private_url == env["UPFEED__UPBIT__PRIVATE_URL"]
    assert s.upbit.rest_url == env["UPFEED__UPBIT__REST_URL"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "rate_limiter:\n  strategy: fast\n",
            "rate_limiter.strategy: must be one of conservative, balanced, aggressive (got 'fast')",
        ),
        (
            "subscriptions:\n  - {type: ticker, codes: [KRW-BTC]}\n"
            "  - {type: trade, codes: [krw-btc]}\n",
            "subscriptions[1].codes[0]: malformed market code 'krw-btc'",
        ),
        (
            "zmq:\n  pub_endpiont: ipc:///tmp/x\n",
            "zmq.pub_endpiont: unknown key (did you mean pub_endpoint?)",
        ),
        ("zmqq:\n  sndhwm: 10\n", "zmqq: unknown key (did you mean zmq?)"),
        (
            "connection:\n  max_connections: five\n",
            "connection.max_connections: expected an integer (got str 'five')",
        ),
        (
            "connection:\n  enable_compression: maybe\n",
            "connection.enable_compression: expected true or false (got str 'maybe')",
        ),
        ("connection:\n  recv_timeout: 0\n", "connection.recv_timeout: must be > 0 (got 0)"),
        ("reconnection:\n  base_delay: -1\n", "reconnection.base_delay: must be > 0 (got -1)"),
        (
            "rate_limiter:\n  recovery_delay: -0.5\n",
            "rate_limiter.recovery_delay: must be >= 0 (got -0.5)",
        ),
        (
            "rate_limiter:\n  reduction_ratio: 1\n",
            "rate_limiter.reduction_ratio: must be < 1 (got 1)",
        ),
        (
            "reconnection:\n  base_delay: 5\n  max_delay: 2\n",
            "reconnection: max_delay (2) must be >= base_delay (5)",
        ),
        ("backfill:\n  page_size: 501\n", "backfill.page_size: must be <= 500 (got 501)"),
        (
            "connection:\n  heartbeat_interval: .inf\n",
            "connection.heartbeat_interval: expected a finite number (got float inf)",
        ),
        ("health:\n  health_score: 1.5\n", "health.health_score: must be <= 1 (got 1.5)"),
        (
            "shm:\n  ticker_capacity: 1000\n",
            "shm.ticker_capacity: must be a power of two >= 16 (got 1000)",
        ),
        ("shm:\n  orderbook_capacity: 8\n", "shm.orderbook_capacity: must be a power of two"),
        ("shm:\n  prefix: 'up feed'\n", "shm.prefix: must be 1 to 40 characters"),
        ("shm:\n  prefix: " + "x" * 41 + "\n", "shm.prefix: must be 1 to 40 characters"),
        ("zmq:\n  pub_endpoint: localhost:5555\n", "zmq.pub_endpoint: must be a ZeroMQ endpoint"),
        ("upbit:\n  public_url: https://api.upbit.com\n", "upbit.public_url: must be a ws or wss"),
        ("upbit:\n  format: JSON_LIST\n", "upbit.format: must be one of DEFAULT, SIMPLE"),
        ("logging:\n  level: TRACE\n", "logging.level: must be one of DEBUG, INFO, WARNING, ERROR"),
        ("upbit: [1, 2]\n", "upbit: expected a mapping of keys (got a list)"),
        (
            "subscriptions:\n  - {type: tickr, codes: [KRW-BTC]}\n",
            "subscriptions[0].type: unknown data type 'tickr' (did you mean ticker?",
        ),
        (
            "subscriptions:\n  - {type: ticker, codes: KRW-BTC}\n",
            "subscriptions[0].codes: must be a list of market codes or the word all"
            " (got str 'KRW-BTC')",
        ),
        (
            "subscriptions:\n  - {type: ticker, codes: 5}\n",
            "subscriptions[0].codes: must be a list of market codes or the word all (got int 5)",
        ),
        (
            "subscriptions:\n  - {type: ticker}\n",
            "subscriptions[0]: ticker needs at least one market code",
        ),
        (
            "subscriptions:\n  - {type: orderbook, codes: [KRW-BTC.7]}\n",
            "subscriptions[0].codes[0]: orderbook depth suffix in 'KRW-BTC.7' must be one of",
        ),
        (
            "subscriptions:\n  - {type: orderbook, codes: [BTC-ETH], level: 100}\n",
            "subscriptions[0]: orderbook level grouping is for KRW markets only, not BTC-ETH",
        ),
        (
            "subscriptions:\n  - {type: orderbook, codes: all, level: 1000}\n",
            "subscriptions[0]: level grouping is for KRW markets only",
        ),
        (
            "subscriptions:\n  - {type: myAsset, codes: [KRW-BTC]}\n",
            "subscriptions[0]: myAsset takes no codes",
        ),
        (
            "subscriptions:\n  - {type: trade, codes: all, depth: 15}\n",
            "subscriptions[0]: depth is only valid for orderbook, not trade",
        ),
        (
            "subscriptions:\n  - {type: orderbook, codes: [KRW-BTC.5], depth: 15}\n",
            "subscriptions[0]: give the orderbook depth either as depth or as code suffixes",
        ),
        (
            "subscriptions:\n  - {type: orderbook, codes: all, depth: 7}\n",
            "subscriptions[0].depth: must be one of 1, 5, 15, 30 (got 7)",
        ),
        (
            "subscriptions:\n  - {type: ticker, codes: [KRW-BTC], is_only_snapshot: true,"
            " is_only_realtime: true}\n",
            "subscriptions[0]: is_only_snapshot and is_only_realtime exclude each other",
        ),
        (
            "subscriptions:\n  - {type: ticker, codes: [KRW-BTC], cods: [KRW-ETH]}\n",
            "subscriptions[0].cods: unknown key (did you mean codes?)",
        ),
        ("subscriptions: ticker\n", "subscriptions: expected a list (got str 'ticker')"),
    ],
)
def test_error_names_the_file_and_the_key_path(tmp_path, text, expected):
    path = write(tmp_path, text)
    message = config_error(path)
    assert message.startswith(f"{path}: ")
    assert f"{path}: {expected}" in message
    assert "\n" not in message


def test_error_points_at_the_line(tmp_path):
    path = write(
        tmp_path,
        """\
        shm:
          prefix: upfeed
        rate_limiter:
          strategy: balanced
          reduction_ratio: 2
        """,
    )
    assert config_error(path).endswith("rate_limiter.reduction_ratio: must be < 1 (got 2) (line 5)")
    path = write(tmp_path, "zmq:\n  sndhwm: 5\n\n  pub_endpiont: x\n")
    assert config_error(path).endswith("(did you mean pub_endpoint?) (line 4)")


def test_several_errors_are_counted_in_one_message(tmp_path):
    path = write(tmp_path, "shm:\n  prefix: 'a b'\nbackfill:\n  max_pages: 0\n  page_size: 0\n")
    message = config_error(path)
    assert message.startswith(f"{path}: shm.prefix: must be 1 to 40 characters")
    assert message.endswith("; and 2 more errors")


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    assert config_error(path) == f"{path}: cannot read the config file: No such file or directory"


def test_yaml_syntax_error_reports_the_line(tmp_path):
    path = write(tmp_path, "shm:\n  prefix: upfeed\n  capacity: [1, 2\nzmq: {}\n")
    message = config_error(path)
    assert message.startswith(f"{path}: line 4, column ")
    assert "invalid YAML" in message


def test_top_level_must_be_a_mapping(tmp_path):
    path = write(tmp_path, "- shm\n- zmq\n")
    assert config_error(path) == (
        f"{path}: the top level must be a mapping of sections (got a list)"
    )
    path = write(tmp_path, "just words\n")
    assert "the top level must be a mapping of sections (got str 'just words')" in config_error(
        path
    )


def test_duplicate_keys_are_rejected_not_silently_merged(tmp_path):
    path = write(tmp_path, "shm:\n  prefix: a\nzmq: {}\nshm:\n  prefix: b\n")
    message = config_error(path)
    assert message.startswith(f"{path}: line 4, column 1: invalid YAML: duplicate key 'shm'")


def test_empty_file_means_all_defaults(tmp_path):
    path = write(tmp_path, "# nothing configured\n")
    assert load_settings(path, {}).model_dump() == Settings().model_dump()


def test_secret_looking_keys_are_unknown_and_their_values_never_echoed(tmp_path):
    path = write(tmp_path, f"upbit:\n  secret_key: {SECRET}\n")
    message = config_error(path)
    assert message.startswith(
        f"{path}: upbit.secret_key: unknown key"
        " (API keys are read only from UPBIT_ACCESS_KEY and UPBIT_SECRET_KEY)"
    )
    assert SECRET not in message
    path = write(tmp_path, f"upbit:\n  access_key: {ACCESS}\n")
    message = config_error(path)
    assert message.startswith(f"{path}: upbit.access_key: unknown key (API keys are read only")
    assert ACCESS not in message


def test_env_overrides_nested_keys_with_yaml_scalar_types(tmp_path):
    path = write(tmp_path, "rate_limiter:\n  strategy: conservative\n")
    env = {
        "UPFEED__RATE_LIMITER__STRATEGY": "balanced",
        "UPFEED__UPBIT__PUBLIC_URL": "ws://127.0.0.1:9/websocket/v1",
        "UPFEED__CONNECTION__MAX_CONNECTIONS": "7",
        "UPFEED__CONNECTION__RECV_TIMEOUT": "0.25",
        "UPFEED__BACKFILL__ENABLED": "false",
        "UPFEED__RECONNECTION__GIVE_UP": "true",
        "UPFEED__METRICS__PROMETHEUS_PORT": "9100",
        "UPFEED__SHM__PREFIX": "2024",
        "UPFEED__ZMQ__PUB_ENDPOINT": "tcp://127.0.0.1:5555",
        "UNRELATED": "x",
    }
    s = load_settings(path, env)
    assert s.rate_limiter.strategy == "balanced"
    assert s.upbit.public_url == "ws://127.0.0.1:9/websocket/v1"
    assert s.connection.max_connections == 7
    assert isinstance(s.connection.max_connections, int)
    assert s.connection.recv_timeout == 0.25
    assert s.backfill.enabled is False
    assert s.reconnection.give_up is True
    assert s.metrics.prometheus_port == 9100
    # A text key keeps the text: YAML would read 2024 as a number.
    assert s.shm.prefix == "2024"
    assert s.pub_endpoint({}) == "tcp://127.0.0.1:5555"


def test_env_override_can_clear_an_optional_key_and_set_subscriptions(tmp_path):
    path = write(tmp_path, "zmq:\n  pub_endpoint: tcp://127.0.0.1:5555\n")
    env = {
        "UPFEED__ZMQ__PUB_ENDPOINT": "null",
        "UPFEED__ZMQ__RUNTIME_DIR": "/run/upfeed-test",
        "UPFEED__SUBSCRIPTIONS": "[{type: trade, codes: [KRW-BTC]}]",
    }
    s = load_settings(path, env)
    assert s.zmq.pub_endpoint is None
    assert s.pub_endpoint({}) == "ipc:///run/upfeed-test/upfeed.pub"
    assert s.subscription_objects() == [Subscription("trade", ("KRW-BTC",))]


def test_env_override_naming_an_unknown_key_is_an_error(tmp_path):
    path = write(tmp_path, "{}\n")
    message = config_error(path, {"UPFEED__ZMQ__PUB_ENDPIONT": "tcp://127.0.0.1:1"})
    assert message == (
        f"{path}: zmq.pub_endpiont: unknown key (did you mean pub_endpoint?)"
        " in environment variable UPFEED__ZMQ__PUB_ENDPIONT"
    )
    message = config_error(path, {"UPFEED__RATELIMITER__STRATEGY": "balanced"})
    assert message.startswith(f"{path}: ratelimiter: unknown key (did you mean rate_limiter?)")
    assert "UPFEED__RATELIMITER__STRATEGY" in message
    message = config_error(path, {"UPFEED__SHM__PREFIX__X": "1"})
    assert message.startswith(f"{path}: shm.prefix.x: environment variable UPFEED__SHM__PREFIX__X")


def test_env_override_with_a_bad_value_names_the_variable(tmp_path):
    path = write(tmp_path, "rate_limiter:\n  strategy: balanced\n")
    message = config_error(path, {"UPFEED__RATE_LIMITER__STRATEGY": "fast"})
    assert message == (
        f"{path}: rate_limiter.strategy: must be one of conservative, balanced, aggressive"
        " (got 'fast') (from environment variable UPFEED__RATE_LIMITER__STRATEGY)"
    )
    message = config_error(path, {"UPFEED__CONNECTION__MAX_CONNECTIONS": "0"})
    assert "connection.max_connections: must be >= 1 (got 0)" in message
    assert "UPFEED__CONNECTION__MAX_CONNECTIONS" in message


def test_private_types_need_api_keys(tmp_path):
    path = write(
        tmp_path,
        "subscriptions:\n  - {type: ticker, codes: [KRW-BTC]}\n  - {type: myOrder}\n",
    )
    assert config_error(path) == (
        f"{path}: subscriptions[1].type: myOrder needs API keys:"
        " set UPBIT_ACCESS_KEY and UPBIT_SECRET_KEY"
    )
    s = load_settings(path, KEYS)
    assert s.credentials == Credentials(ACCESS, SECRET)
    assert s.private_types == ("myOrder",)
    path = write(tmp_path, "subscriptions:\n  - {type: myAsset}\n")
    assert "subscriptions[0].type: myAsset needs API keys" in config_error(path)
    # A process that only reads the feed's endpoints does not need the keys.
    reader = load_settings(path, {}, require_credentials=False)
    assert reader.credentials is None
    assert reader.private_types == ("myAsset",)


def test_half_set_api_keys_are_an_error_without_the_value(tmp_path):
    path = write(tmp_path, "{}\n")
    message = config_error(path, {"UPBIT_ACCESS_KEY": ACCESS})
    assert message == f"{path}: UPBIT_SECRET_KEY is not set while the other API key variable is"


def test_secrets_never_appear_in_repr_dump_or_messages(tmp_path):
    path = write(tmp_path, "subscriptions:\n  - {type: myOrder}\n  - {type: myAsset}\n")
    s = load_settings(path, KEYS)
    assert s.credentials is not None
    assert s.credentials.secret_key == SECRET
    rendered = [
        repr(s),
        str(s),
        str(s.model_dump()),
        s.model_dump_json(),
        repr(s.credentials),
        str(s.with_credentials(s.credentials)),
    ]
    for text in rendered:
        assert ACCESS not in text
        assert SECRET not in text
    assert "credentials" not in s.model_dump()
    # A key pasted into a legitimate setting is masked in the error message.
    path = write(tmp_path, f"upbit:\n  public_url: {SECRET}\n")
    message = config_error(path, KEYS)
    assert "upbit.public_url: must be a ws or wss URL" in message
    assert SECRET not in message
    assert "'***'" in message


def test_with_credentials_returns_a_copy():
    keys = Credentials(ACCESS, SECRET)
    s = Settings()
    with_keys = s.with_credentials(keys)
    assert with_keys.credentials is keys
    assert s.credentials is None


def test_subscription_objects_resolve_all_and_options(tmp_path):
    path = write(
        tmp_path,
        """\
        subscriptions:
          - {type: ticker, codes: all, is_only_realtime: true}
          - {type: orderbook, codes: [KRW-BTC, KRW-ETH], depth: 5, level: 1000}
          - {type: orderbook, codes: [KRW-XRP.30, BTC-ETH.1]}
          - {type: myOrder, codes: all}
          - {type: myAsset}
        """,
    )
    s = load_settings(path, KEYS)
    subs = s.subscription_objects(["KRW-BTC", "BTC-ETH"])
    assert subs == [
        Subscription("ticker", ("BTC-ETH", "KRW-BTC"), is_only_realtime=True),
        Subscription("orderbook", ("KRW-BTC.5", "KRW-ETH.5"), level=Decimal(1000)),
        Subscription("orderbook", ("BTC-ETH.1", "KRW-XRP.30")),
        Subscription("myOrder", ()),
        Subscription("myAsset", ()),
    ]
    with pytest.raises(ConfigError, match=r"subscriptions\[0\]: codes: all needs the market list"):
        s.subscription_objects(None)
    with pytest.raises(ConfigError, match=r"subscriptions\[0\]: malformed market code 'krw-x'"):
        s.subscription_objects(["krw-x"])


def test_fractional_level_is_exact(tmp_path):
    path = write(tmp_path, "subscriptions:\n  - {type: orderbook, codes: [KRW-DOGE], level: 0.1}\n")
    (sub,) = load_settings(path, {}).subscription_objects()
    assert sub.level == Decimal("0.1")


def test_endpoints_are_derived_from_runtime_dir_and_prefix(tmp_path):
    s = load_settings(write(tmp_path, "shm:\n  prefix: feed-a\n"), {})
    assert s.runtime_dir({"XDG_RUNTIME_DIR": "/run/user/1000"}) == Path("/run/user/1000/upfeed")
    assert s.pub_endpoint({"XDG_RUNTIME_DIR": "/run/user/1000"}) == (
        "ipc:///run/user/1000/upfeed/feed-a.pub"
    )
    assert s.control_endpoint({}) == f"ipc:///tmp/upfeed-{os.getuid()}/feed-a.ctl"
    explicit = load_settings(
        write(tmp_path, "zmq:\n  control_endpoint: tcp://127.0.0.1:7001\n  runtime_dir: /srv/x\n"),
        {},
    )
    assert explicit.control_endpoint({}) == "tcp://127.0.0.1:7001"
    assert explicit.pub_endpoint({"XDG_RUNTIME_DIR": "/ignored"}) == "ipc:///srv/x/upfeed.pub"


def test_too_long_ipc_path_is_a_config_error(tmp_path):
    path = write(tmp_path, "zmq:\n  runtime_dir: /" + "d" * 100 + "\n")
    s = load_settings(path, {})
    with pytest.raises(ConfigError, match=r"zmq\.pub_endpoint: ipc socket path .* longer than 107"):
        s.pub_endpoint({})


def test_load_settings_or_exit_returns_settings_when_valid():
    assert load_settings_or_exit(SHIPPED[1], {}).shm.prefix == "upfeed-demo"


def test_load_settings_or_exit_prints_one_line_and_exits_2(tmp_path):
    (tmp_path / "bad.yaml").write_text("rate_limiter:\n  strategy: fast\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UPFEED__", "UPBIT_"))}
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "from feedhandler.config import load_settings_or_exit;"
            " load_settings_or_exit('bad.yaml')",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert lines == [
        "error: bad.yaml: rate_limiter.strategy: must be one of conservative, balanced,"
        " aggressive (got 'fast') (line 2)"
    ]


def test_loaded_api_keys_are_redacted_from_logs(tmp_path):
    path = write(tmp_path, "{}\n")
    try:
        load_settings(path, KEYS)
        assert REDACTOR.redact(f"a={ACCESS} b={SECRET}") == "a=*** b=***"
    finally:
        forget_secret(ACCESS)
        forget_secret(SECRET)
