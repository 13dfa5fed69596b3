"""Command line of the feed process: ``python -m feedhandler``."""

from __future__ import annotations

import sys

from feedhandler.cli import main

if __name__ == "__main__":
    sys.exit(main())
