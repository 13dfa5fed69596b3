"""``python -m bench NAME [options]`` runs ``bench.NAME.main(options)`` (e.g. ``codec``).

``python -m bench all [--quick|--long]`` runs every benchmark in :data:`ALL` one after the
other; ``--quick`` and ``--long`` go to the scenarios that take them (:data:`SCALED`), the
others run with their defaults.
"""

from __future__ import annotations

import importlib
import re
import sys

ALL = (
    "codec",
    "wsrecv",
    "shm",
    "simulator_burst",
    "feed",
    "batching",
    "reconnect",
    "memory",
    "peers",
    "soak",
    "report",
)
SCALED = frozenset({"feed", "batching", "reconnect", "memory", "peers", "soak", "report"})


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        sys.stdout.write("usage: python -m bench NAME [options]   (for example: codec)\n")
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name == "all":
        failed = [each for each in ALL if main([each, *(rest if each in SCALED else [])]) != 0]
        if failed:
            sys.stderr.write(f"benchmarks failed: {', '.join(failed)}\n")
        return 1 if failed else 0
    if re.fullmatch(r"[a-z_][a-z0-9_]*", name) is None:
        sys.stderr.write(f"not a benchmark name: {name!r}\n")
        return 2
    try:
        module = importlib.import_module(f"bench.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"bench.{name}":
            raise
        sys.stderr.write(f"no benchmark named {name!r}\n")
        return 2
    return int(module.main(rest))


if __name__ == "__main__":
    sys.exit(main())
