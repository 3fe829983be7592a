"""Seconds per retrieval call: the Ray group vs the torch.distributed baseline vs the hardware floor, one run.

Every W of `spec.workers` gets its own set of W lock-stepped gloo ranks (`retrieval_workers.py`), all alive
at once, and every variant is measured in turns: each turn gives each (W, variant) a block of `spec.block`
calls, in a rotating order, so machine load lands on all variants alike. Equal resources: for each T in
`spec.actors`, torch rank 0 searches with T FAISS threads, and Ray serves with T actors x 1 thread and
(T > 1) with 1 actor x T threads. Index: a 1-shard synthetic index (`synthetic.py`).
"""

from __future__ import annotations

import time
import uuid
import warnings
from dataclasses import asdict, dataclass

import numpy as np
import ray

from pipeline.bench.retrieval_workers import WorkerSet
from pipeline.bench.timing import load_average
from pipeline.config import RetrievalConfig
from pipeline.index.exact_scan import (
    EXACT_SCAN_UP_TO_BATCH,
    compile_exact_scan,
    exact_top_k,
)
from pipeline.index.manifest import open_vectors, read_manifest, shard_file
from pipeline.options import option
from pipeline.retrieval.group import (
    group_status,
    start_retrieval_group,
    stop_retrieval_group,
)


@dataclass
class RetrievalBenchmarkSpec:
    count: int = option(100_000, "Passages in the synthetic 1-shard index.", ge=1)
    dimension: int = option(768, "Vector dimension.", ge=1)
    factory: str = option("Flat", "FAISS factory string of the index (inner product).")
    batch: int = option(8, "Questions per worker per call.", ge=1)
    k: int = option(5, "Passages per question.", ge=1)
    workers: list = option([1, 2, 4], "Training workers W calling at once (each W its own set of gloo ranks).", ge=1)
    actors: list = option([1, 2], "Search threads T per side, equal on both: Ray with T actors x 1 thread (and, for "
                                "T > 1, 1 actor x T threads) vs torch rank 0 with T threads.", ge=1)
    calls: int = option(60, "Timed calls per variant and W.", ge=1)
    block: int = option(5, "Calls per variant per turn of the round robin.", ge=1)
    warmup: int = option(1, "Untimed calls per variant and W first.", ge=0)
    coalesce_window_ms: float = option(2.0, "Ray actors' retrieval.coalesce_window_ms.", ge=0)
    exact_path_batches: list = option([1, 2, 4, 8, 16, 32, 64], "Batch sizes of the in-process exact-path "
                                      "comparison.", ge=1)
    index_dir: str = option("", "Keep (and reuse) the synthetic index here; empty: a temporary one, deleted after.")
    output_dir: str = option("runs/benchmarks", "Where retrieval_benchmark.json and .png go.")
    seed: int = option(0, "Seed of the vectors and questions.")


# Both sides' search processes run with this environment: OpenMP threads that spin while waiting can stall a
# multi-threaded search when the cores are shared, and the Ray actors run with it by default.
SEARCH_ENV = dict(RetrievalConfig().actor_env)
_NAMESPACE = f"rag-benchmark-{uuid.uuid4().hex[:6]}"


def variants_at(world: int, spec: RetrievalBenchmarkSpec) -> list[tuple[str, dict]]:
    """(variant, retrieval config) pairs measured with W = `world` workers (see retrieval_workers.py)."""
    variants = []
    if world == min(spec.workers):
        variants += [("floor", {}), (f"pair:{_group(1, 1)}", _group_cfg(1, 1, spec))]
    variants.append(("in_process", {}))
    for t in spec.actors:
        variants.append((f"torch:{t}", asdict(RetrievalConfig(faiss_threads=t))))
        variants.append((f"ray:{_group(t, 1)}", _group_cfg(t, 1, spec)))
        if t > 1:
            variants.append((f"ray:{_group(1, t)}", _group_cfg(1, t, spec)))
    return variants


def _group(actors: int, threads: int) -> str:
    return f"bench-{actors}x{threads}"


def _group_cfg(actors: int, threads: int, spec: RetrievalBenchmarkSpec, namespace: str = "") -> dict:
    return asdict(RetrievalConfig(group=_group(actors, threads), namespace=namespace or _NAMESPACE,
                                  replicas=actors, faiss_threads=threads, actor_num_cpus=0.01,
                                  coalesce_window_ms=spec.coalesce_window_ms))


def run_benchmark(spec: RetrievalBenchmarkSpec, index_dir: str, log=print) -> dict:
    """Every (W, variant) of `spec`, interleaved; needs a connected Ray. Returns the raw timings per turn."""
    groups = {(t, 1) for t in spec.actors} | {(1, t) for t in spec.actors} | {(1, 1)}
    sets: dict[int, WorkerSet] = {}
    try:
        for actors, threads in sorted(groups):
            cfg = RetrievalConfig(**_group_cfg(actors, threads, spec))
            start_retrieval_group(index_dir, cfg)
        for world in spec.workers:
            sets[world] = WorkerSet(world, index_dir, spec.batch, spec.k, spec.seed, SEARCH_ENV)
            for variant, cfg in variants_at(world, spec):
                sets[world].prepare(variant, cfg)
                sets[world].run(variant, spec.warmup) if spec.warmup else None
        log(f"[benchmark] {len(groups)} retrieval groups, worker sets W={spec.workers} ready")
        exact_paths = ray.get(ray.remote(measure_exact_paths).options(
            num_cpus=1, runtime_env={"env_vars": {**SEARCH_ENV, "OPENBLAS_NUM_THREADS": "1"}},
        ).remote(index_dir, spec.exact_path_batches, k=spec.k, seed=spec.seed))
        timings = _interleaved(spec, sets, log)
        served = {name: [m.get("calls") for m in group_status(name, _NAMESPACE)]
                  for name in sorted(_group(a, t) for a, t in groups)}
    finally:
        for world_set in sets.values():
            world_set.close()
        for actors, threads in groups:
            stop_retrieval_group(_group(actors, threads), _NAMESPACE)
    return {**timings, "exact_paths": exact_paths, "calls_per_replica": served}


