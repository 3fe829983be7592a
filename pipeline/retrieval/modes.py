"""The retrieval modes: every way the training loop can reach the index, listed once.

Each mode keeps the one call contract (`retrieve(float32[B, d], k) -> RetrievalResult`). Adding a mode is one
module with an opener and one entry in MODES; the config's choices, the run checks and the jobs read the
traits below instead of comparing mode names.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from pipeline.errors import ConfigError


@dataclass(frozen=True)
class RetrievalMode:
    name: str
    # "module:function", called as function(index_dir, cfg: RetrievalConfig, rank) -> retriever. Imported only
    # when the mode is chosen: the torch mode imports torch, which the rest of pipeline/retrieval never does.
    opener: str
    uses_group: bool  # served by the named actor group, which the driver starts and which can roll forward
    max_workers: int | None  # training workers the mode can serve (None: any number)
    summary: str


MODES = {mode.name: mode for mode in (
    RetrievalMode("ray", "pipeline.retrieval.client:open_group_client", True, None,
                  "the named, detached actor group"),
    RetrievalMode("torch", "pipeline.retrieval.torch_distributed:open_torch_retriever", False, None,
                  "the torch.distributed baseline: rank 0 holds the index and searches for every rank"),
    RetrievalMode("local", "pipeline.retrieval.local:open_local_retriever", False, 1,
                  "the index searched in-process, for one worker"),
)}


def retrieval_mode(name: str) -> RetrievalMode:
    """The mode called `name`; ConfigError naming retrieval.mode otherwise."""
    if name not in MODES:
        raise ConfigError(f"retrieval.mode: {name!r} is not one of {', '.join(MODES)}")
    return MODES[name]


def open_mode_retriever(name: str, index_dir: str, cfg, rank: int):
    """The retriever of mode `name` for a worker of rank `rank` (see `RetrievalMode.opener`)."""
    module, _, function = retrieval_mode(name).opener.partition(":")
    return getattr(importlib.import_module(module), function)(index_dir, cfg, rank)
