"""Seconds per retrieval call seen by rank 0: torch.distributed baseline vs the Ray actor group vs in-process.

Reproduces the published figure: W training workers (a real gloo process group of
Ray actors that only retrieve), each step a barrier then one `retrieve` of B
questions, k passages each; rank 0 times its calls. Modes, all through
`make_retriever` as training builds them:
    local   every worker searches its own batch in-process (the floor: no communication)
    torch   rank 0 holds the index, gathers all batches, searches once, scatters
    ray     every worker calls the actor group (R replicas of a 1-shard index), offset=rank
"""

from __future__ import annotations

import json
import os
import platform
import socket
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from pipeline.config import RetrievalConfig
from pipeline.index.manifest import (
    MANIFEST,
    PASSAGES,
    VECTORS,
    IndexManifest,
    read_manifest,
    shard_file,
)
from pipeline.retrieval.group import (
    group_status,
    start_retrieval_group,
    stop_retrieval_group,
)


@dataclass
class BenchmarkSpec:
    count: int = 100_000          # passages in the synthetic index
    dimension: int = 768
    factory: str = "Flat"         # FAISS factory string (inner product): Flat, HNSW32, ...
    batch: int = 8                # questions per worker per call
    k: int = 5                    # passages per question
    workers: list = field(default_factory=lambda: [1, 2, 4])
    modes: str = "local,torch,ray"  # which of the three to run
    floor_every_w: bool = False   # in-process floor at every W (each worker searching for itself), not just the first
    actors: list = field(default_factory=lambda: [1, 2, 4])
    calls: int = 100              # timed calls per configuration
    warmup: int = 3               # untimed calls first
    faiss_threads: int = 1        # FAISS threads per searching process (actor, torch rank 0, local worker)
    max_concurrency: int = 4      # concurrent calls one retrieval actor serves
    index_dir: str = ""           # reuse/keep the synthetic index here (empty: a temporary one, deleted after)
    output_dir: str = "runs/benchmarks"
    seed: int = 0


# ---------------------------------------------------------------- synthetic index


def write_synthetic_index(directory: str | Path, count: int, dimension: int, factory: str,
                          seed: int = 0) -> IndexManifest:
    """A 1-shard index directory of random-normal float32 vectors and dummy passages; reused when it matches."""
    directory = Path(directory)
    if (directory / MANIFEST).is_file():
        manifest = read_manifest(directory)
        if (manifest.count, manifest.dimension, manifest.factory) == (count, dimension, factory):
            return manifest
        raise ValueError(f"{directory}: holds {manifest.count} x {manifest.dimension} {manifest.factory}, "
                         f"not {count} x {dimension} {factory}; pass another --index_dir")
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    index = faiss.index_factory(dimension, factory, faiss.METRIC_INNER_PRODUCT)
    chunk = 20_000
    with open(directory / VECTORS, "wb") as out:
        for start in range(0, count, chunk):
            vectors = rng.standard_normal((min(chunk, count - start), dimension), dtype=np.float32)
            if not index.is_trained:
                index.train(vectors)
            index.add(vectors)
            out.write(vectors.tobytes())
    faiss.write_index(index, str(directory / shard_file(0)))
    ids = np.arange(count, dtype=np.int64)
    pq.write_table(pa.table({"id": ids, "title": [f"Passage {i}" for i in ids],
                             "text": [f"synthetic passage number {i} of the benchmark index" for i in ids]}),
                   directory / PASSAGES)
    manifest = IndexManifest(encoder="synthetic", pooling="none", max_length=0, dimension=dimension,
                             metric="inner_product", count=count, factory=factory, shard_offsets=[0, count])
    manifest.write(directory)
    return manifest


# ---------------------------------------------------------------- workers


