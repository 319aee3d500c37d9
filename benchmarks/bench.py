"""Throughput and memory benchmark: `python benchmarks/bench.py --help` (same as the `emotion-bench` console script)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from emotion.cli import bench_main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(bench_main())
