"""The benchmarks' pieces: spec command lines, timing arithmetic, ratios and reports (no timing asserted)."""

from __future__ import annotations

import json

import pytest

from pipeline.bench.cli import parse_spec
from pipeline.bench.retrieval import (
    RetrievalBenchmarkSpec,
    measure_exact_paths,
    variants_at,
)
from pipeline.bench.retrieval_report import (
    ratios,
    summary_lines,
    table,
    targets,
    write_report,
)
from pipeline.bench.timing import paired_difference_ms, percentiles, ratio_with_spread
from pipeline.errors import ConfigError
from tests.conftest import assert_is_a_plot


def test_spec_command_line_is_generated_from_the_dataclass():
    spec = parse_spec(RetrievalBenchmarkSpec, ["--workers", "1,4", "--actors", "1, 4", "--calls", "40",
                                               "--factory", "HNSW32", "--coalesce_window_ms", "0"], "doc")
    assert (spec.workers, spec.actors, spec.calls, spec.factory, spec.coalesce_window_ms) == (
        [1, 4], [1, 4], 40, "HNSW32", 0.0)
    assert spec.batch == RetrievalBenchmarkSpec().batch  # untouched fields keep their defaults


@pytest.mark.parametrize("argv,message", [
    (["--calls", "0"], r"--calls: must be >= 1, got 0"),
    (["--workers", "1,x"], r"--workers: expected int, got 'x'"),
    (["--workers", "1,0"], r"--workers: must be >= 1, got 0"),
    (["--workers", ","], r"--workers: expected a comma-separated list"),
    (["--batch", "2.5"], r"--batch: expected int, got 2.5"),
])
def test_bad_benchmark_options_name_the_option(argv, message):
    with pytest.raises(ConfigError, match=message):
        parse_spec(RetrievalBenchmarkSpec, argv, "doc")


def test_unknown_benchmark_option_is_refused(capsys):
    with pytest.raises(SystemExit):
        parse_spec(RetrievalBenchmarkSpec, ["--threads", "2"], "doc")
    assert "unrecognized arguments: --threads" in capsys.readouterr().err


def test_percentiles_in_milliseconds():
    stats = percentiles([0.001 * i for i in range(1, 11)])
    assert stats["p50_ms"] == pytest.approx(5.5) and stats["calls"] == 10
    assert stats["p10_ms"] == pytest.approx(1.9) and stats["p90_ms"] == pytest.approx(9.1)
    with pytest.raises(ValueError):
        percentiles([])


def test_ratio_uses_all_calls_and_spreads_over_turns():
    r = ratio_with_spread([[2.0, 2.0], [6.0, 6.0]], [[1.0, 1.0], [2.0, 2.0]])
    assert r["value"] == pytest.approx(4.0 / 1.5, abs=1e-4)  # median 4 over median 1.5 (rounded to 4 places)
    assert r["p10"] == pytest.approx(2.1) and r["p90"] == pytest.approx(2.9) and r["turns"] == 2
    with pytest.raises(ValueError, match="same number of turns"):
        ratio_with_spread([[1.0]], [[1.0], [1.0]])


def test_paired_difference_is_per_pair_in_ms():
    d = paired_difference_ms([0.010, 0.020, 0.030], [0.012, 0.025, 0.031])
    assert d["value"] == pytest.approx(2.0) and d["pairs"] == 3
    assert d["p10"] == pytest.approx(1.2) and d["p90"] == pytest.approx(4.4)


def test_variants_measure_floor_and_overhead_once_and_equal_threads_at_every_w():
    spec = RetrievalBenchmarkSpec(workers=[1, 4], actors=[1, 2])
    at_1 = [v for v, _ in variants_at(1, spec)]
    at_4 = [v for v, _ in variants_at(4, spec)]
    assert at_1 == ["floor", "pair:bench-1x1", "in_process", "torch:1", "ray:bench-1x1", "torch:2",
                    "ray:bench-2x1", "ray:bench-1x2"]
    assert at_4 == at_1[2:]
    configs = dict(variants_at(4, spec))
    assert configs["torch:2"]["faiss_threads"] == 2
    assert (configs["ray:bench-2x1"]["replicas"], configs["ray:bench-2x1"]["faiss_threads"]) == (2, 1)
    assert (configs["ray:bench-1x2"]["replicas"], configs["ray:bench-1x2"]["faiss_threads"]) == (1, 2)


