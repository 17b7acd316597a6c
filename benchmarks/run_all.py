"""Run every benchmark in turn (`make bench`); each prints its own ratios/medians."""

from __future__ import annotations

import runpy
import sys

BENCHMARKS = ["benchmarks.bench_ingest", "benchmarks.bench_stats", "benchmarks.bench_publish", "benchmarks.bench_vlm_runner", "benchmarks.bench_vlm_server", "benchmarks.bench_train", "benchmarks.bench_edit"]

if __name__ == "__main__":
    for module in BENCHMARKS + sys.argv[1:]:
        print(f"== {module}", flush=True)
        sys.argv = [module]
        runpy.run_module(module, run_name="__main__")
