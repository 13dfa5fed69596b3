"""Readable views of a running feed: ``status`` tables, ``segments``, and the live ``top``.

Everything here works on the JSON the control channel answers (``status``,
``segments``), so the same views serve a feed, a replay, or a saved status file.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TextIO

EXIT_CODES = {"healthy": 0, "degraded": 1, "down": 2}
_CLEAR = "\x1b[H\x1b[2J"


def exit_code(state: str | None) -> int:
    """0 healthy, 1 degraded, 2 down (or anything unknown)."""
    return EXIT_CODES.get(state or "down", 2)


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A plain left/right aligned text table (numbers to the right)."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    numeric = [
        all(_is_number(row[i]) for row in cells) and bool(cells) for i in range(len(headers))
    ]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ).rstrip()

    return "\n".join([line(list(headers)), *(line(row) for row in cells)])


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 1e6 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _is_number(text: str) -> bool:
    return text == "-" or text.replace(",", "").replace(".", "", 1).lstrip("-").isdigit()


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def format_status(status: dict[str, Any], *, rates: dict[str, float] | None = None) -> str:
    """The ``status`` reply as a few readable tables."""
    health = status.get("health", {})
    proc = health.get("process", {})
    score = health.get("health_score")
    lines = [
        f"state {status.get('state', '?').upper()}"
        f"  score {'-' if score is None else f'{score:.2f}'}"
        f"  uptime {_duration(status.get('uptime_s', 0))}  markets {status.get('markets', 0)}"
        f"  rss {proc.get('rss_mb', 0):.1f} MB  threads {proc.get('threads', '-')}",
    ]
    replay = status.get("replay")
    if replay:
        lines.append(
            f"replay {replay.get('path')}: {replay.get('frames', 0):,} frames,"
            f" {replay.get('errors', 0)} errors"
        )
    lines.append("")
    conns = health.get("connections", {})
    if conns:
        lines.append(
            table(
                ["connection", "up", "msgs", "msg/s", "reconnects", "errors", "silence_s", "score"],
                [
                    [
                        name,
                        c.get("connected"),
                        c.get("messages_total"),
                        float(c.get("messages_per_s", 0.0)),
                        c.get("reconnects"),
                        c.get("errors"),
                        float(c.get("silence_s", 0.0)),
                        float(c.get("health_score", 0.0)),
                    ]
                    for name, c in sorted(conns.items())
                ],
            )
        )
        lines.append("")
    metrics = status.get("metrics", {})
    messages = metrics.get("messages", {})
    if messages:
        headers = ["type", "count"] + (["per_s"] if rates is not None else [])
        rows = [
            [kind, count] + ([float(rates.get(kind, 0.0))] if rates is not None else [])
            for kind, count in sorted(messages.items())
        ]
        lines.append(table(headers, rows))
        lines.append("")
    pub = metrics.get("publisher", {})
    trades = metrics.get("trades", {})
    rl = status.get("rate_limiter") or metrics.get("rate_limiter") or {}
    lines.append(
        f"zmq sent {pub.get('sent', 0):,} dropped {pub.get('dropped', 0):,} topics "
        f"{pub.get('topics', 0)} | trades {trades.get('published', 0):,} dup "
        f"{trades.get('duplicates_dropped', 0):,} backfilled {trades.get('backfilled', 0):,} "
        f"gaps {trades.get('gaps_reported', 0)} | rate factor {rl.get('rate_factor', 1.0)} "
        f"errors {rl.get('errors', {}).get('total', 0)}"
    )
    segments = status.get("segments", [])
    if segments:
        lines.append("")
        lines.append(format_segments(segments))
    workers = status.get("workers", [])
    if workers:
        lines.append("")
        lines.append(
            table(
                ["worker", "pid", "received", "gaps", "expires_in_s"],
                [
                    [
                        w["worker_id"],
                        w.get("pid"),
                        w.get("received"),
                        w.get("gaps"),
                        w.get("expires_in_s"),
                    ]
                    for w in workers
                ],
            )
        )
    warnings = active_warnings(status)
    if warnings:
        lines.append("")
        lines.extend(f"WARNING {w}" for w in warnings)
    return "\n".join(lines)


def active_warnings(status: dict[str, Any]) -> list[str]:
    """Threshold warnings of every connection and of the process."""
    health = status.get("health", {})
    out = [
        f"{name}: {warning}"
        for name, c in sorted(health.get("connections", {}).items())
        for warning in c.get("warnings", [])
    ]
    out.extend(f"process: {w}" for w in health.get("process", {}).get("warnings", []))
    if status.get("metrics", {}).get("publisher", {}).get("dropped"):
        out.append(f"zmq: {status['metrics']['publisher']['dropped']} messages dropped")
    return out


def format_segments(segments: Sequence[dict[str, Any]]) -> str:
    return table(
        [
            "segment",
            "kind",
            "state",
            "writer",
            "symbols",
            "capacity",
            "head",
            "record_B",
            "asleep",
            "path",
        ],
        [
            [
                s.get("name"),
                s.get("kind"),
                s.get("state", "live"),
                s.get("writer_pid", "-"),
                s.get("symbols", len(s.get("codes", []))),
                s.get("capacity"),
                s.get("head"),
                s.get("record_size"),
                s.get("sleeping_readers", "-"),
                s.get("path"),
            ]
            for s in segments
        ],
    )


def run_top(
    fetch: Callable[[], dict[str, Any]],
    *,
    out: TextIO,
    interval: float = 1.0,
    iterations: int | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    clear: bool = True,
) -> dict[str, Any]:
    """Redraw the status every ``interval`` s with per-second message rates.

    Returns the last status; ``fetch`` errors propagate (the CLI turns them into "down").
    """
    previous: tuple[float, dict[str, int]] | None = None
    status: dict[str, Any] = {}
    drawn = 0
    while iterations is None or drawn < iterations:
        status = fetch()
        now = clock()
        counts = dict(status.get("metrics", {}).get("messages", {}))
        rates: dict[str, float] | None = None
        if previous is not None and now > previous[0]:
            elapsed = now - previous[0]
            rates = {k: (v - previous[1].get(k, 0)) / elapsed for k, v in counts.items()}
        previous = (now, counts)
        text = format_status(status, rates=rates)
        out.write((_CLEAR if clear else "") + text + "\n")
        out.flush()
        drawn += 1
        if iterations is None or drawn < iterations:
            sleep(interval)
    return status
