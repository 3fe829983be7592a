"""BENCHMARK (memory): what R replicas of one index cost a node, since they memory-map the same files.

    python jobs/benchmark_memory.py                    # 200k x 768 exact index, 1 then 2 replicas
    python jobs/benchmark_memory.py --count 1000000 --replicas 1,2,4

For each replica count: every actor's RSS (includes shared mapped pages), USS (private to it) and PSS
(shared pages split between sharers), and the sum of PSS, i.e. what the group really adds to the node.
Writes runs/benchmarks/memory.json and memory.png.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import ray

from pipeline.bench.retrieval import write_synthetic_index
from pipeline.config import RetrievalConfig
from pipeline.ray_session import connect_ray
from pipeline.retrieval.client import RetrievalClient
from pipeline.retrieval.group import (
    list_members,
    start_retrieval_group,
    stop_retrieval_group,
)


@ray.remote(num_cpus=0)
def _memory_of(pid: int) -> dict:
    import psutil

    info = psutil.Process(pid).memory_full_info()
    return {"rss_mb": info.rss / 2**20, "uss_mb": info.uss / 2**20, "pss_mb": info.pss / 2**20}


def measure(index_dir: str, replicas: int, calls: int) -> dict:
    cfg = RetrievalConfig(group="memory-bench", namespace="rag-benchmarks", replicas=replicas, actor_num_cpus=0.1)
    members = start_retrieval_group(index_dir, cfg)
    try:
        client = RetrievalClient(cfg.group, cfg.namespace)
        rng = np.random.default_rng(0)
        for _ in range(calls):  # every replica serves calls, so every replica touches the whole index
            client.retrieve(rng.standard_normal((8, client.dimension)).astype(np.float32), 5)
        rows = [{**ray.get(_memory_of.remote(m["pid"])), "replica": m["replica"]} for m in members]
    finally:
        stop_retrieval_group(cfg.group, cfg.namespace)
    return {"replicas": replicas, "actors": rows, "sum_pss_mb": sum(r["pss_mb"] for r in rows),
            "sum_rss_mb": sum(r["rss_mb"] for r in rows)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=200_000)
    parser.add_argument("--dimension", type=int, default=768)
    parser.add_argument("--factory", default="Flat")
    parser.add_argument("--replicas", default="1,2")
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--out", default="runs/benchmarks")
    args = parser.parse_args(argv)
    connect_ray()
    with tempfile.TemporaryDirectory() as tmp:
        write_synthetic_index(tmp, args.count, args.dimension, args.factory)
        index_mb = sum(p.stat().st_size for p in Path(tmp).iterdir()) / 2**20
        results = [measure(tmp, int(r), args.calls) for r in args.replicas.split(",")]
    assert not list_members("memory-bench", "rag-benchmarks")
    report = {"count": args.count, "dimension": args.dimension, "factory": args.factory,
              "index_files_mb": round(index_mb, 1), "results": results, "time": time.strftime("%Y-%m-%d %H:%M")}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "memory.json").write_text(json.dumps(report, indent=2))
    _plot(report, out / "memory.png")
    for r in results:
        print(f"{r['replicas']} replica(s): sum RSS {r['sum_rss_mb']:.0f} MB, sum PSS {r['sum_pss_mb']:.0f} MB "
              f"(index files {index_mb:.0f} MB)")
    return 0


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['replicas']} replica(s)" for r in report["results"]]
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar(x - 0.2, [r["sum_rss_mb"] for r in report["results"]], 0.4, label="sum of RSS (counts shared pages twice)")
    ax.bar(x + 0.2, [r["sum_pss_mb"] for r in report["results"]], 0.4, label="sum of PSS (what the node pays)")
    ax.axhline(report["index_files_mb"], color="k", linestyle="--", label="index files on disk")
    ax.set_xticks(x, labels)
    ax.set(ylabel="MB", title=f"{report['count']} x {report['dimension']} {report['factory']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
