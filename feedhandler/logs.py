"""Structured logs on the stdlib ``logging`` module: one line per event, never a secret.

Lines are ``ts=... level=... logger=... event=... key=value ...`` (values with spaces
quoted) or JSON objects. Fields travel on the record (:func:`log_event`,
:class:`EventLogger`); plain ``logging`` calls whose message already reads
``name key=value ...`` are split into the same fields, and any other message (from
third-party libraries) becomes the event text. Secrets are removed three ways: fields
whose name looks secret render as ``***``; every value registered with
:func:`register_secret` (API keys, live JWTs) is replaced by ``***`` wherever it appears
in a finished line; and ``Bearer`` tokens and JWT-shaped strings are masked on sight.
"""

from __future__ import annotations

import ast
import collections
import functools
import logging
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Literal, TextIO

import orjson

MASK = "***"
LEVELS: tuple[str, ...] = ("DEBUG", "INFO", "WARNING", "ERROR")
FORMATS: tuple[str, ...] = ("kv", "json")
FIELDS_ATTR = "upfeed_fields"

# Field names are checked word by word (``access_key``, ``auth_token``) so that names
# like ``tokens`` or ``keepalive`` stay readable; the substrings are secret anywhere.
_SECRET_WORDS = frozenset({"key", "secret", "token", "jwt", "authorization", "password"})
_SECRET_SUBSTRINGS = ("secret", "password", "passwd", "jwt", "authorization", "apikey")
_WORD_SPLIT_RE = re.compile(r"[_\-.]|(?<=[a-z0-9])(?=[A-Z])")
_RESERVED = frozenset({"ts", "level", "logger", "event", "exc_type", "exc"})
_NEEDS_QUOTES = re.compile(r'[\s"=\\]|\A\Z')
_BEARER_RE = re.compile(r"(Bearer\s+)[^\s\"',;]+", re.IGNORECASE)
_EVENT_NAME_RE = re.compile(r"[A-Za-z_][\w.:-]*")
_KV_TOKEN_RE = re.compile(
    r"""([A-Za-z_][\w.]*)=("(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*'|[^\s"']\S*|)(?: +|\Z)"""
)
_INT_RE = re.compile(r"-?\d+")
_FLOAT_RE = re.compile(r"-?(\d+\.\d*|\.\d+)([eE][-+]?\d+)?|-?\d+[eE][-+]?\d+")
_WORD_VALUES: dict[str, object] = {"True": True, "False": False, "None": None}
_JWT_RE = re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*")


@functools.lru_cache(maxsize=4096)
def is_secret_field(name: str) -> bool:
    """True when a field named ``name`` must never show its value."""
    lowered = name.lower()
    if any(fragment in lowered for fragment in _SECRET_SUBSTRINGS):
        return True
    return any(word.lower() in _SECRET_WORDS for word in _WORD_SPLIT_RE.split(name))


class Redactor:
    """Known secret values, replaced by ``***`` in rendered lines.

    Pinned secrets (API keys) stay for the life of the process; transient ones (JWTs,
    one per connect) are kept in a bounded most-recent window.
    """

    def __init__(self, transient_capacity: int = 64) -> None:
        self._lock = threading.Lock()
        self._pinned: set[str] = set()
        self._transient: collections.deque[str] = collections.deque(maxlen=transient_capacity)
        # Read without the lock by formatters: replaced whole on every change.
        self._values: tuple[str, ...] = ()

    def register(self, value: str, *, transient: bool = False) -> None:
        if not isinstance(value, str) or not value:
            raise ValueError("a secret to redact must be a non-empty string")
        with self._lock:
            if transient:
                if value not in self._transient and value not in self._pinned:
                    self._transient.append(value)
            else:
                self._pinned.add(value)
            self._rebuild()

    def forget(self, value: str) -> None:
        with self._lock:
            self._pinned.discard(value)
            if value in self._transient:
                self._transient.remove(value)
            self._rebuild()

    def _rebuild(self) -> None:
        # Longest first, so a secret that contains another is replaced whole.
        values = self._pinned.union(self._transient)
        self._values = tuple(sorted(values, key=len, reverse=True))

    def redact(self, text: str) -> str:
        for value in self._values:
            if value in text:
                text = text.replace(value, MASK)
        if "earer" in text:
            text = _BEARER_RE.sub(r"\1" + MASK, text)
        if "eyJ" in text:
            text = _JWT_RE.sub(MASK, text)
        return text