def _interleaved(spec: RetrievalBenchmarkSpec, sets: dict, log) -> dict:
    """{"W|variant": [[seconds of turn 0's block], [turn 1's], ...]} plus per-turn machine load."""
    cells = [(world, variant) for world in spec.workers for variant, _ in variants_at(world, spec)]
    timings = {f"{w}|{v}": [] for w, v in cells}
    loads = []
    turns = -(-spec.calls // spec.block)
    for turn in range(turns):
        calls = min(spec.block, spec.calls - turn * spec.block)
        shift = turn % len(cells)  # rotate the order so no variant always runs right after the same one
        for world, variant in cells[shift:] + cells[:shift]:
            timings[f"{world}|{variant}"].append(sets[world].run(variant, calls))
        loads.append(load_average())
        log(f"[benchmark] turn {turn + 1}/{turns} done (load {loads[-1]:.1f})")
    return {"cells": timings, "load_per_turn": loads}


def measure_exact_paths(index_dir: str, batches: list[int], calls: int = 5, k: int = 5, seed: int = 0) -> list[dict]:
    """In-process ms per exact search of one shard, interleaved call by call, 1 thread each, beside the read
    pass (one matrix-vector product over the memory map, the floor): FAISS's per-query scan, FAISS's
    matrix-product path, numpy (one OpenBLAS matmul over the memory map + argpartition), torch (one MKL
    matmul + topk) and the one-pass kernel (`exact_top_k`). Each row also gives every path's cost over the
    read pass and which path the shards serve at that batch (`exact_search`).

    Run in a fresh process with OPENBLAS_NUM_THREADS=1 for numpy to be single-threaded (the job does).
    """
    import faiss
    import torch

    manifest = read_manifest(index_dir)
    vectors = open_vectors(index_dir, manifest)
    index = faiss.read_index(f"{index_dir}/{shard_file(0)}", faiss.IO_FLAG_MMAP_IFC)
    faiss.omp_set_num_threads(1)
    torch.set_num_threads(1)
    compile_exact_scan()
    with warnings.catch_warnings():  # torch warns that the map is read-only; nothing here writes to it
        warnings.simplefilter("ignore", UserWarning)
        shard = torch.from_numpy(np.asarray(vectors))
    rng = np.random.default_rng(seed)
    default_threshold = faiss.cvar.distance_compute_blas_threshold
    rows = []
    for batch in batches:
        queries = rng.standard_normal((batch, manifest.dimension), dtype=np.float32)
        paths = {"read_pass": lambda: np.dot(vectors, queries[0]),
                 "faiss_scan": lambda: _faiss_with_threshold(index, queries, k, 1 << 30),
                 "faiss_product": lambda: _faiss_with_threshold(index, queries, k, 1),
                 "numpy_product": lambda: np.argpartition(-(queries @ vectors.T), k, axis=1)[:, :k],
                 "torch_product": lambda: torch.topk(torch.from_numpy(queries) @ shard.T, k, dim=1),
                 "exact_scan": lambda: exact_top_k(vectors, queries, k)}
        seconds = {name: [] for name in paths}
        for _ in range(calls):
            for name, path in paths.items():
                started = time.perf_counter()
                path()
                seconds[name].append(time.perf_counter() - started)
        median = {name: float(np.median(s)) for name, s in seconds.items()}
        truth = [set(row) for row in _faiss_with_threshold(index, queries, k, 1)[1]]
        rows.append({"batch": batch, **{f"{name}_ms": round(m * 1e3, 3) for name, m in median.items()},
                     "over_read_pass": {name: round(m / median["read_pass"], 3)
                                        for name, m in median.items() if name != "read_pass"},
                     "served": "exact_scan" if batch <= EXACT_SCAN_UP_TO_BATCH else "faiss_product",
                     # Same work on every path: each returns every question's exact top-k (as a set; ties aside).
                     "same_top_k": {name: [set(row) for row in _ids_of(path())] == truth
                                    for name, path in paths.items() if name != "read_pass"}})
    faiss.cvar.distance_compute_blas_threshold = default_threshold
    return rows


def _ids_of(found) -> np.ndarray:
    """The ids int64[B, k] of one path's answer: FAISS's and the kernel's (scores, ids), torch's topk, numpy's ids."""
    if hasattr(found, "indices"):
        return found.indices.numpy()
    return np.asarray(found[1] if isinstance(found, tuple) else found)


def _faiss_with_threshold(index, queries, k, threshold):
    import faiss

    faiss.cvar.distance_compute_blas_threshold = threshold
    return index.search(queries, k)
