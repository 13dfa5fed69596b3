"""Feed-process settings: YAML file, then ``UPFEED__SECTION__KEY`` overrides, then validation.

The key names are a public contract (DESIGN.md section 5). Every model rejects unknown
keys, and every failure becomes one :class:`ConfigError` whose message names the file and
the key path (``config/demo.yaml: rate_limiter.strategy: must be one of ...``). API keys
come only from ``UPBIT_ACCESS_KEY`` / ``UPBIT_SECRET_KEY`` and are kept out of every
repr, dump and message.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import stat
import sys
import typing
from collections.abc import Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from feedhandler.logs import register_secret
from feedhandler.upbit.auth import ACCESS_KEY_ENV, SECRET_KEY_ENV, Credentials
from feedhandler.upbit.subscription import (
    ALL_TYPES,
    PRIVATE_TYPES,
    Subscription,
    SubscriptionError,
    split_code,
)

log = logging.getLogger("feedhandler.config")

ENV_PREFIX = "UPFEED__"
# A configuration is a page of YAML; anything this large is a wrong file or an attack
# on the parser (YAML aliases can expand a small file, the cap bounds the input).
MAX_CONFIG_BYTES = 1024 * 1024
# What marks a config text as holding a secret: an assignment to a key-like name (in a
# comment too: a pasted ``UPBIT_SECRET_KEY=...`` line is the usual accident) or a URL
# with a password in it.
_SECRET_ASSIGNMENT_RE = re.compile(
    r"(?:(?:access|secret|api)[_-]?key|password|passwd|token)"
    r"(?![\w-]*(?:file|path|dir))[\w-]*[\"']?\s*[:=]\s*[\"']?[^\s\"'#]{8,}",
    re.IGNORECASE,
)
_URL_PASSWORD_RE = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@", re.IGNORECASE)
ALL_MARKETS: Literal["all"] = "all"

# sun_path in sockaddr_un holds 108 bytes including the terminating NUL.
_MAX_IPC_PATH_BYTES = 107
_PREFIX_RE = re.compile(r"[A-Za-z0-9_-]{1,40}")
_ENDPOINT_RE = re.compile(r"(tcp|ipc|inproc)://\S+")
_SECRET_KEY_RE = re.compile(r"(access|secret|api)[_-]?key|password|token|jwt", re.IGNORECASE)
# Discriminator tags of ``SubscriptionEntry.codes``; they show up in pydantic error
# locations and are dropped from the key paths shown to the user.
_CODES_LIST_TAG = "<market codes>"
_CODES_ALL_TAG = "<all markets>"
_MAX_SHOWN_VALUE = 60


class ConfigError(Exception):
    """An unusable configuration; the message names the file and the key path."""

    def __init__(self, message: str, *, source: str = "", key_path: str = "") -> None:
        super().__init__(message)
        self.source = source
        self.key_path = key_path


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


PositiveSeconds = Annotated[float, Field(gt=0)]
NonNegativeSeconds = Annotated[float, Field(ge=0)]


def _url_with_scheme(*schemes: str) -> AfterValidator:
    def check(value: str) -> str:
        scheme, sep, rest = value.partition("://")
        if not sep or scheme not in schemes or not rest or any(c.isspace() for c in value):
            raise ValueError(
                f"must be a {' or '.join(schemes)} URL such as {schemes[-1]}://host/path"
                f" (got {_show(value)})"
            )
        return value

    return AfterValidator(check)


WebSocketUrl = Annotated[str, _url_with_scheme("ws", "wss")]
HttpUrl = Annotated[str, _url_with_scheme("http", "https")]


class UpbitSettings(_Section):
    """Upstream endpoints and wire options."""

    public_url: WebSocketUrl = "wss://api.upbit.com/websocket/v1"
    private_url: WebSocketUrl = "wss://api.upbit.com/websocket/v1/private"
    rest_url: HttpUrl = "https://api.upbit.com"
    format: Literal["DEFAULT", "SIMPLE"] = "DEFAULT"
    jwt_algorithm: Literal["HS512", "HS256"] = "HS512"


def _check_code_entry(entry: str) -> str:
    split_code(entry)
    return entry


def _check_type(value: str) -> str:
    if value not in ALL_TYPES:
        close = difflib.get_close_matches(value, ALL_TYPES, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise ValueError(
            f"unknown data type {value!r} ({hint}expected one of {', '.join(ALL_TYPES)})"
        )
    return value


def _codes_tag(value: object) -> str:
    return _CODES_ALL_TAG if isinstance(value, str) else _CODES_LIST_TAG


CodeEntry = Annotated[str, AfterValidator(_check_code_entry)]
CodeList = Annotated[
    Annotated[tuple[CodeEntry, ...], Tag(_CODES_LIST_TAG), Field(strict=False)]
    | Annotated[Literal["all"], Tag(_CODES_ALL_TAG)],
    Discriminator(_codes_tag),
]


class SubscriptionEntry(_Section):
    """One configured data type: ``codes`` is a list of market codes or ``all``.

    ``depth`` (orderbook only) applies a ``.N`` suffix to every code, which is the only
    way to choose a depth together with ``codes: all``.
    """

    type: Annotated[str, AfterValidator(_check_type)]
    codes: CodeList = ()
    level: int | float | None = None
    depth: Literal[1, 5, 15, 30] | None = None
    is_only_snapshot: bool = False
    is_only_realtime: bool = False

    @property
    def is_all_markets(self) -> bool:
        return self.codes == ALL_MARKETS

    @model_validator(mode="after")
    def _check_combination(self) -> SubscriptionEntry:
        if self.depth is not None:
            if self.type != "orderbook":
                raise ValueError(f"depth is only valid for orderbook, not {self.type}")
            if not self.is_all_markets and any("." in code for code in self.codes):
                raise ValueError("give the orderbook depth either as depth or as code suffixes")
        if self.is_all_markets:
            if self.type == "myAsset":
                raise ValueError("myAsset takes no codes (Upbit answers WRONG_FORMAT)")
            if self.level:
                raise ValueError(
                    "level grouping is for KRW markets only, and codes: all includes others"
                )
            # Checks the type/flag rules with a stand-in for the markets resolved later.
            self._build(("KRW-BTC",))
        else:
            self._build(self.codes)
        return self

    def _build(self, codes: Sequence[str]) -> Subscription:
        if self.depth is not None:
            codes = [f"{code}.{self.depth}" for code in codes]
        level = None if self.level is None else Decimal(str(self.level))
        return Subscription(
            self.type,
            tuple(codes),
            level=level,
            is_only_snapshot=self.is_only_snapshot,
            is_only_realtime=self.is_only_realtime,
        )

    def subscription(self, all_codes: Sequence[str] | None) -> Subscription:
        """The validated subscription, with ``codes: all`` replaced by ``all_codes``."""
        if not self.is_all_markets:
            return self._build(self.codes)
        if self.type == "myOrder":
            # Upbit streams myOrder for every market when codes are omitted.
            return self._build(())
        if all_codes is None:
            raise ValueError("codes: all needs the market list (REST /v1/market/all)")
        return self._build(all_codes)


class ConnectionSettings(_Section):
    """WebSocket connection behaviour."""

    heartbeat_interval: PositiveSeconds = 30.0
    enable_compression: bool = False
    connect_timeout: PositiveSeconds = 10.0
    recv_timeout: PositiveSeconds = 1.0
    max_codes_per_connection: int = Field(default=1000, ge=1)
    max_connections: int = Field(default=5, ge=1)
    # Microseconds a connection thread polls its socket without sleeping before it
    # blocks: 0 blocks at once (no idle CPU); a few thousand keeps a busy feed off the
    # scheduler's wake-up path at the cost of a core.
    busy_poll_us: int = Field(default=0, ge=0, le=1_000_000)


class ShmSettings(_Section):
    """Shared-memory segment naming and ring sizes."""

    prefix: str = "upfeed"
    ticker_capacity: int = 4096
    orderbook_capacity: int = 4096
    heartbeat_interval: PositiveSeconds = 0.5

    @field_validator("prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        if not _PREFIX_RE.fullmatch(value):
            raise ValueError(
                f"must be 1 to 40 characters of A-Z, a-z, 0-9, '_' or '-' (got {_show(value)})"
            )
        return value

    @field_validator("ticker_capacity", "orderbook_capacity")
    @classmethod
    def _check_capacity(cls, value: int) -> int:
        if value < 16 or value & (value - 1):
            raise ValueError(f"must be a power of two >= 16 (got {value})")
        return value


class ZmqSettings(_Section):
    """ZeroMQ endpoints; unset endpoints are derived from the runtime dir and shm prefix."""

    pub_endpoint: str | None = None
    control_endpoint: str | None = None
    runtime_dir: str | None = None
    sndhwm: int = Field(default=100_000, ge=1)
    # ZeroMQ's I/O thread as SCHED_BATCH (SCHED_IDLE while confined to one core): it
    # never preempts a connection thread (see feedhandler.publisher).
    io_thread_sched_batch: bool = True
    curve_server_secret_key_file: str | None = None
    curve_public_key_file: str | None = None

    @field_validator("pub_endpoint", "control_endpoint")
    @classmethod
    def _check_endpoint(cls, value: str | None) -> str | None:
        if value is not None and not _ENDPOINT_RE.fullmatch(value):
            raise ValueError(
                f"must be a ZeroMQ endpoint tcp://host:port, ipc://path or inproc://name"
                f" (got {_show(value)})"
            )
        return value

    @field_validator("runtime_dir")
    @classmethod
    def _check_runtime_dir(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must be a directory path, not empty")
        return value


class RateLimiterSettings(_Section):
    """Request and connection rate limiting against Upbit's published limits."""

    enable_rate_limiter: bool = True
    enable_dynamic_adjustment: bool = True
    strategy: Literal["conservative", "balanced", "aggressive"] = "conservative"
    error_threshold: int = Field(default=3, ge=1)
    reduction_ratio: float = Field(default=0.7, gt=0, lt=1)
    recovery_delay: NonNegativeSeconds = 60.0


