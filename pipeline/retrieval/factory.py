"""The training loop's one entry to retrieval: a retriever for `retrieval.mode`, all with the same call contract.

    retriever = make_retriever(cfg.retrieval.mode, cfg.index.directory, cfg.retrieval, rank)
    hits = retriever.retrieve(question_vectors, k)   # float32[B, d] -> RetrievalResult

Each retriever has `.retrieve(vectors, k)`, `.dimension` and `.count`; the modes are listed in
pipeline/retrieval/modes.py. The torch mode's `retrieve` is a collective: every rank must call it on every step.
"""

from __future__ import annotations

from pipeline.config import RetrievalConfig
from pipeline.ray_session import connect_ray
from pipeline.retrieval.group import start_retrieval_group
from pipeline.retrieval.modes import open_mode_retriever, retrieval_mode


def make_retriever(mode: str, index_dir: str, cfg: RetrievalConfig, rank: int):
    """The retriever of `mode` (pipeline/retrieval/modes.py) for the worker of rank `rank`."""
    return open_mode_retriever(mode, index_dir, cfg, rank)


def open_retriever(config):
    """The retriever for a single-process job: the Ray group (started if missing) or the index in-process."""
    if retrieval_mode(config.retrieval.mode).uses_group:
        connect_ray()
        start_retrieval_group(config.index.directory, config.retrieval)
        return make_retriever(config.retrieval.mode, config.index.directory, config.retrieval, rank=0)
    return make_retriever("local", config.index.directory, config.retrieval, rank=0)
