"""Every message type the simulator emits has the field names and JSON types of real frames.

The reference is the recorded real frames in ``shared/upbit/samples`` (next to the
repository, as for test_codec_samples.py). Differences allowed are exactly the schema
drift SPEC.md documents: the 2021 SIMPLE trade capture predates ``best_*`` (section
4.2), the SIMPLE orderbook capture predates ``lv`` (4.3), the 2021 SIMPLE ticker still
had the removed ``ts``/``msfi`` (4.1), and myOrder fields that are nullable (4.5).
Each frame is also decoded by ``feedhandler.upbit.decode`` when that codec is present.
"""

import json
import time
from decimal import Decimal
from pathlib import Path

import pytest

from simulator import Simulator
from simulator.testing import connect, request, token

SAMPLES = Path(__file__).resolve().parents[1].parent / "shared/upbit/samples"
ACCESS = "schema-access-key"
SECRET = "schema-secret-" * 6

# (type, format) -> (sample file, keys the simulator may add, sample keys it may omit)
REFERENCES = {
    ("ticker", "DEFAULT"): ("ticker_default_KRW-BTC_1.json", set(), set()),
    ("ticker", "SIMPLE"): ("ticker_simple_KRW-BTC_1.json", set(), {"ts", "msfi"}),
    ("trade", "DEFAULT"): ("trade_default_KRW-BTC_1.json", set(), set()),
    ("trade", "SIMPLE"): ("trade_simple_KRW-LAMB_1.json", {"bap", "bas", "bbp", "bbs"}, set()),
    ("orderbook", "DEFAULT"): ("orderbook_default_KRW-BTC_3.json", set(), set()),
    ("orderbook", "SIMPLE"): ("orderbook_simple_KRW-LAMB_1.json", {"lv"}, set()),
    ("candle.1s", "DEFAULT"): ("candle_default_KRW-BTC_1.json", set(), set()),
    ("candle.1s", "SIMPLE"): ("candle_simplelist_KRW-BTC+KRW-ETH_1.json", set(), set()),
    ("myOrder", "DEFAULT"): ("myorder_default_KRW-BTC_1.json", set(), set()),
    ("myAsset", "DEFAULT"): ("myasset_default_KRW_1.json", set(), set()),
}
# myOrder keys whose value is null unless the order uses the feature (SPEC 4.5).
NULLABLE = {"smp_type", "identifier", "time_in_force", "trade_fee", "is_maker", "trade_uuid"}


def json_kind(value):
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float | Decimal):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def compare(emitted, sample, extra=frozenset(), missing=frozenset(), path=""):
    """Field names and JSON kinds of ``emitted`` against ``sample``, recursively."""
    assert set(emitted) - set(sample) <= set(extra), f"{path}: unexpected keys"
    assert set(sample) - set(emitted) <= set(missing), f"{path}: keys missing"
    for key in set(sample) & set(emitted):
        mine, theirs = emitted[key], sample[key]
        if key in NULLABLE and None in (mine, theirs):
            continue
        assert json_kind(mine) == json_kind(theirs), f"{path}{key}: {mine!r} vs {theirs!r}"
        if isinstance(theirs, list) and theirs and isinstance(theirs[0], dict):
            for item in mine:
                compare(item, theirs[0], path=f"{path}{key}[].")


def load_sample(name):
    document = json.loads((SAMPLES / name).read_text(), parse_float=Decimal)
    return document[0] if isinstance(document, list) else document