class ReconnectionSettings(_Section):
    """Backoff between reconnect attempts."""

    max_attempts: int = Field(default=5, ge=1)
    base_delay: PositiveSeconds = 1.0
    max_delay: PositiveSeconds = 30.0
    exponential_base: float = Field(default=2.0, ge=1)
    jitter: bool = True
    give_up: bool = False

    @model_validator(mode="after")
    def _check_delays(self) -> ReconnectionSettings:
        if self.max_delay < self.base_delay:
            raise ValueError(
                f"max_delay ({_number(self.max_delay)}) must be >= base_delay"
                f" ({_number(self.base_delay)})"
            )
        return self


class HealthSettings(_Section):
    """Thresholds for stall detection and health reporting."""

    stall_seconds: PositiveSeconds = 10.0
    health_score: float = Field(default=0.8, ge=0, le=1)
    consecutive_errors: int = Field(default=3, ge=1)
    inactive_seconds: PositiveSeconds = 120.0
    memory_usage_mb: float = Field(default=100.0, gt=0)
    reconnect_count: int = Field(default=5, ge=1)


class BackfillSettings(_Section):
    """REST trade backfill after a gap."""

    enabled: bool = True
    max_pages: int = Field(default=20, ge=1)
    page_size: int = Field(default=500, ge=1, le=500)


