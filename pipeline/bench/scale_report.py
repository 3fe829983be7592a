"""The scale benchmark's figure: ms per call vs N, recall vs ms, and memory per actor vs N."""

from __future__ import annotations

from pathlib import Path


def kind(factory: str) -> str:
    return "exact (Flat)" if factory == "Flat" else ("graph (HNSW)" if factory.startswith("HNSW") else "IVF-PQ")


def row_kind(row: dict) -> str:
    """The index kind of a measured row, with its exact vectors' dtype where they are not float32."""
    dtype = row.get("vector_dtype", "float32")
    return kind(row["factory"]) + ("" if dtype == "float32" else f", {dtype} vectors")


def best_rows(rows: list[dict]) -> list[dict]:
    """Per (N, factory, S, vector dtype): the fastest setting reaching the best recall there within 0.01."""
    best = {}
    for row in rows:
        key = (row["count"], row["factory"], row["shards"], row.get("vector_dtype", "float32"))
        best.setdefault(key, []).append(row)
    picked = []
    for candidates in best.values():
        top = max(r["recall_at_10"] for r in candidates)
        picked.append(min((r for r in candidates if r["recall_at_10"] >= top - 0.01), key=lambda r: r["p50_ms"]))
    return picked


def compressed_target(rows: list[dict], count: int = 1_000_000, recall: float = 0.95, ms: float = 10.0) -> dict:
    """The issue's target for a compressed index at `count` passages, 1 shard: the fastest setting reaching
    `recall`@10 vs exact, and whether it answers within `ms` per call (p50). `met` is None when `count` was
    not measured, False when no setting reached `recall`."""
    target = f"{count:,} passages, recall@10 >= {recall} at <= {ms} ms per call (p50), 1 shard"
    reaching = [r for r in rows if r["count"] == count and r["shards"] == 1 and row_kind(r) == "IVF-PQ"
                and r["recall_at_10"] >= recall]
    if not reaching:
        measured = any(r["count"] == count for r in rows)
        return {"target": target, "setting": None, "p50_ms": None, "recall_at_10": None,
                "met": False if measured else None}
    found = min(reaching, key=lambda r: r["p50_ms"])
    return {"target": target, "setting": {key: found.get(key) for key in ("factory", "nprobe", "rerank_factor")},
            "p50_ms": found["p50_ms"], "recall_at_10": found["recall_at_10"], "met": found["p50_ms"] <= ms}


def plot_scale(report: dict, path: Path) -> None:
    """Three panels from `report["rows"]`, written to `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    fig, (ms_ax, recall_ax, memory_ax) = plt.subplots(1, 3, figsize=(15, 4.5))
    lines = sorted({(row_kind(r), r["shards"]) for r in rows})
    for name, shards in lines:
        picked = sorted((r for r in best_rows(rows) if row_kind(r) == name and r["shards"] == shards),
                        key=lambda r: r["count"])
        label = f"{name}, S={shards}"
        ms_ax.plot([r["count"] for r in picked], [r["p50_ms"] for r in picked], marker="o", label=label)
        memory_ax.plot([r["count"] for r in picked], [r["pss_mb_per_actor"] for r in picked], marker="o", label=label)
    for r in rows:
        recall_ax.scatter(r["p50_ms"], r["recall_at_10"], s=18,
                          marker={"exact (Flat)": "s", "graph (HNSW)": "^"}.get(kind(r["factory"]), "o"))
        setting = ",".join(f"{k[0]}{r[k]}" for k in ("nprobe", "rerank_factor", "ef_search") if k in r)
        half = "" if r.get("vector_dtype", "float32") == "float32" else " f16"
        recall_ax.annotate(f"{r['count'] // 1000}k S{r['shards']} {setting}{half}", (r["p50_ms"], r["recall_at_10"]),
                           fontsize=5)
    ms_ax.set(xscale="log", yscale="log", xlabel="passages N", ylabel="ms per call, batch 8 (p50)",
              title="best-recall setting per index")
    recall_ax.set(xscale="log", xlabel="ms per call (p50)", ylabel="recall@10 vs exact",
                  title="every setting (o IVF-PQ, ^ HNSW, s Flat)")
    recall_ax.axhline(0.95, color="grey", linestyle=":", linewidth=1)
    recall_ax.axvline(10, color="grey", linestyle=":", linewidth=1)
    memory_ax.set(xscale="log", yscale="log", xlabel="passages N", ylabel="PSS per actor after the calls (MB)",
                  title="resident memory per actor")
    ms_ax.legend(fontsize=7)
    fig.suptitle(f"{report['spec']['dimension']}-d synthetic vectors, {report['machine']['cores']} cores", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
