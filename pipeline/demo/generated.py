"""Generated data sets (the bundled demo, the end-to-end benchmark's ledger): their layout (`DemoPaths`), the
made-up words they are written in (`WordMaker`), and `ensure_generated`, which makes one from a seed once:
stamped, atomic, never over another data set.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import DataError
from pipeline.storage import storage_errors

_STAMP = "demo.json"  # {"version", "seed", "reading_steps"} of the demo in a directory


@dataclass
class DemoPaths:
    """Where `ensure_demo_data` put each part of the demo."""

    directory: Path
    documents: Path  # documents.jsonl: {"title", "text"} per line
    train: Path  # {"question", "answers": [str, ...], "evidence"} per line
    dev: Path
    test: Path
    generator: Path  # Hugging Face BART directory (config, safetensors, tokenizer)

    @classmethod
    def at(cls, directory: str | Path) -> "DemoPaths":
        d = Path(directory)
        return cls(d, d / "documents.jsonl", d / "train.jsonl", d / "dev.jsonl", d / "test.jsonl", d / "generator")

    def missing(self) -> list[str]:
        """Names of the parts not present on disk."""
        parts = [self.documents, self.train, self.dev, self.test, self.generator / "config.json",
                 self.generator / "model.safetensors", self.generator / "tokenizer.json"]
        return [str(p.relative_to(self.directory)) for p in parts if not p.exists()]


_ONSETS = ["b", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "st", "th", "tr"]
_VOWELS = ["a", "e", "i", "o", "u", "a", "e", "o", "ai", "ei"]
_CODAS = ["", "", "", "n", "r", "l", "s", "k", "m", "x"]


class WordMaker:
    """Capitalised pronounceable words, each new word distinct from every earlier one."""

    def __init__(self, rng: random.Random):
        self.rng, self.seen = rng, set()

    def word(self, syllables: int) -> str:
        while True:
            w = "".join(self.rng.choice(_ONSETS) + self.rng.choice(_VOWELS) + self.rng.choice(_CODAS)
                        for _ in range(syllables))
            if w not in self.seen and 4 <= len(w) <= 10:
                self.seen.add(w)
                return w.capitalize()

    def pool(self, size: int, syllables: tuple[int, ...]) -> list[str]:
        return [self.word(self.rng.choice(syllables)) for _ in range(size)]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """One JSON object per line, UTF-8, keys in the order given (the bytes the demo's tests compare)."""
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _kind(stamp: dict) -> str:
    return stamp.get("kind", "demo")  # the demo's stamp predates kinds; other data sets name theirs


def _reason_to_generate(paths: DemoPaths, stamp: dict) -> str | None:
    """None if `paths` holds the data set `stamp` describes, else why it must be (re)generated."""
    kind = _kind(stamp)
    if not paths.directory.exists():
        return "absent"
    if not (paths.documents.exists() and (paths.generator / "config.json").exists()):
        raise DataError(f"{paths.directory}: exists but is not a {kind} (no documents.jsonl or generator/); "
                        "move it or choose another directory")
    try:
        found = json.loads((paths.directory / _STAMP).read_text())
    except (OSError, ValueError):
        found = {}
    if found and _kind(found) != kind:  # another data set's directory: never replaced by this one
        raise DataError(f"{paths.directory}: holds {_kind(found)} data, not {kind}; choose another directory")
    if found != stamp:
        return f"replacing {found or f'an unversioned {kind}'}"
    if paths.missing():
        raise DataError(f"{paths.directory}: incomplete {kind} (missing {', '.join(paths.missing())}); "
                        "delete it to regenerate")
    return None


def _move_into_place(tmp: Path, directory: Path, replace: bool) -> None:
    """Rename a finished demo to `directory`; with `replace`, first move the stale one there aside and delete it."""
    if replace:
        aside = Path(tempfile.mkdtemp(prefix=f".{directory.name}-old-", dir=directory.parent))
        try:
            os.rename(directory, aside)  # onto the empty `aside`, which it replaces
        except FileNotFoundError:
            pass  # another process moved it first
        shutil.rmtree(aside, ignore_errors=True)
    try:
        os.rename(tmp, directory)
    except OSError:
        if not directory.exists():  # not a race lost to another generator of the same demo: a real failure
            raise


def ensure_generated(directory: str | Path, stamp: dict, generate: Callable[[DemoPaths], None]) -> DemoPaths:
    """Paths of the data set `stamp` describes under `directory`, calling `generate(paths)` on a temporary
    sibling directory first if it is absent or stamped otherwise (the demo's contract, for any data set
    with its layout; `stamp["kind"]` names a data set other than the demo, and `stamp["seed"]` is logged).
    """
    paths = DemoPaths.at(directory)
    reason = _reason_to_generate(paths, stamp)
    if reason is None:
        return paths
    paths.directory.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{paths.directory.name}-", dir=paths.directory.parent))
    os.chmod(tmp, 0o755)  # mkdtemp's 0700 would hide the demo from other users of a shared cluster
    try:
        with storage_errors(paths.directory, "generating"):  # a full disk: one line, and the finally cleans up
            generate(DemoPaths.at(tmp))
            (tmp / _STAMP).write_text(json.dumps(stamp) + "\n")
            _move_into_place(tmp, paths.directory, replace=reason != "absent")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    note = "" if reason == "absent" else f", {reason}"
    print(f"{_kind(stamp)} data: generated {paths.directory} (seed {stamp.get('seed')}) "
          f"in {time.perf_counter() - start:.1f}s{note}", flush=True)
    return paths
