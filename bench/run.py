"""Run the benchmarks (``make bench``): today the streaming-conversion benchmark, with its arguments passed through."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_stream import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
