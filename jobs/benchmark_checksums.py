"""BENCHMARK (checksums): which stdlib checksum an index manifest records, and what checking one costs a load.

    python jobs/benchmark_checksums.py                  # 1 GB file, best of 3; writes runs/checksums.json
    python jobs/benchmark_checksums.py --gb 4 --repeats 5

Each candidate reads the same file (in the page cache after the first pass) in 16 MiB blocks; a plain read
pass is the floor. Prints GB/s and what a 64 GB vectors file (21M passages x 768 float32) would take.
"""

import argparse
import hashlib
import json
import os
import tempfile
import time
import zlib
from pathlib import Path

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
    parser.add_argument("--output", default="runs/checksums.json")
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
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps({"file_gb": args.gb, "repeats": args.repeats, "rows": rows,
                                             "machine": machine_info()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
