"""BENCHMARK (retrieval): ms per call of the Ray group vs torch.distributed rank 0 vs the hardware floor.

    python jobs/benchmark_retrieval.py                                         # W 1,2,4 and T 1,2
    python jobs/benchmark_retrieval.py --workers 1,4 --actors 1,4 --calls 40   # a shorter run

One run, variants interleaved turn by turn (pipeline/bench/retrieval.py): the floor (a read pass over the
shard's vectors) and the in-process search of the same batch, torch rank 0 with T threads, Ray with T actors
x 1 thread and 1 actor x T threads, at every W. Writes retrieval_benchmark.{json,png} to --output_dir and
prints the ratios. Starts (and stops) a local Ray unless RAY_ADDRESS is set; stops what it started.
"""

import os
import shutil
import tempfile
import time
from pathlib import Path

import ray

from pipeline.bench.cli import parse_spec
from pipeline.bench.retrieval import RetrievalBenchmarkSpec, run_benchmark
from pipeline.bench.retrieval_report import (
    ratios,
    summary_lines,
    table,
    targets,
    write_report,
)
from pipeline.bench.synthetic import write_synthetic_index
from pipeline.bench.timing import load_average, machine_info
from pipeline.errors import run_job
from pipeline.ray_session import connect_ray


def main(argv=None) -> int:
    spec = parse_spec(RetrievalBenchmarkSpec, argv, __doc__)
    started = time.perf_counter()
    index_dir = spec.index_dir or tempfile.mkdtemp(prefix="retrieval-benchmark-index-")
    load_before = load_average()
    try:
        write_synthetic_index(index_dir, spec.count, spec.dimension, spec.factory, seed=spec.seed)
        print(f"[benchmark] index {index_dir}: {spec.count} x {spec.dimension} {spec.factory} "
              f"({time.perf_counter() - started:.0f}s)", flush=True)
        # One logical CPU per worker and one per exact-path task: every worker set is placed at once even on a
        # 2-core machine; the physical cores are shared all the same (that contention is part of what is measured).
        own_ray = not ray.is_initialized() and not os.environ.get("RAY_ADDRESS")
        connect_ray(num_cpus=sum(spec.workers) + 2 if own_ray else None)
        try:
            raw = run_benchmark(spec, str(Path(index_dir).resolve()), log=lambda m: print(m, flush=True))
            machine = {**machine_info(), "ray_cluster_cpus": ray.cluster_resources().get("CPU")}
        finally:
            ray.shutdown()
    finally:
        if not spec.index_dir:
            shutil.rmtree(index_dir, ignore_errors=True)
    found = ratios(raw["cells"], spec.workers, spec.actors)
    report = {"spec": vars(spec), "machine": machine, "load_before": load_before, "load_after": load_average(),
              "load_per_turn": raw["load_per_turn"], "table": table(raw["cells"]), "ratios": found,
              "targets": targets(found), "exact_paths": raw["exact_paths"],
              "calls_per_replica": raw["calls_per_replica"], "raw_seconds": raw["cells"],
              "total_s": round(time.perf_counter() - started, 1)}
    json_path, png_path = write_report(report, spec.output_dir)
    print("\n".join(summary_lines(report)))
    print(f"[benchmark] wrote {json_path} and {png_path} in {report['total_s']:.0f}s")
    return 0


if __name__ == "__main__":
    run_job(main)