class LoggingSettings(_Section):
    """Log level and line format."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["kv", "json"] = "kv"


class MetricsSettings(_Section):
    """Metrics export and the dashboard (both off unless a port is set)."""

    prometheus_port: int | None = Field(default=None, ge=1, le=65535)
    dashboard_port: int | None = Field(default=None, ge=1, le=65535)
    host: str = "127.0.0.1"


class Settings(_Section):
    """The whole feed-process configuration."""

    upbit: UpbitSettings = UpbitSettings()
    subscriptions: tuple[SubscriptionEntry, ...] = Field(default=(), strict=False)
    connection: ConnectionSettings = ConnectionSettings()
    shm: ShmSettings = ShmSettings()
    zmq: ZmqSettings = ZmqSettings()
    rate_limiter: RateLimiterSettings = RateLimiterSettings()
    reconnection: ReconnectionSettings = ReconnectionSettings()
    health: HealthSettings = HealthSettings()
    backfill: BackfillSettings = BackfillSettings()
    logging: LoggingSettings = LoggingSettings()
    metrics: MetricsSettings = MetricsSettings()

    _credentials: Credentials | None = PrivateAttr(default=None)
    _source: str = PrivateAttr(default="<settings>")

    @property
    def credentials(self) -> Credentials | None:
        """API keys from the environment; never part of repr, dumps or messages."""
        return self._credentials

    @property
    def source(self) -> str:
        """The file these settings were loaded from."""
        return self._source

    @property
    def private_types(self) -> tuple[str, ...]:
        return tuple(entry.type for entry in self.subscriptions if entry.type in PRIVATE_TYPES)

    def with_credentials(self, credentials: Credentials | None) -> Settings:
        """A copy carrying ``credentials``."""
        copy = self.model_copy()
        copy._credentials = credentials
        return copy

    def subscription_objects(self, all_codes: Sequence[str] | None = None) -> list[Subscription]:
        """The configured subscriptions, ``codes: all`` resolved to ``all_codes``.

        ``all_codes`` is the market list from REST ``/v1/market/all``; it may be None
        when no entry uses ``codes: all``.
        """
        result = []
        for index, entry in enumerate(self.subscriptions):
            try:
                result.append(entry.subscription(all_codes))
            except (SubscriptionError, ValueError) as exc:
                raise _error(self._source, f"subscriptions[{index}]", str(exc)) from None
        return result

    def runtime_dir(self, environ: Mapping[str, str] | None = None) -> Path:
        """``zmq.runtime_dir``, else ``$XDG_RUNTIME_DIR/upfeed``, else ``/tmp/upfeed-<uid>``."""
        if self.zmq.runtime_dir is not None:
            return Path(self.zmq.runtime_dir)
        env = os.environ if environ is None else environ
        xdg = env.get("XDG_RUNTIME_DIR", "")
        if xdg:
            return Path(xdg) / "upfeed"
        return Path(f"/tmp/upfeed-{os.getuid()}")

    def pub_endpoint(self, environ: Mapping[str, str] | None = None) -> str:
        """The PUB endpoint: ``zmq.pub_endpoint`` or ``ipc://<runtime_dir>/<prefix>.pub``."""
        return self._endpoint(self.zmq.pub_endpoint, "pub", "zmq.pub_endpoint", environ)

    def control_endpoint(self, environ: Mapping[str, str] | None = None) -> str:
        """The control endpoint: ``zmq.control_endpoint`` or ``ipc://<runtime_dir>/<prefix>.ctl``."""
        return self._endpoint(self.zmq.control_endpoint, "ctl", "zmq.control_endpoint", environ)

    def _endpoint(
        self, configured: str | None, suffix: str, key_path: str, environ: Mapping[str, str] | None
    ) -> str:
        if configured is not None:
            endpoint = configured
        else:
            endpoint = f"ipc://{self.runtime_dir(environ) / f'{self.shm.prefix}.{suffix}'}"
        if endpoint.startswith("ipc://"):
            socket_path = endpoint.removeprefix("ipc://")
            if len(os.fsencode(socket_path)) > _MAX_IPC_PATH_BYTES:
                raise _error(
                    self._source,
                    key_path,
                    f"ipc socket path {socket_path!r} is longer than {_MAX_IPC_PATH_BYTES} bytes;"
                    " set zmq.runtime_dir to a shorter directory",
                )
        return endpoint


