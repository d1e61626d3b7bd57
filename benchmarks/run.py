"""Entry point of `make bench` (`.venv/bin/python benchmarks/run.py --help`)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `benchmarks`, `tests`

from benchmarks.harness import main

if __name__ == "__main__":
    sys.exit(main())
