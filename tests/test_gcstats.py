"""Garbage-collection pauses are counted and timed per generation; freezing exempts the
start-up heap."""

from __future__ import annotations

import gc
import itertools

from feedhandler.gcstats import GcPauses, freeze_startup_heap


def test_every_collection_is_counted_and_timed_by_generation():
    ticks = itertools.count(0, 1500)  # each clock reading is 1.5 us after the last
    pauses = GcPauses(clock_ns=lambda: next(ticks))
    pauses.install()
    try:
        assert pauses.installed
        pauses.install()  # idempotent: one callback, each collection counted once
        cycle: list[object] = []
        cycle.append(cycle)
        del cycle
        gc.collect(0)
        gc.collect(2)
        gc.collect(2)
    finally:
        pauses.uninstall()
    assert not pauses.installed
    gc.collect(2)  # no longer counted
    snap = pauses.snapshot()
    by_gen = {g["generation"]: g for g in snap["generations"]}
    # At least the explicit collections (another thread may trigger more meanwhile).
    assert by_gen[0]["collections"] >= 1
    assert by_gen[2]["collections"] >= 2
    # The self-referencing list was garbage for the first of these collections.
    assert sum(g["collected"] for g in snap["generations"]) >= 1
    for g in snap["generations"]:
        # Two clock readings per collection, 1.5 us apart.
        assert g["pause_ms_total"] == round(g["collections"] * 0.0015, 6)
        assert g["pause_ms_max"] == (0.0015 if g["collections"] else 0.0)
    assert snap["frozen"] == pauses.frozen == 0
    pauses.frozen = 1234
    assert pauses.snapshot()["frozen"] == 1234


def test_freezing_exempts_what_exists_and_new_garbage_is_still_collected():
    try:
        frozen = freeze_startup_heap()
        assert frozen == gc.get_freeze_count() > 1000
        cycle: list[object] = []
        cycle.append(cycle)
        del cycle
        assert gc.collect() >= 1
    finally:
        gc.unfreeze()
    assert gc.get_freeze_count() == 0
