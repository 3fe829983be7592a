"""How the project writes its own files (index versions, checkpoints, exported models, run and sweep outputs):
a fault of the storage (full disk, read-only file system, missing permission) becomes one StorageError line
naming the path, and a file or directory that a later command reads is written to a temporary sibling and
renamed into place, so an interrupted write leaves the old one or the new one, never half of either.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import uuid
from pathlib import Path
from typing import Callable, Iterator

from pipeline.errors import StorageError

_REASONS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
            errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
            errno.EPERM: "operation not permitted", errno.EIO: "input/output error"}


def storage_reason(error: BaseException) -> str | None:
    """What a storage fault is ("no space left on device", ...), or None when `error` is not one. FAISS reports
    a failed write as a RuntimeError whose text carries the system's message, so that text is read too."""
    if isinstance(error, OSError) and error.errno in _REASONS:
        return _REASONS[error.errno]
    text = str(error).lower()
    return next((reason for reason in _REASONS.values() if reason in text), None)


@contextlib.contextmanager
def storage_errors(path: str | Path, doing: str = "writing") -> Iterator[None]:
    """Turn a storage fault raised inside the block into StorageError `"{path}: {doing} failed: {reason}"`."""
    try:
        yield
    except (OSError, RuntimeError) as e:
        reason = storage_reason(e)
        if reason is None:
            raise
        raise StorageError(f"{getattr(e, 'filename', None) or path}: {doing} failed: {reason}") from None


def temporary_sibling(path: str | Path) -> Path:
    """A fresh hidden name beside `path` (same directory, so a rename onto `path` is atomic), with the same
    extension (matplotlib, for one, picks the format from it)."""
    path = Path(path)
    return path.with_name(f".{path.stem}.tmp-{uuid.uuid4().hex[:8]}{path.suffix}")


def write_atomically(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` on a temporary sibling of `path`, flush it to disk and rename it onto `path`.
    A failure removes the temporary file and leaves any earlier `path` as it was; StorageError for a storage
    fault."""
    path = Path(path)
    tmp = temporary_sibling(path)
    try:
        with storage_errors(path):
            write(tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_text_atomically(path: str | Path, text: str) -> Path:
    """`path.write_text(text)`, atomically (see write_atomically)."""
    return write_atomically(path, lambda tmp: tmp.write_text(text))


def replace_directory(path: str | Path, fill: Callable[[Path], None]) -> Path:
    """Call `fill(tmp)` on a new temporary sibling directory of `path`, then put it in place of `path` (any old
    `path` moved aside first and deleted after). A failure removes what was written and keeps the old `path`."""
    path = Path(path)
    tmp, aside = temporary_sibling(path), temporary_sibling(path)
    try:
        with storage_errors(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.mkdir()
            fill(tmp)
            if path.exists():
                os.rename(path, aside)
            try:
                os.rename(tmp, path)
            except OSError:
                if aside.exists():
                    os.rename(aside, path)  # the old one back: never neither
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(aside, ignore_errors=True)
    return path
