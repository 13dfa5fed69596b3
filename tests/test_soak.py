"""Bounded soak: 100 forced disconnects with traffic flowing, under a minute.

The long form is ``python -m bench soak --long``; both run :func:`bench.soak.run_soak`.
"""

from __future__ import annotations

import json

from bench.soak import run_soak

# One disconnect per 0.4 s, each backfilling 2 markets, stays inside the feed's own
# connect and REST limits (conservative: 60 % of Upbit's 5 connects/s and 10 trade
# requests/s), so recovery measures the feed, not its deliberate waiting.
INTERVAL_S = 0.4
# Resident memory may grow while the per-code de-duplication windows fill and the
# allocator settles; a leak per reconnect (buffers, sockets, threads) grows far faster.
MAX_RSS_GROWTH_MB = 12.0


def test_100_disconnects_lose_and_duplicate_nothing_and_memory_stays_flat(record_property):
    result = run_soak(disconnects=100, interval=INTERVAL_S, markets=2, rate=150.0)
    record_property("soak", json.dumps({k: result[k] for k in ("recovery_s", "rss_mb")}))
    print(json.dumps(result))
    trades = result["trades"]
    assert trades["codes"] == 2
    assert trades["checked"] > 2500
    assert trades["lost"] == 0, trades["lost_sids"]
    assert trades["duplicated"] == 0
    assert trades["invented"] == 0
    assert trades["out_of_order"] == []
    assert result["gaps_reported"] == 0
    assert result["rest_calls"] > 100, "every disconnect backfills its codes"
    assert result["connections_seen"] >= 101
    assert result["limit_violations"] == 0
    assert result["exit_status"] == 0
    assert result["tracebacks"] == 0
    assert result["rss_mb"]["growth_after_warmup"] < MAX_RSS_GROWTH_MB, result["rss_mb"]
