"""Garbage-collector pauses of this process, and freezing the start-up heap.

A full (generation 2) collection walks every object the collector tracks. Once numpy,
pydantic, ZeroMQ and the rest are imported that is a large heap, and a full collection
stops every thread of the feed for 10-20 ms on the project's machine: no frame is
decoded, no shm record written. :func:`freeze_startup_heap` moves what exists once the
feed has started into the permanent generation (``gc.freeze``), so that later
collections walk only what was allocated since. :class:`GcPauses` times every
collection through ``gc.callbacks``, for the metrics.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

GENERATIONS = 3


def freeze_startup_heap() -> int:
    """Collect once, then exempt every object alive now from later collections.

    Returns how many objects are frozen. Meant for a process's start-up, after its
    long-lived parts exist; objects frozen are still freed when their last reference
    goes, only cycles among them are never collected.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


class GcPauses:
    """Counts and times garbage collections, per generation, once installed."""

    def __init__(self, clock_ns: Callable[[], int] = time.perf_counter_ns) -> None:
        self._clock_ns = clock_ns
        self._started_ns = 0
        self.collections = [0] * GENERATIONS
        self.collected = [0] * GENERATIONS
        self.pause_ns_total = [0] * GENERATIONS
        self.pause_ns_max = [0] * GENERATIONS
        #: Objects frozen at start-up, as counted then: gc.get_freeze_count() walks the
        #: whole permanent generation (about 1 ms for the feed's heap) on every call.
        self.frozen = 0

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        # Runs inside the collector, in whichever thread triggered it: keep it tiny.
        if phase == "start":
            self._started_ns = self._clock_ns()
            return
        pause = self._clock_ns() - self._started_ns
        generation = info["generation"]
        self.collections[generation] += 1
        self.collected[generation] += info["collected"]
        self.pause_ns_total[generation] += pause
        self.pause_ns_max[generation] = max(self.pause_ns_max[generation], pause)

    @property
    def installed(self) -> bool:
        return self._on_gc in gc.callbacks

    def install(self) -> None:
        if not self.installed:
            gc.callbacks.append(self._on_gc)

    def uninstall(self) -> None:
        if self.installed:
            gc.callbacks.remove(self._on_gc)

    def snapshot(self) -> dict[str, Any]:
        """JSON-able: frozen objects, and per generation collections, objects collected,
        total and longest pause (ms)."""
        return {
            "frozen": self.frozen,
            "generations": [
                {
                    "generation": g,
                    "collections": self.collections[g],
                    "collected": self.collected[g],
                    "pause_ms_total": round(self.pause_ns_total[g] / 1e6, 6),
                    "pause_ms_max": round(self.pause_ns_max[g] / 1e6, 6),
                }
                for g in range(GENERATIONS)
            ],
        }