def _cells() -> dict:
    """Two turns of made-up timings (seconds) in the benchmark's raw layout."""
    def turns(a, b):
        return [[a, a], [b, b]]

    return {
        "1|floor": turns(0.010, 0.010), "1|pair:bench-1x1": [[[0.020, 0.022, 0.001], [0.020, 0.024, 0.003]]] * 2,
        "1|in_process": turns(0.020, 0.020), "1|torch:1": turns(0.025, 0.025), "1|ray:bench-1x1": turns(0.030, 0.030),
        "4|in_process": turns(0.040, 0.040), "4|torch:1": turns(0.080, 0.080), "4|ray:bench-1x1": turns(0.036, 0.036),
    }


def test_ratios_targets_and_report_files(tmp_path):
    cells = _cells()
    found = ratios(cells, [1, 4], [1])
    assert found["ray_over_floor"]["value"] == pytest.approx(3.0)
    assert found["ray_over_in_process"]["value"] == pytest.approx(1.5)
    assert found["ray_over_torch_w1"]["value"] == pytest.approx(1.2)
    assert found["ray_over_torch_w4"]["value"] == pytest.approx(0.45)
    assert found["ray_w4_over_w1"]["value"] == pytest.approx(1.2)
    assert found["overhead_ms"]["value"] == pytest.approx(3.0)  # pairs differ by 2 and 4 ms
    assert found["transport_ms"]["value"] == pytest.approx(2.0)  # round trips of 1 and 3 ms
    assert found["overhead_beyond_transport_ms"]["value"] == pytest.approx(1.0)  # 2 - 1 and 4 - 3 ms
    assert found["by_threads"]["1"]["w4"]["1x1"]["value"] == pytest.approx(0.45)
    met = targets(found)
    assert met["ray_over_floor"]["met"] is False and met["ray_w4_over_w1"]["met"] is True
    assert met["ray_over_torch_w1"]["met"] is False and met["ray_over_torch_w4"]["met"] is True

    rows = table(cells)
    expected = {(1, "pair_in_process"), (1, "pair_ray"), (1, "pair_transport"), (4, "torch:1")}
    assert {(r["workers"], r["variant"]) for r in rows} >= expected
    report = {"spec": {"count": 10, "dimension": 4, "factory": "Flat", "batch": 8, "k": 5},
              "machine": {"cores": 2}, "load_per_turn": [1.0, 2.0], "table": rows, "ratios": found,
              "targets": met}
    json_path, png_path = write_report(report, tmp_path)
    saved = json.loads(json_path.read_text())
    assert {"ray_over_floor", "ray_over_torch_w4", "ray_w4_over_w1", "overhead_ms"} <= set(saved["ratios"])
    assert_is_a_plot(png_path)
    printed = "\n".join(summary_lines(report))
    assert "ray_over_floor" in printed and "target ray_w4_over_w1 <= 1.3: met" in printed


def test_missing_variants_give_no_ratio_rather_than_a_wrong_one():
    cells = {key: value for key, value in _cells().items() if not key.startswith("4|")}
    found = ratios(cells, [1], [1])
    assert found["ray_w4_over_w1"] is None and "ray_over_torch_w4" not in found
    assert targets(found)["ray_w4_over_w1"]["met"] is None


def test_exact_paths_compare_every_path_at_every_batch(tmp_path):
    from pipeline.bench.synthetic import write_synthetic_index

    write_synthetic_index(tmp_path / "index", count=500, dimension=16, factory="Flat")
    rows = measure_exact_paths(str(tmp_path / "index"), [1, 4], calls=2)
    assert [r["batch"] for r in rows] == [1, 4]
    paths = {"faiss_scan", "faiss_product", "numpy_product", "torch_product", "exact_scan"}
    for row in rows:  # every path timed, and every path did the same work: the same top-k for every question
        assert all(row[f"{path}_ms"] > 0 for path in paths)
        assert row["same_top_k"] == {path: True for path in paths}