@pytest.fixture(scope="module")
def emitted():
    """One REALTIME/SNAPSHOT message per (type, format) plus frames of the other kinds."""
    if not SAMPLES.is_dir():
        pytest.skip(f"recorded Upbit samples not found at {SAMPLES}")
    frames: dict[tuple[str, str], bytes] = {}
    with Simulator(
        markets=4, rate=300.0, access_key=ACCESS, secret_key=SECRET, connect_limit=None
    ) as sim:
        for fmt in ("DEFAULT", "SIMPLE"):
            ws = connect(sim.public_url)
            try:
                ws.send(
                    request(
                        {"type": "ticker", "codes": ["KRW-BTC"]},
                        {"type": "trade", "codes": ["KRW-BTC"]},
                        {"type": "orderbook", "codes": ["KRW-BTC"]},
                        {"type": "candle.1s", "codes": ["KRW-BTC"]},
                        fmt=fmt,
                    )
                )
                deadline = time.monotonic() + 5
                while len([k for k in frames if k[1] == fmt]) < 4:
                    assert time.monotonic() < deadline
                    ws.settimeout(max(deadline - time.monotonic(), 0.01))
                    _, payload = ws.recv_data()
                    message = json.loads(payload)
                    frames[(message.get("type", message.get("ty")), fmt)] = payload
            finally:
                ws.close()
        default = connect(sim.private_url, Authorization=f"Bearer {token(ACCESS, SECRET)}")
        simple = connect(sim.private_url, Authorization=f"Bearer {token(ACCESS, SECRET)}")
        try:
            default.send(request({"type": "myOrder"}, {"type": "myAsset"}))
            simple.send(request({"type": "myOrder"}, {"type": "myAsset"}, fmt="SIMPLE"))
            for ws in (default, simple):
                ws.send("PING")
                _, frames[("status", "-")] = ws.recv_data()
            placed = sim.control.place_order(
                market="KRW-BTC", side="bid", ord_type="limit", price="100000000", volume="0.01"
            )
            sim.control.fill_order(placed["uuid"], volume="0.002")
            for ws, fmt in ((default, "DEFAULT"), (simple, "SIMPLE")):
                ws.settimeout(5)
                while ("myOrder", fmt) not in frames or ("myAsset", fmt) not in frames:
                    _, payload = ws.recv_data()
                    message = json.loads(payload)
                    kind = message.get("type", message.get("ty"))
                    if kind == "myAsset" or message.get("state", message.get("s")) == "trade":
                        frames[(kind, fmt)] = payload
        finally:
            default.close()
            simple.close()
        bad = connect(sim.public_url)
        try:
            bad.send(request({"type": "nope", "codes": ["KRW-BTC"]}))
            bad.settimeout(5)
            _, frames[("error", "-")] = bad.recv_data()
        finally:
            bad.close()
    return frames


@pytest.mark.parametrize(("kind", "fmt"), sorted(REFERENCES))
def test_field_names_and_json_types_match_real_frames(emitted, kind, fmt):
    sample_name, extra, missing = REFERENCES[(kind, fmt)]
    message = json.loads(emitted[(kind, fmt)], parse_float=Decimal)
    compare(message, load_sample(sample_name), extra, missing)


def test_status_and_error_frames_match_real_frames(emitted):
    assert json.loads(emitted[("status", "-")]) == load_sample("status_UP_1.json")
    error = json.loads(emitted[("error", "-")])
    sample = load_sample("error_INVALID_PARAM_1.json")
    compare(error, sample)
    compare(error["error"], sample["error"])
    assert error["error"]["name"] == "INVALID_PARAM"


def test_every_emitted_frame_decodes_with_the_feed_codec(emitted):
    try:
        from feedhandler.upbit.decode import decode, default_decoder
    except ImportError as exc:
        pytest.skip(f"feedhandler.upbit.decode is not available yet: {exc}")
    decoder = default_decoder()
    before = sum(decoder.unknown_fields.values())
    for (kind, _), payload in emitted.items():
        event = decode(payload)
        assert event is not None, kind
        document = json.loads(payload, parse_float=Decimal)
        price = document.get("trade_price", document.get("tp"))
        if kind in ("trade", "ticker") and price is not None:
            assert event.trade_price == price
        sid = document.get("sequential_id", document.get("sid"))
        if sid is not None:
            assert event.sequential_id == sid
    assert sum(decoder.unknown_fields.values()) == before