@ray.remote(num_cpus=1)
class BenchmarkWorker:
    """One light 'training worker': a gloo rank that only retrieves, like the training loop's step."""

    def __init__(self, rank: int, world: int):
        self.rank, self.world = rank, world

    def rendezvous_address(self) -> str:
        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return f"tcp://{ray.util.get_node_ip_address()}:{port}"

    def join(self, address: str) -> None:
        import torch
        import torch.distributed as dist

        torch.set_num_threads(1)
        dist.init_process_group("gloo", init_method=address, rank=self.rank, world_size=self.world)

    def run(self, mode: str, index_dir: str, cfg: dict, spec: dict) -> list[float] | None:
        """Warm-up then timed calls in lock-step (a barrier per step); rank 0 returns its seconds per call."""
        import torch.distributed as dist

        from pipeline.retrieval.factory import make_retriever

        retriever = make_retriever(mode, index_dir, RetrievalConfig(**cfg), self.rank)
        rng = np.random.default_rng(spec["seed"] + 1000 * self.rank)
        pool = [rng.standard_normal((spec["batch"], retriever.dimension), dtype=np.float32) for _ in range(16)]
        seconds = []
        for step in range(spec["warmup"] + spec["calls"]):
            dist.barrier()
            started = time.perf_counter()
            result = retriever.retrieve(pool[step % len(pool)], spec["k"])
            elapsed = time.perf_counter() - started
            assert result.ids.shape == (spec["batch"], spec["k"])
            if step >= spec["warmup"]:
                seconds.append(elapsed)
        dist.barrier()
        del retriever
        return seconds if self.rank == 0 else None

    def leave(self) -> None:
        import torch.distributed as dist

        dist.destroy_process_group()


def _start_workers(world: int) -> list:
    workers = [BenchmarkWorker.remote(rank, world) for rank in range(world)]
    address = ray.get(workers[0].rendezvous_address.remote())
    ray.get([w.join.remote(address) for w in workers])
    return workers


# ---------------------------------------------------------------- the run


def summarize(seconds: list[float]) -> dict:
    """Median and spread of one configuration's seconds per call."""
    a = np.asarray(seconds)
    return {"median_s": float(np.median(a)), "p10_s": float(np.percentile(a, 10)),
            "p90_s": float(np.percentile(a, 90)), "mean_s": float(a.mean()), "calls": len(a)}


def run_benchmark(spec: BenchmarkSpec, index_dir: str, log=print) -> dict:
    """Every (workers, mode) configuration of `spec` on the index at `index_dir`; needs a connected Ray."""
    namespace = f"rag-benchmark-{uuid.uuid4().hex[:6]}"
    groups = {r: RetrievalConfig(group=f"bench-{r}x", namespace=namespace, replicas=r, faiss_threads=spec.faiss_threads,
                                 max_concurrency=spec.max_concurrency) for r in spec.actors}
    results = []
    try:
        for r, cfg in groups.items():
            started = time.perf_counter()
            start_retrieval_group(index_dir, cfg)
            log(f"[benchmark] group of {r} actor(s) ready in {time.perf_counter() - started:.1f}s")
        local_cfg = asdict(RetrievalConfig(faiss_threads=spec.faiss_threads))
        for world in spec.workers:
            workers = _start_workers(world)
            try:
                modes = spec.modes.split(",")
                floor = "local" in modes and (spec.floor_every_w or world == spec.workers[0])
                configs = [("local", None, local_cfg)] if floor else []
                configs += [("torch", None, local_cfg)] if "torch" in modes else []
                configs += [("ray", r, asdict(groups[r])) for r in spec.actors if "ray" in modes]
                for mode, actors, cfg in configs:
                    started = time.perf_counter()
                    seconds = ray.get([w.run.remote(mode, index_dir, cfg, asdict(spec)) for w in workers])[0]
                    row = {"workers": world, "mode": mode, "actors": actors, **summarize(seconds),
                           "load_1m": round(os.getloadavg()[0], 2)}  # other load on the machine skews the numbers
                    results.append(row)
                    log(f"[benchmark] W={world} {_label(row):<14} median {row['median_s'] * 1e3:8.2f} ms  "
                        f"p10 {row['p10_s'] * 1e3:8.2f}  p90 {row['p90_s'] * 1e3:8.2f}  "
                        f"({time.perf_counter() - started:.0f}s, load {row['load_1m']:.1f})")
            finally:
                ray.get([w.leave.remote() for w in workers])
                for w in workers:
                    ray.kill(w)
        # Calls served per replica: shows the clients spread over the replicas.
        actors = {r: [{key: m.get(key) for key in ("replica", "calls")}
                      for m in group_status(cfg.group, cfg.namespace)] for r, cfg in groups.items()}
    finally:
        for cfg in groups.values():
            stop_retrieval_group(cfg.group, cfg.namespace)
    return {"spec": asdict(spec), "machine": machine_info(), "results": results, "ratios": target_ratios(results),
            "actors": actors}