def test_scale_plan_builds_the_grid_where_it_fits():
    from pipeline.bench.scale import ScaleBenchmarkSpec, nlist_for, plan, settings_for

    spec = ScaleBenchmarkSpec(counts=[100_000, 1_000_000, 2_000_000], shards=[1, 2, 4], graph_max_count=1_000_000,
                              vector_dtypes=["float32", "float16"])
    configs = plan(spec)
    assert [(n, s, d) for n, f, s, d in configs if f == spec.compressed] == [
        (n, s, d) for n in (100_000, 1_000_000, 2_000_000) for s in (1, 2, 4) for d in ("float32", "float16")]
    assert [(n, s, d) for n, f, s, d in configs if f == spec.graph] == [
        (100_000, 1, "float32"), (100_000, 2, "float32"), (100_000, 4, "float32"), (1_000_000, 1, "float32")]
    assert [(n, s) for n, f, s, _ in configs if f == "Flat"] == [(100_000, 1), (1_000_000, 1)]
    assert nlist_for(1_000_000) == 2048 and nlist_for(250_000) == 1024 and nlist_for(100) == 16
    assert settings_for("IVF1024,PQ64x4fs", ScaleBenchmarkSpec(ivf_settings="16x1,64x10")) == [
        {"nprobe": 16, "rerank_factor": 1}, {"nprobe": 64, "rerank_factor": 10}]
    assert settings_for("HNSW32", ScaleBenchmarkSpec(hnsw_settings="32,128")) == [{"ef_search": 32},
                                                                                 {"ef_search": 128}]
    assert settings_for("Flat", spec) == [{}]


def test_scale_figure_picks_the_fastest_setting_near_the_best_recall(tmp_path):
    from pipeline.bench.scale_report import best_rows, plot_scale

    rows = [{"count": 1000, "factory": "IVF32,PQ8", "shards": 1, "nprobe": n, "rerank_factor": 1,
             "recall_at_10": r, "p50_ms": ms, "pss_mb_per_actor": 10.0}
            for n, r, ms in ((4, 0.80, 1.0), (16, 0.965, 2.0), (64, 0.97, 5.0))]
    assert [r["nprobe"] for r in best_rows(rows)] == [16]  # within 0.01 of the best recall, and faster
    plot_scale({"rows": rows, "spec": {"dimension": 8}, "machine": {"cores": 2}}, tmp_path / "scale.png")
    assert_is_a_plot(tmp_path / "scale.png")


def test_scale_target_takes_the_fastest_setting_that_reaches_the_recall():
    from pipeline.bench.scale_report import compressed_target

    def row(count, factory, nprobe, recall, ms, shards=1):
        return {"count": count, "factory": factory, "shards": shards, "nprobe": nprobe, "rerank_factor": 50,
                "recall_at_10": recall, "p50_ms": ms}

    rows = [row(1_000_000, "IVF2048,PQ64x4fs", 16, 0.94, 4.0), row(1_000_000, "IVF2048,PQ64x4fs", 32, 0.97, 12.0),
            row(1_000_000, "IVF2048,PQ64x4fs", 64, 0.98, 15.0), row(1_000_000, "Flat", 0, 1.0, 600.0),
            row(1_000_000, "IVF1024,PQ64x4fs", 32, 0.99, 3.0, shards=2), row(100_000, "IVF512,PQ64x4fs", 8, 0.99, 2.0)]
    found = compressed_target(rows)
    assert (found["setting"]["nprobe"], found["p50_ms"], found["met"]) == (32, 12.0, False)
    rows[1]["p50_ms"] = 9.0
    assert compressed_target(rows)["met"] is True
    assert compressed_target([row(100_000, "IVF512,PQ64x4fs", 8, 0.99, 2.0)])["met"] is None  # 1M not measured


def test_scale_serves_the_float32_and_float16_versions_at_once_and_stops_both_groups(ray_cluster, tmp_path):
    import numpy as np

    from pipeline.bench.scale import GROUP, NAMESPACE, serve_and_measure
    from pipeline.bench.synthetic import synthetic_vectors, write_synthetic_index
    from pipeline.retrieval.group_record import list_members

    directories = {}
    for dtype in ("float32", "float16"):
        write_synthetic_index(tmp_path / dtype, 3000, 16, "IVF16,PQ4x4", vector_dtype=dtype)
        directories[dtype] = str(tmp_path / dtype)
    vectors = np.memmap(tmp_path / "float32" / "vectors.f32", dtype=np.float32, mode="r", shape=(3000, 16))
    questions = np.concatenate(list(synthetic_vectors(16, 16, 0, draw=1)))
    truth = np.argsort(-(questions @ vectors.T), axis=1)[:, :10]
    rows = serve_and_measure(directories, 1, {"nprobe": 16, "rerank_factor": 20}, questions, truth, batch=4)
    assert set(rows) == {"float32", "float16"}
    for row in rows.values():
        assert row["calls"] == 4 and row["recall_at_10"] >= 0.9 and row["pss_mb_per_actor"] > 0
    assert not list_members(f"{GROUP}-float32", NAMESPACE) and not list_members(f"{GROUP}-float16", NAMESPACE)
