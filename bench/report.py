"""Markdown summary and PNG plots from the JSON results in ``bench/results/``.

    python -m bench report [--results DIR]

Reads whatever scenario files exist (feed, peers, batching, reconnect, memory, and the
component benchmarks), writes ``summary.md`` and the plots beside them:
``latency_cdf_feed.png``, ``latency_cdf_peers.png``, ``throughput_feed.png``,
``throughput_peers.png``, ``rss_peers.png``, ``soak_rss.png``. Every figure in the
summary is shown with its ratio to the floor measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench.harness import RESULTS_DIR


def _load(directory: Path, name: str) -> dict[str, Any] | None:
    path = directory / f"{name}.json"
    if not path.exists():
        return None
    return json.loads(path.read_text())


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.1f}{unit}"
    if isinstance(value, int):
        return f"{value:,}{unit}"
    return f"{value}{unit}"


def _cdf(ax: Any, label: str, latency: dict[str, Any]) -> None:
    if latency.get("cdf_us"):
        ax.plot(latency["cdf_us"], latency["cdf_percent"], label=label)


def _latency_axis(ax: Any, title: str, xlabel: str) -> None:
    ax.set_xscale("log")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("percent")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)


def _save(fig: Any, out: Path, name: str) -> str:
    """Write ``fig`` as ``out/name``, free it, and return the name."""
    fig.tight_layout()
    fig.savefig(out / name, dpi=100)
    plt.close(fig)
    return name


def plot_feed(feed: dict[str, Any], out: Path) -> list[str]:
    made = []
    rates = list(feed.get("latency", {}))
    if rates:
        fig, axes = plt.subplots(1, len(rates), figsize=(5 * len(rates), 4), squeeze=False)
        for ax, rate in zip(axes[0], rates, strict=True):
            entry = feed["latency"][rate]
            _cdf(
                ax, "floor (ws-client+orjson)", entry["floor_websocket_client_orjson"]["latency_us"]
            )
            _cdf(ax, "wire -> shm reader", entry["wire_to_shm"]["latency_us"])
            _cdf(ax, "wire -> ZeroMQ worker", entry["wire_to_zmq_worker"]["latency_us"])
            _latency_axis(ax, f"{rate} msgs/s", "latency (us, log)")
        made.append(_save(fig, out, "latency_cdf_feed.png"))
    tp = feed.get("throughput", {})
    if tp:
        names = list(tp)
        fig, ax = plt.subplots(figsize=(7, 4))
        x = range(len(names))
        ax.bar([i - 0.2 for i in x], [tp[n]["msgs_per_s"] or 0 for n in names], 0.4, label="upfeed")
        ax.bar(
            [i + 0.2 for i in x],
            [tp[n]["floor_msgs_per_s"] or 0 for n in names],
            0.4,
            label="floor",
        )
        ax.set_xticks(list(x), names)
        ax.set_ylabel("msgs/s (burst, no loss)")
        ax.legend()
        ax.grid(True, axis="y", alpha=0.3)
        made.append(_save(fig, out, "throughput_feed.png"))
    return made


def plot_peers(peers: dict[str, Any], out: Path) -> list[str]:
    made = []
    entrants = {n: e for n, e in peers.get("entrants", {}).items() if "throughput" in e}
    if not entrants:
        return made
    names = list(entrants)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar(names, [entrants[n]["throughput"]["msgs_per_s"] or 0 for n in names])
    ax.set_ylabel("order books/s (burst)")
    ax.grid(True, axis="y", alpha=0.3)
    made.append(_save(fig, out, "throughput_peers.png"))
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar(names, [entrants[n].get("rss_mb") or 0 for n in names])
    ax.set_ylabel("RSS MB (with helper processes)")
    ax.grid(True, axis="y", alpha=0.3)
    made.append(_save(fig, out, "rss_peers.png"))
    rates = sorted({r for e in entrants.values() for r in e.get("latency", {})}, key=float)
    if rates:
        fig, axes = plt.subplots(1, len(rates), figsize=(5 * len(rates), 4), squeeze=False)
        for ax, rate in zip(axes[0], rates, strict=True):
            for name in names:
                lat = entrants[name].get("latency", {}).get(rate)
                if lat:
                    _cdf(ax, name, lat["latency_us"])
            _latency_axis(ax, f"order books, {rate} msgs/s", "latency to user code (us, log)")
        made.append(_save(fig, out, "latency_cdf_peers.png"))
    return made


def plot_soak(memory: dict[str, Any], out: Path) -> list[str]:
    soak = next((r["soak"] for r in memory.get("runs", []) if r.get("soak")), None)
    if not soak or not soak.get("rss_mb_series"):
        return []
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(range(len(soak["rss_mb_series"])), soak["rss_mb_series"])
    ax.set_xlabel("seconds")
    ax.set_ylabel("feed RSS MB")
    ax.grid(True, alpha=0.3)
    return [_save(fig, out, "soak_rss.png")]


def _lat_row(name: str, lat: dict[str, Any], vs: Any = None) -> str:
    return (
        f"| {name} | {_fmt(lat.get('p50'))} | {_fmt(lat.get('p99'))} | "
        f"{_fmt(lat.get('p99.9'))} | {_fmt(lat.get('max'))} | {_fmt(vs)} |"
    )


def summary(directory: Path) -> str:
    lines = ["# upfeed benchmark summary", ""]
    feed = _load(directory, "feed")
    peers = _load(directory, "peers")
    batching = _load(directory, "batching")
    reconnect = _load(directory, "reconnect")
    memory = _load(directory, "memory")
    machine = next((d["machine_before"] for d in (feed, peers, memory) if d), None)
    if machine:
        lines += [
            "## Machine",
            "",
            f"{machine['cores']} cores ({machine['cpu_model']}), Python {machine['python']}, "
            f"{machine['platform']}; load average at start {machine['load_avg']}, "
            f"CPU busy {machine['cpu_percent_1s']} % over 1 s.",
            "",
            "Packages: " + ", ".join(f"{k} {v}" for k, v in machine["packages"].items() if v) + ".",
            "",
        ]
    if feed:
        settings = feed["settings"]
        lines += [
            f"## Feed throughput ({feed['mode']}: bursts of {settings['frames_per_burst']:,}"
            f" frames, {settings['markets']} markets)",
            "",
            "| type | upfeed msgs/s | msgs per CPU-s | floor msgs/s | vs floor | no loss |",
            "|---|---|---|---|---|---|",
        ]
        for name, run in feed["throughput"].items():
            lines.append(
                f"| {name} | {_fmt(run['msgs_per_s'])} | {_fmt(run['msgs_per_cpu_second'])} | "
                f"{_fmt(run['floor_msgs_per_s'])} | {_fmt(run['vs_floor'])} | {run['no_loss']} |"
            )
        st = feed.get("stages_ns", {})
        lines += [
            "",
            "Where the time goes (ns per message, in-process, same frames): "
            + ", ".join(
                f"{k} {_fmt(v)}"
                for k, v in st.items()
                if k not in ("frames_per_type", "book_depth")
            )
            + ".",
            "",
            "## Latency (send stamp to consumer, one host)",
            "",
        ]
        for rate, entry in feed["latency"].items():
            lines += [
                f"{rate} msgs/s (load 1 min: {entry['wire_to_shm'].get('load_avg_1m')})",
                "",
                "| path | p50 us | p99 us | p99.9 us | max us | p99 vs floor |",
                "|---|---|---|---|---|---|",
                _lat_row(
                    "floor ws-client+orjson",
                    entry["floor_websocket_client_orjson"]["latency_us"],
                    1.0,
                ),
                _lat_row(
                    "wire -> shm reader",
                    entry["wire_to_shm"]["latency_us"],
                    entry["wire_to_shm"]["p99_vs_floor"],
                ),
                _lat_row(
                    "wire -> ZeroMQ worker",
                    entry["wire_to_zmq_worker"]["latency_us"],
                    entry["wire_to_zmq_worker"]["p99_vs_floor"],
                ),
                "",
            ]
        lines += ["Goals: " + json.dumps(feed.get("goals", {})), ""]
    if peers:
        lines += [
            "## Peers (order books, same simulator stream)",
            "",
            "| entrant | version | msgs/s | vs floor | p99 us @ first rate | RSS MB |"
            " RSS vs floor |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, entry in peers["entrants"].items():
            if "throughput" not in entry:
                lines.append(f"| {name} | n/a | error: {entry.get('error')} | | | | |")
                continue
            first_rate = next(iter(entry.get("latency", {}).values()), {})
            lines.append(
                f"| {name} | {entry.get('version')} | {_fmt(entry['throughput']['msgs_per_s'])} | "
                f"{_fmt(entry['throughput'].get('vs_floor'))} | "
                f"{_fmt(first_rate.get('latency_us', {}).get('p99'))} | "
                f"{_fmt(entry.get('rss_mb'))} | {_fmt(entry.get('rss_vs_floor'))} |"
            )
        lines += ["", "Goals: " + json.dumps(peers.get("goals", {})), ""]
    if batching:
        lines += [
            "## Subscription batching",
            "",
            "| changes | upfeed requests | upfeed converge s | naive accepted | naive errors |"
            " naive converged | paced naive s |",
            "|---|---|---|---|---|---|---|",
        ]
        for run in batching["runs"]:
            up, nv = run["upfeed"], run["naive"]
            lines.append(
                f"| {run['changes']} | {up['requests_sent']} | {up['seconds_to_converge']} | "
                f"{nv['requests_accepted']} | {', '.join(nv['errors']) or 'none'} | "
                f"{nv['converged']} | {nv['paced_naive_seconds_to_converge']} |"
            )
        lines.append("")
    if reconnect:
        s = reconnect["summary"]
        lines += [
            "## Reconnect (seconds after the drop, median / max)",
            "",
            ", ".join(f"{k}: {v['median']} / {v['max']}" for k, v in s.items())
            + f"; floor connect+subscribe+first message: "
            f"{reconnect['floor_connect_subscribe_first_message_s']['median']} s.",
            "",
        ]
    if memory:
        lines += [
            "## Memory",
            "",
            f"Imports only: {memory['imports_only_rss_mb']} MB (third-party), "
            f"{memory.get('feed_modules_imported_rss_mb', 'n/a')} MB (the feed's own modules).",
            "",
            "| markets | feed RSS MB | floor RSS MB | vs floor |",
            "|---|---|---|---|",
        ]
        for run in memory["runs"]:
            lines.append(
                f"| {run['markets']} | {run['feed_rss_mb']} | {run['floor_rss_mb']} | "
                f"{run['feed_vs_floor']} |"
            )
        soak = next((r["soak"] for r in memory["runs"] if r.get("soak")), None)
        if soak:
            lines += [
                "",
                f"Soak {soak['seconds']} s: first {soak['first_mb']} MB, "
                f"last {soak['last_mb']} MB, max {soak['max_mb']} MB, second-half slope "
                f"{soak['second_half_slope_mb_per_min']} MB/min.",
            ]
        lines.append("")
    for name in ("codec", "wsrecv", "shm", "simulator_burst"):
        data = _load(directory, name)
        if data:
            lines.append(f"Component benchmark `{name}`: see `{name}.json`.")
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench report", description=__doc__)
    parser.add_argument("--results", default=str(RESULTS_DIR))
    parser.add_argument("--quick", action="store_true", help="accepted for `bench all`")
    parser.add_argument("--long", action="store_true", help="accepted for `bench all`")
    args = parser.parse_args(argv)
    directory = Path(args.results)
    directory.mkdir(parents=True, exist_ok=True)
    plots: list[str] = []
    feed = _load(directory, "feed")
    peers = _load(directory, "peers")
    memory = _load(directory, "memory")
    if feed:
        plots += plot_feed(feed, directory)
    if peers:
        plots += plot_peers(peers, directory)
    if memory:
        plots += plot_soak(memory, directory)
    text = summary(directory)
    if plots:
        text += "\nPlots: " + ", ".join(plots) + "\n"
    (directory / "summary.md").write_text(text)
    sys.stdout.write(
        json.dumps({"bench": "report", "summary": "summary.md", "plots": plots}) + "\n"
    )
    return 0
