import io
import logging
import re
import shlex
import subprocess
import sys
from decimal import Decimal

import orjson
import pytest

from feedhandler.logs import (
    MASK,
    EventLogger,
    RateLimitedLog,
    RedactionFilter,
    Redactor,
    configure_logging,
    get_logger,
    is_secret_field,
    log_event,
)

TS_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z")
API_SECRET = "SecretKeyForTests9876543210zyxwvutsrqponm"
JWT = (
    "eyJhbGciOiJIUzUxMiIsInR5cCI6IkpXVCJ9"
    ".eyJhY2Nlc3Nfa2V5IjoiYWJjIiwibm9uY2UiOiIxMjMifQ"
    ".c2lnbmF0dXJlLWJ5dGVzLWhlcmU"
)


@pytest.fixture
def root_logging():
    """Restore the root logger's handlers and level after a test configures it."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield root
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)


def kv_pairs(line: str) -> dict[str, str]:
    """Parse one key=value line (quoted values use JSON string escapes)."""
    pairs = {}
    for match in re.finditer(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)', line):
        key, value = match.groups()
        pairs[key] = orjson.loads(value) if value.startswith('"') else value
    assert " ".join(m.group(0) for m in re.finditer(r'\w+=("(?:[^"\\]|\\.)*"|\S*)', line)) == line
    return pairs


def capture(fmt: str = "kv", level: str = "DEBUG", redactor: Redactor | None = None):
    stream = io.StringIO()
    configure_logging(level, fmt, stream, redactor=redactor)
    return stream


def test_kv_line_has_prefix_fields_and_quoting(root_logging):
    stream = capture()
    get_logger("feedhandler.conn").info(
        "connected",
        conn="public-0",
        url="ws://127.0.0.1:1/websocket/v1",
        note='two words and a "quote"',
        empty="",
        eq="a=b",
        n=3,
        ratio=0.25,
        up=True,
        down=False,
        nothing=None,
        price=Decimal("1.16539E+8"),
    )
    (line,) = stream.getvalue().splitlines()
    fields = kv_pairs(line)
    assert TS_RE.fullmatch(fields.pop("ts"))
    assert fields == {
        "level": "INFO",
        "logger": "feedhandler.conn",
        "event": "connected",
        "conn": "public-0",
        "url": "ws://127.0.0.1:1/websocket/v1",
        "note": 'two words and a "quote"',
        "empty": "",
        "eq": "a=b",
        "n": "3",
        "ratio": "0.25",
        "up": "true",
        "down": "false",
        "nothing": "null",
        "price": "1.16539E+8",
    }
    assert line.startswith("ts=")
    assert " level=INFO logger=feedhandler.conn event=connected conn=public-0 " in line


def test_one_line_per_event_even_with_newlines_and_tracebacks(root_logging):
    stream = capture()
    log = get_logger("feedhandler.t")
    log.warning("bad frame\nsecond line", payload="a\nb")
    try:
        raise ValueError("broken\nframe")
    except ValueError:
        log.exception("decode failed", conn="public-1")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert kv_pairs(lines[0])["event"] == "bad frame\nsecond line"
    assert kv_pairs(lines[0])["payload"] == "a\nb"
    failed = kv_pairs(lines[1])
    assert failed["level"] == "ERROR"
    assert failed["exc_type"] == "ValueError"
    assert failed["exc"].startswith("Traceback (most recent call last):")
    assert failed["exc"].endswith("ValueError: broken\nframe")


def test_json_lines(root_logging):
    stream = capture("json")
    log = get_logger("feedhandler.router")
    log.info("trade", code="KRW-BTC", seq=2**60 + 1, price=Decimal("0.1"), tags=["a", "b"])
    logging.getLogger("websocket").error("plain %s message", "stdlib")
    first, second = (orjson.loads(line) for line in stream.getvalue().splitlines())
    assert TS_RE.fullmatch(first.pop("ts"))
    assert first == {
        "level": "INFO",
        "logger": "feedhandler.router",
        "event": "trade",
        "code": "KRW-BTC",
        "seq": 2**60 + 1,
        "price": "0.1",
        "tags": ["a", "b"],
    }
    assert second["event"] == "plain stdlib message"
    assert second["logger"] == "websocket"


def test_fields_named_like_the_prefix_do_not_overwrite_it(root_logging):
    for fmt in ("kv", "json"):
        stream = capture(fmt)
        log_event(logging.getLogger("x"), logging.INFO, "book", level=1000, logger="y", ts=1)
        line = stream.getvalue().strip()
        fields = kv_pairs(line) if fmt == "kv" else orjson.loads(line)
        assert fields["level"] == "INFO"
        assert fields["logger"] == "x"
        assert str(fields["level_"]) == "1000"
        assert fields["logger_"] == "y"
        assert str(fields["ts_"]) == "1"


def test_stdlib_messages_with_percent_and_no_args_stay_verbatim(root_logging):
    stream = capture()
    log_event(logging.getLogger("x"), logging.INFO, "100% done")
    assert kv_pairs(stream.getvalue().strip())["event"] == "100% done"


def test_level_filtering_and_reconfiguration(root_logging):
    first = capture(level="INFO")
    log = get_logger("feedhandler.level")
    log.debug("hidden")
    log.info("shown")
    second = capture(level="WARNING")
    log.info("hidden too")
    log.warning("warned")
    assert [kv_pairs(x)["event"] for x in first.getvalue().splitlines()] == ["shown"]
    assert [kv_pairs(x)["event"] for x in second.getvalue().splitlines()] == ["warned"]
    # Reconfiguring replaced the handler instead of adding a second one.
    streams = [getattr(h, "stream", None) for h in root_logging.handlers]
    assert streams.count(second) == 1
    assert first not in streams


def test_bad_level_or_format_is_rejected():
    with pytest.raises(ValueError, match="log level must be one of DEBUG, INFO"):
        configure_logging("TRACE")
    with pytest.raises(ValueError, match="log format must be one of kv, json"):
        configure_logging("INFO", "xml")


@pytest.mark.parametrize(
    "name",
    [
        "key",
        "access_key",
        "secret_key",
        "secretKey",
        "accessKey",
        "api_key",
        "apikey",
        "secret",
        "client_secret",
        "token",
        "auth_token",
        "authToken",
        "jwt",
        "jwt_token",
        "Authorization",
        "authorization_header",
        "password",
        "db_password",
    ],
)
def test_secret_looking_field_names(name):
    assert is_secret_field(name)


@pytest.mark.parametrize("name", ["tokens", "keepalive", "code", "market", "monkey", "seq"])
def test_ordinary_field_names(name):
    assert not is_secret_field(name)


def test_secret_named_fields_are_masked_in_both_formats(root_logging):
    for fmt in ("kv", "json"):
        stream = capture(fmt, redactor=Redactor())
        get_logger("auth").info(
            "signed", access_key="AKEY-visible?", jwt=JWT, authorization="Bearer x", tokens=4
        )
        line = stream.getvalue().strip()
        fields = kv_pairs(line) if fmt == "kv" else orjson.loads(line)
        assert fields["access_key"] == MASK
        assert fields["jwt"] == MASK
        assert fields["authorization"] == MASK
        assert str(fields["tokens"]) == "4"
        assert "AKEY-visible?" not in line
        assert JWT not in line


def test_registered_secrets_are_replaced_anywhere_in_the_line(root_logging):
    redactor = Redactor()
    redactor.register(API_SECRET)
    for fmt in ("kv", "json"):
        stream = capture(fmt, redactor=redactor)
        log = get_logger("feedhandler.private")
        log.info(
            f"handshake with {API_SECRET}", header=f"x-{API_SECRET}-y", nested={"v": API_SECRET}
        )
        logging.getLogger("websocket").info("sent %s", API_SECRET)
        try:
            raise RuntimeError(f"rejected {API_SECRET}")
        except RuntimeError:
            log.exception("auth failed")
        text = stream.getvalue()
        assert API_SECRET not in text
        assert text.count(MASK) >= 5
        assert len(text.splitlines()) == 3


def test_bearer_headers_and_jwts_are_masked_without_registration(root_logging):
    stream = capture(redactor=Redactor())
    logging.getLogger("websocket").debug("--- request header ---\nAuthorization: Bearer %s", JWT)
    get_logger("x").info("token seen", detail=f"got {JWT} back")
    text = stream.getvalue()
    assert JWT not in text
    assert "Bearer ***" in text
    assert "got *** back" in text


def test_forget_and_transient_secrets_are_bounded():
    redactor = Redactor(transient_capacity=3)
    redactor.register("pinned-api-key-value")
    for index in range(5):
        redactor.register(f"transient-jwt-{index}", transient=True)
    line = " ".join(["pinned-api-key-value"] + [f"transient-jwt-{i}" for i in range(5)])
    assert redactor.redact(line) == "*** transient-jwt-0 transient-jwt-1 *** *** ***"
    redactor.forget("pinned-api-key-value")
    assert redactor.redact("pinned-api-key-value") == "pinned-api-key-value"
    with pytest.raises(ValueError, match="non-empty string"):
        redactor.register("")


def test_longer_secret_containing_a_shorter_one_is_masked_whole():
    redactor = Redactor()
    redactor.register("abcdef")
    redactor.register("xxabcdefyy")
    assert redactor.redact("[xxabcdefyy] [abcdef]") == "[***] [***]"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rate_limited_log_first_then_one_line_per_interval(root_logging):
    stream = capture()
    clock = FakeClock()
    limited = RateLimitedLog(logging.getLogger("fuzz"), interval=5.0, clock=clock)
    assert limited.log(logging.WARNING, "bad-frame:public-0", "bad frame", reason="a") is True
    for step in range(9):
        clock.now += 0.5
        assert limited.log(logging.WARNING, "bad-frame:public-0", "bad frame", reason=step) is False
    # Another key has its own window.
    assert limited.log(logging.WARNING, "bad-frame:public-1", "bad frame", reason="b") is True
    clock.now += 0.5  # 5.0 s after the first line
    assert limited.log(logging.WARNING, "bad-frame:public-0", "bad frame", reason="c") is True
    events = [kv_pairs(line) for line in stream.getvalue().splitlines()]
    assert [(e["reason"], e.get("suppressed")) for e in events] == [
        ("a", None),
        ("b", None),
        ("c", "9"),
    ]
    assert all(e["level"] == "WARNING" and e["event"] == "bad frame" for e in events)


def test_rate_limited_log_summaries_for_keys_that_went_quiet(root_logging):
    stream = capture()
    clock = FakeClock()
    limited = RateLimitedLog(get_logger("fuzz"), interval=10.0, clock=clock)
    for _ in range(4):
        limited.log(logging.ERROR, "k1", "oversized frame", size=1)
    limited.log(logging.ERROR, "k2", "bad utf-8")
    limited.log(logging.ERROR, "k3", "bad json")
    limited.log(logging.ERROR, "k3", "bad json")
    clock.now += 9.9
    assert limited.flush_due() == 0
    clock.now += 0.1
    assert limited.flush_due() == 2  # k1 and k3; k2 had nothing suppressed
    assert limited.flush() == 0
    # A key that was summarised starts a fresh window.
    assert limited.log(logging.ERROR, "k1", "oversized frame", size=2) is True
    limited.log(logging.ERROR, "k1", "oversized frame", size=3)
    assert limited.flush() == 1
    lines = [kv_pairs(line) for line in stream.getvalue().splitlines()]
    summaries = [(e["event"], e["suppressed"]) for e in lines if e.get("summary") == "true"]
    assert summaries == [("oversized frame", "3"), ("bad json", "1"), ("oversized frame", "1")]
    assert [e.get("size") for e in lines if e["event"] == "oversized frame"] == [
        "1",
        "1",
        "2",
        "3",
    ]


def test_rate_limited_log_bounds_its_keys(root_logging):
    stream = capture()
    clock = FakeClock()
    limited = RateLimitedLog(logging.getLogger("fuzz"), interval=60.0, clock=clock, max_keys=2)
    limited.log(logging.INFO, "a", "ev-a")
    limited.log(logging.INFO, "a", "ev-a")
    limited.log(logging.INFO, "b", "ev-b")
    limited.log(logging.INFO, "c", "ev-c")  # evicts "a" and writes its summary
    assert limited.log(logging.INFO, "a", "ev-a") is True  # "a" was forgotten
    events = [
        (e["event"], e.get("suppressed")) for e in map(kv_pairs, stream.getvalue().splitlines())
    ]
    assert events == [("ev-a", None), ("ev-b", None), ("ev-a", "1"), ("ev-c", None), ("ev-a", None)]


def test_rate_limited_log_skips_disabled_levels(root_logging):
    stream = capture(level="WARNING")
    limited = RateLimitedLog(logging.getLogger("fuzz"), interval=1.0, clock=FakeClock())
    assert limited.log(logging.DEBUG, "k", "noise") is False
    assert limited.flush() == 0
    assert stream.getvalue() == ""
    with pytest.raises(ValueError, match="interval must be > 0"):
        RateLimitedLog(logging.getLogger("fuzz"), interval=0)


def test_event_logger_wraps_a_stdlib_logger():
    logger = logging.getLogger("feedhandler.wrapped")
    assert get_logger("feedhandler.wrapped").logger is logger
    assert isinstance(get_logger("x"), EventLogger)


def test_a_real_process_writes_json_lines_to_stderr_without_the_secret():
    code = (
        "from feedhandler.logs import configure_logging, get_logger, register_secret\n"
        "configure_logging('INFO', 'json')\n"
        f"register_secret({API_SECRET!r})\n"
        "log = get_logger('feedhandler.child')\n"
        f"log.info('started', pid=1, note='key is {API_SECRET}')\n"
        "log.debug('not shown')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, shlex.quote(result.stderr)
    (line,) = result.stderr.splitlines()
    event = orjson.loads(line)
    assert event["event"] == "started"
    assert event["logger"] == "feedhandler.child"
    assert event["note"] == "key is ***"
    assert API_SECRET not in result.stderr
    assert result.stdout == ""


def test_preformatted_key_value_messages_become_fields(root_logging):
    transport = logging.getLogger("feedhandler.transport")
    ratelimit = logging.getLogger("feedhandler.ratelimit")
    for fmt in ("kv", "json"):
        stream = capture(fmt, redactor=Redactor())
        transport.info("event=ws_closed_by_server code=%d reason=%r", 1001, "going away")
        ratelimit.warning("rate_factor_reduced factor=%.4f source=%s", 0.7, "ws:rate")
        transport.info("event=auth token=%s level=%d", "abc.def.ghi", 3)
        transport.info("connected to %s", "ws://127.0.0.1:1 a=b")
        lines = stream.getvalue().splitlines()
        parse = kv_pairs if fmt == "kv" else orjson.loads
        closed, reduced, auth, plain = (parse(line) for line in lines)
        assert closed["event"] == "ws_closed_by_server"
        assert reduced["event"] == "rate_factor_reduced"
        assert auth["token"] == MASK
        assert auth["level"] == "INFO"
        assert plain["event"] == "connected to ws://127.0.0.1:1 a=b"
        if fmt == "kv":
            assert lines[0].endswith(' event=ws_closed_by_server code=1001 reason="going away"')
            assert (closed["code"], reduced["factor"], reduced["source"]) == (
                "1001",
                "0.7000",
                "ws:rate",
            )
            assert auth["level_"] == "3"
        else:
            assert closed["code"] == 1001
            assert closed["reason"] == "going away"
            assert reduced["factor"] == 0.7
            assert reduced["source"] == "ws:rate"
            assert auth["level_"] == 3
        assert "abc.def.ghi" not in stream.getvalue()


def test_redaction_filter_cleans_records_for_foreign_handlers():
    redactor = Redactor()
    redactor.register(API_SECRET)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    handler.addFilter(RedactionFilter(redactor))
    captured: list[logging.LogRecord] = []
    spy = logging.Handler()
    spy.emit = captured.append  # type: ignore[method-assign]
    spy.addFilter(RedactionFilter(redactor))
    logger = logging.getLogger("feedhandler.foreign")
    logger.addHandler(handler)
    logger.addHandler(spy)
    old_level, logger.level = logger.level, logging.INFO
    try:
        logger.info("auth with %s", API_SECRET)
        get_logger("feedhandler.foreign").info("signed", secret_key="plain", note=API_SECRET, n=1)
        try:
            raise RuntimeError(API_SECRET)
        except RuntimeError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
        logger.removeHandler(spy)
        logger.level = old_level
    text = stream.getvalue()
    assert API_SECRET not in text
    assert "INFO feedhandler.foreign auth with ***" in text
    assert "RuntimeError: ***" in text
    fields = captured[1].upfeed_fields
    assert fields == {"secret_key": MASK, "note": MASK, "n": 1}
