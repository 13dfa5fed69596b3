"""Seeded mutations of the recorded frames: the codec answers ProtocolError or an event, never
anything else (no RecursionError, UnicodeDecodeError, KeyError or leaked msgspec error)."""

from __future__ import annotations

import contextlib
import json
import random
import re
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from feedhandler.upbit import (
    Decoder,
    HotDecoder,
    HotOrderbook,
    HotTicker,
    HotTrade,
    ProtocolError,
    event_to_json,
    trade_to_json,
)

SAMPLES = Path(__file__).resolve().parents[1].parent / "shared/upbit/samples"
SEED = 20261125
MUTATIONS = 12_000
NUMBER = re.compile(rb"-?[0-9][0-9.eE+-]*")

ODD_VALUES: list[Any] = [
    None, True, False, 0, -1, 10**30, -(10**30), 2**64, 1.5, "", "x", "NaN", "-Infinity",
    "1e400", "\u0000", "\ud7ff", [], [1, "a"], {}, {"a": {"b": []}}, "KRW-BTC", "12.5",
]  # fmt: skip
ODD_NUMBER_TEXTS = [
    b"1e400", b"-1e400", b"1E-400", b"1" + b"0" * 30, b"-0", b"0.0", b"1e99999999999",
    b"00", b"1.", b".5", b"+1", b"0x10", b"Infinity", b"NaN", b"1e", b"--1",
]  # fmt: skip


def load_samples() -> list[bytes]:
    return [path.read_bytes() for path in sorted(SAMPLES.glob("*.json"))]


