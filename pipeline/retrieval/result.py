"""The retrieval call's result and the merge of per-shard results."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.errors import RetrievalError


@dataclass
class RetrievalResult:
    """Top-k passages for B questions, best first.

    ids int64[B, k] (global passage ids), scores float32[B, k] (exact inner products question . passage),
    vectors float32[B, k, d] (exact passage vectors), titles/texts: B lists of k strings, version: the index
    version directory that answered (one version answers the whole call, every shard of it).

    Every slot holds a real passage: there is no padding id. Approximate indexes (IVF, HNSW) can leave FAISS
    slots empty (-1); a shard drops those and answers a question it cannot fill with k candidates by an exact
    search of that shard (see `pipeline/index/search.py`), so a shard returns min(k, its size) passages
    per question and the merge over shards exactly k whenever the index holds >= k passages. Asking for more
    than the index holds is refused by the callers (`RetrievalError`), never padded.
    """

    ids: np.ndarray
    scores: np.ndarray
    vectors: np.ndarray
    titles: list[list[str]]
    texts: list[list[str]]
    version: str = ""

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self, start: int, end: int) -> "RetrievalResult":
        """Questions [start, end) (arrays copied, so a part does not keep a whole batch alive)."""
        return RetrievalResult(self.ids[start:end].copy(), self.scores[start:end].copy(),
                               self.vectors[start:end].copy(), self.titles[start:end], self.texts[start:end],
                               self.version)


def merge_results(parts: list[RetrievalResult], k: int) -> RetrievalResult:
    """Merge per-shard top-k lists into the global top-k by score (stable: ties keep shard order).

    RetrievalError if the parts come from different index versions (a call must be answered by one)."""
    if len({p.version for p in parts}) > 1:
        raise RetrievalError(f"shard results of one call come from different index versions "
                             f"{sorted({p.version for p in parts})}")
    if len(parts) == 1:
        return parts[0]
    ids = np.concatenate([p.ids for p in parts], axis=1)
    scores = np.concatenate([p.scores for p in parts], axis=1)
    vectors = np.concatenate([p.vectors for p in parts], axis=1)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    rows = np.arange(len(ids))[:, None]
    titles = [sum((p.titles[b] for p in parts), []) for b in range(len(ids))]
    texts = [sum((p.texts[b] for p in parts), []) for b in range(len(ids))]
    return RetrievalResult(
        ids=ids[rows, order], scores=scores[rows, order], vectors=vectors[rows, order],
        titles=[[titles[b][j] for j in order[b]] for b in range(len(ids))],
        texts=[[texts[b][j] for j in order[b]] for b in range(len(ids))], version=parts[0].version,
    )


def take_columns(result: RetrievalResult, columns: np.ndarray) -> RetrievalResult:
    """The passages at `columns` int64[B, k'] of each question's row (e.g. a reranked top k'), in that order."""
    rows = np.arange(len(result.ids))[:, None]
    return RetrievalResult(
        ids=result.ids[rows, columns], scores=result.scores[rows, columns], vectors=result.vectors[rows, columns],
        titles=[[result.titles[b][j] for j in columns[b]] for b in range(len(columns))],
        texts=[[result.texts[b][j] for j in columns[b]] for b in range(len(columns))], version=result.version,
    )