def _error(source: str, key_path: str, message: str) -> ConfigError:
    where = f"{source}: {key_path}: " if key_path else f"{source}: "
    return ConfigError(where + message, source=source, key_path=key_path)


def _show(value: object) -> str:
    text = repr(value)
    if len(text) > _MAX_SHOWN_VALUE:
        text = text[: _MAX_SHOWN_VALUE - 3] + "..."
    return text


def _number(value: object) -> object:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _type_name(value: object) -> str:
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if value is None:
        return "nothing (null)"
    return f"{type(value).__name__} {_show(value)}"


# --- locating keys in the model ------------------------------------------------------


def _unwrap(annotation: Any) -> Any:
    """Strip Annotated and Optional wrappers."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is Annotated:
            annotation = typing.get_args(annotation)[0]
            continue
        args = typing.get_args(annotation)
        if args and type(None) in args and origin is not Literal:
            rest = [a for a in args if a is not type(None)]
            if len(rest) == 1:
                annotation = rest[0]
                continue
        return annotation


def _model_at(path: Sequence[str | int]) -> type[BaseModel] | None:
    """The model class whose keys live at ``path`` (e.g. ``("subscriptions", 0)``)."""
    annotation: Any = Settings
    for part in path:
        if isinstance(part, int):
            if typing.get_origin(annotation) is not tuple:
                return None
            annotation = _unwrap(typing.get_args(annotation)[0])
        else:
            if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
                return None
            field = annotation.model_fields.get(part)
            if field is None:
                return None
            annotation = _unwrap(field.annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _unknown_key_message(path: Sequence[str | int]) -> str:
    key = str(path[-1])
    if _SECRET_KEY_RE.search(key):
        return f"unknown key (API keys are read only from {ACCESS_KEY_ENV} and {SECRET_KEY_ENV})"
    parent = _model_at(path[:-1])
    if parent is not None:
        close = difflib.get_close_matches(key, list(parent.model_fields), n=1)
        if close:
            return f"unknown key (did you mean {close[0]}?)"
    return "unknown key"


def _key_path(loc: Sequence[str | int]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part not in (_CODES_LIST_TAG, _CODES_ALL_TAG):
            text += f".{part}" if text else part
    return text


def _explain(error: Mapping[str, Any]) -> str:
    """One pydantic error as a sentence without the location."""
    kind = error["type"]
    loc = error["loc"]
    value = error.get("input")
    ctx = error.get("ctx") or {}
    if kind == "extra_forbidden":
        # The value of an unknown key is never echoed: it might be a secret.
        return _unknown_key_message([p for p in loc if p not in (_CODES_LIST_TAG, _CODES_ALL_TAG)])
    if _CODES_ALL_TAG in loc or (_CODES_LIST_TAG in loc and loc[-1] == _CODES_LIST_TAG):
        return f"must be a list of market codes or the word all (got {_type_name(value)})"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    if kind == "missing":
        return "required key is missing"
    if kind == "literal_error":
        choices = re.findall(r"'([^']*)'|(\d+)", str(ctx.get("expected", "")))
        names = ", ".join(a or b for a, b in choices)
        return f"must be one of {names} (got {_show(value)})"
    limits = {
        "greater_than": (">", "gt"),
        "greater_than_equal": (">=", "ge"),
        "less_than": ("<", "lt"),
        "less_than_equal": ("<=", "le"),
    }
    if kind in limits:
        symbol, key = limits[kind]
        return f"must be {symbol} {_number(ctx.get(key))} (got {_show(value)})"
    expected = {
        "int_type": "an integer",
        "float_type": "a number",
        "finite_number": "a finite number",
        "bool_type": "true or false",
        "string_type": "a string",
        "model_type": "a mapping of keys",
        "tuple_type": "a list",
        "list_type": "a list",
    }.get(kind)
    if expected is not None:
        return f"expected {expected} (got {_type_name(value)})"
    return f"{error['msg']} (got {_show(value)})"


# --- YAML ---------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys instead of keeping the last one."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node)


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,  # type: ignore[arg-type]
)


def _yaml_line(text: str, loc: Sequence[str | int], *, at_key: bool) -> int | None:
    """The 1-based line of the YAML node at ``loc`` (or of its nearest existing parent)."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None
    line = None
    for index, part in enumerate(loc):
        if isinstance(node, yaml.MappingNode):
            match = [(k, v) for k, v in node.value if k.value == part]
            if not match:
                break
            key_node, node = match[-1]
            last = index == len(loc) - 1
            line = (key_node if at_key and last else node).start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                break
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _read_yaml(source: str, path: Path) -> tuple[str, dict[str, Any]]:
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise _error(source, "", f"cannot read the config file: {exc.strerror or exc}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise _error(source, "", f"the config file is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _error(source, "", f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        raise _error(source, "", f"{where}invalid YAML: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise _error(
            source, "", f"the top level must be a mapping of sections (got {_type_name(data)})"
        )
    for section, value in data.items():
        # An empty section (only comments under it) means "all defaults".
        if value is None and _model_at([section]) is not None:
            data[section] = {}
    return text, data


# --- environment overrides ----------------------------------------------------------


def _is_text_field(path: Sequence[str]) -> bool:
    parent = _model_at(path[:-1])
    if parent is None or path[-1] not in parent.model_fields:
        return False
    annotation = _unwrap(parent.model_fields[path[-1]].annotation)
    return annotation is str


def _apply_overrides(
    source: str, data: dict[str, Any], environ: Mapping[str, str]
) -> dict[tuple[str, ...], str]:
    """Merge ``UPFEED__SECTION__KEY`` variables into ``data``; returns path -> variable."""
    applied: dict[tuple[str, ...], str] = {}
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX):
            continue
        path = tuple(part.lower() for part in name[len(ENV_PREFIX) :].split("__"))
        if not all(path):
            raise _error(source, "", f"environment variable {name}: empty key in the name")
        for depth in range(len(path)):
            parent = _model_at(path[:depth])
            if parent is None:
                raise _error(
                    source,
                    ".".join(path[: depth + 1]),
                    f"environment variable {name}: not a settable key",
                )
            if path[depth] not in parent.model_fields:
                message = _unknown_key_message(path[: depth + 1])
                raise _error(
                    source, ".".join(path[: depth + 1]), f"{message} in environment variable {name}"
                )
        raw = environ[name]
        try:
            value: Any = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        if value is not None and _is_text_field(path):
            # YAML would turn a prefix like 2024 or a path like on into a number or a bool.
            value = raw
        target = data
        for depth, part in enumerate(path[:-1]):
            child = target.get(part)
            if child is None:
                child = target[part] = {}
            if not isinstance(child, dict):
                raise _error(
                    source,
                    ".".join(path[: depth + 1]),
                    f"environment variable {name} sets a key inside a value that is not a mapping",
                )
            target = child
        target[path[-1]] = value
        applied[path] = name
    return applied


# --- loading ------------------------------------------------------------------------


def _scrub(message: str, credentials: Credentials | None) -> str:
    if credentials is not None:
        for secret in (credentials.access_key, credentials.secret_key):
            message = message.replace(secret, "***")
    return message


def _readable_by_others(path: Path) -> int | None:
    """The file's permission bits if its group or other users may read it, else None."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return None
    return mode if mode & (stat.S_IRGRP | stat.S_IROTH) else None


def secret_exposure(
    path: Path, text: str, credentials: Credentials | None, settings: Settings | None = None
) -> list[str]:
    """Why secrets in or named by the config may be readable by other users (empty: fine).

    The config file counts when others may read it and its text holds a secret: the API
    keys of this process, an assignment to a key-like name (comments included) or a URL
    with a password. The CURVE secret key file it names always holds a secret. The
    reasons never contain the secret itself.
    """
    reasons: list[str] = []
    mode = _readable_by_others(path)
    if mode is not None:
        found = []
        if credentials is not None and any(
            value in text for value in (credentials.access_key, credentials.secret_key)
        ):
            found.append("the API keys of this process")
        if _SECRET_ASSIGNMENT_RE.search(text):
            found.append("a key, token or password assignment")
        if _URL_PASSWORD_RE.search(text):
            found.append("a URL with a password")
        if found:
            reasons.append(
                f"{path} (mode {mode:04o}) is readable by other users and contains "
                f"{', '.join(found)}; chmod 600 it and keep API keys in the environment"
            )
    secret_file = settings.zmq.curve_server_secret_key_file if settings is not None else None
    if secret_file:
        mode = _readable_by_others(Path(secret_file))
        if mode is not None:
            reasons.append(
                f"the CURVE secret key file {secret_file} (mode {mode:04o}) is readable by "
                "other users; chmod 600 it"
            )
    return reasons


def load_settings(
    path: str | Path,
    environ: Mapping[str, str] | None = None,
    *,
    require_credentials: bool = True,
) -> Settings:
    """Read the YAML file, apply ``UPFEED__SECTION__KEY`` overrides and validate.

    Raises :class:`ConfigError` with one message naming the file and the key path.
    ``require_credentials=False`` is for processes that read the feed's settings (for
    its endpoints, say) but never connect to the private stream themselves.
    """
    env = os.environ if environ is None else environ
    source = str(path)
    try:
        credentials = Credentials.from_env(env)
    except ValueError as exc:
        raise _error(source, "", str(exc)) from None
    text, data = _read_yaml(source, Path(path))
    overrides = _apply_overrides(source, data, env)
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        first = errors[0]
        loc = tuple(first["loc"])
        key_path = _key_path(loc)
        message = _explain(first)
        clean_loc = tuple(p for p in loc if p not in (_CODES_LIST_TAG, _CODES_ALL_TAG))
        variable = next(
            (var for p, var in overrides.items() if clean_loc[: len(p)] == p),
            None,
        )
        if variable is not None:
            message += f" (from environment variable {variable})"
        else:
            line = _yaml_line(text, clean_loc, at_key=first["type"] == "extra_forbidden")
            if line is not None:
                message += f" (line {line})"
        if len(errors) > 1:
            more = len(errors) - 1
            message += f"; and {more} more error{'s' if more > 1 else ''}"
        raise _error(source, key_path, _scrub(message, credentials)) from None
    settings._source = source
    settings._credentials = credentials
    for reason in secret_exposure(Path(path), text, credentials, settings):
        log.warning("event=config_secret_readable detail=%r", reason)
    if credentials is not None:
        # Whatever this process logs from now on, these values render as ***.
        register_secret(credentials.access_key)
        register_secret(credentials.secret_key)
    if credentials is None and require_credentials:
        for index, entry in enumerate(settings.subscriptions):
            if entry.type in PRIVATE_TYPES:
                raise _error(
                    source,
                    f"subscriptions[{index}].type",
                    f"{entry.type} needs API keys: set {ACCESS_KEY_ENV} and {SECRET_KEY_ENV}",
                )
    return settings


def load_settings_or_exit(
    path: str | Path,
    environ: Mapping[str, str] | None = None,
    *,
    require_credentials: bool = True,
) -> Settings:
    """:func:`load_settings`, or ``error: <message>`` on stderr and exit status 2."""
    try:
        return load_settings(path, environ, require_credentials=require_credentials)
    except ConfigError as exc:
        _exit_with(str(exc))


def _exit_with(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)