def json_text(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{json_text(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(json_text(v) for v in value) + "]"
    if isinstance(value, Decimal):
        return str(value)
    return json.dumps(value, ensure_ascii=False)


def paths(tree: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield (*prefix, key)
            yield from paths(value, (*prefix, key))
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            yield (*prefix, index)
            yield from paths(value, (*prefix, index))


def swap_value(rng: random.Random, data: bytes) -> bytes:
    tree = json.loads(data, parse_float=Decimal)
    candidates = list(paths(tree))
    if not candidates:
        return data
    path = rng.choice(candidates)
    parent = tree
    for step in path[:-1]:
        parent = parent[step]
    action = rng.random()
    if action < 0.15 and isinstance(parent, dict):
        del parent[path[-1]]
    elif action < 0.25 and isinstance(parent, dict):
        parent[rng.choice(["sim_ns", "new_key", "ty", "type", "market", "error", "status"])] = (
            rng.choice(ODD_VALUES)
        )
    else:
        parent[path[-1]] = rng.choice(ODD_VALUES)
    return json_text(tree).encode("utf-8", "surrogatepass")


def odd_number(rng: random.Random, data: bytes) -> bytes:
    matches = list(NUMBER.finditer(data))
    if not matches:
        return data
    hit = rng.choice(matches)
    return data[: hit.start()] + rng.choice(ODD_NUMBER_TEXTS) + data[hit.end() :]


def truncate(rng: random.Random, data: bytes) -> bytes:
    return data[: rng.randrange(len(data) + 1)]


def flip_bytes(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        buf[rng.randrange(len(buf))] = rng.randrange(256)
    return bytes(buf)


def splice(rng: random.Random, data: bytes) -> bytes:
    start = rng.randrange(len(data))
    end = min(len(data), start + rng.randint(1, 40))
    insert = rng.choice(
        [b"", b"\xff\xfe", b"\xed\xa0\x80", b'"', b"{", b"]", b",", b"\\u", b"\x00"]
    )
    return data[:start] + insert + data[end:]


def duplicate_span(rng: random.Random, data: bytes) -> bytes:
    start = rng.randrange(len(data))
    end = min(len(data), start + rng.randint(1, 200))
    return data[:end] + data[start:end] + data[end:]


def nest(rng: random.Random, data: bytes) -> bytes:
    depth = rng.choice([10, 1_000, 50_000])
    opener = rng.choice([b"[", b'{"a":'])
    at = data.find(b":") + 1 or 1
    return data[:at] + opener * depth + data[at:]


def wrong_top_level(rng: random.Random, data: bytes) -> bytes:
    return rng.choice(
        [
            b"[" + data + b"]",
            b"[" + data + b"," + data + b"]",
            json.dumps(data.decode("utf-8", "replace")).encode(),
            b"null",
            b"true",
            b"12",
            b'"UP"',
            b"[[" + data + b"]]",
            data + data,
            b"\xef\xbb\xbf" + data,
            b"  \n" + data + b"\n ",
        ]
    )


MUTATORS: list[Callable[[random.Random, bytes], bytes]] = [
    truncate,
    flip_bytes,
    splice,
    duplicate_span,
    swap_value,
    swap_value,
    odd_number,
    odd_number,
    nest,
    wrong_top_level,
]


def exercise(frame: bytes | str, typed: Decoder, hots: list[HotDecoder]) -> int:
    """Run every entry point; return how many succeeded. Only ProtocolError may escape."""
    succeeded = 0
    for attempt in (typed.decode, typed.decode_all, *(hot.decode for hot in hots)):
        try:
            result = attempt(frame)  # type: ignore[operator]
        except ProtocolError as exc:
            assert len(exc.excerpt) <= 80
            continue
        succeeded += 1
        for item in result if isinstance(result, tuple) else (result,):
            if isinstance(item, HotTrade):
                with contextlib.suppress(ProtocolError):
                    json.loads(trade_to_json(item))
            elif not isinstance(item, HotTicker | HotOrderbook):
                json.loads(event_to_json(item))
    return succeeded


@pytest.mark.timeout(60)
def test_seeded_mutations_only_raise_protocol_error() -> None:
    rng = random.Random(SEED)
    samples = load_samples()
    typed = Decoder()
    hots = [HotDecoder(format="DEFAULT", decoder=typed), HotDecoder(format="SIMPLE", decoder=typed)]
    successes = failures = 0
    outcomes: dict[tuple[str, int], int] = {}
    for index in range(MUTATIONS):
        sample = rng.choice(samples)
        mutator = rng.choice(MUTATORS)
        frame = mutator(rng, sample)
        if rng.random() < 0.3:
            frame = mutator(rng, frame) if frame else frame
        as_text = rng.random() < 0.1
        try:
            ok = exercise(
                frame.decode("utf-8", "surrogateescape") if as_text else frame, typed, hots
            )
        except AssertionError:
            raise
        except Exception as exc:  # noqa: BLE001 - the point of the test is to catch any leak
            pytest.fail(f"mutation {index} ({mutator.__name__}) leaked {exc!r}: {frame[:120]!r}")
        successes += ok > 0
        failures += ok < 4
        outcomes[mutator.__name__, ok] = outcomes.get((mutator.__name__, ok), 0) + 1
    # The mutations must exercise both outcomes, or the test proves nothing.
    assert successes > MUTATIONS // 20
    assert failures > MUTATIONS // 2
    for mutator in MUTATORS:
        assert outcomes.get((mutator.__name__, 0), 0) > 0, mutator.__name__
    for mutator in (swap_value, odd_number, duplicate_span):
        assert outcomes.get((mutator.__name__, 4), 0) > 0, mutator.__name__
    assert typed.unknown_fields["trade.new_key"] > 0


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "frame",
    [
        b"[" * 100_000,
        b"{" * 100_000,
        b'{"a":' * 100_000,
        b'{"type":"ticker","code":"KRW-BTC","x":' + b"[" * 100_000,
        b'{"ty":"trade","cd":"KRW-BTC","obu":' + b'{"a":' * 100_000,
        b'{"type":"ticker","code":"KRW-BTC","pad":"' + b"x" * (10 * 1024 * 1024) + b'"}',
        b" " * (10 * 1024 * 1024),
        b"[" + b'{"status":"UP"},' * 700_000 + b'{"status":"UP"}]',
        b'{"type":"trade","code":"KRW-BTC","sequential_id":' + b"9" * 5000 + b"}",
        b'{"type":"myAsset","assets":[{"currency":"KRW","balance":1e999999999999999999}]}',
        b"\xff\xfe\xfd",
        b'{"status":"\xc3"}',
        b"",
        b"null",
        b"{}",
    ],
    ids=lambda f: f"{f[:24]!r}..{len(f)}",
)
def test_hostile_frames(frame: bytes) -> None:
    typed = Decoder()
    hots = [HotDecoder(format="DEFAULT", decoder=typed), HotDecoder(format="SIMPLE", decoder=typed)]
    exercise(frame, typed, hots)
    exercise(frame.decode("utf-8", "surrogateescape"), typed, hots)


@pytest.mark.timeout(60)
def test_large_frames_parse_when_the_cap_allows() -> None:
    pad = "x" * (10 * 1024 * 1024)
    frame = ('{"type":"ticker","code":"KRW-BTC","pad":"' + pad + '"}').encode()
    with pytest.raises(ProtocolError, match="cap"):
        Decoder().decode(frame)
    roomy = Decoder(max_frame_bytes=16 * 1024 * 1024)
    event = roomy.decode(frame)
    assert event.code == "KRW-BTC"
    assert roomy.unknown_fields == {"ticker.pad": 1}


def test_non_frame_arguments() -> None:
    typed = Decoder()
    hots = [HotDecoder(decoder=typed)]
    for frame in (None, 3, 1.5, ["{}"], {"status": "UP"}, object()):
        for attempt in (typed.decode, typed.decode_all, hots[0].decode):
            with pytest.raises(ProtocolError):
                attempt(frame)  # type: ignore[arg-type]
    exercise('{"status":"\udcff"}', typed, hots)
