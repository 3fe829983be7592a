"""Index versions: an index location holds complete versions side by side and a pointer to the current one.

    <location>/
      CURRENT              the current version's name ("v0002"), replaced atomically once that version is complete
      v0001/  v0002/       complete index directories (see manifest.py), never modified after publishing
      .building-<id>/      a version being written; renamed to the next vNNNN only when complete

A build (jobs/build_index.py, or a refresh during training) writes a new version beside the served ones, so a
retrieval group never has its files replaced under it; old versions are removed once no group serves them
(pipeline/retrieval/rollout.py decides that). `--index.directory` names the location; a version directory can
also be named directly to serve exactly that version.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import IndexFormatError
from pipeline.storage import storage_errors, write_text_atomically

CURRENT = "CURRENT"
_VERSION = re.compile(r"^v(\d{4,})$")


@dataclass(frozen=True)
class IndexVersion:
    """One version of an index: its directory, its name (vNNNN) and the location holding it."""

    location: Path
    name: str

    @property
    def directory(self) -> Path:
        return self.location / self.name


def is_version_name(name: str) -> bool:
    return bool(_VERSION.match(name))


def is_location(path: str | Path) -> bool:
    """Whether `path` is an index location (it has a CURRENT pointer)."""
    return (Path(path) / CURRENT).is_file()


def resolve_version(path: str | Path) -> IndexVersion:
    """The version to serve for `path`: a location's CURRENT, or `path` itself when it is an index directory
    (it holds a manifest.json: a version named directly, or a single index written by other tools).

    IndexFormatError (one line, naming the path) for a missing path, a directory that is neither, or a CURRENT
    naming a version that is not there.
    """
    path = Path(path).resolve()
    if not path.is_dir():
        raise IndexFormatError(f"{path}: index location not found (build it with jobs/build_index.py)")
    if (path / "manifest.json").is_file() and not is_location(path):
        return IndexVersion(path.parent, path.name)  # a version directory named directly: exactly that version
    pointer = path / CURRENT
    if not pointer.is_file():
        raise IndexFormatError(f"{path}: no {CURRENT} pointer; not an index location "
                               f"(build one with jobs/build_index.py --index.directory {path})")
    name = pointer.read_text().strip()
    if not is_version_name(name) or not (path / name).is_dir():
        raise IndexFormatError(f"{pointer}: names version {name!r}, which is not a directory of {path}")
    return IndexVersion(path, name)


def list_versions(location: str | Path) -> list[str]:
    """Published version names of a location, oldest first."""
    location = Path(location)
    if not location.is_dir():
        return []
    names = [p.name for p in location.iterdir() if p.is_dir() and is_version_name(p.name)]
    return sorted(names, key=lambda n: int(n[1:]))


def begin_version(location: str | Path) -> Path:
    """A fresh hidden directory in `location` to write a version into (publish it with `publish_version`)."""
    location = Path(location)
    tmp = location / f".building-{uuid.uuid4().hex[:8]}"
    with storage_errors(tmp, "creating"):
        location.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
    return tmp


def publish_version(location: str | Path, building: Path) -> IndexVersion:
    """Rename a complete `building` directory to the next vNNNN and point CURRENT at it (both atomic renames).
    If CURRENT cannot be written (a full disk), the new version is removed again: nothing half-published stays."""
    location = Path(location)
    while True:
        versions = list_versions(location)
        name = f"v{int(versions[-1][1:]) + 1 if versions else 1:04d}"
        try:
            with storage_errors(location / name, "publishing"):
                os.rename(building, location / name)  # fails if a concurrent build took the name: try the next
            break
        except OSError:
            if not (location / name).exists():
                raise
    try:
        set_current(location, name)
    except BaseException:
        shutil.rmtree(location / name, ignore_errors=True)
        raise
    return IndexVersion(location.resolve(), name)


def set_current(location: str | Path, name: str) -> None:
    """Point CURRENT at version `name`, atomically: readers see the old name or the new one, never a partial one."""
    write_text_atomically(Path(location) / CURRENT, name + "\n")


def discard_building(building: Path) -> None:
    shutil.rmtree(building, ignore_errors=True)


def remove_versions(location: str | Path, keep: set[str]) -> list[str]:
    """Delete the versions of `location` that are neither CURRENT nor in `keep`; returns their names."""
    location = Path(location)
    current = resolve_version(location).name if is_location(location) else None
    removed = []
    for name in list_versions(location):
        if name != current and name not in keep:
            shutil.rmtree(location / name, ignore_errors=True)
            removed.append(name)
    return removed
