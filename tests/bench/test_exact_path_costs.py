"""The benchmark's exact-path table says what each exact search costs against the read pass."""

from __future__ import annotations

from pipeline.bench.retrieval import measure_exact_paths
from pipeline.bench.retrieval_report import exact_path_lines
from pipeline.bench.synthetic import write_synthetic_index
from pipeline.index.exact_scan import EXACT_SCAN_UP_TO_BATCH

PATHS = ("faiss_scan", "faiss_product", "numpy_product", "torch_product", "exact_scan")


def test_every_path_is_timed_against_the_read_pass_with_the_served_path_named(tmp_path):
    write_synthetic_index(tmp_path / "index", count=2000, dimension=32, factory="Flat")
    batches = [1, EXACT_SCAN_UP_TO_BATCH, EXACT_SCAN_UP_TO_BATCH + 1]
    rows = measure_exact_paths(str(tmp_path / "index"), batches, calls=3)
    assert [r["batch"] for r in rows] == batches
    for r in rows:
        assert r["read_pass_ms"] > 0 and all(r[f"{path}_ms"] > 0 for path in PATHS)
        assert set(r["over_read_pass"]) == set(PATHS)
        read = r["read_pass_ms"]
        for path in PATHS:  # each ratio is its path's median over the read pass's, within the ms' rounding
            low, high = (r[f"{path}_ms"] - 5e-4) / (read + 5e-4), (r[f"{path}_ms"] + 5e-4) / (read - 5e-4)
            assert low - 1e-3 <= r["over_read_pass"][path] <= high + 1e-3
    assert [r["served"] for r in rows] == ["exact_scan", "exact_scan", "faiss_product"]
    printed = exact_path_lines(rows)
    assert len(printed) == 1 + len(batches)
    last = rows[-1]
    assert f"served (faiss_product) {last['faiss_product_ms']:.1f} ({last['over_read_pass']['faiss_product']:.2f}x)" \
        in printed[-1]
