"""BENCHMARK (scale): compressed, graph and exact indexes at 100k to millions of synthetic passages.

    python jobs/benchmark_scale.py                       # N 100k, 1M, 2M; S 1, 2, 4 (its time: docs/results.md)
    python jobs/benchmark_scale.py --counts 100000 --shards 1,2 --output_dir runs/benchmarks

For every planned (N, factory, S) (pipeline/bench/scale.py: `plan`): build time, bytes on disk, and, served
by a Ray group of S shards x 1 replica at each search setting: ms per call (batch 8), recall@10 against exact
search on held-out questions, resident memory per actor. Writes scale_benchmark.{json,png} to --output_dir.
Vectors are synthetic (clustered near a low-dimensional subspace, see pipeline/bench/synthetic.py), no encoder.
"""

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import ray

from pipeline.bench.cli import parse_spec
from pipeline.bench.retrieval import SEARCH_ENV
from pipeline.bench.scale import (
    ScaleBenchmarkSpec,
    build_config,
    nlist_for,
    plan,
    questions_and_truth,
    serve_and_measure,
    settings_for,
)
from pipeline.bench.scale_report import compressed_target, plot_scale
from pipeline.bench.synthetic import write_synthetic_corpus
from pipeline.bench.timing import load_average, machine_info
from pipeline.errors import run_job
from pipeline.ray_session import connect_ray


def _in_task(fn):
    """`fn` as a Ray task on 1 CPU with the search processes' environment (FAISS threads sleep when idle)."""
    return ray.remote(fn).options(num_cpus=1, runtime_env={"env_vars": dict(SEARCH_ENV)})


def measure_count(spec: ScaleBenchmarkSpec, count: int, work: Path, log) -> list[dict]:
    """Every planned index of N = `count`: build, then serve and measure each search setting."""
    base = work / f"n{count}"
    started = time.perf_counter()
    ray.get(_in_task(write_synthetic_corpus).remote(base, count, spec.dimension, spec.seed))
    questions, truth = ray.get(_in_task(questions_and_truth).remote(base, count, spec.dimension, spec.queries,
                                                                     spec.seed))
    log(f"[scale] N={count:,}: vectors and exact answers in {time.perf_counter() - started:.0f}s")
    rows = []
    for template, shards in dict.fromkeys((t, s) for n, t, s, _ in plan(spec) if n == count):
        factory = template.format(nlist=nlist_for(count // shards))
        dtypes = [d for n, t, s, d in plan(spec) if (n, t, s) == (count, template, shards)]
        directories = {d: work / f"n{count}-{factory.replace(',', '_')}-s{shards}-{d}" for d in dtypes}
        built = {d: ray.get(_in_task(build_config).remote(base, directory, count, spec.dimension, factory, shards,
                                                          spec.train_sample, d))
                 for d, directory in directories.items()}
        for settings in settings_for(factory, spec):
            measured = serve_and_measure({d: str(p) for d, p in directories.items()}, shards, settings, questions,
                                         truth, spec.batch)
            for dtype, row in measured.items():
                rows.append({"count": count, "factory": factory, "shards": shards, **built[dtype], **row,
                             "load_1m": load_average()})
                log(f"[scale] N={count:,} {factory} S={shards} {dtype} {settings or 'exact'}: build "
                    f"{built[dtype]['build_s']:.0f}s, p50 {row['p50_ms']:.1f} ms/call, recall@10 "
                    f"{row['recall_at_10']:.3f}, PSS/actor {row['pss_mb_per_actor']:.0f} MB "
                    f"(load {rows[-1]['load_1m']:.1f})")
        for directory in directories.values():
            shutil.rmtree(directory)  # keep the disk to one N's indexes at a time
    shutil.rmtree(base)
    return rows


def main(argv=None) -> int:
    spec = parse_spec(ScaleBenchmarkSpec, argv, __doc__)
    started = time.perf_counter()
    work = Path(spec.work_dir or tempfile.mkdtemp(prefix="scale-benchmark-"))
    print("[scale] plan: " + "; ".join(f"N={n:,} {f} S={s} {d}" for n, f, s, d in plan(spec)), flush=True)
    own_ray = not ray.is_initialized() and not os.environ.get("RAY_ADDRESS")
    connect_ray(num_cpus=max(spec.shards) + 2 if own_ray else None)
    load_before = load_average()
    try:
        rows = [row for count in spec.counts
                for row in measure_count(spec, count, work, log=lambda m: print(m, flush=True))]
        machine = machine_info()
    finally:
        ray.shutdown()
        if not spec.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    report = {"spec": vars(spec), "machine": machine, "load_before": load_before, "load_after": load_average(),
              "rows": rows, "target": compressed_target(rows), "total_s": round(time.perf_counter() - started, 1),
              "queries": "held-out draws of the synthetic corpus's distribution; recall against exact top-10"}
    out = Path(spec.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scale_benchmark.json").write_text(json.dumps(report, indent=2))

    plot_scale(report, out / "scale_benchmark.png")
    target = report["target"]
    print(f"[scale] target {target['target']}: met {target['met']} (fastest reaching the recall: "
          f"{target['setting']}, p50 {target['p50_ms']} ms, recall {target['recall_at_10']})")
    print(f"[scale] wrote {out / 'scale_benchmark.json'} and .png in {report['total_s']:.0f}s")
    return 0


if __name__ == "__main__":
    run_job(main)
