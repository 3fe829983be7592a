"""The retrieval benchmark's table, ratios, targets, JSON and PNG, from the raw interleaved timings."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.bench.report_files import write_report_files
from pipeline.bench.timing import paired_difference_ms, percentiles, ratio_with_spread

PAIR_PARTS = ("in_process", "ray", "transport")  # what one call of the pair variant times, in order
TARGETS = {"ray_over_floor": 2.0, "ray_w4_over_w1": 1.3, "ray_over_torch": 1.0}


def label(variant: str) -> str:
    kind, _, arg = variant.partition(":")
    if kind == "ray":
        actors, threads = arg.removeprefix("bench-").split("x")
        return f"Ray {actors} actor(s) x {threads} thread(s)"
    return {"floor": "read pass over the vectors (floor)", "in_process": "in-process search, 1 thread",
            "torch": f"torch rank 0, {arg} thread(s)", "pair_in_process": "in-process search (paired)",
            "pair_ray": "Ray 1 actor x 1 thread (paired)",
            "pair_transport": "Ray round trip of the same call, no search"}[kind]


def _flat_cells(cells: dict) -> dict[str, list[list[float]]]:
    """The pair variant's [in_process, ray, transport] timings split into three cells; every cell a list of turn
    blocks."""
    out = {}
    for key, turns in cells.items():
        world, variant = key.split("|", 1)
        if variant.startswith("pair:"):
            for position, part in enumerate(PAIR_PARTS):
                out[f"{world}|pair_{part}"] = [[p[position] for p in block] for block in turns]
        else:
            out[key] = turns
    return out


def table(cells: dict) -> list[dict]:
    """One row per (W, variant): p10/p50/p90/mean ms over all its calls."""
    rows = []
    for key, turns in _flat_cells(cells).items():
        world, variant = key.split("|", 1)
        rows.append({"workers": int(world), "variant": variant, "label": label(variant),
                     **{name: round(value, 3) if isinstance(value, float) else value
                        for name, value in percentiles([s for block in turns for s in block]).items()}})
    return rows


def ratios(cells: dict, workers: list[int], threads: list[int]) -> dict:
    """The headline ratios (T = min(threads): Ray T actors x 1 thread vs torch rank 0 with T threads) and the
    same at every T; None where a needed variant was not measured."""
    flat = _flat_cells(cells)
    w1, t = min(workers), min(threads)

    def ratio(a: str, b: str):
        return ratio_with_spread(flat[a], flat[b]) if a in flat and b in flat else None

    ray = f"ray:bench-{t}x1"
    out = {
        "ray_over_floor": ratio(f"{w1}|{ray}", f"{w1}|floor"),
        "ray_over_in_process": ratio(f"{w1}|{ray}", f"{w1}|in_process"),
        "ray_w4_over_w1": ratio(f"4|{ray}", f"{w1}|{ray}"),
        "overhead_ms": None,
        "transport_ms": None,
        "overhead_beyond_transport_ms": None,
        "compared": (f"Ray = {t} actor(s) x 1 FAISS thread, torch = rank 0 with {t} thread(s); floor = one "
                     f"matrix-vector pass over the shard's memory-mapped vectors; W={w1} unless named"),
    }
    for world in workers:
        out[f"ray_over_torch_w{world}"] = ratio(f"{world}|{ray}", f"{world}|torch:{t}")
    if f"{w1}|pair_ray" in flat:
        calls = {part: [s for block in flat[f"{w1}|pair_{part}"] for s in block] for part in PAIR_PARTS}
        out["overhead_ms"] = paired_difference_ms(calls["in_process"], calls["ray"])
        # Ray's own share of it: the same call's round trip with nothing searched (what any actor-based
        # service adds to an in-process search on this machine); the rest is this project's serving code.
        transport = percentiles(calls["transport"])
        out["transport_ms"] = {"value": round(transport["p50_ms"], 3), "p10": round(transport["p10_ms"], 3),
                               "p90": round(transport["p90_ms"], 3), "calls": transport["calls"]}
        out["overhead_beyond_transport_ms"] = paired_difference_ms(
            [a + b for a, b in zip(calls["in_process"], calls["transport"])], calls["ray"])
    out["by_threads"] = {
        str(threads_total): {
            f"w{world}": {layout: ratio(f"{world}|ray:bench-{layout}", f"{world}|torch:{threads_total}")
                          for layout in {f"{threads_total}x1", f"1x{threads_total}"}}
            for world in workers}
        for threads_total in threads}
    return out


def targets(r: dict) -> dict:
    """Each target with the measured value and whether it is met (None: not measured)."""
    def check(value, limit):
        return {"target": f"<= {limit}", "measured": value, "met": None if value is None else value <= limit}

    value = {key: (r[key] or {}).get("value") for key in r if key.startswith("ray_over_torch_w")}
    return {"ray_over_floor": check((r["ray_over_floor"] or {}).get("value"), TARGETS["ray_over_floor"]),
            "ray_w4_over_w1": check((r["ray_w4_over_w1"] or {}).get("value"), TARGETS["ray_w4_over_w1"]),
            **{key: check(v, TARGETS["ray_over_torch"]) for key, v in value.items()}}


def write_report(report: dict, output_dir: str | Path) -> tuple[Path, Path]:
    """retrieval_benchmark.json and retrieval_benchmark.png (p50 bars, whiskers to p90) in `output_dir`."""
    return write_report_files(report, output_dir, "retrieval_benchmark", _plot)


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["table"]
    workers = sorted({r["workers"] for r in rows})
    series = [v for v in dict.fromkeys(r["variant"] for r in rows)
              if v not in ("floor", *(f"pair_{part}" for part in PAIR_PARTS))]
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(9, 4.8))
    for i, variant in enumerate(series):
        found = [next((r for r in rows if r["workers"] == w and r["variant"] == variant), None) for w in workers]
        xs = [j + (i - (len(series) - 1) / 2) * width for j, r in enumerate(found) if r]
        p50 = [r["p50_ms"] for r in found if r]
        up = [r["p90_ms"] - r["p50_ms"] for r in found if r]
        ax.bar(xs, p50, width, yerr=[np.zeros(len(up)), up], capsize=2, label=label(variant))
    floor = next((r for r in rows if r["variant"] == "floor"), None)
    if floor:
        ax.axhline(floor["p50_ms"], color="black", linestyle="--", linewidth=1, label=label("floor"))
    ax.set_xticks(range(len(workers)), [str(w) for w in workers])
    ax.set_xlabel("training workers calling at once (W)")
    ax.set_ylabel("ms per call seen by rank 0 (p50, whisker to p90)")
    spec, loads = report["spec"], report["load_per_turn"]
    ax.set_title(f"{spec['count']:,} x {spec['dimension']} {spec['factory']}, batch {spec['batch']}/worker, "
                 f"k={spec['k']}, {report['machine']['cores']} cores, load {min(loads):.1f}-{max(loads):.1f}",
                 fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summary_lines(report: dict) -> list[str]:
    """The table and the ratios as printed at the end of a run."""
    lines = [f"{'W':>2} {'variant':<44} {'p50 ms':>9} {'p90 ms':>9}"]
    for r in report["table"]:
        lines.append(f"{r['workers']:>2} {r['label']:<44} {r['p50_ms']:>9.1f} {r['p90_ms']:>9.1f}")
    lines.append(report["ratios"]["compared"])
    for key, value in report["ratios"].items():
        if isinstance(value, dict) and "value" in value:
            unit = " ms" if key.endswith("_ms") else "x"
            lines.append(f"{key:<24} {value['value']:.3f}{unit}  (p10 {value['p10']:.3f}, p90 {value['p90']:.3f})")
    for key, t in report["targets"].items():
        status = "not measured" if t["met"] is None else ("met" if t["met"] else "NOT met")
        lines.append(f"target {key} {t['target']}: {status}")
    return lines + exact_path_lines(report.get("exact_paths", []))


def exact_path_lines(rows: list[dict]) -> list[str]:
    """The exact search's cost over the read pass at each batch size: the path served, FAISS's product."""
    lines = ["exact search, 1 thread, in-process: ms (x read pass)"] if rows else []
    for r in rows:
        served, over = r["served"], r["over_read_pass"]
        lines.append(f"  batch {r['batch']:>3}: read pass {r['read_pass_ms']:.1f}, served ({served}) "
                     f"{r[served + '_ms']:.1f} ({over[served]:.2f}x), FAISS product {r['faiss_product_ms']:.1f} "
                     f"({over['faiss_product']:.2f}x), one-pass kernel {r['exact_scan_ms']:.1f} "
                     f"({over['exact_scan']:.2f}x)")
    return lines
