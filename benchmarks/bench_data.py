"""Data benchmark: parse / cache / loader figures on a fake full-size FER2013 CSV.

    python benchmarks/bench_data.py [--rows 35887] [--loader-samples 1920]

Same as ``python -m fer_lightning.data bench``; see fer_lightning/data/bench.py for what is
measured.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from fer_lightning.data.bench import FER2013_ROWS, run_benchmark

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=FER2013_ROWS)
    parser.add_argument("--loader-samples", type=int, default=1920)
    args = parser.parse_args()
    run_benchmark(rows=args.rows, loader_samples=args.loader_samples)
