"""The training loop's one entry to retrieval: a retriever for `retrieval.mode`, all with the same call contract.

    retriever = make_retriever(cfg.retrieval.mode, cfg.index.directory, cfg.retrieval, rank)
    hits = retriever.retrieve(question_vectors, k)   # float32[B, d] -> RetrievalResult

Each retriever has `.retrieve(vectors, k)`, `.dimension`, `.count` and `.last_call_s`.
The torch mode's `retrieve` is a collective: every rank must call it on every step.
"""

from __future__ import annotations

from pipeline.config import RetrievalConfig
from pipeline.errors import ConfigError
from pipeline.retrieval.search import SearchParams

MODES = ("ray", "torch", "local")


def make_retriever(mode: str, index_dir: str, cfg: RetrievalConfig, rank: int, run_id: str = "", step=None):
    """RetrievalClient ('ray': the running group cfg.group), TorchDistributedRetriever ('torch') or LocalRetriever.

    With a `run_id` (a training run's; `step()` its current step) the 'ray' client restarts its group once per
    run if the group is lost under it (pipeline/retrieval/recovery.py).
    """
    if mode == "ray" and run_id:
        from pipeline.retrieval.recovery import RecoveringClient

        return RecoveringClient(cfg, run_id, rank, step or (lambda: 0))
    if mode == "ray":
        from pipeline.retrieval.client import RetrievalClient

        # offset=rank: concurrent trainers start on different replicas instead of all on replica 0.
        return RetrievalClient(cfg.group, cfg.namespace, timeout_s=cfg.call_timeout_s, offset=rank,
                               version_check_s=cfg.version_check_s)
    if mode == "torch":
        from pipeline.retrieval.torch_distributed import TorchDistributedRetriever

        return TorchDistributedRetriever(index_dir, cfg.faiss_threads, params=SearchParams.from_config(cfg))
    if mode == "local":
        from pipeline.retrieval.local import LocalRetriever

        return LocalRetriever(index_dir, faiss_threads=cfg.faiss_threads, params=SearchParams.from_config(cfg))
    raise ConfigError(f"retrieval.mode: {mode!r} is not one of {', '.join(MODES)}")


def open_retriever(config):
    """The retriever for a single-process job: the Ray group (started if missing) or the index in-process."""
    if config.retrieval.mode == "ray":
        from pipeline.ray_session import connect_ray
        from pipeline.retrieval.group import start_retrieval_group

        if not connect_ray().joined:
            print(f"[retrieval] no Ray cluster was running: group {config.retrieval.group!r} runs on this job's own "
                  f"cluster and ends with it when the job exits", flush=True)
        start_retrieval_group(config.index.directory, config.retrieval)
        return make_retriever("ray", config.index.directory, config.retrieval, rank=0)
    return make_retriever("local", config.index.directory, config.retrieval, rank=0)
