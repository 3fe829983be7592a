"""BENCHMARK (checksums): which stdlib checksum an index manifest records, and what checking one costs a load.

    python jobs/benchmark_checksums.py                  # 1 GB file, best of 3; runs/benchmarks/checksums.{json,png}
    python jobs/benchmark_checksums.py --gb 4 --repeats 5

Each candidate reads the same file (in the page cache after the first pass) in 16 MiB blocks; a plain read
pass is the floor. Prints GB/s and what a 64 GB vectors file (21M passages x 768 float32) would take.
"""

import argparse
import hashlib
import os
import tempfile
import time
import zlib
from pathlib import Path

from pipeline.bench.report_files import write_report_files
from pipeline.bench.timing import machine_info
from pipeline.index.integrity import file_checksum

_BLOCK = 1 << 24


def _stream(path: Path, update) -> None:
    buffer = bytearray(_BLOCK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            update(view[:n])


def candidates(path: Path) -> dict:
    """name -> a call that reads `path` once and checksums it (or only reads it: the floor)."""
    def hashed(name):
        return lambda: _stream(path, hashlib.new(name).update)
    return {"read only": lambda: _stream(path, lambda block: None), "crc32 (file_checksum)": lambda: file_checksum(path),
            "adler32": lambda: _stream(path, lambda block: zlib.adler32(block)),
            **{name: hashed(name) for name in ("sha1", "sha256", "blake2b", "md5")}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="runs/benchmarks", help="Folder for checksums.json and checksums.png.")
    args = parser.parse_args()
    size = int(args.gb * 1e9)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "data.bin"
        with open(path, "wb") as f:
            for start in range(0, size, _BLOCK):
                f.write(os.urandom(min(_BLOCK, size - start)))
        best = {}
        for _ in range(args.repeats):
            for name, run in candidates(path).items():
                started = time.perf_counter()
                run()
                best[name] = max(best.get(name, 0.0), size / (time.perf_counter() - started) / 1e9)
    rows = [{"checksum": name, "gb_per_s": round(rate, 2), "s_for_64_gb": round(64 / rate)} for name, rate in best.items()]
    for row in rows:
        print(f"{row['checksum']:>22}: {row['gb_per_s']:.2f} GB/s, 64 GB in {row['s_for_64_gb']} s")
    report = {"file_gb": args.gb, "repeats": args.repeats, "rows": rows, "machine": machine_info()}
    json_path, png_path = write_report_files(report, args.out, "checksums", plot_rates)
    print(f"[benchmark_checksums] {json_path}, {png_path}")
    return 0


def plot_rates(report: dict, path: Path) -> None:
    """GB/s of each checksum beside the plain read pass, one bar each."""
    from matplotlib.figure import Figure  # plotting only, at the end of the run

    rows = report["rows"]
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    ax.barh([r["checksum"] for r in rows], [r["gb_per_s"] for r in rows], color="#4a7")
    ax.set_xlabel("GB/s (file in the page cache)")
    ax.set_title(f"Reading a {report['file_gb']:g} GB file: checksums against the read pass")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
