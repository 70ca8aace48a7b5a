#!/usr/bin/env python3
"""Thin wrapper around ``gpucnn bench`` for a source checkout (no install needed):

    python bench/run_bench.py --model lenet5 --backend numpy --json out.json
    python bench/run_bench.py --help

Exit status as ``gpucnn bench``: 0 ok, 1 a benchmark failed, 2 bad arguments / no backend.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from gpucnn.bench.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