REDACTOR = Redactor()


def register_secret(value: str, *, transient: bool = False) -> None:
    """Redact ``value`` from every line rendered by this module's formatters."""
    REDACTOR.register(value, transient=transient)


def forget_secret(value: str) -> None:
    REDACTOR.forget(value)


class RedactionFilter(logging.Filter):
    """Redacts records for handlers that do not use this module's formatters.

    Attach it to a handler (a file handler, a test's capture handler): the message is
    rendered and redacted once, and secret-named or secret-valued fields are masked, so
    any formatter downstream only sees clean text. The record is modified in place.
    """

    def __init__(self, redactor: Redactor | None = None) -> None:
        super().__init__()
        self._redactor = REDACTOR if redactor is None else redactor

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self._redactor.redact(record.getMessage())
        record.args = None
        fields: dict[str, object] | None = getattr(record, FIELDS_ATTR, None)
        if fields:
            setattr(
                record,
                FIELDS_ATTR,
                {
                    name: MASK
                    if is_secret_field(name)
                    else (self._redactor.redact(value) if isinstance(value, str) else value)
                    for name, value in fields.items()
                },
            )
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self._redactor.redact(record.exc_text)
        return True


class _Timestamps:
    """ISO-8601 UTC timestamps with microseconds; the date part is built once a second."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        micros = int((created - second) * 1_000_000)
        return f"{self._prefix}.{micros:06d}Z"


def _field_name(name: str) -> str:
    return name + "_" if name in _RESERVED else name


def _kv_value(value: object) -> str:
    cls = type(value)
    if cls is str:
        text: str = value  # type: ignore[assignment]
    elif cls is int or cls is float:
        return repr(value)
    elif value is None:
        return "null"
    elif cls is bool:
        return "true" if value else "false"
    else:
        text = str(value)
    if _NEEDS_QUOTES.search(text):
        return orjson.dumps(text).decode()
    return text


def split_kv_message(message: str) -> tuple[str, list[tuple[str, str]]] | None:
    """``"event=name k=v k='a b'"`` or ``"name k=v ..."`` as ``(name, [(k, raw v), ...])``.

    Modules that format their own ``key=value`` messages through plain ``logging`` calls
    get the same line shape (and name-based masking) as :func:`log_event`; any other
    message gives None and is rendered whole as the event.
    """
    head, _, rest = message.partition(" ")
    prefixed = head.startswith("event=")
    head = head.removeprefix("event=")
    if not _EVENT_NAME_RE.fullmatch(head) or not (prefixed or "=" in rest):
        return None
    pairs = []
    position = 0
    while position < len(rest):
        match = _KV_TOKEN_RE.match(rest, position)
        if match is None:
            return None
        pairs.append((match[1], match[2]))
        position = match.end()
    return head, pairs


def _decode_raw_value(raw: str) -> object:
    """A value spliced by ``%s`` / ``%r`` / ``%d`` into a message, as a JSON value."""
    if raw[:1] in ("'", '"'):
        try:
            return ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            return raw[1:-1]
    if _INT_RE.fullmatch(raw):
        return int(raw)
    if _FLOAT_RE.fullmatch(raw):
        return float(raw)
    return _WORD_VALUES.get(raw, raw)


def _inline_kv_value(name: str, raw: str) -> str:
    if is_secret_field(name):
        return MASK
    if raw[:1] in ("'", '"'):
        # One quoting convention per line: %r output is re-quoted like every other value.
        return _kv_value(_decode_raw_value(raw))
    return raw


class _EventFormatter(logging.Formatter):
    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self._redactor = redactor
        self._timestamp = _Timestamps()

    @staticmethod
    def _message(record: logging.LogRecord) -> tuple[str, list[tuple[str, str]]]:
        message = record.getMessage()
        if "=" in message:
            split = split_kv_message(message)
            if split is not None:
                return split
        return message, []

    @staticmethod
    def _fields(record: logging.LogRecord) -> Iterable[tuple[str, object]]:
        fields: dict[str, object] | None = getattr(record, FIELDS_ATTR, None)
        if not fields:
            return ()
        return (
            (_field_name(name), MASK if is_secret_field(name) else value)
            for name, value in fields.items()
        )

    def _exception(self, record: logging.LogRecord) -> tuple[str, str] | None:
        if not record.exc_info:
            return None
        if not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        exc_type = record.exc_info[0]
        return (exc_type.__name__ if exc_type else "None"), record.exc_text


class KeyValueFormatter(_EventFormatter):
    """``ts=... level=... logger=... event=... key=value ...`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        event, inline = self._message(record)
        parts = [
            f"ts={self._timestamp(record.created)}",
            f"level={record.levelname}",
            f"logger={_kv_value(record.name)}",
            f"event={_kv_value(event)}",
        ]
        parts.extend(f"{_field_name(name)}={_inline_kv_value(name, raw)}" for name, raw in inline)
        fields: dict[str, object] | None = getattr(record, FIELDS_ATTR, None)
        if fields:
            for name, value in fields.items():
                if is_secret_field(name):
                    parts.append(f"{_field_name(name)}={MASK}")
                else:
                    parts.append(f"{_field_name(name)}={_kv_value(value)}")
        exception = self._exception(record)
        if exception is not None:
            parts.append(f"exc_type={exception[0]}")
            parts.append(f"exc={_kv_value(exception[1])}")
        return self._redactor.redact(" ".join(parts))


class JsonFormatter(_EventFormatter):
    """One JSON object per line; values orjson cannot encode are rendered with ``str``."""

    def format(self, record: logging.LogRecord) -> str:
        event, inline = self._message(record)
        document: dict[str, object] = {
            "ts": self._timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "event": event,
        }
        for name, raw in inline:
            document[_field_name(name)] = MASK if is_secret_field(name) else _decode_raw_value(raw)
        document.update(self._fields(record))
        exception = self._exception(record)
        if exception is not None:
            document["exc_type"], document["exc"] = exception
        line = orjson.dumps(document, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
        return self._redactor.redact(line)


_HANDLER_MARK = "_upfeed_handler"


def configure_logging(
    level: str = "INFO",
    fmt: Literal["kv", "json"] | str = "kv",
    stream: TextIO | None = None,
    *,
    redactor: Redactor | None = None,
) -> logging.Handler:
    """Install one structured handler on the root logger (replacing an earlier one)."""
    if level not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)} (got {level!r})")
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)} (got {fmt!r})")
    formatter_class = KeyValueFormatter if fmt == "kv" else JsonFormatter
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(formatter_class(REDACTOR if redactor is None else redactor))
    setattr(handler, _HANDLER_MARK, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level)
    return handler


def log_event(logger: logging.Logger, level: int, event: str, /, **fields: object) -> None:
    """Log ``event`` with structured ``fields`` (skipped cheaply when the level is off)."""
    if logger.isEnabledFor(level):
        logger.log(level, event, extra={FIELDS_ATTR: fields}, stacklevel=2)


class EventLogger:
    """A logger whose methods take an event name and keyword fields."""

    __slots__ = ("logger",)

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger

    def is_enabled_for(self, level: int) -> bool:
        return self.logger.isEnabledFor(level)

    def log(self, level: int, event: str, /, **fields: object) -> None:
        if self.logger.isEnabledFor(level):
            self.logger.log(level, event, extra={FIELDS_ATTR: fields}, stacklevel=2)

    def debug(self, event: str, /, **fields: object) -> None:
        if self.logger.isEnabledFor(logging.DEBUG):
            self.logger.log(logging.DEBUG, event, extra={FIELDS_ATTR: fields}, stacklevel=2)

    def info(self, event: str, /, **fields: object) -> None:
        if self.logger.isEnabledFor(logging.INFO):
            self.logger.log(logging.INFO, event, extra={FIELDS_ATTR: fields}, stacklevel=2)

    def warning(self, event: str, /, **fields: object) -> None:
        if self.logger.isEnabledFor(logging.WARNING):
            self.logger.log(logging.WARNING, event, extra={FIELDS_ATTR: fields}, stacklevel=2)

    def error(self, event: str, /, **fields: object) -> None:
        if self.logger.isEnabledFor(logging.ERROR):
            self.logger.log(logging.ERROR, event, extra={FIELDS_ATTR: fields}, stacklevel=2)

    def exception(self, event: str, /, **fields: object) -> None:
        """An ERROR line with the traceback of the exception being handled."""
        if self.logger.isEnabledFor(logging.ERROR):
            self.logger.log(
                logging.ERROR, event, exc_info=True, extra={FIELDS_ATTR: fields}, stacklevel=2
            )


def get_logger(name: str) -> EventLogger:
    return EventLogger(logging.getLogger(name))


class _Window:
    __slots__ = ("event", "fields", "level", "started", "suppressed")

    def __init__(self, started: float, level: int, event: str, fields: dict[str, Any]) -> None:
        self.started = started
        self.suppressed = 0
        self.level = level
        self.event = event
        self.fields = fields


class RateLimitedLog:
    """At most one line per key and interval; later lines carry ``suppressed=<count>``.

    The first occurrence of a key is logged at once. Occurrences within ``interval``
    seconds of the last written line are counted; the next occurrence after the interval
    is written with the count, and :meth:`flush_due` / :meth:`flush` write a summary for
    keys that went quiet. At most ``max_keys`` keys are tracked; the oldest is summarised
    and dropped to make room.
    """

    def __init__(
        self,
        logger: logging.Logger | EventLogger,
        interval: float = 10.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 1024,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be > 0 seconds (got {interval})")
        if max_keys < 1:
            raise ValueError(f"max_keys must be >= 1 (got {max_keys})")
        self._logger = logger.logger if isinstance(logger, EventLogger) else logger
        self._interval = interval
        self._clock = clock
        self._max_keys = max_keys
        self._windows: dict[str, _Window] = {}
        self._lock = threading.Lock()

    def log(self, level: int, key: str, event: str, /, **fields: object) -> bool:
        """Log or count one occurrence; True when a line was written."""
        if not self._logger.isEnabledFor(level):
            return False
        now = self._clock()
        evicted: list[_Window] = []
        with self._lock:
            window = self._windows.get(key)
            if window is not None and now - window.started < self._interval:
                window.suppressed += 1
                window.level, window.event, window.fields = level, event, fields
                return False
            suppressed = 0 if window is None else window.suppressed
            if window is not None:
                del self._windows[key]
            while len(self._windows) >= self._max_keys:
                oldest = next(iter(self._windows))
                evicted.append(self._windows.pop(oldest))
            self._windows[key] = _Window(now, level, event, fields)
        for old in evicted:
            self._summarise(old)
        if suppressed:
            fields = {**fields, "suppressed": suppressed}
        self._logger.log(level, event, extra={FIELDS_ATTR: fields}, stacklevel=2)
        return True

    def flush_due(self) -> int:
        """Summarise keys whose interval has passed; returns the number of lines written."""
        now = self._clock()
        with self._lock:
            due = [
                key
                for key, window in self._windows.items()
                if now - window.started >= self._interval
            ]
            windows = [self._windows.pop(key) for key in due]
        return sum(self._summarise(window) for window in windows)

    def flush(self) -> int:
        """Summarise every key with suppressed occurrences and forget all keys."""
        with self._lock:
            windows = list(self._windows.values())
            self._windows.clear()
        return sum(self._summarise(window) for window in windows)

    def _summarise(self, window: _Window) -> bool:
        if not window.suppressed:
            return False
        fields = {**window.fields, "suppressed": window.suppressed, "summary": True}
        self._logger.log(window.level, window.event, extra={FIELDS_ATTR: fields})
        return True
