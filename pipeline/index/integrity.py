"""What a version's files should be, and the check that they are: each file's size in bytes and its CRC-32,
recorded in the manifest (format 3) when the version is written, and compared before anything reads the files.

CRC-32 (zlib): the fastest strong-enough stdlib checksum measured here on large files (docs/results.md,
"Index file checksums", jobs/benchmark_checksums.py), and it is meant to catch damage (a failed copy,
changed bytes), not an adversary. Sizes are checked on every load (a stat per file); a
checksum reads the whole file, so callers choose which files to checksum (`verify_files(..., checksums=)`).
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Iterable

from pipeline.errors import IndexFormatError
from pipeline.storage import storage_errors

CHECKSUM = "crc32"
_BLOCK = 1 << 24  # 16 MiB reads: large enough that the checksum, not the calls, sets the pace


def file_checksum(path: str | Path) -> str:
    """CRC-32 of a file's bytes as 8 hex digits, read in 16 MiB blocks."""
    crc, buffer = 0, bytearray(_BLOCK)
    view = memoryview(buffer)
    with storage_errors(path, "reading"), open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            crc = zlib.crc32(view[:n], crc)
    return f"{crc:08x}"


def file_records(directory: str | Path, names: Iterable[str]) -> dict[str, dict]:
    """{name: {"bytes": size, "crc32": checksum}} of the named files of `directory` (what a manifest records)."""
    directory = Path(directory)
    return {name: {"bytes": (directory / name).stat().st_size, CHECKSUM: file_checksum(directory / name)}
            for name in names}


def verify_files(directory: str | Path, files: dict[str, dict], checksums: Iterable[str] | bool = ()) -> None:
    """Check the files of `directory` against `files` (a manifest's records): every file present with its
    recorded size, and the CRC-32 of those named in `checksums` (True: of all). IndexFormatError naming the
    file and what differs: missing, cut short or grown (as after a failed copy), or bytes changed."""
    directory = Path(directory)
    to_checksum = set(files) if checksums is True else set(checksums or ())
    for name, record in files.items():
        path = directory / name
        if not path.is_file():
            raise IndexFormatError(f"{path}: missing (the manifest lists it)")
        size = path.stat().st_size
        if size != record["bytes"]:
            what = "cut short" if size < record["bytes"] else "longer than written"
            raise IndexFormatError(f"{path}: {size} bytes, manifest says {record['bytes']} ({what}, as after a "
                                   f"failed copy); copy the index again or rebuild it")
        if name in to_checksum and CHECKSUM in record:
            found = file_checksum(path)
            if found != record[CHECKSUM]:
                raise IndexFormatError(f"{path}: damaged (crc32 {found}, manifest says {record[CHECKSUM]}); "
                                       f"copy the index again or rebuild it")
