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
from pipeline.retrieval.recovery import RecoveringClient


def make_retriever(mode: str, index_dir: str, cfg: RetrievalConfig, rank: int, run_id: str = "", step=None):
    """The retriever of `mode` (pipeline/retrieval/modes.py) for the worker of rank `rank`.

    With a `run_id` (a training run's; `step()` its current step) the group's client restarts its group once per
    run if the group is lost under it (pipeline/retrieval/recovery.py).
    """
    if run_id and retrieval_mode(mode).uses_group:
        return RecoveringClient(cfg, run_id, rank, step or (lambda: 0))
    return open_mode_retriever(mode, index_dir, cfg, rank)


def open_retriever(config):
    """The retriever for a single-process job: the Ray group (started if missing) or the index in-process."""
    if retrieval_mode(config.retrieval.mode).uses_group:
        if not connect_ray().joined:
            print(f"[retrieval] no Ray cluster was running: group {config.retrieval.group!r} runs on this job's own "
                  f"cluster and ends with it when the job exits", flush=True)
        start_retrieval_group(config.index.directory, config.retrieval)
        return make_retriever(config.retrieval.mode, config.index.directory, config.retrieval, rank=0)
    return make_retriever("local", config.index.directory, config.retrieval, rank=0)
