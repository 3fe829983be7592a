"""The scale benchmark's pieces: which indexes to build, building them, and measuring them served by Ray.

For every passage count N: one vectors file of synthetic vectors (`synthetic.py`) and held-out questions
from the same distribution with their exact top-10; then, for each planned (factory, S shards), an index
directory sharing that vectors file (hard links) with its own FAISS shards, built by the real build step.
Each search setting is served by a Ray group of S shards x 1 replica and measured: ms per call (batch 8),
recall@10 against exact search, and the memory of each actor. Versions of one index that differ only in how
they store their exact vectors (float32, float16) are served at once and asked in turns.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray

from pipeline.bench.synthetic import synthetic_vectors
from pipeline.bench.timing import percentiles
from pipeline.config import RetrievalConfig
from pipeline.index.build import build_shards
from pipeline.index.manifest import (
    PASSAGES,
    VECTOR_DTYPES,
    VECTORS,
    IndexManifest,
    even_shard_offsets,
    shard_file,
)
from pipeline.options import option
from pipeline.retrieval.client import RetrievalClient
from pipeline.retrieval.group import start_retrieval_group, stop_retrieval_group

GROUP, NAMESPACE = "scale-bench", "rag-benchmarks"


@dataclass
class ScaleBenchmarkSpec:
    counts: list = option([100_000, 1_000_000, 2_000_000], "Passage counts N.", ge=1)
    shards: list = option([1, 2, 4], "Shard counts S (one actor per shard).", ge=1)
    dimension: int = option(768, "Vector dimension (768: DPR).", ge=8)
    compressed: str = option("IVF{nlist},PQ64x4fs", "Compressed index factory; {nlist} = a power of 2 near "
                                                   "2 x sqrt(vectors per shard).")
    graph: str = option("HNSW32", "Graph index factory (vectors stored in full).")
    vector_dtypes: list = option(["float32"], "Exact-vector dtypes each compressed index is built with, side by "
                                              "side (index.vector_dtype).", tuple(VECTOR_DTYPES))
    ivf_settings: str = option("16x1,16x30,16x40,32x50", "IVF search settings served, each nprobe x rerank_factor.")
    hnsw_settings: str = option("32,64,128", "HNSW efSearch values served.")
    graph_max_count: int = option(100_000, "Largest N given a graph index (its build is the slowest).", ge=0)
    flat_max_count: int = option(1_000_000, "Largest N given an exact (Flat) index, at S = 1.", ge=0)
    full_grid_max_count: int = option(100_000, "Above this N, graph indexes are built at the smallest S only.", ge=0)
    train_sample: int = option(50_000, "Vectors sampled to train IVF and PQ (per shard).", ge=1000)
    queries: int = option(200, "Held-out questions, asked in calls of `batch` (recall over all of them).", ge=1)
    batch: int = option(8, "Questions per call.", ge=1)
    work_dir: str = option("", "Where the indexes are built (kept); empty: a temporary folder, deleted after.")
    output_dir: str = option("docs/figures", "Where scale_benchmark.json and .png go.")
    seed: int = option(0, "Seed of the vectors and questions.")


def nlist_for(vectors: int) -> int:
    """A power of 2 near 2 x sqrt(vectors): IVF list count (the low end of the usual 1-16 x sqrt, since training
    cost grows with it and each shard trains its own)."""
    return 2 ** max(4, round(math.log2(2 * math.sqrt(vectors))))


def plan(spec: ScaleBenchmarkSpec) -> list[tuple[int, str, int, str]]:
    """(N, factory template, S, exact-vector dtype) for every index to build, in build order."""
    configs = []
    for count in spec.counts:
        configs += [(count, spec.compressed, s, dtype) for s in spec.shards for dtype in spec.vector_dtypes]
        if count <= spec.graph_max_count:
            shards = spec.shards if count <= spec.full_grid_max_count else [min(spec.shards)]
            configs += [(count, spec.graph, s, "float32") for s in shards]
        if count <= spec.flat_max_count:
            configs.append((count, "Flat", 1, "float32"))
    return configs


def settings_for(factory: str, spec: ScaleBenchmarkSpec) -> list[dict]:
    """RetrievalConfig overrides to serve `factory` with: nprobe/rerank_factor, ef_search, or none."""
    if factory.startswith("IVF"):
        pairs = [item.split("x") for item in spec.ivf_settings.split(",")]
        return [{"nprobe": int(n), "rerank_factor": int(r)} for n, r in pairs]
    if factory.startswith("HNSW"):
        return [{"ef_search": int(e)} for e in spec.hnsw_settings.split(",")]
    return [{}]


def questions_and_truth(base: Path, count: int, dimension: int, queries: int, seed: int, k: int = 10):
    """Held-out questions (fresh draws of the corpus's distribution) and their exact top-k ids over all N."""
    import faiss

    vectors = np.memmap(base / VECTORS, dtype=np.float32, mode="r", shape=(count, dimension))
    questions = np.concatenate(list(synthetic_vectors(queries, dimension, seed, draw=1)))
    _, truth = faiss.knn(questions, vectors, k, metric=faiss.METRIC_INNER_PRODUCT)
    return questions, truth


def build_config(base: Path, directory: Path, count: int, dimension: int, factory: str, shards: int,
                 train_sample: int, vector_dtype: str = "float32") -> dict:
    """Index `directory` over the base's files (hard links) with S FAISS shards and its exact vectors stored as
    `vector_dtype`; returns build seconds and bytes."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in (VECTORS, PASSAGES):
        if not (directory / name).exists():
            os.link(base / name, directory / name)
    manifest = IndexManifest(encoder="synthetic", pooling="none", max_length=0, dimension=dimension,
                             metric="inner_product", count=count, factory=factory,
                             shard_offsets=even_shard_offsets(count, shards), vector_dtype=vector_dtype)
    started = time.perf_counter()
    build_shards(directory, manifest, train_sample, recall_queries=0)
    build_s = time.perf_counter() - started
    return {"build_s": round(build_s, 1), "vector_dtype": vector_dtype,
            "faiss_bytes_per_shard": [(directory / shard_file(s)).stat().st_size for s in range(shards)],
            "vectors_bytes": (directory / manifest.vectors_file).stat().st_size,
            "passages_bytes": (directory / PASSAGES).stat().st_size}


def serve_and_measure(index_dirs: dict[str, str], shards: int, settings: dict, questions: np.ndarray,
                      truth: np.ndarray, batch: int) -> dict[str, dict]:
    """Serve each of `index_dirs` (label -> directory; e.g. the same index with float32 and float16 vectors) by
    its own group of S shards x 1 replica with `settings`, all at once, and ask every question in calls of
    `batch`, the indexes taking turns call by call, so that load from elsewhere hits them alike. Per label:
    ms per call, recall@10 vs exact, and each actor's memory after the calls."""
    cfg = RetrievalConfig(namespace=NAMESPACE, actor_num_cpus=0.01, call_timeout_s=600, **settings)
    groups = {label: f"{GROUP}-{label}" for label in index_dirs}
    members = {}
    try:
        for label, directory in index_dirs.items():
            members[label] = start_retrieval_group(directory, dataclasses.replace(cfg, group=groups[label]))
        clients = {label: RetrievalClient(group, NAMESPACE, timeout_s=600) for label, group in groups.items()}
        for client in clients.values():
            client.retrieve(questions[:batch], 10)  # warm-up
        seconds = {label: [] for label in index_dirs}
        found = {label: [] for label in index_dirs}
        for start in range(0, len(questions), batch):
            for label, client in clients.items():
                began = time.perf_counter()
                found[label].append(client.retrieve(questions[start:start + batch], 10).ids)
                seconds[label].append(time.perf_counter() - began)
        memory = {label: ray.get([_memory_of.remote(m["pid"]) for m in rows]) for label, rows in members.items()}
    finally:
        for group in groups.values():
            stop_retrieval_group(group, NAMESPACE)
    return {label: {**settings, "recall_at_10": _recall(np.concatenate(found[label]), truth),
                    **percentiles(seconds[label]),
                    "rss_mb_per_actor": round(max(m["rss_mb"] for m in memory[label]), 1),
                    "pss_mb_per_actor": round(max(m["pss_mb"] for m in memory[label]), 1)}
            for label in index_dirs}


def _recall(ids: np.ndarray, truth: np.ndarray) -> float:
    return round(float(np.mean([len(set(a) & set(b)) for a, b in zip(ids, truth)])) / truth.shape[1], 4)


@ray.remote(num_cpus=0)
def _memory_of(pid: int) -> dict:
    import psutil

    info = psutil.Process(pid).memory_full_info()
    return {"rss_mb": info.rss / 2**20, "pss_mb": info.pss / 2**20}

