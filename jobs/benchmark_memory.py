"""BENCHMARK (memory): what each replica of one shard costs a node, since replicas memory-map the same files.

    python jobs/benchmark_memory.py                                   # 200k x 768 Flat, 100-word passages, R 1,2,4
    python jobs/benchmark_memory.py --count 1000000 --replicas 1,2

For each replica count R: every actor's RSS (counts shared mapped pages in full), USS (private to it) and
PSS (shared pages split between the processes mapping them), after every replica has served `calls` calls
(each Flat search reads the whole shard). Sum of PSS = what the group costs the node; its growth per
added replica = what one more replica costs. Then what a Tune trial that refreshes its own index costs: its
own 1-replica group, first on the shared version (beside the shared group), then on a version of its own.
Writes memory.{json,png} to --output_dir.
"""

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray

from pipeline.bench.cli import parse_spec
from pipeline.bench.synthetic import write_synthetic_index
from pipeline.bench.timing import load_average, machine_info
from pipeline.config import RetrievalConfig
from pipeline.errors import run_job
from pipeline.index.versions import begin_version, publish_version
from pipeline.options import option
from pipeline.ray_session import connect_ray
from pipeline.retrieval.group import start_retrieval_group, stop_retrieval_group
from pipeline.retrieval.group_record import actor_name, list_members
from pipeline.retrieval.rollout import roll_group_forward

GROUP, NAMESPACE = "memory-bench", "rag-benchmarks"


@dataclass
class MemoryBenchmarkSpec:
    count: int = option(200_000, "Passages in the synthetic 1-shard index.", ge=1)
    dimension: int = option(768, "Vector dimension.", ge=1)
    factory: str = option("Flat", "FAISS factory string.")
    passage_words: int = option(100, "Words per synthetic passage (the project splits documents into <= 100).", ge=3)
    replicas: list = option([1, 2, 4], "Replica counts R to measure, one group after the other.", ge=1)
    calls: int = option(10, "Calls each replica serves before its memory is read.", ge=1)
    output_dir: str = option("runs/benchmarks", "Where memory.json and memory.png go.")


@ray.remote(num_cpus=0)
def _memory_of(pid: int) -> dict:
    import psutil

    info = psutil.Process(pid).memory_full_info()
    return {"rss_mb": info.rss / 2**20, "uss_mb": info.uss / 2**20, "pss_mb": info.pss / 2**20}


def measure(index_dir: str, replicas: int, calls: int) -> dict:
    """Memory of every actor of an R-replica group after each replica served `calls` calls."""
    cfg = RetrievalConfig(group=GROUP, namespace=NAMESPACE, replicas=replicas, actor_num_cpus=0.01)
    members = start_retrieval_group(index_dir, cfg)
    try:
        rng = np.random.default_rng(0)
        for replica in range(replicas):  # every replica touches the whole index, not only the first
            actor = ray.get_actor(actor_name(GROUP, 0, replica), namespace=NAMESPACE)
            for _ in range(calls):
                ray.get(actor.search.remote(rng.standard_normal((8, members[0]["dimension"]), np.float32), 5))
        rows = [{**ray.get(_memory_of.remote(m["pid"])), "replica": m["replica"]} for m in members]
    finally:
        stop_retrieval_group(GROUP, NAMESPACE)
    return {"replicas": replicas, "actors": rows, "sum_pss_mb": sum(r["pss_mb"] for r in rows),
            "sum_rss_mb": sum(r["rss_mb"] for r in rows), "mean_uss_mb": float(np.mean([r["uss_mb"] for r in rows]))}


