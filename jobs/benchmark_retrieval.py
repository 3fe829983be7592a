"""Benchmark: seconds per retrieval call, torch.distributed rank 0 vs Ray actor group vs in-process FAISS.

    python jobs/benchmark_retrieval.py      # 100k x 768 Flat, W in {1,2,4}: ~8 min on an idle 2-core machine
    python jobs/benchmark_retrieval.py --factory HNSW32 --calls 300 --workers 1,2,4,8 --actors 1,2,4,8

Writes runs/benchmarks/retrieval_benchmark.{json,png}. Starts (and stops) a local
Ray unless RAY_ADDRESS is set; stops the retrieval groups and workers it started.
"""

import argparse
import dataclasses
import os
import shutil
import tempfile
import time
from pathlib import Path

import ray

from pipeline.bench.retrieval import (
    BenchmarkSpec,
    run_benchmark,
    write_report,
    write_synthetic_index,
)
from pipeline.errors import run_job
from pipeline.ray_session import connect_ray


def parse_spec(argv) -> BenchmarkSpec:
    """--field value for every BenchmarkSpec field; lists as comma-separated ints."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = BenchmarkSpec()
    for f in dataclasses.fields(BenchmarkSpec):
        value = getattr(defaults, f.name)
        kind = type(value)
        if isinstance(value, list):
            kind = lambda s: [int(x) for x in s.split(",")]  # noqa: E731
        elif isinstance(value, bool):
            kind = lambda s: s.lower() in ("1", "true", "yes")  # noqa: E731
        shown = ",".join(map(str, value)) if isinstance(value, list) else value
        parser.add_argument(f"--{f.name}", type=kind, default=value, help=f"(default: {shown})")
    return BenchmarkSpec(**vars(parser.parse_args(argv)))


def main(argv=None) -> int:
    spec = parse_spec(argv)
    started = time.perf_counter()
    index_dir = spec.index_dir or tempfile.mkdtemp(prefix="retrieval-benchmark-index-")
    try:
        write_synthetic_index(index_dir, spec.count, spec.dimension, spec.factory, spec.seed)
        print(f"[benchmark] index {index_dir}: {spec.count} x {spec.dimension} {spec.factory} "
              f"({time.perf_counter() - started:.0f}s)", flush=True)
        # One logical CPU per worker and per actor, so every configuration is placed even on a 2-core laptop;
        # the physical cores are shared all the same (that contention is part of what is measured).
        own_ray = not ray.is_initialized() and not os.environ.get("RAY_ADDRESS")
        connect_ray(num_cpus=max(spec.workers) + sum(spec.actors) if own_ray else None)
        try:
            report = run_benchmark(spec, str(Path(index_dir).resolve()), log=lambda m: print(m, flush=True))
        finally:
            ray.shutdown()
    finally:
        if not spec.index_dir:
            shutil.rmtree(index_dir, ignore_errors=True)
    report["total_s"] = round(time.perf_counter() - started, 1)
    json_path, png_path = write_report(report, spec.output_dir)
    print(f"[benchmark] wrote {json_path} and {png_path} in {report['total_s']:.0f}s")
    names = {"a_ray_1w1a_over_in_process": "(a) ray call / in-process search, 1 worker 1 actor",
             "b_ray_4w4a_over_torch_4w": "(b) ray 4 actors / torch, 4 workers",
             "c_ray_4w4a_over_ray_1w1a": "(c) ray 4 workers 4 actors / 1 worker 1 actor"}
    for key, name in names.items():
        value = report["ratios"][key]
        print(f"{name:<52} {'n/a' if value is None else f'{value:.2f}x'}")
    return 0


if __name__ == "__main__":
    run_job(main)