def _label(row: dict) -> str:
    return {"local": "in-process", "torch": "torch"}.get(row["mode"]) or f"ray-{row['actors']}"


def _median(results: list[dict], workers: int, mode: str, actors: int | None = None) -> float | None:
    for row in results:
        if (row["workers"], row["mode"], row["actors"]) == (workers, mode, actors):
            return row["median_s"]
    return None


def target_ratios(results: list[dict]) -> dict:
    """The published claims as ratios of medians (None when a needed configuration was not run)."""
    def ratio(a, b):
        return None if a is None or b is None else a / b

    return {
        "a_ray_1w1a_over_in_process": ratio(_median(results, 1, "ray", 1), _median(results, 1, "local")),
        "b_ray_4w4a_over_torch_4w": ratio(_median(results, 4, "ray", 4), _median(results, 4, "torch")),
        "c_ray_4w4a_over_ray_1w1a": ratio(_median(results, 4, "ray", 4), _median(results, 1, "ray", 1)),
    }


def machine_info() -> dict:
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"cpu": cpu, "cores": os.cpu_count(), "ray_cluster_cpus": ray.cluster_resources().get("CPU"),
            "python": platform.python_version(), "ray": ray.__version__, "torch": torch.__version__,
            "faiss": faiss.__version__, "numpy": np.__version__, "platform": platform.platform(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}


# ---------------------------------------------------------------- output


def write_report(report: dict, output_dir: str | Path) -> tuple[Path, Path]:
    """retrieval_benchmark.json and a grouped bar chart retrieval_benchmark.png (median, p10-p90 whiskers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    json_path, png_path = output_dir / "retrieval_benchmark.json", output_dir / "retrieval_benchmark.png"
    json_path.write_text(json.dumps(report, indent=2))

    results = report["results"]
    workers = sorted({r["workers"] for r in results})
    labels = ["torch"] + [f"ray-{a}" for a in report["spec"]["actors"]]
    floors = [r for r in results if r["mode"] == "local"]
    if len(floors) > 1:  # measured at every W: bars; else one line (the floor does not depend on W)
        labels.append("in-process")
    width = 0.8 / len(labels)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, label in enumerate(labels):
        rows = [next((r for r in results if r["workers"] == w and _label(r) == label), None) for w in workers]
        xs = [j + (i - (len(labels) - 1) / 2) * width for j, r in enumerate(rows) if r]
        med = [r["median_s"] for r in rows if r]
        err = [[r["median_s"] - r["p10_s"] for r in rows if r], [r["p90_s"] - r["median_s"] for r in rows if r]]
        name = {"torch": "torch.distributed (rank 0 gathers)", "in-process": "in-process FAISS (floor)"}.get(
            label, label.replace("ray-", "Ray, ") + " retrieval actor(s)")
        ax.bar(xs, med, width, yerr=err, capsize=2, label=name)
    if len(floors) == 1:
        ax.axhline(floors[0]["median_s"], color="black", linestyle="--", linewidth=1,
                   label=f"in-process FAISS, same batch (floor, {floors[0]['workers']} worker)")
    ax.set_xticks(range(len(workers)), [str(w) for w in workers])
    ax.set_xlabel("training workers")
    ax.set_ylabel("seconds per retrieval call (rank 0, median)")
    spec = report["spec"]
    ax.set_title(f"{spec['count']:,} x {spec['dimension']} {spec['factory']}, batch {spec['batch']}/worker, "
                 f"k={spec['k']}, {report['machine']['cores']} cores", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
    return json_path, png_path