def measure_trial_group(index_dir: str, calls: int, dimension: int, count: int, factory: str,
                        passage_words: int) -> dict:
    """PSS of a trial's own 1-replica group: on the version the shared group serves, then on its own version."""
    shared = RetrievalConfig(group=GROUP, namespace=NAMESPACE, actor_num_cpus=0.01)
    trial = RetrievalConfig(group=f"{GROUP}.trial", namespace=NAMESPACE, actor_num_cpus=0.01)
    rng = np.random.default_rng(1)

    def serve_and_measure(group: str) -> float:
        actor = ray.get_actor(actor_name(group, 0, 0), namespace=NAMESPACE)
        for _ in range(calls):
            ray.get(actor.search.remote(rng.standard_normal((8, dimension), np.float32), 5))
        return ray.get(_memory_of.remote(ray.get(actor.describe.remote())["pid"]))["pss_mb"]

    start_retrieval_group(index_dir, shared)
    start_retrieval_group(index_dir, trial)
    try:
        serve_and_measure(GROUP)
        on_shared = serve_and_measure(trial.group)
        with tempfile.TemporaryDirectory() as own:
            building = begin_version(own)
            write_synthetic_index(building, count, dimension, factory, seed=1, passage_words=passage_words)
            roll_group_forward(trial.group, NAMESPACE, publish_version(own, building))
            own_version = serve_and_measure(trial.group)
    finally:
        stop_retrieval_group(trial.group, NAMESPACE)
        stop_retrieval_group(GROUP, NAMESPACE)
    return {"on_shared_version_pss_mb": on_shared, "on_own_version_pss_mb": own_version}


def main(argv=None) -> int:
    spec = parse_spec(MemoryBenchmarkSpec, argv, __doc__)
    connect_ray()
    with tempfile.TemporaryDirectory() as tmp:
        write_synthetic_index(tmp, spec.count, spec.dimension, spec.factory, passage_words=spec.passage_words)
        files_mb = {p.name: round(p.stat().st_size / 2**20, 1) for p in sorted(Path(tmp).iterdir())}
        load_before = load_average()
        results = [measure(tmp, r, spec.calls) for r in spec.replicas]
        trial_group = measure_trial_group(tmp, spec.calls, spec.dimension, spec.count, spec.factory,
                                          spec.passage_words)
    assert not list_members(GROUP, NAMESPACE)
    base = results[0]
    for r in results[1:]:
        r["added_per_extra_replica_mb"] = (r["sum_pss_mb"] - base["sum_pss_mb"]) / (r["replicas"] - base["replicas"])
    report = {"spec": vars(spec), "index_files_mb": files_mb, "results": results, "trial_group": trial_group,
              "machine": machine_info(),
              "load_before": load_before, "load_after": load_average(), "time": time.strftime("%Y-%m-%d %H:%M")}
    out = Path(spec.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "memory.json").write_text(json.dumps(report, indent=2))
    _plot(report, out / "memory.png")
    print(f"index files (MB): {files_mb}")
    for r in results:
        extra = r.get("added_per_extra_replica_mb")
        print(f"{r['replicas']} replica(s): sum RSS {r['sum_rss_mb']:.0f} MB, sum PSS {r['sum_pss_mb']:.0f} MB, "
              f"USS per actor {r['mean_uss_mb']:.0f} MB"
              + ("" if extra is None else f", each extra replica adds {extra:.0f} MB"))
    print(f"a refreshing Tune trial's own group: {trial_group['on_shared_version_pss_mb']:.0f} MB PSS on the shared "
          f"version, {trial_group['on_own_version_pss_mb']:.0f} MB on a version of its own")
    return 0


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = report["results"]
    x = np.arange(len(results))
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.bar(x - 0.27, [r["sum_rss_mb"] for r in results], 0.27, label="sum of RSS (counts shared pages per actor)")
    ax.bar(x, [r["sum_pss_mb"] for r in results], 0.27, label="sum of PSS (what the node pays)")
    ax.bar(x + 0.27, [r["mean_uss_mb"] for r in results], 0.27, label="USS per actor (private)")
    ax.axhline(sum(report["index_files_mb"].values()), color="k", linestyle="--", label="index files on disk")
    ax.set_xticks(x, [f"{r['replicas']} replica(s)" for r in results])
    spec = report["spec"]
    ax.set(ylabel="MB", title=f"{spec['count']:,} x {spec['dimension']} {spec['factory']}, "
                              f"{spec['passage_words']}-word passages")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    run_job(main)
